using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Tensors;

namespace Loupe.Causal.Lens;

// Training a tuned lens the way tuned-lens's `train` does by default:
// 1. Each step reads TokensPerStep tokens: ⌈TokensPerStep / context⌉ fixed-length contexts, in order (the list repeats
//    when it runs out), BatchContexts per forward pass; the loss is the step's mean KL(final ‖ lens) per layer, summed
//    over layers (TunedLensObjective).
// 2. The gradient's global norm (every translator together) is clipped to ClipNorm (torch's clip_grad_norm_).
// 3. SGD with Nesterov momentum, as tuned-lens configures torch's SGD: lr = LearningRateScale·(1 − momentum) (it undoes
//    torch's implicit 1/(1 − β)), weight decay added to the gradient, the rate decayed linearly to 0 over the steps
//    (no warm-up): g ← g + λ·θ; buf ← μ·buf + g; θ ← θ − lr_t·(g + μ·buf).
// 4. Every CheckpointEvery steps (and at the end) the translators, momentum buffers, step and history are written
//    atomically to checkpoint.safetensors; a resumed run continues from it and ends with the same lens, bit for bit,
//    as one that never stopped. Without resume, a folder holding a checkpoint is refused rather than overwritten. Everything runs on the model's backend; per step only the L+2 sums come back.

/// <summary>How a tuned lens is trained (tuned-lens's defaults; see the top of <c>TunedLensTraining.cs</c>).</summary>
public sealed record TunedLensTrainingOptions
{
    public int Steps { get; init; } = 250;
    public int TokensPerStep { get; init; } = 1 << 18;
    /// <summary>Contexts per forward pass (memory: the model's activations for this many contexts).</summary>
    public int BatchContexts { get; init; } = 1;
    public double LearningRateScale { get; init; } = 1.0;
    public double Momentum { get; init; } = 0.9;
    public double WeightDecay { get; init; } = 1e-3;
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Translators with a bias (tuned-lens's default).</summary>
    public bool Bias { get; init; } = true;
    public int CheckpointEvery { get; init; } = 25;

    /// <exception cref="InputError">A value is out of range (naming the option).</exception>
    public void Validate()
    {
        Check.InRange(Steps, 1, 10_000_000, "argument", "--steps");
        Check.InRange(TokensPerStep, 1, int.MaxValue, "argument", "--tokens-per-step");
        Check.InRange(BatchContexts, 1, 1 << 20, "argument", "--batch-contexts");
        Check.Finite(LearningRateScale, 0, 1e6, "argument", "--lr-scale");
        Check.Finite(Momentum, 0, 0.999999, "argument", "--momentum");
        Check.Finite(WeightDecay, 0, 1e6, "argument", "--weight-decay");
        Check.Finite(ClipNorm, 0, 1e12, "argument", "--clip-norm");
        Check.InRange(CheckpointEvery, 1, int.MaxValue, "argument", "--checkpoint-every");
    }

    /// <summary>Contexts each step reads: ⌈tokens per step / context size⌉.</summary>
    public int ContextsPerStep(int contextSize) => (int)Math.Min(int.MaxValue, ((long)TokensPerStep + contextSize - 1) / contextSize);

    /// <summary>The learning rate of step <paramref name="step"/> (0-based): scale·(1 − μ)·(steps − step)/steps.</summary>
    public double LearningRate(int step) => LearningRateScale * (1 - Momentum) * (Steps - step) / Steps;

    internal string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"steps={Steps} tokens_per_step={TokensPerStep} batch_contexts={BatchContexts} lr_scale={LearningRateScale:R} momentum={Momentum:R} weight_decay={WeightDecay:R} clip_norm={ClipNorm:R} bias={Bias}");
}

/// <summary>One training step: the mean KL(final ‖ lens) per layer (nats), the gradient's norm before clipping and the rate used.</summary>
public sealed record TunedLensStep(int Step, double[] Kl, double GradNorm, double LearningRate);

/// <summary>A trained lens and its history (from step 0, resumed steps included).</summary>
public sealed record TunedLensTrainingResult(TunedLens Lens, IReadOnlyList<TunedLensStep> History, int ResumedFrom);

/// <summary>Trains a tuned lens (steps at the top of this file).</summary>
public static class TunedLensTraining
{
    public const string CheckpointFile = "checkpoint.safetensors";

    /// <summary>Floating-point operations per training token (forward of the model excluded): per layer the translator and the unembedding, forward and backward.</summary>
    public static double FlopsPerToken(HookedTransformer model)
    {
        double d = model.Config.DModel, v = model.Config.VocabOut, l = model.Config.NLayers;
        return l * (2 * d * d * 2 + 2 * d * v * 2);
    }

    /// <summary>
    /// Trains the translators of <c>model</c> on <paramref name="contexts"/> (token contexts, all of one length, BOS first as
    /// <c>ContextBuilder</c> makes them), checkpointing into <paramref name="checkpointFolder"/> (null: none) and, with
    /// <paramref name="resume"/>, continuing from its checkpoint (refused when its options or contexts differ).
    /// </summary>
    /// <exception cref="InputError">Bad options, no contexts, contexts of different lengths or token ids outside the vocabulary, or a checkpoint that does not match.</exception>
    public static TunedLensTrainingResult Train(HookedTransformer model, IReadOnlyList<int[]> contexts, TunedLensTrainingOptions options,
        string? checkpointFolder = null, bool resume = false, Action<TunedLensStep>? progress = null, CancellationToken cancel = default)
    {
        options.Validate();
        model.RequireResidualSum("the tuned lens");
        if (contexts.Count == 0) throw new InputError("argument: no contexts to train the tuned lens on");
        int ctx = contexts[0].Length;
        for (int i = 0; i < contexts.Count; i++)
        {
            if (contexts[i].Length != ctx || ctx == 0) throw new InputError($"argument: context {i} has {contexts[i].Length} tokens; every context needs the same positive length ({ctx})");
            foreach (int t in contexts[i])
                if ((uint)t >= (uint)model.Config.DVocab) throw new InputError($"argument: context {i} holds token {t}, outside the vocabulary (d_vocab = {model.Config.DVocab})");
        }
        if (resume && checkpointFolder is null) throw new InputError("argument: resuming needs the folder of the checkpoint");
        string contextsHash = Hash(contexts);
        int L = model.Config.NLayers, D = model.Config.DModel;
        int perStep = options.ContextsPerStep(ctx);
        double stepTokens = (double)perStep * ctx;

        var history = new List<TunedLensStep>();
        TunedLens start = TunedLens.Identity(model, options.Bias);
        Tensor[]? savedMomentum = null;
        int first = 0;
        string? checkpoint = checkpointFolder is null ? null : Path.Combine(checkpointFolder, CheckpointFile);
        if (!resume && checkpoint is not null && File.Exists(checkpoint))
            throw new InputError($"{checkpointFolder}: already holds a tuned-lens checkpoint; pass --resume to continue it, or choose another output folder");
        if (resume && checkpoint is not null && File.Exists(checkpoint))
        {
            (start, savedMomentum, first, var done) = ReadCheckpoint(checkpoint, model, options, contextsHash);
            history.AddRange(done);
        }
        var objective = new TunedLensObjective(model, start);
        var be = objective.Backend;
        var parameters = objective.Weights.Concat(objective.HasBias ? objective.Biases : []).ToArray();
        var grads = objective.WeightGrads.Concat(objective.HasBias ? objective.BiasGrads : []).ToArray();
        Tensor[] momentum = savedMomentum is null ? [.. parameters.Select(p => be.Zeros(p.Length))] : [.. savedMomentum.Select(b => be.ToDevice(b))];
        var scratch = be.Empty(D * D);
        int normSlot = objective.LossSlots;
        var table = be.Empty(objective.LossSlots + 1);
        var clip = be.Empty(1);

        for (int step = first; step < options.Steps; step++)
        {
            cancel.ThrowIfCancellationRequested();
            be.Fill(table, 0f);
            foreach (var g in grads) be.Fill(g, 0f);
            for (int i = 0; i < perStep; i += options.BatchContexts)
            {
                int count = Math.Min(options.BatchContexts, perStep - i);
                var rows = new int[count][];
                for (int j = 0; j < count; j++) rows[j] = contexts[(int)(((long)step * perStep + i + j) % contexts.Count)];
                objective.Accumulate(TokenBatch.FromRows(rows), table, 0, (float)(1 / stepTokens));
            }
            // Global norm of every gradient, clipped on the device.
            var norm = DeviceLens.Slot(table, normSlot);
            foreach (var g in grads) be.RowDots(g, g, 1, g.Length, norm, accumulate: true);
            be.NormScale(norm, (float)options.ClipNorm, true, clip);
            double lr = options.LearningRate(step);
            for (int k = 0; k < parameters.Length; k++) SgdNesterov(be, parameters[k], grads[k], momentum[k], scratch, clip, options, (float)lr);

            var sums = new float[table.Length];
            table.CopyTo(sums);
            var kl = new double[L];
            for (int l = 0; l < L; l++) kl[l] = ((double)sums[l] - sums[L]) / stepTokens;
            var report = new TunedLensStep(step, kl, Math.Sqrt(sums[normSlot]), lr);
            if (!double.IsFinite(report.GradNorm) || kl.Any(v => !double.IsFinite(v)))
                throw new InputError($"tuned lens step {step}: the loss or gradient is not finite (KL {string.Join(", ", kl.Select(v => v.ToString("G4", CultureInfo.InvariantCulture)))}); lower --lr-scale");
            history.Add(report);
            progress?.Invoke(report);
            if (checkpoint is not null && ((step + 1) % options.CheckpointEvery == 0 || step + 1 == options.Steps))
                WriteCheckpoint(checkpoint, objective, momentum, step + 1, options, contextsHash, history, model.Source, model.Processing.Describe());
        }
        return new TunedLensTrainingResult(objective.ToLens(), history, first);
    }

    // g ← clip·g + λ·θ; buf ← μ·buf + g; θ ← θ − lr·(g + μ·buf)  (torch SGD, nesterov, dampening 0). All flat views.
    internal static void SgdNesterov(Tensors.Backends.IComputeBackend be, Tensor param, Tensor grad, Tensor buffer, Tensor scratch, Tensor clip, TunedLensTrainingOptions o, float lr)
    {
        int n = param.Length;
        Tensor p = Flat(param, n), g = Flat(grad, n), buf = Flat(buffer, n), tmp = Flat(scratch, n);
        be.ScaleRows(g, 1, n, clip, g);
        if (o.WeightDecay > 0)
        {
            be.Scale(p, (float)o.WeightDecay, tmp);
            be.Add(g, tmp, g);
        }
        be.Scale(buf, (float)o.Momentum, buf);
        be.Add(buf, g, buf);
        be.Scale(buf, (float)o.Momentum, tmp);
        be.Add(tmp, g, tmp);
        be.Scale(tmp, -lr, tmp);
        be.Add(p, tmp, p);
    }

    static Tensor Flat(Tensor t, int length) => new(t.Storage.Slice(0, length), length);

    static string Hash(IReadOnlyList<int[]> contexts) => TokenRowsHash.Sha256(contexts);

    // ---- checkpoints ---------------------------------------------------------------------------------------

    static void WriteCheckpoint(string path, TunedLensObjective objective, Tensor[] momentum, int stepsDone, TunedLensTrainingOptions options,
        string contextsHash, IReadOnlyList<TunedLensStep> history, string? model, string processing)
    {
        int L = objective.Weights.Length, D = (int)Math.Round(Math.Sqrt(objective.Weights[0].Length));
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>();
        for (int l = 0; l < L; l++)
        {
            tensors.Add(($"{l}.weight", [D, D], objective.Weights[l].ToCpu().Span.ToArray()));
            if (objective.HasBias) tensors.Add(($"{l}.bias", [D], objective.Biases[l].ToCpu().Span.ToArray()));
        }
        for (int k = 0; k < momentum.Length; k++) tensors.Add(($"momentum.{k}", [momentum[k].Length], momentum[k].ToCpu().Span.ToArray()));
        var metadata = new Dictionary<string, string>
        {
            ["steps_done"] = stepsDone.ToString(CultureInfo.InvariantCulture),
            ["options"] = options.Describe(),
            ["contexts_sha256"] = contextsHash,
            ["model"] = model ?? "",
            ["weight_processing"] = processing,
            ["history"] = JsonSerializer.Serialize(history.Select(h => new double[] { h.GradNorm, h.LearningRate }.Concat(h.Kl).ToArray())),
        };
        SafeTensorsWriter.Write(path, tensors, metadata);
    }

    static (TunedLens Lens, Tensor[] Momentum, int StepsDone, List<TunedLensStep> History) ReadCheckpoint(string path, HookedTransformer model,
        TunedLensTrainingOptions options, string contextsHash)
    {
        using var file = SafeTensorsFile.Open(path);
        string Meta(string key) => file.Metadata.TryGetValue(key, out var v) ? v : throw new InputError($"{path}: no '{key}' in the metadata (not a tuned-lens checkpoint)");
        if (Meta("options") != options.Describe())
            throw new InputError($"{path}: written with {Meta("options")}; this run has {options.Describe()} — resume with the same options, or start again without --resume");
        if (Meta("weight_processing") != model.Processing.Describe())
            throw new InputError($"{path}: written for the model with weight processing '{Meta("weight_processing")}'; this one has '{model.Processing.Describe()}' — resume with the same --process");
        if (Meta("contexts_sha256") != contextsHash)
            throw new InputError($"{path}: written for other contexts (SHA-256 {Meta("contexts_sha256")[..12]}…, these {contextsHash[..12]}…) — resume with the same --source, context size and seed");
        if (!int.TryParse(Meta("steps_done"), NumberStyles.None, CultureInfo.InvariantCulture, out int done) || done < 0 || done > options.Steps)
            throw InputError.Expected(path, "metadata 'steps_done'", $"an integer from 0 to {options.Steps}", Meta("steps_done"));
        var lens = TunedLens.LoadParams(path, configPath: null, ignore: name => name.StartsWith("momentum.", StringComparison.Ordinal));
        lens.CheckFits(model, path);
        int count = (lens.HasBias ? 2 : 1) * lens.Layers;
        var momentum = new Tensor[count];
        for (int k = 0; k < count; k++)
        {
            string name = $"momentum.{k}";
            int expected = k < lens.Layers ? lens.DModel * lens.DModel : lens.DModel;
            if (!file.Contains(name) || file.GetInfo(name).ElementCount != expected) throw new InputError($"{path}: tensor '{name}' missing or not {expected} values");
            momentum[k] = Tensor.FromArray(file.GetFloat32(name).ToArray(), expected);
        }
        double[][] rows;
        try { rows = JsonSerializer.Deserialize<double[][]>(Meta("history")) ?? []; }
        catch (JsonException e) { throw new InputError($"{path}: metadata 'history' is not a list of number lists: {e.Message}"); }
        if (rows.Length != done || rows.Any(r => r is null || r.Length != 2 + lens.Layers))
            throw new InputError($"{path}: metadata 'history' holds {rows.Length} steps; expected {done} of {2 + lens.Layers} numbers");
        var history = rows.Select((r, i) => new TunedLensStep(i, r[2..], r[0], r[1])).ToList();
        return (lens, momentum, done, history);
    }
}
