using System.Numerics.Tensors;
using Loupe.Tensors.Blas;

namespace Loupe.Tensors.Kernels;

/// <summary>
/// Single-precision matrix products, row-major: <c>C = alpha·op(A)·op(B) + beta·C</c> where
/// <c>op(A)</c> is <c>[m, k]</c> and <c>op(B)</c> is <c>[k, n]</c>. OpenBLAS when present,
/// otherwise a managed SIMD implementation (also selectable for tests).
/// </summary>
public static unsafe class Gemm
{
    /// <summary>When true every product takes the managed path, even with BLAS present.</summary>
    public static bool ForceManaged { get; set; }

    /// <summary>Whether products currently go through BLAS.</summary>
    public static bool UsesBlas => OpenBlas.IsAvailable && !ForceManaged;

    /// <summary>
    /// <c>C = alpha·op(A)·op(B) + beta·C</c>. <paramref name="lda"/>, <paramref name="ldb"/> and
    /// <paramref name="ldc"/> are row strides of the stored (untransposed) matrices.
    /// With <paramref name="beta"/> = 0, C's previous contents (even NaN) are ignored.
    /// </summary>
    /// <exception cref="ArgumentException">A span is too short for the given sizes and strides.</exception>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        if (m < 0 || n < 0 || k < 0) throw new ArgumentException($"negative GEMM size m={m} n={n} k={k}");
        if (m == 0 || n == 0) return;
        CheckOperand(c, m, n, ldc, "c");
        if (k > 0)
        {
            CheckOperand(a, transA ? k : m, transA ? m : k, lda, "a");
            CheckOperand(b, transB ? n : k, transB ? k : n, ldb, "b");
        }
        if (k == 0)
        {
            for (int i = 0; i < m; i++) Scale(c.Slice(i * ldc, n), beta);
            return;
        }
        if (UsesBlas)
        {
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                OpenBlas.Sgemm(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
            return;
        }
        ManagedGemm.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    /// <summary><c>y[rows, n] = x[rows, k] · W + bias</c> with W stored <c>[k, n]</c> (or <c>[n, k]</c> when <paramref name="weightIsOutIn"/>).</summary>
    public static void Linear(ReadOnlySpan<float> x, int rows, int k, ReadOnlySpan<float> weight, bool weightIsOutIn, int n,
        ReadOnlySpan<float> bias, Span<float> y)
    {
        Sgemm(false, weightIsOutIn, rows, n, k, 1f, x, k, weight, weightIsOutIn ? k : n, 0f, y, n);
        if (!bias.IsEmpty)
        {
            if (bias.Length != n) throw new ArgumentException($"bias has {bias.Length} elements; expected {n}", nameof(bias));
            for (int r = 0; r < rows; r++)
            {
                var row = y.Slice(r * n, n);
                TensorPrimitives.Add(row, bias, row);
            }
        }
    }

    static void CheckOperand(ReadOnlySpan<float> s, int rows, int cols, int ld, string name)
    {
        if (ld < Math.Max(1, cols)) throw new ArgumentException($"leading dimension of {name} is {ld}; it must be at least {cols}", name);
        long needed = (long)(rows - 1) * ld + cols;
        if (s.Length < needed) throw new ArgumentException($"{name} has {s.Length} elements; a [{rows}, {cols}] matrix with stride {ld} needs {needed}", name);
    }

    static void Scale(Span<float> row, float beta)
    {
        if (beta == 0f) row.Clear();
        else TensorPrimitives.Multiply(row, beta, row);
    }
}

/// <summary>Managed GEMM: correct everywhere, vectorized through TensorPrimitives, parallel over rows.</summary>
static unsafe class ManagedGemm
{
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        // Bring op(A) into plain row-major [m, k] so every row is contiguous.
        float[]? aT = null;
        if (transA)
        {
            aT = new float[m * k];
            for (int p = 0; p < k; p++)
                for (int i = 0; i < m; i++) aT[i * k + p] = a[p * lda + i];
            lda = k;
        }
        fixed (float* pa0 = transA ? aT : a) fixed (float* pb0 = b) fixed (float* pc0 = c)
        {
            float* pa = pa0, pb = pb0, pc = pc0;
            int ldaL = lda;
            long work = (long)m * n * k;
            var options = new ParallelOptions { MaxDegreeOfParallelism = work < 1 << 18 ? 1 : Environment.ProcessorCount };
            Parallel.For(0, m, options, i =>
            {
                var crow = new Span<float>(pc + (long)i * ldc, n);
                var arow = new ReadOnlySpan<float>(pa + (long)i * ldaL, k);
                if (transB)
                {
                    // B stored [n, k]: every output is a dot product of two contiguous rows.
                    for (int j = 0; j < n; j++)
                    {
                        float dot = TensorPrimitives.Dot(arow, new ReadOnlySpan<float>(pb + (long)j * ldb, k));
                        crow[j] = alpha * dot + (beta == 0f ? 0f : beta * crow[j]);
                    }
                }
                else
                {
                    // B stored [k, n]: accumulate scaled rows of B (axpy), which streams memory in order.
                    if (beta == 0f) crow.Clear();
                    else if (beta != 1f) TensorPrimitives.Multiply(crow, beta, crow);
                    for (int p = 0; p < k; p++)
                    {
                        float s = alpha * arow[p];
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(pb + (long)p * ldb, n), s, crow, crow);
                    }
                }
            });
        }
    }
}
