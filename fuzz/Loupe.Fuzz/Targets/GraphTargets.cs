using Loupe.Attribution;
using Loupe.Attribution.Graph;
using Loupe.Fuzz.Engine;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>GraphSafetensors.Read</c> (attribution graphs as Loupe and the circuit-tracer fixture's generator write them), then what a
/// reader does next: prune the graph (or take its stored pruning) and write it as Neuronpedia graph JSON. A graph that reads must
/// hold finite values; a NaN adjacency would make every influence NaN.
/// </summary>
public sealed class GraphSafetensorsTarget : FuzzTarget
{
    public override string Name => "graph-safetensors";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var seeds = new List<Seed> { SeedFiles.FromFolder("repo:tests/data/attribution/graph.safetensors", context.Repo("tests/data/attribution"), "graph.safetensors") };
        // A graph as Loupe writes it (provenance, node table, stored pruning), from the fixture graph.
        var fixture = GraphSafetensors.Read(context.Repo("tests/data/attribution/graph.safetensors")).Graph;
        var folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "graph-loupe")).FullName;
        var graph = fixture with
        {
            TokenStrings = [.. fixture.InputTokens.Select(t => $"tok{t}")],
            Prompt = "fuzz",
            // as an explicit-targets graph writes them: a label for the non-token target, every row's direction
            LogitLabels = [.. fixture.LogitTokens.Select((_, j) => j == 0 ? "logit(a)-logit(b)" : null)],
            LogitVectors = [.. fixture.LogitTokens.Select((_, j) => new[] { 0.5f * j, -1f, 0.25f, 2f })],
            Provenance = new GraphProvenance("fuzz-model", "0123456789abcdef", "fuzz-transcoders", "fedcba9876543210",
                new Dictionary<string, string> { ["max_feature_nodes"] = "8192" }, "0.0.0-fuzz", new DateTimeOffset(2026, 12, 6, 0, 0, 0, TimeSpan.Zero)),
        };
        GraphSafetensors.Write(Path.Combine(folder, "graph.safetensors"), graph, GraphPruning.Prune(graph));
        seeds.Add(SeedFiles.FromFolder("generated:graph-loupe", folder, "graph.safetensors"));
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var file = GraphSafetensors.Read(Path.Combine(folder, "graph.safetensors"));
        var g = file.Graph;
        if (g.Adjacency is { } a) Require.Finite(a, "adjacency");
        Require.Finite(g.ActivationValues, "activation values");
        Require.Finite(g.LogitProbabilities, "logit probabilities");
        if (g.ErrorVectors is { } e) Require.Finite(e, "error vectors");
        if (g.TokenVectors is { } t) Require.Finite(t, "token vectors");
        if (g.LogitVectors is { } lv) Require.Finite([.. lv.SelectMany(v => v)], "logit vectors");
        Require.That(g.LogitLabels is null || g.LogitLabels.Length == g.LogitTokens.Length, "logit labels that are not one per logit accepted");
        var pruning = file.Pruning ?? GraphPruning.Prune(g);
        NeuronpediaGraphJson.Write(Stream.Null, g, pruning, new NeuronpediaGraphOptions { Slug = "fuzz", Scan = "fuzz-scan" });
    }
}

/// <summary>
/// A Neuronpedia graph JSON as <c>loupe features export --graph</c> reads it: <c>NeuronpediaFeatureJson.ReadGraph</c> and the
/// feature nodes it lists (<c>GraphFeatures</c>: node ids, layers, cantor indices, scans).
/// </summary>
public sealed class GraphJsonTarget : FuzzTarget
{
    public override string Name => "graph-json";
    public override int DefaultIterations => 2000;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context) =>
    [
        Seed("repo:tests/data/attribution/loupe-gpt2-fixture-relu-tc32.json", context.Repo("tests/data/attribution/loupe-gpt2-fixture-relu-tc32.json")),
        Seed("repo:tests/data/attribution/v0.5.0/loupe-gpt2-fixture-relu-tc32.json", context.Repo("tests/data/attribution/v0.5.0/loupe-gpt2-fixture-relu-tc32.json")),
    ];

    static Seed Seed(string id, string path) => new(id, [new SeedFile("graph.json", File.ReadAllBytes(path), FileKind.Json)]);

    public override void Execute(string folder, FuzzInput input)
    {
        var path = Path.Combine(folder, "graph.json");
        var refs = NeuronpediaFeatureJson.GraphFeatures(NeuronpediaFeatureJson.ReadGraph(path), path);
        foreach (var r in refs)
            Require.That(r.Layer >= 0 && r.Feature >= 0 && r.Index >= 0 && r.Scan.Length > 0, $"feature ref {r} accepted");
    }
}
