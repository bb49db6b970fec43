using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>
/// Where <c>hook_normalized</c> sits, as TransformerLens has it: a LayerNorm's is its output (<c>c/σ·w + b</c>), an RMSNorm's
/// is <c>x/σ</c> before the weight. <c>mlp.hook_in</c> (circuit-tracer's) is the MLP's input on both.
/// </summary>
public class NormHookTests
{
    static readonly int[] Prompt = [82, 87, 74, 39, 184, 175, 214, 409];
    const float Tol = 1e-5f;

    [Theory]
    [InlineData("llama")]
    [InlineData("gemma2")]
    [InlineData("qwen3")]
    public void AnRmsNormHooksTheInputOverItsScaleBeforeTheWeight(string arch)
    {
        using var model = TestModels.Load(arch);
        var c = model.RunWithCache(TokenBatch.Single(Prompt)).Cache;
        int D = model.Config.DModel;
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var ln2 = model.Anatomy(l).Ln2!;
            Assert.Equal(NormKind.RmsNorm, ln2.Kind);
            Assert.True(ln2.HooksBeforeWeight);
            var residMid = c[HookNames.ResidMid(l)].Span;
            var scale = c[HookNames.NormScale(l, "ln2")].Span;
            var normalized = c[HookNames.NormNormalized(l, "ln2")].Span;
            var mlpIn = c[HookNames.MlpIn(l)].Span;
            var w = ln2.Weight.Span;
            float worstNormalized = 0, worstIn = 0;
            for (int i = 0; i < residMid.Length; i++)
            {
                float x = residMid[i] / scale[i / D];
                worstNormalized = MathF.Max(worstNormalized, MathF.Abs(x - normalized[i]));
                worstIn = MathF.Max(worstIn, MathF.Abs(x * (w[i % D] + ln2.WeightOffset) - mlpIn[i]));
            }
            Assert.True(worstNormalized <= Tol, $"{arch} layer {l}: ln2.hook_normalized differs from resid_mid / hook_scale by {worstNormalized}");
            Assert.True(worstIn <= Tol * 10, $"{arch} layer {l}: mlp.hook_in differs from ln2.hook_normalized ⊙ w by {worstIn}");
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    public void ALayerNormHooksItsOutputWhichIsTheMlpInput(string arch)
    {
        using var model = TestModels.Load(arch);
        var c = model.RunWithCache(TokenBatch.Single(Prompt)).Cache;
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            Assert.False(model.Anatomy(l).Ln2!.HooksBeforeWeight);
            Assert.Equal(c[HookNames.NormNormalized(l, "ln2")].Span.ToArray(), c[HookNames.MlpIn(l)].Span.ToArray());
        }
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void ReadingHookNormalizedChangesNothingDownstream(string arch)
    {
        // The split path (x/σ, then the weight) runs only when something reads hook_normalized: the logits must be the same bits.
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        var plain = model.Run(tokens).Logits.ToCpu().Span.ToArray();
        var read = model.RunWithCache(tokens, "blocks.*.ln1.hook_normalized,blocks.*.ln2.hook_normalized,ln_final.hook_normalized").Logits.ToCpu().Span.ToArray();
        Assert.Equal(plain, read);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void ReplacingHookNormalizedFeedsTheWeightedValueOn(string arch)
    {
        // Doubling x/σ at ln2 doubles the MLP's input (the weight applies after the hook), as in TransformerLens.
        using var model = TestModels.Load(arch);
        var tokens = TokenBatch.Single(Prompt);
        string hook = HookNames.NormNormalized(1, "ln2");
        var clean = model.RunWithCache(tokens, HookNames.MlpIn(1)).Cache[HookNames.MlpIn(1)].Span.ToArray();
        var options = new RunOptions().AddHook(hook, (x, _) =>
        {
            var y = x.Clone();
            foreach (ref float v in y.Span) v *= 2;
            return y;
        });
        var doubled = model.RunWithCache(tokens, HookNames.MlpIn(1), options).Cache[HookNames.MlpIn(1)].Span.ToArray();
        for (int i = 0; i < clean.Length; i++) Assert.Equal(2 * clean[i], doubled[i], 1e-5f * (1 + MathF.Abs(clean[i])));
    }

    [Fact]
    public void AnEditInPlaceAtHookNormalizedFlowsOn()
    {
        // A hook may edit the activation in place and return it (or null): the edited x/σ, times the weight, is what ln2 outputs.
        using var model = TestModels.Load("llama");
        var tokens = TokenBatch.Single(Prompt);
        var clean = model.RunWithCache(tokens, HookNames.MlpIn(1)).Cache[HookNames.MlpIn(1)].Span.ToArray();
        var options = new RunOptions().AddHook(HookNames.NormNormalized(1, "ln2"), (x, _) =>
        {
            foreach (ref float v in x.Span) v *= -1;
            return null;
        });
        var negated = model.RunWithCache(tokens, HookNames.MlpIn(1), options).Cache[HookNames.MlpIn(1)].Span.ToArray();
        for (int i = 0; i < clean.Length; i++) Assert.Equal(-clean[i], negated[i]);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void TheGradientAtHookNormalizedIsTheMlpInputsTimesTheWeight(string arch)
    {
        using var model = TestModels.Load(arch);
        var result = model.RunWithGradients(TokenBatch.Single(Prompt), new LogProb(17), $"{HookNames.NormNormalized(1, "ln2")},{HookNames.MlpIn(1)}");
        var ln2 = model.Anatomy(1).Ln2!;
        var atNormalized = result.Gradients[HookNames.NormNormalized(1, "ln2")].Span;
        var atIn = result.Gradients[HookNames.MlpIn(1)].Span;
        int D = model.Config.DModel;
        float scale = atIn.ToArray().Max(MathF.Abs);
        Assert.True(scale > 0);
        for (int i = 0; i < atIn.Length; i++)
            Assert.True(MathF.Abs(atIn[i] * (ln2.Weight.Span[i % D] + ln2.WeightOffset) - atNormalized[i]) <= 1e-5f * scale, $"{arch}: gradient {i}");
    }

    [Fact]
    public void OutputFromNormalizedAppliesTheWeightOnlyForAnRmsNorm()
    {
        using var llama = TestModels.Load("llama");
        var c = llama.RunWithCache(TokenBatch.Single(Prompt)).Cache;
        var ln2 = llama.Anatomy(0).Ln2!;
        var output = ln2.OutputFromNormalized(llama.Backend, c[HookNames.NormNormalized(0, "ln2")]).ToCpu().Span.ToArray();
        var mlpIn = c[HookNames.MlpIn(0)].Span.ToArray();
        for (int i = 0; i < output.Length; i++) Assert.Equal(mlpIn[i], output[i], 1e-5f);
        using var gpt2 = TestModels.Load("gpt2");
        var g = gpt2.RunWithCache(TokenBatch.Single(Prompt)).Cache[HookNames.NormNormalized(0, "ln2")];
        Assert.Equal(g.Span.ToArray(), gpt2.Anatomy(0).Ln2!.OutputFromNormalized(gpt2.Backend, g).ToCpu().Span.ToArray());
    }
}
