using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Features;

/// <summary>
/// A tiny model (the HF-checked llama fixture: d_model 64, 3 layers, vocab 512, no tokenizer), random-id
/// contexts, and a seeded ReLU SAE on blocks.1.hook_resid_post whose encoder biases spread the features
/// from dense to rare, with one dead feature.
/// </summary>
static class FeatureFixture
{
    public const string Hook = "blocks.1.hook_resid_post";
    public const int DSae = 40, Dead = 7, ContextSize = 16;

    static readonly Lazy<HookedTransformer> s_model = new(() => ModelLoader.LoadFolder(SharedData.TestData("reference/llama")));

    public static HookedTransformer Model => s_model.Value;

    public static HarvestContexts Contexts(int documents = 60, int seed = 3)
    {
        var rng = new Random(11);
        var docs = Enumerable.Range(0, documents).Select(_ => Enumerable.Range(0, rng.Next(3, 20)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        return ContextBuilder.Build(docs, new ContextOptions(ContextSize, BosTokenId: 1, SeparatorTokenId: 2, Seed: seed), "random ids");
    }

    public static (SparseDictionary Dictionary, SaeLensConfig Config) Dictionary(int dIn = 64, string hook = Hook)
    {
        var dict = new SparseDictionary(SaeShape.Sae(dIn, DSae, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(seed: 5, decoderNorm: 1f);
        // Biases from 0 down to −1.2 make densities range from about half the tokens to a handful.
        for (int f = 0; f < DSae; f++) dict.P.BEnc[f] = -0.03f * f;
        dict.P.BEnc[Dead] = -1e4f;
        return (dict, new SaeLensConfig { DIn = dIn, DSae = DSae, DOut = dIn, HookName = hook, ApplyBDecToInput = false });
    }

    /// <summary>Feature activations of every token, computed in one forward pass and one encode: <c>[n_contexts·n, d_sae]</c>.</summary>
    public static float[] BruteForceActs(SparseDictionary dict, HarvestContexts contexts, string hook = Hook)
    {
        int n = contexts.ContextSize;
        var ids = contexts.Contexts.SelectMany(c => c).ToArray();
        var result = Model.Run(new TokenBatch(ids, contexts.Count, n), new RunOptions { CacheFilter = h => h == hook });
        return dict.Encode(result.Cache[hook].Span, contexts.Count * n);
    }

    /// <summary>(activation, context, position) of a feature's active tokens, BOS excluded, best first (ties to the earlier token).</summary>
    public static List<(float Act, int Context, int Position)> ActiveTokens(float[] acts, int contexts, int feature)
    {
        var list = new List<(float, int, int)>();
        for (int c = 0; c < contexts; c++)
            for (int p = 1; p < ContextSize; p++)
            {
                float a = acts[(c * ContextSize + p) * DSae + feature];
                if (a > 0) list.Add((a, c, p));
            }
        return list.OrderByDescending(t => t.Item1).ThenBy(t => t.Item2).ThenBy(t => t.Item3).ToList();
    }
}
