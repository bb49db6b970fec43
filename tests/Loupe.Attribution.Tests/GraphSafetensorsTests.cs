using System.Text.Json;
using Loupe.Attribution.Graph;
using Loupe.Models.Loading;

namespace Loupe.Attribution.Tests;

public sealed class GraphSafetensorsTests : IDisposable
{
    readonly string _folder = Directory.CreateTempSubdirectory("loupe-graph-st-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Fixture_NodesEqualNodesJson()
    {
        var file = GraphTestData.FixtureFile;
        var g = file.Graph;
        using var doc = JsonDocument.Parse(File.ReadAllBytes(GraphTestData.Path("nodes.json")));
        var root = doc.RootElement;
        Assert.Equal(root.GetProperty("n_layers").GetInt32(), g.Layers);
        Assert.Equal(root.GetProperty("n_pos").GetInt32(), g.Positions);
        Assert.Equal(root.GetProperty("prompt").EnumerateArray().Select(x => x.GetInt32()), g.InputTokens);

        var expected = root.GetProperty("nodes").EnumerateArray().ToArray();
        Assert.Equal(expected.Length, g.NodeCount);
        Assert.NotNull(file.Pruning);
        for (int i = 0; i < expected.Length; i++)
        {
            var e = expected[i];
            var node = g.Node(i);
            string where = $"node {i}";
            Assert.Equal(i, e.GetProperty("index").GetInt32());
            Assert.Equal(e.GetProperty("kind").GetString(), node.Kind.ToString().ToLowerInvariant());
            Assert.Equal(e.GetProperty("layer").GetInt32(), node.Layer);
            Assert.Equal(e.GetProperty("pos").GetInt32(), node.Position);
            switch (node.Kind)
            {
                case NodeKind.Feature:
                    Assert.Equal(e.GetProperty("feature").GetInt32(), node.Index);
                    GraphTestData.Close(e.GetProperty("activation").GetDouble(), node.Value, 1e-7, 0, where + " activation");
                    break;
                case NodeKind.Token:
                    Assert.Equal(e.GetProperty("token").GetInt32(), node.Index);
                    break;
                case NodeKind.Logit:
                    Assert.Equal(e.GetProperty("token").GetInt32(), node.Index);
                    GraphTestData.Close(e.GetProperty("probability").GetDouble(), node.Value, 1e-7, 0, where + " probability");
                    break;
            }
            GraphTestData.Close(e.GetProperty("influence").GetDouble(), file.Pruning!.NodeInfluence[i], 1e-7, 0, where + " influence");
            Assert.Equal(e.GetProperty("kept").GetBoolean(), file.Pruning.NodeMask[i]);
        }
        Assert.Equal(0.8, file.Pruning!.NodeThreshold);
        Assert.Equal(0.98, file.Pruning.EdgeThreshold);
        Assert.Null(g.Provenance);   // the fixture was not made by Loupe
        Assert.Equal([3, 8, 64], [g.Layers, g.Positions, g.ErrorVectors!.Length / (g.Layers * g.Positions)]);
        Assert.Equal(8 * 64, g.TokenVectors!.Length);
    }

    [Fact]
    public void WriteThenRead_GivesTheSameGraphPruningAndProvenance()
    {
        var source = GraphTestData.Fixture;
        var graph = new AttributionGraph
        {
            InputTokens = source.InputTokens, TokenStrings = source.InputTokens.Select(t => $" tok{t}\n").ToArray(),
            Prompt = "a prompt\twith a tab", Layers = source.Layers, ActiveFeatures = source.ActiveFeatures,
            ActivationValues = source.ActivationValues, SelectedFeatures = source.SelectedFeatures, LogitTokens = source.LogitTokens,
            LogitProbabilities = source.LogitProbabilities, Adjacency = source.Adjacency, ErrorVectors = source.ErrorVectors,
            TokenVectors = source.TokenVectors, Provenance = Provenance(),
        };
        var pruning = GraphPruning.Prune(graph);
        string path = Path.Combine(_folder, "graph.safetensors");
        GraphSafetensors.Write(path, graph, pruning);
        Assert.Equal(["graph.safetensors"], Directory.GetFiles(_folder).Select(Path.GetFileName));

        var back = GraphSafetensors.Read(path);
        var g = back.Graph;
        Assert.Equal(graph.InputTokens, g.InputTokens);
        Assert.Equal(graph.TokenStrings, g.TokenStrings);
        Assert.Equal(graph.Prompt, g.Prompt);
        Assert.Equal(graph.Layers, g.Layers);
        Assert.Equal(graph.ActiveFeatures, g.ActiveFeatures);
        Assert.Equal(graph.ActivationValues, g.ActivationValues);
        Assert.Equal(graph.SelectedFeatures, g.SelectedFeatures);
        Assert.Equal(graph.LogitTokens, g.LogitTokens);
        Assert.Equal(graph.LogitProbabilities, g.LogitProbabilities);
        Assert.Equal(graph.Adjacency, g.Adjacency);
        Assert.Equal(graph.ErrorVectors, g.ErrorVectors);
        Assert.Equal(graph.TokenVectors, g.TokenVectors);
        Assert.Equal(graph.Nodes(), g.Nodes());
        var p = g.Provenance!;
        Assert.Equal(graph.Provenance!.Model, p.Model);
        Assert.Equal(graph.Provenance.ModelFingerprint, p.ModelFingerprint);
        Assert.Equal(graph.Provenance.Transcoders, p.Transcoders);
        Assert.Equal(graph.Provenance.TranscoderFingerprint, p.TranscoderFingerprint);
        Assert.Equal(graph.Provenance.Settings, p.Settings);
        Assert.Equal(graph.Provenance.LoupeVersion, p.LoupeVersion);
        Assert.Equal(graph.Provenance.CreatedUtc, p.CreatedUtc);

        var q = back.Pruning!;
        Assert.Equal(pruning.NodeMask, q.NodeMask);
        Assert.Equal(pruning.EdgeMask, q.EdgeMask);
        Assert.Equal(pruning.NodeInfluence, q.NodeInfluence);
        Assert.Equal(pruning.CumulativeScores, q.CumulativeScores);
        Assert.Equal(0.8, q.NodeThreshold);
        Assert.Equal(0.98, q.EdgeThreshold);

        // The fixture's tensor names, and Loupe's record of the node order.
        using var raw = SafeTensorsFile.Open(path);
        using var fixture = SafeTensorsFile.Open(GraphTestData.GraphPath);
        Assert.Equal(fixture.Names.Order(StringComparer.Ordinal), raw.Names.Order(StringComparer.Ordinal));
        Assert.Equal(GraphSafetensors.NodeOrder, raw.Metadata["node_order"]);
        Assert.Equal(DType.BOOL, raw.GetInfo("pruned.edge_mask").DType);
    }

    [Fact]
    public void WithoutPruningOrVectors_OnlyTheGraphIsWritten()
    {
        var g = GraphTestData.FiveNodes();
        string path = Path.Combine(_folder, "five.safetensors");
        GraphSafetensors.Write(path, g);
        var back = GraphSafetensors.Read(path);
        Assert.Null(back.Pruning);
        Assert.Null(back.Graph.ErrorVectors);
        Assert.Null(back.Graph.Provenance);
        Assert.Equal(g.Adjacency, back.Graph.Adjacency);
        Assert.Equal(g.Nodes(), back.Graph.Nodes());
    }

    [Fact]
    public void ANodeTableInAnotherOrder_IsRefusedByName()
    {
        using var fixture = SafeTensorsFile.Open(GraphTestData.GraphPath);
        var entries = new List<SafeTensorEntry>();
        foreach (var name in fixture.Names)
        {
            var info = fixture.GetInfo(name);
            byte[] bytes = fixture.GetBytes(name).ToArray();
            if (name == "node_layer") BitConverter.GetBytes(7L).CopyTo(bytes, 8 * 160);   // error node 160: layer 0 → 7
            entries.Add(SafeTensorEntry.Raw(name, info.DType, info.Shape, bytes));
        }
        string path = Path.Combine(_folder, "bad.safetensors");
        SafeTensorsWriter.Write(path, entries, fixture.Metadata);
        var e = Assert.Throws<InputError>(() => GraphSafetensors.Read(path));
        Assert.Contains("'node_layer'[160] is 7; expected 0", e.Message);
    }

    /// <summary>The fixture with one tensor's bytes or one metadata entry changed (fuzz parser "graph-safetensors" found both).</summary>
    string Corrupted(Action<string, byte[]> edit, Action<Dictionary<string, string>>? metadata = null)
    {
        using var fixture = SafeTensorsFile.Open(GraphTestData.GraphPath);
        var entries = new List<SafeTensorEntry>();
        foreach (var name in fixture.Names)
        {
            var info = fixture.GetInfo(name);
            byte[] bytes = fixture.GetBytes(name).ToArray();
            edit(name, bytes);
            entries.Add(SafeTensorEntry.Raw(name, info.DType, info.Shape, bytes));
        }
        var md = new Dictionary<string, string>(fixture.Metadata);
        metadata?.Invoke(md);
        string path = Path.Combine(_folder, "corrupt.safetensors");
        SafeTensorsWriter.Write(path, entries, md);
        return path;
    }

    [Theory]
    [InlineData("adjacency_matrix", float.NaN)]
    [InlineData("activation_values", float.PositiveInfinity)]
    [InlineData("logit_probabilities", float.NegativeInfinity)]
    [InlineData("token_vectors", float.NaN)]
    public void ANonFiniteValue_IsRefusedByTensorAndElement(string tensor, float value)
    {
        string path = Corrupted((name, bytes) => { if (name == tensor) BitConverter.GetBytes(value).CopyTo(bytes, 4 * 3); });
        var e = Assert.Throws<InputError>(() => GraphSafetensors.Read(path));
        Assert.Contains($"tensor '{tensor}' holds {value} at element 3; expected finite numbers", e.Message);
    }

    [Fact]
    public void AStoredPruningWithoutItsThreshold_IsRefused()
    {
        // Read before: NaN, which the Neuronpedia JSON writer then failed on with an ArgumentException.
        var e = Assert.Throws<InputError>(() => GraphSafetensors.Read(Corrupted((_, _) => { }, md => md.Remove("edge_threshold"))));
        Assert.Contains("no 'edge_threshold'", e.Message);
        e = Assert.Throws<InputError>(() => GraphSafetensors.Read(Corrupted((_, _) => { }, md => md["node_threshold"] = "Infinity")));
        Assert.Contains("expected a number between 0 and 1", e.Message);
    }

    [Fact]
    public void AMissingTensor_IsNamed()
    {
        string path = Path.Combine(_folder, "partial.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorEntry.I64("input_tokens", [2], new long[] { 1, 2 })]);
        var e = Assert.Throws<InputError>(() => GraphSafetensors.Read(path));
        Assert.Contains("active_features", e.Message);
    }

    [Fact]
    public void AFolderAtThePath_IsRefusedAndNothingIsLeftBehind()
    {
        string path = Path.Combine(_folder, "taken");
        Directory.CreateDirectory(path);
        Assert.Throws<InputError>(() => GraphSafetensors.Write(path, GraphTestData.FiveNodes()));
        Assert.Equal([path], Directory.GetFileSystemEntries(_folder));
    }

    [Fact]
    public void AFailedWrite_KeepsTheFileThatWasThere()
    {
        string path = Path.Combine(_folder, "graph.safetensors");
        GraphSafetensors.Write(path, GraphTestData.FiveNodes());
        byte[] before = File.ReadAllBytes(path);
        var other = GraphTestData.Random(1);
        Assert.Throws<ArgumentException>(() => GraphSafetensors.Write(path, GraphTestData.FiveNodes(), GraphPruning.Prune(other)));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(_folder));
    }

    internal static GraphProvenance Provenance() => new(
        "shared/fixtures/reference/gpt2 (gpt2)", "sha256:abc123", "tests/data/attribution/transcoders", "sha256:def456",
        new Dictionary<string, string> { ["max_n_logits"] = "10", ["desired_logit_prob"] = "0.95", ["batch_size"] = "256", ["max_feature_nodes"] = "all", ["note"] = "x" },
        "0.10.0-test", new DateTimeOffset(2026, 12, 4, 21, 0, 0, TimeSpan.Zero));
}
