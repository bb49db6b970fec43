using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Tests;

// Shapes:
//   x, y    [rows, d]
//   weight  [d]   bias [d]
//   scale   [rows]   TransformerLens's hook_scale: the divisor of each row

/// <summary><see cref="Normalization"/> against <see cref="ReferenceKernels.LayerNorm"/> and <see cref="ReferenceKernels.RmsNorm"/>.</summary>
public class NormalizationTests
{
    const float Eps = 1e-5f;

    [Theory]
    [InlineData(1, 1, true, true)]
    [InlineData(3, 7, true, true)]
    [InlineData(5, 64, false, false)]
    [InlineData(5, 64, true, false)]
    [InlineData(5, 64, false, true)]
    [InlineData(9, 768, true, true)]
    [InlineData(2, 1001, true, true)]
    public void LayerNormMatchesReference(int rows, int d, bool withWeight, bool withBias)
    {
        var rng = new Random(rows * 10_000 + d);
        var x = Residual(rng, rows, d);                                            // [rows, d]
        var w = withWeight ? TestRandom.Uniform(rng, d, 0.5f, 1.5f) : [];         // [d]
        var b = withBias ? TestRandom.Uniform(rng, d, -0.5f, 0.5f) : [];          // [d]
        var expected = new float[rows * d];
        ReferenceKernels.LayerNorm(x, rows, d, w, b, Eps, expected);
        var y = TestRandom.Filled(rows * d, float.NaN);
        var scale = TestRandom.Filled(rows, float.NaN);

        Normalization.LayerNorm(x, rows, d, w, b, Eps, y, scale);

        Close.All(expected, y, 1e-5, 1e-5, "LayerNorm y", [rows, d]);
        Close.All(ExpectedLayerNormScale(x, rows, d), scale, 0, 2e-6, "LayerNorm scale = sqrt(var + eps)");
    }

    [Theory]
    [InlineData(1, 1, 0f)]
    [InlineData(3, 7, 0f)]
    [InlineData(3, 7, 1f)]
    [InlineData(9, 768, 0f)]
    [InlineData(9, 768, 1f)]
    [InlineData(2, 1001, 1f)]
    public void RmsNormMatchesReference(int rows, int d, float weightOffset)
    {
        var rng = new Random(rows * 10_000 + d + (int)weightOffset);
        var x = Residual(rng, rows, d);                                            // [rows, d]
        // Gemma stores w − 1, so its weights sit around 0; others sit around 1.
        var w = TestRandom.Uniform(rng, d, 0.5f - weightOffset, 1.5f - weightOffset);
        var expected = new float[rows * d];
        ReferenceKernels.RmsNorm(x, rows, d, w, weightOffset, Eps, expected);
        var y = TestRandom.Filled(rows * d, float.NaN);
        var scale = TestRandom.Filled(rows, float.NaN);

        Normalization.RmsNorm(x, rows, d, w, weightOffset, Eps, y, scale);

        Close.All(expected, y, 1e-5, 1e-5, $"RmsNorm y (offset {weightOffset})", [rows, d]);
        Close.All(ExpectedRmsScale(x, rows, d), scale, 0, 2e-6, "RmsNorm scale = sqrt(mean(x²) + eps)");
    }

    [Fact]
    public void RmsNormWithoutWeightMatchesReference()
    {
        var x = Residual(new Random(31), 4, 50);
        var expected = new float[x.Length];
        ReferenceKernels.RmsNorm(x, 4, 50, [], 0f, Eps, expected);
        var y = new float[x.Length];

        Normalization.RmsNorm(x, 4, 50, [], 0f, Eps, y);

        Close.All(expected, y, 1e-5, 1e-5, "RmsNorm y without weight");
    }

    // With an empty weight and offset 1 the reference multiplies by (1 + 1) = 2 (empty = ones, as
    // LayerNorm's "identity" and the documented (w + weightOffset)); the fast kernel ignores the offset.
    [Fact]
    public void RmsNormWithoutWeightButWithOffsetMatchesReference()
    {
        var x = Residual(new Random(32), 2, 10);
        var expected = new float[x.Length];
        ReferenceKernels.RmsNorm(x, 2, 10, [], 1f, Eps, expected);
        var y = new float[x.Length];

        Normalization.RmsNorm(x, 2, 10, [], 1f, Eps, y);

        Close.All(expected, y, 1e-5, 1e-5, "RmsNorm y without weight, offset 1");
    }

    [Fact]
    public void ConstantRowNormalizesToBiasAndScaleIsSqrtEps()
    {
        const int d = 16;
        var x = TestRandom.Filled(2 * d, 3.5f);
        var b = TestRandom.Uniform(33, d);
        var y = new float[2 * d];
        var scale = new float[2];

        Normalization.LayerNorm(x, 2, d, [], b, Eps, y, scale);

        Close.All([.. b, .. b], y, 1e-6, 0, "LayerNorm of a constant row");
        Close.All([MathF.Sqrt(Eps), MathF.Sqrt(Eps)], scale, 0, 1e-6, "scale of a constant row");
    }

    [Fact]
    public void BothNormsWorkInPlace()
    {
        const int rows = 3, d = 40;
        var rng = new Random(34);
        var x = Residual(rng, rows, d);
        var w = TestRandom.Uniform(rng, d, 0.5f, 1.5f);
        var b = TestRandom.Uniform(rng, d);

        var expected = new float[x.Length];
        Normalization.LayerNorm(x, rows, d, w, b, Eps, expected);
        var inPlace = x.ToArray();
        Normalization.LayerNorm(inPlace, rows, d, w, b, Eps, inPlace);
        Close.Exact(expected, inPlace, "LayerNorm in place");

        Normalization.RmsNorm(x, rows, d, w, 1f, Eps, expected);
        inPlace = x.ToArray();
        Normalization.RmsNorm(inPlace, rows, d, w, 1f, Eps, inPlace);
        Close.Exact(expected, inPlace, "RmsNorm in place");
    }

    [Theory]
    [InlineData("x")]
    [InlineData("y")]
    [InlineData("weight")]
    [InlineData("bias")]
    [InlineData("scale")]
    public void LayerNormNamesTheBadArgument(string name)
    {
        const int rows = 3, d = 4;
        var x = new float[name == "x" ? rows * d - 1 : rows * d];
        var y = new float[name == "y" ? rows * d - 1 : rows * d];
        var w = new float[name == "weight" ? d + 1 : d];
        var b = new float[name == "bias" ? d - 1 : d];
        var scale = new float[name == "scale" ? rows - 1 : rows];

        var ex = Assert.Throws<ArgumentException>(() => Normalization.LayerNorm(x, rows, d, w, b, Eps, y, scale));

        Assert.Equal(name, ex.ParamName);
        Assert.StartsWith($"{name} has ", ex.Message);
    }

    [Theory]
    [InlineData("x")]
    [InlineData("y")]
    [InlineData("weight")]
    [InlineData("scale")]
    public void RmsNormNamesTheBadArgument(string name)
    {
        const int rows = 3, d = 4;
        var x = new float[name == "x" ? rows * d - 1 : rows * d];
        var y = new float[name == "y" ? rows * d - 1 : rows * d];
        var w = new float[name == "weight" ? d - 1 : d];
        var scale = new float[name == "scale" ? rows - 1 : rows];

        var ex = Assert.Throws<ArgumentException>(() => Normalization.RmsNorm(x, rows, d, w, 1f, Eps, y, scale));

        Assert.Equal(name, ex.ParamName);
        Assert.StartsWith($"{name} has ", ex.Message);
    }

    /// <summary>A residual-stream-like input: an offset per row (so the mean matters) plus noise of varying size.</summary>
    static float[] Residual(Random rng, int rows, int d)
    {
        var x = new float[rows * d];
        for (int r = 0; r < rows; r++)
        {
            float offset = 4 * rng.NextSingle() - 2, spread = 0.1f + 3 * rng.NextSingle();
            for (int i = 0; i < d; i++) x[r * d + i] = offset + spread * (2 * rng.NextSingle() - 1);
        }
        return x;
    }

    static float[] ExpectedLayerNormScale(float[] x, int rows, int d)
    {
        var s = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * d, d).ToArray().Select(v => (double)v).ToArray();
            double mean = row.Average();
            s[r] = (float)Math.Sqrt(row.Sum(v => (v - mean) * (v - mean)) / d + Eps);
        }
        return s;
    }

    static float[] ExpectedRmsScale(float[] x, int rows, int d)
    {
        var s = new float[rows];
        for (int r = 0; r < rows; r++)
            s[r] = (float)Math.Sqrt(x.AsSpan(r * d, d).ToArray().Sum(v => (double)v * v) / d + Eps);
        return s;
    }
}
