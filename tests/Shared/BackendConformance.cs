using System.Globalization;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;
using Xunit;
using R = Loupe.Tensors.Kernels.Reference.ReferenceKernels;

namespace Loupe.Testing;

/// <summary>
/// Every <see cref="IComputeBackend"/> member against its double reference twin
/// (<see cref="Loupe.Tensors.Kernels.Reference.ReferenceKernels"/>), on odd sizes, grouped-query attention,
/// a KV cache larger than the keys in use, sliding windows, soft-caps, padding masks, accumulate flags,
/// aliasing and 16-bit weights. A backend's test project runs it with one line:
/// <c>public sealed class XBackendConformance : BackendConformance { protected override IComputeBackend Backend => …; }</c>.
/// Inputs are made on the host and moved with <see cref="IComputeBackend.ToDevice"/>; results are read
/// with <see cref="Tensor.ToCpu"/>, so a backend whose tensors live on a device runs it unchanged.
/// Tolerances are |actual − twin| ≤ atol + rtol·|twin|: float arithmetic against double.
/// </summary>
public abstract class BackendConformance
{
    protected abstract IComputeBackend Backend { get; }

    // ---- helpers -----------------------------------------------------------------------------

    /// <summary>A tensor on the backend's device holding <paramref name="data"/> (1-D unless a shape is given).</summary>
    protected Tensor Up(float[] data, params int[] shape) =>
        Backend.ToDevice(Tensor.FromArray(data, shape.Length == 0 ? [data.Length] : shape));

    /// <summary>A backend tensor's values, read on the host.</summary>
    protected static float[] Down(Tensor t) => t.ToCpu().Span.ToArray();

    static float[] Rand(Random rng, int n, float lo = -1f, float hi = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.NextSingle();
        return a;
    }

    static float[] Filled(int n, float value)
    {
        var a = new float[n];
        Array.Fill(a, value);
        return a;
    }

    static double[] D(float[] a) => Array.ConvertAll(a, v => (double)v);
    static float[] F(double[] a) => Array.ConvertAll(a, v => (float)v);

    /// <summary>|actual − expected| ≤ atol + rtol·|expected| everywhere; infinities and NaN must match exactly.</summary>
    protected static void Near(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: expected {expected.Length} elements, got {actual.Length}");
        int bad = 0, worst = -1;
        double worstExcess = double.NegativeInfinity;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            double excess = !double.IsFinite(e) || !double.IsFinite(a)
                ? (e.Equals(a) ? double.NegativeInfinity : double.PositiveInfinity)
                : Math.Abs(a - e) - (atol + rtol * Math.Abs(e));
            if (excess > 0) bad++;
            if (excess > worstExcess) { worstExcess = excess; worst = i; }
        }
        if (bad == 0) return;
        Assert.Fail(string.Create(CultureInfo.InvariantCulture,
            $"{what}: {bad} of {expected.Length} elements differ from the reference twin; worst at [{worst}]: twin {expected[worst]:R}, " +
            $"backend {actual[worst]:R} (allowed ±{atol + rtol * Math.Abs(expected[worst]):E2})"));
    }

    /// <summary>16-bit weights: 1e-2 relative, with the absolute part scaled to the output's size (a sum near 0 has no relative accuracy).</summary>
    static void NearBf16(double[] expected, float[] actual, string what)
    {
        double rms = Math.Sqrt(expected.Sum(e => e * e) / Math.Max(1, expected.Length));
        Near(expected, actual, 1e-2 * rms, 1e-2, what);
    }

    // ---- memory ------------------------------------------------------------------------------

    [Fact]
    public void MemoryOps()
    {
        Assert.False(string.IsNullOrWhiteSpace(Backend.Name));
        Assert.NotNull(Backend.Transfers);
        Assert.True(Enum.IsDefined(Backend.WeightElementType), $"weight element type {Backend.WeightElementType}");

        var empty = Backend.Empty(3, 5);
        Assert.Equal([3, 5], empty.Shape.ToArray());
        Assert.Equal(Backend.Device, empty.Device);

        var zeros = Backend.Zeros(7, 1);
        Assert.Equal(Backend.Device, zeros.Device);
        Assert.All(Down(zeros), v => Assert.Equal(0f, v));

        Backend.Fill(empty, -2.5f);
        Assert.All(Down(empty), v => Assert.Equal(-2.5f, v));

        var data = Rand(new Random(1), 33);
        var moved = Up(data, 3, 11);
        Assert.Equal(Backend.Device, moved.Device);
        Assert.Equal([3, 11], moved.Shape.ToArray());
        Assert.Equal(data, Down(moved));
        Assert.Same(moved, Backend.ToDevice(moved));

        var weight = Backend.LoadWeight(data, [11, 3]);
        Assert.Equal([11, 3], weight.Shape.ToArray());
        Assert.Equal(data, Down(weight));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CopyRows(bool accumulate)
    {
        var rng = new Random(2);
        const int rows = 7, cols = 5, srcStride = 9, dstStride = 13;
        var src = Rand(rng, 3 + rows * srcStride);
        var dst = Rand(rng, 4 + rows * dstStride);
        var expected = D(dst);
        R.CopyRows(D(src), 3, srcStride, expected, 4, dstStride, rows, cols, accumulate);
        var d = Up(dst);
        Backend.CopyRows(Up(src), 3, srcStride, d, 4, dstStride, rows, cols, accumulate);
        Near(expected, Down(d), 1e-7, 1e-7, $"CopyRows (accumulate {accumulate})");
    }

    // ---- products ----------------------------------------------------------------------------

    [Theory]
    [InlineData(false, false, 1, 1, 1, 0f)]
    [InlineData(false, false, 7, 33, 5, 0f)]
    [InlineData(false, true, 33, 7, 130, 0.5f)]
    [InlineData(true, false, 7, 1, 33, 0f)]
    [InlineData(true, true, 130, 7, 7, -1f)]
    [InlineData(false, true, 33, 130, 33, 0f)]
    public void Gemm(bool transA, bool transB, int m, int n, int k, float beta)
    {
        var rng = new Random(3 + m + n + k);
        int aRows = transA ? k : m, aCols = transA ? m : k, bRows = transB ? n : k, bCols = transB ? k : n;
        int lda = aCols + 2, ldb = bCols + 1, ldc = n + 3;
        var a = Rand(rng, 5 + aRows * lda);
        var b = Rand(rng, 2 + bRows * ldb);
        // With beta = 0 the old C must not be read, not even a NaN.
        var c = beta == 0 ? Filled(1 + m * ldc, float.NaN) : Rand(rng, 1 + m * ldc);
        var expected = D(c);
        R.Gemm(transA, transB, m, n, k, 1.5, D(a), 5, lda, D(b), 2, ldb, beta, expected, 1, ldc);
        var ct = Up(c);
        Backend.Gemm(transA, transB, m, n, k, 1.5f, Up(a), 5, lda, Up(b), 2, ldb, beta, ct, 1, ldc);
        var actual = Down(ct);
        var tolerance = 1e-5 * k;
        for (int i = 0; i < m; i++)
            Near(expected.AsSpan(1 + i * ldc, n), actual.AsSpan(1 + i * ldc, n), tolerance, 1e-5, $"Gemm row {i}");
        for (int i = 0; i + 1 < m; i++) // the gaps between rows (ldc > n) are untouched
            Near(D(c).AsSpan(1 + i * ldc + n, 3), actual.AsSpan(1 + i * ldc + n, 3), 0, 0, $"Gemm gap after row {i}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void GemmWithBf16Weight(bool transB)
    {
        var rng = new Random(4);
        const int m = 7, n = 33, k = 130;
        var a = Rand(rng, m * k);
        var b = Rand(rng, k * n);
        var expected = new double[m * n];
        R.Gemm(false, transB, m, n, k, 1, D(a), 0, k, D(b), 0, transB ? k : n, 0, expected, 0, n);
        var c = Backend.Empty(m, n);
        var w = Backend.LoadWeight(b, transB ? [n, k] : [k, n], ElementType.BF16);
        Backend.Gemm(false, transB, m, n, k, 1f, Up(a), 0, k, w, 0, transB ? k : n, 0f, c, 0, n);
        NearBf16(expected, Down(c), "Gemm with a bf16 weight");
    }

    [Theory]
    [InlineData(false, false, 1)]
    [InlineData(true, false, 3)]
    [InlineData(false, true, 4)]
    public void GemmBatched(bool transA, bool transB, int batch)
    {
        var rng = new Random(5 + batch);
        const int m = 7, n = 5, k = 33;
        int lda = transA ? m : k, ldb = transB ? k : n, ldc = n;
        long strideA = m * k + 3, strideC = m * n + 2;
        var a = Rand(rng, 1 + (int)strideA * batch);
        var b = Rand(rng, 4 + k * n); // stride 0: one B shared by every product (a weight)
        var c = Rand(rng, 2 + (int)strideC * batch);
        var expected = D(c);
        R.GemmBatched(transA, transB, m, n, k, 0.5, D(a), 1, lda, strideA, D(b), 4, ldb, 0, 1, expected, 2, ldc, strideC, batch);
        var ct = Up(c);
        Backend.GemmBatched(transA, transB, m, n, k, 0.5f, Up(a), 1, lda, strideA, Up(b), 4, ldb, 0, 1f, ct, 2, ldc, strideC, batch);
        Near(expected, Down(ct), 1e-5 * k, 1e-5, "GemmBatched");
    }

    [Theory]
    [InlineData(true, true, ElementType.F32)]
    [InlineData(false, false, ElementType.F32)]
    [InlineData(true, true, ElementType.BF16)]
    [InlineData(false, true, ElementType.BF16)]
    public void Linear(bool weightIsOutIn, bool hasBias, ElementType weightType)
    {
        var rng = new Random(6);
        const int rows = 7, k = 33, n = 130;
        var x = Rand(rng, rows * k);
        var w = Rand(rng, k * n);
        var bias = hasBias ? Rand(rng, n) : null;
        var expected = new double[rows * n];
        R.Linear(D(x), rows, k, D(w), weightIsOutIn, n, bias is null ? default : D(bias), expected);
        var y = Backend.Empty(rows, n);
        var wt = Backend.LoadWeight(w, weightIsOutIn ? [n, k] : [k, n], weightType);
        Backend.Linear(Up(x), rows, k, wt, weightIsOutIn, n, bias is null ? null : Backend.LoadWeight(bias, [n]), y); // biases stay fp32, as the models load them
        if (weightType == ElementType.F32) Near(expected, Down(y), 1e-5 * k, 1e-5, "Linear");
        else NearBf16(expected, Down(y), "Linear with bf16 weights");
    }

    // ---- element-wise ------------------------------------------------------------------------

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(130)]
    public void ElementwiseArithmetic(int n)
    {
        var rng = new Random(7 + n);
        var a = Rand(rng, n, -40f, 40f);
        var b = Rand(rng, n, -3f, 3f);
        double[] Each(Func<double, double, double> f) => a.Zip(b, (p, q) => f(p, q)).ToArray();

        var sum = Each((p, q) => p + q); // before the aliasing calls below change a and b (on the CPU, Up wraps them)
        var y = Backend.Empty(n);
        Backend.Add(Up(a), Up(b), y);
        Near(sum, Down(y), 0, 1e-7, "Add");
        Backend.Multiply(Up(a), Up(b), y);
        Near(Each((p, q) => p * q), Down(y), 0, 1e-7, "Multiply");
        Backend.Scale(Up(a), -0.3f, y);
        Near(a.Select(p => p * -0.3).ToArray(), Down(y), 0, 1e-7, "Scale");

        // y may alias a or b.
        var at = Up((float[])a.Clone());
        Backend.Add(at, Up(b), at);
        Near(sum, Down(at), 0, 1e-7, "Add with y = a");
        var bt = Up((float[])b.Clone());
        Backend.Add(Up(a), bt, bt);
        Near(sum, Down(bt), 0, 1e-7, "Add with y = b");
        var twice = Up((float[])a.Clone());
        Backend.Add(twice, twice, twice);
        Near(a.Select(p => 2.0 * p).ToArray(), Down(twice), 0, 1e-7, "Add with y = a = b");

        // In place as the models call them: the MLP gate (Multiply y = a), final-logit soft-capping (SoftCap y = a).
        var product = Up((float[])a.Clone());
        Backend.Multiply(product, Up(b), product);
        Near(Each((p, q) => p * q), Down(product), 0, 1e-7, "Multiply with y = a");
        var scaled = Up((float[])a.Clone());
        Backend.Scale(scaled, 4f, scaled);
        Near(a.Select(p => p * 4.0).ToArray(), Down(scaled), 0, 1e-7, "Scale with y = a");
    }

    [Fact]
    public void DifferenceProduct()
    {
        var rng = new Random(8);
        const int n = 33;
        var a = Rand(rng, n, -5f, 5f);
        var b = Rand(rng, n, -5f, 5f);
        var g = Rand(rng, n);
        a[3] = b[3] = float.NegativeInfinity; // masked in both runs: −∞ − −∞ is NaN, which must read as 0
        a[7] = float.PositiveInfinity;
        var expected = new double[n];
        R.DifferenceProduct(D(a), D(b), D(g), expected);
        var y = Backend.Empty(n);
        Backend.DifferenceProduct(Up(a), Up(b), Up(g), y);
        Near(expected, Down(y), 1e-6, 1e-6, "DifferenceProduct");
    }

    [Fact]
    public void AddRowVector()
    {
        var rng = new Random(9);
        const int rows = 7, n = 33;
        var y = Rand(rng, rows * n);
        var v = Rand(rng, n);
        var expected = D(y);
        R.AddRowVector(expected, rows, D(v));
        var yt = Up(y, rows, n);
        Backend.AddRowVector(yt, rows, Up(v));
        Near(expected, Down(yt), 1e-7, 1e-7, "AddRowVector");
    }

    [Theory]
    [InlineData(1, 1, 1, false)]
    [InlineData(3, 7, 33, false)]
    [InlineData(2, 130, 5, true)]
    public void SumMiddleAxis(int outer, int middle, int inner, bool accumulate)
    {
        var rng = new Random(10 + middle);
        var x = Rand(rng, outer * middle * inner);
        var y = Rand(rng, outer * inner);
        var expected = D(y);
        R.SumMiddleAxis(D(x), outer, middle, inner, expected, accumulate);
        var yt = Up(y);
        Backend.SumMiddleAxis(Up(x), outer, middle, inner, yt, accumulate);
        Near(expected, Down(yt), 1e-6 * middle, 1e-6, "SumMiddleAxis");
    }

    public static TheoryData<string> ActivationNames => new(R.ActivationNames);

    [Theory]
    [MemberData(nameof(ActivationNames), MemberType = typeof(BackendConformance))]
    public void ActivationAndItsBackward(string name)
    {
        var rng = new Random(11);
        var x = Rand(rng, 130, -6f, 6f);
        x[0] = 0f;
        x[1] = 12f;
        x[2] = -12f;
        x[3] = 1e-4f;
        var dy = Rand(rng, x.Length);
        var expected = new double[x.Length];
        R.Activation(name, D(x), expected);
        var y = Backend.Empty(x.Length);
        Backend.Activation(name, Up(x), y);
        // The scale of f and f′ is 1: 1e-5 absolute is ~100 float ulps there (tanh near ±1 loses digits in 1 − t²).
        Near(expected, Down(y), 1e-5, 1e-5, $"{name}");

        R.ActivationBackward(name, D(x), D(dy), expected);
        var dx = Backend.Empty(x.Length);
        Backend.ActivationBackward(name, Up(x), Up(dy), dx);
        Near(expected, Down(dx), 1e-5, 1e-5, $"{name} backward");
    }

    [Fact]
    public void SoftCapAndItsBackward()
    {
        var rng = new Random(12);
        const float cap = 5f;
        var a = Rand(rng, 130, -20f, 20f);
        var expected = new double[a.Length];
        R.SoftCap(D(a), cap, expected);
        var y = Backend.Empty(a.Length);
        Backend.SoftCap(Up(a), cap, y);
        Near(expected, Down(y), cap * 2e-7, 2e-6, "SoftCap");
        var inPlace = Up((float[])a.Clone());
        Backend.SoftCap(inPlace, cap, inPlace);
        Near(expected, Down(inPlace), cap * 2e-7, 2e-6, "SoftCap in place");

        var capped = F(expected);
        capped[5] = float.NegativeInfinity; // a masked score
        var dy = Rand(rng, a.Length);
        R.SoftCapBackward(D(capped), D(dy), cap, expected);
        var dx = Backend.Empty(a.Length);
        Backend.SoftCapBackward(Up(capped), Up(dy), cap, dx);
        Near(expected, Down(dx), 1e-6, 1e-5, "SoftCapBackward");
    }

    // ---- normalization -----------------------------------------------------------------------

    [Theory]
    [InlineData(true, true, 0f, true, 130)]
    [InlineData(true, false, 0f, false, 7)]
    [InlineData(true, true, 1f, true, 33)]
    [InlineData(true, true, 0f, true, 1)]
    [InlineData(false, true, 0f, false, 130)]
    [InlineData(false, true, 1f, false, 33)]
    [InlineData(false, false, 0f, false, 7)]
    [InlineData(false, true, 0.5f, true, 7)]
    public void NormForwardAndBackward(bool center, bool hasWeight, float weightOffset, bool hasBias, int d)
    {
        var rng = new Random(13 + d);
        const int rows = 7;
        const float eps = 1e-5f;
        var x = Rand(rng, rows * d, -3f, 3f);
        for (int i = 0; i < d; i++) x[i] += 5f; // a row with a large mean
        var w = hasWeight ? Rand(rng, d, 0.5f, 1.5f) : null;
        var b = hasBias ? Rand(rng, d) : null;
        var dw = w is null ? default : D(w);
        var db = b is null ? default : D(b);
        Tensor? wt = w is null ? null : Up(w), bt = b is null ? null : Up(b);
        string what = $"{(center ? "LayerNorm" : "RMSNorm")} (d {d}, weight {hasWeight}, offset {weightOffset}, bias {hasBias})";

        var expectedY = new double[rows * d];
        var expectedScale = new double[rows];
        R.Norm(center, D(x), rows, d, dw, weightOffset, db, eps, expectedY, expectedScale);
        var y = Backend.Empty(rows, d);
        var scale = Backend.Empty(rows);
        var xt = Up(x, rows, d);
        Backend.Norm(center, xt, rows, d, wt, weightOffset, bt, eps, y, scale);
        Near(expectedY, Down(y), 2e-5, 1e-4, what);
        Near(expectedScale, Down(scale), 1e-6, 1e-5, $"{what}: scale");

        // A hooked scale: the output with σ replaced.
        var hooked = expectedScale.Select((s, r) => s * (0.5 + 0.25 * r)).ToArray();
        R.NormWithScale(center, D(x), rows, d, dw, weightOffset, db, hooked, expectedY);
        Backend.NormWithScale(center, xt, rows, d, wt, weightOffset, bt, Up(F(hooked)), y);
        Near(expectedY, Down(y), 2e-5, 1e-4, $"{what}: NormWithScale");

        var dy = Rand(rng, rows * d);
        var sigma = F(expectedScale);
        var expectedDScale = new double[rows];
        R.NormBackwardScale(center, D(x), D(sigma), D(dy), rows, d, dw, weightOffset, expectedDScale);
        var dScale = Backend.Empty(rows);
        Backend.NormBackwardScale(center, xt, Up(sigma), Up(dy), rows, d, wt, weightOffset, dScale);
        Near(expectedDScale, Down(dScale), 1e-5 * d, 1e-4, $"{what}: NormBackwardScale");

        // d scale as a hook may have changed it.
        var givenDScale = Rand(rng, rows);
        var expectedDx = new double[rows * d];
        R.NormBackwardInput(center, D(x), D(sigma), D(dy), D(givenDScale), rows, d, dw, weightOffset, expectedDx);
        var dx = Backend.Empty(rows, d);
        Backend.NormBackwardInput(center, xt, Up(sigma), Up(dy), Up(givenDScale), rows, d, wt, weightOffset, dx);
        Near(expectedDx, Down(dx), 2e-5, 1e-4, $"{what}: NormBackwardInput");
    }

    // ---- softmax and reductions --------------------------------------------------------------

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(130)]
    public void SoftmaxAndItsBackward(int n)
    {
        var rng = new Random(14 + n);
        const int rows = 5;
        var x = Rand(rng, rows * n, -8f, 8f);
        x[0] = float.NegativeInfinity;                                        // one masked entry
        for (int j = 0; j < n; j++) x[2 * n + j] = float.NegativeInfinity;    // a row with every key masked
        var expected = new double[x.Length];
        R.SoftmaxRows(D(x), rows, n, expected);
        var p = Backend.Empty(rows, n);
        Backend.SoftmaxRows(Up(x), rows, n, p);
        Near(expected, Down(p), 1e-7, 1e-5, "SoftmaxRows");

        var pattern = F(expected);
        var dp = Rand(rng, x.Length);
        R.SoftmaxBackwardRows(D(pattern), D(dp), rows, n, expected);
        var dx = Backend.Empty(rows, n);
        Backend.SoftmaxBackwardRows(Up(pattern), Up(dp), rows, n, dx);
        Near(expected, Down(dx), 1e-6, 1e-5, "SoftmaxBackwardRows");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(130)]
    public void LogSoftmax(int n)
    {
        var rng = new Random(15 + n);
        const int rows = 3;
        var x = Rand(rng, rows * n, -30f, 30f);
        var expected = new double[x.Length];
        R.LogSoftmaxRows(D(x), rows, n, expected);
        var y = Backend.Empty(rows, n);
        Backend.LogSoftmaxRows(Up(x), rows, n, y);
        Near(expected, Down(y), 1e-5, 1e-6, "LogSoftmaxRows");
    }

    [Theory]
    [InlineData(false, 1f)]
    [InlineData(true, 1f)]
    [InlineData(true, 0.125f)]
    public void CrossEntropy(bool withGradient, float weight)
    {
        var rng = new Random(16);
        const int rows = 7, n = 130;
        var x = Rand(rng, rows * n, -6f, 6f);
        int[] targets = [0, 129, -1, 64, 7, -100, 33];
        var expectedLoss = new double[rows];
        var expectedGrad = withGradient ? new double[x.Length] : null;
        R.CrossEntropyRows(D(x), rows, n, targets, expectedLoss, expectedGrad, weight);
        var loss = Backend.Empty(rows);
        var grad = withGradient ? Up(Filled(x.Length, float.NaN), rows, n) : null;
        Backend.CrossEntropyRows(Up(x, rows, n), rows, n, targets, loss, grad, weight);
        Near(expectedLoss, Down(loss), 1e-5, 1e-5, "CrossEntropyRows loss");
        if (grad is not null) Near(expectedGrad, Down(grad), 1e-7, 1e-5, "CrossEntropyRows gradient");
    }

    [Fact]
    public void SumArgMaxAndNonFinite()
    {
        var rng = new Random(17);
        var x = Rand(rng, 7 * 130, -2f, 2f);
        Assert.InRange(Backend.Sum(Up(x)), R.Sum(D(x)) - 1e-9, R.Sum(D(x)) + 1e-9);

        x[3 * 130 + 5] = 9f;
        x[3 * 130 + 77] = 9f; // a tie: the first wins
        x[6 * 130 + 129] = 9f;
        Assert.Equal(R.ArgMaxRows(x, 7, 130), Backend.ArgMaxRows(Up(x, 7, 130), 7, 130));
        Assert.Equal(5, Backend.ArgMaxRows(Up(x, 7, 130), 7, 130)[3]);
        Assert.Equal([0], Backend.ArgMaxRows(Up([1f]), 1, 1));

        Assert.Equal(-1, Backend.IndexOfNonFinite(Up(x)));
        foreach (var (bad, at, allow) in new[] { (float.NaN, 400, false), (float.PositiveInfinity, 1, true), (float.NegativeInfinity, 908, false) })
        {
            var y = (float[])x.Clone();
            y[at] = bad;
            y[at + 1] = float.NegativeInfinity;
            long expected = R.IndexOfNonFinite(y, allow);
            Assert.Equal(expected, Backend.IndexOfNonFinite(Up(y), allow));
        }
        var onlyMinusInf = (float[])x.Clone();
        onlyMinusInf[12] = float.NegativeInfinity;
        Assert.Equal(-1, Backend.IndexOfNonFinite(Up(onlyMinusInf), allowNegativeInfinity: true));
        Assert.Equal(12, Backend.IndexOfNonFinite(Up(onlyMinusInf)));
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(7, 33, 1)]
    [InlineData(3, 130, 7)]
    [InlineData(2, 7, 7)]
    public void TopK(int rows, int n, int k)
    {
        var rng = new Random(18 + n);
        var x = Rand(rng, rows * n);
        for (int i = 0; i + 3 < x.Length; i += 5) x[i + 3] = x[i]; // ties
        if (n >= 7) x[n - 1] = x[2] = x[4] = 2f;                     // a three-way tie at the top of row 0
        var expectedValues = new float[rows * k];
        var expectedIndices = new int[rows * k];
        R.TopKRows(x, rows, n, k, expectedValues, expectedIndices);
        var values = Backend.Empty(rows, k);
        var indices = Backend.Empty(rows, k);
        Backend.TopKRows(Up(x, rows, n), rows, n, k, values, indices);
        Assert.Equal(expectedValues, Down(values));
        Assert.Equal(expectedIndices.Select(i => (float)i).ToArray(), Down(indices));
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(7, 33, 4)]
    [InlineData(3, 130, 130)]
    public void ScatterRows(int rows, int n, int k)
    {
        var rng = new Random(41 + n);
        var x = Rand(rng, rows * n);
        var topValues = new float[rows * k];
        var topIndices = new int[rows * k];
        R.TopKRows(x, rows, n, k, topValues, topIndices);
        var expected = R.ScatterRows(topValues, topIndices, rows, k, n);
        var dense = Up(Enumerable.Repeat(float.NaN, rows * n).ToArray(), rows, n); // every element written, the stale ones too
        Backend.ScatterRows(Up(topValues, rows, k), Up(topIndices.Select(i => (float)i).ToArray(), rows, k), rows, k, n, dense);
        Assert.Equal(expected, Down(dense));
    }

    [Fact]
    public void ScatterRowsAfterTopKIsTheKeptEntries()
    {
        const int rows = 5, n = 40, k = 6;
        var x = Rand(new Random(43), rows * n);
        var values = Backend.Empty(rows, k);
        var indices = Backend.Empty(rows, k);
        var dense = Backend.Empty(rows, n);
        Backend.TopKRows(Up(x, rows, n), rows, n, k, values, indices);
        Backend.ScatterRows(values, indices, rows, k, n, dense);
        var got = Down(dense);
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * n, n).ToArray();
            float kth = row.OrderByDescending(v => v).ElementAt(k - 1);
            for (int j = 0; j < n; j++) Assert.Equal(row[j] >= kth ? row[j] : 0f, got[r * n + j]);
        }
    }

    // ---- positions and attention -------------------------------------------------------------

    [Theory]
    [InlineData(12, 8, false)]
    [InlineData(12, 8, true)]
    [InlineData(16, 16, false)]
    [InlineData(2, 2, true)]
    public void Rotary(int headDim, int rotaryDim, bool inverse)
    {
        var rng = new Random(19 + headDim);
        const int rows = 7, heads = 3;
        const double theta = 1e4;
        var positions = Enumerable.Range(0, rows).Select(_ => rng.Next(64)).ToArray();
        var x = Rand(rng, rows * heads * headDim);
        var expected = D(x);
        R.Rotary(expected, rows, heads, headDim, rotaryDim, theta, positions, inverse);
        var xt = Up(x, rows, heads, headDim);
        Backend.Rotary(new RotaryTable(rotaryDim, theta, 128), xt, rows, heads, headDim, positions, inverse);
        // The table keeps HF's float32 angles (pos·inv_freq rounded to float): ~1e-7 relative of angles below 64.
        Near(expected, Down(xt), 2e-5, 1e-5, $"Rotary (head {headDim}, rotary {rotaryDim}, inverse {inverse})");
    }

    /// <summary>An attention problem: sizes, mask, scale and spread of q and k.</summary>
    public sealed record AttentionCase(AttentionShape Shape, AttentionMask Mask, float Scale, float Spread = 1f)
    {
        public bool HasCache => Shape.KeyCapacity > 0;
    }

    static AttentionCase Attention(int index) => index switch
    {
        0 => new(new(Batch: 1, QueryLen: 1, KeyLen: 1, Heads: 1, KvHeads: 1, DHead: 1), new(), 1f),
        1 => new(new(2, 7, 7, 4, 4, 8), new(), 0.35f),
        2 => new(new(2, 7, 7, 4, 2, 33), new(), 0.17f),                                           // GQA, odd d_head
        3 => new(new(2, 3, 10, 4, 2, 8, KeyCapacity: 16), new(QueryOffset: 7), 0.35f),           // KV cache larger than the keys
        4 => new(new(1, 1, 9, 4, 2, 8, KeyCapacity: 13), new(QueryOffset: 8, SlidingWindow: 4, SoftCap: 3f), 0.35f, 3f), // decode step
        5 => new(new(2, 9, 9, 4, 2, 8), new(SlidingWindow: 3), 0.35f),
        6 => new(new(1, 7, 7, 4, 2, 8), new(SoftCap: 2f), 0.35f, 4f),                           // raw scores well past the cap
        7 => new(new(2, 6, 6, 4, 2, 8), new(KeyValid: [true, true, true, true, true, true, false, false, true, true, true, true]), 0.35f), // left padding
        8 => new(new(1, 4, 9, 4, 2, 8), new(QueryOffset: 5), 0.35f),                              // offset without a cache
        _ => throw new ArgumentOutOfRangeException(nameof(index)),
    };

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(8)]
    public void AttentionScoresAndApply(int index)
    {
        var c = Attention(index);
        var s = c.Shape;
        var rng = new Random(20 + index);
        var q = Rand(rng, s.Batch * s.QueryLen * s.Heads * s.DHead, -c.Spread, c.Spread);
        var k = Rand(rng, s.Batch * s.KeyRows * s.KvHeads * s.DHead, -c.Spread, c.Spread);
        var v = Rand(rng, k.Length);
        if (c.HasCache) // cache rows past KeyLen hold garbage that must not be read
            for (int b = 0; b < s.Batch; b++)
                for (int i = s.KeyLen * s.KvHeads * s.DHead; i < s.KeyRows * s.KvHeads * s.DHead; i++)
                    k[b * s.KeyRows * s.KvHeads * s.DHead + i] = v[b * s.KeyRows * s.KvHeads * s.DHead + i] = float.NaN;
        int scoreCount = s.Batch * s.Heads * s.QueryLen * s.KeyLen;

        var expected = new double[scoreCount];
        R.AttentionScores(D(q), D(k), s, c.Scale, c.Mask, expected);
        var scores = Backend.Empty(s.Batch, s.Heads, s.QueryLen, s.KeyLen);
        var kt = Up(k);
        var vt = Up(v);
        Backend.AttentionScores(Up(q), kt, s, c.Scale, c.Mask, scores);
        Near(expected, Down(scores), 1e-5 * Math.Max(1, c.Spread * c.Spread), 1e-5, $"AttentionScores, case {index}");

        var pattern = new double[scoreCount];
        R.SoftmaxRows(expected, s.Batch * s.Heads * s.QueryLen, s.KeyLen, pattern);
        var z = new double[q.Length];
        var patternF = F(pattern);
        R.AttentionApply(D(patternF), D(v), s, z);
        var zt = Backend.Empty(s.Batch, s.QueryLen, s.Heads, s.DHead);
        Backend.AttentionApply(Up(patternF), vt, s, zt);
        Near(z, Down(zt), 1e-6, 1e-5, $"AttentionApply, case {index}");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(5)]
    [InlineData(7)]
    [InlineData(8)]
    public void AttentionBackward(int index)
    {
        var c = Attention(index);
        var s = c.Shape;
        var rng = new Random(30 + index);
        int qCount = s.Batch * s.QueryLen * s.Heads * s.DHead, kvCount = s.Batch * s.KeyRows * s.KvHeads * s.DHead;
        int scoreCount = s.Batch * s.Heads * s.QueryLen * s.KeyLen;
        var q = Rand(rng, qCount);
        var k = Rand(rng, kvCount);
        var v = Rand(rng, kvCount);
        var pattern = Rand(rng, scoreCount, 0f, 1f);
        var dz = Rand(rng, qCount);
        var dRaw = Rand(rng, scoreCount);

        var expectedDPattern = new double[scoreCount];
        var expectedDv = new double[kvCount];
        R.AttentionApplyBackward(D(dz), D(pattern), D(v), s, expectedDPattern, expectedDv);
        var dPattern = Backend.Empty(s.Batch, s.Heads, s.QueryLen, s.KeyLen);
        var dv = Up(Filled(kvCount, float.NaN)); // written, not accumulated
        Backend.AttentionApplyBackward(Up(dz), Up(pattern), Up(v), s, dPattern, dv);
        Near(expectedDPattern, Down(dPattern), 1e-5 * s.DHead, 1e-5, $"AttentionApplyBackward dPattern, case {index}");
        Near(expectedDv, Down(dv), 1e-5 * s.QueryLen * s.Group, 1e-5, $"AttentionApplyBackward dv, case {index}");

        var expectedDq = new double[qCount];
        var expectedDk = new double[kvCount];
        R.AttentionScoresBackward(D(dRaw), D(q), D(k), s, c.Scale, expectedDq, expectedDk);
        var dq = Up(Filled(qCount, float.NaN));
        var dk = Up(Filled(kvCount, float.NaN));
        Backend.AttentionScoresBackward(Up(dRaw), Up(q), Up(k), s, c.Scale, dq, dk);
        Near(expectedDq, Down(dq), 1e-5 * s.KeyLen, 1e-5, $"AttentionScoresBackward dq, case {index}");
        Near(expectedDk, Down(dk), 1e-5 * s.QueryLen * s.Group, 1e-5, $"AttentionScoresBackward dk, case {index}");
    }

    // ---- embeddings --------------------------------------------------------------------------

    [Theory]
    [InlineData(1f, 1)]
    [InlineData(2.5f, 33)]
    public void EmbeddingAndItsBackward(float scale, int d)
    {
        var rng = new Random(40 + d);
        const int vocab = 11;
        int[] ids = [3, 0, 10, 3, 7, 3, 10];
        var table = Rand(rng, vocab * d);
        var expected = new double[ids.Length * d];
        R.Embedding(D(table), d, ids, scale, expected);
        var y = Backend.Empty(ids.Length, d);
        Backend.Embedding(Backend.LoadWeight(table, [vocab, d]), d, ids, scale, y);
        Near(expected, Down(y), 1e-7, 1e-7, "Embedding");

        var dy = Rand(rng, ids.Length * d);
        var dTable = Rand(rng, vocab * d); // accumulates into what is there
        var expectedDTable = D(dTable);
        R.EmbeddingBackward(D(dy), d, ids, scale, expectedDTable);
        var dt = Up(dTable, vocab, d);
        Backend.EmbeddingBackward(Up(dy), d, ids, scale, dt);
        Near(expectedDTable, Down(dt), 1e-6, 1e-6, "EmbeddingBackward (repeated ids add up)");
    }

    [Theory]
    [InlineData(1, 1, new[] { 0 })]
    [InlineData(5, 300, new[] { 299, 0, 17, 17, 150 })]
    [InlineData(33, 7, new int[0])]
    public void GatherColumns(int rows, int n, int[] columns)
    {
        var x = Rand(new Random(45 + rows * n), rows * n);
        var expected = new double[rows * columns.Length];
        R.GatherColumns(D(x), rows, n, columns, expected);
        var y = Backend.Empty(rows, Math.Max(1, columns.Length));
        Backend.GatherColumns(Up(x, rows, n), rows, n, columns, y);
        Near(expected, Down(y).Take(expected.Length).ToArray(), 0, 0, "GatherColumns");
        Assert.Throws<ArgumentOutOfRangeException>(() => Backend.GatherColumns(Up(x, rows, n), rows, n, [n], y));
    }

    // ---- training ----------------------------------------------------------------------------

    [Fact]
    public void AdamSteps()
    {
        var rng = new Random(50);
        const int n = 130;
        const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
        var p = Rand(rng, n);
        double[] ep = D(p), em = new double[n], ev = new double[n];
        Tensor pt = Up(p), mt = Backend.Zeros(n), vt = Backend.Zeros(n);
        for (int step = 1; step <= 3; step++)
        {
            var g = Rand(rng, n, -0.1f, 0.1f);
            R.AdamStep(ep, D(g), em, ev, lr, beta1, beta2, eps, step);
            Backend.AdamStep(pt, Up(g), mt, vt, lr, beta1, beta2, eps, step);
        }
        Near(ep, Down(pt), 1e-6, 1e-5, "Adam parameters after 3 steps");
        Near(em, Down(mt), 1e-8, 1e-5, "Adam first moments");
        Near(ev, Down(vt), 1e-10, 1e-5, "Adam second moments");
    }

    // ---- dictionary training -------------------------------------------------------------------

    [Theory]
    [InlineData(1, 1)]
    [InlineData(7, 300)]
    [InlineData(33, 5)]
    public void RowDotsAndScaleRows(int rows, int cols)
    {
        var rng = new Random(60 + rows * cols);
        var a = Rand(rng, rows * cols);
        var b = Rand(rng, rows * cols);
        var y0 = Rand(rng, rows);
        foreach (bool accumulate in new[] { false, true })
        {
            var expected = D(y0);
            R.RowDots(D(a), D(b), rows, cols, expected, accumulate);
            var y = Up(y0);
            Backend.RowDots(Up(a, rows, cols), Up(b, rows, cols), rows, cols, y, accumulate);
            Near(expected, Down(y), 1e-6 * cols, 1e-6, $"RowDots (accumulate {accumulate})");
        }
        var scale = Rand(rng, rows, -2f, 2f);
        var expectedScaled = new double[rows * cols];
        R.ScaleRows(D(a), rows, cols, D(scale), expectedScaled);
        var scaled = Backend.Empty(rows, cols);
        Backend.ScaleRows(Up(a, rows, cols), rows, cols, Up(scale), scaled);
        Near(expectedScaled, Down(scaled), 0, 1e-7, "ScaleRows");
        var inPlace = Up(a, rows, cols);
        Backend.ScaleRows(inPlace, rows, cols, Up(scale), inPlace);
        Near(expectedScaled, Down(inPlace), 0, 1e-7, "ScaleRows in place");
    }

    // indices as TopKRows writes them, with some outside [0, n) (skipped) when asked; k above n repeats columns
    static float[] SparseIndices(Random rng, int rows, int n, int k, bool outOfRange)
    {
        var ix = new float[rows * k];
        for (int i = 0; i < ix.Length; i++) ix[i] = rng.Next(n);
        if (outOfRange && ix.Length > 0)
        {
            float[] bad = [-1f, n, float.NaN, 1e9f, -0.5f * n - 3];
            for (int i = 0; i < ix.Length; i += 3) ix[i] = bad[i / 3 % bad.Length];
        }
        return ix;
    }

    [Theory]
    [InlineData(1, 1, 1, 1, false)]
    [InlineData(7, 33, 300, 5, true)]
    [InlineData(3, 130, 17, 1, true)]
    [InlineData(2, 40, 9, 300, true)]   // k beyond the GPU's shared chunk of 256 entries
    [InlineData(5, 64, 33, 0, false)]
    [InlineData(0, 8, 5, 3, false)]
    public void SparseRowsTimesAndRowDotsAt(int rows, int n, int d, int k, bool outOfRange)
    {
        var rng = new Random(70 + rows * n + d * k);
        var values = Rand(rng, rows * k);
        var indices = SparseIndices(rng, rows, n, k, outOfRange);
        var w = Rand(rng, n * d);
        var bias = Rand(rng, d);
        var a = Rand(rng, rows * d);
        foreach (bool withBias in new[] { true, false })
        {
            var expected = new double[rows * d];
            R.SparseRowsTimes(D(values), D(indices), rows, k, D(w), n, d, withBias ? D(bias) : [], expected);
            var y = Up(Filled(rows * d, float.NaN), rows, d); // every element written
            Backend.SparseRowsTimes(Up(values, rows, k), Up(indices, rows, k), rows, k, Up(w, n, d), n, d, withBias ? Up(bias) : null, y);
            var got = Down(y);
            Near(expected, got, 1e-6 * (k + 1), 1e-5, $"SparseRowsTimes (bias {withBias})");
            var again = Up(Filled(rows * d, float.NaN), rows, d);
            Backend.SparseRowsTimes(Up(values, rows, k), Up(indices, rows, k), rows, k, Up(w, n, d), n, d, withBias ? Up(bias) : null, again);
            Assert.Equal(got, Down(again)); // a fixed order of sums: the same bits every run
        }
        var expectedDots = new double[rows * k];
        R.RowDotsAt(D(a), rows, d, D(w), n, D(indices), k, expectedDots);
        var dots = Up(Filled(rows * k, float.NaN), rows, k);
        Backend.RowDotsAt(Up(a, rows, d), rows, d, Up(w, n, d), n, Up(indices, rows, k), k, dots);
        Near(expectedDots, Down(dots), 1e-6 * d, 1e-5, "RowDotsAt");
        if (outOfRange)
            for (int i = 0; i < indices.Length; i += 3) Assert.Equal(0f, Down(dots)[i]);
    }

    [Theory]
    [InlineData(1, 1, 1, 1, false, false)]
    [InlineData(7, 33, 300, 5, true, false)]
    [InlineData(130, 11, 17, 3, true, true)]    // more rows than the GPU's 64 chunks: two rows a chunk
    [InlineData(2, 2, 9, 300, true, true)]      // repeats within a row; a column's list longer than a shared chunk of 256
    [InlineData(5, 64, 33, 0, false, true)]
    [InlineData(0, 8, 5, 3, false, false)]
    public void SparseRowsTransposeTimes(int rows, int n, int d, int k, bool outOfRange, bool accumulate)
    {
        var rng = new Random(90 + rows * n + d * k);
        var values = Rand(rng, rows * k);
        var indices = SparseIndices(rng, rows, n, k, outOfRange);
        var a = Rand(rng, rows * d);
        var y0 = accumulate ? Rand(rng, n * d) : Filled(n * d, float.NaN); // written when not accumulating, stale NaN and all
        var expected = accumulate ? D(y0) : new double[n * d];
        R.SparseRowsTransposeTimes(D(values), D(indices), rows, k, D(a), n, d, expected, accumulate);
        var y = Up((float[])y0.Clone(), n, d); // the CPU backend wraps the array: each run gets its own
        Backend.SparseRowsTransposeTimes(Up(values, rows, k), Up(indices, rows, k), rows, k, Up(a, rows, d), n, d, y, accumulate);
        var got = Down(y);
        Near(expected, got, 1e-6 * (rows * k / Math.Max(n, 1) + 2), 1e-5, $"SparseRowsTransposeTimes (accumulate {accumulate})");
        var again = Up((float[])y0.Clone(), n, d);
        Backend.SparseRowsTransposeTimes(Up(values, rows, k), Up(indices, rows, k), rows, k, Up(a, rows, d), n, d, again, accumulate);
        Assert.Equal(got, Down(again)); // a fixed order of sums: the same bits every run
    }

    [Theory]
    [InlineData(3, 50, 7, 4, false)]
    [InlineData(130, 600, 9, 300, true)]   // aux-k's regime: k beyond a shared chunk, rows beyond the 64 chunks; masked features
    [InlineData(4, 10, 5, 10, false)]      // every feature kept in every row: each column's list is the whole batch
    public void SparseRowsTransposeTimesOnDistinctRowsIsTheSameWithTheirPromise(int rows, int n, int d, int k, bool masked)
    {
        var rng = new Random(95 + rows + n * k);
        var pre = Rand(rng, rows * n);
        if (masked) // a third of the features −∞ (aux-k's live features), fewer kept than there are left
            for (int r = 0; r < rows; r++)
                for (int i = 0; i < n; i += 3) pre[r * n + i] = float.NegativeInfinity;
        var values = Backend.Empty(rows, k);
        var indices = Backend.Empty(rows, k);
        Backend.TopKRows(Up(pre, rows, n), rows, n, k, values, indices);
        var a = Up(Rand(rng, rows * d), rows, d);
        var y0 = Rand(rng, n * d);
        var expected = D(y0);
        R.SparseRowsTransposeTimes(D(Down(values)), D(Down(indices)), rows, k, D(Down(a)), n, d, expected, accumulate: true);
        var checkedRepeats = Up((float[])y0.Clone(), n, d);
        Backend.SparseRowsTransposeTimes(values, indices, rows, k, a, n, d, checkedRepeats, accumulate: true);
        var promised = Up((float[])y0.Clone(), n, d);
        Backend.SparseRowsTransposeTimes(values, indices, rows, k, a, n, d, promised, accumulate: true, distinctPerRow: true);
        Near(expected, Down(promised), 1e-6 * (rows * k / n + 2), 1e-5, "SparseRowsTransposeTimes, distinct per row");
        Assert.Equal(Down(checkedRepeats), Down(promised)); // the same lists in the same order: the same bits
    }

    [Fact]
    public void SparseRowsTransposeTimesWithABrokenDistinctPromiseStaysInsideY()
    {
        const int rows = 70, n = 12, d = 5, k = 6;
        var rng = new Random(96);
        var values = Rand(rng, rows * k);
        var indices = new float[rows * k];
        for (int e = 0; e < indices.Length; e++) indices[e] = e % 3; // columns 0–2 repeated twice in every row
        var y0 = Rand(rng, n * d);
        var y = Up((float[])y0.Clone(), n, d);
        Backend.SparseRowsTransposeTimes(Up(values, rows, k), Up(indices, rows, k), rows, k, Up(Rand(rng, rows * d), rows, d), n, d, y,
            accumulate: true, distinctPerRow: true);
        var got = Down(y);
        Assert.Equal(y0[(3 * d)..], got[(3 * d)..]); // columns no entry names are untouched
        Assert.All(got, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void SparseRowsTimesAfterTopKIsTheDenseProduct()
    {
        const int rows = 6, n = 50, d = 13, k = 4;
        var rng = new Random(77);
        var pre = Rand(rng, rows * n);
        var w = Rand(rng, n * d);
        var bias = Rand(rng, d);
        var values = Backend.Empty(rows, k);
        var indices = Backend.Empty(rows, k);
        var dense = Backend.Empty(rows, n);
        Backend.TopKRows(Up(pre, rows, n), rows, n, k, values, indices);
        Backend.ScatterRows(values, indices, rows, k, n, dense);
        var denseOut = Backend.Empty(rows, d);
        var wt = Up(w, n, d);
        Backend.Linear(dense, rows, n, wt, false, d, Up(bias), denseOut);
        var sparseOut = Backend.Empty(rows, d);
        Backend.SparseRowsTimes(values, indices, rows, k, wt, n, d, Up(bias), sparseOut);
        Near(D(Down(denseOut)), Down(sparseOut), 1e-5, 1e-5, "SparseRowsTimes against Linear of the scattered rows");
        // and the gradient side: a·wᵀ at the kept columns
        var a = Rand(rng, rows * d);
        var full = Backend.Empty(rows, n);
        Backend.Gemm(false, true, rows, n, d, 1f, Up(a, rows, d), 0, d, wt, 0, d, 0f, full, 0, n);
        var at = Backend.Empty(rows, k);
        Backend.RowDotsAt(Up(a, rows, d), rows, d, wt, n, indices, k, at);
        var fullHost = Down(full);
        var ix = Down(indices);
        var expected = new double[rows * k];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < k; j++) expected[r * k + j] = fullHost[r * n + (int)ix[r * k + j]];
        Near(expected, Down(at), 1e-5, 1e-5, "RowDotsAt against the kept entries of a·wᵀ");
        // and the weight gradient: denseᵀ·a
        var dw = Backend.Empty(n, d);
        Backend.Gemm(true, false, n, d, rows, 1f, dense, 0, n, Up(a, rows, d), 0, d, 0f, dw, 0, d);
        var sparseDw = Backend.Empty(n, d);
        Backend.SparseRowsTransposeTimes(values, indices, rows, k, Up(a, rows, d), n, d, sparseDw);
        Near(D(Down(dw)), Down(sparseDw), 1e-5, 1e-5, "SparseRowsTransposeTimes against the dense product");
    }

    [Fact]
    public void ReconstructionRowStatsGiveCosinesAndNormRatios()
    {
        // rows: both zero, x zero, x̂ zero, x below the minimum norm, ordinary, anti-parallel, large
        float[] xx = [0f, 0f, 4f, 1e-10f, 9f, 1f, 1e12f];
        float[] rr = [0f, 1f, 0f, 4f, 4f, 1f, 4e12f];
        float[] dot = [0f, 0f, 0f, 1e-5f, 3f, -1f, 1.5e12f];
        var cosine = new double[xx.Length];
        var ratio = new double[xx.Length];
        R.ReconstructionRowStats(D(xx), D(rr), D(dot), 1e-4, cosine, ratio);
        Assert.Equal([1, 0, 0], cosine[..3]);
        Assert.Equal(2, ratio[3], 1e-9);          // ‖x‖ = 1e-5 < 1e-4 counts as 1
        var c = Backend.Empty(xx.Length);
        var q = Backend.Empty(xx.Length);
        Backend.ReconstructionRowStats(Up(xx), Up(rr), Up(dot), 1e-4f, c, q);
        Near(cosine, Down(c), 1e-7, 1e-6, "ReconstructionRowStats cosine");
        Near(ratio, Down(q), 1e-7, 1e-6, "ReconstructionRowStats ratio");
    }

    [Fact]
    public void NormScaleRenormalisesAndClips()
    {
        float[] sumSquares = [0f, 0.25f, 1f, 4f, 9e6f, 1e-30f];
        foreach (var (target, onlyAbove) in new[] { (1f, false), (2f, true), (0.5f, false) })
        {
            var expected = new double[sumSquares.Length];
            R.NormScale(D(sumSquares), target, onlyAbove, expected);
            var y = Backend.Empty(sumSquares.Length);
            Backend.NormScale(Up(sumSquares), target, onlyAbove, y);
            Near(expected, Down(y), 0, 1e-6, $"NormScale (target {target}, only above {onlyAbove})");
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(1000)]
    [InlineData(70_001)]
    public void CountAboveCountsOnTheDevice(int n)
    {
        var rng = new Random(61 + n);
        var x = Rand(rng, n);
        x[0] = float.NaN;
        if (n > 1) x[1] = 0f;
        var y = Up([-5f]);
        Backend.CountAbove(Up(x), 0f, y);
        Assert.Equal((double)R.CountAbove(D(x), 0), (double)Down(y)[0]);
        Backend.CountAbove(Up(x), -2f, y);
        Assert.Equal((double)R.CountAbove(D(x), -2), (double)Down(y)[0]);
    }

    [Fact]
    public void UpdateSinceFiredSaturatesAtTheWindow()
    {
        float[] fired = [0f, 3f, 0f, 0f, 1f, 0f];
        float[] since = [0f, 40f, 96f, 100f, 100f, 64f];
        const float tokens = 32f, window = 100f;
        var expectedSince = D(since);
        var expectedBias = new double[since.Length];
        R.UpdateSinceFired(D(fired), expectedSince, tokens, window, expectedBias);
        var s = Up(since);
        var bias = Backend.Empty(since.Length);
        Backend.UpdateSinceFired(Up(fired), s, tokens, window, s, bias);
        Near(expectedSince, Down(s), 0, 0, "UpdateSinceFired counts (in place)");
        Near(expectedBias, Down(bias), 0, 0, "UpdateSinceFired dead bias");
    }

    [Theory]
    [InlineData(16, 64, 4, false)]
    [InlineData(7, 300, 3, false)]
    [InlineData(5, 40, 6, true)]
    [InlineData(40, 700, 9, false)]
    [InlineData(20, 500, 30, true)]
    public void BatchTopKKeepsTheLargestOfTheWholeBatch(int batch, int n, int k, bool ties)
    {
        var rng = new Random(71 + batch * n + k);
        var x = Rand(rng, batch * n);
        if (ties)
        {
            // many equal values straddle the cut: the first ones in index order are kept
            for (int i = 0; i < x.Length; i += 3) x[i] = 0.953125f;
            x[1] = 0f;
            x[4] = -0f;
        }
        int keep = batch * k;
        var expected = new double[x.Length];
        double expectedMin = R.BatchTopK(D(x), keep, expected);
        var y = Backend.Empty(batch, n);
        var min = Backend.Empty(1);
        Backend.BatchTopK(Up(x, batch, n), batch * n, keep, y, min);
        if (ties) // the cut falls among the ties: some are kept, not all
            Assert.InRange(expected.Count(v => v == 0.953125), 1, x.Count(v => v == 0.953125f) - 1);
        Near(expected, Down(y), 0, 0, "BatchTopK");
        Near([expectedMin], Down(min), 0, 0, "BatchTopK smallest kept");
        // every entry at or below zero: nothing positive kept
        var negative = Array.ConvertAll(x, v => -Math.Abs(v) - 0.5f);
        Backend.BatchTopK(Up(negative), negative.Length, keep, y, min);
        Assert.All(Down(y), v => Assert.Equal(0f, v));
        Assert.Equal(float.PositiveInfinity, Down(min)[0]);
    }

    [Fact]
    public void JumpReluPassesValuesAboveTheirColumnsThreshold()
    {
        const int rows = 9, cols = 37;
        var rng = new Random(83);
        var x = Rand(rng, rows * cols);
        var logThreshold = Rand(rng, cols, -4f, -0.5f);
        var expected = new double[x.Length];
        R.JumpRelu(D(x), rows, cols, D(logThreshold), expected);
        var y = Backend.Empty(rows, cols);
        Backend.JumpRelu(Up(x, rows, cols), rows, cols, Up(logThreshold), y);
        Near(expected, Down(y), 0, 0, "JumpRelu");
        var inPlace = Up(x, rows, cols);
        Backend.JumpRelu(inPlace, rows, cols, Up(logThreshold), inPlace);
        Near(expected, Down(inPlace), 0, 0, "JumpRelu in place");
    }

    [Fact]
    public void JumpReluThresholdGradSumsInsideTheBandwidth()
    {
        const int rows = 33, cols = 19;
        const float bandwidth = 0.05f, sparsityScale = 0.3f;
        var rng = new Random(89);
        var logThreshold = Rand(rng, cols, -3f, -1f);
        var x = new float[rows * cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) // around θ, so that about half the entries fall inside the window
                x[r * cols + c] = MathF.Exp(logThreshold[c]) + bandwidth * (2f * rng.NextSingle() - 1f);
        var dY = Rand(rng, rows * cols);
        var expected = new double[cols];
        R.JumpReluThresholdGrad(D(x), D(dY), rows, cols, D(logThreshold), bandwidth, sparsityScale, expected);
        var grad = Up(Filled(cols, 7f));
        Backend.JumpReluThresholdGrad(Up(x, rows, cols), Up(dY, rows, cols), rows, cols, Up(logThreshold), bandwidth, sparsityScale, grad);
        Near(expected, Down(grad), 1e-4, 1e-5, "JumpReluThresholdGrad");
    }
}
