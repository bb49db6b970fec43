using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Gpu.Tests;

/// <summary>The one-group-per-row kernels (norms, softmax, losses, arg-max, top-k) and the whole-tensor reductions.</summary>
[Collection(EmulatedCollection.Name)]
public sealed class RowTests(EmulatedBackendFixture fixture) : DeviceTest(fixture)
{
    // 600 × 130 is large enough for the CPU backend to split row-wise work across cores.
    public static TheoryData<int, int> Shapes => new() { { 1, 1 }, { 7, 33 }, { 3, 130 }, { 2, 7 }, { 600, 130 } };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void NormsMatchTheReferenceTwins(int rows, int d)
    {
        var rng = new Random(rows + d);
        var x = Uniform(rng, rows * d, -3, 3);
        var w = Uniform(rng, d, 0.5f, 1.5f);
        var b = Uniform(rng, d);
        var expected = new float[rows * d];
        ReferenceKernels.LayerNorm(x, rows, d, w, b, 1e-5f, expected);
        var y = Gpu.Empty(rows, d);
        var scale = Gpu.Empty(rows);
        Gpu.Norm(true, Dev(x), rows, d, Dev(w), 0f, Dev(b), 1e-5f, y, scale);
        Close.All(expected, Read(y), 1e-5, 1e-5, "LayerNorm");
        ReferenceKernels.RmsNorm(x, rows, d, w, 1f, 1e-6f, expected);
        Gpu.Norm(false, Dev(x), rows, d, Dev(w), 1f, null, 1e-6f, y, scale);
        Close.All(expected, Read(y), 1e-5, 1e-5, "RMSNorm with weight offset 1");
        ReferenceKernels.RmsNorm(x, rows, d, default, 0f, 1e-6f, expected);
        Gpu.Norm(false, Dev(x), rows, d, null, 0f, null, 1e-6f, y, scale);
        Close.All(expected, Read(y), 1e-5, 1e-5, "RMSNorm without weight");
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void NormBackwardAndGivenScaleMatchTheCpuBackend(int rows, int d)
    {
        var rng = new Random(rows * 7 + d);
        var x = Uniform(rng, rows * d, -3, 3);
        var w = Uniform(rng, d, 0.5f, 1.5f);
        var b = Uniform(rng, d);
        var dy = Uniform(rng, rows * d);
        foreach (bool center in new[] { true, false })
        {
            var scale = new float[rows];
            Cpu.Norm(center, Host(x), rows, d, Host(w), 0f, Host(b), 1e-5f, Host(new float[rows * d]), new Tensor(scale, rows));
            Same($"NormWithScale center={center}", [x, w, b, scale], [new float[rows * d]],
                (k, i, o) => k.NormWithScale(center, i[0], rows, d, i[1], 0.5f, center ? i[2] : null, i[3], o[0]));
            Same($"NormBackwardScale center={center}", [x, scale, dy, w], [new float[rows]],
                (k, i, o) => k.NormBackwardScale(center, i[0], i[1], i[2], rows, d, i[3], 0f, o[0]), 1e-5, 1e-4);
            var dScale = Uniform(rng, rows);
            Same($"NormBackwardInput center={center}", [x, scale, dy, dScale, w], [new float[rows * d]],
                (k, i, o) => k.NormBackwardInput(center, i[0], i[1], i[2], i[3], rows, d, i[4], 0f, o[0]), 1e-5, 1e-4);
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void SoftmaxFamilyMatches(int rows, int n)
    {
        var rng = new Random(rows * 31 + n);
        var x = Uniform(rng, rows * n, -6, 6);
        x[0] = float.NegativeInfinity;
        if (rows > 1) for (int j = 0; j < n; j++) x[n + j] = float.NegativeInfinity; // a fully masked row
        var expected = new float[rows * n];
        ReferenceKernels.Softmax(x, rows, n, expected);
        var p = Gpu.Empty(rows, n);
        Gpu.SoftmaxRows(Dev(x), rows, n, p);
        Close.All(expected, Read(p), 1e-7, 1e-5, "Softmax vs reference");
        var dp = Uniform(rng, rows * n);
        Same("SoftmaxBackward", [expected, dp], [new float[rows * n]], (k, i, o) => k.SoftmaxBackwardRows(i[0], i[1], rows, n, o[0]), 1e-6, 1e-5);
        var finite = Uniform(rng, rows * n, -6, 6);
        Same("LogSoftmax", [finite], [new float[rows * n]], (k, i, o) => k.LogSoftmaxRows(i[0], rows, n, o[0]), 1e-5, 1e-5);
        int[] targets = Enumerable.Range(0, rows).Select(r => r == 1 ? -1 : (r * 5) % n).ToArray();
        Same("CrossEntropy", [finite], [new float[rows], new float[rows * n]],
            (k, i, o) => k.CrossEntropyRows(i[0], rows, n, targets, o[0], o[1], 0.25f), 1e-5, 1e-5);
    }

    [Fact]
    public void ReductionsReadBackScalars()
    {
        var rng = new Random(5);
        var x = Uniform(rng, 1000);
        var t = Dev(x);
        var before = Gpu.Transfers.Snapshot();
        Assert.Equal(Cpu.Sum(Host(x)), Gpu.Sum(t), 1e-9);
        Assert.Equal(-1, Gpu.IndexOfNonFinite(t));
        var withBad = (float[])x.Clone();
        withBad[700] = float.NegativeInfinity;
        withBad[900] = float.NaN;
        Assert.Equal(700, Gpu.IndexOfNonFinite(Dev(withBad)));
        Assert.Equal(900, Gpu.IndexOfNonFinite(Dev(withBad), allowNegativeInfinity: true));
        var copies = Gpu.Transfers.Snapshot() - before;
        Assert.Equal(4, copies.Out(Backends.TransferKind.Scalars));
        Assert.Equal(0, copies.Out(Backends.TransferKind.Data));
    }

    [Fact]
    public void TopKOrdersSignedZerosInfinitiesAndNaNAsTheCpuBackend()
    {
        float[] row = [0f, -0f, float.NegativeInfinity, float.NaN, 2f, -0f, float.PositiveInfinity, 2f, float.NaN, -1f, 0f, float.NegativeInfinity];
        int n = row.Length;
        foreach (int k in new[] { 1, 3, 6, 11, n })
            Same($"TopK k={k}", [row], [new float[k], new float[k]], (b, i, o) => b.TopKRows(i[0], 1, n, k, o[0], o[1]), 0, 0);
    }

    // k past the small radix buffers (256) runs the large-buffer radix select up to 4,096 (aux-k's d_in/2), then selection passes.
    [Theory]
    [InlineData(2, 300, 280)]      // large radix, nearly the whole row, many ties
    [InlineData(3, 5000, 1024)]    // large radix at aux-k's size for d_in 2,048
    [InlineData(1, 4200, 4096)]    // large radix at its limit
    [InlineData(1, 4200, 4100)]    // selection passes
    public void TopKBeyondTheSmallRadixLimitMatchesTheCpuBackend(int rows, int n, int k)
    {
        var rng = new Random(n + k);
        var x = Enumerable.Range(0, rows * n).Select(_ => (float)rng.Next(-20, 20)).ToArray();
        Same($"TopK k={k}", [x], [new float[rows * k], new float[rows * k]], (b, i, o) => b.TopKRows(i[0], rows, n, k, o[0], o[1]), 0, 0);
        // Dead-feature masking as aux-k does it: −∞ everywhere but k + 10 entries.
        var masked = Enumerable.Range(0, rows * n).Select(i => i % n % 3 == 0 && i % n / 3 < k + 10 ? x[i] + 0.25f * (i % 7) : float.NegativeInfinity).ToArray();
        Same($"TopK k={k} masked", [masked], [new float[rows * k], new float[rows * k]], (b, i, o) => b.TopKRows(i[0], rows, n, k, o[0], o[1]), 0, 0);
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(7, 33, 5)]
    [InlineData(3, 130, 17)]
    public void ArgMaxAndTopKMatchTheCpuBackendWithTies(int rows, int n, int k)
    {
        var rng = new Random(rows + n + k);
        // Few distinct values, so there are ties to break by index.
        var x = Enumerable.Range(0, rows * n).Select(_ => (float)rng.Next(-4, 5)).ToArray();
        Assert.Equal(Cpu.ArgMaxRows(Host(x), rows, n), Gpu.ArgMaxRows(Dev(x), rows, n));
        Same("TopK", [x], [new float[rows * k], new float[rows * k]], (b, i, o) => b.TopKRows(i[0], rows, n, k, o[0], o[1]), 0, 0);
        var withNaN = (float[])x.Clone();
        withNaN[0] = float.NaN;
        Same("TopK with NaN", [withNaN], [new float[rows * k], new float[rows * k]], (b, i, o) => b.TopKRows(i[0], rows, n, k, o[0], o[1]), 0, 0);
        Assert.Equal(Cpu.ArgMaxRows(Host(withNaN), rows, n), Gpu.ArgMaxRows(Dev(withNaN), rows, n));
    }
}

[Collection(EmulatedCollection.Name)]
public sealed class GroupSizeTests(EmulatedBackendFixture fixture) : DeviceTest(fixture)
{
    [Fact]
    public void RowKernelsRunWithSeveralThreadsPerGroup() =>
        Assert.True(Gpu.GroupSize >= 4, $"the emulated device runs row kernels with {Gpu.GroupSize} threads per group: the reductions would go untested");

    [Fact]
    public void TheDefaultEmulatedDeviceRunsTwoThreadsPerGroupAndOddSizesAreRefused()
    {
        using (var fast = GpuBackend.Create(new Device(DeviceKind.Emulated)))
            Assert.Equal(GpuBackend.DefaultEmulatedThreadsPerGroup, fast.GroupSize);
        using (var eight = GpuBackend.CreateEmulated(threadsPerGroup: 8))
            Assert.Equal(8, eight.GroupSize);
        foreach (int bad in new[] { 0, 1, 3, 6, 1024 })
            Assert.Throws<ArgumentOutOfRangeException>(() => GpuBackend.CreateEmulated(threadsPerGroup: bad));
    }
}
