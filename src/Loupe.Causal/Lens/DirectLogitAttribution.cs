using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Causal.Lens;

// Direct logit attribution (TransformerLens semantics: cache.decompose_resid +
// apply_ln_to_stack + residual_stack_to_logit_diff):
// 1. Run once, caching the decomposition's hooks (ResidualDecomposition) and ln_final.hook_scale.
// 2. For each row, split the final residual stream at the position into components.
// 3. Put each component through the final norm with the scale FROZEN at the cached
//    ln_final.hook_scale: subtract the component's own mean (LayerNorm only), divide by the scale,
//    multiply by the norm weight (+ WeightOffset, Gemma). The norm's bias is not a component.
// 4. Dot with the logit direction u = W_U[:, answer] − W_U[:, wrong] (or W_U[:, token]).
// Then Σ components = logit(answer) − logit(wrong) − ln_final.b·u − (b_U[answer] − b_U[wrong]),
// exactly up to float rounding. Final-logit soft-capping (Gemma 2: cap·tanh(z/cap)) is
// nonlinear, so DLA explains the logits BEFORE it; PreCapLogitDiff is that quantity.

/// <summary>A direction in the residual stream (after the final norm) whose dot product is a logit or a logit difference.</summary>
/// <param name="Name">e.g. <c>logit(17)</c> or <c>logit(17) − logit(42)</c>.</param>
/// <param name="Vector">u <c>[d_model]</c>: W_U[:, answer] (− W_U[:, wrong]).</param>
/// <param name="UnembedBias">b_U[answer] (− b_U[wrong]); 0 without b_U.</param>
public sealed record LogitDirection(string Name, double[] Vector, double UnembedBias)
{
    /// <summary>The token whose W_U column this direction is (or starts from), when it was made from tokens: on a device DLA then multiplies by that column of the unembedding instead of uploading <see cref="Vector"/>.</summary>
    public int? Answer { get; init; }

    /// <summary>The token whose W_U column is subtracted (<see cref="Difference"/>), or null.</summary>
    public int? Wrong { get; init; }

    /// <summary>One token's logit.</summary>
    /// <exception cref="InputError">The token is outside d_vocab_out.</exception>
    public static LogitDirection Token(HookedTransformer model, int token) =>
        new($"logit({CheckToken(model, token, "answer")})", model.UnembedDirection(token).Select(v => (double)v).ToArray(), BiasOf(model, token)) { Answer = token };

    /// <summary>logit(answer) − logit(wrong).</summary>
    /// <exception cref="InputError">A token is outside d_vocab_out.</exception>
    public static LogitDirection Difference(HookedTransformer model, int answer, int wrong)
    {
        var a = model.UnembedDirection(CheckToken(model, answer, "answer"));
        var w = model.UnembedDirection(CheckToken(model, wrong, "wrong"));
        return new($"logit({answer}) − logit({wrong})", a.Select((v, d) => (double)v - w[d]).ToArray(), BiasOf(model, answer) - BiasOf(model, wrong)) { Answer = answer, Wrong = wrong };
    }

    static int CheckToken(HookedTransformer model, int token, string what) =>
        Check.InRange(token, 0, model.Config.VocabOut - 1, "logit direction", $"{what} token (d_vocab_out = {model.Config.VocabOut})");

    static double BiasOf(HookedTransformer model, int token)
    {
        var b = model.UnembedLayer.Bias.Span;
        return b.IsEmpty ? 0 : b[token];
    }
}

/// <summary>
/// DLA of every component, for each row of a batch. <see cref="Values"/> is <c>[row][component]</c>
/// with components in <see cref="Components"/> order (the <see cref="ResidualDecomposition"/> order).
/// </summary>
public sealed class DlaResult
{
    public required string[] Components { get; init; }
    /// <summary>The components, with the last row's vectors on the host; on a device only the table comes back and the vectors are empty.</summary>
    public required ResidualComponent[] ComponentInfo { get; init; }
    public required double[][] Values { get; init; }
    /// <summary>The direction's name for each row.</summary>
    public required string[] Directions { get; init; }
    /// <summary>Per row: the logit (difference) before soft-capping, from ln_final's output: <c>ln_final(x)·u + b_U term</c>.</summary>
    public required double[] PreCapLogitDiff { get; init; }
    /// <summary>Per row: the final norm's bias along the direction, <c>b·u</c>.</summary>
    public required double[] NormBias { get; init; }
    /// <summary>Per row: the unembedding bias term, <c>b_U[answer] − b_U[wrong]</c>.</summary>
    public required double[] UnembedBias { get; init; }
    /// <summary>The largest <c>|Σ components − final residual|</c> over rows (the decomposition check).</summary>
    public double MaxDecompositionError { get; init; }
    public int Position { get; init; }

    /// <summary>Σ components per row (= PreCapLogitDiff − NormBias − UnembedBias).</summary>
    public double[] Total => Values.Select(r => r.Sum()).ToArray();

    /// <summary>The mean over rows of each component's DLA.</summary>
    public double[] Mean => Enumerable.Range(0, Components.Length).Select(c => Values.Average(r => r[c])).ToArray();
}

/// <summary>Direct logit attribution (steps at the top of this file).</summary>
public static class DirectLogitAttribution
{
    /// <summary>DLA of every row onto one direction.</summary>
    public static DlaResult Compute(HookedTransformer model, TokenBatch tokens, LogitDirection direction, int position = -1) =>
        Compute(model, tokens, _ => direction, position);

    /// <summary>DLA with a direction per row (e.g. each row's correct answer).</summary>
    /// <exception cref="InputError">The position is outside the sequence.</exception>
    public static DlaResult Compute(HookedTransformer model, TokenBatch tokens, Func<int, LogitDirection> directionOfRow, int position = -1)
    {
        var hooks = ResidualDecomposition.Hooks(model);
        bool hasNorm = model.FinalNormLayer is { Kind: not NormKind.None };
        if (hasNorm) hooks.Add(HookNames.FinalScale);
        hooks.Add(HookNames.FinalNormalized);
        if (DeviceLens.Applies(model)) return ComputeOnDevice(model, tokens, hooks, hasNorm, directionOfRow, position);
        var cache = model.Run(tokens, new RunOptions { CacheFilter = hooks.Contains }).Cache;
        int B = tokens.Batch, T = tokens.Length, D = model.Config.DModel;
        int p = position < 0 ? T + position : position;
        if ((uint)p >= (uint)T) throw new InputError($"position {position} is outside a sequence of {T}");
        var normBias = FinalNorm.Bias(model);
        var finalOutput = FinalOutput(model, cache, hasNorm).ToCpu();
        var values = new double[B][];
        var names = new string[B];
        var preCap = new double[B];
        var biasTerm = new double[B];
        var unembedBias = new double[B];
        double worst = 0;
        ResidualComponent[] info = [];
        for (int b = 0; b < B; b++)
        {
            var dir = directionOfRow(b);
            if (dir.Vector.Length != D) throw new InputError($"logit direction '{dir.Name}' has {dir.Vector.Length} entries; d_model is {D}");
            var decomposition = ResidualDecomposition.FromCache(model, cache, b, p);
            worst = Math.Max(worst, decomposition.MaxAbsError);
            info = decomposition.Components.ToArray();
            double scale = hasNorm ? cache[HookNames.FinalScale].Span[b * T + p] : 1;
            values[b] = info.Select(c => Dot(FinalNorm.Frozen(model, c.Vector, scale), dir.Vector)).ToArray();
            names[b] = dir.Name;
            var normalized = finalOutput.Span.Slice((b * T + p) * D, D);
            double logit = dir.UnembedBias;
            for (int d = 0; d < D; d++) logit += normalized[d] * dir.Vector[d];
            preCap[b] = logit;
            biasTerm[b] = Dot(normBias, dir.Vector);
            unembedBias[b] = dir.UnembedBias;
        }
        return Result(info, values, names, preCap, biasTerm, unembedBias, worst, p);
    }

    /// <summary>
    /// The model's own final-norm output, what the unembedding reads: from ln_final.hook_normalized (times the weight for an
    /// RMSNorm, whose hook is before it, as in TransformerLens), or the last residual without a norm.
    /// </summary>
    static Tensor FinalOutput(HookedTransformer model, ActivationCache cache, bool hasNorm) =>
        hasNorm ? model.FinalNormLayer!.OutputFromNormalized(model.Backend, cache[HookNames.FinalNormalized])
            : cache[HookNames.ResidPost(model.Config.NLayers - 1)];

    // On a device, per row: the components at the position stacked into [n, d_model] (ResidualDecomposition.StackOnDevice),
    // put through the final norm with the scale frozen at the cached ln_final.hook_scale (no bias), and multiplied by the
    // direction's W_U column(s); the model's own ln_final output by the same columns (the pre-cap logit difference); and
    // the decomposition check max_d (Σ components − residual)². Per row n + 2 numbers come back in one table. The
    // norm-bias and unembedding-bias terms are host numbers (weights), computed as on the host.
    static DlaResult ComputeOnDevice(HookedTransformer model, TokenBatch tokens, HashSet<string> hooks, bool hasNorm, Func<int, LogitDirection> directionOfRow, int position)
    {
        var be = model.Backend;
        var pass = new DeviceLens.Pass(model, tokens, hooks);
        var cache = pass.Cache;
        int B = tokens.Batch, T = tokens.Length, D = model.Config.DModel, L = model.Config.NLayers;
        int p = position < 0 ? T + position : position;
        if ((uint)p >= (uint)T) throw new InputError($"position {position} is outside a sequence of {T}");
        var normBias = FinalNorm.Bias(model);
        int n = ResidualDecomposition.ComponentCount(model, cache), fields = n + 2;
        var table = pass.Table(B * fields); // [batch, n components + pre-cap logit diff + squared decomposition error]
        var stacked = be.Empty(n, D); // [component, d_model]
        var error = be.Empty(D); // [d_model]
        var squared = be.Empty(D);
        var maxIndex = be.Empty(1);
        var normalized = FinalOutput(model, cache, hasNorm);
        var names = new string[B];
        var biasTerm = new double[B];
        var unembedBias = new double[B];
        ResidualComponent[] info = [];
        for (int b = 0; b < B; b++)
        {
            var dir = directionOfRow(b);
            if (dir.Vector.Length != D) throw new InputError($"logit direction '{dir.Name}' has {dir.Vector.Length} entries; d_model is {D}");
            info = [.. ResidualDecomposition.StackOnDevice(model, cache, b, p, stacked)];
            long at = (long)b * T + p, row = (long)b * fields;
            var scale = hasNorm ? DeviceLens.FrozenScale(model, cache, at, n, perRow: false) : null;
            var normed = DeviceLens.FinalNorm(model, stacked, n, scale, withBias: false);
            if (dir.Answer is int answer)
            {
                DeviceLens.DotUnembedColumn(model, normed, 0, n, answer, 1f, false, table, row);
                DeviceLens.DotUnembedColumn(model, normalized, at * D, 1, answer, 1f, false, table, row + n);
                if (dir.Wrong is int wrong)
                {
                    DeviceLens.DotUnembedColumn(model, normed, 0, n, wrong, -1f, true, table, row);
                    DeviceLens.DotUnembedColumn(model, normalized, at * D, 1, wrong, -1f, true, table, row + n);
                }
            }
            else
            {
                // A direction given only as numbers goes up once (one counted copy in).
                var u = be.ToDevice(Tensors.Tensor.FromArray([.. dir.Vector.Select(v => (float)v)], D, 1));
                DeviceLens.DotVector(be, normed, 0, n, u, table, row);
                DeviceLens.DotVector(be, normalized, at * D, 1, u, table, row + n);
            }
            // The decomposition check: (Σ components − resid_post)², its largest entry into the table.
            be.CopyRows(cache[HookNames.ResidPost(L - 1)], at * D, D, error, 0, D, 1, D);
            be.Scale(error, -1f, error);
            be.SumMiddleAxis(stacked, 1, n, D, error, accumulate: true);
            be.Multiply(error, error, squared);
            be.TopKRows(squared, 1, D, 1, DeviceLens.Slot(table, row + n + 1), maxIndex);
            names[b] = dir.Name;
            biasTerm[b] = Dot(normBias, dir.Vector);
            unembedBias[b] = dir.UnembedBias;
        }
        var values = pass.Read(table);
        double worst = 0;
        var dla = new double[B][];
        var preCap = new double[B];
        for (int b = 0; b < B; b++)
        {
            var r = values.AsSpan(b * fields, fields);
            dla[b] = [.. r[..n].ToArray().Select(v => (double)v)];
            preCap[b] = r[n] + unembedBias[b];
            worst = Math.Max(worst, Math.Sqrt(r[n + 1]));
        }
        return Result(info, dla, names, preCap, biasTerm, unembedBias, worst, p);
    }

    static DlaResult Result(ResidualComponent[] info, double[][] values, string[] directions, double[] preCap, double[] normBias,
        double[] unembedBias, double worst, int position) => new()
    {
        Components = info.Select(c => c.Name).ToArray(),
        ComponentInfo = info,
        Values = values,
        Directions = directions,
        PreCapLogitDiff = preCap,
        NormBias = normBias,
        UnembedBias = unembedBias,
        MaxDecompositionError = worst,
        Position = position,
    };

    static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
