using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>Tensor comparisons with a tolerance relative to the expected tensor's largest magnitude.</summary>
static class TensorAssert
{
    /// <summary>Every element within <paramref name="relative"/> × max |expected| (host copies of either side are read).</summary>
    public static void Close(Tensor expected, Tensor actual, float relative, string what)
    {
        var e = expected.ToCpu().Span;
        var a = actual.ToCpu().Span;
        Assert.Equal(e.Length, a.Length);
        float scale = 0, worst = 0;
        for (int i = 0; i < e.Length; i++)
        {
            scale = MathF.Max(scale, MathF.Abs(e[i]));
            worst = MathF.Max(worst, MathF.Abs(e[i] - a[i]));
        }
        Assert.True(worst <= relative * MathF.Max(scale, 1e-6f), $"{what}: max |Δ| {worst:G4} exceeds {relative:G2} × {scale:G4}");
    }
}
