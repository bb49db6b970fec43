using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>
/// TransformerLens's per-head attention inputs: <c>blocks.L.hook_attn_in</c> (<c>use_attn_in</c>) and
/// <c>hook_q_input / hook_k_input / hook_v_input</c> (<c>use_split_qkv_input</c>), each a copy of hook_resid_pre per head.
/// The independent check: giving head h's query input another run's stream must equal giving head h's hook_q that run's
/// query (the query is ln1(input)·W_Q[h] + b_Q[h], and hook_q is its value), and the same for keys and values.
/// </summary>
public class SplitInputHookTests
{
    static readonly TokenBatch Clean = new([82, 87, 74, 39, 184, 175, 214, 409, 84, 200, 158, 186, 380, 257, 94, 24], 2, 8);
    static readonly TokenBatch Corrupt = new([82, 87, 74, 39, 190, 175, 214, 409, 84, 200, 158, 300, 380, 257, 94, 24], 2, 8);
    const int Layer = 1;

    public static TheoryData<string> Families => new() { "gpt2", "gpt_neox", "llama", "gemma2", "qwen3" };

    [Theory]
    [MemberData(nameof(Families))]
    public void TheyAreDeclaredPerHeadBeforeLn1(string arch)
    {
        using var model = TestModels.Load(arch);
        var c = model.Config;
        var points = model.HookPoints.ToList();
        var names = points.Select(p => p.Name).ToList();
        for (int l = 0; l < c.NLayers; l++)
        {
            int pre = names.IndexOf(HookNames.ResidPre(l)), ln1 = names.IndexOf($"blocks.{l}.ln1.hook_scale");
            foreach (var (name, heads) in new[] { (HookNames.QInput(l), c.NHeads), (HookNames.KInput(l), c.KvHeads), (HookNames.VInput(l), c.KvHeads) })
            {
                int at = names.IndexOf(name);
                Assert.True(at > pre && at < ln1, $"{arch}: {name} is not between hook_resid_pre and ln1");
                Assert.Equal([HookAxis.Batch, HookAxis.Pos, HookAxis.HeadIndex, HookAxis.DModel], points[at].Axes);
                Assert.Equal(new int?[] { null, null, heads, c.DModel }, points[at].Sizes);
            }
            // TransformerLens refuses hook_attn_in with grouped-query attention (its q, k and v would need other head counts).
            Assert.Equal(c.KvHeads == c.NHeads, names.Contains(HookNames.AttnIn(l)));
        }
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void ReadingThemGivesCopiesOfTheStreamAndChangesNothing(string arch)
    {
        using var model = TestModels.Load(arch);
        var plain = model.Run(Clean).Logits.ToCpu().Span.ToArray();
        string perHead = "blocks.*.hook_q_input,blocks.*.hook_k_input,blocks.*.hook_v_input" + (model.Config.KvHeads == model.Config.NHeads ? ",blocks.*.hook_attn_in" : "");
        var run = model.RunWithCache(Clean, perHead + ",blocks.*.hook_resid_pre");
        Assert.Equal(plain, run.Logits.ToCpu().Span.ToArray());
        int D = model.Config.DModel;
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var stream = run.Cache[HookNames.ResidPre(l)].Span;
            foreach (var name in perHead.Split(',').Select(p => p.Replace("*", l.ToString(System.Globalization.CultureInfo.InvariantCulture))))
            {
                var copies = run.Cache[name];
                int heads = copies.Dim(2);
                var span = copies.Span;
                for (int r = 0; r < Clean.Batch * Clean.Length; r++)
                    for (int h = 0; h < heads; h++)
                        Assert.True(span.Slice((r * heads + h) * D, D).SequenceEqual(stream.Slice(r * D, D)), $"{arch}: {name} row {r} head {h}");
            }
        }
    }

    [Fact]
    public void EverythingLeavesThemOutAndOnlyANamingPatternReachesThem()
    {
        using var model = TestModels.Load("gpt2");
        Assert.DoesNotContain(model.RunWithCache(Clean).Cache.Names, HookNames.IsPerHeadInput);
        Assert.DoesNotContain(model.RunWithCache(Clean, "*").Cache.Names, HookNames.IsPerHeadInput);
        Assert.DoesNotContain(model.RunWithCache(Clean, "blocks.1.*").Cache.Names, HookNames.IsPerHeadInput);
        Assert.DoesNotContain(model.RunWithGradients(Clean, new LogProb(17)).Gradients.Names, HookNames.IsPerHeadInput);
        Assert.Equal([HookNames.AttnIn(1)], model.RunWithCache(Clean, "blocks.1.hook_attn_in").Cache.Names);
        Assert.Equal(model.Config.NLayers, model.RunWithCache(Clean, "blocks.*.hook_k_input").Cache.Count);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void AHookThatChangesNothingGivesTheSameLogits(string arch)
    {
        // The split pass (each head's input normalised and projected apart) computes what the fused pass does.
        using var model = TestModels.Load(arch);
        var plain = model.Run(Clean).Logits;
        foreach (var name in new[] { HookNames.QInput(Layer), HookNames.KInput(Layer), HookNames.VInput(Layer) })
        {
            var split = model.Run(Clean, new RunOptions().AddHook(name, (x, _) => x)).Logits;
            TensorAssert.Close(plain, split, 1e-5f, $"{arch}: logits with an identity hook at {name}");
        }
    }

    /// <summary>TransformerLens checkpoints (separate W_Q/W_K/W_V, no norm or an attention-only model) and a model loaded with TransformerLens's processing (ln1 folded into the projections).</summary>
    public static TheoryData<string> MoreModels => new() { "gpt2 processed", "models/induction-attn-only-2l", "models/grokking-modadd-p113-main" };

    static HookedTransformer LoadMore(string which) => which == "gpt2 processed"
        ? ModelLoader.LoadFolder(TestModels.Fixture("gpt2"), processing: Loupe.Models.Processing.WeightProcessing.TransformerLensDefaults)
        : ModelLoader.LoadFolder(Loupe.Testing.SharedData.Require(which));

    [Theory]
    [MemberData(nameof(MoreModels))]
    public void TransformerLensCheckpointsAndProcessedModelsSplitAlike(string which)
    {
        if (which.StartsWith("models/", StringComparison.Ordinal) && Loupe.Testing.SharedData.Path_(which) is null) return; // ../shared absent
        using var model = LoadMore(which);
        int V = model.Config.DVocab, T = Math.Min(8, model.Config.NCtx);
        var clean = new TokenBatch([.. Enumerable.Range(0, 2 * T).Select(i => (i * 37 + 5) % V)], 2, T);
        var corrupt = new TokenBatch([.. Enumerable.Range(0, 2 * T).Select(i => (i * 53 + 11) % V)], 2, T);
        int layer = model.Config.NLayers - 1, D = model.Config.DModel;
        var plain = model.Run(clean).Logits;
        TensorAssert.Close(plain, model.Run(clean, new RunOptions().AddHook(HookNames.QInput(layer), (x, _) => x)).Logits, 1e-5f, $"{which}: identity hook at hook_q_input");
        var source = model.RunWithCache(corrupt, $"{HookNames.ResidPre(layer)},{HookNames.V(layer)}").Cache;
        int heads = model.Config.KvHeads, head = heads - 1;
        var viaInput = model.Run(clean, new RunOptions().AddHook(HookNames.VInput(layer), (x, _) =>
        {
            CopyHead(source[HookNames.ResidPre(layer)], 1, 0, x, heads, head, D);
            return x;
        })).Logits;
        var viaProjection = model.Run(clean, new RunOptions().AddHook(HookNames.V(layer), (x, _) =>
        {
            CopyHead(source[HookNames.V(layer)], heads, head, x, heads, head, model.Config.DHead);
            return x;
        })).Logits;
        TensorAssert.Close(viaProjection, viaInput, 1e-5f, $"{which}: hook_v_input head {head} patched");
        var metric = new LogProb(1);
        TensorAssert.Close(model.RunWithGradients(clean, metric, HookNames.ResidPre(layer)).Gradients[HookNames.ResidPre(layer)],
            model.RunWithGradients(clean, metric, $"{HookNames.ResidPre(layer)},{HookNames.VInput(layer)}").Gradients[HookNames.ResidPre(layer)], 1e-5f, $"{which}: d resid_pre");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void PatchingOneHeadsInputEqualsPatchingThatHeadsProjection(string arch)
    {
        using var model = TestModels.Load(arch);
        var c = model.Config;
        var corrupt = model.RunWithCache(Corrupt, $"{HookNames.ResidPre(Layer)},{HookNames.Q(Layer)},{HookNames.K(Layer)},{HookNames.V(Layer)}").Cache;
        int D = c.DModel;
        foreach (var (input, projection, heads) in new[] { (HookNames.QInput(Layer), HookNames.Q(Layer), c.NHeads), (HookNames.KInput(Layer), HookNames.K(Layer), c.KvHeads), (HookNames.VInput(Layer), HookNames.V(Layer), c.KvHeads) })
        {
            int head = heads - 1;
            var viaInput = model.Run(Clean, new RunOptions().AddHook(input, (x, _) =>
            {
                CopyHead(corrupt[HookNames.ResidPre(Layer)], 1, 0, x, heads, head, D);
                return x;
            })).Logits;
            var viaProjection = model.Run(Clean, new RunOptions().AddHook(projection, (x, _) =>
            {
                CopyHead(corrupt[projection], heads, head, x, heads, head, c.DHead);
                return x;
            })).Logits;
            TensorAssert.Close(viaProjection, viaInput, 1e-5f, $"{arch}: {input} head {head} patched from the corrupt run");
            Assert.False(viaInput.ToCpu().Span.SequenceEqual(model.Run(Clean).Logits.ToCpu().Span), $"{arch}: the patch at {input} changed nothing");
        }
    }

    [Fact]
    public void AnEditAtAttnInReachesThatHeadsQueryKeyAndValue()
    {
        using var model = TestModels.Load("gpt2");
        int D = model.Config.DModel, H = model.Config.NHeads, dh = model.Config.DHead, head = 2;
        var corrupt = model.RunWithCache(Corrupt, $"{HookNames.ResidPre(Layer)},{HookNames.Q(Layer)},{HookNames.K(Layer)},{HookNames.V(Layer)}").Cache;
        var viaAttnIn = model.Run(Clean, new RunOptions().AddHook(HookNames.AttnIn(Layer), (x, _) =>
        {
            CopyHead(corrupt[HookNames.ResidPre(Layer)], 1, 0, x, H, head, D);
            return x;
        })).Logits;
        var options = new RunOptions();
        foreach (var name in new[] { HookNames.Q(Layer), HookNames.K(Layer), HookNames.V(Layer) })
            options.AddHook(name, (x, _) =>
            {
                CopyHead(corrupt[name], H, head, x, H, head, dh);
                return x;
            });
        TensorAssert.Close(model.Run(Clean, options).Logits, viaAttnIn, 1e-5f, "gpt2: hook_attn_in head 2 patched");
        // Read together with hook_q_input, the query input is a copy of hook_attn_in (TransformerLens would ignore the edit there).
        var both = model.RunWithCache(Clean, HookNames.QInput(Layer), new RunOptions().AddHook(HookNames.AttnIn(Layer), (x, _) =>
        {
            CopyHead(corrupt[HookNames.ResidPre(Layer)], 1, 0, x, H, head, D);
            return x;
        }));
        TensorAssert.Close(viaAttnIn, both.Logits, 1e-6f, "gpt2: hook_attn_in edited with hook_q_input read");
        var q = both.Cache[HookNames.QInput(Layer)].Span;
        var expected = corrupt[HookNames.ResidPre(Layer)].Span;
        Assert.True(q.Slice(head * D, D).SequenceEqual(expected[..D]), "hook_q_input of head 2 is not the edited hook_attn_in");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void TheirGradientsAreEachHeadsShareOfTheStreams(string arch)
    {
        using var model = TestModels.Load(arch);
        var metric = new LogProb(17);
        string inputs = $"{HookNames.QInput(Layer)},{HookNames.KInput(Layer)},{HookNames.VInput(Layer)}";
        var plain = model.RunWithGradients(Clean, metric, HookNames.ResidPre(Layer));
        var split = model.RunWithGradients(Clean, metric, $"{HookNames.ResidPre(Layer)},{HookNames.AttnOut(Layer)},{inputs}");
        Assert.Equal(plain.Metric, split.Metric, 1e-5);
        // The split backward gives the stream the fused backward's gradient.
        TensorAssert.Close(plain.Gradients[HookNames.ResidPre(Layer)], split.Gradients[HookNames.ResidPre(Layer)], 1e-5f, $"{arch}: d resid_pre");
        // d resid_pre = (what skips attention) + Σ over every head's copy.
        var viaAttention = model.RunWithGradients(Clean, metric, HookNames.ResidPre(Layer),
            new RunOptions().AddGradientHook(HookNames.AttnOut(Layer), (g, _) => Tensor.Zeros(g.Shape.ToArray()))).Gradients[HookNames.ResidPre(Layer)];
        var sum = viaAttention.Clone();
        int D = model.Config.DModel, rows = Clean.Batch * Clean.Length;
        foreach (var name in inputs.Split(','))
        {
            var g = split.Gradients[name];
            int heads = g.Dim(2);
            var span = g.Span;
            var s = sum.Span;
            for (int r = 0; r < rows; r++)
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < D; i++) s[r * D + i] += span[(r * heads + h) * D + i];
        }
        TensorAssert.Close(split.Gradients[HookNames.ResidPre(Layer)], sum, 1e-5f, $"{arch}: skip + Σ per-head input gradients");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void DifferentiatingOneInputLeavesTheStreamsGradientAsItWas(string arch)
    {
        // The other two parts read the one normalised stream (no copies); their gradients join the stream's through ln1 once.
        using var model = TestModels.Load(arch);
        var metric = new LogProb(17);
        var plain = model.RunWithGradients(Clean, metric, HookNames.ResidPre(Layer)).Gradients[HookNames.ResidPre(Layer)];
        foreach (var name in new[] { HookNames.QInput(Layer), HookNames.KInput(Layer), HookNames.VInput(Layer) })
        {
            var split = model.RunWithGradients(Clean, metric, $"{HookNames.ResidPre(Layer)},{name}");
            Assert.True(split.Gradients.Contains(name));
            TensorAssert.Close(plain, split.Gradients[HookNames.ResidPre(Layer)], 1e-5f, $"{arch}: d resid_pre with {name} differentiated");
        }
    }

    [Theory]
    [InlineData("gpt2", "hook_q_input")]
    [InlineData("gpt_neox", "hook_k_input")]
    [InlineData("llama", "hook_v_input")]
    [InlineData("gemma2", "hook_q_input")]
    [InlineData("gpt2", "hook_attn_in")]
    public void TheGradientMatchesFiniteDifferences(string arch, string hook)
    {
        using var model = TestModels.Load(arch);
        var metric = new LogProb(17);
        string name = $"blocks.{Layer}.{hook}";
        var g = model.RunWithGradients(Clean, metric, name).Gradients[name];
        var span = g.Span;
        int at = 0;
        for (int i = 1; i < span.Length; i++) if (MathF.Abs(span[i]) > MathF.Abs(span[at])) at = i;
        const float eps = 1e-2f;
        double Shifted(float by) => model.RunWithGradients(Clean, metric, HookNames.ResidPre(Layer), new RunOptions().AddHook(name, (x, _) =>
        {
            x.Span[at] += by;
            return x;
        })).Metric;
        double fd = (Shifted(eps) - Shifted(-eps)) / (2 * eps);
        Assert.True(Math.Abs(fd - span[at]) <= 2e-3 + 2e-2 * Math.Abs(span[at]), $"{arch} {name}[{at}]: gradient {span[at]:G5}, finite difference {fd:G5}");
    }

    [Fact]
    public void Ln1sHooksCannotRunBesideAnEditedSplitInputAndARecordOfThemSaysWhy()
    {
        using var model = TestModels.Load("gpt2");
        var edit = new RunOptions().AddHook(HookNames.QInput(Layer), (x, _) => x).AddHook($"blocks.{Layer}.ln1.hook_normalized", (x, _) => x);
        var e = Assert.Throws<InputError>(() => model.Run(Clean, edit));
        Assert.Contains($"blocks.{Layer}.ln1.hook_normalized", e.Message);
        Assert.Contains($"blocks.{Layer}.hook_q_input", e.Message);
        var cached = model.RunWithCache(Clean, $"blocks.*.ln1.hook_scale", new RunOptions().AddHook(HookNames.QInput(Layer), (x, _) => x)).Cache;
        Assert.True(cached.Contains($"blocks.{Layer - 1}.ln1.hook_scale")); // other blocks are not split
        var missing = Assert.Throws<KeyNotFoundException>(() => cached[$"blocks.{Layer}.ln1.hook_scale"]);
        Assert.Contains("normalised each head's copy", missing.Message);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void WhatTheSplitPassShowedAHookIsNeverOverwritten(string arch)
    {
        // Hooks at every block's per-head inputs and at other points after them: the pass reuses the storage of what no hook saw.
        using var model = TestModels.Load(arch);
        var seen = new List<(string Name, Tensor Kept, float[] AtTheTime)>();
        var options = new RunOptions();
        foreach (var name in model.HookPointNames.Where(n => HookNames.IsPerHeadInput(n) || n.EndsWith("hook_z", StringComparison.Ordinal) || n.EndsWith("hook_resid_post", StringComparison.Ordinal)))
            options.AddHook(name, (t, ctx) =>
            {
                seen.Add((ctx.Name, t, t.ToCpu().Span.ToArray()));
                return t;
            });
        foreach (var name in model.HookPointNames.Where(HookNames.IsPerHeadInput))
            options.AddGradientHook(name, (t, ctx) =>
            {
                seen.Add(("∇ " + ctx.Name, t, t.ToCpu().Span.ToArray()));
                return t;
            });
        var result = model.RunWithGradients(Clean, new LogProb(17), HookNames.ResidPre(0), options);
        TensorAssert.Close(model.Run(Clean).Logits, result.Logits, 1e-5f, $"{arch}: logits");
        Assert.Contains(seen, s => s.Name.StartsWith('∇'));
        foreach (var (name, kept, atTheTime) in seen)
            Assert.True(atTheTime.AsSpan().SequenceEqual(kept.ToCpu().Span), $"{arch}: the tensor hooked at {name} was overwritten later");
    }

    [Fact]
    public void GenerationWithAKvCacheRunsTheSplitPass()
    {
        using var model = TestModels.Load("llama");
        int[] prompt = [82, 87, 74, 39, 184];
        var plain = model.Generate([prompt], new Generation.GenerationOptions(6))[0];
        var options = new RunOptions().AddHook(HookNames.KInput(Layer), (x, _) => x);
        var split = model.Generate([prompt], new Generation.GenerationOptions(6), options)[0];
        Assert.Equal(plain, split);
    }

    /// <summary>Copies head <paramref name="fromHead"/> of <paramref name="from"/> (<paramref name="fromHeads"/> per row) into head <paramref name="toHead"/> of <paramref name="to"/>, every row.</summary>
    static void CopyHead(Tensor from, int fromHeads, int fromHead, Tensor to, int toHeads, int toHead, int width)
    {
        var src = from.ToCpu().Span;
        var dst = to.Span;
        int rows = to.Length / (toHeads * width);
        for (int r = 0; r < rows; r++)
            src.Slice((r * fromHeads + fromHead) * width, width).CopyTo(dst.Slice((r * toHeads + toHead) * width, width));
    }
}
