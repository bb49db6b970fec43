// A CLT training run in a folder, killable at any moment (as SaeTrainingRun for SAEs):
//   1. with resume and a checkpoint in the folder, continue from it (settings must match); without resume, a
//      folder holding a checkpoint is refused rather than overwritten;
//   2. step; every N steps append the buffered metric lines to training_log.jsonl, then write
//      checkpoint.safetensors atomically (log lines past the checkpoint's step are dropped on resume);
//   3. at the end save the CLT in Loupe's layout (cfg.json + clt_weights.safetensors, with provenance) and, when
//      asked, in circuit-tracer's layout under circuit-tracer/.
// The folder's OutputLock is held throughout, so a second run into the same folder is refused.
using System.Text.Json;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>Runs a <see cref="CltTrainer"/> in an output folder with periodic checkpoints and exact resume.</summary>
public static class CltTrainingRun
{
    public const string CheckpointFile = "checkpoint.safetensors";
    public const string LogFile = "training_log.jsonl";
    public const string CircuitTracerFolder = "circuit-tracer";

    /// <summary>Trains to the end (or until cancelled); returns the output folder.</summary>
    /// <param name="trainer">The trainer (its CLT is what gets saved).</param>
    /// <param name="data">Paired rows (e.g. <see cref="LayerPairRows"/>).</param>
    /// <param name="outputFolder">Where checkpoint, log and the CLT go.</param>
    /// <param name="checkpointEvery">Steps between checkpoints.</param>
    /// <param name="resume">Continue a checkpoint in the folder.</param>
    /// <param name="provenance">What made it (model, fingerprint, data…), written to cfg.json.</param>
    /// <param name="circuitTracer">Also write circuit-tracer's layout.</param>
    /// <param name="progress">Told after each step.</param>
    /// <param name="cancellationToken">Stops between steps; the last checkpoint stays.</param>
    /// <exception cref="InputError">Another run holds the folder; a checkpoint exists without resume; the checkpoint's settings differ; training diverged.</exception>
    public static string Run(CltTrainer trainer, Sae.IRowWindows data, string outputFolder, int checkpointEvery, bool resume,
        IReadOnlyDictionary<string, string>? provenance = null, bool circuitTracer = false, IProgress<CltStepMetrics>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentException.ThrowIfNullOrEmpty(outputFolder);
        Check.InRange(checkpointEvery, 1, int.MaxValue, "argument", "--checkpoint-every");
        using var folderLock = OutputLock.Acquire(outputFolder, "loupe clt train");
        foreach (var stray in Directory.GetFiles(outputFolder, "*.tmp*"))
            if (OutputFiles.KindOf(stray) == OutputFiles.EntryKind.RegularFile) File.Delete(stray);
        string checkpoint = Path.Combine(outputFolder, CheckpointFile), log = Path.Combine(outputFolder, LogFile);
        if (File.Exists(checkpoint))
        {
            if (!resume) throw new InputError($"{outputFolder}: already holds a training checkpoint; pass --resume to continue it, or choose another output folder");
            trainer.LoadCheckpoint(checkpoint, data);
            if (File.Exists(log))
            {
                var keep = File.ReadLines(log).Where(line =>
                {
                    try { return JsonDocument.Parse(line).RootElement.GetProperty("step").GetInt32() < trainer.StepsDone; }
                    catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException) { return false; }
                }).ToList();
                File.WriteAllLines(log, keep);
            }
        }
        else
        {
            trainer.Begin(data);
            if (File.Exists(log)) File.Delete(log);
        }

        var pending = new List<string>();
        while (!trainer.IsComplete)
        {
            cancellationToken.ThrowIfCancellationRequested();
            CltStepMetrics m;
            try { m = trainer.Step(); }
            catch (InputError e) when (trainer.DivergedAt is not null)
            {
                if (pending.Count > 0) File.AppendAllLines(log, pending);
                throw new InputError($"{e.Message}; {(File.Exists(checkpoint) ? $"{checkpoint} keeps the last checkpoint" : "no checkpoint was written yet")}", e);
            }
            pending.Add(JsonSerializer.Serialize(new
            {
                step = m.Step, loss = m.Loss, mse = m.Mse, sparsity = m.Sparsity, l0 = m.L0,
                explained_variance = m.ExplainedVariance, dead_fraction = m.DeadFraction, lr = m.LearningRate,
            }, s_logJson));
            progress?.Report(m);
            if (trainer.StepsDone % checkpointEvery == 0 || trainer.IsComplete)
            {
                File.AppendAllLines(log, pending);
                pending.Clear();
                trainer.SaveCheckpoint(checkpoint);
            }
        }

        var prov = new Dictionary<string, string>(provenance ?? new Dictionary<string, string>())
        {
            ["data"] = data.Description,
            ["training"] = $"{trainer.Options.Base} penalty={trainer.Options.Penalty} tanh_scale={trainer.Options.TanhScale}",
            ["steps"] = trainer.StepsDone.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        CltFiles.Save(outputFolder, trainer.Transcoder, prov);
        if (circuitTracer) CltFiles.SaveCircuitTracer(Path.Combine(outputFolder, CircuitTracerFolder), trainer.Transcoder, provenance?.GetValueOrDefault("model"));
        return outputFolder;
    }

    static readonly JsonSerializerOptions s_logJson = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
}
