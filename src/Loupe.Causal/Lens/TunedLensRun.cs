using System.Globalization;
using System.Text.Json.Serialization;
using Loupe.Models;
using Loupe.Reports;

namespace Loupe.Causal.Lens;

/// <summary>
/// The tuned-lens jobs behind <c>loupe lens train</c> / <c>loupe lens eval</c> (and any other caller): the output folder
/// locked, the lens trained with checkpoints and written in tuned-lens's layout, then measured against the logit lens on
/// held-out contexts — <c>training.json</c> / <c>evaluation.json</c> and <c>kl.svg</c> (held-out KL per layer, both lenses).
/// </summary>
public static class TunedLensRun
{
    public const string TrainingFile = "training.json", EvaluationFile = "evaluation.json", KlChart = "kl.svg";

    /// <summary>What the job will hold and compute, in one line (printed before it starts).</summary>
    public static string Estimate(HookedTransformer model, TunedLensTrainingOptions options, int contextSize)
    {
        int L = model.Config.NLayers, D = model.Config.DModel, V = model.Config.VocabOut;
        long translators = (long)L * D * (D + 1) * 4;
        int perStep = options.ContextsPerStep(contextSize);
        int rows = TunedLensObjective.ChunkRows(options.BatchContexts * contextSize, V);
        long scratch = 3L * rows * V * 4;
        double gflop = TunedLensTraining.FlopsPerToken(model) * perStep * contextSize / 1e9;
        return string.Create(CultureInfo.InvariantCulture,
            $"tuned lens: {L} translators of {D}×{D} ({ByteSizes.Format(translators)}; ×3 with gradients and momentum) on {model.Backend.Device}, " +
            $"{ByteSizes.Format(scratch)} of [tokens, d_vocab] scratch; {options.Steps} steps × {perStep} contexts of {contextSize} tokens " +
            $"({(long)perStep * contextSize * options.Steps:N0} tokens), ≈ {gflop:F1} GFLOP per step beyond the model's forward passes");
    }

    /// <summary>
    /// Trains into <paramref name="folder"/> (config.json, params.safetensors, checkpoint.safetensors, training.json, kl.svg) and
    /// evaluates on <paramref name="heldOut"/>.
    /// </summary>
    /// <exception cref="InputError">As <see cref="TunedLensTraining.Train"/>; the folder is in use by another job.</exception>
    public static (TunedLensTrainingResult Result, TunedLensEvaluation Evaluation) Train(HookedTransformer model, IReadOnlyList<int[]> train, IReadOnlyList<int[]> heldOut,
        TunedLensTrainingOptions options, string folder, bool resume, IReadOnlyDictionary<string, string?> provenance, Action<TunedLensStep>? progress = null,
        CancellationToken cancel = default)
    {
        using var folderLock = OutputLock.Acquire(folder, "loupe lens train");
        var result = TunedLensTraining.Train(model, train, options, folder, resume, progress, cancel);
        result.Lens.Save(folder);
        var evaluation = TunedLensEvaluation.Run(model, result.Lens, heldOut, options.BatchContexts);
        var json = new TrainingJsonDocument(
            provenance, options, train.Count, heldOut.Count, train[0].Length, result.ResumedFrom,
            [.. result.History.Select(h => new StepJson(h.Step, h.LearningRate, h.GradNorm, h.Kl))],
            EvaluationDocument(evaluation));
        AtomicFile.WriteJson(Path.Combine(folder, TrainingFile), json);
        Chart(evaluation, Path.Combine(folder, KlChart), $"Held-out KL(model ‖ lens), {heldOut.Count} contexts");
        return (result, evaluation);
    }

    /// <summary>Evaluates <paramref name="lens"/> against the logit lens on <paramref name="contexts"/> into <paramref name="folder"/> (evaluation.json, kl.svg).</summary>
    public static TunedLensEvaluation Evaluate(HookedTransformer model, TunedLens lens, IReadOnlyList<int[]> contexts, int batchContexts, string folder,
        IReadOnlyDictionary<string, string?> provenance)
    {
        var evaluation = TunedLensEvaluation.Run(model, lens, contexts, batchContexts);
        OutputFiles.EnsureFolder(folder);
        AtomicFile.WriteJson(Path.Combine(folder, EvaluationFile), new EvaluationJsonDocument(provenance, contexts.Count, contexts[0].Length, EvaluationDocument(evaluation)));
        Chart(evaluation, Path.Combine(folder, KlChart), $"KL(model ‖ lens), {contexts.Count} contexts");
        return evaluation;
    }

    static EvaluationJson EvaluationDocument(TunedLensEvaluation e) => new(e.Tokens,
        "per block input resid_pre ℓ: mean over every token of KL(model's next-token distribution ‖ lens's) in nats, and the fraction of " +
        "tokens where the lens ranks the model's top token first; logit lens = the same residual through ln_final and W_U untranslated",
        e.Layers);

    static void Chart(TunedLensEvaluation e, string path, string title) => new LineChart
    {
        Title = title,
        X = [.. e.Layers.Select(l => (double)l.Layer)],
        Series = [("logit lens", [.. e.Layers.Select(l => l.LogitLensKl)]), ("tuned lens", [.. e.Layers.Select(l => l.TunedLensKl)])],
        XAxis = "block input (resid_pre ℓ)",
        YAxis = "KL (nats)",
    }.Save(path);

    sealed record StepJson(int Step, double LearningRate, double GradNorm, double[] Kl);

    sealed record EvaluationJson(long Tokens, string Note, IReadOnlyList<TunedLensLayerEvaluation> Layers);

    sealed record TrainingJsonDocument(
        IReadOnlyDictionary<string, string?> Args, TunedLensTrainingOptions Options, int TrainingContexts, int HeldOutContexts, int ContextSize,
        int ResumedFromStep, StepJson[] Steps, [property: JsonPropertyName("held_out")] EvaluationJson HeldOut);

    sealed record EvaluationJsonDocument(IReadOnlyDictionary<string, string?> Args, int Contexts, int ContextSize, EvaluationJson Evaluation);
}
