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
// Models on a device run there; the hooks, logits and reconstructions cross to and from the host once per batch (counted).
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
public static class CrosscoderEvaluator
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
        int n = crosscoder.Sources.Count, d = crosscoder.Width, f = crosscoder.DSae, T = contexts.ContextSize;
        var err = new double[n];
        var sum = new double[n][];
        var sumSq = new double[n][];
        var cos = new double[n];
        for (int s = 0; s < n; s++) (sum[s], sumSq[s]) = (new double[d], new double[d]);
        var fires = new long[f];
        long rowsTotal = 0, active = 0, predictions = 0;
        var ce = paired.Models.Keys.ToDictionary(k => k, _ => new double[3], StringComparer.Ordinal); // clean, spliced, zero

        for (int start = 0; start < contexts.Count; start += options.BatchSize)
        {
            int b = Math.Min(options.BatchSize, contexts.Count - start);
            var ids = new int[b * T];
            for (int i = 0; i < b; i++) contexts.Contexts[start + i].CopyTo(ids, i * T);
            var (x, logits) = paired.Run(ids, b, T, keepLogits: options.Losses);
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
                    if (latents[(long)r * f + i] > 0) { fires[i]++; active++; }
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
                        sum[s][j] += xv;
                        sumSq[s][j] += xv * xv;
                    }
                    err[s] += e;
                    cos[s] += xx > 0 && rr > 0 ? xr / Math.Sqrt(xx * rr) : 0;
                }
            rowsTotal += rows;
            if (options.Losses)
            {
                predictions += (long)b * (T - 1);
                foreach (var (label, model) in paired.Models)
                {
                    ce[label][0] += Evaluation.SaeEvaluator.CrossEntropySum(batch, logits[label]);
                    ce[label][1] += Evaluation.SaeEvaluator.CrossEntropySum(batch, Spliced(model, crosscoder, label, recon, ids, b, T, zero: false));
                    ce[label][2] += Evaluation.SaeEvaluator.CrossEntropySum(batch, Spliced(model, crosscoder, label, recon, ids, b, T, zero: true));
                }
            }
            progress?.Report(start + b);
        }

        var sources = new CrosscoderSourceMetrics[n];
        for (int s = 0; s < n; s++)
        {
            double total = 0;
            for (int j = 0; j < d; j++) total += sumSq[s][j] - sum[s][j] * sum[s][j] / rowsTotal;
            double fvu = total > 0 ? err[s] / total : double.NaN;
            var src = crosscoder.Sources[s];
            sources[s] = new CrosscoderSourceMetrics(src.ToString(), src.Model, src.Hook, err[s] / rowsTotal, fvu, 1 - fvu, cos[s] / rowsTotal);
        }
        var losses = paired.Models.Keys.Select(label =>
        {
            var c = ce[label];
            double clean = c[0] / predictions, spliced = c[1] / predictions, zero = c[2] / predictions;
            return new CrosscoderModelLosses(label, clean, spliced, zero, (zero - spliced) / (zero - clean));
        }).Where(_ => options.Losses).ToArray();
        return new CrosscoderEvalResult
        {
            Crosscoder = crosscoder.Origin, Contexts = contexts.Count, ContextSize = T, Rows = rowsTotal, L0 = (double)active / rowsTotal,
            DSae = f, DeadLatents = fires.Count(c => c == 0), Sources = sources, Models = losses,
            Density = fires.Select(c => (double)c / rowsTotal).ToArray(),
            LatentScales = scaling?.Result() ?? [],
        };
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
