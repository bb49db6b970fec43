// A training run in a folder, killable at any moment:
//   1. with --resume and a checkpoint in the folder, continue from it (settings must match);
//      without --resume, a folder holding a checkpoint is refused rather than overwritten;
//   2. step; every N steps append the buffered metric lines to training_log.jsonl, then write
//      checkpoint.safetensors atomically (a log line past the checkpoint's step is dropped on resume);
//   3. at the end write the final checkpoint, fold the input scaling and save the dictionary in the
//      SAELens layout (cfg.json + sae_weights.safetensors) next to it (a crosscoder: its own files).
// The whole run holds the folder's OutputLock, so a second run into the same folder is refused (naming the
// first's pid) instead of interleaving its log and deleting the other's temp files. The kernel releases the
// lock when the process dies, even by SIGKILL, so a killed run resumes at once. A loss that turns NaN or ∞
// stops the run with an InputError; the metric lines before it are appended and the last checkpoint is kept.
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
    /// <exception cref="InputError">
    /// <paramref name="checkpointEvery"/> is not positive (<c>--checkpoint-every</c>); another process is training into the
    /// folder (the message names it); the folder or a file in it is not a folder / regular file; the folder holds a
    /// checkpoint and <paramref name="resume"/> is false, or the checkpoint is corrupt or its settings differ; training diverged.
    /// </exception>
    /// <exception cref="OperationCanceledException">Cancelled: the last checkpoint stays; run again with resume to continue.</exception>
    public static string Run(SaeTrainer trainer, IRowWindows data, string outputFolder, int checkpointEvery, bool resume,
        SaeLensConfig? template = null, IProgress<SaeTrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Run(trainer, data, outputFolder, checkpointEvery, resume, "loupe sae train", [SaeLensFormat.ConfigFile, SaeLensFormat.WeightsFile],
            dictionary => SaeLensFormat.Save(outputFolder, dictionary, SaeLensFormat.ConfigFor(dictionary, template)), progress, cancellationToken);

    /// <summary>
    /// The same run for another kind of dictionary (a crosscoder): <paramref name="verb"/> names the run in the folder's lock,
    /// <paramref name="outputFiles"/> are the files <paramref name="save"/> writes into the folder from the finished dictionary
    /// (checked replaceable before anything starts), still under the lock.
    /// </summary>
    public static string Run(SaeTrainer trainer, IRowWindows data, string outputFolder, int checkpointEvery, bool resume, string verb,
        IReadOnlyList<string> outputFiles, Action<SparseDictionary> save, IProgress<SaeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentException.ThrowIfNullOrEmpty(outputFolder);
        ArgumentNullException.ThrowIfNull(outputFiles);
        ArgumentNullException.ThrowIfNull(save);
        Check.InRange(checkpointEvery, 1, int.MaxValue, "argument", "--checkpoint-every");
        using var folderLock = OutputLock.Acquire(outputFolder, verb);
        // Temp files can only be a killed run's leftovers now: no other run holds the folder.
        foreach (var stray in Directory.GetFiles(outputFolder, "*.tmp-*"))
            if (OutputFiles.KindOf(stray) == OutputFiles.EntryKind.RegularFile) File.Delete(stray);
        string checkpoint = Path.Combine(outputFolder, CheckpointFile), log = Path.Combine(outputFolder, LogFile);
        foreach (string file in (string[])[checkpoint, log, .. outputFiles.Select(f => Path.Combine(outputFolder, f))])
            OutputFiles.EnsureReplaceable(file);

        // 1. fresh or resumed
        bool resumed = false;
        if (File.Exists(checkpoint))
        {
            if (!resume)
                throw new InputError($"{outputFolder}: already holds a training checkpoint; pass --resume to continue it, or choose another output folder");
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
            SaeStepMetrics m;
            try { m = trainer.Step(); }
            catch (InputError e) when (trainer.DivergedAt is not null)
            {
                // Keep what is known: the finite steps' metrics go to the log; the checkpoint stays at its last good step.
                if (pending.Count > 0) File.AppendAllLines(log, pending);
                string kept = File.Exists(checkpoint) ? $"{checkpoint} keeps the last checkpoint" : "no checkpoint was written yet";
                throw new InputError($"{e.Message}; {kept}", e);
            }
            stepsThisRun++;
            pending.Add(JsonSerializer.Serialize(new
            {
                step = m.Step, loss = m.Loss, mse = m.Mse, sparsity = m.Sparsity, l0 = m.L0,
                explained_variance = m.ExplainedVariance, dead_fraction = m.DeadFraction, lr = m.LearningRate,
            }, s_logJson));
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
        save(trainer.Dictionary);
        return outputFolder;
    }

    // Finite metrics are written as numbers (byte-identical to before); a NaN explained variance (constant
    // targets) is written as "NaN" rather than failing the run.
    static readonly JsonSerializerOptions s_logJson = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    // keep only lines of steps the checkpoint already covers
    static void TruncateLog(string log, int stepsDone)
    {
        if (!File.Exists(log)) return;
        var keep = File.ReadLines(log).Where(line =>
        {
            try { return JsonDocument.Parse(line).RootElement.GetProperty("step").GetInt32() < stepsDone; }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException) { return false; }
        }).ToList();
        AtomicFile.WriteAllText(log, keep.Count == 0 ? "" : string.Join("\n", keep) + "\n");
    }

    /// <summary>Reads a run's metric log (one JSON object per step).</summary>
    /// <exception cref="JsonException">A line is not JSON.</exception>
    public static IReadOnlyList<JsonElement> ReadLog(string outputFolder) =>
        File.ReadLines(Path.Combine(outputFolder, LogFile)).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
}
