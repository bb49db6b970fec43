// Evaluating a crosscoder on the models it reads, with SAELens's evals.py definitions per source and per model.
//
// Shape legend: B contexts per batch, T = context size, d = source width, F = latents; rows = B·(T − 1).
// 1. Per batch, every model runs once (PairedActivations): each source's rows x_s [rows, d] (position 0, the BOS, left out)
//    and each model's clean logits.
// 2. latents = crosscoder(x) [rows, F]; x̂_s = its reconstruction of source s [rows, d] (model units).
// 3. Per source: Σ‖x_s − x̂_s‖², Σ x_s and Σ x_s² per dimension (FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the per-dimension mean
//    over every row), cos(x_s, x̂_s); per latent: rows it fires on; L0 = mean #{latents > 0} per row.
// 4. Per model m: a run with every source of m replaced by its reconstruction at positions 1…T−1 (position 0 keeps its
//    activation) → CE_spliced; a run with those hooks zero at every position → CE_zero; CE over every position but the
//    last, predicting the next token; loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean).
// 5. Optionally Latent Scaling of chosen latents (CrosscoderLatentScaling), from the same batches.
// Models on one device: steps 2–4 run there too (CrosscoderEvaluator.Device.cs) and what a batch reads back is one vector of
// sums and the losses; with Latent Scaling, that batch's rows, latents and reconstructions as well (counted).
// Model diffing reads the per-model numbers side by side: a crosscoder that reconstructs one model much worse than the
// other, or whose splice costs one model more loss, has not learned the two alike.
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>How a crosscoder evaluation runs.</summary>
public sealed record CrosscoderEvalOptions
{
    /// <summary>Contexts per forward pass.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>Whether to splice reconstructions into each model for its losses (two more passes per model and batch).</summary>
    public bool Losses { get; init; } = true;

    /// <summary>Latents to measure with Latent Scaling (two sources only; <see cref="CrosscoderLatentScaling"/>); empty: none.</summary>
    public IReadOnlyList<int> LatentScaling { get; init; } = [];
}

/// <summary>Reconstruction of one source.</summary>
public sealed record CrosscoderSourceMetrics(string Source, string Model, string Hook, double Mse, double Fvu, double ExplainedVariance, double CosineSimilarity);

/// <summary>Losses of one model with its sources replaced.</summary>
public sealed record CrosscoderModelLosses(string Model, double CeClean, double CeSpliced, double CeZeroAblated, double LossRecovered);

/// <summary>The evaluation of a crosscoder.</summary>
public sealed record CrosscoderEvalResult
{
    public required string Crosscoder { get; init; }
    public required int Contexts { get; init; }
    public required int ContextSize { get; init; }
    public required long Rows { get; init; }
    public required double L0 { get; init; }
    public required int DSae { get; init; }
    public required int DeadLatents { get; init; }
    public required IReadOnlyList<CrosscoderSourceMetrics> Sources { get; init; }
    public required IReadOnlyList<CrosscoderModelLosses> Models { get; init; }
    /// <summary>Fraction of rows each latent fires on [F].</summary>
    public required double[] Density { get; init; }
    /// <summary>Latent Scaling of the latents asked for.</summary>
    public IReadOnlyList<CrosscoderLatentScale> LatentScales { get; init; } = [];
}

/// <summary>Evaluates a crosscoder on its models (see the file header).</summary>
public static partial class CrosscoderEvaluator
{
    /// <exception cref="InputError">The models do not fit the crosscoder (see <see cref="PairedActivations"/>), or there are no contexts.</exception>
    public static CrosscoderEvalResult Evaluate(Crosscoder crosscoder, IReadOnlyDictionary<string, HookedTransformer> models, HarvestContexts contexts,
        CrosscoderEvalOptions? options = null, IProgress<int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(crosscoder);
        ArgumentNullException.ThrowIfNull(contexts);
        options ??= new CrosscoderEvalOptions();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.BatchSize);
        if (contexts.Count == 0) throw new InputError("no contexts to evaluate on");
        if (contexts.ContextSize < 2) throw new InputError("argument: --context-size: a crosscoder evaluation needs contexts of at least 2 tokens (position 0 is left out)");
        var paired = new PairedActivations(crosscoder.Sources, crosscoder.Width, models);
        var scaling = options.LatentScaling.Count > 0 ? new CrosscoderLatentScaling(crosscoder, options.LatentScaling) : null;
        int T = contexts.ContextSize;
        var totals = new Totals(crosscoder, paired.Models.Keys);
        var device = paired.Backend is { } backend ? new DeviceBatch(backend, crosscoder) : null;

        for (int start = 0; start < contexts.Count; start += options.BatchSize)
        {
            int b = Math.Min(options.BatchSize, contexts.Count - start);
            var ids = contexts.Ids(start, b);
            if (device is not null) device.Add(paired, ids, b, T, options.Losses, scaling, totals);
            else AddOnHost(crosscoder, paired, ids, b, T, options.Losses, scaling, totals);
            progress?.Report(start + b);
        }
        return totals.Result(crosscoder, contexts, options.Losses, scaling);
    }

    // Steps 1–5 of one batch on the host.
    static void AddOnHost(Crosscoder crosscoder, PairedActivations paired, int[] ids, int b, int T, bool losses, CrosscoderLatentScaling? scaling, Totals totals)
    {
        int n = crosscoder.Sources.Count, d = crosscoder.Width, f = crosscoder.DSae;
        var (x, logits) = paired.Run(ids, b, T, keepLogits: losses);
        var batch = new TokenBatch(ids, b, T);
        int rows = b * (T - 1);
        var xc = crosscoder.Concatenate(x, rows);                       // [rows, S·d], scaled
        var latents = crosscoder.Dictionary.Encode(xc, rows);
        var reconScaled = new float[(long)rows * n * d];
        crosscoder.Dictionary.Decode(latents, [], rows, reconScaled);
        scaling?.Add(xc, latents, reconScaled, rows);
        var recon = crosscoder.Split(reconScaled, rows);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < f; i++)
                if (latents[(long)r * f + i] > 0) { totals.Fires[i]++; totals.Active++; }
        for (int s = 0; s < n; s++)
            for (int r = 0; r < rows; r++)
            {
                double e = 0, xx = 0, rr = 0, xr = 0;
                for (int j = 0; j < d; j++)
                {
                    double xv = x[s][r * d + j], rv = recon[s][r * d + j];
                    e += (xv - rv) * (xv - rv);
                    xx += xv * xv;
                    rr += rv * rv;
                    xr += xv * rv;
                    totals.Sum[s][j] += xv;
                    totals.SumSq[s][j] += xv * xv;
                }
                totals.Error[s] += e;
                totals.Cosine[s] += Cosine(xx, rr, xr);
            }
        totals.Rows += rows;
        if (!losses) return;
        totals.Predictions += (long)b * (T - 1);
        foreach (var (label, model) in paired.Models)
        {
            var ce = totals.Ce[label];
            ce[0] += Evaluation.SaeEvaluator.CrossEntropySum(batch, logits[label]);
            ce[1] += Evaluation.SaeEvaluator.CrossEntropySum(batch, Spliced(model, crosscoder, label, recon, ids, b, T, zero: false));
            ce[2] += Evaluation.SaeEvaluator.CrossEntropySum(batch, Spliced(model, crosscoder, label, recon, ids, b, T, zero: true));
        }
    }

    // cos(x, x̂) as SaeEvaluator and the device's ReconstructionRowStats define it: 1 when both are 0, 0 when one is.
    static double Cosine(double xx, double rr, double xr) => xx == 0 && rr == 0 ? 1 : xx == 0 || rr == 0 ? 0 : xr / Math.Sqrt(xx * rr);

    /// <summary>The running sums of an evaluation (double precision), and the result they give.</summary>
    sealed class Totals
    {
        public readonly double[] Error, Cosine;          // [S] Σ‖x_s − x̂_s‖², Σ cos(x_s, x̂_s)
        public readonly double[][] Sum, SumSq;           // [S][d] Σ x_s, Σ x_s² per dimension
        public readonly long[] Fires;                    // [F] rows each latent fired on
        public long Rows, Active, Predictions;
        public readonly Dictionary<string, double[]> Ce; // per model: Σ CE clean, spliced, zero-ablated

        public Totals(Crosscoder crosscoder, IEnumerable<string> models)
        {
            int n = crosscoder.Sources.Count, d = crosscoder.Width;
            (Error, Cosine) = (new double[n], new double[n]);
            (Sum, SumSq) = (new double[n][], new double[n][]);
            for (int s = 0; s < n; s++) (Sum[s], SumSq[s]) = (new double[d], new double[d]);
            Fires = new long[crosscoder.DSae];
            Ce = models.ToDictionary(k => k, _ => new double[3], StringComparer.Ordinal);
        }

        public CrosscoderEvalResult Result(Crosscoder crosscoder, HarvestContexts contexts, bool losses, CrosscoderLatentScaling? scaling)
        {
            int n = crosscoder.Sources.Count, d = crosscoder.Width;
            var sources = new CrosscoderSourceMetrics[n];
            for (int s = 0; s < n; s++)
            {
                double total = 0;
                for (int j = 0; j < d; j++) total += SumSq[s][j] - Sum[s][j] * Sum[s][j] / Rows;
                double fvu = total > 0 ? Error[s] / total : double.NaN;
                var src = crosscoder.Sources[s];
                sources[s] = new CrosscoderSourceMetrics(src.ToString(), src.Model, src.Hook, Error[s] / Rows, fvu, 1 - fvu, Cosine[s] / Rows);
            }
            var models = losses ? Ce.Select(kv =>
            {
                double clean = kv.Value[0] / Predictions, spliced = kv.Value[1] / Predictions, zero = kv.Value[2] / Predictions;
                return new CrosscoderModelLosses(kv.Key, clean, spliced, zero, (zero - spliced) / (zero - clean));
            }).ToArray() : [];
            return new CrosscoderEvalResult
            {
                Crosscoder = crosscoder.Origin, Contexts = contexts.Count, ContextSize = contexts.ContextSize, Rows = Rows, L0 = (double)Active / Rows,
                DSae = crosscoder.DSae, DeadLatents = Fires.Count(c => c == 0), Sources = sources, Models = models,
                Density = Fires.Select(c => (double)c / Rows).ToArray(),
                LatentScales = scaling?.Result() ?? [],
            };
        }
    }

    // One run of `model` with each of its sources' hooks replaced: by the reconstruction at positions ≥ 1, or by 0 everywhere.
    static Tensor Spliced(HookedTransformer model, Crosscoder crosscoder, string label, float[][] recon, int[] ids, int b, int T, bool zero)
    {
        int d = crosscoder.Width;
        var options = new RunOptions();
        for (int s = 0; s < crosscoder.Sources.Count; s++)
        {
            if (crosscoder.Sources[s].Model != label) continue;
            var rows = recon[s];
            options.AddHook(crosscoder.Sources[s].Hook, (act, _) =>
            {
                var data = new float[b * T * d];
                if (!zero)
                {
                    var original = act.ToCpu().Span;
                    for (int i = 0; i < b; i++)
                    {
                        original.Slice(i * T * d, d).CopyTo(data.AsSpan(i * T * d, d));
                        rows.AsSpan(i * (T - 1) * d, (T - 1) * d).CopyTo(data.AsSpan((i * T + 1) * d));
                    }
                }
                var replacement = Tensor.FromArray(data, b, T, d);
                return act.IsHost ? replacement : model.Backend.ToDevice(replacement); // one counted upload per hook and batch
            });
        }
        var result = model.Run(new TokenBatch(ids, b, T), options);
        var logits = result.Logits.ToCpu().Clone();
        model.Recycle(result);
        return logits;
    }
}
