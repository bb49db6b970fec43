using Loupe.Tensors.Blas;
using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;
using Xunit.Abstractions;

namespace Loupe.Tensors.Tests;

// Shapes (row-major, as stored):
//   a  [m, k] with row stride lda   ([k, m] when transA)
//   b  [k, n] with row stride ldb   ([n, k] when transB)
//   c  [m, n] with row stride ldc   columns n..ldc-1 are padding that must stay untouched

/// <summary>
/// <see cref="Gemm.Sgemm"/> and <see cref="Gemm.Linear"/> against <see cref="ReferenceKernels.Sgemm"/>
/// (double accumulation), through both the BLAS path and the managed path.
/// </summary>
[Collection(GemmPathCollection.Name)]
public class GemmTests(ITestOutputHelper output)
{
    const float Sentinel = 777.25f;

    [Fact]
    public void ReportsWhichPathIsAvailable()
    {
        output.WriteLine($"OpenBlas.IsAvailable = {OpenBlas.IsAvailable}");
        output.WriteLine($"OpenBlas.LibraryName = {OpenBlas.LibraryName ?? "(none)"}");
        output.WriteLine($"OpenBlas.UnavailableReason = {OpenBlas.UnavailableReason ?? "(none)"}");
        output.WriteLine($"OpenBlas.Config = {OpenBlas.Config ?? "(none)"}; threads = {OpenBlas.Threads}");
        output.WriteLine($"LOUPE_BLAS = {Environment.GetEnvironmentVariable("LOUPE_BLAS") ?? "(unset)"}");
        Assert.Equal(OpenBlas.IsAvailable, OpenBlas.LibraryName is not null);
        Assert.Equal(OpenBlas.IsAvailable, OpenBlas.UnavailableReason is null);
        using (GemmPath.Use(GemmPath.Managed)) Assert.False(Gemm.UsesBlas);
        using (GemmPath.Use(GemmPath.Blas)) Assert.Equal(OpenBlas.IsAvailable, Gemm.UsesBlas);
    }

    [Fact]
    public void OpenBlasRunsTheKernelsLoupeChoseForThisCpu()
    {
        output.WriteLine($"chosen = {OpenBlas.KernelsChosenForThisCpu ?? "(left to OpenBLAS)"}; running = {OpenBlas.CoreName ?? "(none)"}; " +
            $"OPENBLAS_CORETYPE = {Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE") ?? "(unset)"}");
        if (!OpenBlas.IsAvailable || OpenBlas.KernelsChosenForThisCpu is not { } chosen) return; // nothing was asked of OpenBLAS
        Assert.Equal(chosen, OpenBlas.CoreName); // OpenBLAS read the variable set before it loaded
        Assert.True(System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported);
    }

    // m, n, k: ones, odd sizes around SIMD widths, skinny shapes, and one product above the managed
    // path's parallel threshold (m·n·k ≥ 2^18).
    static readonly (int M, int N, int K)[] Sizes =
    [
        (1, 1, 1), (3, 17, 5), (17, 3, 65), (65, 129, 17), (129, 65, 3), (1, 129, 129), (129, 1, 65), (33, 20, 200),
        (65, 129, 129),
    ];

    public static TheoryData<string, bool, bool, int, int, int> Products()
    {
        var data = new TheoryData<string, bool, bool, int, int, int>();
        foreach (var path in GemmPath.Both)
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                    foreach (var (m, n, k) in Sizes)
                        data.Add(path, ta, tb, m, n, k);
        return data;
    }

    /// <summary>Strided operands (every leading dimension larger than the row), alpha and beta not 0 or 1.</summary>
    [Theory]
    [MemberData(nameof(Products))]
    public void SgemmMatchesReference(string path, bool transA, bool transB, int m, int n, int k)
    {
        var rng = new Random(Seed(m, n, k, transA, transB));
        var p = Problem.Create(rng, transA, transB, m, n, k, padA: 3, padB: 5, padC: 2);
        var expected = p.C.ToArray();
        ReferenceKernels.Sgemm(transA, transB, m, n, k, 0.75f, p.A, p.Lda, p.B, p.Ldb, -0.5f, expected, p.Ldc);

        using (GemmPath.Use(path))
            Gemm.Sgemm(transA, transB, m, n, k, 0.75f, p.A, p.Lda, p.B, p.Ldb, -0.5f, p.C, p.Ldc);

        Close.All(expected, p.C, p.Tolerance(0.75f, -0.5f), 1e-6, $"C ({path})", [m, p.Ldc]);
    }

    [Theory]
    [MemberData(nameof(TransposesOnBothPaths))]
    public void BetaZeroIgnoresNanInC(string path, bool transA, bool transB)
    {
        const int m = 17, n = 33, k = 9;
        var p = Problem.Create(new Random(11), transA, transB, m, n, k, padA: 1, padB: 2, padC: 3);
        Array.Fill(p.C, float.NaN); // garbage from a previous use, padding included
        var expected = new float[p.C.Length];
        ReferenceKernels.Sgemm(transA, transB, m, n, k, 1.25f, p.A, p.Lda, p.B, p.Ldb, 0f, expected, p.Ldc);
        for (int i = 0; i < m; i++)
            for (int j = n; j < p.Ldc && i * p.Ldc + j < expected.Length; j++) expected[i * p.Ldc + j] = float.NaN;

        using (GemmPath.Use(path))
            Gemm.Sgemm(transA, transB, m, n, k, 1.25f, p.A, p.Lda, p.B, p.Ldb, 0f, p.C, p.Ldc);

        Close.All(expected, p.C, p.Tolerance(1.25f, 0f), 1e-6, $"C ({path}, beta = 0 over NaN)", [m, p.Ldc]);
    }

    [Theory]
    [MemberData(nameof(TransposesOnBothPaths))]
    public void BetaOneAccumulates(string path, bool transA, bool transB)
    {
        const int m = 20, n = 31, k = 47;
        var p = Problem.Create(new Random(12), transA, transB, m, n, k, padA: 0, padB: 0, padC: 1);
        var expected = p.C.ToArray();
        for (int step = 0; step < 2; step++)
            ReferenceKernels.Sgemm(transA, transB, m, n, k, 1f, p.A, p.Lda, p.B, p.Ldb, 1f, expected, p.Ldc);

        using (GemmPath.Use(path))
            for (int step = 0; step < 2; step++)
                Gemm.Sgemm(transA, transB, m, n, k, 1f, p.A, p.Lda, p.B, p.Ldb, 1f, p.C, p.Ldc);

        Close.All(expected, p.C, 2 * p.Tolerance(1f, 1f), 1e-6, $"C ({path}, beta = 1, two calls)", [m, p.Ldc]);
    }

    public static TheoryData<string, bool, bool> TransposesOnBothPaths()
    {
        var data = new TheoryData<string, bool, bool>();
        foreach (var path in GemmPath.Both)
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                    data.Add(path, ta, tb);
        return data;
    }

    /// <summary>k = 0: op(A)·op(B) is the zero matrix, so C becomes beta·C (and beta = 0 clears NaN).</summary>
    [Theory]
    [InlineData(GemmPath.Blas, 0f)]
    [InlineData(GemmPath.Blas, 1f)]
    [InlineData(GemmPath.Blas, 2.5f)]
    [InlineData(GemmPath.Managed, 0f)]
    [InlineData(GemmPath.Managed, 1f)]
    [InlineData(GemmPath.Managed, 2.5f)]
    public void KZeroScalesC(string path, float beta)
    {
        const int m = 5, n = 7, ldc = 9;
        var c = TestRandom.Uniform(13, (m - 1) * ldc + n);
        c[3] = float.NaN;
        for (int i = 0; i < m - 1; i++) { c[i * ldc + 7] = Sentinel; c[i * ldc + 8] = Sentinel; }
        var expected = c.ToArray();
        ReferenceKernels.Sgemm(false, false, m, n, 0, 1f, [], 1, [], n, beta, expected, ldc);
        var a = new float[(m - 1) * 1]; // [m, 0] with lda = 1
        using (GemmPath.Use(path))
            Gemm.Sgemm(false, false, m, n, 0, 1f, a, 1, [], n, beta, c, ldc);

        if (beta == 0f) Assert.DoesNotContain(c.Where((_, i) => i % ldc < n), float.IsNaN);
        Close.All(expected, c, 0, 1e-7, $"C ({path}, k = 0, beta = {beta})", [m, ldc]);
    }

    [Fact]
    public void EmptyOutputIsANoOp()
    {
        var c = TestRandom.Filled(4, Sentinel);
        Gemm.Sgemm(false, false, 0, 4, 3, 1f, [], 3, TestRandom.Uniform(14, 12), 4, 0f, c, 4);
        Gemm.Sgemm(false, false, 1, 0, 3, 1f, TestRandom.Uniform(15, 3), 3, [], 1, 0f, c, 4);
        Close.Exact(TestRandom.Filled(4, Sentinel), c, "C after m = 0 and n = 0");
    }

    [Theory]
    [InlineData(GemmPath.Blas, false, false)]
    [InlineData(GemmPath.Blas, true, false)]
    [InlineData(GemmPath.Blas, false, true)]
    [InlineData(GemmPath.Blas, true, true)]
    [InlineData(GemmPath.Managed, false, false)]
    [InlineData(GemmPath.Managed, true, false)]
    [InlineData(GemmPath.Managed, false, true)]
    [InlineData(GemmPath.Managed, true, true)]
    public void LinearMatchesReference(string path, bool weightIsOutIn, bool withBias)
    {
        const int rows = 6, k = 37, n = 19;
        var rng = new Random(16);
        var x = TestRandom.Uniform(rng, rows * k);                 // [rows, k]
        var w = TestRandom.Uniform(rng, k * n);                    // [k, n], or [n, k] when weightIsOutIn
        var bias = withBias ? TestRandom.Uniform(rng, n) : [];     // [n]
        var expected = new float[rows * n];                        // [rows, n]
        ReferenceKernels.Sgemm(false, weightIsOutIn, rows, n, k, 1f, x, k, w, weightIsOutIn ? k : n, 0f, expected, n);
        if (withBias)
            for (int i = 0; i < expected.Length; i++) expected[i] += bias[i % n];
        var y = TestRandom.Filled(rows * n, float.NaN);

        using (GemmPath.Use(path))
            Gemm.Linear(x, rows, k, w, weightIsOutIn, n, bias, y);

        Close.All(expected, y, 1e-5 * k, 1e-6, $"y ({path}, weightIsOutIn = {weightIsOutIn}, bias = {withBias})", [rows, n]);
    }

    [Fact]
    public void LinearWithKZeroGivesTheBias()
    {
        var y = TestRandom.Filled(6, float.NaN);
        Gemm.Linear([], 2, 0, [], false, 3, [1f, 2f, 3f], y);
        Close.Exact([1f, 2f, 3f, 1f, 2f, 3f], y, "y");
    }

    [Fact]
    public void LinearRejectsBiasOfWrongLength()
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            Gemm.Linear(new float[6], 2, 3, new float[12], false, 4, new float[3], new float[8]));
        Assert.Equal("bias", ex.ParamName);
        Assert.Contains("bias has 3 elements; expected 4", ex.Message);
    }

    [Theory]
    [InlineData("a", false, false)]
    [InlineData("b", false, false)]
    [InlineData("c", false, false)]
    [InlineData("a", true, true)]
    [InlineData("b", true, true)]
    [InlineData("c", true, true)]
    public void RejectsTooShortOperand(string operand, bool transA, bool transB)
    {
        var p = Problem.Create(new Random(17), transA, transB, 4, 5, 6, padA: 1, padB: 1, padC: 1);
        float[] a = operand == "a" ? p.A[..^1] : p.A, b = operand == "b" ? p.B[..^1] : p.B, c = operand == "c" ? p.C[..^1] : p.C;

        var ex = Assert.Throws<ArgumentException>(() =>
            Gemm.Sgemm(transA, transB, 4, 5, 6, 1f, a, p.Lda, b, p.Ldb, 0f, c, p.Ldc));

        Assert.Equal(operand, ex.ParamName);
        Assert.StartsWith($"{operand} has ", ex.Message);
    }

    [Theory]
    [InlineData("a", false, false)]
    [InlineData("b", false, false)]
    [InlineData("c", false, false)]
    [InlineData("a", true, true)]
    [InlineData("b", true, true)]
    [InlineData("c", true, true)]
    public void RejectsLeadingDimensionSmallerThanTheRow(string operand, bool transA, bool transB)
    {
        var p = Problem.Create(new Random(18), transA, transB, 4, 5, 6, padA: 0, padB: 0, padC: 0);
        int lda = p.Lda - (operand == "a" ? 1 : 0), ldb = p.Ldb - (operand == "b" ? 1 : 0), ldc = p.Ldc - (operand == "c" ? 1 : 0);

        var ex = Assert.Throws<ArgumentException>(() =>
            Gemm.Sgemm(transA, transB, 4, 5, 6, 1f, p.A, lda, p.B, ldb, 0f, p.C, ldc));

        Assert.Equal(operand, ex.ParamName);
        Assert.StartsWith($"leading dimension of {operand} is ", ex.Message);
    }

    [Fact]
    public void RejectsNegativeSizes()
    {
        var ex = Assert.Throws<ArgumentException>(() => Gemm.Sgemm(false, false, 2, -1, 3, 1f, new float[6], 3, new float[3], 1, 0f, new float[2], 1));
        Assert.Contains("n=-1", ex.Message);
    }

    static int Seed(int m, int n, int k, bool ta, bool tb) => ((m * 1009 + n) * 1013 + k) * 4 + (ta ? 2 : 0) + (tb ? 1 : 0);

    /// <summary>A product's operands, each exactly as long as its strides require, with padding set to a sentinel.</summary>
    sealed record Problem(float[] A, int Lda, float[] B, int Ldb, float[] C, int Ldc, int K)
    {
        public static Problem Create(Random rng, bool transA, bool transB, int m, int n, int k, int padA, int padB, int padC)
        {
            var (aRows, aCols) = transA ? (k, m) : (m, k);
            var (bRows, bCols) = transB ? (n, k) : (k, n);
            int lda = aCols + padA, ldb = bCols + padB, ldc = n + padC;
            var a = Strided(rng, aRows, aCols, lda, float.NaN);   // NaN padding: reading it would poison C
            var b = Strided(rng, bRows, bCols, ldb, float.NaN);
            var c = Strided(rng, m, n, ldc, Sentinel);            // sentinel padding: it must survive
            return new Problem(a, lda, b, ldb, c, ldc, k);
        }

        static float[] Strided(Random rng, int rows, int cols, int ld, float pad)
        {
            var s = new float[(rows - 1) * ld + cols];
            for (int i = 0; i < s.Length; i++) s[i] = i % ld < cols ? 2 * rng.NextSingle() - 1 : pad;
            return s;
        }

        /// <summary>Float32 rounding bound 1e-5 · k · max|a| · max|b| · |alpha| + beta's share; entries lie in [-1, 1), so max|a| = max|b| = 1.</summary>
        public double Tolerance(float alpha, float beta) =>
            1e-5 * Math.Max(K, 1) * Math.Abs(alpha) + 1e-6 * Math.Abs(beta) + 1e-7;
    }
}
