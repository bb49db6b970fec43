using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Tests;

/// <summary><see cref="Activations"/> against the scalar twins in <see cref="ReferenceKernels"/>.</summary>
public class ActivationTests
{
    public delegate void Kernel(ReadOnlySpan<float> x, Span<float> y);

    /// <summary>Each activation: the fast kernel, its reference, and the float32 tolerance (atol, rtol).</summary>
    static (Kernel Fast, Func<float, float> Reference, double Atol, double Rtol) Get(string name) => name switch
    {
        "relu" => (Activations.Relu, ReferenceKernels.Relu, 0, 0),
        "silu" => (Activations.Silu, ReferenceKernels.Silu, 1e-30, 2e-6),
        // 1 + tanh(u) cancels for x ≪ 0 in float32 (as it does in PyTorch): an absolute error of ~1 ulp of 1, times |x|/2.
        "gelu_tanh" => (Activations.GeluTanh, ReferenceKernels.GeluTanh, 1e-6, 2e-6),
        // The erfc fit (1.2e-7) evaluated in float32 lanes on AVX-512 (a few more ulp; in double elsewhere).
        "gelu_erf" => (Activations.GeluErf, ReferenceKernels.GeluErf, 1e-12, 6e-7),
        _ => throw new ArgumentException(name),
    };

    public static TheoryData<string, int> KernelsAndLengths()
    {
        var data = new TheoryData<string, int>();
        foreach (var name in new[] { "relu", "silu", "gelu_tanh", "gelu_erf" })
            // 1 << 15 is the largest single-chunk buffer; longer ones are split across threads in 1 << 14 chunks.
            foreach (int n in new[] { 1, 7, 33, 1000, 1 << 15, (1 << 15) + 1, 100_003 })
                data.Add(name, n);
        return data;
    }

    /// <summary>
    /// Random values in [-8, 8) with special values sprinkled through: ±20, tiny and subnormal
    /// magnitudes, ±0, NaN, ±5 and ±3.2 (where 1 + tanh cancels) and ±87 (e^87 is near float32's limit).
    /// </summary>
    static float[] Inputs(int seed, int n)
    {
        var rng = new Random(seed);
        var x = TestRandom.Uniform(rng, n, -8f, 8f);
        float[] specials = [20f, -20f, 1e-30f, -1e-30f, 1e-42f, 0f, -0f, 1e-7f, -1e-7f, float.NaN, 5f, -5f, 87f, -87f, 3.2f, -3.2f];
        for (int i = 0; i < n; i += 1 + rng.Next(5)) x[i] = specials[rng.Next(specials.Length)];
        return x;
    }

    [Theory]
    [MemberData(nameof(KernelsAndLengths))]
    public void MatchesReference(string name, int n)
    {
        var (fast, reference, atol, rtol) = Get(name);
        var x = Inputs(n + name.Length, n);
        var y = TestRandom.Filled(n, -123f);

        fast(x, y);

        // The Simpson erf costs 4000 exps a value, so on long buffers gelu_erf is checked on a sample:
        // every stride-th element (stride coprime to the chunk size) and both sides of every chunk boundary.
        int stride = name == "gelu_erf" ? Math.Max(1, n / 2000) | 1 : 1;
        var at = Enumerable.Range(0, n).Where(i => i % stride == 0 || Math.Min(i % (1 << 14), (1 << 14) - i % (1 << 14)) < 3).ToArray();
        var expected = at.Select(i => reference(x[i])).ToArray();
        Close.All(expected, at.Select(i => y[i]).ToArray(), atol, rtol, $"{name}(x), n = {n}, {at.Length} elements checked");
    }

    [Theory]
    [InlineData("relu")]
    [InlineData("silu")]
    [InlineData("gelu_tanh")]
    [InlineData("gelu_erf")]
    public void NanPropagatesAndStaysLocal(string name)
    {
        var fast = Get(name).Fast;
        var x = TestRandom.Uniform(21, 40_000, -3f, 3f);
        int[] nanAt = [0, 17, 16_384, 39_999];
        foreach (int i in nanAt) x[i] = float.NaN;
        var y = new float[x.Length];

        fast(x, y);

        for (int i = 0; i < y.Length; i++)
            Assert.True(float.IsNaN(y[i]) == nanAt.Contains(i), $"{name}: y[{i}] = {y[i]} for x[{i}] = {x[i]}");
    }

    [Theory]
    [InlineData("relu", 1000)]
    [InlineData("gelu_erf", 1000)]
    [InlineData("relu", 70_000)]
    [InlineData("gelu_erf", 70_000)]
    public void InPlaceMatchesOutOfPlace(string name, int n) => CheckInPlace(name, n);

    // The class summary of Activations promises "in place or from x into y". Silu writes −x into y
    // before it has finished reading x, so in place every output becomes (1 + e^−x)/(1 + e^−x) = 1.
    [Fact]
    public void SiluInPlaceMatchesOutOfPlace() => CheckInPlace("silu", 1000);

    [Fact]
    public void GeluTanhInPlaceMatchesOutOfPlace() => CheckInPlace("gelu_tanh", 1000);

    static void CheckInPlace(string name, int n)
    {
        var fast = Get(name).Fast;
        var x = Inputs(22, n);
        var expected = new float[n];
        fast(x, expected);

        fast(x, x);

        Close.Exact(expected, x, $"{name} in place");
    }

    [Theory]
    [InlineData("relu")]
    [InlineData("silu")]
    [InlineData("gelu_tanh")]
    [InlineData("gelu_erf")]
    public void RejectsOutputOfDifferentLength(string name)
    {
        var ex = Assert.Throws<ArgumentException>(() => Get(name).Fast(new float[5], new float[4]));
        Assert.Contains("input has 5 elements but output has 4", ex.Message);
    }

    /// <summary>The fast erf (Taylor series below 2.5, continued fraction above) against Simpson's rule.</summary>
    [Fact]
    public void ErfMatchesSimpsonIntegrationOnAGrid()
    {
        // Step 1/256 is exact in binary; the extra points straddle the series/fraction switch at 2.5 and the saturation at 6.
        var xs = Enumerable.Range(-7 * 256, 14 * 256 + 1).Select(i => i / 256.0)
            .Concat([2.5 - 1e-12, 2.5 + 1e-12, 6 - 1e-12, 6 + 1e-12, 1e-300, 3.7, 5.55]);
        double worst = 0, worstX = 0;
        foreach (var x0 in xs)
            foreach (var x in new[] { x0, -x0 })
            {
                double err = Math.Abs(Activations.Erf(x) - ReferenceKernels.ErfBySimpson(x));
                if (err > worst) (worst, worstX) = (err, x);
            }
        Assert.True(worst <= 1e-7, $"|erf(x) − erf_simpson(x)| = {worst:E2} at x = {worstX:R}");
    }

    [Fact]
    public void ErfEdgeValues()
    {
        Assert.True(double.IsNaN(Activations.Erf(double.NaN)));
        Assert.Equal(1.0, Activations.Erf(double.PositiveInfinity));
        Assert.Equal(-1.0, Activations.Erf(double.NegativeInfinity));
        Assert.Equal(0.0, Activations.Erf(0.0));
        for (double x = 0.125; x < 7; x += 0.25) Assert.Equal(-Activations.Erf(x), Activations.Erf(-x));
        // erf is increasing: no jump where the method changes.
        Assert.True(Activations.Erf(2.5 - 1e-9) < Activations.Erf(2.5 + 1e-9));
    }

    [Theory]
    [InlineData("relu", "relu")]
    [InlineData("silu", "silu")]
    [InlineData("swish", "silu")]
    [InlineData("gelu_new", "gelu_tanh")]
    [InlineData("gelu_pytorch_tanh", "gelu_tanh")]
    [InlineData("gelu_fast", "gelu_tanh")]
    [InlineData("gelu_tanh", "gelu_tanh")]
    [InlineData("gelu", "gelu_erf")]
    [InlineData("gelu_exact", "gelu_erf")]
    public void ApplyDispatchesConfigNames(string configName, string kernel)
    {
        var x = Inputs(23, 257);
        var expected = new float[x.Length];
        Get(kernel).Fast(x, expected);
        var y = new float[x.Length];

        Activations.Apply(configName, x, y);

        Close.Exact(expected, y, $"Apply(\"{configName}\")");
    }

    [Theory]
    [InlineData("gelu_quick")]
    [InlineData("GELU")]
    [InlineData("")]
    public void ApplyRejectsUnknownNames(string name)
    {
        var ex = Assert.Throws<NotSupportedException>(() => Activations.Apply(name, new float[3], new float[3]));
        Assert.Contains($"'{name}'", ex.Message);
    }
}
