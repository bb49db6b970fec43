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
        // (Not the per-head inputs: hooking them splits the pass per head, which sums in another order and refuses ln1's hooks
        // beside it; SplitInputHookTests checks that pass's reuse.)
        foreach (var name in model.HookPointNames.Where(n => !HookNames.IsPerHeadInput(n)).Where((n, i) => i % 2 == 0 && !n.EndsWith("hook_result", StringComparison.Ordinal)))
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
        foreach (var name in model.HookPointNames.Where(n => !HookNames.IsPerHeadInput(n)).Where((n, i) => i % 3 == 0 && !n.EndsWith("hook_result", StringComparison.Ordinal)))
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

    [Theory]
    [MemberData(nameof(Families))]
    public void WhatAPassReturnedSurvivesLaterPasses(string arch)
    {
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        var options = new RunOptions { CacheFilter = name => name.EndsWith("hook_resid_post", StringComparison.Ordinal) || name.EndsWith("hook_pattern", StringComparison.Ordinal) };
        var first = model.Run(tokens, options);
        var logits = first.Logits.ToCpu().Span.ToArray();
        var cached = first.Cache.Names.ToDictionary(n => n, n => first.Cache[n].ToCpu().Span.ToArray());
        Assert.NotEmpty(cached);
        GradientResult? gradients = arch == "bert" ? null : model.RunWithGradients(tokens, new LogitDiff(5, 7), "blocks.*.hook_resid_pre");
        var dResid = gradients?.Gradients.Names.ToDictionary(n => n, n => gradients.Gradients[n].ToCpu().Span.ToArray());

        // Later passes of other prompts draw on the pool the earlier ones filled; none may write into what they returned.
        var other = TokenBatch.Single([.. Prompt.Reverse()]);
        var second = model.Run(other).Logits.ToCpu().Span.ToArray();
        if (arch != "bert") model.RunWithGradients(other, new LogitDiff(3, 9), "blocks.0.hook_resid_pre");
        model.Run(other);

        Assert.True(logits.AsSpan().SequenceEqual(first.Logits.ToCpu().Span), $"{arch}: a later pass overwrote the first pass's logits");
        foreach (var (name, values) in cached)
            Assert.True(values.AsSpan().SequenceEqual(first.Cache[name].ToCpu().Span), $"{arch}: a later pass overwrote the cached {name}");
        if (gradients is not null)
            foreach (var (name, values) in dResid!)
                Assert.True(values.AsSpan().SequenceEqual(gradients.Gradients[name].ToCpu().Span), $"{arch}: a later pass overwrote d {name}");
        Assert.Equal(second, model.Run(other).Logits.ToCpu().Span.ToArray()); // pooled storage changes no logit
    }

    [Fact]
    public void APassReusesWhatTheLastOneReleased()
    {
        using var model = TestModels.Load("gpt2");
        var tokens = TokenBatch.Single(Prompt);
        var fresh = model.Run(tokens).Logits.ToCpu().Span.ToArray(); // the first pass: every array newly allocated
        long pooled = model.ScratchPool.Bytes;
        Assert.True(pooled > 0, "the first pass gave nothing back to the pool");
        Assert.Equal(fresh, model.Run(tokens).Logits.ToCpu().Span.ToArray());
        Assert.Equal(pooled, model.ScratchPool.Bytes); // the second pass took what it needed and gave back as much
        model.ScratchPool.Clear();
        Assert.Equal(0, model.ScratchPool.Bytes);
    }

    [Fact]
    public void ThePoolServesTheSmallestFitAndKeepsItsCapacity()
    {
        static TensorStorage Storage(int length) => Tensor.Uninitialized(length).Storage;
        var pool = new ScratchPool(capacityBytes: 4 * 100);
        pool.Return([Storage(30), Storage(30), Storage(20)]);
        Assert.Equal(4 * 80, pool.Bytes);
        Assert.False(pool.TryTake(9, out _)); // 20 is more than twice 9
        Assert.False(pool.TryTake(31, out _)); // nothing is long enough
        Assert.True(pool.TryTake(15, out var taken));
        Assert.Equal(20, taken.Length); // the smallest that serves, not the first
        Assert.True(pool.TryTake(20, out taken));
        Assert.Equal(30, taken.Length);
        Assert.Equal(4 * 30, pool.Bytes);
        // A pass of another shape gives back more than fits: the lengths it did not use go first, then what does not fit.
        pool.Return([Storage(40), Storage(40), Storage(40)]);
        Assert.Equal(4 * 80, pool.Bytes);
        Assert.True(pool.TryTake(40, out _));
        Assert.True(pool.TryTake(40, out _));
        Assert.False(pool.TryTake(40, out _));
        Assert.Equal(0, pool.Bytes);
        var none = new ScratchPool(0);
        none.Return([Storage(10)]);
        Assert.Equal(0, none.Bytes);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void AShorterPassRunsInALongerPassesStorage(string arch)
    {
        // Passes of decreasing length (as a probe harvest runs its batches): each takes views of the storage the longer
        // ones gave back. Views must change no logit and no cached value, and the pool must hardly grow.
        using var model = TestModels.Load(arch);
        var options = new RunOptions { CacheFilter = name => name.EndsWith("hook_resid_post", StringComparison.Ordinal) };
        var expected = new Dictionary<int, (float[] Logits, float[] Resid)>();
        using (var reference = TestModels.Load(arch))
            for (int length = Prompt.Length; length >= Prompt.Length / 2; length--)
            {
                reference.ScratchPool.Clear();
                var run = reference.Run(TokenBatch.Single(Prompt[..length]), options);
                expected[length] = (run.Logits.ToCpu().Span.ToArray(), run.Cache["blocks.0.hook_resid_post"].ToCpu().Span.ToArray());
            }
        model.Run(TokenBatch.Single(Prompt));
        long pooled = model.ScratchPool.Bytes;
        for (int length = Prompt.Length; length >= Prompt.Length / 2; length--)
        {
            var run = model.Run(TokenBatch.Single(Prompt[..length]), options);
            Assert.Equal(expected[length].Logits, run.Logits.ToCpu().Span.ToArray());
            Assert.Equal(expected[length].Resid, run.Cache["blocks.0.hook_resid_post"].ToCpu().Span.ToArray());
        }
        // Best fit is not perfect (a short request may take the storage a longer one of the same pass then misses), but
        // exact-length pooling would have added every shorter pass's scratch: about five times the first pass's.
        Assert.True(model.ScratchPool.Bytes <= pooled * 1.1, $"{arch}: the pool grew from {pooled} to {model.ScratchPool.Bytes} bytes on shorter passes");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void ARecycledResultFeedsTheNextPassAndNothingElse(string arch)
    {
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        var options = new RunOptions { CacheFilter = name => name.EndsWith("hook_resid_post", StringComparison.Ordinal) };
        var expected = model.Run(tokens, options);
        var expectedLogits = expected.Logits.ToCpu().Span.ToArray();
        var expectedResid = expected.Cache["blocks.0.hook_resid_post"].ToCpu().Span.ToArray();

        // A hook's replacement is the caller's tensor: recycling the pass must not hand it to the pool.
        var replacement = Tensor.FromArray(expectedResid.ToArray(), 1, Prompt.Length, model.Config.DModel);
        var run = model.Run(tokens, new RunOptions { CacheFilter = options.CacheFilter }.AddHook("blocks.0.hook_resid_post", (_, _) => replacement));
        long before = model.ScratchPool.Bytes;
        model.Recycle(run);
        Assert.True(run.Recycled);
        Assert.True(model.ScratchPool.Bytes > before, $"{arch}: recycling gave nothing back");
        Assert.Contains("Recycle", Assert.Throws<InvalidOperationException>(() => run.Cache["blocks.1.hook_resid_post"]).Message);
        Assert.Throws<ArgumentException>(() => model.Recycle(run));
        Assert.Throws<ArgumentException>(() => model.Recycle(run with { })); // a copy shares the cache, and its state
        using (var other = TestModels.Load(arch))
            Assert.Contains("another model", Assert.Throws<ArgumentException>(() => other.Recycle(model.Run(tokens, options))).Message);

        for (int i = 0; i < 3; i++)
        {
            var again = model.Run(tokens, options);
            Assert.Equal(expectedLogits, again.Logits.ToCpu().Span.ToArray());
            Assert.Equal(expectedResid, again.Cache["blocks.0.hook_resid_post"].ToCpu().Span.ToArray());
            model.Recycle(again);
        }
        Assert.Equal(expectedResid, replacement.Span.ToArray()); // no later pass wrote into the caller's tensor
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void OnADeviceShorterAndRecycledPassesMatchFreshOnes(string arch)
    {
        // The same best fit and recycling over device storage (views are offsets into pooled device blocks).
        using var backend = Loupe.Tensors.Gpu.ComputeBackends.Create(new Device(DeviceKind.Emulated));
        using var model = ModelLoader.LoadFolder(TestModels.Fixture(arch), backend);
        using var reference = ModelLoader.LoadFolder(TestModels.Fixture(arch), backend);
        var options = new RunOptions { CacheFilter = name => name == "blocks.1.hook_resid_post" };
        foreach (int length in new[] { Prompt.Length, Prompt.Length - 1, Prompt.Length - 3 })
        {
            var tokens = TokenBatch.Single(Prompt[..length]);
            reference.ScratchPool.Clear();
            var fresh = reference.Run(tokens, options);
            var run = model.Run(tokens, options);
            Assert.Equal(fresh.Logits.ToCpu().Span.ToArray(), run.Logits.ToCpu().Span.ToArray());
            Assert.Equal(fresh.Cache["blocks.1.hook_resid_post"].ToCpu().Span.ToArray(), run.Cache["blocks.1.hook_resid_post"].ToCpu().Span.ToArray());
            model.Recycle(run);
        }
    }
}
