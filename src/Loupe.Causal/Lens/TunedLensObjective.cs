using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Causal.Lens;

// The tuned lens's objective and its gradient, on the model's backend (the CPU, or a GPU with nothing read back but
// the sums asked for). tuned-lens trains with KL(final ‖ lens) at the same position (its token_shift 0):
//   loss_ℓ = mean over tokens of Σ_v p_v·(log p_v − log q_ℓ,v),  p = softmax(model logits),
//   q_ℓ = softmax(softcap(unembed(ln_final(h + h·W_ℓᵀ + b_ℓ)))),  h = resid_pre ℓ.
// 1. One forward pass caches resid_pre 0 … L−1 and keeps the logits (no gradient through the model).
// 2. Tokens go in chunks of R rows so that the [R, d_vocab] intermediates stay near 32 MB each: per chunk −p and
//    −Σ p·log p once; per layer the translated residual, the final norm (real scale), the unembedding, log q, and the
//    cross term −Σ p·log q; KL_ℓ = (−Σ p·log q) − (−Σ p·log p), summed over tokens on the device.
// 3. With the gradient: dlogits = (q − p)·s (s = 1/tokens of the step, so the step's loss is a mean), back through the
//    soft-cap, the unembedding and the final norm to dy; dW_ℓ += dyᵀ·h, db_ℓ += Σ dy.

/// <summary>The translators on a backend, their gradients, and one pass of the objective (steps at the top of this file).</summary>
sealed class TunedLensObjective
{
    readonly HookedTransformer _model;
    readonly IComputeBackend _be;
    readonly int _d, _layers, _vocab;
    readonly bool _bias;
    readonly HashSet<string> _hooks;

    public TunedLensObjective(HookedTransformer model, TunedLens start)
    {
        start.CheckFits(model, "tuned lens");
        _model = model;
        _be = model.Backend;
        _d = model.Config.DModel;
        _layers = model.Config.NLayers;
        _vocab = model.Config.VocabOut;
        _bias = start.HasBias;
        Weights = new Tensor[_layers];
        Biases = new Tensor[_layers];
        WeightGrads = new Tensor[_layers];
        BiasGrads = new Tensor[_layers];
        for (int l = 0; l < _layers; l++)
        {
            Weights[l] = _be.ToDevice(Tensor.FromArray(start.Weight(l).ToArray(), _d, _d));
            Biases[l] = _be.ToDevice(Tensor.FromArray(start.Bias(l).ToArray(), _d));
            WeightGrads[l] = _be.Zeros(_d, _d);
            BiasGrads[l] = _be.Zeros(_d);
        }
        _hooks = new HashSet<string>(StringComparer.Ordinal);
        for (int l = 0; l < _layers; l++) _hooks.Add(HookNames.ResidPre(l));
    }

    public Tensor[] Weights { get; }
    public Tensor[] Biases { get; }
    public Tensor[] WeightGrads { get; }
    public Tensor[] BiasGrads { get; }
    public bool HasBias => _bias;
    public IComputeBackend Backend => _be;

    /// <summary>Slots of a loss table: <c>[0, L)</c> −Σ p·log q per layer, <c>L</c> −Σ p·log p; KL_ℓ = slot ℓ − slot L.</summary>
    public int LossSlots => _layers + 1;

    /// <summary>Rows per chunk of <paramref name="tokens"/>: the [R, d_vocab] intermediates near 2^23 floats (32 MB) each.</summary>
    public static int ChunkRows(int tokens, int vocab) => Math.Max(1, Math.Min(tokens, (1 << 23) / vocab));

    /// <summary>
    /// One forward pass over <paramref name="tokens"/>: adds the step's loss sums into <paramref name="losses"/> (from
    /// <paramref name="offset"/>, <see cref="LossSlots"/> slots) and, when <paramref name="gradScale"/> is given, that
    /// factor times the gradient into <see cref="WeightGrads"/> / <see cref="BiasGrads"/>. With <paramref name="agreement"/>
    /// (host counts per layer) the lens's top token is compared with the model's at every position (read back: evaluation only).
    /// </summary>
    public void Accumulate(TokenBatch tokens, Tensor losses, long offset, float? gradScale, long[]? agreement = null)
    {
        var be = _be;
        int D = _d, V = _vocab, L = _layers;
        var run = _model.Run(tokens, new RunOptions { CacheFilter = _hooks.Contains });
        var cache = run.Cache;
        var logits = run.Logits; // [batch, pos, d_vocab_out]
        int n = tokens.Batch * tokens.Length;
        int R = ChunkRows(n, V);
        var negP = be.Empty(R, V);
        var lensLogits = be.Empty(R, V);
        var work = be.Empty(R, V);
        var rowSums = be.Empty(R);
        var y = be.Empty(R, D);
        var dNormed = be.Empty(R, D);
        var dy = be.Empty(R, D);
        var scale = be.Empty(R);
        var dScale = be.Empty(R);
        var topValue = agreement is null ? null : be.Empty(R, 1);
        var topIndex = agreement is null ? null : be.Empty(R, 1);
        var norm = _model.FinalNormLayer is { Kind: not NormKind.None } f ? f : null;
        bool center = norm?.Kind == NormKind.LayerNorm;
        var normWeight = norm?.WeightOn(be);
        var normBias = norm?.BiasOn(be);
        float cap = _model.Config.FinalLogitSoftCap;
        for (int r0 = 0; r0 < n; r0 += R)
        {
            int rows = Math.Min(R, n - r0);
            var nP = View(negP, rows, V);
            var w = View(work, rows, V);
            var sums = View(rowSums, rows, 1);
            // −p and −Σ p·log p for the chunk's final distributions.
            var final = new Tensor(logits.Storage.Slice((long)r0 * V, (long)rows * V), rows, V);
            be.SoftmaxRows(final, rows, V, nP);
            be.Scale(nP, -1f, nP);
            be.LogSoftmaxRows(final, rows, V, w);
            be.RowDots(nP, w, rows, V, sums);
            be.SumMiddleAxis(sums, 1, rows, 1, DeviceLens.Slot(losses, offset + L), accumulate: true);
            int[]? finalTop = null;
            if (agreement is not null) finalTop = TopTokens(final, rows, topValue!, topIndex!);
            for (int l = 0; l < L; l++)
            {
                var h = new Tensor(cache[HookNames.ResidPre(l)].Storage.Slice((long)r0 * D, (long)rows * D), rows, D);
                var yl = View(y, rows, D);
                be.Linear(h, rows, D, Weights[l], true, D, _bias ? Biases[l] : null, yl);
                be.Add(yl, h, yl);
                var normed = yl;
                var sc = View(scale, rows, 1);
                if (norm is not null)
                {
                    normed = View(dy, rows, D); // dy is free until the backward
                    be.Norm(center, yl, rows, D, normWeight, norm.WeightOffset, normBias, norm.Eps, normed, sc);
                }
                var z = View(lensLogits, rows, V);
                _model.UnembedLayer.Forward(be, normed, rows, z);
                if (cap > 0) be.SoftCap(z, cap, z);
                be.LogSoftmaxRows(z, rows, V, w);
                be.RowDots(nP, w, rows, V, sums);
                be.SumMiddleAxis(sums, 1, rows, 1, DeviceLens.Slot(losses, offset + l), accumulate: true);
                if (agreement is not null)
                {
                    var top = TopTokens(z, rows, topValue!, topIndex!);
                    for (int i = 0; i < rows; i++) if (top[i] == finalTop![i]) agreement[l]++;
                }
                if (gradScale is not float s) continue;

                // dlogits = (q − p)·s, through the soft-cap and the unembedding.
                be.SoftmaxRows(z, rows, V, w);
                be.Add(w, nP, w);
                be.Scale(w, s, w);
                if (cap > 0) be.SoftCapBackward(z, w, cap, w);
                var dn = View(dNormed, rows, D);
                _model.UnembedLayer.BackwardInput(be, w, rows, dn);
                var dyl = View(dy, rows, D);
                if (norm is not null)
                {
                    var ds = View(dScale, rows, 1);
                    be.NormBackwardScale(center, yl, sc, dn, rows, D, normWeight, norm.WeightOffset, ds);
                    be.NormBackwardInput(center, yl, sc, dn, ds, rows, D, normWeight, norm.WeightOffset, dyl);
                }
                else be.CopyRows(dn, 0, D, dyl, 0, D, rows, D);
                // y = h + h·Wᵀ + b: dW[out, in] += dyᵀ·h, db += Σ_rows dy.
                be.Gemm(true, false, D, D, rows, 1f, dyl, 0, D, h, 0, D, 1f, WeightGrads[l], 0, D);
                if (_bias) be.SumMiddleAxis(dyl, 1, rows, D, BiasGrads[l], accumulate: true);
            }
        }
    }

    /// <summary>The translators as a host lens (one copy each).</summary>
    public TunedLens ToLens() =>
        TunedLens.FromTranslators([.. Weights.Select(w => w.ToCpu().Span.ToArray())], [.. Biases.Select(b => b.ToCpu().Span.ToArray())], _bias,
            _model.Source, _model.Processing.Describe());

    int[] TopTokens(Tensor logits, int rows, Tensor topValue, Tensor topIndex)
    {
        var v = View(topValue, rows, 1);
        var i = View(topIndex, rows, 1);
        _be.TopKRows(logits, rows, _vocab, 1, v, i);
        var host = new float[rows];
        i.CopyTo(host);
        return [.. host.Select(x => (int)x)];
    }

    /// <summary>The first rows·cols elements of a buffer as a <c>[rows, cols]</c> tensor.</summary>
    static Tensor View(Tensor buffer, int rows, int cols) => new(buffer.Storage.Slice(0, (long)rows * cols), rows, cols);
}
