namespace Loupe.Tensors.Kernels.Reference;

// Double twins of the backend's memory, product, element-wise, embedding and training ops.
// Offsets and strides count elements, as in IComputeBackend; every buffer is row-major.
public static partial class ReferenceKernels
{
    /// <summary><c>dst[r, :cols] (+)= src[r, :cols]</c>, each side at its own offset and row stride.</summary>
    public static void CopyRows(ReadOnlySpan<double> src, long srcOffset, int srcStride, Span<double> dst, long dstOffset, int dstStride,
        int rows, int cols, bool accumulate = false)
    {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++)
            {
                double v = src[(int)(srcOffset + (long)r * srcStride + j)];
                int o = (int)(dstOffset + (long)r * dstStride + j);
                dst[o] = accumulate ? dst[o] + v : v;
            }
    }

    /// <summary>
    /// <c>C = alpha·op(A)·op(B) + beta·C</c>, <c>op(A)</c> <c>[m, k]</c>, <c>op(B)</c> <c>[k, n]</c>, each matrix at an
    /// offset with its row stride (lda, ldb, ldc); with beta = 0, C's old contents (even NaN) are not read.
    /// </summary>
    public static void Gemm(bool transA, bool transB, int m, int n, int k, double alpha, ReadOnlySpan<double> a, long aOffset, int lda,
        ReadOnlySpan<double> b, long bOffset, int ldb, double beta, Span<double> c, long cOffset, int ldc) =>
        GemmBatched(transA, transB, m, n, k, alpha, a, aOffset, lda, 0, b, bOffset, ldb, 0, beta, c, cOffset, ldc, 0, 1);

    /// <summary><paramref name="batch"/> GEMMs, the i-th at <c>offset + i·stride</c> for each of A, B and C (a stride may be 0).</summary>
    public static void GemmBatched(bool transA, bool transB, int m, int n, int k, double alpha,
        ReadOnlySpan<double> a, long aOffset, int lda, long strideA, ReadOnlySpan<double> b, long bOffset, int ldb, long strideB,
        double beta, Span<double> c, long cOffset, int ldc, long strideC, int batch)
    {
        for (int t = 0; t < batch; t++)
        {
            long ao = aOffset + t * strideA, bo = bOffset + t * strideB, co = cOffset + t * strideC;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double sum = 0;
                    for (int p = 0; p < k; p++)
                    {
                        double av = transA ? a[(int)(ao + (long)p * lda + i)] : a[(int)(ao + (long)i * lda + p)];
                        double bv = transB ? b[(int)(bo + (long)j * ldb + p)] : b[(int)(bo + (long)p * ldb + j)];
                        sum += av * bv;
                    }
                    int o = (int)(co + (long)i * ldc + j);
                    c[o] = alpha * sum + (beta == 0 ? 0 : beta * c[o]);
                }
        }
    }

    /// <summary><c>y[rows, n] = x[rows, k]·W + bias</c>; W <c>[k, n]</c>, or <c>[n, k]</c> when <paramref name="weightIsOutIn"/>.</summary>
    public static void Linear(ReadOnlySpan<double> x, int rows, int k, ReadOnlySpan<double> weight, bool weightIsOutIn, int n,
        ReadOnlySpan<double> bias, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < n; j++)
            {
                double sum = bias.IsEmpty ? 0 : bias[j];
                for (int p = 0; p < k; p++) sum += x[r * k + p] * (weightIsOutIn ? weight[j * k + p] : weight[p * n + j]);
                y[r * n + j] = sum;
            }
    }

    /// <summary><c>y = (a − b) ⊙ g</c>, 0 where <c>a − b</c> is not finite.</summary>
    public static void DifferenceProduct(ReadOnlySpan<double> a, ReadOnlySpan<double> b, ReadOnlySpan<double> g, Span<double> y)
    {
        for (int i = 0; i < y.Length; i++)
        {
            double diff = a[i] - b[i];
            y[i] = double.IsFinite(diff) ? diff * g[i] : 0;
        }
    }

    /// <summary><c>y[r, :] += v</c> for <paramref name="rows"/> rows of width <c>v.Length</c>.</summary>
    public static void AddRowVector(Span<double> y, int rows, ReadOnlySpan<double> v)
    {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < v.Length; j++) y[r * v.Length + j] += v[j];
    }

    /// <summary><c>y[o, i] (+)= Σ_m x[o, m, i]</c> over x <c>[outer, middle, inner]</c>.</summary>
    public static void SumMiddleAxis(ReadOnlySpan<double> x, int outer, int middle, int inner, Span<double> y, bool accumulate = false)
    {
        for (int o = 0; o < outer; o++)
            for (int i = 0; i < inner; i++)
            {
                double sum = accumulate ? y[o * inner + i] : 0;
                for (int m = 0; m < middle; m++) sum += x[(o * middle + m) * inner + i];
                y[o * inner + i] = sum;
            }
    }

    /// <summary>Sum of every element.</summary>
    public static double Sum(ReadOnlySpan<double> x)
    {
        double sum = 0;
        foreach (var v in x) sum += v;
        return sum;
    }

    /// <summary><c>y[i, :] = table[ids[i], :] · scale</c> for a table <c>[vocab, d]</c>.</summary>
    public static void Embedding(ReadOnlySpan<double> table, int d, ReadOnlySpan<int> ids, double scale, Span<double> y)
    {
        for (int i = 0; i < ids.Length; i++)
            for (int e = 0; e < d; e++) y[i * d + e] = table[ids[i] * d + e] * scale;
    }

    /// <summary><c>y[r, j] = x[r, columns[j]]</c> for x <c>[rows, n]</c>.</summary>
    public static void GatherColumns(ReadOnlySpan<double> x, int rows, int n, ReadOnlySpan<int> columns, Span<double> y)
    {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < columns.Length; j++) y[r * columns.Length + j] = x[r * n + columns[j]];
    }

    /// <summary>
    /// Backward of <see cref="Embedding"/>: y[i, e] = table[ids[i], e]·scale, so
    /// <c>dTable[ids[i], :] += dy[i, :]·scale</c>; a repeated id collects every row that read it.
    /// </summary>
    public static void EmbeddingBackward(ReadOnlySpan<double> dy, int d, ReadOnlySpan<int> ids, double scale, Span<double> dTable)
    {
        for (int i = 0; i < ids.Length; i++)
            for (int e = 0; e < d; e++) dTable[ids[i] * d + e] += dy[i * d + e] * scale;
    }

    /// <summary>
    /// One Adam step (PyTorch's, bias-corrected, no weight decay) at 1-based <paramref name="step"/>:
    /// <c>m = β₁m + (1−β₁)g</c>, <c>v = β₂v + (1−β₂)g²</c>, <c>p −= lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + eps)</c>.
    /// </summary>
    public static void AdamStep(Span<double> param, ReadOnlySpan<double> grad, Span<double> m, Span<double> v,
        double lr, double beta1, double beta2, double eps, int step)
    {
        double c1 = 1 - Math.Pow(beta1, step), c2 = 1 - Math.Pow(beta2, step);
        for (int i = 0; i < param.Length; i++)
        {
            m[i] = beta1 * m[i] + (1 - beta1) * grad[i];
            v[i] = beta2 * v[i] + (1 - beta2) * grad[i] * grad[i];
            param[i] -= lr * (m[i] / c1) / (Math.Sqrt(v[i] / c2) + eps);
        }
    }
}
