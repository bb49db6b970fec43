using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>
/// TransformerLens's <c>blocks.L.hook_mlp_in</c> (its <c>use_hook_mlp_in</c>): a copy of the stream the MLP branch reads —
/// resid_mid, or resid_pre in a parallel block — so an edit there reaches the MLP and not the skip path, and the gradient
/// there is the MLP branch's alone.
/// </summary>
public class MlpInputHookTests
{
    static readonly TokenBatch Tokens = new([82, 87, 74, 39, 184, 175, 214, 409, 84, 200, 158, 186, 380, 257, 94, 24], 2, 8);
    const int Layer = 1;

    public static TheoryData<string> Families => new() { "gpt2", "gpt_neox", "llama", "gemma2", "qwen3" };

    static string Stream(HookedTransformer model, int l) => model.Config.ParallelAttnMlp ? HookNames.ResidPre(l) : HookNames.ResidMid(l);

    [Theory]
    [MemberData(nameof(Families))]
    public void ItIsDeclaredAndHoldsTheStreamTheMlpReads(string arch)
    {
        using var model = TestModels.Load(arch);
        var names = model.HookPoints.Select(p => p.Name).ToList();
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            int at = names.IndexOf(HookNames.HookMlpIn(l));
            Assert.True(at >= 0, $"{arch}: blocks.{l}.hook_mlp_in is not declared");
            Assert.True(at < names.IndexOf(HookNames.MlpIn(l)) && at > names.IndexOf(HookNames.AttnOut(l)), $"{arch}: blocks.{l}.hook_mlp_in is out of forward order");
        }
        var cache = model.RunWithCache(Tokens, "blocks.*.hook_mlp_in," + (model.Config.ParallelAttnMlp ? "blocks.*.hook_resid_pre" : "blocks.*.hook_resid_mid")).Cache;
        for (int l = 0; l < model.Config.NLayers; l++)
            Assert.Equal(cache[Stream(model, l)].Span.ToArray(), cache[HookNames.HookMlpIn(l)].Span.ToArray());
    }

    [Fact]
    public void AttentionOnlyModelsHaveNone()
    {
        var cfg = new ModelConfig
        {
            Architecture = "transformer_lens", NLayers = 2, DModel = 48, NHeads = 4, DHead = 12, DVocab = 128, NCtx = 64,
            AttnOnly = true, Normalization = NormKind.None,
        };
        Assert.DoesNotContain(Loupe.Models.Hooks.HookPoints.Declare(cfg), p => p.Name.EndsWith(".hook_mlp_in", StringComparison.Ordinal));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void ReadingItChangesNothing(string arch)
    {
        using var model = TestModels.Load(arch);
        var plain = model.Run(Tokens).Logits.ToCpu().Span.ToArray();
        var read = model.RunWithCache(Tokens, "blocks.*.hook_mlp_in").Logits.ToCpu().Span.ToArray();
        Assert.Equal(plain, read);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void AnEditThereReachesTheMlpButNotTheSkipPath(string arch)
    {
        using var model = TestModels.Load(arch);
        string stream = Stream(model, Layer), mlpIn = HookNames.HookMlpIn(Layer);
        string read = $"{stream},{HookNames.AttnOut(Layer)},{HookNames.MlpOut(Layer)},{HookNames.ResidPost(Layer)}";
        var clean = model.RunWithCache(Tokens, read).Cache;
        // The same scaling (in place at hook_mlp_in, as a replacement at the stream) gives the MLP the same input.
        var atMlpIn = model.RunWithCache(Tokens, read, new RunOptions().AddHook(mlpIn, (x, _) =>
        {
            foreach (ref float v in x.Span) v *= 1.5f;
            return x;
        })).Cache;
        var atStream = model.RunWithCache(Tokens, read, new RunOptions().AddHook(stream, (x, _) =>
        {
            var y = x.Clone();
            foreach (ref float v in y.Span) v *= 1.5f;
            return y;
        })).Cache;
        TensorAssert.Close(atStream[HookNames.MlpOut(Layer)], atMlpIn[HookNames.MlpOut(Layer)], 1e-5f, $"{arch}: mlp_out after the edit at hook_mlp_in");
        Assert.NotEqual(clean[HookNames.MlpOut(Layer)].Span.ToArray(), atMlpIn[HookNames.MlpOut(Layer)].Span.ToArray());
        // The stream itself (and attention, which reads it in a parallel block) is untouched: it flows on unscaled.
        Assert.Equal(clean[stream].Span.ToArray(), atMlpIn[stream].Span.ToArray());
        Assert.Equal(clean[HookNames.AttnOut(Layer)].Span.ToArray(), atMlpIn[HookNames.AttnOut(Layer)].Span.ToArray());
        var expected = clean[stream].Clone();
        var add = atMlpIn[HookNames.MlpOut(Layer)].Span;
        var span = expected.Span;
        for (int i = 0; i < span.Length; i++) span[i] += add[i];
        if (model.Config.ParallelAttnMlp)
        {
            var attn = clean[HookNames.AttnOut(Layer)].Span;
            for (int i = 0; i < span.Length; i++) span[i] += attn[i];
        }
        TensorAssert.Close(expected, atMlpIn[HookNames.ResidPost(Layer)], 1e-5f, $"{arch}: resid_post = stream (+ attn_out) + the edited mlp_out");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void ItsGradientIsTheMlpBranchsShareOfResidMids(string arch)
    {
        // resid_post = resid_mid + mlp(ln2(hook_mlp_in)): d resid_mid = d resid_post + d hook_mlp_in.
        using var model = TestModels.Load(arch);
        var result = model.RunWithGradients(Tokens, new LogProb(17), $"{HookNames.ResidMid(Layer)},{HookNames.ResidPost(Layer)},{HookNames.HookMlpIn(Layer)}");
        var sum = result.Gradients[HookNames.ResidPost(Layer)].Clone();
        var viaMlp = result.Gradients[HookNames.HookMlpIn(Layer)].Span;
        var span = sum.Span;
        for (int i = 0; i < span.Length; i++) span[i] += viaMlp[i];
        TensorAssert.Close(sum, result.Gradients[HookNames.ResidMid(Layer)], 1e-6f, $"{arch}: d resid_mid");
        Assert.Contains(viaMlp.ToArray(), v => v != 0);
    }

    [Fact]
    public void ZeroingItsGradientLeavesOnlyTheSkipPath()
    {
        using var model = TestModels.Load("llama");
        var metric = new LogProb(17);
        string mid = HookNames.ResidMid(Layer), post = HookNames.ResidPost(Layer);
        var cut = model.RunWithGradients(Tokens, metric, $"{mid},{post}",
            new RunOptions().AddGradientHook(HookNames.HookMlpIn(Layer), (g, _) => Tensor.Zeros(g.Shape.ToArray())));
        Assert.Equal(cut.Gradients[post].Span.ToArray(), cut.Gradients[mid].Span.ToArray());
    }
}
