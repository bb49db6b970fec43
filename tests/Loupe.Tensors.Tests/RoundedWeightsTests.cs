using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Tests;

public class RoundedWeightsTests
{
    [Theory]
    [InlineData(1f, 1f)]
    [InlineData(1.00390625f, 1f)]             // 1 + 2⁻⁸: a tie between 1 and 1 + 2⁻⁷, to the even one
    [InlineData(1.01171875f, 1.015625f)]      // 1 + 3·2⁻⁸: a tie, to the even 1 + 2⁻⁶
    [InlineData(1.005f, 1.0078125f)]          // above the tie: up
    [InlineData(-3.14159265f, -3.140625f)]
    [InlineData(float.PositiveInfinity, float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity, float.NegativeInfinity)]
    public void RoundToBf16RoundsToNearestEven(float value, float expected) =>
        Assert.Equal(expected, CpuBackend.RoundToBf16(value));

    [Fact]
    public void RoundToBf16KeepsNaN() => Assert.True(float.IsNaN(CpuBackend.RoundToBf16(float.NaN)));

    [Fact]
    public void MatricesAreRoundedAndVectorsAndTheSourceAreNot()
    {
        float[] host = [1.005f, -3.14159265f, 0.1f, 1e-3f];
        var bf16 = CpuBackend.WithRoundedWeights(ElementType.BF16);
        Assert.Equal(ElementType.BF16, bf16.WeightElementType);
        Assert.Equal(ElementType.F32, CpuBackend.Instance.WeightElementType);
        Assert.Equal(host.Select(CpuBackend.RoundToBf16), bf16.LoadWeight(host, [2, 2], ElementType.BF16).Span.ToArray());
        Assert.Equal(host.Select(v => (float)(Half)v), CpuBackend.WithRoundedWeights(ElementType.F16).LoadWeight(host, [2, 2], ElementType.F16).Span.ToArray());
        Assert.Equal(host, bf16.LoadWeight(host, [4], ElementType.F32).Span.ToArray());
        Assert.Equal(1.005f, host[0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuBackend.WithRoundedWeights(ElementType.F32));
    }
}
