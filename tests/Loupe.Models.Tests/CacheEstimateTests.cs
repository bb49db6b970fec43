using Loupe.Models.Hooks;
namespace Loupe.Models.Tests;

/// <summary>The cache size a run will take, known from the declared hook points before it starts.</summary>
public class CacheEstimateTests
{
    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void TheEstimateIsWhatAFullCacheHolds(string arch)
    {
        using var model = TestModels.Load(arch);
        var tokens = new TokenBatch([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 2, 5);
        // "Everything" leaves out the per-head copies of the stream (hook_q_input, …), which are only cached when named.
        long estimate = model.EstimateCacheBytes(model.HookPointNames.Where(n => !HookNames.IsPerHeadInput(n)), tokens.Batch, tokens.Length, out int uncounted);
        var cache = model.RunWithCache(tokens).Cache;
        Assert.Equal(0, uncounted);
        Assert.Equal(cache.Names.Sum(n => 4L * cache[n].Length), estimate);
        var perHead = model.RunWithCache(tokens, "blocks.*.hook_q_input,blocks.*.hook_k_input,blocks.*.hook_v_input").Cache;
        Assert.Equal(perHead.Names.Sum(n => 4L * perHead[n].Length), model.EstimateCacheBytes(perHead.Names, tokens.Batch, tokens.Length, out _));
        Assert.Equal(0, model.EstimateCacheBytes(["blocks.0.hook_resid_pre.hook_sae_acts_post"], 2, 5, out uncounted));
        Assert.Equal(1, uncounted);
    }
}
