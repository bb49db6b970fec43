using Loupe.Models.Generation;

namespace Loupe.Models.Tests;

/// <summary>Generation options arrive from the command line or a request: out-of-range values are refused, never sampled with.</summary>
public class SamplerValidationTests
{
    [Theory]
    [InlineData(float.NaN, 1f, 0, "temperature")] // NaN compares false with everything: it used to pick the least likely token
    [InlineData(-0.5f, 1f, 0, "temperature")]
    [InlineData(float.PositiveInfinity, 1f, 0, "temperature")]
    [InlineData(1f, 0f, 0, "top_p")]
    [InlineData(1f, 1.01f, 0, "top_p")]
    [InlineData(1f, float.NaN, 0, "top_p")]
    [InlineData(1f, 1f, -1, "top_k")]
    public void OutOfRangeOptionsAreInputErrors(float temperature, float topP, int topK, string named)
    {
        var e = Assert.Throws<InputError>(() => new Sampler(new GenerationOptions(4, temperature, topK, topP)));
        Assert.Contains(named, e.Message);
        Assert.Contains("max_new_tokens", Assert.Throws<InputError>(() => Sampler.Validate(new GenerationOptions(-1))).Message);
    }

    [Fact]
    public void NaNOrInfiniteLogitsAreRefused()
    {
        var sampler = new Sampler(new GenerationOptions(1, Temperature: 1f));
        Assert.Contains("NaN", Assert.Throws<InputError>(() => sampler.Sample([0f, float.NaN, 1f])).Message);
        Assert.Contains("infinite", Assert.Throws<InputError>(() => sampler.Sample([0f, float.PositiveInfinity])).Message);
    }

    [Fact]
    public void ATinyTemperatureIsGreedyNotNaN()
    {
        var sampler = new Sampler(new GenerationOptions(1, Temperature: 1e-30f, Seed: 3));
        for (int i = 0; i < 20; i++) Assert.Equal(2, sampler.Sample([0.5f, -3f, 0.75f, float.NegativeInfinity]));
    }
}
