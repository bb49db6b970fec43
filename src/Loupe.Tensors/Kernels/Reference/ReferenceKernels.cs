namespace Loupe.Tensors.Kernels.Reference;

/// <summary>
/// Slow, obvious scalar twins of every kernel, kept for ever: each fast path is tested against
/// these on random inputs. Double accumulation, no SIMD, no BLAS, no threads.
/// This file holds the float twins the kernel tests grew up with; the twins of every
/// <see cref="Backends.IComputeBackend"/> operation, forward and backward, work in double and
/// sit in the other ReferenceKernels.*.cs files (each re-derives the math in the interface's docs).
/// </summary>
public static partial class ReferenceKernels
{
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int p = 0; p < k; p++)
                {
                    float av = transA ? a[p * lda + i] : a[i * lda + p];
                    float bv = transB ? b[j * ldb + p] : b[p * ldb + j];
                    sum += (double)av * bv;
                }
                c[i * ldc + j] = (float)(alpha * sum + (beta == 0f ? 0.0 : beta * (double)c[i * ldc + j]));
            }
    }

    public static float Relu(float x) => x > 0 ? x : (float.IsNaN(x) ? x : 0f);

    public static float Silu(float x) => (float)(x / (1.0 + Math.Exp(-x)));

    public static float GeluTanh(float x)
    {
        double v = x;
        return (float)(0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v))));
    }

    public static float GeluErf(float x) => (float)(0.5 * x * (1 + ErfBySimpson(x / Math.Sqrt(2))));

    /// <summary>erf by composite Simpson integration of 2/√π·e^(−t²) — independent of the fast erf.</summary>
    public static double ErfBySimpson(double x)
    {
        if (double.IsNaN(x)) return x;
        if (Math.Abs(x) > 8) return Math.Sign(x);
        const int intervals = 4000;
        double h = x / intervals, sum = 0;
        for (int i = 0; i <= intervals; i++)
        {
            double t = i * h, f = Math.Exp(-t * t);
            sum += f * (i == 0 || i == intervals ? 1 : i % 2 == 1 ? 4 : 2);
        }
        return 2 / Math.Sqrt(Math.PI) * sum * h / 3;
    }

    public static void LayerNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> w, ReadOnlySpan<float> b, float eps, Span<float> y)
    {
        for (int r = 0; r < rows; r++)
        {
            double mean = 0, variance = 0;
            for (int i = 0; i < d; i++) mean += x[r * d + i];
            mean /= d;
            for (int i = 0; i < d; i++) variance += (x[r * d + i] - mean) * (x[r * d + i] - mean);
            variance /= d;
            double inv = 1 / Math.Sqrt(variance + eps);
            for (int i = 0; i < d; i++)
                y[r * d + i] = (float)((x[r * d + i] - mean) * inv * (w.IsEmpty ? 1 : w[i]) + (b.IsEmpty ? 0 : b[i]));
        }
    }

    public static void RmsNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> w, float offset, float eps, Span<float> y)
    {
        for (int r = 0; r < rows; r++)
        {
            double ms = 0;
            for (int i = 0; i < d; i++) ms += (double)x[r * d + i] * x[r * d + i];
            double inv = 1 / Math.Sqrt(ms / d + eps);
            for (int i = 0; i < d; i++) y[r * d + i] = (float)(x[r * d + i] * inv * ((w.IsEmpty ? 1 : w[i]) + offset));
        }
    }

    public static void Softmax(ReadOnlySpan<float> x, int rows, int n, Span<float> y)
    {
        for (int r = 0; r < rows; r++)
        {
            double max = double.NegativeInfinity;
            for (int j = 0; j < n; j++) max = Math.Max(max, x[r * n + j]);
            if (double.IsNegativeInfinity(max)) { for (int j = 0; j < n; j++) y[r * n + j] = 0; continue; }
            double sum = 0;
            for (int j = 0; j < n; j++) sum += Math.Exp(x[r * n + j] - max);
            for (int j = 0; j < n; j++) y[r * n + j] = (float)(Math.Exp(x[r * n + j] - max) / sum);
        }
    }

    /// <summary>Rotate-half rotary embedding of x <c>[rows, heads, headDim]</c>, angles in double.</summary>
    public static void Rotary(Span<float> x, int rows, int heads, int headDim, int rotaryDim, double theta, ReadOnlySpan<int> positions)
    {
        int half = rotaryDim / 2;
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                int o = (r * heads + h) * headDim;
                for (int i = 0; i < half; i++)
                {
                    double angle = positions[r] * Math.Pow(theta, -2.0 * i / rotaryDim);
                    double a = x[o + i], b = x[o + i + half];
                    x[o + i] = (float)(a * Math.Cos(angle) - b * Math.Sin(angle));
                    x[o + i + half] = (float)(b * Math.Cos(angle) + a * Math.Sin(angle));
                }
            }
    }

    /// <summary>Full attention in one loop nest: returns z <c>[batch, q, heads, dHead]</c> and the pattern.</summary>
    public static void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int batch, int tq, int tk,
        int nHeads, int nKv, int dHead, float scale, AttentionMask mask, Span<float> pattern, Span<float> z)
    {
        int group = nHeads / nKv;
        var row = new double[tk];
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < nHeads; h++)
                for (int i = 0; i < tq; i++)
                {
                    int qpos = mask.QueryOffset + i;
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < tk; j++)
                    {
                        bool visible = j <= qpos && (mask.SlidingWindow <= 0 || qpos - j < mask.SlidingWindow)
                            && (mask.KeyValid is null || mask.KeyValid[b * tk + j]);
                        double s = 0;
                        for (int e = 0; e < dHead; e++)
                            s += (double)q[((b * tq + i) * nHeads + h) * dHead + e] * k[((b * tk + j) * nKv + h / group) * dHead + e];
                        s *= scale;
                        if (mask.SoftCap > 0) s = mask.SoftCap * Math.Tanh(s / mask.SoftCap);
                        row[j] = visible ? s : double.NegativeInfinity;
                        max = Math.Max(max, row[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < tk; j++) { row[j] = double.IsNegativeInfinity(max) ? 0 : Math.Exp(row[j] - max); sum += row[j]; }
                    for (int j = 0; j < tk; j++)
                        pattern[((b * nHeads + h) * tq + i) * tk + j] = (float)(sum == 0 ? 0 : row[j] / sum);
                    for (int e = 0; e < dHead; e++)
                    {
                        double acc = 0;
                        for (int j = 0; j < tk; j++)
                            acc += (sum == 0 ? 0 : row[j] / sum) * v[((b * tk + j) * nKv + h / group) * dHead + e];
                        z[((b * tq + i) * nHeads + h) * dHead + e] = (float)acc;
                    }
                }
    }
}
