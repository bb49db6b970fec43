// A training run in a folder, killable at any moment:
//   1. with --resume and a checkpoint in the folder, continue from it (settings must match);
//      without --resume, a folder holding a checkpoint is refused rather than overwritten;
//   2. step; every N steps append the buffered metric lines to training_log.jsonl, then write
//      checkpoint.safetensors atomically (a log line past the checkpoint's step is dropped on resume);
//   3. at the end write the final checkpoint, fold the input scaling and save the dictionary in the
//      SAELens layout (cfg.json + sae_weights.safetensors) next to it.
using System.Diagnostics;
using System.Text.Json;
using Loupe.Reports;

namespace Loupe.Dictionaries.Sae;

/// <summary>Progress of a run after a step.</summary>
public readonly record struct SaeTrainingProgress(SaeStepMetrics Metrics, int Steps, double TokensPerSecond, bool Resumed);

/// <summary>Runs an <see cref="SaeTrainer"/> in an output folder with periodic checkpoints and exact resume.</summary>
public static class SaeTrainingRun
{
    public const string CheckpointFile = "checkpoint.safetensors";
    public const string LogFile = "training_log.jsonl";

    /// <summary>Trains to the end (or until cancelled) and returns the folder's SAELens dictionary path.</summary>
    /// <exception cref="InvalidOperationException">The folder holds a checkpoint and <paramref name="resume"/> is false, or the checkpoint's settings differ.</exception>
    /// <exception cref="OperationCanceledException">Cancelled: the last checkpoint stays; run again with resume to continue.</exception>
    public static string Run(SaeTrainer trainer, IRowWindows data, string outputFolder, int checkpointEvery, bool resume,
        SaeLensConfig? template = null, IProgress<SaeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(checkpointEvery);
        Directory.CreateDirectory(outputFolder);
        foreach (var stray in Directory.GetFiles(outputFolder, "*.tmp-*")) File.Delete(stray);
        string checkpoint = Path.Combine(outputFolder, CheckpointFile), log = Path.Combine(outputFolder, LogFile);

        // 1. fresh or resumed
        bool resumed = false;
        if (File.Exists(checkpoint))
        {
            if (!resume)
                throw new InvalidOperationException($"{outputFolder} already holds a training checkpoint; pass --resume to continue it, or choose another output folder");
            trainer.LoadCheckpoint(checkpoint, data);
            TruncateLog(log, trainer.StepsDone);
            resumed = true;
        }
        else
        {
            trainer.Begin(data);
            if (File.Exists(log)) File.Delete(log);
        }

        // 2. steps
        var pending = new List<string>();
        var clock = Stopwatch.StartNew();
        int stepsThisRun = 0;
        while (!trainer.IsComplete)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var m = trainer.Step();
            stepsThisRun++;
            pending.Add(JsonSerializer.Serialize(new
            {
                step = m.Step, loss = m.Loss, mse = m.Mse, sparsity = m.Sparsity, l0 = m.L0,
                explained_variance = m.ExplainedVariance, dead_fraction = m.DeadFraction, lr = m.LearningRate,
            }));
            progress?.Report(new SaeTrainingProgress(m, trainer.Options.Steps,
                stepsThisRun * (double)trainer.Options.BatchSize / Math.Max(clock.Elapsed.TotalSeconds, 1e-9), resumed));
            if (trainer.StepsDone % checkpointEvery == 0 || trainer.IsComplete)
            {
                File.AppendAllLines(log, pending);
                pending.Clear();
                trainer.SaveCheckpoint(checkpoint);
            }
        }

        // 3. the dictionary, in the layout others read
        trainer.Finish();
        var config = SaeLensFormat.ConfigFor(trainer.Dictionary, template);
        SaeLensFormat.Save(outputFolder, trainer.Dictionary, config);
        return outputFolder;
    }

    // keep only lines of steps the checkpoint already covers
    static void TruncateLog(string log, int stepsDone)
    {
        if (!File.Exists(log)) return;
        var keep = File.ReadLines(log).Where(line =>
        {
            try { return JsonDocument.Parse(line).RootElement.GetProperty("step").GetInt32() < stepsDone; }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException) { return false; }
        }).ToList();
        AtomicFile.WriteAllText(log, keep.Count == 0 ? "" : string.Join("\n", keep) + "\n");
    }

    /// <summary>Reads a run's metric log (one JSON object per step).</summary>
    public static IReadOnlyList<JsonElement> ReadLog(string outputFolder) =>
        File.ReadLines(Path.Combine(outputFolder, LogFile)).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
}
