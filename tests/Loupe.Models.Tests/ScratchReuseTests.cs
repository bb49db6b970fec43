using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>
/// A forward pass reuses the storage of its dead intermediates (<see cref="ForwardContext.Scratch"/>): what a hook or
/// cache saw must never be overwritten afterwards, and reuse must not change a single logit.
/// </summary>
public class ScratchReuseTests
{
    static readonly int[] Prompt = [82, 87, 74, 39, 184, 175, 214, 409];

    public static TheoryData<string> Families => ["gpt2", "gpt_neox", "llama", "gemma2", "qwen3", "gpt_neo", "bert"];

    [Theory]
    [MemberData(nameof(Families))]
    public void ReuseChangesNoLogit(string arch)
    {
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        // Caching every hook point exposes every intermediate, so that pass reuses nothing: the reference. (hook_result is left
        // out: asking for it sums the heads in another order.)
        var exposed = model.Run(tokens, new RunOptions { CacheFilter = name => !name.EndsWith("hook_result", StringComparison.Ordinal) }).Logits.ToCpu().Span.ToArray();
        var plain = model.Run(tokens).Logits.ToCpu().Span.ToArray();
        Assert.Equal(exposed, plain); // the same kernels in the same order: bit for bit
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void WhatAHookSawIsNeverOverwritten(string arch)
    {
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        var reference = model.Run(tokens).Logits.ToCpu().Span.ToArray();
        // Every other hook point is read, so the pass still reuses the storage of the ones in between.
        var seen = new List<(string Name, Tensor Kept, float[] AtTheTime)>();
        var options = new RunOptions();
        foreach (var name in model.HookPointNames.Where((n, i) => i % 2 == 0 && !n.EndsWith("hook_result", StringComparison.Ordinal)))
            options.AddHook(name, (t, ctx) =>
            {
                seen.Add((ctx.Name, t, t.ToCpu().Span.ToArray()));
                return t;
            });
        var logits = model.Run(tokens, options).Logits.ToCpu().Span.ToArray();
        Assert.Equal(reference, logits);
        Assert.NotEmpty(seen);
        foreach (var (name, kept, atTheTime) in seen)
            Assert.True(atTheTime.AsSpan().SequenceEqual(kept.ToCpu().Span), $"{arch}: the tensor hooked at {name} was overwritten later in the pass");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void BackwardReuseChangesNoGradient(string arch)
    {
        if (arch == "bert") return; // an encoder: no next-token metric here (its backward is covered by GradientTests)
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        var metric = new LogitDiff(5, 7);
        // Every gradient recorded: none is reused, the reference. Then only resid_pre: everything between is reused.
        var all = model.RunWithGradients(tokens, metric, gradientHooks: null);
        var some = model.RunWithGradients(tokens, metric, "blocks.*.hook_resid_pre");
        Assert.Equal(all.Metric, some.Metric);
        foreach (var name in some.Gradients.Names)
            Assert.True(all.Gradients[name].ToCpu().Span.SequenceEqual(some.Gradients[name].ToCpu().Span), $"{arch}: d {name} changed");
        Assert.Equal(model.Config.NLayers, some.Gradients.Names.Count());
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void WhatAGradientHookSawIsNeverOverwritten(string arch)
    {
        if (arch == "bert") return;
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        var seen = new List<(string Name, Tensor Kept, float[] AtTheTime)>();
        var options = new RunOptions();
        foreach (var name in model.HookPointNames.Where((n, i) => i % 3 == 0 && !n.EndsWith("hook_result", StringComparison.Ordinal)))
            options.AddGradientHook(name, (t, ctx) =>
            {
                seen.Add((ctx.Name, t, t.ToCpu().Span.ToArray()));
                return t;
            });
        model.RunWithGradients(tokens, new LogitDiff(5, 7), "blocks.0.hook_resid_pre", options);
        Assert.NotEmpty(seen);
        foreach (var (name, kept, atTheTime) in seen)
            Assert.True(atTheTime.AsSpan().SequenceEqual(kept.ToCpu().Span), $"{arch}: the gradient hooked at {name} was overwritten later in the backward pass");
    }

    [Fact]
    public void GenerationWithAKvCacheIsUnchangedByReuse()
    {
        using var model = TestModels.Load("llama");
        var greedy = new GenerationOptions(6);
        var plain = model.Generate([Prompt], greedy)[0];
        var everyHookCached = new RunOptions { CacheFilter = name => !name.EndsWith("hook_result", StringComparison.Ordinal) };
        Assert.Equal(plain, model.Generate([Prompt], greedy, everyHookCached)[0]);
    }
}
