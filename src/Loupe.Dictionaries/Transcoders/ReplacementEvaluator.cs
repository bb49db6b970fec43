// Loss recovered with every MLP replaced at once, for any IMlpReplacement (per-layer transcoders or a CLT).
//
// Shape legend: B contexts per batch, T = context size, rows = B·T, V = d_vocab_out.
//   inputs[ℓ] [rows, d_in]   what layer ℓ's features read (InputHook(ℓ))
//   acts[ℓ]   [rows, d_sae]  their activations
//   recon[t]  [rows, d_out]  Reconstruct(t, acts, inputs) in place of OutputHook(t)
//
// 1. Take the contexts B at a time.
// 2. Clean run, with read-only hooks: at InputHook(ℓ) encode; at OutputHook(t) reconstruct and compare with the
//    true MLP output (per-layer squared error, variance, L0) → logits_clean. These are the per-layer metrics: each
//    reconstruction against the MLP output it replaces, on clean inputs.
// 3. Replaced run: the same hooks, but OutputHook(t) returns recon[t] (positions holding an excluded token, BOS/EOS
//    by default, keep the original), so every later input is the replacement model's own → logits_replaced.
// 4. Zero-ablated run: every OutputHook(t) returns 0 → logits_zero.
// 5. CE at every position t < T−1 predicting token t+1; loss recovered = (CE_zero − CE_replaced) / (CE_zero − CE_clean).
// With the model on a device, the replacement's weights are uploaded there once (DeviceMlpReplacement) and the hooks
// encode, reconstruct and measure there (DeviceReplacementEvaluation): per batch the ids and a row mask go in, one
// [L, 4 + d_out] buffer of sums comes out (a replacement without device kernels reads each hook with one copy and
// hands its reconstruction back with one upload); the logits stay there: CE is CrossEntropyRows summed on the device, so
// three scalars per batch come back instead of three [rows, V] logit tables.
using System.Numerics.Tensors;
using Tensor = Loupe.Tensors.Tensor;
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>How <see cref="ReplacementEvaluator"/> runs.</summary>
public sealed record ReplacementEvalOptions
{
    /// <summary>Contexts per forward pass.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>Tokens whose positions keep the true MLP outputs and are left out of the per-layer metrics; null: BOS and EOS.</summary>
    public IReadOnlyCollection<int>? ExcludeTokens { get; init; }
}

/// <summary>Metrics of a replacement (see the steps at the top of ReplacementEvaluator.cs).</summary>
public sealed record ReplacementEvalResult
{
    public required string Source { get; init; }
    public required string Fingerprint { get; init; }
    public required int Layers { get; init; }
    public required int Contexts { get; init; }
    public required int ContextSize { get; init; }
    /// <summary>Positions in the per-layer metrics.</summary>
    public required long Positions { get; init; }
    public required long Predictions { get; init; }
    public required double CeLossClean { get; init; }
    /// <summary>With every MLP output replaced by its reconstruction.</summary>
    public required double CeLossReplaced { get; init; }
    /// <summary>With every MLP output zero.</summary>
    public required double CeLossZeroAblated { get; init; }
    /// <summary>(CE_zero − CE_replaced) / (CE_zero − CE_clean); NaN when zero-ablation does not change the loss.</summary>
    public required double LossRecovered { get; init; }
    /// <summary>Per target layer, on clean inputs: Σ‖y − ŷ‖² / Σ‖y − ȳ‖².</summary>
    public required double[] Fvu { get; init; }
    /// <summary>Per target layer: 1 − FVU.</summary>
    public required double[] ExplainedVariance { get; init; }
    /// <summary>Per source layer: mean active features per position (clean inputs).</summary>
    public required double[] L0 { get; init; }
    public required double Seconds { get; init; }
}

/// <summary>Evaluates an <see cref="IMlpReplacement"/> on a model with every MLP replaced at once.</summary>
public static class ReplacementEvaluator
{
    /// <exception cref="InputError">A hook is not in the model (closest names listed); a hook's width differs from the replacement's d_in / d_out; the contexts are longer than n_ctx; every position is excluded.</exception>
    public static ReplacementEvalResult Evaluate(HookedTransformer model, IMlpReplacement replacement, HarvestContexts contexts, ReplacementEvalOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(replacement);
        ArgumentNullException.ThrowIfNull(contexts);
        options ??= new ReplacementEvalOptions();
        if (options.BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(options), $"batch size must be at least 1 (got {options.BatchSize})");
        if (contexts.ContextSize > model.Config.NCtx)
            throw InputError.Expected("argument", "context size", $"at most the model's n_ctx = {model.Config.NCtx} tokens", contexts.ContextSize);
        int L = replacement.Layers;
        for (int l = 0; l < L; l++)
            foreach (var h in new[] { replacement.InputHook(l), replacement.OutputHook(l) })
                if (!model.HookPointNames.Contains(h))
                    throw new InputError($"{replacement.Source}: hook '{h}' is not a hook point of this model; closest names: {string.Join(", ", HookNames.Closest(h, model.HookPointNames))}");
        var excluded = new HashSet<int>(options.ExcludeTokens ?? DefaultExcluded(model));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var err = new double[L];
        var sum = Enumerable.Range(0, L).Select(_ => new double[replacement.DOut]).ToArray();
        var sumSq = new double[L];
        var active = new double[L];
        long positions = 0, predictions = 0;
        double ceClean = 0, ceReplaced = 0, ceZero = 0;
        // A replacement without device kernels (another IMlpReplacement) runs its hooks on the host, one copy each way.
        var device = model.Backend.Device.IsCpu || !DeviceMlpReplacement.Supports(replacement) ? null
            : new DeviceReplacementEvaluation(DeviceMlpReplacement.Upload(replacement, model.Backend));

        for (int start = 0; start < contexts.Count; start += options.BatchSize)
        {
            int count = Math.Min(options.BatchSize, contexts.Count - start);
            var batch = TokenBatch.FromRows(Enumerable.Range(start, count).Select(i => contexts.Contexts[i]).ToArray());
            int rows = batch.Batch * batch.Length;
            var keep = new bool[rows];   // [rows] excluded token: keeps the true MLP output
            for (int i = 0; i < rows; i++) keep[i] = excluded.Contains(batch.Ids[i]);

            // 2. clean, measuring each reconstruction
            Tensor clean, replaced;
            if (device is not null)
            {
                var mask = device.Mask(keep);
                var stats = model.Backend.Empty(L, device.Stride);
                clean = model.Run(batch, device.Hooks(rows, keep, mask, stats)).Logits;
                replaced = model.Run(batch, device.Hooks(rows, keep, mask, null)).Logits;
                var sums = stats.ToCpu().Span;
                for (int t = 0; t < L; t++)
                {
                    var layer = sums.Slice(t * device.Stride, device.Stride);
                    err[t] += layer[0];
                    sumSq[t] += layer[1];
                    active[t] += layer[2] + layer[3];
                    for (int j = 0; j < replacement.DOut; j++) sum[t][j] += layer[4 + j];
                }
                positions += keep.Count(k => !k);
            }
            else
            {
                clean = model.Run(batch, Hooks(model.Backend, replacement, rows, keep, replace: false, (t, y, recon, acts) =>
                {
                    int dOut = replacement.DOut;
                    for (int i = 0; i < rows; i++)
                    {
                        if (keep[i]) continue;
                        var yi = y.Slice(i * dOut, dOut);
                        var ri = recon.AsSpan(i * dOut, dOut);
                        for (int j = 0; j < dOut; j++) { double e = yi[j] - ri[j]; err[t] += e * e; sum[t][j] += yi[j]; }
                        sumSq[t] += TensorPrimitives.SumOfSquares(yi);
                        int dSae = replacement.Features(t);
                        foreach (float a in acts[t].AsSpan(i * dSae, dSae)) if (a != 0) active[t]++;
                        if (t == 0) positions++;
                    }
                })).Logits;
                // 3. replaced
                replaced = model.Run(batch, Hooks(model.Backend, replacement, rows, keep, replace: true, null)).Logits;
            }
            // 4. zero-ablated
            var zeroOptions = new RunOptions();
            var backend = model.Backend;
            for (int t = 0; t < L; t++) zeroOptions.AddHook(replacement.OutputHook(t), (a, _) => backend.Zeros(a.Shape.ToArray()));
            var zero = model.Run(batch, zeroOptions).Logits;
            // 5.
            var (c, r, z, n) = backend.Device.IsCpu
                ? CrossEntropies(batch, clean.ToCpu(), replaced.ToCpu(), zero.ToCpu())
                : DeviceCrossEntropies(backend, batch, clean, replaced, zero);
            ceClean += c; ceReplaced += r; ceZero += z; predictions += n;
        }
        if (positions == 0) throw new InputError($"every position holds an excluded token ({string.Join(", ", excluded)}); nothing to measure");

        var fvu = new double[L];
        for (int t = 0; t < L; t++)
        {
            double total = sumSq[t];
            foreach (double s in sum[t]) total -= s * s / positions;
            fvu[t] = total <= 0 ? double.NaN : err[t] / total;
        }
        ceClean /= predictions; ceReplaced /= predictions; ceZero /= predictions;
        return new ReplacementEvalResult
        {
            Source = replacement.Source,
            Fingerprint = replacement.Fingerprint,
            Layers = L,
            Contexts = contexts.Count,
            ContextSize = contexts.ContextSize,
            Positions = positions,
            Predictions = predictions,
            CeLossClean = ceClean,
            CeLossReplaced = ceReplaced,
            CeLossZeroAblated = ceZero,
            LossRecovered = ceZero == ceClean ? double.NaN : (ceZero - ceReplaced) / (ceZero - ceClean),
            Fvu = fvu,
            ExplainedVariance = fvu.Select(f => 1 - f).ToArray(),
            L0 = active.Select(a => a / positions).ToArray(),
            Seconds = clock.Elapsed.TotalSeconds,
        };
    }

    /// <summary>
    /// Hooks that encode at every InputHook(ℓ) and reconstruct at every OutputHook(t); with <paramref name="replace"/>
    /// the reconstruction flows on (except at kept rows). <paramref name="observe"/> sees (t, true output, recon, acts).
    /// </summary>
    static RunOptions Hooks(IComputeBackend backend, IMlpReplacement r, int rows, bool[] keep, bool replace, Action<int, ReadOnlySpan<float>, float[], float[][]>? observe)
    {
        int L = r.Layers;
        var inputs = new float[L][];   // [L][rows, d_in]
        var acts = new float[L][];     // [L][rows, d_sae(ℓ)]
        var options = new RunOptions();
        for (int l = 0; l < L; l++)
        {
            int layer = l;
            options.AddHook(r.InputHook(l), (a, ctx) =>
            {
                var x = a.ToCpu();
                if (x.Length != rows * r.DIn)
                    throw InputError.Expected(r.Source, $"hook '{ctx.Name}' width", $"d_in = {r.DIn} (the replacement's)", x.ShapeString);
                inputs[layer] = x.Span.ToArray();
                int dSae = r.Features(layer);
                var pre = new float[rows * dSae];
                acts[layer] = new float[rows * dSae];
                r.Encode(layer, inputs[layer], rows, pre, acts[layer]);
                return null;
            });
            options.AddHook(r.OutputHook(l), (a, ctx) =>
            {
                var y = a.ToCpu();
                if (y.Length != rows * r.DOut)
                    throw InputError.Expected(r.Source, $"hook '{ctx.Name}' width", $"d_out = {r.DOut} (the replacement's)", y.ShapeString);
                for (int s = 0; s <= layer; s++)
                    if (acts[s] is null) throw new InvalidOperationException($"{ctx.Name} ran before {r.InputHook(s)}: the features of layer {s} are not known yet");
                var recon = new float[rows * r.DOut];
                r.Reconstruct(layer, acts, inputs, rows, recon);
                observe?.Invoke(layer, y.Span, recon, acts);
                if (!replace) return null;
                int d = r.DOut;
                for (int i = 0; i < rows; i++) if (keep[i]) y.Span.Slice(i * d, d).CopyTo(recon.AsSpan(i * d, d));
                return backend.ToDevice(Tensor.FromArray(recon, a.Shape.ToArray()));
            });
        }
        return options;
    }

    static (double Clean, double Replaced, double Zero, long Count) CrossEntropies(TokenBatch batch, Tensor clean, Tensor replaced, Tensor zero)
    {
        int B = batch.Batch, T = batch.Length, V = clean.Dim(-1);
        double c = 0, r = 0, z = 0;
        long n = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T - 1; t++)
            {
                int at = (b * T + t) * V, next = batch.Ids[b * T + t + 1];
                c += Ce(clean.Span.Slice(at, V), next);
                r += Ce(replaced.Span.Slice(at, V), next);
                z += Ce(zero.Span.Slice(at, V), next);
                n++;
            }
        return (c, r, z, n);
    }

    /// <summary><see cref="CrossEntropies"/> on the device: per-row CE summed there, three scalars read back.</summary>
    static (double Clean, double Replaced, double Zero, long Count) DeviceCrossEntropies(IComputeBackend backend, TokenBatch batch, Tensor clean, Tensor replaced, Tensor zero)
    {
        int B = batch.Batch, T = batch.Length, rows = B * T, V = clean.Dim(-1);
        var targets = new int[rows];   // the next token; −1 (no prediction) at the last position
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) targets[b * T + t] = t == T - 1 ? -1 : batch.Ids[b * T + t + 1];
        var loss = backend.Empty(rows);
        double Sum(Tensor logits)
        {
            backend.CrossEntropyRows(logits, rows, V, targets, loss, null, 1f);
            return backend.Sum(loss);
        }
        return (Sum(clean), Sum(replaced), Sum(zero), (long)B * (T - 1));
    }

    // −log softmax(logits)[target]
    static double Ce(ReadOnlySpan<float> logits, int target)
    {
        float max = TensorPrimitives.Max(logits);
        double s = 0;
        foreach (float v in logits) s += Math.Exp(v - max);
        return max + Math.Log(s) - logits[target];
    }

    static IEnumerable<int> DefaultExcluded(HookedTransformer model)
    {
        if ((model.Config.BosTokenId ?? model.Tokenizer?.BosTokenId) is int bos) yield return bos;
        if ((model.Config.EosTokenId ?? model.Tokenizer?.EosTokenId) is int eos) yield return eos;
    }
}
