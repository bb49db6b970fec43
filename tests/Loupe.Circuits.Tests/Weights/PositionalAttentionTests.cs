using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Weights;

public class PositionalAttentionTests
{
    /// <summary>
    /// "Positions through attention" is the model itself with the token embedding and every MLP output
    /// zeroed: its hook_pattern must equal the patterns computed from the weights.
    /// </summary>
    [Fact]
    public void ThroughAttentionMatchesTheModelWithTokensAndMlpsZeroed()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var w = AttentionWeights.FromModel(model);
        const int P = 20;
        var positional = PositionalAttention.Compute(w, P, PositionalMode.ThroughAttention, keepPatterns: true);
        static Tensors.Tensor? Zero(Tensors.Tensor x, HookContext _) { var y = x.Clone(); y.Span.Clear(); return y; }
        var options = new RunOptions { CacheFilter = n => n.EndsWith("hook_pattern", StringComparison.Ordinal) }.AddHook("hook_embed", Zero);
        for (int l = 0; l < w.NLayers; l++) options.AddHook($"blocks.{l}.hook_mlp_out", Zero);
        var cache = model.Run(TokenBatch.Single([.. Enumerable.Range(3, P)]), options).Cache;
        for (int l = 0; l < w.NLayers; l++)
        {
            var actual = cache[$"blocks.{l}.attn.hook_pattern"].Span; // [1, head_index, q, k]
            for (int h = 0; h < w.NHeads; h++)
            {
                var expected = positional.Patterns![l * w.NHeads + h];
                for (int i = 0; i < P * P; i++)
                    Assert.InRange(actual[h * P * P + i], expected[i] - 1e-4, expected[i] + 1e-4);
            }
        }
        foreach (double s in positional.PreviousTokenScores.Concat(positional.PreviousAmongEarlierScores)) Assert.InRange(s, 0, 1);
    }

    [Fact]
    public void LayerAlonePatternsAreCausalDistributions()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var w = AttentionWeights.FromModel(model);
        var pattern = PositionalAttention.PatternAlone(w, 1, 2, 16);
        for (int q = 0; q < 16; q++)
        {
            Assert.InRange(pattern.AsSpan(q * 16, 16).ToArray().Sum(), 1 - 1e-12, 1 + 1e-12);
            for (int k = q + 1; k < 16; k++) Assert.Equal(0, pattern[q * 16 + k]);
        }
    }

    [Fact]
    public void WeightsWithoutPositionsAreRefused()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        var e = Assert.Throws<InputError>(() => PositionalAttention.Compute(AttentionWeights.FromModel(model)));
        Assert.Contains("position", e.Message);
    }

    /// <summary>
    /// Real GPT-2 small (attention-only checkpoint): 4.11, the classic previous-token head, is found from
    /// the weights alone, and its strongest K-composition partners are in later layers and include one of
    /// the known induction heads (5.1, 5.5, 6.9, 7.10).
    /// </summary>
    [RequiresSharedFact("models/gpt2-small-attention")]
    public void Gpt2SmallPreviousTokenHeadsAndTheirKeyPartners()
    {
        var report = CompositionReport.Build(AttentionWeights.Load(SharedData.Require("models/gpt2-small-attention")));
        Assert.NotEmpty(report.PreviousTokenHeads);
        var top = report.PreviousTokenHeads[0];
        Assert.Equal("L4H11", top.Head);
        Assert.InRange(top.PreviousTokenScore, 0.8, 1);
        foreach (var head in report.PreviousTokenHeads)
        {
            Assert.Equal(5, head.KPartners.Count);
            Assert.All(head.KPartners, p => Assert.True(p.Layer > head.Layer && p.Score is > 0 and <= 1));
        }
        Assert.Contains(top.KPartners, p => p.Head is "L5H1" or "L5H5" or "L6H9" or "L7H10");
        string dir = Path.Combine(Path.GetTempPath(), "loupe-composition-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (json, svg) = report.Write(dir);
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
            Assert.Equal(144, doc.RootElement.GetProperty("composition").GetProperty("k").GetArrayLength());
            Assert.StartsWith("<svg", File.ReadAllText(svg));
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
    }
}
