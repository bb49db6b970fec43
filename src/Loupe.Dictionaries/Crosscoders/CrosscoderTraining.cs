// Training a crosscoder on its models' activations, with the SAE trainer on the concatenated sources:
//   ReLU (Anthropic 2024; dictionary_learning's CrossCoderTrainer; Kissane's replication):
//     loss = Σ_s ‖c_s·x_s − x̂_s‖² (mean over rows) + λ·Σ_i f_i·Σ_s ‖W_dec^s[i]‖          (CrosscoderReluActivation)
//   BatchTopK (Minder, Dumas et al. 2025, who show it avoids the L1's false exclusive latents):
//     loss = Σ_s ‖c_s·x_s − x̂_s‖² + aux-k, the k·batch largest f_i·Σ_s‖W_dec^s[i]‖ kept  (CrosscoderBatchTopKActivation)
// 1. Rows: PairedActivations over the contexts, held in memory ([rows, S·d] floats; the estimate is the caller's to print),
//    or read window by window while training (PairedRows, with scales estimated first on the leading contexts).
// 2. Input scales c_s: 1, the caller's, or √d / mean‖x_s‖ per source (Kissane's normalisation), kept in the crosscoder.
// 3. Initialisation: W_dec rows random, each source's segment of norm DecoderInitNorm (Kissane: 0.08, per model);
//    W_enc = W_decᵀ; biases 0 — then SaeTrainer (Adam, warm-up, decay, gradient clipping, λ warm-up, b_dec from the rows),
//    on a device when a backend is given (DeviceSaeTraining: a batch goes up and one vector of sums comes back per step).
using System.Numerics.Tensors;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>How a crosscoder trains.</summary>
public sealed record CrosscoderTrainingOptions
{
    /// <summary>F, the number of latents.</summary>
    public int DSae { get; init; } = 256;

    /// <summary>"relu" (L1 on Σ_s decoder norms) or "batchtopk" (CrosscoderBatchTopKActivation; no penalty).</summary>
    public string Architecture { get; init; } = "relu";

    /// <summary>BatchTopK: latents kept per row on average.</summary>
    public int K { get; init; } = 32;

    /// <summary>The SAE trainer's settings (SparsityCoefficient is λ of the crosscoder's L1).</summary>
    public SaeTrainingOptions Training { get; init; } = new() { SparsityCoefficient = 1f, BDecInit = BDecInit.Zeros };

    /// <summary>The norm of each source's decoder segment at initialisation.</summary>
    public float DecoderInitNorm { get; init; } = 0.08f;

    /// <summary>Scale each source to mean norm √d before training (and keep the factors in the crosscoder).</summary>
    public bool NormalizeSources { get; init; } = true;

    /// <summary>Contexts per forward pass while collecting rows.</summary>
    public int BatchSize { get; init; } = 8;
}

/// <summary>Trains a crosscoder (see the file header).</summary>
public static class CrosscoderTraining
{
    /// <summary>Bytes the rows of <paramref name="contexts"/> take in memory: contexts·(T − 1)·S·d floats, twice (per source, then concatenated).</summary>
    public static long EstimateRowBytes(int contexts, int contextSize, int sources, int width) =>
        2L * contexts * (contextSize - 1) * sources * width * sizeof(float);

    /// <summary>Every source's rows [contexts·(T − 1), d] over <paramref name="contexts"/>.</summary>
    public static float[][] CollectRows(PairedActivations paired, HarvestContexts contexts, int batchSize = 8, IProgress<int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(paired);
        ArgumentNullException.ThrowIfNull(contexts);
        int T = contexts.ContextSize, n = paired.Sources.Count, d = paired.Width;
        if (T < 2) throw new InputError("argument: --context-size: a crosscoder trains on contexts of at least 2 tokens (position 0 is left out)");
        long total = (long)contexts.Count * (T - 1) * d;
        if (total > Array.MaxLength) throw new InputError($"{contexts.Count} contexts × {T - 1} positions × d = {d} do not fit one array per source; lower --max-contexts");
        var rows = Enumerable.Range(0, n).Select(_ => new float[total]).ToArray();
        for (int start = 0; start < contexts.Count; start += batchSize)
        {
            int b = Math.Min(batchSize, contexts.Count - start);
            var ids = contexts.Ids(start, b);
            var (x, _) = paired.Run(ids, b, T);
            for (int s = 0; s < n; s++) x[s].CopyTo(rows[s], (long)start * (T - 1) * d);
            progress?.Report(start + b);
        }
        return rows;
    }

    /// <summary>The activation (and penalty) <paramref name="options"/> train with, over <paramref name="sources"/> sources.</summary>
    /// <exception cref="InputError">An unknown architecture, or k outside 1…d_sae.</exception>
    public static SaeActivation ActivationFor(CrosscoderTrainingOptions options, int sources)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.Architecture switch
        {
            "relu" => new CrosscoderReluActivation(sources),
            "batchtopk" => options.K >= 1 && options.K <= options.DSae ? new CrosscoderBatchTopKActivation(options.K, sources)
                : throw new InputError($"argument: --k: expected 1 to d_sae = {options.DSae}, got {options.K}"),
            _ => throw InputError.Expected("argument", "--architecture", "relu or batchtopk", options.Architecture),
        };
    }

    /// <summary>Bytes training holds (parameters, gradients, Adam moments, batch buffers): the SAE's on the concatenated sources.</summary>
    public static long EstimateTrainingBytes(CrosscoderTrainingOptions options, int sources, int width)
    {
        ArgumentNullException.ThrowIfNull(options);
        return SaeTrainingOptions.EstimateTrainingBytes(SaeShape.Sae(sources * width, options.DSae, applyBDecToInput: false), options.Training.BatchSize);
    }

    /// <summary>
    /// Trains a crosscoder over <paramref name="sources"/> on their <paramref name="rows"/> (each [rows, d]); returns it and the
    /// step metrics. With <paramref name="backend"/> on a device the steps run there (the rows stay on the host, a batch is
    /// copied up per step).
    /// </summary>
    /// <exception cref="InputError">Invalid options, or rows that do not match.</exception>
    public static (Crosscoder Crosscoder, List<SaeStepMetrics> Steps) Train(IReadOnlyList<CrosscoderSource> sources, int width, IReadOnlyList<float[]> rows,
        CrosscoderTrainingOptions options, float[]? inputScales = null, IComputeBackend? backend = null)
    {
        ArgumentNullException.ThrowIfNull(sources);
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentNullException.ThrowIfNull(options);
        int n = sources.Count, d = width;
        int count = rows.Count == n ? rows[0].Length / d : throw new InputError($"expected {n} sources' rows, got {rows.Count}");
        if (count == 0) throw new InputError("no rows to train on");
        var scales = inputScales ?? (options.NormalizeSources ? PairedActivations.NormScales(rows, d) : Enumerable.Repeat(1f, n).ToArray());
        return TrainCore(sources, width, options, scales, backend, trainer =>
        {
            var probe = new Crosscoder(sources, d, trainer.Dictionary, scales);
            return trainer.Train(probe.Concatenate(rows, count));
        });
    }

    // Builds and initialises the dictionary, runs `train` on its trainer, and folds a BatchTopK threshold into the JumpReLU it is held as.
    static (Crosscoder Crosscoder, List<SaeStepMetrics> Steps) TrainCore(IReadOnlyList<CrosscoderSource> sources, int width, CrosscoderTrainingOptions options,
        float[] scales, IComputeBackend? backend, Func<SaeTrainer, List<SaeStepMetrics>> train)
    {
        int n = sources.Count, d = width;
        if (options.DSae < 1) throw new InputError($"argument: --d-sae: expected at least 1, got {options.DSae}");
        if (!(options.DecoderInitNorm > 0) || !float.IsFinite(options.DecoderInitNorm)) throw new InputError($"argument: --decoder-init-norm: expected a positive number, got {options.DecoderInitNorm}");
        var activation = ActivationFor(options, n);
        var shape = SaeShape.Sae(n * d, options.DSae, applyBDecToInput: false);
        options.Training.Validate(shape, activation);
        var dict = new SparseDictionary(shape, activation);
        var cc = new Crosscoder(sources, d, dict, scales) { Architecture = "relu" };
        Initialize(dict, n, d, options.Training.Seed, options.DecoderInitNorm);
        var trainer = new SaeTrainer(dict, options.Training, backend);
        var steps = train(trainer);
        return (Finished(sources, d, trainer.Dictionary, scales, options), steps); // the parameters, back from the device
    }

    // The trained dictionary as the crosscoder the files hold: a BatchTopK one's f_i kept where f_i·n_i > θ, i.e. the
    // JumpReLU f_i > θ / n_i.
    static Crosscoder Finished(IReadOnlyList<CrosscoderSource> sources, int d, SparseDictionary dict, float[] scales, CrosscoderTrainingOptions options)
    {
        if (dict.Activation is not CrosscoderBatchTopKActivation) return new Crosscoder(sources, d, dict, scales) { Architecture = "relu" };
        float theta = dict.P.Threshold[0];
        if (!(theta >= 0)) throw new InputError("training never set the BatchTopK threshold (no latent fired); check the activations and --lr");
        var folded = CrosscoderFiles.FoldThreshold(dict.P, sources.Count, d, options.DSae, theta, CodeNormalization.Crosscoder);
        return new Crosscoder(sources, d, folded, scales) { Architecture = "batchtopk", BatchTopKThreshold = theta, K = options.K };
    }

    /// <summary>
    /// Trains a crosscoder in <paramref name="folder"/> as <c>loupe sae train</c> trains an SAE (SaeTrainingRun): metrics appended
    /// to training_log.jsonl and checkpoint.safetensors written every <paramref name="checkpointEvery"/> steps, a killed run
    /// continued bit for bit with <paramref name="resume"/> (same options, rows and scales: the rows' description, scales
    /// included, is checked), and the crosscoder saved there at the end (model.safetensors + config.json). Returns it.
    /// </summary>
    /// <exception cref="InputError">Invalid options; the folder holds a checkpoint and <paramref name="resume"/> is false, or its
    /// settings differ; another run holds the folder; training diverged (the last checkpoint is kept).</exception>
    public static Crosscoder TrainInFolder(IReadOnlyList<CrosscoderSource> sources, int width, IRowWindows rows, CrosscoderTrainingOptions options,
        float[] inputScales, string folder, int checkpointEvery, bool resume, IReadOnlyDictionary<string, string>? provenance = null,
        IComputeBackend? backend = null, IProgress<SaeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentNullException.ThrowIfNull(inputScales);
        Crosscoder? saved = null;
        TrainCore(sources, width, options, inputScales, backend, trainer =>
        {
            SaeTrainingRun.Run(trainer, rows, folder, checkpointEvery, resume, "loupe crosscoder train", [CrosscoderFiles.WeightsFile, CrosscoderFiles.ConfigFile],
                dict =>
                {
                    saved = Finished(sources, width, dict, inputScales, options);
                    CrosscoderFiles.Save(folder, saved, provenance);
                }, progress, cancellationToken);
            return [];
        });
        return saved!;
    }

    /// <summary>
    /// The input scales of <see cref="CrosscoderTrainingOptions.NormalizeSources"/> (√d / mean‖x_s‖ per source) from the first
    /// <paramref name="contexts"/> contexts, for training on rows read on the fly (<see cref="PairedRows"/>); all 1 without it.
    /// </summary>
    public static float[] EstimateScales(PairedActivations paired, HarvestContexts contexts, CrosscoderTrainingOptions options, int maxContexts = 64)
    {
        ArgumentNullException.ThrowIfNull(paired);
        ArgumentNullException.ThrowIfNull(contexts);
        ArgumentNullException.ThrowIfNull(options);
        if (!options.NormalizeSources) return [.. Enumerable.Repeat(1f, paired.Sources.Count)];
        var first = HarvestContexts.FromRows([.. contexts.Contexts.Take(Math.Max(1, maxContexts))], contexts.SourceDescription, contexts.Seed);
        return PairedActivations.NormScales(CollectRows(paired, first, options.BatchSize), paired.Width);
    }

    /// <summary>
    /// Trains a crosscoder over <paramref name="sources"/> on rows read window by window (<see cref="PairedRows"/>, whose
    /// scales <paramref name="inputScales"/> must be): the models run again every epoch and only one window is held.
    /// </summary>
    /// <exception cref="InputError">Invalid options.</exception>
    public static (Crosscoder Crosscoder, List<SaeStepMetrics> Steps) Train(IReadOnlyList<CrosscoderSource> sources, int width, IRowWindows rows,
        CrosscoderTrainingOptions options, float[] inputScales, IComputeBackend? backend = null)
    {
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentNullException.ThrowIfNull(inputScales);
        return TrainCore(sources, width, options, inputScales, backend, trainer =>
        {
            trainer.Begin(rows);
            var steps = new List<SaeStepMetrics>(options.Training.Steps);
            while (!trainer.IsComplete) steps.Add(trainer.Step());
            trainer.Finish();
            return steps;
        });
    }

    // W_dec rows Gaussian with each source's segment at norm `norm`; W_enc = W_decᵀ; biases 0.
    static void Initialize(SparseDictionary dict, int n, int d, int seed, float norm)
    {
        var p = dict.P;
        var rng = new Random(seed);
        int f = dict.Shape.DSae, dOut = n * d;
        for (int i = 0; i < f; i++)
            for (int s = 0; s < n; s++)
            {
                var seg = p.WDec.AsSpan(i * dOut + s * d, d);
                for (int j = 0; j < d; j++) seg[j] = SparseDictionary.Gaussian(rng);
                TensorPrimitives.Multiply(seg, norm / TensorPrimitives.Norm(seg), seg);
            }
        for (int i = 0; i < f; i++)
            for (int j = 0; j < dOut; j++) p.WEnc[j * f + i] = p.WDec[i * dOut + j];
        Array.Clear(p.BEnc);
        Array.Clear(p.BDec);
    }
}
