using Loupe.Models;
using Loupe.Models.Layers;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Attribution.Engine;

/// <summary>
/// The transpose of the local replacement model, applied to many gradient rows at once on the model's
/// backend. Everything that is not linear is frozen, so the backward never needs the forward's
/// activations beyond the patterns and norm scales, and those are shared by every row: a batch of N
/// target rows costs N·(one backward), not N forwards plus N backwards, and the patterns are stored once.
///
/// Gradients are laid out <b>position-major</b>, <c>g[T, N, d_model]</c>: the N rows of one position are a
/// contiguous <c>[N, d]</c> matrix (read-outs are one GEMM per position), and one head's slice of all
/// rows is a <c>[T, N·d_head]</c> matrix (the pattern's transpose applies to it in one GEMM).
/// Through a block, with frozen σ: a norm is <c>dx = (dy⊙w)/σ</c>, minus its row mean for LayerNorm; attention
/// is its value path, <c>dz_h = g·W_O[h]ᵀ</c>, <c>dv = P_hᵀ·dz_h</c>, <c>dx = Σ dv·W_V[h]ᵀ</c>; an MLP passes nothing
/// (its output is the transcoder's reconstruction plus a constant error, and the features are sources).
/// </summary>
internal sealed class LinearBackward
{
    readonly ReplacementState _s;
    readonly IComputeBackend _be;
    readonly int _T, _D, _N;
    readonly Dictionary<string, Tensor> _expandedScales = new(StringComparer.Ordinal);
    readonly Tensor _zeroScale, _dzHeads, _dvHeads, _dx, _normed;

    /// <param name="state">The captured replacement model.</param>
    /// <param name="rows">N: gradient rows per pass.</param>
    /// <param name="causalBlock">Key positions per pattern GEMM.</param>
    public LinearBackward(ReplacementState state, int rows, int causalBlock = 256)
    {
        CausalBlock = Math.Max(1, causalBlock);
        _s = state;
        _be = state.Model.Backend;
        _T = state.Positions;
        _D = state.DModel;
        _N = rows;
        var cfg = state.Model.Config;
        long tn = (long)_T * _N;
        _zeroScale = _be.Zeros(_T * _N);
        _dzHeads = _be.Empty(cfg.NHeads, _T * _N * cfg.DHead);
        _dvHeads = _be.Empty(cfg.KvHeads, _T * _N * cfg.DHead);
        _dx = _be.Empty((int)tn, _D);
        _normed = _be.Empty((int)tn, _D);
    }

    public int Rows => _N;

    /// <summary>Key positions per pattern GEMM: small enough to skip most of the causal zeros, large enough for GEMM speed.</summary>
    readonly int CausalBlock;

    Tensor? _gradient, _readout;

    /// <summary>The gradient buffer <c>[T·N, d_model]</c>, zeroed: one per attribution, reused by every batch.</summary>
    public Tensor Gradient()
    {
        if (_gradient is null) return _gradient = _be.Zeros(_T * _N, _D);
        _be.Fill(_gradient, 0f);
        return _gradient;
    }

    /// <summary>A read-out buffer of at least <c>[N, count]</c> floats, reused (it grows to the widest read-out).</summary>
    public Tensor Readout(int count)
    {
        long needed = (long)_N * Math.Max(1, count);
        if (_readout is null || _readout.Length < needed) _readout = _be.Empty(checked((int)needed));
        return _readout;
    }

    /// <summary>
    /// The first <paramref name="positions"/> positions of a position-major buffer <c>[T·N, d]</c> as a view: a batch
    /// whose targets sit at positions below it never has a gradient beyond them (attention is causal).
    /// </summary>
    public Tensor Prefix(Tensor t, int positions) =>
        positions == _T ? t : new Tensor(t.Storage.Slice(0, (long)positions * _N * _D), positions * _N, _D);

    /// <summary>
    /// The frozen norm's transpose on the first <paramref name="positions"/> positions of <paramref name="g"/> (in place is not allowed: writes <paramref name="dx"/>).
    /// </summary>
    void FrozenNorm(Norm norm, Tensor g, Tensor dx, int positions, bool beforeWeight = false)
    {
        if (!_expandedScales.TryGetValue(norm.ScaleHook, out var scale) && _s.DeviceScales is { } onDevice)
        {
            // σ [T, 1]·ones [1, N]: the repeat as one GEMM, on the device.
            var ones = _be.Empty(_N);
            _be.Fill(ones, 1f);
            scale = _be.Empty(_T * _N);
            _be.Gemm(false, false, _T, _N, 1, 1f, onDevice[norm.ScaleHook], 0, 1, ones, 0, _N, 0f, scale, 0, _N);
            _expandedScales[norm.ScaleHook] = scale;
        }
        else if (scale is null)
        {
            // σ per position, repeated for the N rows of that position.
            var sigma = _s.Scales[norm.ScaleHook];
            var expanded = new float[_T * _N];
            for (int p = 0; p < _T; p++) expanded.AsSpan(p * _N, _N).Fill(sigma[p]);
            scale = _be.ToDevice(Tensor.FromArray(expanded, _T * _N), TransferKind.Inputs);
            _expandedScales[norm.ScaleHook] = scale;
        }
        // With dσ = 0 the input only enters multiplied by zero: g stands in for it.
        var (w, offset) = WeightOf(norm, beforeWeight);
        _be.NormBackwardInput(norm.Kind == NormKind.LayerNorm, g, scale, g, _zeroScale, positions * _N, _D, w, offset, dx);
    }

    // The model's own copy of the weight on its backend (uploaded once with the model, not per attribution).
    // The weight (null without one) and its offset; none for what reads an RMSNorm's hook_normalized (x/σ, before the weight).
    (Tensor? Weight, float Offset) WeightOf(Norm norm, bool beforeWeight) =>
        beforeWeight ? (null, 0f) : (norm.Weight.IsEmpty ? null : norm.WeightOn(_be)!, norm.WeightOffset);

    Tensor? _skipOut;

    /// <summary>
    /// What flows back through layer <paramref name="layer"/>'s skip path (a skip transcoder's <c>x·W_skip</c>, live in the
    /// replacement model as in circuit-tracer) from <paramref name="gOut"/> (the gradient at the MLP output), over the first
    /// <paramref name="positions"/> positions: <c>gOut·W_skipᵀ</c> at the transcoder's input, then through the frozen ln2 when
    /// it reads the MLP input. Returns that gradient at the residual stream (a buffer reused by the next call), or null when the
    /// layer has no skip path. Add it where the MLP branch leaves the stream: resid_mid, or resid_pre in a parallel block.
    /// </summary>
    public Tensor? SkipGradient(int layer, Tensor gOut, int positions)
    {
        Tensor? w = _s.Device is { } device ? device.SkipWeights(layer)
            : _s.Transcoders.SkipWeights(layer) is { } host ? Tensor.FromArray(host, _D, _D) : null;
        if (w is null) return null;
        int tn = positions * _N;
        var viaSkip = Prefix(_dx, positions);
        _be.Gemm(false, true, tn, _D, _D, 1f, gOut, 0, _D, w, 0, _D, 0f, viaSkip, 0, _D);   // [rows, d_out]·W_skipᵀ
        _skipOut ??= _be.Empty(_T * _N, _D);
        var into = Prefix(_skipOut, positions);
        if (_s.InputNorm(layer) is { Kind: not NormKind.None } norm) FrozenNorm(norm, viaSkip, into, positions, _s.InputBeforeWeight(layer));
        else _be.CopyRows(viaSkip, 0, _D, into, 0, _D, tn, _D);
        return into;
    }

    /// <summary>
    /// Adds to <paramref name="g"/> (the gradient at the attention branch's residual input) what flows back
    /// through layer <paramref name="layer"/>'s attention from <paramref name="gOut"/> (the gradient at its output),
    /// over the first <paramref name="positions"/> positions only: no target of the batch sits beyond them, and
    /// causal attention sends a gradient only to earlier positions, so the rest is zero — the pattern's top-left
    /// block is all that is used.
    /// <paramref name="gOut"/> and <paramref name="g"/> may be the same tensor.
    /// </summary>
    public void AddAttention(int layer, Tensor gOut, Tensor g, int positions)
    {
        var a = _s.Model.Anatomy(layer);
        var attn = a.Attention;
        int H = attn.NHeads, Hkv = attn.NKvHeads, dh = attn.DHead, group = H / Hkv;
        int P = positions, tn = P * _N;
        var input = gOut;
        Tensor? post = null;
        if (a.AttentionPostNorm is { Kind: not NormKind.None } pn)
        {
            post = Prefix(_normed, P);
            FrozenNorm(pn, gOut, post, P);
            input = post;
        }
        // dz_h [T·N, d_head] = g·W_O[h]ᵀ, each head into its own contiguous block.
        var o = attn.O;
        var wo = o.WeightOn(_be);
        for (int h = 0; h < H; h++)
        {
            long dst = (long)h * tn * dh;
            if (o.WeightIsOutIn) // stored [d_model, H·d_head]
                _be.Gemm(false, false, tn, dh, _D, 1f, input, 0, _D, wo, (long)h * dh, H * dh, 0f, _dzHeads, dst, dh);
            else                 // stored [H·d_head, d_model]
                _be.Gemm(false, true, tn, dh, _D, 1f, input, 0, _D, wo, (long)h * dh * _D, _D, 0f, _dzHeads, dst, dh);
        }
        // dv_kv [P, N·d_head] = Σ over the heads that read it of P_hᵀ·dz_h (the pattern's [P, P] block, row stride T).
        // The pattern is causal (P[q, k] = 0 for k > q): block k's values come only from queries q ≥ block start,
        // which skips the zero upper triangle — about half the work on long prompts.
        var pattern = _s.Patterns[layer];
        for (int h = 0; h < H; h++)
        {
            float beta = h % group == 0 ? 0f : 1f;
            long dz = (long)h * tn * dh, dv = (long)(h / group) * tn * dh;
            for (int k0 = 0; k0 < P; k0 += CausalBlock)
            {
                int kLen = Math.Min(CausalBlock, P - k0), queries = P - k0;
                _be.Gemm(true, false, kLen, _N * dh, queries, 1f, pattern, (long)h * _T * _T + (long)k0 * _T + k0, _T,
                    _dzHeads, dz + (long)k0 * _N * dh, _N * dh, beta, _dvHeads, dv + (long)k0 * _N * dh, _N * dh);
            }
        }
        // dx [T·N, d_model] = Σ_kv dv_kv·W_V[kv]ᵀ.
        var (wv, outIn, width, firstColumn) = ValueWeight(attn);
        var w = wv.WeightOn(_be);
        for (int kv = 0; kv < Hkv; kv++)
        {
            long c0 = firstColumn(kv);
            if (outIn) // stored [width, d_model]
                _be.Gemm(false, false, tn, _D, dh, 1f, _dvHeads, (long)kv * tn * dh, dh, w, c0 * _D, _D, kv == 0 ? 0f : 1f, _dx, 0, _D);
            else       // stored [d_model, width]
                _be.Gemm(false, true, tn, _D, dh, 1f, _dvHeads, (long)kv * tn * dh, dh, w, c0, width, kv == 0 ? 0f : 1f, _dx, 0, _D);
        }
        // The post-norm's output has been read into dz by now: its buffer takes ln1's.
        var viaLn1 = post ?? Prefix(_normed, P);
        FrozenNorm(a.Ln1, _dx, viaLn1, P);
        var prefix = Prefix(g, P);
        _be.Add(prefix, viaLn1, prefix);
    }

    /// <summary>The linear map whose output columns hold v, and where kv head <c>i</c>'s columns start.</summary>
    internal static (Linear Weight, bool OutIn, int Width, Func<int, long> FirstColumn) ValueWeight(AttentionLayer attn)
    {
        int dh = attn.DHead, qWidth = attn.NHeads * dh, kvWidth = attn.NKvHeads * dh;
        if (attn.V is { } v) return (v, v.WeightIsOutIn, v.DOut, kv => (long)kv * dh);
        var qkv = attn.Qkv!;
        return attn.Layout == FusedQkvLayout.Concatenated
            ? (qkv, qkv.WeightIsOutIn, qkv.DOut, kv => qWidth + kvWidth + (long)kv * dh)
            : (qkv, qkv.WeightIsOutIn, qkv.DOut, kv => (long)kv * 3 * dh + 2 * dh);
    }

    /// <summary>
    /// Adds vectors at single (position, row) places of <paramref name="g"/>: <paramref name="vectors"/> <c>[k, d_model]</c>
    /// (host) goes to row <c>positions[i]·N + rows[i]</c>.
    /// </summary>
    public void Inject(Tensor g, float[] vectors, int[] positions, int[] rows)
    {
        if (positions.Length == 0) return;
        var v = _be.ToDevice(Tensor.FromArray(vectors, positions.Length, _D), TransferKind.Inputs);
        for (int i = 0; i < positions.Length; i++)
            _be.CopyRows(v, (long)i * _D, _D, g, ((long)positions[i] * _N + rows[i]) * _D, _D, 1, _D, accumulate: true);
    }

    /// <summary>
    /// Adds device vectors at single (position, row) places of <paramref name="g"/>: row <c>i</c> of
    /// <paramref name="vectors"/> <c>[k, d_model]</c> goes to row <c>positions[i]·N + rows[i]</c>.
    /// </summary>
    public void Inject(Tensor g, Tensor vectors, int[] positions, int[] rows)
    {
        for (int i = 0; i < positions.Length; i++)
            _be.CopyRows(vectors, (long)i * _D, _D, g, ((long)positions[i] * _N + rows[i]) * _D, _D, 1, _D, accumulate: true);
    }

    Tensor? _zeroOne;

    /// <summary>
    /// The frozen norm's transpose of device vector rows (<paramref name="v"/> <c>[k, d]</c>, row i at position
    /// <paramref name="positions"/>[i]) into <paramref name="into"/> <c>[k, d]</c>, on the device: what a gradient at the
    /// norm's output becomes at its input. Without a norm the rows are copied.
    /// </summary>
    public void FrozenNormDevice(Norm? norm, int[] positions, Tensor v, Tensor into, bool beforeWeight = false)
    {
        int k = positions.Length;
        if (norm is null || norm.Kind == NormKind.None) { _be.CopyRows(v, 0, _D, into, 0, _D, k, _D); return; }
        var sigma = _s.DeviceScales![norm.ScaleHook];
        var rowScale = _be.Empty(k);
        for (int i = 0; i < k; i++) _be.CopyRows(sigma, positions[i], 1, rowScale, i, 1, 1, 1);
        if (_zeroOne is null || _zeroOne.Length < k) _zeroOne = _be.Zeros(Math.Max(k, _N));
        var (w, offset) = WeightOf(norm, beforeWeight);
        _be.NormBackwardInput(norm.Kind == NormKind.LayerNorm, v, rowScale, v, _zeroOne, k, _D, w, offset, into);
    }

    /// <summary>
    /// The frozen norm's transpose of one vector on the host: what a gradient <paramref name="v"/> at the norm's
    /// output at position <paramref name="position"/> becomes at its input.
    /// </summary>
    public void FrozenNormHost(Norm? norm, int position, ReadOnlySpan<float> v, Span<float> into, bool beforeWeight = false)
    {
        if (norm is null || norm.Kind == NormKind.None) { v.CopyTo(into); return; }
        double sigma = _s.Scales[norm.ScaleHook][position];
        var w = beforeWeight ? default : norm.Weight.Span;
        float offset = beforeWeight ? 0f : norm.WeightOffset;
        double mean = 0;
        for (int i = 0; i < _D; i++)
        {
            double u = v[i] * ((w.IsEmpty ? 1.0 : w[i]) + offset) / sigma;
            into[i] = (float)u;
            mean += u;
        }
        if (norm.Kind != NormKind.LayerNorm) return;
        float m = (float)(mean / _D);
        for (int i = 0; i < _D; i++) into[i] -= m;
    }
}
