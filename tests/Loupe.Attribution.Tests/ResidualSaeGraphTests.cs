using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Attribution.Tests;

/// <summary>
/// Graphs over SAEs on the residual stream (<c>blocks.ℓ.hook_resid_post</c>) instead of MLP transcoders: each SAE
/// cuts the stream (what passes it is its features plus its error) and MLPs are frozen whole, so the direct edges
/// run from one layer's SAE to the next through the residual and attention. Checked in the real model with
/// patterns, scales and MLP outputs frozen: a source's vector added at its layer changes the next layer's
/// pre-activations (and, from the last layer, the demeaned logits) by its column.
/// </summary>
public sealed class ResidualSaeGraphTests
{
    static readonly int[] Prompt = [1, 37, 211, 5, 88, 400, 12];

    static PerLayerTranscoders RandomSaes(HookedTransformer model, string point = "post", int features = 24)
    {
        int L = model.Config.NLayers, D = model.Config.DModel;
        var dicts = new List<SparseDictionary>();
        for (int l = 0; l < L; l++)
        {
            var d = new SparseDictionary(SaeShape.Sae(D, features), new ReluActivation());
            d.Initialize(7 + l, decoderNorm: 0.5f);
            var rng = new Random(11 * l + 5);
            for (int i = 0; i < d.P.WEnc.Length; i++) d.P.WEnc[i] = (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(D) * 2f;
            for (int f = 0; f < features; f++) d.P.BEnc[f] = (float)(rng.NextDouble() * 0.4 - 0.3);
            for (int i = 0; i < D; i++) d.P.BDec[i] = (float)(rng.NextDouble() * 0.1 - 0.05);
            dicts.Add(d);
        }
        var hooks = Enumerable.Range(0, L).Select(l => $"blocks.{l}.hook_resid_{point}").ToArray();
        return new PerLayerTranscoders(dicts, hooks, hooks, "random residual SAEs");
    }

    [Theory]
    [InlineData("gpt2", "post")]
    [InlineData("llama", "post")]
    [InlineData("gemma2", "post")]
    [InlineData("gpt_neox", "post")]
    [InlineData("llama", "pre")]
    [InlineData("gpt_neox", "pre")]
    [InlineData("gpt2", "mid")]
    [InlineData("gemma2", "mid")]
    public void Edges_to_the_next_layer_match_interventions_in_the_real_model(string arch, string point)
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", arch)));
        var saes = RandomSaes(model, point);
        var graph = new Attributor(model, saes, new AttributionSettings { BatchSize = 16 }).Attribute(Prompt);
        var replacement = new ReplacementModel(model, saes);
        var frozen = replacement.Freeze(Prompt);
        var directions = FrozenProbe.LogitDirections(model, graph);
        Func<string, bool> cache = n => n == "ln_final.hook_normalized" || n.EndsWith(".hook_resid_" + point, StringComparison.Ordinal);
        var clean = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, cache: cache));
        int L = model.Config.NLayers;
        double worst = 0, largest = 0;
        int checkedEdges = 0;
        var rng = new Random(2);
        foreach (int source in Enumerable.Range(0, graph.LogitOffset).Where(_ => rng.Next(3) == 0))
        {
            var node = graph.Node(source);
            var vector = FrozenProbe.SourceVector(model, saes, graph, source);
            var changed = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, additions: vector, cache: cache));
            // Direct neighbours: features one layer up (layer 0 for tokens), the logits from the last layer.
            int next = node.Kind == NodeKind.Token ? 0 : node.Layer + 1;
            for (int t = 0; t < graph.NodeCount; t++)
            {
                var target = graph.Node(t);
                bool neighbour = target.Kind == NodeKind.Feature ? target.Layer == next : target.Kind == NodeKind.Logit && next == L;
                if (!neighbour) continue;
                worst = Math.Max(worst, Math.Abs(changed[t] - clean[t] - graph.Edge(t, source)));
                largest = Math.Max(largest, Math.Abs(graph.Edge(t, source)));
                checkedEdges++;
            }
            // Nothing skips a layer: the cut stops it.
            for (int t = 0; t < graph.ErrorOffset; t++)
                if (graph.Node(t).Layer > next) Assert.Equal(0f, graph.Edge(t, source));
        }
        Assert.True(checkedEdges > 50 && largest > 0.01, $"{checkedEdges} edges, largest {largest}");
        Assert.True(worst <= 1e-4 * Math.Max(1, largest), $"{arch}: max |Δ − A| = {worst:g3} (largest edge {largest:g3})");
    }

    [Theory]
    [InlineData("post")]
    [InlineData("pre")]
    [InlineData("mid")]
    public void Head_shares_add_up_for_residual_saes(string point)
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "llama")));
        var attributor = new Attributor(model, RandomSaes(model, point));
        var graph = attributor.Attribute(Prompt);
        int[] targets = [graph.ErrorOffset - 1, graph.LogitOffset];
        var edges = targets.SelectMany(t => Enumerable.Range(0, graph.LogitOffset).Where(s => graph.Edge(t, s) != 0).Select(s => (t, s))).ToArray();
        Assert.NotEmpty(edges);
        foreach (var e in attributor.AttributeHeads(graph, edges))
            Assert.InRange(e.Direct + e.Heads.Sum(h => (double)h.Weight), e.Total - 1e-5, e.Total + 1e-5);
    }
}
