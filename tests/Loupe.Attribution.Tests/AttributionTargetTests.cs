using System.Text.Json;
using Loupe.Attribution.Graph;
using Loupe.Models;

namespace Loupe.Attribution.Tests;

/// <summary>
/// Explicit attribution targets (circuit-tracer's attribution_targets), checked by linearity: a token target's row is the
/// salient graph's row for that token; a logit difference's row is the difference of the two tokens' rows; a custom
/// direction equal to a token's demeaned unembedding gives that token's row. Virtual ids and labels reach the files.
/// </summary>
public sealed class AttributionTargetTests : IDisposable
{
    readonly string _folder = Directory.CreateTempSubdirectory("loupe-targets").FullName;

    public void Dispose() => Directory.Delete(_folder, true);

    static readonly int[] Prompt = FixtureAttributionTests.Prompt;

    static void RowsClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = 0, worst = 0;
        for (int i = 0; i < expected.Length; i++) scale = Math.Max(scale, Math.Abs(expected[i]));
        for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
        Assert.True(worst <= 1e-5 * Math.Max(1, scale), $"{what}: max |Δ| = {worst:g3} (largest {scale:g3})");
    }

    [Fact]
    public void Token_targets_give_the_salient_graphs_rows_in_the_order_given()
    {
        using var model = FixtureAttributionTests.Model();
        var tc = FixtureAttributionTests.Transcoders(model);
        var salient = new Attributor(model, tc, new AttributionSettings { MaxLogits = 3, LogitProbability = 1 }).Attribute(Prompt);
        Assert.Equal(3, salient.LogitTokens.Length);
        int[] order = [salient.LogitTokens[2], salient.LogitTokens[0]];
        var given = new Attributor(model, tc, new AttributionSettings { Targets = [.. order.Select(AttributionTarget.Token)] }).Attribute(Prompt);

        Assert.Equal(order, given.LogitTokens);
        Assert.Equal([salient.LogitProbabilities[2], salient.LogitProbabilities[0]], given.LogitProbabilities);
        Assert.Equal(salient.SelectedFeatures, given.SelectedFeatures);
        // rows over the sources (features, errors, tokens: the graphs differ only in how many logit columns follow)
        int sources = given.LogitOffset;
        RowsClose(salient.Row(salient.LogitOffset + 2)[..sources], given.Row(given.LogitOffset)[..sources], "target 0");
        RowsClose(salient.Row(salient.LogitOffset)[..sources], given.Row(given.LogitOffset + 1)[..sources], "target 1");
        // the feature rows do not depend on the targets when every feature is a node
        for (int f = 0; f < given.SelectedFeatures.Length; f++) RowsClose(salient.Row(f)[..sources], given.Row(f)[..sources], $"feature row {f}");
        Assert.All(given.LogitLabels!, Assert.Null);
        Assert.Equal(2, given.LogitVectors!.Length);
    }

    [Fact]
    public void A_logit_difference_is_the_difference_of_the_two_tokens_rows_and_a_custom_vector_is_applied_as_given()
    {
        using var model = FixtureAttributionTests.Model();
        var tc = FixtureAttributionTests.Transcoders(model);
        var top = new Attributor(model, tc, new AttributionSettings { MaxLogits = 2, LogitProbability = 1 }).Attribute(Prompt);
        int x = top.LogitTokens[0], y = top.LogitTokens[1], V = model.Config.VocabOut;
        var first = new Attributor(model, tc, new AttributionSettings { Targets = [AttributionTarget.Token(x), AttributionTarget.Token(y)] }).Attribute(Prompt);
        var targets = new AttributionSettings
        {
            Targets = [AttributionTarget.Token(x), AttributionTarget.Token(y), AttributionTarget.Difference(x, y), AttributionTarget.Custom("x again", 0.25, first.LogitVectors![0])],
        };
        var g = new Attributor(model, tc, targets).Attribute(Prompt);

        Assert.Equal([x, y, V + 2, V + 3], g.LogitTokens);
        Assert.Equal(Math.Max(Math.Abs(top.LogitProbabilities[0] - top.LogitProbabilities[1]), 1e-6), g.LogitProbabilities[2], 1e-6);
        Assert.Equal(0.25f, g.LogitProbabilities[3]);
        Assert.Equal(new string?[] { null, null, $"logit(<{x}>)-logit(<{y}>)", "x again" }.AsEnumerable(), g.LogitLabels!);
        var difference = g.Row(g.LogitOffset).ToArray().Zip(g.Row(g.LogitOffset + 1).ToArray(), (a, b) => a - b).ToArray();
        RowsClose(difference, g.Row(g.LogitOffset + 2), "logit(x) − logit(y)");
        RowsClose(g.Row(g.LogitOffset), g.Row(g.LogitOffset + 3), "custom = x's demeaned unembedding");

        // the files: the virtual ids and labels in the Neuronpedia JSON, labels and vectors in the safetensors
        var pruning = GraphPruning.Prune(g);
        string json = NeuronpediaGraphJson.WriteFiles(_folder, g, pruning, new NeuronpediaGraphOptions { Slug = "targets" });
        using var doc = JsonDocument.Parse(File.ReadAllBytes(json));
        var logits = doc.RootElement.GetProperty("nodes").EnumerateArray().Where(n => n.GetProperty("feature_type").GetString() == "logit").ToList();
        var diffNode = logits.Single(n => n.GetProperty("feature").GetInt64() == V + 2);
        Assert.Equal($"{model.Config.NLayers + 1}_{V + 2}_{Prompt.Length - 1}", diffNode.GetProperty("node_id").GetString());
        Assert.StartsWith($"Output \"logit(<{x}>)-logit(<{y}>)\" (p=", diffNode.GetProperty("clerp").GetString());
        Assert.True(logits.Single(n => n.GetProperty("feature").GetInt64() == x).GetProperty("is_target_logit").GetBoolean());

        string raw = Path.Combine(_folder, "targets.safetensors");
        GraphSafetensors.Write(raw, g, pruning);
        var read = GraphSafetensors.Read(raw).Graph;
        Assert.Equal(g.LogitLabels, read.LogitLabels);
        Assert.Equal(g.LogitVectors!.SelectMany(v => v), read.LogitVectors!.SelectMany(v => v));
        Assert.Equal(g.LogitTokens, read.LogitTokens);
    }

    [Fact]
    public void Heads_split_a_difference_targets_edges()
    {
        using var model = FixtureAttributionTests.Model();
        var tc = FixtureAttributionTests.Transcoders(model);
        var attributor = new Attributor(model, tc, new AttributionSettings { Targets = [AttributionTarget.Difference(42, 17)], BatchSize = 32 });
        var g = attributor.Attribute(Prompt);
        var edges = Enumerable.Range(0, g.LogitOffset).Where(s => g.Edge(g.LogitOffset, s) != 0).Select(s => (g.LogitOffset, s)).ToArray();
        Assert.NotEmpty(edges);
        foreach (var e in attributor.AttributeHeads(g, edges))
            Assert.Equal(e.Total, e.Direct + e.Heads.Sum(h => h.Weight), 1e-5 * Math.Max(1, Math.Abs(e.Total)));
    }

    [Fact]
    public void Bad_targets_are_refused_by_name()
    {
        using var model = FixtureAttributionTests.Model();
        var tc = FixtureAttributionTests.Transcoders(model);
        InputError Refused(params AttributionTarget[] targets) =>
            Assert.Throws<InputError>(() => new Attributor(model, tc, new AttributionSettings { Targets = targets }).Attribute(Prompt));
        Assert.Contains("at least one target", Refused().Message);
        Assert.Contains("#99999", Refused(AttributionTarget.Token(99999)).Message);
        Assert.Contains("#3-#-1", Refused(AttributionTarget.Difference(3, -1)).Message);
        Assert.Contains("d_model", Refused(AttributionTarget.Custom("short", 1, [1f, 2f])).Message);
        Assert.Throws<ArgumentException>(() => AttributionTarget.Custom("nan", 1, [float.NaN]));
        Assert.Throws<ArgumentException>(() => AttributionTarget.Custom("negative", -1, [1f]));
    }
}
