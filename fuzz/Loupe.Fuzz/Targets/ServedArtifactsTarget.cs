using System.Text.Json;
using Loupe.Causal.Patching;
using Loupe.Causal.Reports;
using Loupe.Circuits.Edges;
using Loupe.Fuzz.Engine;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Serve;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// The files <c>loupe serve --graphs</c> shows: one artifact in the served folder (an attribution graph in the Neuronpedia
/// schema, an EAP-IG circuit, a patching sweep — as Loupe's verbs write them), indexed by <c>GET /api/artifacts</c> and
/// read by the page that shows its kind (<c>/api/graph/{id}</c>, <c>/api/circuits/{id}</c>, <c>/api/artifacts/{id}</c>).
/// A file the pages cannot show must be answered with a 4xx naming it; a 5xx means an exception escaped.
/// </summary>
public sealed class ServedArtifactsTarget : FuzzTarget
{
    public override string Name => "served-artifacts";
    public override int DefaultIterations => 1500;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(20);

    ServeHost? _host;
    HookedTransformer? _model;
    HttpClient? _client;
    string _served = "";

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        _model = ModelLoader.LoadFolder(context.Repo("tests/data/reference/gpt2"));
        string made = Directory.CreateDirectory(Path.Combine(context.Scratch, "artifacts-made")).FullName;
        // A patching sweep and a circuit as `loupe patch` and `loupe circuit` write them, on the GPT-2 fixture.
        var clean = TokenBatch.FromRows([[82, 87, 74, 39]]);
        var corrupt = TokenBatch.FromRows([[82, 87, 74, 300]]);
        var sweep = ActivationPatching.Sweep(_model, clean, corrupt, new LogitDiff(17, 42), PatchTarget.Named["resid_pre"]);
        CausalReports.WritePatching(sweep, Path.Combine(made, "patch"), ["<82>", "<87>", "<74>", "<39>"], new Dictionary<string, string?> { ["target"] = "resid_pre" });
        var clean2 = TokenBatch.FromRows([[82, 87, 74, 39], [82, 87, 74, 41]]);
        var corrupt2 = TokenBatch.FromRows([[82, 87, 74, 300], [82, 87, 74, 301]]);
        var metric = new MeanLogitDiff([.. Enumerable.Range(0, 2).Select(_ => new[] { new LogitDiffTerm(-1, 17, 42) })]);
        var scores = EdgeAttribution.Eap(_model, EdgeGraph.FromModel(_model), clean2, corrupt2, metric);
        new CircuitReport(_model, scores, CircuitSelection.Greedy(scores, 12), metric.Name, "greedy 12").Save(Path.Combine(made, "circuit"));

        _served = Directory.CreateDirectory(Path.Combine(context.Scratch, "served")).FullName;
        _host = new ServeHost(_model, new ServeOptions { Port = 0, GraphsDir = _served });
        _host.StartAsync().GetAwaiter().GetResult();
        _client = new HttpClient { BaseAddress = _host.Url, Timeout = TimeSpan.FromSeconds(15) };
        return
        [
            Seed("repo:tests/data/attribution/loupe-gpt2-fixture-relu-tc32.json", "graph.json", context.Repo("tests/data/attribution/loupe-gpt2-fixture-relu-tc32.json")),
            Seed("generated:served-circuit", "circuit.json", Path.Combine(made, "circuit", "circuit.json")),
            Seed("generated:served-patch", "patch.json", Path.Combine(made, "patch", "patch.json")),
        ];
    }

    static Seed Seed(string id, string name, string path) => new(id, [new SeedFile(name, File.ReadAllBytes(path), FileKind.Json)]);

    public override void Execute(string folder, FuzzInput input)
    {
        var client = _client ?? throw new InvalidOperationException("seeds not built");
        foreach (var old in Directory.GetFiles(_served, "*.json")) File.Delete(old); // the workspace keeps its index beside them
        File.WriteAllBytes(Path.Combine(_served, input.FileName), input.Bytes);
        using var index = JsonDocument.Parse(Get(client, "/api/artifacts"));
        foreach (var artifact in index.RootElement.EnumerateArray())
        {
            string id = artifact.GetProperty("id").GetString()!, kind = artifact.GetProperty("kind").GetString()!;
            Get(client, $"/api/artifacts/{id}");
            if (kind == "graph") Get(client, $"/api/graph/{id}");
            if (kind == "circuit") Get(client, $"/api/circuits/{id}");
        }
    }

    /// <summary>The body of a 2xx; a 4xx is the file refused (fine), a 5xx an exception that escaped.</summary>
    static string Get(HttpClient client, string path)
    {
        using var response = client.GetAsync(path).GetAwaiter().GetResult();
        string text = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        int status = (int)response.StatusCode;
        if (status >= 500) throw new OracleViolation("server-error", $"GET {path}: {status} {text[..Math.Min(300, text.Length)]}");
        if (status >= 400) throw new InputError($"GET {path}: {status} {text[..Math.Min(200, text.Length)]}");
        return text;
    }

    public override void Cleanup()
    {
        _client?.Dispose();
        _host?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _model?.Dispose();
        (_client, _host, _model) = (null, null, null);
    }
}
