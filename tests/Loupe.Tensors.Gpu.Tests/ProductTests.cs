using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Gpu.Tests;

/// <summary>GEMM (plain, batched, 16-bit weights), linear layers, rotary and attention against the twins and the CPU backend.</summary>
[Collection(EmulatedCollection.Name)]
public sealed class ProductTests(EmulatedBackendFixture fixture) : DeviceTest(fixture)
{
    /// <summary>Runs <paramref name="test"/> with the emulated device's products in its own kernel and on the host's sgemm (its default).</summary>
    void BothProductPaths(Action test)
    {
        foreach (bool host in new[] { false, true })
        {
            Gpu.EmulatedProductsOnHostBlas = host;
            try { test(); }
            finally { Gpu.EmulatedProductsOnHostBlas = true; }
        }
    }

    [Theory]
    [InlineData(false, false, 1, 1, 1)]
    [InlineData(false, true, 7, 33, 5)]
    [InlineData(true, false, 33, 7, 13)]
    [InlineData(true, true, 5, 13, 130)]
    public void GemmMatchesTheReferenceTwin(bool transA, bool transB, int m, int n, int k) => BothProductPaths(() =>
    {
        var rng = new Random(m * 100 + n + k);
        int lda = (transA ? m : k) + 2, ldb = (transB ? k : n) + 1, ldc = n + 3;
        var a = Uniform(rng, 3 + (transA ? k : m) * lda);
        var b = Uniform(rng, 4 + (transB ? n : k) * ldb);
        var c = Uniform(rng, 1 + m * ldc);
        c[1] = float.NaN; // beta = 0 ignores C, even NaN
        var expected = (float[])c.Clone();
        ReferenceKernels.Sgemm(transA, transB, m, n, k, 0.5f, a.AsSpan(3), lda, b.AsSpan(4), ldb, 0f, expected.AsSpan(1), ldc);
        var dc = Dev(c);
        Gpu.Gemm(transA, transB, m, n, k, 0.5f, Dev(a), 3, lda, Dev(b), 4, ldb, 0f, dc, 1, ldc);
        Close.All(expected, Read(dc), 1e-5, 1e-5, "C = 0.5·op(A)·op(B)");
        var accumulate = (float[])expected.Clone();
        ReferenceKernels.Sgemm(transA, transB, m, n, k, 1f, a.AsSpan(3), lda, b.AsSpan(4), ldb, 2f, accumulate.AsSpan(1), ldc);
        Gpu.Gemm(transA, transB, m, n, k, 1f, Dev(a), 3, lda, Dev(b), 4, ldb, 2f, dc, 1, ldc);
        Close.All(accumulate, Read(dc), 1e-5, 1e-5, $"C = op(A)·op(B) + 2C (host sgemm: {Gpu.EmulatedProductsOnHostBlas})");
    });

    [Fact]
    public void BatchedGemmHonoursStridesIncludingZero() => BothProductPaths(() =>
    {
        var rng = new Random(21);
        const int m = 5, n = 7, k = 33, batch = 3;
        var a = Uniform(rng, batch * m * k);
        var b = Uniform(rng, k * n); // shared by every product: stride 0
        var expected = new float[batch * m * n];
        for (int i = 0; i < batch; i++)
            ReferenceKernels.Sgemm(false, false, m, n, k, 1f, a.AsSpan(i * m * k), k, b, n, 0f, expected.AsSpan(i * m * n), n);
        var c = Gpu.Empty(batch * m * n);
        Gpu.GemmBatched(false, false, m, n, k, 1f, Dev(a), 0, k, m * k, Dev(b), 0, n, 0, 0f, c, 0, n, m * n, batch);
        Close.All(expected, Read(c), 1e-5, 1e-5, $"batched (host sgemm: {Gpu.EmulatedProductsOnHostBlas})");
    });

    [Theory]
    [InlineData(ElementType.BF16, false)]
    [InlineData(ElementType.BF16, true)]
    [InlineData(ElementType.F16, true)]
    public void SixteenBitWeightsGiveTheFp32ProductToOnePercent(ElementType type, bool outIn)
    {
        var rng = new Random((int)type * 2 + (outIn ? 1 : 0));
        const int rows = 7, k = 130, n = 33;
        var x = Uniform(rng, rows * k);
        var w = Uniform(rng, k * n);
        var bias = Uniform(rng, n);
        var expected = new float[rows * n];
        Cpu.Linear(Host(x), rows, k, Host(w), outIn, n, Host(bias), new Tensor(expected, rows * n));
        var weight = Gpu.LoadWeight(w, outIn ? [n, k] : [k, n], type);
        Assert.Equal(type, weight.Storage.ElementType);
        var y = Gpu.Empty(rows, n);
        Gpu.Linear(Dev(x), rows, k, weight, outIn, n, Gpu.LoadWeight(bias, [n]), y);
        float scale = expected.Max(Math.Abs);
        Close.All(expected, Read(y), 1e-2 * scale, 0, $"{type} weight");
        // And the fp32 weight is exact to fp32 rounding.
        Gpu.Linear(Dev(x), rows, k, Gpu.LoadWeight(w, outIn ? [n, k] : [k, n]), outIn, n, Dev(bias), y);
        Close.All(expected, Read(y), 1e-5, 1e-5, "fp32 weight");
    }

    [Theory]
    [InlineData(ElementType.BF16, false)]
    [InlineData(ElementType.BF16, true)]
    [InlineData(ElementType.F16, true)]
    public void SplitActivationsLeaveTheWeightsRoundingTheOnlyOne(ElementType type, bool outIn)
    {
        var rng = new Random(40 + (int)type * 2 + (outIn ? 1 : 0));
        const int rows = 6, k = 300, n = 17;
        var x = Uniform(rng, rows * k, -3f, 3f);
        // weights that 16 bits hold exactly, as a bf16/fp16 checkpoint's are: the fp32 CPU product is then the exact answer
        var w = CpuBackend.WithRoundedWeights(type).LoadWeight(Uniform(rng, k * n), outIn ? [n, k] : [k, n], type).Span.ToArray();
        var expected = new float[rows * n];
        Cpu.Linear(Host(x), rows, k, Host(w), outIn, n, null, new Tensor(expected, rows * n));
        float scale = expected.Max(Math.Abs);
        var weight = Gpu.LoadWeight(w, outIn ? [n, k] : [k, n], type);
        var y = Gpu.Empty(rows, n);
        try
        {
            Gpu.HalfActivations = HalfActivations.Split;
            Gpu.Linear(Dev(x), rows, k, weight, outIn, n, null, y);
            Close.All(expected, Read(y), 2e-5 * scale, 0, $"{type} weights, split activations");
            Gpu.HalfActivations = HalfActivations.Rounded;
            Gpu.Linear(Dev(x), rows, k, weight, outIn, n, null, y);
            var rounded = Read(y);
            Close.All(expected, rounded, 1e-2 * scale, 0, $"{type} weights, rounded activations");
            double worst = expected.Zip(rounded, (e, r) => Math.Abs(e - r)).Max();
            Assert.True(worst > 1e-4 * scale, $"rounding the activations should show ({worst:g3} of {scale:g3}): is the split path taken in both modes?");
        }
        finally { Gpu.HalfActivations = HalfActivations.Split; }
    }

    [Fact]
    public void AnActivationBeyondFp16sRangeIsScaledIntoIt()
    {
        // 1e5 has no fp16 value; its row enters the product times 2^-3 and the result is divided by it after
        float[] x = [1e5f, 1f];
        var weight = Gpu.LoadWeight(new float[] { 1f, 1f }, [2, 1], ElementType.F16);
        var y = Gpu.Empty(1, 1);
        foreach (var mode in new[] { HalfActivations.Split, HalfActivations.Rounded })
        {
            try
            {
                Gpu.HalfActivations = mode;
                Gpu.Linear(Dev(x, 1, 2), 1, 2, weight, false, 1, null, y);
                Assert.Equal(100001f, Read(y)[0], 1e-3f * 100001f);
            }
            finally { Gpu.HalfActivations = HalfActivations.Split; }
        }
        // A value that is not finite reaches C as it would unscaled (its row keeps scale 1).
        Gpu.Linear(Dev([float.PositiveInfinity, 1f], 1, 2), 1, 2, weight, false, 1, null, y);
        Assert.Equal(float.PositiveInfinity, Read(y)[0]);
    }

    /// <summary>
    /// Rows far outside fp16's range both ways — an MLP's large hidden units (1e6), a backward pass's small gradients (1e-9,
    /// below fp16's smallest subnormal) — give the product of the fp16-exact weights as fp32 does, to the split's precision,
    /// transposed or not, and accumulating into C (beta ≠ 0).
    /// </summary>
    [Theory]
    [InlineData(false, 0f)]
    [InlineData(true, 0f)]
    [InlineData(false, 0.5f)]
    [InlineData(true, 2f)]
    public void Fp16ProductsKeepRowsOfAnyMagnitude(bool transA, float beta)
    {
        var rng = new Random(transA ? 7 : 8);
        const int m = 5, k = 70, n = 9;
        float[] magnitude = [1e6f, 1e-9f, 1f, 3e-5f, 4e4f];
        var rows = new float[m * k];
        for (int i = 0; i < m; i++)
            for (int p = 0; p < k; p++) rows[i * k + p] = magnitude[i] * (float)(rng.NextDouble() * 2 - 1);
        int lda = transA ? m + 3 : k + 2;
        var a = new float[transA ? k * lda : m * lda];
        for (int i = 0; i < m; i++)
            for (int p = 0; p < k; p++) a[transA ? p * lda + i : i * lda + p] = rows[i * k + p];
        var w = CpuBackend.WithRoundedWeights(ElementType.F16).LoadWeight(Uniform(rng, k * n), [k, n], ElementType.F16).Span.ToArray();
        const int ldc = n + 1;
        var c0 = new float[m * ldc];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c0[i * ldc + j] = magnitude[i] * (float)(rng.NextDouble() * 2 - 1);
        var expected = (float[])c0.Clone();
        ReferenceKernels.Sgemm(transA, false, m, n, k, 1f, a, lda, w, n, beta, expected, ldc);
        var weight = Gpu.LoadWeight(w, [k, n], ElementType.F16);
        var c = Dev(c0);
        Gpu.Gemm(transA, false, m, n, k, 1f, Dev(a), 0, lda, weight, 0, n, beta, c, 0, ldc);
        var actual = Read(c);
        for (int i = 0; i < m; i++)
        {
            double rowScale = Enumerable.Range(0, n).Max(j => Math.Abs(expected[i * ldc + j]));
            for (int j = 0; j < n; j++)
                Assert.True(Math.Abs(expected[i * ldc + j] - actual[i * ldc + j]) <= 2e-5 * rowScale,
                    $"row {i} (magnitude {magnitude[i]:g}), column {j}: expected {expected[i * ldc + j]:g6}, got {actual[i * ldc + j]:g6}");
        }
    }

    [Fact]
    public void RotaryMatchesTheCpuBackendAndItsInverseUndoesIt()
    {
        var table = new RotaryTable(8, 10000, 4096);
        const int rows = 5, heads = 3, headDim = 10;
        var rng = new Random(4);
        var x = Uniform(rng, rows * heads * headDim);
        int[] positions = [0, 1, 7, 130, 2500]; // 2500: beyond the first 2048 rows, so the table grows
        Same("Rotary", [], [x], (k, _, o) => k.Rotary(table, o[0], rows, heads, headDim, positions), 1e-6, 1e-6);
        var t = Dev(x);
        var before = Gpu.Transfers.Snapshot();
        var fresh = new RotaryTable(8, 10000, 4096);
        Gpu.Rotary(fresh, t, rows, heads, headDim, [0, 1, 2, 3, 4]);
        Gpu.Rotary(fresh, t, rows, heads, headDim, [0, 1, 2, 3, 4], inverse: true);
        Assert.Equal(2, (Gpu.Transfers.Snapshot() - before).In(Backends.TransferKind.Weights)); // cos and sin, once
        Close.All(x, Read(t), 1e-6, 1e-5, "inverse ∘ rotary");
        var reference = (float[])x.Clone();
        ReferenceKernels.Rotary(reference, rows, heads, headDim, 8, 10000, [0, 1, 2, 3, 4]);
        Gpu.Rotary(fresh, t, rows, heads, headDim, [0, 1, 2, 3, 4]);
        Close.All(reference, Read(t), 1e-5, 1e-4, "rotary vs its reference twin");
    }

    public static TheoryData<int, int, int, int, int, int, float> AttentionCases => new()
    {
        // batch, queryLen, keyLen, heads, kvHeads, window, softcap
        { 1, 1, 1, 1, 1, 0, 0f },
        { 2, 7, 7, 4, 2, 0, 0f },   // grouped-query attention
        { 2, 5, 5, 4, 4, 3, 0f },   // sliding window
        { 1, 6, 6, 2, 1, 0, 20f },  // soft-capped scores
    };

    [Theory]
    [MemberData(nameof(AttentionCases))]
    public void AttentionMatchesTheReferenceAndTheBackwardTheCpuBackend(int batch, int tq, int tk, int heads, int kvHeads, int window, float cap)
    {
        var rng = new Random(batch * 1000 + tq * 100 + heads * 10 + window);
        const int dHead = 7;
        var q = Uniform(rng, batch * tq * heads * dHead);
        var k = Uniform(rng, batch * tk * kvHeads * dHead);
        var v = Uniform(rng, batch * tk * kvHeads * dHead);
        var keyValid = Enumerable.Range(0, batch * tk).Select(i => i % tk != 1 || batch == 1).ToArray(); // key 1 is padding
        var mask = new AttentionMask(0, window, cap, batch > 1 ? keyValid : null);
        var shape = new AttentionShape(batch, tq, tk, heads, kvHeads, dHead);
        float scale = 1 / MathF.Sqrt(dHead);
        var pattern = new float[batch * heads * tq * tk];
        var z = new float[batch * tq * heads * dHead];
        ReferenceKernels.Attention(q, k, v, batch, tq, tk, heads, kvHeads, dHead, scale, mask, pattern, z);

        var scores = Gpu.Empty(batch, heads, tq, tk);
        Gpu.AttentionScores(Dev(q), Dev(k), shape, scale, mask, scores);
        var p = Gpu.Empty(batch, heads, tq, tk);
        Gpu.SoftmaxRows(scores, batch * heads * tq, tk, p);
        Close.All(pattern, Read(p), 1e-6, 1e-5, "pattern");
        var dz = Gpu.Empty(batch, tq, heads, dHead);
        Gpu.AttentionApply(p, Dev(v), shape, dz);
        Close.All(z, Read(dz), 1e-6, 1e-5, "z");

        Same("AttentionScores", [q, k], [new float[pattern.Length]], (b, i, o) => b.AttentionScores(i[0], i[1], shape, scale, mask, o[0]), 1e-6, 1e-5);
        var gradZ = Uniform(rng, z.Length);
        Same("AttentionApplyBackward", [gradZ, pattern, v], [new float[pattern.Length], new float[v.Length]],
            (b, i, o) => b.AttentionApplyBackward(i[0], i[1], i[2], shape, o[0], o[1]), 1e-6, 1e-5);
        var dRaw = Uniform(rng, pattern.Length);
        Same("AttentionScoresBackward", [dRaw, q, k], [new float[q.Length], new float[k.Length]],
            (b, i, o) => b.AttentionScoresBackward(i[0], i[1], i[2], shape, scale, o[0], o[1]), 1e-6, 1e-5);
    }

    [Fact]
    public void AttentionReadsAKvCacheLargerThanTheKeys()
    {
        var rng = new Random(77);
        const int batch = 2, tq = 2, tk = 5, capacity = 9, heads = 4, kvHeads = 2, dHead = 7;
        var q = Uniform(rng, batch * tq * heads * dHead);
        var cacheK = Uniform(rng, batch * capacity * kvHeads * dHead);
        var cacheV = Uniform(rng, batch * capacity * kvHeads * dHead);
        var shape = new AttentionShape(batch, tq, tk, heads, kvHeads, dHead, capacity);
        var mask = new AttentionMask(QueryOffset: tk - tq);
        Same("scores from a KV cache", [q, cacheK], [new float[batch * heads * tq * tk]],
            (b, i, o) => b.AttentionScores(i[0], i[1], shape, 0.3f, mask, o[0]), 1e-6, 1e-5);
        var pattern = Uniform(rng, batch * heads * tq * tk, 0, 1);
        Same("apply from a KV cache", [pattern, cacheV], [new float[batch * tq * heads * dHead]],
            (b, i, o) => b.AttentionApply(i[0], i[1], shape, o[0]), 1e-6, 1e-5);
    }
}
