using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Models.Verification;

/// <summary>A float64 forward pass: logits <c>[batch, pos, d_vocab_out]</c> and a few activations by hook name.</summary>
/// <param name="Batch">Rows.</param>
/// <param name="Length">Positions per row.</param>
/// <param name="Logits">Row-major <c>[batch, pos, d_vocab_out]</c>.</param>
/// <param name="Activations">resid_pre, resid_mid, resid_post (<c>[batch, pos, d_model]</c>) and pattern (<c>[batch, head, q, k]</c>) per layer.</param>
public sealed record Float64Run(int Batch, int Length, double[] Logits, IReadOnlyDictionary<string, double[]> Activations);

/// <summary>Where a float64 run adds a perturbation: <c>resid_pre</c> of <paramref name="Layer"/> at (row, position, dimension).</summary>
/// <param name="Layer">The block whose resid_pre is perturbed (its index equals <c>n_layers</c> for the final resid_post).</param>
/// <param name="Row">Batch row.</param>
/// <param name="Position">Position.</param>
/// <param name="Dimension">Residual dimension.</param>
/// <param name="Amount">What is added.</param>
public readonly record struct ResidualNudge(int Layer, int Row, int Position, int Dimension, double Amount);

/// <summary>
/// The model's forward pass recomputed in float64 on the host, from the model's own weights, independently of
/// its fast path and backend: token (and learned position) embedding, each block as <see cref="HookedTransformer.Anatomy"/>
/// describes it (pre-norms, attention with its projections, per-head q/k norms, rotary from the layer's own inverse
/// frequencies, scale, soft-cap, causal and sliding-window masks, grouped kv heads; post-norms; sequential or parallel
/// MLP), the final norm, the unembedding and the final soft-cap. It shares no kernel with the fast path beyond the
/// scalar activation twins, so the two disagreeing beyond float32 rounding means one of them is wrong. It is slow
/// (scalar loops): meant for a few short prompts.
/// </summary>
public static class Float64Reference
{
    /// <summary>Runs <paramref name="tokens"/> through <paramref name="model"/> in float64.</summary>
    /// <param name="model">Any model whose blocks <see cref="HookedTransformer.Anatomy"/> describes.</param>
    /// <param name="tokens">The prompts.</param>
    /// <param name="nudge">An optional perturbation of one residual-stream entry (finite differences).</param>
    /// <param name="record">Whether to keep the per-layer activations (costs memory).</param>
    public static Float64Run Run(HookedTransformer model, TokenBatch tokens, ResidualNudge? nudge = null, bool record = true)
    {
        var cfg = model.Config;
        int B = tokens.Batch, T = tokens.Length, D = cfg.DModel, L = cfg.NLayers, V = cfg.VocabOut;
        var logits = new double[(long)B * T * V];
        var acts = new Dictionary<string, double[]>(StringComparer.Ordinal);
        double[] Slot(string name, long size) => acts.TryGetValue(name, out var a) ? a : acts[name] = new double[size];
        var we = model.EmbeddingWeights.Span;
        var wpos = model.PositionWeights.Span;
        for (int b = 0; b < B; b++)
        {
            var x = new double[T * D];
            // Shortformer positions stay out of the stream: attention adds them to its query and key inputs.
            double[]? pos = cfg.ShortformerPositions ? new double[T * D] : null;
            for (int t = 0; t < T; t++)
            {
                int id = tokens.Ids[b * T + t];
                for (int d = 0; d < D; d++)
                {
                    double p = wpos.IsEmpty ? 0 : wpos[t * D + d];
                    x[t * D + d] = we[id * D + d] * (double)cfg.EmbedScale + (pos is null ? p : 0);
                    if (pos is not null) pos[t * D + d] = p;
                }
            }
            for (int l = 0; l <= L; l++)
            {
                if (nudge is { } n && n.Layer == l && n.Row == b) x[n.Position * D + n.Dimension] += n.Amount;
                if (l == L) break;
                var a = model.Anatomy(l);
                if (record) x.CopyTo(Slot(HookNames.ResidPre(l), (long)B * T * D), (long)b * T * D);
                var pattern = record ? new double[a.Attention.NHeads * T * T] : null;
                var attn = Attention(a.Attention, Norm(a.Ln1, x, D), T, D, pattern, pos);
                if (a.AttentionPostNorm is { } ap) attn = Norm(ap, attn, D);
                if (pattern is not null) pattern.CopyTo(Slot(HookNames.Pattern(l), (long)B * pattern.Length), (long)b * pattern.Length);
                if (a.Parallel)
                {
                    var mlp = a.Mlp is null ? null : Mlp(a.Mlp, Norm(a.Ln2!, x, D), T);
                    if (mlp is not null && a.MlpPostNorm is { } mp) mlp = Norm(mp, mlp, D);
                    for (int i = 0; i < x.Length; i++) x[i] += attn[i] + (mlp?[i] ?? 0);
                }
                else
                {
                    for (int i = 0; i < x.Length; i++) x[i] += attn[i];
                    if (record && a.Mlp is not null) x.CopyTo(Slot(HookNames.ResidMid(l), (long)B * T * D), (long)b * T * D);
                    if (a.Mlp is not null)
                    {
                        var mlp = Mlp(a.Mlp, a.Ln2 is null ? x : Norm(a.Ln2, x, D), T);
                        if (a.MlpPostNorm is { } mp) mlp = Norm(mp, mlp, D);
                        for (int i = 0; i < x.Length; i++) x[i] += mlp[i];
                    }
                }
                if (record) x.CopyTo(Slot(HookNames.ResidPost(l), (long)B * T * D), (long)b * T * D);
            }
            var normed = model.FinalNormLayer is { } final ? Norm(final, x, D) : x;
            var y = Linear(model.UnembedLayer, normed, T);
            if (cfg.FinalLogitSoftCap > 0)
                for (int i = 0; i < y.Length; i++) y[i] = cfg.FinalLogitSoftCap * Math.Tanh(y[i] / cfg.FinalLogitSoftCap);
            y.CopyTo(logits, (long)b * T * V);
        }
        return new Float64Run(B, T, logits, acts);
    }

    /// <summary>A norm over the last axis (<paramref name="d"/> wide): LayerNorm, RMSNorm (weight + offset) or none; a folded norm has no weight.</summary>
    static double[] Norm(Norm norm, double[] x, int d)
    {
        if (norm.Kind == NormKind.None) return (double[])x.Clone();
        var w = norm.Weight.Span;
        var bias = norm.Bias.Span;
        var y = new double[x.Length];
        for (int r = 0; r < x.Length / d; r++)
        {
            double mean = 0;
            if (norm.Kind == NormKind.LayerNorm)
            {
                for (int i = 0; i < d; i++) mean += x[r * d + i];
                mean /= d;
            }
            double sq = 0;
            for (int i = 0; i < d; i++) { double c = x[r * d + i] - mean; sq += c * c; }
            double inv = 1 / Math.Sqrt(sq / d + norm.Eps);
            for (int i = 0; i < d; i++)
                y[r * d + i] = (x[r * d + i] - mean) * inv * ((w.IsEmpty ? 1 : w[i]) + (double)norm.WeightOffset) + (bias.IsEmpty ? 0 : bias[i]);
        }
        return y;
    }

    /// <summary><c>x [rows, d_in] → [rows, d_out]</c> with the layer's weight layout and bias.</summary>
    static double[] Linear(Linear layer, double[] x, int rows)
    {
        int n = layer.DIn, m = layer.DOut;
        var w = layer.Weight.Span;
        var bias = layer.Bias.Span;
        var y = new double[rows * m];
        for (int r = 0; r < rows; r++)
        {
            var row = y.AsSpan(r * m, m);
            if (!bias.IsEmpty) for (int o = 0; o < m; o++) row[o] = bias[o];
            for (int i = 0; i < n; i++)
            {
                double xi = x[r * n + i];
                if (xi == 0) continue;
                if (layer.WeightIsOutIn) for (int o = 0; o < m; o++) row[o] += xi * w[o * n + i];
                else
                {
                    var wr = w.Slice(i * m, m);
                    for (int o = 0; o < m; o++) row[o] += xi * wr[o];
                }
            }
        }
        return y;
    }

    static double[] Mlp(MlpLayer mlp, double[] x, int rows)
    {
        var pre = Linear(mlp.Gate ?? mlp.In, x, rows);
        var post = new double[pre.Length];
        if (mlp.InnerNorm is { } inner)
        {
            // SoLU (pre ⊙ softmax(pre) over d_mlp), then the MLP's own LayerNorm.
            int m = pre.Length / rows;
            for (int r = 0; r < rows; r++)
            {
                var row = pre.AsSpan(r * m, m);
                double max = double.NegativeInfinity, sum = 0;
                foreach (double v in row) max = Math.Max(max, v);
                foreach (double v in row) sum += Math.Exp(v - max);
                for (int i = 0; i < m; i++) post[r * m + i] = row[i] * Math.Exp(row[i] - max) / sum;
            }
            return Linear(mlp.Out, Norm(inner, post, m), rows);
        }
        ReferenceKernels.Activation(mlp.Activation, pre, post);
        if (mlp.Gate is not null)
        {
            var linear = Linear(mlp.In, x, rows);
            for (int i = 0; i < post.Length; i++) post[i] *= linear[i];
        }
        return Linear(mlp.Out, post, rows);
    }

    /// <summary>Causal self-attention of one row of positions <c>x [T, d_model]</c>; <paramref name="pattern"/> receives <c>[head, q, k]</c>.</summary>
    static double[] Attention(AttentionLayer a, double[] x, int T, int D, double[]? pattern, double[]? positions)
    {
        int H = a.NHeads, KV = a.NKvHeads, E = a.DHead, group = H / KV;
        double[] q, k, v;
        if (positions is not null)
        {
            // Shortformer: queries and keys read x + positions, values x.
            var withPositions = new double[x.Length];
            for (int i = 0; i < x.Length; i++) withPositions[i] = x[i] + positions[i];
            if (a.Qkv is not null) throw new NotSupportedException("shortformer positions with a fused q/k/v projection");
            (q, k, v) = (Linear(a.Q!, withPositions, T), Linear(a.K!, withPositions, T), Linear(a.V!, x, T));
        }
        else if (a.Qkv is { } fused)
        {
            var f = Linear(fused, x, T);
            int width = fused.DOut;
            q = new double[T * H * E]; k = new double[T * KV * E]; v = new double[T * KV * E];
            for (int t = 0; t < T; t++)
            {
                if (a.Layout == FusedQkvLayout.Concatenated)
                {
                    Array.Copy(f, t * width, q, t * H * E, H * E);
                    Array.Copy(f, t * width + H * E, k, t * KV * E, KV * E);
                    Array.Copy(f, t * width + H * E + KV * E, v, t * KV * E, KV * E);
                }
                else
                    for (int h = 0; h < H; h++)
                    {
                        Array.Copy(f, t * width + h * 3 * E, q, (t * H + h) * E, E);
                        Array.Copy(f, t * width + h * 3 * E + E, k, (t * KV + h) * E, E);
                        Array.Copy(f, t * width + h * 3 * E + 2 * E, v, (t * KV + h) * E, E);
                    }
            }
        }
        else (q, k, v) = (Linear(a.Q!, x, T), Linear(a.K!, x, T), Linear(a.V!, x, T));
        if (a.QNorm is { } qn) q = Norm(qn, q, E);
        if (a.KNorm is { } kn) k = Norm(kn, k, E);
        if (a.Rotary?.ForLength(T) is { } rotary)
        {
            Rotate(q, T, H, E, rotary.RotaryDim, rotary.InverseFrequencies, rotary.Magnitude);
            Rotate(k, T, KV, E, rotary.RotaryDim, rotary.InverseFrequencies, rotary.Magnitude);
        }
        var z = new double[T * H * E];
        var p = new double[T];
        for (int h = 0; h < H; h++)
        {
            int kh = h / group;
            for (int i = 0; i < T; i++)
            {
                double max = double.NegativeInfinity;
                for (int j = 0; j < T; j++)
                {
                    bool visible = j <= i && (a.Window <= 0 || i - j < a.Window);
                    if (!visible) { p[j] = double.NegativeInfinity; continue; }
                    double s = 0;
                    for (int e = 0; e < E; e++) s += q[(i * H + h) * E + e] * k[(j * KV + kh) * E + e];
                    s *= a.Scale;
                    if (a.SoftCap > 0) s = a.SoftCap * Math.Tanh(s / a.SoftCap);
                    p[j] = s;
                    max = Math.Max(max, s);
                }
                double sum = 0;
                for (int j = 0; j < T; j++) { p[j] = double.IsNegativeInfinity(p[j]) ? 0 : Math.Exp(p[j] - max); sum += p[j]; }
                for (int j = 0; j < T; j++)
                {
                    p[j] /= sum;
                    if (pattern is not null) pattern[(h * T + i) * T + j] = p[j];
                    if (p[j] == 0) continue;
                    for (int e = 0; e < E; e++) z[(i * H + h) * E + e] += p[j] * v[(j * KV + kh) * E + e];
                }
            }
        }
        return Linear(a.O, z, T);
    }

    /// <summary>Rotate-half rotary on the first <paramref name="rotaryDim"/> dims of each head, position = row index.</summary>
    static void Rotate(double[] x, int T, int heads, int E, int rotaryDim, ReadOnlySpan<float> inverseFrequencies, float magnitude)
    {
        int half = rotaryDim / 2;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < heads; h++)
            {
                int o = (t * heads + h) * E;
                for (int i = 0; i < half; i++)
                {
                    // The angle in float32 (position · inv_freq), as Hugging Face and the fast path compute it; the rest in float64.
                    double angle = (float)(t * inverseFrequencies[i]);
                    double c = Math.Cos(angle) * magnitude, s = Math.Sin(angle) * magnitude, x1 = x[o + i], x2 = x[o + i + half];
                    x[o + i] = x1 * c - x2 * s;
                    x[o + i + half] = x2 * c + x1 * s;
                }
            }
    }
}
