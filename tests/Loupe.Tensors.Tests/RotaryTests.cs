using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;
using Xunit.Abstractions;

namespace Loupe.Tensors.Tests;

// Shapes: x [rows, heads, head_dim]; positions [rows]; the first rotary_dim dims of each head rotate.

/// <summary><see cref="RotaryTable.Apply"/> against <see cref="ReferenceKernels.Rotary"/> (angles in double).</summary>
public class RotaryTests(ITestOutputHelper output)
{
    const int MaxPositions = 501; // positions 0..500

    [Theory]
    [InlineData(64, 64, 1e4)]
    [InlineData(64, 64, 1e6)]
    [InlineData(128, 128, 1e6)]
    [InlineData(2, 2, 1e4)]
    [InlineData(64, 16, 1e4)]   // GPT-NeoX / Pythia: rotary_pct = 0.25
    [InlineData(80, 32, 1e4)]   // partial rotary, head_dim not a power of two
    [InlineData(96, 80, 1e6)]   // rotary_dim not a power of two: 2i/rotary_dim is inexact in float32
    public void MatchesReference(int headDim, int rotaryDim, double theta)
    {
        const int heads = 3;
        var rng = new Random(headDim * 1000 + rotaryDim + (int)Math.Log10(theta));
        int[] positions = [0, 1, 2, 499, 500, .. Enumerable.Range(0, 35).Select(_ => rng.Next(MaxPositions))];
        int rows = positions.Length;
        var x = TestRandom.Uniform(rng, rows * heads * headDim);   // [rows, heads, head_dim]
        var expected = x.ToArray();
        ReferenceKernels.Rotary(expected, rows, heads, headDim, rotaryDim, theta, positions);
        var table = new RotaryTable(rotaryDim, theta, MaxPositions);
        var y = x.ToArray();

        table.Apply(y, rows, heads, headDim, positions);

        // The table holds float32 angles pos·inv_freq, as Hugging Face computes them; at position 500 an
        // angle of ~500 rad is off by up to ~1 ulp (3e-5), so the tolerance grows with the position.
        double worst = 0;
        for (int r = 0; r < rows; r++)
        {
            var e = expected.AsSpan(r * heads * headDim, heads * headDim);
            var a = y.AsSpan(r * heads * headDim, heads * headDim);
            Close.All(e, a, 1e-6 + 1.2e-7 * positions[r], 0, $"row {r} (position {positions[r]})", [heads, headDim]);
            for (int i = 0; i < e.Length; i++) worst = Math.Max(worst, Math.Abs(e[i] - a[i]));
        }
        output.WriteLine($"head_dim {headDim}, rotary_dim {rotaryDim}, theta {theta:G}: worst |diff| {worst:E2}");

        // Past rotary_dim, every dim is untouched, bit for bit.
        for (int rh = 0; rh < rows * heads; rh++)
            Close.Exact(x.AsSpan(rh * headDim + rotaryDim, headDim - rotaryDim), y.AsSpan(rh * headDim + rotaryDim, headDim - rotaryDim),
                $"tail of row·head {rh}");
    }

    [Fact]
    public void PositionZeroIsTheIdentity()
    {
        var x = TestRandom.Uniform(51, 2 * 4 * 32);
        var y = x.ToArray();
        new RotaryTable(32, 1e4, 8).Apply(y, 2, 4, 32, [0, 0]);
        Close.Exact(x, y, "x rotated at position 0");
    }

    /// <summary>RoPE's defining property: q·k after rotation depends only on the positions' difference.</summary>
    [Fact]
    public void DotProductDependsOnlyOnRelativePosition()
    {
        const int d = 64;
        var table = new RotaryTable(d, 1e4, MaxPositions);
        var q = TestRandom.Uniform(52, d);
        var k = TestRandom.Uniform(53, d);
        double Score(int qPos, int kPos)
        {
            var qr = q.ToArray();
            var kr = k.ToArray();
            table.Apply(qr, 1, 1, d, [qPos]);
            table.Apply(kr, 1, 1, d, [kPos]);
            return qr.Zip(kr, (a, b) => (double)a * b).Sum();
        }
        foreach (int delta in new[] { 0, 1, 7, 100 })
        {
            double first = Score(delta, 0);
            foreach (int start in new[] { 3, 50, 400 })
                Assert.True(Math.Abs(Score(start + delta, start) - first) < 1e-3,
                    $"q·k at ({start + delta}, {start}) = {Score(start + delta, start)}, at ({delta}, 0) = {first}");
        }
    }

    [Theory]
    [InlineData(501)]
    [InlineData(-1)]
    [InlineData(int.MaxValue)]
    public void PositionOutsideTheTableThrows(int position)
    {
        var table = new RotaryTable(8, 1e4, MaxPositions);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => table.Apply(new float[2 * 8], 2, 1, 8, [3, position]));
        Assert.Equal("positions", ex.ParamName);
        Assert.Contains($"position {position} is outside the rotary table (0..500)", ex.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    [InlineData(-4)]
    public void RotaryDimMustBePositiveAndEven(int rotaryDim)
    {
        var ex = Assert.Throws<ArgumentException>(() => new RotaryTable(rotaryDim, 1e4, 4));
        Assert.Equal("rotaryDim", ex.ParamName);
    }

    [Fact]
    public void ApplyValidatesShapes()
    {
        var table = new RotaryTable(16, 1e4, 4);
        Assert.Contains("head dimension 8 is smaller than the rotary dimension 16",
            Assert.Throws<ArgumentException>(() => table.Apply(new float[8], 1, 1, 8, [0])).Message);
        Assert.Equal("positions", Assert.Throws<ArgumentException>(() => table.Apply(new float[32], 2, 1, 16, [0])).ParamName);
        Assert.Equal("x", Assert.Throws<ArgumentException>(() => table.Apply(new float[31], 2, 1, 16, [0, 1])).ParamName);
        Assert.Equal(16, table.RotaryDim);
        Assert.Equal(4, table.MaxPositions);
    }
}
