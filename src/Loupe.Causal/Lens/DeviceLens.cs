using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Causal.Lens;

// The lenses where the model runs on a device (a GPU, or the emulated one). The host path computes the final
// norm in double on single vectors; here every step stays on the device and one result table comes back:
// 1. One forward pass keeps the cache on the device; its finiteness check is folded into the table's last slot
//    (a non-finite pass is run again with the model's own check, whose error names the hook point).
// 2. The residuals (lens stages) or components (decomposition, DLA) are stacked into one matrix with CopyRows.
// 3. The final norm runs as backend Norm (real scale) or NormWithScale (scale frozen at the cached
//    ln_final.hook_scale), with the model's own weight, offset and eps; DLA leaves the bias out, as on the host.
// 4. Unembedding: DLA multiplies by the requested W_U columns only (one or two GEMV-shaped GEMMs); the lens,
//    which reports probabilities and ranks, unembeds its few rows over the whole vocabulary and reduces them on
//    the device (soft-cap, log-softmax, top-1, a count above the answer's logit).
// Sums run in float and in another order than the host's doubles: results agree to a tolerance, not bit for bit.

/// <summary>The device side of <see cref="LogitLens"/>, <see cref="DirectLogitAttribution"/> and <see cref="ResidualDecomposition"/>.</summary>
static class DeviceLens
{
    /// <summary>Whether <paramref name="model"/> runs on a device (the lenses then take the device path).</summary>
    public static bool Applies(HookedTransformer model) => !model.Backend.Device.IsCpu;

    /// <summary>One forward pass with its cache on the device and its finiteness check deferred into a result table.</summary>
    public sealed class Pass
    {
        readonly HookedTransformer _model;
        readonly TokenBatch _tokens;
        readonly RunOptions _options;
        readonly Tensor _logits;

        public Pass(HookedTransformer model, TokenBatch tokens, ISet<string> hooks)
        {
            _model = model;
            _tokens = tokens;
            _options = new RunOptions { CacheFilter = hooks.Contains, CacheOn = CacheLocation.Device, DeferFiniteCheck = true };
            var result = model.Run(tokens, _options);
            Cache = result.Cache;
            _logits = result.Logits;
        }

        public ActivationCache Cache { get; }

        IComputeBackend Backend => _model.Backend;

        /// <summary>A zeroed table of <paramref name="size"/> results plus one slot for the finiteness flag.</summary>
        public Tensor Table(int size) => Backend.Zeros(size + 1);

        /// <summary>
        /// Folds the pass's finiteness into the table's last slot, reads the table back in one copy, and re-runs a
        /// non-finite pass with the model's own check (which throws naming the hook point).
        /// </summary>
        /// <returns>The <c>size</c> results (without the flag).</returns>
        public float[] Read(Tensor table)
        {
            var be = Backend;
            int n = _logits.Dim(_logits.Rank - 1), rows = _logits.Length / n;
            // flag = 0·Σ logits: 0 when every logit is finite, NaN otherwise (0·∞ is NaN).
            var partial = be.Empty(n);
            be.SumMiddleAxis(_logits, 1, rows, n, partial);
            be.Scale(partial, 0f, partial);
            be.SumMiddleAxis(partial, 1, n, 1, Slot(table, table.Length - 1));
            var host = new float[table.Length];
            table.CopyTo(host);
            if (!float.IsFinite(host[^1]))
            {
                _options.DeferFiniteCheck = false;
                _model.Run(_tokens, _options);
            }
            return host[..^1];
        }
    }

    /// <summary>Elements <c>[offset, offset + length)</c> of a flat tensor, as a tensor on the same storage.</summary>
    public static Tensor Slot(Tensor t, long offset, int length = 1) => new(t.Storage.Slice(offset, length), length);

    /// <summary>
    /// The final norm of <paramref name="rows"/> rows of x <c>[rows, d_model]</c>: with its real scale (computed per row) when
    /// <paramref name="frozenScale"/> is null, else divided by <paramref name="frozenScale"/> <c>[rows]</c>; bias only when
    /// <paramref name="withBias"/>. x itself without a norm.
    /// </summary>
    public static Tensor FinalNorm(HookedTransformer model, Tensor x, int rows, Tensor? frozenScale, bool withBias)
    {
        var norm = model.FinalNormLayer;
        if (norm is null || norm.Kind == NormKind.None) return x;
        var be = model.Backend;
        int D = model.Config.DModel;
        bool center = norm.Kind == NormKind.LayerNorm;
        var y = be.Empty(rows, D);
        var w = norm.WeightOn(be);
        var b = withBias ? norm.BiasOn(be) : null;
        if (frozenScale is null) be.Norm(center, x, rows, D, w, norm.WeightOffset, b, norm.Eps, y, be.Empty(rows));
        else be.NormWithScale(center, x, rows, D, w, norm.WeightOffset, b, frozenScale, y);
        return y;
    }

    /// <summary>Whether the model has a final norm (and so caches ln_final.hook_scale).</summary>
    public static bool HasNorm(HookedTransformer model) => model.FinalNormLayer is { Kind: not NormKind.None };

    /// <summary>
    /// The frozen scale for <paramref name="rows"/> rows: the cached ln_final.hook_scale at flat position <paramref name="at"/>
    /// repeated (<paramref name="perRow"/> false) or the next <paramref name="rows"/> positions (true).
    /// </summary>
    public static Tensor FrozenScale(HookedTransformer model, ActivationCache cache, long at, int rows, bool perRow)
    {
        var be = model.Backend;
        var scale = be.Empty(rows);
        be.CopyRows(cache[HookNames.FinalScale], at, perRow ? 1 : 0, scale, 0, 1, rows, 1);
        return scale;
    }

    /// <summary>Logits <c>[rows, d_vocab_out]</c> of normalized rows: unembedding and the final soft-cap.</summary>
    public static Tensor Unembed(HookedTransformer model, Tensor normed, int rows)
    {
        var be = model.Backend;
        var logits = be.Empty(rows, model.Config.VocabOut);
        model.UnembedLayer.Forward(be, normed, rows, logits);
        if (model.Config.FinalLogitSoftCap > 0) be.SoftCap(logits, model.Config.FinalLogitSoftCap, logits);
        return logits;
    }

    /// <summary>
    /// <c>table[offset + r] (+)= alpha · x[xOffset + r·d_model, :]·W_U[:, token]</c> for <paramref name="rows"/> rows of x:
    /// one column of the unembedding, never the whole vocabulary.
    /// </summary>
    public static void DotUnembedColumn(HookedTransformer model, Tensor x, long xOffset, int rows, int token, float alpha, bool accumulate, Tensor table, long offset)
    {
        var be = model.Backend;
        var unembed = model.UnembedLayer;
        int D = model.Config.DModel, V = model.Config.VocabOut;
        var w = unembed.WeightOn(be);
        float beta = accumulate ? 1f : 0f;
        if (unembed.WeightIsOutIn) be.Gemm(false, true, rows, 1, D, alpha, x, xOffset, D, w, (long)token * D, D, beta, table, offset, 1);
        else be.Gemm(false, false, rows, 1, D, alpha, x, xOffset, D, w, token, V, beta, table, offset, 1);
    }

    /// <summary><c>table[offset + r] = x[xOffset + r·d_model, :]·u</c> for a direction <c>u</c> <c>[d_model, 1]</c> on the device.</summary>
    public static void DotVector(IComputeBackend be, Tensor x, long xOffset, int rows, Tensor u, Tensor table, long offset) =>
        be.Gemm(false, false, rows, 1, u.Length, 1f, x, xOffset, u.Length, u, 0, 1, 0f, table, offset, 1);
}
