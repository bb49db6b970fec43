using Loupe.Models.Layers;

namespace Loupe.Models.Processing;

/// <summary>
/// TransformerLens's refactor_factored_attn_matrices. Per head, with the biases appended as a last
/// input row (<c>W_Q_eff = [W_Q; b_Q]</c>, <c>W_K_eff = [W_K; b_K]</c>, so the bilinear form over
/// <c>[x, 1]</c> is kept): <c>W_Q_eff·W_K_effᵀ = U·S·Vᵀ</c> (thin SVD, d_head components) becomes
/// <c>W_Q_eff = U·√S</c>, <c>W_K_eff = V·√S</c>. The value bias is folded into b_O, then
/// <c>W_V·W_O = U·S·Vᵀ</c> becomes <c>W_V = U·S</c>, <c>W_O = Vᵀ</c> (a rotation). Scores, patterns and
/// head outputs are unchanged; q, k, v and z are not. Singular vectors are unique only up to sign (and
/// rotation within repeated singular values), so the factors match TransformerLens's up to those.
/// </summary>
static class FactoredAttention
{
    /// <summary>Why the refactoring would not be exact for <paramref name="model"/>, or null.</summary>
    internal static string? WhyNot(HookedTransformer model)
    {
        var cfg = model.Config;
        if (cfg.RotaryDim > 0) return "its attention uses rotary embeddings, so W_Q·W_Kᵀ depends on the positions of the query and key (TransformerLens refuses it too)";
        if (cfg.KvHeads != cfg.NHeads) return "its query heads share key/value heads (grouped-query attention), so one head's W_K cannot be refactored alone";
        if (cfg.QkNorm) return "its queries and keys are normalised after the projection, which a refactored W_Q/W_K would change";
        return null;
    }

    internal static void Refactor(HookedTransformer model)
    {
        if (WhyNot(model) is string why) throw new InvalidOperationException($"refactor_factored_attn_matrices: {why}");
        for (int l = 0; l < model.Config.NLayers; l++) RefactorLayer(model.Anatomy(l).Attention);
    }

    /// <summary>An editable copy of a linear's weight and bias (a zero bias when it has none).</summary>
    sealed class Editable(Linear lin)
    {
        public Linear Linear { get; } = lin;
        public float[] W { get; } = lin.Weight.ToArray();
        public float[] B { get; } = lin.Bias.IsEmpty ? new float[lin.DOut] : lin.Bias.ToArray();
        public double this[int i, int o]
        {
            get => W[WeightProcessor.Index(Linear, i, o)];
            set => W[WeightProcessor.Index(Linear, i, o)] = (float)value;
        }
        public void Commit() => Linear.Replace(W, B);
    }

    static void RefactorLayer(AttentionLayer attn)
    {
        int H = attn.NHeads, dh = attn.DHead, D = attn.O.DOut;
        // q, k and v: one shared copy of a fused projection, or three.
        Editable[] parts = attn.Qkv is { } qkv ? Enumerable.Repeat(new Editable(qkv), 3).ToArray() : [new(attn.Q!), new(attn.K!), new(attn.V!)];
        var o = new Editable(attn.O);
        var bO = o.B.Select(v => (double)v).ToArray();
        for (int h = 0; h < H; h++)
        {
            int Col(int part, int j) => WeightProcessor.ProjectionColumn(attn, part, h, j);

            // QK: [W_Q; b_Q]·[W_K; b_K]ᵀ, both [d_model + 1, d_head].
            var q = new double[(D + 1) * dh];
            var k = new double[(D + 1) * dh];
            for (int j = 0; j < dh; j++)
            {
                for (int d = 0; d < D; d++) { q[d * dh + j] = parts[0][d, Col(0, j)]; k[d * dh + j] = parts[1][d, Col(1, j)]; }
                q[D * dh + j] = parts[0].B[Col(0, j)];
                k[D * dh + j] = parts[1].B[Col(1, j)];
            }
            var (uq, sq, vk) = ProductSvd(q, k, D + 1, D + 1, dh);
            for (int j = 0; j < dh; j++)
            {
                double root = Math.Sqrt(sq[j]);
                for (int d = 0; d < D; d++) { parts[0][d, Col(0, j)] = uq[d * dh + j] * root; parts[1][d, Col(1, j)] = vk[d * dh + j] * root; }
                parts[0].B[Col(0, j)] = (float)(uq[D * dh + j] * root);
                parts[1].B[Col(1, j)] = (float)(vk[D * dh + j] * root);
            }

            // OV: fold b_V into b_O (with this head's W_O before it is refactored), then W_V·W_O = U·S·Vᵀ.
            for (int j = 0; j < dh; j++)
            {
                double bv = parts[2].B[Col(2, j)];
                for (int d = 0; d < D; d++) bO[d] += bv * o[h * dh + j, d];
                parts[2].B[Col(2, j)] = 0f;
            }
            var v = new double[D * dh];
            var wo = new double[D * dh]; // W_O[h]ᵀ: [d_model, d_head]
            for (int d = 0; d < D; d++)
                for (int j = 0; j < dh; j++) { v[d * dh + j] = parts[2][d, Col(2, j)]; wo[d * dh + j] = o[h * dh + j, d]; }
            var (uv, sv, vo) = ProductSvd(v, wo, D, D, dh);
            for (int d = 0; d < D; d++)
                for (int j = 0; j < dh; j++) { parts[2][d, Col(2, j)] = uv[d * dh + j] * sv[j]; o[h * dh + j, d] = vo[d * dh + j]; }
        }
        for (int d = 0; d < D; d++) o.B[d] = (float)bO[d];
        foreach (var part in parts.Distinct()) part.Commit();
        o.Commit();
    }

    /// <summary>
    /// Thin SVD of <c>A·Bᵀ</c> (A <c>[n, r]</c>, B <c>[m, r]</c>, row-major) without forming it:
    /// <c>A = Qa·Ra</c>, <c>B = Qb·Rb</c>, <c>Ra·Rbᵀ = Uc·S·Vcᵀ</c> ⇒ <c>U = Qa·Uc</c>, <c>V = Qb·Vc</c>; S descending.
    /// </summary>
    internal static (double[] U, double[] S, double[] V) ProductSvd(double[] a, double[] b, int n, int m, int r)
    {
        var (qa, ra) = Qr(a, n, r);
        var (qb, rb) = Qr(b, m, r);
        var c = new double[r * r];
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++)
            {
                double s = 0;
                for (int t = 0; t < r; t++) s += ra[i * r + t] * rb[j * r + t];
                c[i * r + j] = s;
            }
        var (uc, sc, vc) = JacobiSvd(c, r);
        return (MatMul(qa, uc, n, r, r), sc, MatMul(qb, vc, m, r, r));
    }

    static double[] MatMul(double[] x, double[] y, int n, int k, int r)
    {
        var z = new double[n * r];
        for (int i = 0; i < n; i++)
            for (int t = 0; t < k; t++)
            {
                double xv = x[i * k + t];
                if (xv == 0) continue;
                for (int j = 0; j < r; j++) z[i * r + j] += xv * y[t * r + j];
            }
        return z;
    }

    /// <summary>Thin QR by modified Gram–Schmidt, twice (re-orthogonalised); a column in the span of the earlier ones gets a zero Q column and R row.</summary>
    static (double[] Q, double[] R) Qr(double[] a, int n, int r)
    {
        var q = new double[n * r];
        var rr = new double[r * r];
        double scale = Math.Sqrt(a.Sum(x => x * x)) + 1e-300;
        for (int j = 0; j < r; j++)
        {
            var v = new double[n];
            for (int i = 0; i < n; i++) v[i] = a[i * r + j];
            for (int pass = 0; pass < 2; pass++)
                for (int p = 0; p < j; p++)
                {
                    double dot = 0;
                    for (int i = 0; i < n; i++) dot += q[i * r + p] * v[i];
                    rr[p * r + j] += dot;
                    for (int i = 0; i < n; i++) v[i] -= dot * q[i * r + p];
                }
            double norm = Math.Sqrt(v.Sum(x => x * x));
            if (norm <= 1e-13 * scale) continue;
            rr[j * r + j] = norm;
            for (int i = 0; i < n; i++) q[i * r + j] = v[i] / norm;
        }
        return (q, rr);
    }

    /// <summary>SVD of a small square matrix by one-sided Jacobi rotations: <c>C = U·diag(S)·Vᵀ</c>, S descending.</summary>
    static (double[] U, double[] S, double[] V) JacobiSvd(double[] c, int r)
    {
        var w = (double[])c.Clone();
        var v = new double[r * r];
        for (int i = 0; i < r; i++) v[i * r + i] = 1;
        for (int sweep = 0; sweep < 60; sweep++)
        {
            bool rotated = false;
            for (int p = 0; p < r - 1; p++)
                for (int qi = p + 1; qi < r; qi++)
                {
                    double alpha = 0, beta = 0, gamma = 0;
                    for (int i = 0; i < r; i++)
                    {
                        double x = w[i * r + p], y = w[i * r + qi];
                        alpha += x * x; beta += y * y; gamma += x * y;
                    }
                    if (Math.Abs(gamma) <= 1e-15 * Math.Sqrt(alpha * beta) || gamma == 0) continue;
                    rotated = true;
                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = Math.Sign(zeta == 0 ? 1 : zeta) / (Math.Abs(zeta) + Math.Sqrt(1 + zeta * zeta));
                    double cs = 1 / Math.Sqrt(1 + t * t), sn = cs * t;
                    foreach (var mat in new[] { w, v })
                        for (int i = 0; i < r; i++)
                        {
                            double x = mat[i * r + p], y = mat[i * r + qi];
                            mat[i * r + p] = cs * x - sn * y;
                            mat[i * r + qi] = sn * x + cs * y;
                        }
                }
            if (!rotated) break;
        }
        var s = new double[r];
        for (int j = 0; j < r; j++)
        {
            double sum = 0;
            for (int i = 0; i < r; i++) sum += w[i * r + j] * w[i * r + j];
            s[j] = Math.Sqrt(sum);
        }
        var order = Enumerable.Range(0, r).OrderByDescending(j => s[j]).ToArray();
        var u = new double[r * r];
        var vs = new double[r * r];
        var ss = new double[r];
        for (int k = 0; k < r; k++)
        {
            int j = order[k];
            ss[k] = s[j];
            for (int i = 0; i < r; i++)
            {
                u[i * r + k] = s[j] > 0 ? w[i * r + j] / s[j] : 0;
                vs[i * r + k] = v[i * r + j];
            }
        }
        return (u, ss, vs);
    }
}
