using System.Globalization;
using System.Text.Json;
using Loupe.Causal.Patching;
using Loupe.Causal.Reports;
using Loupe.Circuits.Edges;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

/// <summary>Artifacts for the Graph and Circuits pages: the attribution fixture, a synthetic 20,000-node graph, and real patch and circuit files.</summary>
static class GraphFixtures
{
    /// <summary>The pruned graph <c>loupe attribute</c> writes for the GPT-2 fixture (AttributeCliTests checks they are the same).</summary>
    public static readonly string AttributionGraph = SharedData.TestData(Path.Combine("attribution", "v0.5.0", "loupe-gpt2-fixture-relu-tc32.json"));
    public static readonly string Transcoders = SharedData.TestData(Path.Combine("attribution", "transcoders"));
    public static readonly int[] AttributionTokens = [0, 360, 480, 161, 89, 311, 293, 431];

    public static string NewFolder(string what) => Directory.CreateTempSubdirectory("loupe-serve-" + what).FullName;

    /// <summary>
    /// A Neuronpedia-schema graph with <paramref name="nodes"/> nodes and <paramref name="edges"/> edges: tokens at the bottom,
    /// features and errors over <paramref name="layers"/> layers × <paramref name="positions"/> positions, logits on top; each
    /// edge runs from a lower row to a higher one.
    /// </summary>
    public static void WriteSyntheticGraph(string path, int nodes = 20_000, int edges = 100_000, int layers = 18, int positions = 48, int seed = 1)
    {
        var random = new Random(seed);
        var ids = new List<string>(nodes);
        var rows = new List<int>(nodes);
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream);
        w.WriteStartObject();
        w.WriteStartObject("metadata");
        w.WriteString("slug", "synthetic");
        w.WriteStartArray("prompt_tokens");
        for (int p = 0; p < positions; p++) w.WriteStringValue($"tok{p}");
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteStartObject("qParams"); w.WriteEndObject();
        w.WriteStartArray("nodes");
        void Node(string id, string layer, int pos, string type, long feature, double? activation, double influence, double prob, int row)
        {
            ids.Add(id); rows.Add(row);
            w.WriteStartObject();
            w.WriteString("node_id", id);
            w.WriteNumber("feature", feature);
            w.WriteString("layer", layer);
            w.WriteNumber("ctx_idx", pos);
            w.WriteString("feature_type", type);
            w.WriteNumber("token_prob", prob);
            w.WriteString("clerp", type == "logit" ? $"Output \"t{feature}\" (p={prob.ToString("F3", CultureInfo.InvariantCulture)})" : "");
            w.WriteNumber("influence", influence);
            if (activation is double a) w.WriteNumber("activation", a); else w.WriteNull("activation");
            w.WriteEndObject();
        }
        for (int p = 0; p < positions; p++) Node($"E_{100 + p}_{p}", "E", p, "embedding", p, null, 1, 0, 0);
        const int logits = 10;
        for (int i = 0; i < logits; i++) Node($"{layers + 1}_{i}_{positions - 1}", (layers + 1).ToString(CultureInfo.InvariantCulture), positions - 1, "logit", i, null, 0, 0.5 / (i + 1), layers + 1);
        int perLayerError = positions;
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < positions && ids.Count < nodes; p++)
                Node($"0_{l}_{p}", "0", p, "mlp reconstruction error", -1, null, random.NextDouble(), 0, l + 1);
        int f = 0;
        while (ids.Count < nodes)
        {
            int l = random.Next(layers), p = random.Next(positions);
            Node($"{l}_{1000 + f}_{p}", l.ToString(CultureInfo.InvariantCulture), p, "cross layer transcoder", 1000 + f, random.NextDouble() * 5, random.NextDouble(), 0, l + 1);
            f++;
        }
        w.WriteEndArray();
        _ = perLayerError;
        w.WriteStartArray("links");
        for (int e = 0; e < edges; e++)
        {
            int a, b;
            do { a = random.Next(ids.Count); b = random.Next(ids.Count); } while (rows[a] >= rows[b]);
            w.WriteStartObject();
            w.WriteString("source", ids[a]);
            w.WriteString("target", ids[b]);
            w.WriteNumber("weight", (random.NextDouble() * 2 - 1) * Math.Pow(random.NextDouble(), 3));
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>
    /// A feature store (as <c>loupe features build</c> writes) for a seeded ReLU SAE at layer 0 of the GPT-2 fixture
    /// (<c>blocks.0.ln2.hook_normalized</c>, the transcoders' input), over seeded random tokens.
    /// </summary>
    public static string WriteFeatureStore(HookedTransformer model, string dir)
    {
        string store = Path.Combine(dir, "features-l0.db");
        const string hook = "blocks.0.ln2.hook_normalized";
        int d = model.Config.DModel, dSae = 32;
        var dict = new SparseDictionary(SaeShape.Sae(d, dSae, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(seed: 7, decoderNorm: 1f);
        for (int f = 0; f < dSae; f++) dict.P.BEnc[f] = -0.3f - 0.02f * f;
        var config = new SaeLensConfig { DIn = d, DSae = dSae, DOut = d, HookName = hook, ApplyBDecToInput = false };
        // The fixture has no tokenizer: seeded random token rows.
        var random = new Random(3);
        var contexts = HarvestContexts.FromRows([.. Enumerable.Range(0, 24).Select(_ => Enumerable.Range(0, 16).Select(_ => random.Next(model.Config.VocabOut)).ToArray())], "random tokens", seed: 1);
        FeatureDashboardBuilder.Build(model, dict, config, contexts, store, new FeatureBuildOptions { TopK = 6, Quantiles = 2, QuantileSamples = 2, Window = 6, LogitCount = 5 });
        return store;
    }

    /// <summary>Runs <c>loupe patch</c>'s library calls on the GPT-2 fixture and writes patch.json into <paramref name="dir"/>; returns the sweep.</summary>
    public static PatchingResult WritePatch(HookedTransformer model, string dir)
    {
        var clean = TokenBatch.FromRows([[82, 87, 74, 39]]);
        var corrupt = TokenBatch.FromRows([[82, 87, 74, 300]]);
        var result = ActivationPatching.Sweep(model, clean, corrupt, new LogitDiff(17, 42), PatchTarget.Named["resid_pre"]);
        CausalReports.WritePatching(result, dir, ["<82>", "<87>", "<74>", "<39>"], new Dictionary<string, string?> { ["target"] = "resid_pre" });
        return result;
    }

    /// <summary>Runs <c>loupe circuit</c>'s library calls (EAP, greedy 12, faithfulness curve) on the GPT-2 fixture and saves circuit.json into <paramref name="dir"/>.</summary>
    public static CircuitReport WriteCircuit(HookedTransformer model, string dir)
    {
        var clean = TokenBatch.FromRows([[82, 87, 74, 39], [82, 87, 74, 41]]);
        var corrupt = TokenBatch.FromRows([[82, 87, 74, 300], [82, 87, 74, 301]]);
        var metric = new MeanLogitDiff([.. Enumerable.Range(0, 2).Select(_ => new[] { new LogitDiffTerm(-1, 17, 42) })]);
        var graph = EdgeGraph.FromModel(model);
        var scores = EdgeAttribution.Eap(model, graph, clean, corrupt, metric);
        var circuit = CircuitSelection.Greedy(scores, 12);
        var evaluator = new CircuitEvaluator(model, graph, clean, corrupt, metric);
        var report = new CircuitReport(model, scores, circuit, metric.Name, "greedy 12")
        {
            Evaluation = (evaluator.Evaluate(circuit), evaluator.Clean, evaluator.Corrupted),
            Faithfulness = Faithfulness.Curve(evaluator, scores, SelectionRule.Greedy, [1, 5, 20, 100]),
        };
        report.Save(dir);
        return report;
    }
}
