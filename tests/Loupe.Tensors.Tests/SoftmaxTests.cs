using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Tests;

// Shapes: x, y [rows, n]; softmax over n.

/// <summary><see cref="Softmax.Rows"/> against <see cref="ReferenceKernels.Softmax"/>.</summary>
public class SoftmaxTests
{
    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 7)]
    [InlineData(17, 129)]
    [InlineData(4, 1000)]
    [InlineData(2, 50_000)]
    public void MatchesReference(int rows, int n)
    {
        var x = TestRandom.Uniform(rows * 7919 + n, rows * n, -10f, 10f);
        Check(x, rows, n, "random logits");
    }

    [Fact]
    public void NegativeInfinityGetsExactlyZero()
    {
        const int rows = 8, n = 37;
        var rng = new Random(41);
        var x = TestRandom.Uniform(rng, rows * n, -5f, 5f);
        for (int i = 0; i < x.Length; i++)
            if (rng.NextDouble() < 0.3) x[i] = float.NegativeInfinity;
        x[5 * n] = 1f; // every row keeps at least one finite entry

        var y = Check(x, rows, n, "logits with −∞");

        for (int i = 0; i < x.Length; i++)
            if (float.IsNegativeInfinity(x[i])) Assert.True(y[i] == 0f, $"y[{i}] = {y[i]} for x = −∞");
    }

    [Fact]
    public void FullyMaskedRowIsAllZeros()
    {
        const int n = 11;
        var x = TestRandom.Uniform(42, 3 * n);
        Array.Fill(x, float.NegativeInfinity, n, n); // row 1 is entirely −∞

        var y = Check(x, 3, n, "a fully masked row");

        Assert.All(y.AsSpan(n, n).ToArray(), v => Assert.Equal(0f, v));
        Assert.DoesNotContain(y, float.IsNaN);
    }

    [Theory]
    [InlineData(1e4f, 20f)]
    [InlineData(-1e4f, 20f)]
    [InlineData(100f, 20f)]    // e^100 overflows float32 unless the maximum is subtracted first
    [InlineData(3e38f, 1e37f)] // near float.MaxValue, where even the differences are huge
    public void LargeLogitsDoNotOverflow(float offset, float spread)
    {
        var x = TestRandom.Uniform(43, 4 * 64, 0f, 1f);
        for (int i = 0; i < x.Length; i++) x[i] = offset + spread * x[i];

        var y = Check(x, 4, 64, $"logits in [{offset}, {offset} + {spread}]");

        Assert.DoesNotContain(y, v => !float.IsFinite(v));
    }

    [Fact]
    public void OutputMayAliasInput()
    {
        const int rows = 5, n = 33;
        var x = TestRandom.Uniform(44, rows * n, -6f, 6f);
        x[40] = float.NegativeInfinity;
        var expected = new float[x.Length];
        Softmax.Rows(x, rows, n, expected);

        Softmax.Rows(x, rows, n, x);

        Close.Exact(expected, x, "softmax in place");
    }

    [Fact]
    public void RejectsShortBuffers()
    {
        var ex = Assert.Throws<ArgumentException>(() => Softmax.Rows(new float[12], 3, 4, new float[11]));
        Assert.Contains("needs 12 elements; x has 12, y has 11", ex.Message);
        Assert.Throws<ArgumentException>(() => Softmax.Rows(new float[11], 3, 4, new float[12]));
    }

    [Fact]
    public void ZeroColumnsIsANoOp() => Softmax.Rows([], 3, 0, []);

    /// <summary>Runs the fast kernel, compares with the reference, and checks every row sums to 1 (or 0 when fully masked).</summary>
    static float[] Check(float[] x, int rows, int n, string what)
    {
        var expected = new float[rows * n];
        ReferenceKernels.Softmax(x, rows, n, expected);
        var y = TestRandom.Filled(rows * n, float.NaN);

        Softmax.Rows(x, rows, n, y);

        Close.All(expected, y, 1e-7, 2e-5, $"softmax of {what}", [rows, n]);
        for (int r = 0; r < rows; r++)
        {
            double sum = y.AsSpan(r * n, n).ToArray().Sum(v => (double)v);
            bool masked = x.AsSpan(r * n, n).ToArray().All(float.IsNegativeInfinity);
            Assert.True(Math.Abs(sum - (masked ? 0 : 1)) < 1e-5, $"{what}: row {r} sums to {sum:R}");
        }
        return y;
    }
}
