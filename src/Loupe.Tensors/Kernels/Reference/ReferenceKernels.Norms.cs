namespace Loupe.Tensors.Kernels.Reference;

// Double twins of the normalizations (forward, hooked-scale forward, both backward halves), softmax,
// log-softmax, cross-entropy and the row reductions. x is [rows, d] (or [rows, n]), row-major.
public static partial class ReferenceKernels
{
    /// <summary>
    /// LayerNorm (<paramref name="center"/>) or RMSNorm: <c>c = x − mean(x)</c> or <c>x</c>,
    /// <c>σ = √(mean(c²) + eps)</c> into <paramref name="scale"/> <c>[rows]</c> (when not empty),
    /// <c>y = c/σ·(w + weightOffset) + b</c>. An empty weight is 1, an empty bias 0.
    /// </summary>
    public static void Norm(bool center, ReadOnlySpan<double> x, int rows, int d, ReadOnlySpan<double> weight, double weightOffset,
        ReadOnlySpan<double> bias, double eps, Span<double> y, Span<double> scale)
    {
        var sigma = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double mean = RowMean(center, x, r, d), squares = 0;
            for (int i = 0; i < d; i++) squares += (x[r * d + i] - mean) * (x[r * d + i] - mean);
            sigma[r] = Math.Sqrt(squares / d + eps);
        }
        NormWithScale(center, x, rows, d, weight, weightOffset, bias, sigma, y);
        if (!scale.IsEmpty) sigma.CopyTo(scale);
    }

    /// <summary><see cref="Norm"/>'s output <c>c/σ·(w + weightOffset) + b</c> with σ given (a hooked hook_scale).</summary>
    public static void NormWithScale(bool center, ReadOnlySpan<double> x, int rows, int d, ReadOnlySpan<double> weight, double weightOffset,
        ReadOnlySpan<double> bias, ReadOnlySpan<double> scale, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
        {
            double mean = RowMean(center, x, r, d);
            for (int i = 0; i < d; i++)
                y[r * d + i] = (x[r * d + i] - mean) / scale[r] * EffectiveWeight(weight, weightOffset, i) + (bias.IsEmpty ? 0 : bias[i]);
        }
    }

    /// <summary>
    /// Backward of <see cref="NormWithScale"/> to σ: y = c/σ·w_eff + b, so
    /// <c>dσ[r] = Σᵢ dy·w_eff·(−c/σ²) = −Σᵢ dy·w_eff·ĉ / σ</c> with <c>ĉ = c/σ</c>.
    /// </summary>
    public static void NormBackwardScale(bool center, ReadOnlySpan<double> x, ReadOnlySpan<double> scale, ReadOnlySpan<double> dy,
        int rows, int d, ReadOnlySpan<double> weight, double weightOffset, Span<double> dScale)
    {
        for (int r = 0; r < rows; r++)
        {
            double mean = RowMean(center, x, r, d), sum = 0;
            for (int i = 0; i < d; i++) sum += dy[r * d + i] * EffectiveWeight(weight, weightOffset, i) * (x[r * d + i] - mean) / scale[r];
            dScale[r] = -sum / scale[r];
        }
    }

    /// <summary>
    /// Backward of <see cref="Norm"/> to x given dσ (which may include a hook's gradient). With σ held fixed,
    /// y = c/σ·w_eff + b gives <c>dy·w_eff/σ</c> per c; σ = √(mean(c²) + eps) adds <c>dσ·∂σ/∂cᵢ = dσ·cᵢ/(d·σ)</c>.
    /// LayerNorm's c = x − mean(x) then maps dc to <c>dx = dc − mean(dc)</c>; RMSNorm's c = x gives dx = dc.
    /// </summary>
    public static void NormBackwardInput(bool center, ReadOnlySpan<double> x, ReadOnlySpan<double> scale, ReadOnlySpan<double> dy,
        ReadOnlySpan<double> dScale, int rows, int d, ReadOnlySpan<double> weight, double weightOffset, Span<double> dx)
    {
        for (int r = 0; r < rows; r++)
        {
            double mean = RowMean(center, x, r, d), sigma = scale[r], dcSum = 0;
            for (int i = 0; i < d; i++)
            {
                double c = x[r * d + i] - mean;
                double dc = dy[r * d + i] * EffectiveWeight(weight, weightOffset, i) / sigma + dScale[r] * c / (d * sigma);
                dx[r * d + i] = dc;
                dcSum += dc;
            }
            if (center)
                for (int i = 0; i < d; i++) dx[r * d + i] -= dcSum / d;
        }
    }

    static double RowMean(bool center, ReadOnlySpan<double> x, int r, int d)
    {
        if (!center) return 0;
        double sum = 0;
        for (int i = 0; i < d; i++) sum += x[r * d + i];
        return sum / d;
    }

    static double EffectiveWeight(ReadOnlySpan<double> weight, double offset, int i) => (weight.IsEmpty ? 1 : weight[i]) + offset;

    /// <summary>Row-wise softmax of x <c>[rows, n]</c>: −∞ gets 0, a row of only −∞ becomes zeros.</summary>
    public static void SoftmaxRows(ReadOnlySpan<double> x, int rows, int n, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
        {
            double max = RowMax(x, r, n), sum = 0;
            if (double.IsNegativeInfinity(max)) { y.Slice(r * n, n).Clear(); continue; }
            for (int j = 0; j < n; j++) sum += Math.Exp(x[r * n + j] - max);
            for (int j = 0; j < n; j++) y[r * n + j] = Math.Exp(x[r * n + j] - max) / sum;
        }
    }

    /// <summary>
    /// Backward of <see cref="SoftmaxRows"/>: ∂pⱼ/∂xᵢ = pⱼ(δᵢⱼ − pᵢ), so
    /// <c>dxᵢ = Σⱼ dpⱼ·pⱼ(δᵢⱼ − pᵢ) = pᵢ(dpᵢ − Σⱼ pⱼ·dpⱼ)</c>.
    /// </summary>
    public static void SoftmaxBackwardRows(ReadOnlySpan<double> p, ReadOnlySpan<double> dp, int rows, int n, Span<double> dx)
    {
        for (int r = 0; r < rows; r++)
        {
            double dot = 0;
            for (int j = 0; j < n; j++) dot += p[r * n + j] * dp[r * n + j];
            for (int j = 0; j < n; j++) dx[r * n + j] = p[r * n + j] * (dp[r * n + j] - dot);
        }
    }

    /// <summary>Row-wise <c>log softmax(x) = x − log Σ exp(x)</c>, max-subtracted.</summary>
    public static void LogSoftmaxRows(ReadOnlySpan<double> x, int rows, int n, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
        {
            double lse = LogSumExp(x, r, n);
            for (int j = 0; j < n; j++) y[r * n + j] = x[r * n + j] - lse;
        }
    }

    /// <summary>
    /// <c>loss[r] = −log softmax(x[r])[t] = lse(x[r]) − x[r, t]</c>; when <paramref name="dLogits"/> is not empty,
    /// <c>weight·∂loss[r]/∂x[r, j] = weight·(softmax(x[r])ⱼ − [j = t])</c>. A target below 0 gives loss 0 and gradient 0.
    /// </summary>
    public static void CrossEntropyRows(ReadOnlySpan<double> logits, int rows, int n, ReadOnlySpan<int> targets, Span<double> loss,
        Span<double> dLogits, double weight)
    {
        for (int r = 0; r < rows; r++)
        {
            int t = targets[r];
            double lse = LogSumExp(logits, r, n);
            loss[r] = t < 0 ? 0 : lse - logits[r * n + t];
            if (dLogits.IsEmpty) continue;
            for (int j = 0; j < n; j++)
                dLogits[r * n + j] = t < 0 ? 0 : (Math.Exp(logits[r * n + j] - lse) - (j == t ? 1 : 0)) * weight;
        }
    }

    static double RowMax(ReadOnlySpan<double> x, int r, int n)
    {
        double max = double.NegativeInfinity;
        for (int j = 0; j < n; j++) max = Math.Max(max, x[r * n + j]);
        return max;
    }

    static double LogSumExp(ReadOnlySpan<double> x, int r, int n)
    {
        double max = RowMax(x, r, n), sum = 0;
        if (!double.IsFinite(max)) return max;
        for (int j = 0; j < n; j++) sum += Math.Exp(x[r * n + j] - max);
        return max + Math.Log(sum);
    }

    /// <summary>Index of each row's largest element, the first one on ties.</summary>
    public static int[] ArgMaxRows(ReadOnlySpan<float> x, int rows, int n)
    {
        var result = new int[rows];
        for (int r = 0; r < rows; r++)
            for (int j = 1; j < n; j++)
                if (x[r * n + j] > x[r * n + result[r]]) result[r] = j;
        return result;
    }

    /// <summary>
    /// Top-k of each row by value, largest first, ties to the lower index (NaN ranks below every number):
    /// k rounds of "the largest not yet taken", scanning upwards and replacing only on strictly larger.
    /// </summary>
    public static void TopKRows(ReadOnlySpan<float> x, int rows, int n, int k, Span<float> values, Span<int> indices)
    {
        var taken = new bool[n];
        for (int r = 0; r < rows; r++)
        {
            Array.Clear(taken);
            for (int slot = 0; slot < k; slot++)
            {
                int best = -1;
                for (int j = 0; j < n; j++)
                {
                    if (taken[j]) continue;
                    if (best < 0 || RanksAbove(x[r * n + j], x[r * n + best])) best = j;
                }
                taken[best] = true;
                values[r * k + slot] = x[r * n + best];
                indices[r * k + slot] = best;
            }
        }
    }

    /// <summary>Whether a ranks strictly above b, NaN below every number.</summary>
    static bool RanksAbove(float a, float b) => !float.IsNaN(a) && (float.IsNaN(b) || a > b);

    /// <summary>The first NaN or ±∞ (−∞ allowed when <paramref name="allowNegativeInfinity"/>), or −1.</summary>
    public static long IndexOfNonFinite(ReadOnlySpan<float> x, bool allowNegativeInfinity = false)
    {
        for (int i = 0; i < x.Length; i++)
        {
            if (float.IsFinite(x[i])) continue;
            if (allowNegativeInfinity && float.IsNegativeInfinity(x[i])) continue;
            return i;
        }
        return -1;
    }
}
