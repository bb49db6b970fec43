using Loupe.Causal.Patchscopes;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Testing;

namespace Loupe.Causal.Tests.Patchscopes;

/// <summary>
/// The Patchscopes protocol on models whose answer is known: patching a prompt's own activation back changes nothing;
/// a planted vector — a token's unembedding direction at many times the layer's norm, placed before the last block —
/// makes the model say that token; the activation read is the cached one.
/// </summary>
public class PatchscopeTests
{
    static HookedTransformer Gpt2() => ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
    static readonly int[] Prompt = [82, 87, 74, 39, 184, 175, 214, 409, 305, 33, 71, 171];

    [Fact]
    public void PatchingAPromptsOwnActivationBackChangesNothing()
    {
        using var model = Gpt2();
        var plain = model.Generate([Prompt], new GenerationOptions(MaxNewTokens: 6, Temperature: 0, StopAtEos: false))[0];
        for (int layer = 0; layer < model.Config.NLayers; layer++)
        {
            var own = Patchscope.Read(model, Prompt, layer, 7);
            var reading = Patchscope.Run(model, Prompt, 7, own, [layer], newTokens: 6).Single();
            Assert.Equal(layer, reading.TargetLayer);
            Assert.Equal(plain, reading.Tokens);
        }
    }

    [Fact]
    public void APlantedUnembeddingDirectionIsSaid()
    {
        using var model = Gpt2();
        int L = model.Config.NLayers;
        double norm = Patchscope.TypicalNorm(model, Prompt, L - 1);
        foreach (int token in new[] { 17, 300, 511 })
        {
            var direction = model.UnembedDirection(token);
            double length = Math.Sqrt(direction.Sum(x => (double)x * x));
            var planted = direction.Select(x => (float)(x / length * 50 * norm)).ToArray();
            var reading = Patchscope.Run(model, Prompt, -1, planted, [L - 1], newTokens: 1).Single();
            Assert.Equal(token, reading.TopNext[0].Token);
            Assert.Equal(token, reading.Tokens[0]);
        }
    }

    [Fact]
    public void TheActivationReadIsTheCachedOneAndBadArgumentsAreRefused()
    {
        using var model = Gpt2();
        int D = model.Config.DModel;
        var cached = model.RunWithCache(TokenBatch.Single(Prompt), HookNames.ResidPre(1)).Cache[HookNames.ResidPre(1)].ToCpu().Span.Slice(5 * D, D).ToArray();
        Assert.Equal(cached, Patchscope.Read(model, Prompt, 1, 5));
        Assert.Equal(Patchscope.Read(model, Prompt, 1, Prompt.Length - 1), Patchscope.Read(model, Prompt, 1, -1));
        Assert.Throws<ArgumentException>(() => Patchscope.Run(model, Prompt, -1, new float[D + 1], [0]));
        Assert.Throws<ArgumentException>(() => Patchscope.Run(model, Prompt, -1, new float[D], [model.Config.NLayers]));
        Assert.Throws<ArgumentException>(() => Patchscope.Run(model, Prompt, Prompt.Length, new float[D], [0]));
        Assert.Throws<ArgumentOutOfRangeException>(() => Patchscope.Read(model, Prompt, model.Config.NLayers + 1, 0));
    }
}
