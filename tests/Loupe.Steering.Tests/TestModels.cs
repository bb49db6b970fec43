using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Steering.Tests;

/// <summary>Models shared by the tests (loaded once; forward passes do not share state).</summary>
static class TestModels
{
    static readonly Lazy<HookedTransformer> s_llama = new(() => ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "llama"))));
    static readonly Lazy<HookedTransformer> s_stories = new(() => ModelLoader.LoadFolder(SharedData.Require("models/stories260K")));

    /// <summary>The committed random-weight llama fixture: 3 layers, d_model 64, d_mlp 176, d_vocab 512, no tokenizer.</summary>
    public static HookedTransformer Llama => s_llama.Value;

    /// <summary>stories260K (callers are guarded by RequiresSharedFact).</summary>
    public static HookedTransformer Stories => s_stories.Value;

    /// <summary>A deterministic pseudo-random vector.</summary>
    public static float[] RandomVector(int n, int seed, float scale = 1f)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() * 2 - 1) * scale).ToArray();
    }

    /// <summary>A token sequence starting with BOS (1) followed by ids in [3, 500).</summary>
    public static int[] Tokens(int length, int seed)
    {
        var random = new Random(seed);
        return [1, .. Enumerable.Range(0, length - 1).Select(_ => random.Next(3, 500))];
    }
}
