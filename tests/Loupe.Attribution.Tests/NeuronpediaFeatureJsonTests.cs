using System.Globalization;
using System.Text.Json.Nodes;
using Loupe.Attribution.Graph;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;

namespace Loupe.Attribution.Tests;

/// <summary>
/// Feature stores of the three fixture transcoders (tests/data/attribution/transcoders) on the tiny GPT-2, over
/// random-id contexts, built once; with each layer's feature activations computed by brute force (one forward pass
/// and one encode), so the tests check the JSON against the activations and not only against the store.
/// </summary>
public sealed class FixtureFeatureStores : IDisposable
{
    public const int ContextSize = 12, Top = 5, Quantiles = 4, Bins = 8, Window = 3;

    readonly string _dir = Directory.CreateTempSubdirectory("loupe-np-stores-").FullName;

    public FixtureFeatureStores()
    {
        using var model = FixtureAttributionTests.Model();
        var rng = new Random(5);
        var docs = Enumerable.Range(0, 30).Select(_ => Enumerable.Range(0, rng.Next(4, 20)).Select(_ => rng.Next(1, 512)).ToArray()).ToArray();
        Contexts = ContextBuilder.Build(docs, new ContextOptions(ContextSize, BosTokenId: 0, SeparatorTokenId: 0, Seed: 1), "random ids");
        var stores = new FeatureStore[model.Config.NLayers];
        Acts = new float[stores.Length][];
        for (int layer = 0; layer < stores.Length; layer++)
        {
            var (dict, cfg) = SaeLensFormat.Load(SharedData.TestData(Path.Combine("attribution", "transcoders", $"layer_{layer}")));
            string path = Path.Combine(_dir, $"layer_{layer}.db");
            FeatureDashboardBuilder.Build(model, dict, cfg, Contexts, path, new FeatureBuildOptions
            {
                BatchSize = Contexts.Count, TopK = Top, Quantiles = Quantiles, QuantileSamples = 2, HistogramBins = Bins, Window = Window, LogitCount = 4,
            });
            stores[layer] = FeatureStore.Open(path);
            var ids = Contexts.Contexts.SelectMany(c => c).ToArray();
            var run = model.Run(new TokenBatch(ids, Contexts.Count, ContextSize), new RunOptions { CacheFilter = h => h == cfg.HookName });
            Acts[layer] = dict.Encode(run.Cache[cfg.HookName].Span, Contexts.Count * ContextSize);
            DSae = dict.Shape.DSae;
        }
        Stores = stores;
    }

    public HarvestContexts Contexts { get; }
    public IReadOnlyList<FeatureStore> Stores { get; }
    /// <summary>Per layer, brute-force feature activations <c>[n_contexts·n, d_sae]</c>.</summary>
    public float[][] Acts { get; }
    public int DSae { get; }

    public float Act(int layer, int context, int position, int feature) => Acts[layer][(context * ContextSize + position) * DSae + feature];

    /// <summary>A feature's active tokens (BOS excluded, as the store counts them), best first, ties to the earlier token.</summary>
    public List<(float Act, int Context, int Position)> Active(int layer, int feature)
    {
        var list = new List<(float, int, int)>();
        for (int c = 0; c < Contexts.Count; c++)
            for (int p = 1; p < ContextSize; p++)
                if (Act(layer, c, p, feature) is var a && a > 0) list.Add((a, c, p));
        return [.. list.OrderByDescending(t => t.Item1).ThenBy(t => t.Item2).ThenBy(t => t.Item3)];
    }

    public void Dispose()
    {
        foreach (var s in Stores) s.Dispose();
        Directory.Delete(_dir, recursive: true);
    }
}

public sealed class NeuronpediaFeatureJsonTests(FixtureFeatureStores fx) : IClassFixture<FixtureFeatureStores>, IDisposable
{
    const string Scan = "loupe-gpt2-fixture-tc";
    readonly string _folder = Directory.CreateTempSubdirectory("loupe-np-features-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    static JsonObject Read(string path) => JsonNode.Parse(File.ReadAllBytes(path))!.AsObject();

    static string[] Strings(JsonNode? array) => [.. array!.AsArray().Select(n => (string)n!)];

    static float[] Floats(JsonNode? array) => [.. array!.AsArray().Select(n => (float)n!)];

    static string Text(int token) => $"<{token.ToString(CultureInfo.InvariantCulture)}>"; // the fixture model has no tokenizer

    [Fact]
    public void EveryFeatureOfALayer_FileNamedByCantorIndex_FieldsMatchBruteForceAndStore()
    {
        const int layer = 1;
        var store = fx.Stores[layer];
        var files = NeuronpediaFeatureJson.Write(_folder, Scan, layer, store);
        Assert.Equal(fx.DSae, files.Count);
        var names = Directory.GetFiles(Path.Combine(_folder, Scan)).Select(Path.GetFileName).Order().ToArray();
        Assert.Equal(Enumerable.Range(0, fx.DSae).Select(f => $"{(layer + f) * (layer + f + 1) / 2 + f}.json").Order(), names);

        int withIntervals = 0, dead = 0;
        for (int f = 0; f < fx.DSae; f++)
        {
            var json = Read(Path.Combine(_folder, Scan, $"{NeuronpediaGraphJson.Cantor(layer, f)}.json"));
            var active = fx.Active(layer, f);
            long tokens = (long)fx.Contexts.Count * (FixtureFeatureStores.ContextSize - 1);
            Assert.Equal(tokens, store.Tokens);
            Assert.Equal((layer, f, NeuronpediaGraphJson.Cantor(layer, f)), ((int)json["layer"]!, (int)json["feature"]!, (long)json["index"]!));
            Assert.Equal(0.0, (double)json["act_min"]!);
            Assert.Equal(active.Count == 0 ? 0f : active[0].Act, (float)(double)json["act_max"]!);
            Assert.InRange((double)json["activation_frequency"]!, (double)active.Count / tokens - 1e-12, (double)active.Count / tokens + 1e-12);
            Assert.Equal(active.Count, (long)json["n_active"]!);

            var groups = json["examples_quantiles"]!.AsArray();
            Assert.Equal(NeuronpediaFeatureJson.TopGroupName, (string)groups[0]!["quantile_name"]!);
            var top = groups[0]!["examples"]!.AsArray();
            Assert.Equal(Math.Min(FixtureFeatureStores.Top, active.Count), top.Count);
            for (int r = 0; r < top.Count; r++)
            {
                var (act, c, p) = active[r];
                int start = Math.Max(0, p - FixtureFeatureStores.Window), end = Math.Min(FixtureFeatureStores.ContextSize - 1, p + FixtureFeatureStores.Window);
                Assert.Equal(Enumerable.Range(start, end - start + 1).Select(q => Text(fx.Contexts.Contexts[c][q])), Strings(top[r]!["tokens"]));
                // Window activations: the brute force's, with BOS at 0 as the store leaves it out.
                Assert.Equal(Enumerable.Range(start, end - start + 1).Select(q => q == 0 ? 0f : fx.Act(layer, c, q, f)), Floats(top[r]!["tokens_acts_list"]));
                Assert.Equal(p - start, (int)top[r]!["train_token_ind"]!);
                Assert.Equal(act, Floats(top[r]!["tokens_acts_list"])[p - start]);
                Assert.False((bool)top[r]!["is_repeated_datapoint"]!);
            }

            // Interval groups: highest first, each example's token inside its interval of (0, max].
            var intervals = store.Intervals(f);
            var sampled = store.Examples(f, FeatureStoreSchema.Quantile);
            var expectedGroups = intervals.Where(i => sampled.Any(e => e.Bin == i.Bin)).ToList();
            Assert.Equal(1 + expectedGroups.Count, groups.Count);
            if (expectedGroups.Count > 0) withIntervals++;
            for (int g = 0; g < expectedGroups.Count; g++)
            {
                var interval = expectedGroups[g];
                if (g > 0) Assert.True(interval.Bin < expectedGroups[g - 1].Bin);
                Assert.StartsWith($"Interval {interval.Bin + 1}/{FixtureFeatureStores.Quantiles}: (", (string)groups[g + 1]!["quantile_name"]!);
                double max = active[0].Act, lower = max * interval.Bin / FixtureFeatureStores.Quantiles, upper = max * (interval.Bin + 1) / FixtureFeatureStores.Quantiles;
                var examples = groups[g + 1]!["examples"]!.AsArray();
                Assert.Equal(sampled.Count(e => e.Bin == interval.Bin), examples.Count);
                foreach (var e in examples)
                {
                    float a = Floats(e!["tokens_acts_list"])[(int)e["train_token_ind"]!];
                    Assert.InRange(a, lower * (1 - 1e-6), upper * (1 + 1e-6));
                    Assert.True(active.Any(t => t.Act == a), $"feature {f}: sampled activation {a} is no token's activation");
                }
            }

            // Logits: the store's promoted and suppressed tokens by rank, as text.
            Assert.Equal(store.Logits(f, FeatureStoreSchema.Promoted).Select(r => Text(r.TokenId)), Strings(json["top_logits"]));
            Assert.Equal(store.Logits(f, FeatureStoreSchema.Suppressed).Select(r => Text(r.TokenId)), Strings(json["bottom_logits"]));
            Assert.Equal(4, json["top_logits"]!.AsArray().Count);

            if (active.Count == 0)
            {
                dead++;
                Assert.Null(json["histogram"]);
                continue;
            }
            var histogram = json["histogram"]!.AsArray().Select(n => (long)n!).ToArray();
            Assert.Equal(FixtureFeatureStores.Bins, histogram.Length);
            Assert.Equal(active.Count, histogram.Sum());
            Assert.Equal(store.Histogram(f)!.Counts, histogram);

            // Percentiles: against the brute-force sorted activations (zeros included), within one histogram bin.
            var percentiles = json["quantile_values"]!.AsArray().Select(n => (double)n!).ToArray();
            Assert.Equal(NeuronpediaFeatureJson.Percentiles, percentiles.Length);
            var all = active.Select(t => (double)t.Act).Concat(Enumerable.Repeat(0.0, (int)(tokens - active.Count))).Order().ToArray();
            double binWidth = active[0].Act / (double)FixtureFeatureStores.Bins;
            for (int i = 0; i < percentiles.Length; i++)
            {
                double exact = all[(int)Math.Ceiling((i + 1) * (double)all.Length / 100) - 1];
                Assert.InRange(percentiles[i], exact - binWidth - 1e-9, exact + binWidth + 1e-9);
                if (i > 0) Assert.True(percentiles[i] >= percentiles[i - 1]);
            }
            Assert.Equal(active[0].Act, (float)percentiles[^1]);
        }
        Assert.True(withIntervals > fx.DSae / 2, $"only {withIntervals} features with interval samples");
        Assert.True(dead < fx.DSae / 2, $"{dead} dead features");

        // Provenance: the store and Loupe's version.
        var loupe = Read(files[0].Path)["loupe"]!;
        Assert.Equal(store.Path, (string)loupe["feature_store"]!);
        Assert.Equal("blocks.1.ln2.hook_normalized", (string)loupe["hook"]!);
        Assert.Equal(Attributor.LoupeVersion, (string)loupe["loupe_version"]!);
    }

    /// <summary>The graph writer's feature nodes against the files: the viewer fetches features/{scan}/{node.feature}.json.</summary>
    [Theory]
    [InlineData(NeuronpediaFlavor.V050)]
    [InlineData(NeuronpediaFlavor.D797c82)]
    public void GraphFeatureNodes_EachHasItsFile_AtTheScanAndIndexTheViewerFetches(NeuronpediaFlavor flavor)
    {
        var graph = GraphTestData.Fixture;
        string graphFolder = Path.Combine(_folder, "graphs"), features = Path.Combine(_folder, "features");
        string[] transcoderList = ["loupe-gpt2-fixture-tc/layer_0", "loupe-gpt2-fixture-tc/layer_1", "loupe-gpt2-fixture-tc/layer_2"];
        string graphJson = NeuronpediaGraphJson.WriteFiles(graphFolder, graph, GraphPruning.Prune(graph),
            new NeuronpediaGraphOptions { Slug = "g", TranscoderList = transcoderList, Flavor = flavor });

        var files = NeuronpediaFeatureJson.WriteForGraph(features, graphJson, [.. fx.Stores]);

        var root = Read(graphJson);
        Assert.StartsWith("custom-", (string)root["metadata"]!["scan"]!);
        var expected = new HashSet<string>();
        foreach (var node in root["nodes"]!.AsArray())
        {
            if ((string)node!["feature_type"]! != "cross layer transcoder") continue;
            int layer = int.Parse((string)node["layer"]!, CultureInfo.InvariantCulture);
            long index = (long)node["feature"]!;
            string path = Path.Combine(features, transcoderList[layer], $"{index}.json"); // the custom scan's per-layer folder
            expected.Add(path);
            var json = Read(path);
            int feature = int.Parse(((string)node["node_id"]!).Split('_')[1], CultureInfo.InvariantCulture);
            Assert.Equal((layer, feature, index), ((int)json["layer"]!, (int)json["feature"]!, (long)json["index"]!));
            Assert.Equal(flavor == NeuronpediaFlavor.V050 ? NeuronpediaGraphJson.Cantor(layer, feature) : feature, index);
            Assert.Equal((float)fx.Stores[layer].Feature(feature).MaxAct, (float)(double)json["act_max"]!);
        }
        Assert.True(expected.Count >= 10, $"only {expected.Count} feature nodes in the pruned fixture graph");
        Assert.Equal(expected.Order(), files.Select(f => f.Path).Order());
        Assert.Equal(expected.Order(), Directory.GetFiles(features, "*.json", SearchOption.AllDirectories).Order());
        Assert.Equal(3, files.Select(f => f.Layer).Distinct().Count());
    }

    /// <summary>A graph with one scan for all layers (v0.5.0): <see cref="NeuronpediaFeatureJson.WriteLayers"/> names every node's file.</summary>
    [Fact]
    public void OneScanForAllLayers_CantorIndicesKeepLayersApart_AndCoverEveryGraphNode()
    {
        var graph = GraphTestData.Fixture;
        string graphJson = NeuronpediaGraphJson.WriteFiles(Path.Combine(_folder, "graphs"), graph, GraphPruning.Prune(graph),
            new NeuronpediaGraphOptions { Slug = "g", Scan = Scan });
        var files = NeuronpediaFeatureJson.WriteLayers(Path.Combine(_folder, "features"), Scan, [.. fx.Stores]);
        Assert.Equal(3 * fx.DSae, files.Count);
        Assert.Equal(3 * fx.DSae, files.Select(f => f.Index).Distinct().Count());

        var refs = NeuronpediaFeatureJson.GraphFeatures(Read(graphJson));
        Assert.NotEmpty(refs);
        foreach (var r in refs)
        {
            Assert.Equal(Scan, r.Scan);
            Assert.True(File.Exists(Path.Combine(_folder, "features", Scan, $"{r.Index}.json")), $"no file for node layer {r.Layer} feature {r.Feature} ({r.Index})");
        }

        // d797c82 indices are per layer: one scan for all layers would overwrite layer 0's files with layer 1's.
        var e = Assert.Throws<InputError>(() => NeuronpediaFeatureJson.WriteLayers(Path.Combine(_folder, "d797"), Scan, [.. fx.Stores], NeuronpediaFlavor.D797c82));
        Assert.Contains("both map to this file", e.Message);
        Assert.False(Directory.Exists(Path.Combine(_folder, "d797")));
    }

    [Fact]
    public void BadInput_RefusedBeforeAnyFileIsWritten()
    {
        string features = Path.Combine(_folder, "features");
        // A store of layer 0 given as layer 1's.
        var e = Assert.Throws<InputError>(() => NeuronpediaFeatureJson.Write(features, Scan, 1, fx.Stores[0]));
        Assert.Contains("blocks.0.ln2.hook_normalized (layer 0)", e.Message);
        // A feature the store does not have.
        e = Assert.Throws<InputError>(() => NeuronpediaFeatureJson.Write(features, Scan, 0, fx.Stores[0], [3, fx.DSae]));
        Assert.Contains($"feature {fx.DSae} of layer 0", e.Message);
        // A scan that leaves the folder.
        foreach (string scan in (string[])["../x", "/abs", "a//b", ""])
            Assert.Throws<InputError>(() => NeuronpediaFeatureJson.Write(features, scan, 0, fx.Stores[0], [0]));
        Assert.False(Directory.Exists(features));

        // A graph whose layer 2 features have no store.
        var graph = GraphTestData.Fixture;
        string graphJson = NeuronpediaGraphJson.WriteFiles(Path.Combine(_folder, "graphs"), graph, GraphPruning.Prune(graph),
            new NeuronpediaGraphOptions { Slug = "g", Scan = Scan });
        e = Assert.Throws<InputError>(() => NeuronpediaFeatureJson.WriteForGraph(features, graphJson, [fx.Stores[0], fx.Stores[1]]));
        Assert.Contains("layer 2", e.Message);
        // A file that is not a graph.
        string notGraph = Path.Combine(_folder, "not-graph.json");
        File.WriteAllText(notGraph, "[1, 2]");
        e = Assert.Throws<InputError>(() => NeuronpediaFeatureJson.WriteForGraph(features, notGraph, [.. fx.Stores]));
        Assert.Contains("expected a Neuronpedia graph", e.Message);
        // A graph made on another model than the stores' (Loupe records the fingerprint in metadata.loupe).
        var root = Read(graphJson);
        root["metadata"]!["loupe"] = new JsonObject { ["model_fingerprint"] = "sha256:another-model" };
        string otherModel = Path.Combine(_folder, "other-model.json");
        File.WriteAllText(otherModel, root.ToJsonString());
        e = Assert.Throws<InputError>(() => NeuronpediaFeatureJson.WriteForGraph(features, otherModel, [.. fx.Stores]));
        Assert.Contains("sha256:another-model", e.Message);
        // A v0.5.0 node whose feature field is not cantor(layer, feature).
        root = Read(graphJson);
        var node = root["nodes"]!.AsArray().First(n => (string)n!["feature_type"]! == "cross layer transcoder" && (string)n["layer"]! == "1")!;
        node["feature"] = 3;
        e = Assert.Throws<InputError>(() => NeuronpediaFeatureJson.GraphFeatures(root, "g.json"));
        Assert.Contains("cantor(layer, feature)", e.Message);
        Assert.False(Directory.Exists(features));
    }
}
