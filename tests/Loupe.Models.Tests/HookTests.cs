using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>Reading and replacing activations by hook name.</summary>
public class HookTests
{
    static readonly int[] Prompt = [82, 87, 74, 39, 184, 175, 214, 409];

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void CacheHoldsOnlyRequestedHooks(string arch)
    {
        using var model = TestModels.Load(arch);
        var result = model.RunWithCache(TokenBatch.Single(Prompt), "blocks.*.hook_resid_pre,blocks.1.attn.hook_pattern");
        var expected = Enumerable.Range(0, model.Config.NLayers).Select(HookNames.ResidPre).Append(HookNames.Pattern(1)).Order();
        Assert.Equal(expected, result.Cache.Names.Order());
        Assert.Equal([1, model.Config.NHeads, Prompt.Length, Prompt.Length], result.Cache[HookNames.Pattern(1)].Shape.ToArray());
    }

    [Fact]
    public void HookPointNamesFollowTransformerLens()
    {
        using var model = TestModels.Load("gemma2");
        var names = model.HookPointNames;
        foreach (var n in new[] { "hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale", "blocks.0.ln1.hook_normalized",
                     "blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k",
                     "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.0.attn.hook_result",
                     "blocks.0.ln1_post.hook_normalized", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.ln2.hook_normalized",
                     "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post", "blocks.0.ln2_post.hook_normalized",
                     "blocks.0.hook_mlp_out", "blocks.3.hook_resid_post", "ln_final.hook_scale", "ln_final.hook_normalized" })
            Assert.Contains(n, names);
        using var gpt2 = TestModels.Load("gpt2");
        Assert.Contains("hook_pos_embed", gpt2.HookPointNames);
        Assert.DoesNotContain("blocks.0.attn.hook_rot_q", gpt2.HookPointNames);
        using var neox = TestModels.Load("gpt_neox");
        Assert.DoesNotContain("blocks.0.hook_resid_mid", neox.HookPointNames); // parallel residual
    }

    [Fact]
    public void ResidualStreamDecomposesIntoComponents()
    {
        using var model = TestModels.Load("llama");
        var c = model.RunWithCache(TokenBatch.Single(Prompt)).Cache;
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var expected = new float[c[HookNames.ResidPre(l)].Length];
            for (int i = 0; i < expected.Length; i++)
                expected[i] = c[HookNames.ResidPre(l)].Span[i] + c[HookNames.AttnOut(l)].Span[i] + c[HookNames.MlpOut(l)].Span[i];
            ReferenceFixture.AssertClose(expected, c[HookNames.ResidPost(l)].Span, 1e-5f, $"resid_post.{l}");
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    public void PerHeadResultsSumToAttentionOutput(string arch)
    {
        using var model = TestModels.Load(arch);
        var c = model.RunWithCache(TokenBatch.Single(Prompt), "blocks.1.attn.hook_result,blocks.1.hook_attn_out").Cache;
        var result = c[HookNames.Result(1)];
        var attnOut = c[HookNames.AttnOut(1)];
        int H = model.Config.NHeads, D = model.Config.DModel, rows = Prompt.Length;
        // attn_out = Σ_h result_h + b_O; recover b_O from the first row, check every row agrees.
        var bias = new float[D];
        for (int d = 0; d < D; d++)
        {
            float sum = 0;
            for (int h = 0; h < H; h++) sum += result.Span[h * D + d];
            bias[d] = attnOut.Span[d] - sum;
        }
        for (int r = 1; r < rows; r++)
            for (int d = 0; d < D; d++)
            {
                float sum = bias[d];
                for (int h = 0; h < H; h++) sum += result.Span[(r * H + h) * D + d];
                Assert.Equal(attnOut.Span[r * D + d], sum, 1e-4f);
            }
        // Asking for hook_result must not change the output.
        var plain = model.Run(Prompt).Logits;
        var withResult = model.RunWithCache(TokenBatch.Single(Prompt), "blocks.*.attn.hook_result").Logits;
        ReferenceFixture.AssertClose(plain.Span, withResult.Span, 1e-4f, "logits with hook_result");
    }

    [Fact]
    public void ZeroAblatingAHeadThroughZEqualsRemovingItsResult()
    {
        using var model = TestModels.Load("gpt2");
        const int layer = 1, head = 2;
        int D = model.Config.DModel, H = model.Config.NHeads, dh = model.Config.DHead;
        var ablated = model.Run(Prompt, new RunOptions().AddHook(HookNames.Z(layer), (z, _) =>
        {
            for (int p = 0; p < Prompt.Length; p++) z.Span.Slice((p * H + head) * dh, dh).Clear();
            return z;
        })).Logits;
        var viaResult = model.Run(Prompt, new RunOptions().AddHook(HookNames.Result(layer), (r, _) =>
        {
            for (int p = 0; p < Prompt.Length; p++) r.Span.Slice((p * H + head) * D, D).Clear();
            return r;
        })).Logits;
        var clean = model.Run(Prompt).Logits;
        ReferenceFixture.AssertClose(ablated.Span, viaResult.Span, 1e-4f, "z-ablation vs result-ablation");
        Assert.True(MaxDiff(clean.Span, ablated.Span) > 1e-3f, "ablating a head should change the logits");
    }

    [Fact]
    public void ReplacingAPositionOnlyAffectsLaterPositions()
    {
        using var model = TestModels.Load("llama");
        const int pos = 4;
        int D = model.Config.DModel, V = model.Config.VocabOut;
        var clean = model.Run(Prompt).Logits;
        var patched = model.Run(Prompt, new RunOptions().AddHook(HookNames.ResidPre(1), (x, _) =>
        {
            var y = x.Clone();
            y.Span.Slice(pos * D, D).Fill(0.5f);
            return y;
        })).Logits;
        Assert.True(MaxDiff(clean.Span[..(pos * V)], patched.Span[..(pos * V)]) == 0, "positions before the patch must be unchanged (causality)");
        Assert.True(MaxDiff(clean.Span.Slice(pos * V, V), patched.Span.Slice(pos * V, V)) > 1e-3f);
    }

    [Fact]
    public void CachedActivationReflectsAnEarlierHooksEdit()
    {
        using var model = TestModels.Load("gpt2");
        var options = new RunOptions { CacheFilter = n => n == HookNames.MlpPost(0) };
        options.AddHook(HookNames.MlpPost(0), (x, _) => Tensor.Zeros(x.Shape.ToArray()));
        var cache = model.Run(Prompt, options).Cache;
        Assert.All(cache[HookNames.MlpPost(0)].Span.ToArray(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void RightPaddedBatchMatchesSeparateRuns()
    {
        using var model = TestModels.Load("qwen2");
        int[] a = [5, 9, 200, 17, 33, 48], b = [300, 2, 7];
        var batch = TokenBatch.FromRows([a, b], padId: 0, PaddingSide.Right);
        var joint = model.Run(batch).Logits;
        var solo = model.Run(b).Logits;
        int V = model.Config.VocabOut;
        ReferenceFixture.AssertClose(solo.Span, joint.Span.Slice(6 * V, 3 * V), 1e-4f, "row b in a right-padded batch");
    }

    [Fact]
    public void LeftPaddedBatchMatchesSeparateRuns()
    {
        using var model = TestModels.Load("gemma2");
        int[] a = [5, 9, 200, 17, 33, 48], b = [300, 2, 7];
        var joint = model.Run(TokenBatch.FromRows([a, b], padId: 0, PaddingSide.Left)).Logits;
        var solo = model.Run(b).Logits;
        int V = model.Config.VocabOut;
        ReferenceFixture.AssertClose(solo.Span, joint.Span.Slice((6 + 3) * V, 3 * V), 1e-4f, "row b in a left-padded batch");
    }

    internal static float MaxDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        float m = 0;
        for (int i = 0; i < a.Length; i++) m = MathF.Max(m, MathF.Abs(a[i] - b[i]));
        return m;
    }
}

/// <summary>Generation with a KV cache against recomputing everything, sampling, and hooks during generation.</summary>
public class GenerationTests
{
    static readonly int[] Prompt = [82, 87, 74, 39, 184];

    static int[] GreedyWithoutCache(HookedTransformer model, int[] prompt, int n)
    {
        var seq = prompt.ToList();
        var output = new List<int>();
        int V = model.Config.VocabOut;
        for (int i = 0; i < n; i++)
        {
            var logits = model.Run(seq.ToArray()).Logits.Span.Slice((seq.Count - 1) * V, V);
            int best = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
            output.Add(best);
            seq.Add(best);
        }
        return output.ToArray();
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("gemma2")]
    public void KvCacheGreedyEqualsFullRecomputation(string arch)
    {
        using var model = TestModels.Load(arch);
        var expected = GreedyWithoutCache(model, Prompt, 6);
        var actual = model.Generate([Prompt], new GenerationOptions(6, StopAtEos: false))[0];
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void BatchedLeftPaddedGenerationEqualsSeparateGeneration()
    {
        using var model = TestModels.Load("llama");
        int[] shortPrompt = [300, 2, 7];
        var both = model.Generate([Prompt, shortPrompt], new GenerationOptions(5, StopAtEos: false));
        Assert.Equal(model.Generate([Prompt], new GenerationOptions(5, StopAtEos: false))[0], both[0]);
        Assert.Equal(model.Generate([shortPrompt], new GenerationOptions(5, StopAtEos: false))[0], both[1]);
    }

    [Fact]
    public void SamplingIsReproducibleBySeed()
    {
        using var model = TestModels.Load("gpt2");
        var o = new GenerationOptions(12, Temperature: 1.5f, TopK: 50, TopP: 0.95f, Seed: 7, StopAtEos: false);
        var first = model.Generate([Prompt], o)[0];
        Assert.Equal(first, model.Generate([Prompt], o)[0]);
        var other = Enumerable.Range(8, 5).Select(s => model.Generate([Prompt], o with { Seed = s })[0]);
        Assert.Contains(other, x => !x.SequenceEqual(first));
    }

    [Fact]
    public void TopKOneIsGreedy()
    {
        using var model = TestModels.Load("gpt2");
        var greedy = model.Generate([Prompt], new GenerationOptions(8, StopAtEos: false))[0];
        var topOne = model.Generate([Prompt], new GenerationOptions(8, Temperature: 2f, TopK: 1, Seed: 3, StopAtEos: false))[0];
        Assert.Equal(greedy, topOne);
    }

    [Fact]
    public void HooksRunOnEveryGenerationStep()
    {
        using var model = TestModels.Load("gpt2");
        var steps = new List<(int Step, int Offset, int Positions)>();
        var options = new RunOptions().AddHook(HookNames.ResidPost(0), (x, ctx) =>
        {
            steps.Add((ctx.GenerationStep, ctx.PositionOffset, x.Dim(1)));
            return null;
        });
        model.Generate([Prompt], new GenerationOptions(4, StopAtEos: false), options);
        Assert.Equal([(0, 0, 5), (1, 5, 1), (2, 6, 1), (3, 7, 1)], steps);

        // A hook that edits the residual stream steers generation.
        var steer = new RunOptions().AddHook(HookNames.ResidPost(1), (x, _) =>
        {
            var y = x.Clone();
            for (int i = 0; i < y.Length; i++) y.Span[i] += 3f * MathF.Sin(i);
            return y;
        });
        var plain = model.Generate([Prompt], new GenerationOptions(8, StopAtEos: false))[0];
        var steered = model.Generate([Prompt], new GenerationOptions(8, StopAtEos: false), steer)[0];
        Assert.NotEqual(plain, steered);
    }

    [Fact]
    public void GenerationStopsAtTheContextEnd()
    {
        using var model = TestModels.Load("gpt2");
        var prompt = Enumerable.Range(1, model.Config.NCtx - 3).ToArray();
        var output = model.Generate([prompt], new GenerationOptions(10, StopAtEos: false))[0];
        Assert.Equal(3, output.Length);
    }
}
