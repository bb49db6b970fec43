using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Attribution.Tests;

/// <summary>
/// Loupe's adjacency against circuit-tracer's on the reference fixture (tests/data/attribution, README there):
/// the tiny GPT-2, three SAELens per-layer ReLU transcoders, prompt [0, 360, 480, 161, 89, 311, 293, 431],
/// max 10 logits to p 0.95, every feature.
/// </summary>
public sealed class FixtureAttributionTests
{
    internal static readonly int[] Prompt = [0, 360, 480, 161, 89, 311, 293, 431];

    internal static HookedTransformer Model() => ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")));

    internal static PerLayerTranscoders Transcoders(HookedTransformer model) =>
        PerLayerTranscoders.LoadSaeLens(SharedData.TestData(Path.Combine("attribution", "transcoders")), model.Config.NLayers);

    static SafeTensorsFile Reference() => SafeTensorsFile.Open(SharedData.TestData(Path.Combine("attribution", "graph.safetensors")));

    static AttributionGraph Graph(int batchSize = 256, int causalBlock = 256)
    {
        using var model = Model();
        return new Attributor(model, Transcoders(model), new AttributionSettings { BatchSize = batchSize, CausalBlock = causalBlock }).Attribute(Prompt);
    }

    [Theory]
    [InlineData(256, 256)]
    [InlineData(7, 256)] // batches that split layers and positions, and a last batch that is not full
    [InlineData(256, 3)] // the causal pattern product in blocks of 3 key positions (long prompts use 256)
    public void Adjacency_matches_circuit_tracer(int batchSize, int causalBlock)
    {
        var graph = Graph(batchSize, causalBlock);
        using var reference = Reference();
        var expected = reference.GetFloat32("adjacency_matrix").Span;
        Assert.Equal(197, graph.NodeCount);
        var graphA = graph.DenseAdjacency();
        Assert.Equal(expected.Length, graphA.Length);
        float maxAbs = 0;
        foreach (var v in expected) maxAbs = Math.Max(maxAbs, Math.Abs(v));
        double worst = 0;
        int worstAt = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double diff = Math.Abs(graphA[i] - expected[i]);
            if (diff > worst) { worst = diff; worstAt = i; }
        }
        Assert.True(worst <= 1e-5, $"max |ΔA| = {worst:g3} at target {worstAt / 197}, source {worstAt % 197} (max |A| = {maxAbs})");
    }

    [Fact]
    public void Nodes_activations_and_logits_match()
    {
        var graph = Graph();
        using var reference = Reference();
        var active = reference.GetInt64("active_features");
        Assert.Equal(active.Length / 3, graph.ActiveFeatures.Length);
        for (int i = 0; i < graph.ActiveFeatures.Length; i++)
            Assert.Equal(((int)active[3 * i], (int)active[3 * i + 1], (int)active[3 * i + 2]), graph.ActiveFeatures[i]);
        var values = reference.GetFloat32("activation_values").Span;
        for (int i = 0; i < values.Length; i++) Assert.InRange(graph.ActivationValues[i], values[i] - 1e-5, values[i] + 1e-5);
        Assert.Equal(reference.GetInt64("selected_features").Select(v => (int)v), graph.SelectedFeatures);
        Assert.Equal(reference.GetInt64("logit_tokens").Select(v => (int)v), graph.LogitTokens);
        var probs = reference.GetFloat32("logit_probabilities").Span;
        for (int i = 0; i < probs.Length; i++) Assert.InRange(graph.LogitProbabilities[i], probs[i] - 1e-6, probs[i] + 1e-6);
        var errors = reference.GetFloat32("error_vectors").Span;
        for (int i = 0; i < errors.Length; i++) Assert.InRange(graph.ErrorVectors![i], errors[i] - 1e-5, errors[i] + 1e-5);
        var tokens = reference.GetFloat32("token_vectors").Span;
        for (int i = 0; i < tokens.Length; i++) Assert.InRange(graph.TokenVectors![i], tokens[i] - 1e-5, tokens[i] + 1e-5);
    }

    [Fact]
    public void The_compact_graph_round_trips_through_safetensors_as_circuit_tracers_dense_matrix()
    {
        var graph = Graph();
        Assert.Null(graph.Adjacency); // attribution keeps the feature and logit rows only
        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-graph").FullName, "g.safetensors");
        Loupe.Attribution.Graph.GraphSafetensors.Write(path, graph, Loupe.Attribution.Graph.GraphPruning.Prune(graph));
        var back = Loupe.Attribution.Graph.GraphSafetensors.Read(path).Graph;
        Assert.Equal(graph.DenseAdjacency(), back.DenseAdjacency());
        Assert.Equal(graph.SelectedFeatures, back.SelectedFeatures);
        using var reference = Reference();
        var expected = reference.GetFloat32("adjacency_matrix").Span;
        var actual = back.DenseAdjacency();
        for (int i = 0; i < expected.Length; i++) Assert.InRange(actual[i], expected[i] - 1e-5f, expected[i] + 1e-5f);
    }
}
