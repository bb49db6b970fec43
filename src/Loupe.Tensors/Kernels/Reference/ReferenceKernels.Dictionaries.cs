namespace Loupe.Tensors.Kernels.Reference;

public static partial class ReferenceKernels
{
    /// <summary><see cref="Backends.IComputeBackend.RowDots"/>: <c>y[r] (+)= Σ_c a[r, c]·b[r, c]</c>.</summary>
    public static void RowDots(ReadOnlySpan<double> a, ReadOnlySpan<double> b, int rows, int cols, Span<double> y, bool accumulate)
    {
        for (int r = 0; r < rows; r++)
        {
            double sum = 0;
            for (int c = 0; c < cols; c++) sum += a[r * cols + c] * b[r * cols + c];
            y[r] = accumulate ? y[r] + sum : sum;
        }
    }

    /// <summary>
    /// <see cref="Backends.IComputeBackend.SparseRowsTimes"/>: <c>y[r, :] = bias + Σ_j values[r, j]·w[indices[r, j], :]</c>,
    /// an index outside <c>[0, n)</c> skipped.
    /// </summary>
    public static void SparseRowsTimes(ReadOnlySpan<double> values, ReadOnlySpan<double> indices, int rows, int k,
        ReadOnlySpan<double> w, int n, int d, ReadOnlySpan<double> bias, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < d; c++)
            {
                double sum = bias.IsEmpty ? 0 : bias[c];
                for (int j = 0; j < k; j++)
                {
                    double i = indices[r * k + j];
                    if (i >= 0 && i < n) sum += values[r * k + j] * w[(int)i * d + c];
                }
                y[r * d + c] = sum;
            }
    }

    /// <summary><see cref="Backends.IComputeBackend.RowDotsAt"/>: <c>y[r, j] = a[r, :]·w[indices[r, j], :]</c>, 0 for an index outside <c>[0, n)</c>.</summary>
    public static void RowDotsAt(ReadOnlySpan<double> a, int rows, int d, ReadOnlySpan<double> w, int n, ReadOnlySpan<double> indices, int k, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < k; j++)
            {
                double i = indices[r * k + j], sum = 0;
                if (i >= 0 && i < n)
                    for (int c = 0; c < d; c++) sum += a[r * d + c] * w[(int)i * d + c];
                y[r * k + j] = sum;
            }
    }

    /// <summary>
    /// <see cref="Backends.IComputeBackend.SparseRowsTransposeTimes"/>: <c>y[i, :] (+)= Σ values[r, j]·a[r, :]</c> over the
    /// entries with <c>indices[r, j] = i</c>, an index outside <c>[0, n)</c> skipped.
    /// </summary>
    public static void SparseRowsTransposeTimes(ReadOnlySpan<double> values, ReadOnlySpan<double> indices, int rows, int k,
        ReadOnlySpan<double> a, int n, int d, Span<double> y, bool accumulate)
    {
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c++)
            {
                double sum = accumulate ? y[i * d + c] : 0;
                for (int e = 0; e < rows * k; e++)
                    if (indices[e] == i) sum += values[e] * a[e / k * d + c];
                y[i * d + c] = sum;
            }
    }

    /// <summary><see cref="Backends.IComputeBackend.ScaleRows"/>: <c>y[r, c] = x[r, c]·scale[r]</c>.</summary>
    public static void ScaleRows(ReadOnlySpan<double> x, int rows, int cols, ReadOnlySpan<double> scale, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] * scale[r];
    }

    /// <summary><see cref="Backends.IComputeBackend.NormScale"/>: <c>target / √s</c> where the norm is positive (and above target when asked), else 1.</summary>
    public static void NormScale(ReadOnlySpan<double> sumSquares, double target, bool onlyAbove, Span<double> y)
    {
        for (int i = 0; i < sumSquares.Length; i++)
        {
            double n = Math.Sqrt(sumSquares[i]);
            y[i] = n > 0 && (!onlyAbove || n > target) ? target / n : 1;
        }
    }

    /// <summary><see cref="Backends.IComputeBackend.ReconstructionRowStats"/>: cosine (1 when both norms are 0, 0 when one is) and norm ratio per row.</summary>
    public static void ReconstructionRowStats(ReadOnlySpan<double> xx, ReadOnlySpan<double> rr, ReadOnlySpan<double> dot, double minNorm, Span<double> cosine, Span<double> ratio)
    {
        for (int i = 0; i < xx.Length; i++)
        {
            double nx = Math.Sqrt(xx[i]), nr = Math.Sqrt(rr[i]);
            cosine[i] = nx == 0 && nr == 0 ? 1 : nx == 0 || nr == 0 ? 0 : dot[i] / (nx * nr);
            ratio[i] = nr / (nx < minNorm ? 1 : nx);
        }
    }

    /// <summary><see cref="Backends.IComputeBackend.CountAbove"/>: how many elements exceed the threshold.</summary>
    public static long CountAbove(ReadOnlySpan<double> x, double threshold)
    {
        long count = 0;
        foreach (double v in x) if (v > threshold) count++;
        return count;
    }

    /// <summary><see cref="Backends.IComputeBackend.UpdateSinceFired"/>: tokens since each feature fired (saturated at the window) and 0 / −∞ dead bias.</summary>
    public static void UpdateSinceFired(ReadOnlySpan<double> fired, Span<double> since, double tokens, double window, Span<double> deadBias)
    {
        for (int i = 0; i < fired.Length; i++)
        {
            since[i] = fired[i] > 0 ? 0 : Math.Min(since[i] + tokens, window);
            deadBias[i] = since[i] >= window ? 0 : double.NegativeInfinity;
        }
    }

    /// <summary><see cref="Backends.IComputeBackend.BatchTopK"/>: ReLU'd values at the keep largest (ties in index order); returns the smallest positive kept value (+∞ when none).</summary>
    public static double BatchTopK(ReadOnlySpan<double> x, int keep, Span<double> y)
    {
        var order = new int[x.Length];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        var values = x.ToArray();
        Array.Sort(order, (a, b) => values[a] != values[b] ? values[b].CompareTo(values[a]) : a.CompareTo(b));
        y[..x.Length].Clear();
        double min = double.PositiveInfinity;
        for (int r = 0; r < keep; r++)
        {
            double v = values[order[r]];
            y[order[r]] = v > 0 ? v : 0;
            if (v > 0 && v < min) min = v;
        }
        return min;
    }

    /// <summary><see cref="Backends.IComputeBackend.JumpRelu"/>: x where it exceeds exp(log θ) of its column, else 0.</summary>
    public static void JumpRelu(ReadOnlySpan<double> x, int rows, int cols, ReadOnlySpan<double> logThreshold, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                double v = x[r * cols + c];
                y[r * cols + c] = v > Math.Exp(logThreshold[c]) ? v : 0;
            }
    }

    /// <summary><see cref="Backends.IComputeBackend.JumpReluThresholdGrad"/>: the straight-through log-threshold gradient of the activation and the L0 term.</summary>
    public static void JumpReluThresholdGrad(ReadOnlySpan<double> x, ReadOnlySpan<double> dY, int rows, int cols, ReadOnlySpan<double> logThreshold,
        double bandwidth, double sparsityScale, Span<double> grad)
    {
        for (int c = 0; c < cols; c++)
        {
            double theta = Math.Exp(logThreshold[c]), sum = 0;
            for (int r = 0; r < rows; r++)
                if (Math.Abs((x[r * cols + c] - theta) / bandwidth) < 0.5) sum += dY[r * cols + c] * (-theta / bandwidth) - sparsityScale / bandwidth;
            grad[c] = theta * sum;
        }
    }
}
