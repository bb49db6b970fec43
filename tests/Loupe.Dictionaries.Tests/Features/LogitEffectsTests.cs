using Loupe.Dictionaries.Features;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Features;

public class LogitEffectsTests
{
    [Theory]
    [InlineData("llama")] // RMSNorm, untied lm_head
    [InlineData("gpt2")]  // LayerNorm (centres), tied unembedding
    public void Effects_AreTheLogitChangeFromAddingTheDirection_WithTheFinalScaleFrozen(string arch)
    {
        // Intervene: add u to the last residual stream at one position, hold ln_final's scale at its clean
        // value σ, and compare Δlogits·σ (the effect of u at scale 1) with the computed effects.
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", arch)));
        int D = model.Config.DModel, V = model.Config.VocabOut, features = 3, pos = 4;
        var rng = new Random(8);
        var wDec = Enumerable.Range(0, features * D).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(); // [features, d_model]
        var effects = LogitEffects.Compute(model, wDec, features, top: 6, histogramBins: 7);

        int[] tokens = [5, 80, 17, 300, 42, 9, 111, 7];
        string last = HookNames.ResidPost(model.Config.NLayers - 1);
        var clean = model.Run(tokens, new RunOptions { CacheFilter = h => h == HookNames.FinalScale });
        var scale = clean.Cache[HookNames.FinalScale];
        float sigma = scale.Span[pos];
        for (int f = 0; f < features; f++)
        {
            int feature = f;
            var edited = model.Run(tokens, new RunOptions()
                .AddHook(last, (x, _) =>
                {
                    for (int d = 0; d < D; d++) x.Span[pos * D + d] += wDec[feature * D + d];
                    return x;
                })
                .AddHook(HookNames.FinalScale, (_, _) => scale));
            var delta = Enumerable.Range(0, V).Select(t => ((double)edited.Logits.Span[pos * V + t] - clean.Logits.Span[pos * V + t]) * sigma).ToArray();
            var order = Enumerable.Range(0, V).OrderByDescending(t => delta[t]).ToArray();
            Assert.Equal(6, effects[f].Promoted.Length);
            for (int r = 0; r < 6; r++)
            {
                Assert.Equal(order[r], effects[f].Promoted[r].TokenId);
                Assert.Equal(delta[order[r]], effects[f].Promoted[r].Value, 1e-2);
                Assert.Equal(order[V - 1 - r], effects[f].Suppressed[r].TokenId);
                Assert.Equal(delta[order[V - 1 - r]], effects[f].Suppressed[r].Value, 1e-2);
            }
            Assert.Equal(V, effects[f].HistogramCounts.Sum());
            Assert.Equal(delta.Min(), effects[f].HistogramEdges[0], 1e-2);
            Assert.Equal(delta.Max(), effects[f].HistogramEdges[^1], 1e-2);
        }
    }

    [Fact]
    public void Unavailable_NamesBothWidths()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        Assert.Null(LogitEffects.Unavailable(model, 64));
        var why = LogitEffects.Unavailable(model, 16);
        Assert.Contains("d_out = 16", why);
        Assert.Contains("d_model = 64", why);
        Assert.Throws<ArgumentException>(() => LogitEffects.Compute(model, new float[10], 1, 3, 4));
    }
}
