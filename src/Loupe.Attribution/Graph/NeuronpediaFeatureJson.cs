// Feature detail files for circuit-tracer's / Neuronpedia's graph viewer, from Loupe feature stores.
//
// Where the viewer looks (circuit-tracer frontend, init-feature-examples.js loadFeature and
// init-cg-feature-detail.js): for a feature node d it fetches "features/{scan}/{d.feature}.json", where
//   scan = metadata.transcoder_list[d.layer] when metadata.scan starts with "custom-" (a graph over a
//          custom transcoder list, as `loupe attribute` writes), else metadata.scan;
//   d.feature = cantor(layer, feature) in v0.5.0 graphs, the feature index in d797c82 graphs.
// The local server (local_server.py) serves "/features/{path}" from its features_dir, so the folder
// given here is that features_dir and each file lands at {folder}/{scan}/{index}.json.
//
// What the viewer reads from a file (and what each field holds here):
//   act_min, act_max         colour scale of the example tokens and range of the histogram: 0 (the
//                            dictionaries' activations are ≥ 0) and the feature's max over the store's tokens;
//   examples_quantiles       [{quantile_name, examples: [{tokens, tokens_acts_list, train_token_ind,
//                            is_repeated_datapoint}]}]: "Top activations" (the store's top examples), then
//                            one group per activation interval that has samples, highest first; tokens =
//                            the stored window's token texts, tokens_acts_list = the feature's activation at
//                            each, train_token_ind = the example token's index in the window,
//                            is_repeated_datapoint = the same (context, position) was shown earlier in the file;
//   top_logits, bottom_logits  token texts the decoder direction promotes / suppresses most (by rank);
//   activation_frequency     density: fraction of the store's tokens where the feature is > 0;
//   histogram                activation histogram counts over equal bins of (0, act_max] (the viewer
//                            places the current activation at floor((a − act_min)/(act_max − act_min)·bins));
//   quantile_values          100 values; value i = the (i+1)-th percentile of the feature's activation over
//                            all tokens (zeros included), interpolated linearly inside a histogram bin, so
//                            exact to one bin width. The viewer shows "{i+1}pct" for the first value ≥ the
//                            node's activation.
// Extra keys (the viewer ignores them): layer, feature, index, n_active, max_act, mean_act, and "loupe"
// (the store, its dictionary, hook, model fingerprint, tokens covered, Loupe version).

using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;

namespace Loupe.Attribution.Graph;

/// <summary>One feature detail file: its scan folder, layer, feature, file index (the file name without .json) and full path.</summary>
/// <param name="Scan">The scan folder under the features folder.</param>
/// <param name="Layer">The feature's layer.</param>
/// <param name="Feature">The feature's index in its layer's dictionary.</param>
/// <param name="Index">The viewer's feature index: the graph node's <c>feature</c> field.</param>
/// <param name="Path">The file written.</param>
public sealed record NeuronpediaFeatureFile(string Scan, int Layer, int Feature, long Index, string Path);

/// <summary>A feature node of a Neuronpedia graph: where the viewer fetches its details.</summary>
/// <param name="Scan">The scan the viewer uses for the node's layer.</param>
/// <param name="Layer">The node's layer.</param>
/// <param name="Feature">The feature index (from the node id).</param>
/// <param name="Index">The node's <c>feature</c> field: the file name.</param>
public readonly record struct GraphFeatureRef(string Scan, int Layer, int Feature, long Index);

/// <summary>Writes Neuronpedia-style feature detail JSON files (the fields are listed at the top of this file).</summary>
public static class NeuronpediaFeatureJson
{
    /// <summary>Percentiles written in <c>quantile_values</c> (1st … 100th).</summary>
    public const int Percentiles = 100;

    /// <summary>The <c>quantile_name</c> of the top examples' group.</summary>
    public const string TopGroupName = "Top activations";

    const string FeatureType = "cross layer transcoder";

    static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The viewer's index of (layer, feature): cantor(layer, feature) for v0.5.0, the feature for d797c82.</summary>
    public static long FileIndex(int layer, int feature, NeuronpediaFlavor flavor = NeuronpediaFlavor.V050) =>
        flavor == NeuronpediaFlavor.V050 ? NeuronpediaGraphJson.Cantor(layer, feature) : feature;

    /// <summary>
    /// Writes the detail file of each of <paramref name="features"/> (every feature of the store when null) of
    /// <paramref name="layer"/>'s store to <c>{folder}/{scan}/{index}.json</c>, each atomically.
    /// </summary>
    /// <param name="folder">The features folder (circuit-tracer's features_dir); created if missing.</param>
    /// <param name="scan">The scan: metadata.scan of the graph, or its transcoder_list entry for this layer when the scan is "custom-…".</param>
    /// <param name="layer">The layer the store's dictionary belongs to.</param>
    /// <param name="store">The layer's feature store.</param>
    /// <param name="features">Feature indices; null for all of them.</param>
    /// <param name="flavor">The graph's conventions (file index cantor(layer, feature) for v0.5.0).</param>
    /// <exception cref="InputError">The scan is not a relative folder path, the folder is a file, a feature is outside the store, the store's hook is at another layer, or a stored value is damaged.</exception>
    public static IReadOnlyList<NeuronpediaFeatureFile> Write(string folder, string scan, int layer, FeatureStore store,
        IEnumerable<int>? features = null, NeuronpediaFlavor flavor = NeuronpediaFlavor.V050)
    {
        ArgumentNullException.ThrowIfNull(store);
        var refs = (features ?? Enumerable.Range(0, store.DSae)).Distinct().Select(f => new GraphFeatureRef(scan, layer, f, FileIndex(layer, f, flavor)));
        return WriteRefs(folder, refs, l => l == layer ? store : null);
    }

    /// <summary>
    /// Writes every feature of every layer's store under one scan (a graph whose metadata.scan names them all:
    /// v0.5.0 indices keep the layers apart). <paramref name="stores"/>[ℓ] is layer ℓ's store; null skips a layer.
    /// </summary>
    /// <param name="folder">The features folder; created if missing.</param>
    /// <param name="scan">The graph's metadata.scan.</param>
    /// <param name="stores">One store per layer (null: no file for that layer).</param>
    /// <param name="flavor">The graph's conventions; d797c82 indices collide across layers under one scan and are refused.</param>
    /// <exception cref="InputError">As for <see cref="Write"/>, or two layers' features map to the same file.</exception>
    public static IReadOnlyList<NeuronpediaFeatureFile> WriteLayers(string folder, string scan, IReadOnlyList<FeatureStore?> stores,
        NeuronpediaFlavor flavor = NeuronpediaFlavor.V050)
    {
        ArgumentNullException.ThrowIfNull(stores);
        var refs = Enumerable.Range(0, stores.Count).Where(l => stores[l] is not null)
            .SelectMany(l => Enumerable.Range(0, stores[l]!.DSae).Select(f => new GraphFeatureRef(scan, l, f, FileIndex(l, f, flavor))));
        return WriteRefs(folder, refs, l => l < stores.Count ? stores[l] : null);
    }

    /// <summary>
    /// Writes the detail file of every feature node of a Neuronpedia graph JSON (as <see cref="NeuronpediaGraphJson"/>
    /// or circuit-tracer writes it), at the scan and index the viewer will fetch for that node.
    /// </summary>
    /// <param name="folder">The features folder; created if missing.</param>
    /// <param name="graphJson">The graph file.</param>
    /// <param name="stores">One store per layer, <c>stores[ℓ]</c> for layer ℓ (null where the graph has no feature).</param>
    /// <exception cref="InputError">The graph file is not a Neuronpedia graph, a node's layer has no store, a store was built on another model than the graph's, or as for <see cref="Write"/>.</exception>
    public static IReadOnlyList<NeuronpediaFeatureFile> WriteForGraph(string folder, string graphJson, IReadOnlyList<FeatureStore?> stores)
    {
        ArgumentNullException.ThrowIfNull(stores);
        var graph = ReadGraph(graphJson);
        var refs = GraphFeatures(graph, graphJson);
        string? modelFingerprint = graph["metadata"]?["loupe"]?["model_fingerprint"] is JsonValue v && v.TryGetValue(out string? fp) ? fp : null;
        foreach (int layer in refs.Select(r => r.Layer).Distinct().Order())
        {
            var store = layer < stores.Count ? stores[layer] : null;
            if (store is null)
                throw new InputError($"{graphJson}: the graph has features at layer {layer}; no feature store was given for layer {layer} ({stores.Count} given, for layers 0..{stores.Count - 1})");
            if (modelFingerprint is not null && store.Meta.TryGetValue("model_fingerprint", out var storeFp) && storeFp != modelFingerprint)
                throw new InputError($"{store.Path}: built on model fingerprint {storeFp}; the graph {graphJson} was made on {modelFingerprint} (metadata.loupe.model_fingerprint)");
        }
        return WriteRefs(folder, refs, l => l < stores.Count ? stores[l] : null);
    }

    /// <summary>Reads a graph JSON file as an object.</summary>
    /// <exception cref="InputError">Not valid JSON, or not an object.</exception>
    public static JsonObject ReadGraph(string path)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full)) throw new FileNotFoundException($"graph file not found: {full}; write it with `loupe attribute`", full);
        var root = JsonInput.ParseNode(File.ReadAllBytes(full), $"{full} (a Neuronpedia graph: metadata, nodes, links)");
        return root as JsonObject ?? throw new InputError($"{full}: expected a Neuronpedia graph object (metadata, nodes, links), found {root?.GetValueKind().ToString() ?? "null"}");
    }

    /// <summary>
    /// The distinct feature nodes of a graph (feature_type "cross layer transcoder"): layer, feature (from the
    /// node id "{layer}_{feature}_{pos}"), the node's <c>feature</c> field and the scan the viewer uses for it.
    /// </summary>
    /// <param name="graph">The graph JSON.</param>
    /// <param name="where">Names the graph in errors.</param>
    /// <exception cref="InputError">metadata, nodes or a feature node's fields are missing or malformed, or a v0.5.0 node's index is not cantor(layer, feature).</exception>
    public static IReadOnlyList<GraphFeatureRef> GraphFeatures(JsonObject graph, string where = "graph")
    {
        ArgumentNullException.ThrowIfNull(graph);
        if (graph["metadata"] is not JsonObject metadata) throw new InputError($"{where}: 'metadata': expected an object, found {Kind(graph["metadata"])}");
        if (graph["nodes"] is not JsonArray nodes) throw new InputError($"{where}: 'nodes': expected an array, found {Kind(graph["nodes"])}");
        bool cantor = Integer(metadata["schema_version"]) >= 1;
        var seen = new HashSet<(int, int)>();
        var refs = new List<GraphFeatureRef>();
        for (int i = 0; i < nodes.Count; i++)
        {
            if (nodes[i] is not JsonObject node) throw new InputError($"{where}: nodes[{i}]: expected an object, found {Kind(nodes[i])}");
            if (!(node["feature_type"] is JsonValue t && t.TryGetValue(out string? type) && type == FeatureType)) continue;
            string at = $"{where}: nodes[{i}]";
            string nodeId = String(node, "node_id", at);
            string[] parts = nodeId.Split('_');
            if (parts.Length != 3 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int layer)
                || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int feature))
                throw new InputError($"{at}: 'node_id': expected \"{{layer}}_{{feature}}_{{pos}}\" for a feature node, found {InputError.Show(nodeId)}");
            if (String(node, "layer", at) != layer.ToString(CultureInfo.InvariantCulture))
                throw new InputError($"{at}: 'layer' is {InputError.Show(node["layer"]?.ToJsonString())}; the node id {nodeId} says layer {layer}");
            if (Integer(node["feature"]) is not long index)
                throw new InputError($"{at}: 'feature': expected an integer, found {Kind(node["feature"])}");
            long expected = FileIndex(layer, feature, cantor ? NeuronpediaFlavor.V050 : NeuronpediaFlavor.D797c82);
            if (index != expected)
                throw new InputError($"{at}: 'feature' is {index}; node {nodeId} in a {(cantor ? "schema_version 1 (v0.5.0) graph expects cantor(layer, feature)" : "graph without schema_version expects the feature index")} = {expected}");
            if (seen.Add((layer, feature))) refs.Add(new GraphFeatureRef(ScanOfLayer(metadata, layer, where), layer, feature, index));
        }
        return refs;
    }

    /// <summary>The scan the viewer fetches layer <paramref name="layer"/>'s features from: transcoder_list[layer] for a "custom-…" scan, else metadata.scan.</summary>
    /// <exception cref="InputError">No scan, or a custom scan whose transcoder_list has no entry for the layer.</exception>
    public static string ScanOfLayer(JsonObject metadata, int layer, string where = "graph")
    {
        ArgumentNullException.ThrowIfNull(metadata);
        if (!(metadata["scan"] is JsonValue s && s.TryGetValue(out string? scan))) throw new InputError($"{where}: 'metadata.scan': expected a string, found {Kind(metadata["scan"])}");
        if (!scan.StartsWith("custom-", StringComparison.Ordinal)) return scan;
        if (metadata["transcoder_list"] is JsonArray list && layer < list.Count && list[layer] is JsonValue e && e.TryGetValue(out string? name)) return name;
        throw new InputError($"{where}: 'metadata.transcoder_list': the scan {InputError.Show(scan)} is custom, so the viewer reads layer {layer}'s features from transcoder_list[{layer}]; expected a string there, found {Kind(metadata["transcoder_list"] is JsonArray a && layer < a.Count ? a[layer] : null)}");
    }

    static string String(JsonObject node, string key, string at) =>
        node[key] is JsonValue v && v.TryGetValue(out string? s) ? s : throw new InputError($"{at}: '{key}': expected a string, found {Kind(node[key])}");

    /// <summary>An integer JSON number (parsed, or built in memory as int or long), else null.</summary>
    static long? Integer(JsonNode? node)
    {
        if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.Number) return null;
        if (v.TryGetValue(out long l)) return l;
        if (v.TryGetValue(out int i)) return i;
        return v.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < 1L << 53 ? (long)d : null;
    }

    static string Kind(JsonNode? node) => node is null ? "nothing" : node.GetValueKind().ToString().ToLowerInvariant();

    static IReadOnlyList<NeuronpediaFeatureFile> WriteRefs(string folder, IEnumerable<GraphFeatureRef> refs, Func<int, FeatureStore?> storeOf)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string root = Path.GetFullPath(folder);
        var list = refs.ToList();
        // Check everything before writing anything: a bad scan or feature leaves the folder untouched.
        var targets = new Dictionary<string, GraphFeatureRef>(StringComparer.Ordinal);
        var checkedLayers = new HashSet<int>();
        foreach (var r in list)
        {
            var store = storeOf(r.Layer) ?? throw new InputError($"layer {r.Layer}: no feature store given");
            if (checkedLayers.Add(r.Layer)) CheckLayer(store, r.Layer);
            if ((uint)r.Feature >= (uint)store.DSae)
                throw new InputError($"{store.Path}: feature {r.Feature} of layer {r.Layer} is not in this store (d_sae = {store.DSae}); is it the store of layer {r.Layer}'s transcoder?");
            string path = Path.Combine(root, Path.Combine(ScanSegments(r.Scan)), r.Index.ToString(CultureInfo.InvariantCulture) + ".json");
            if (targets.TryGetValue(path, out var other) && (other.Layer, other.Feature) != (r.Layer, r.Feature))
                throw new InputError($"{path}: layer {other.Layer} feature {other.Feature} and layer {r.Layer} feature {r.Feature} both map to this file " +
                    "(d797c82 indices are per-layer feature indices: give each layer its own scan, or use v0.5.0's cantor indices)");
            targets[path] = r;
        }
        OutputFiles.EnsureFolder(root);
        var written = new List<NeuronpediaFeatureFile>(targets.Count);
        foreach (var (path, r) in targets)
        {
            var store = storeOf(r.Layer)!;
            OutputFiles.WriteAtomic(path, stream => WriteFeature(stream, store, r.Layer, r.Feature, r.Index));
            written.Add(new NeuronpediaFeatureFile(r.Scan, r.Layer, r.Feature, r.Index, path));
        }
        return written;
    }

    /// <summary>A store whose hook names a layer must be that layer's: a store of layer 0 given for layer 1 would label every feature wrongly.</summary>
    static void CheckLayer(FeatureStore store, int layer)
    {
        if (SaeLensFormat.LayerOf(store.Hook) is int hookLayer && hookLayer != layer)
            throw new InputError($"{store.Path}: given for layer {layer}, but its dictionary reads {store.Hook} (layer {hookLayer})");
    }

    /// <summary>The scan as folder names; refuses anything that would leave the features folder or change how the viewer resolves it.</summary>
    static string[] ScanSegments(string scan) =>
        IsValidScan(scan) ? scan.Split('/') : throw new InputError($"scan {InputError.Show(scan)}: expected {ScanExpected}");

    /// <summary>What a scan must be, for refusals.</summary>
    public const string ScanExpected =
        "a relative folder path of plain names separated by '/' (e.g. \"gpt2-tc\" or \"tc/layer_0\"), no '.', '..' or empty parts";

    /// <summary>True when <paramref name="scan"/> is a relative folder path of plain names (see <see cref="ScanExpected"/>).</summary>
    public static bool IsValidScan(string scan) =>
        scan.Split('/').All(s => s.Length > 0 && s is not ("." or "..") && s.IndexOfAny(Path.GetInvalidFileNameChars()) < 0 && !s.Contains('\\'));

    /// <summary>Writes one feature's detail JSON (the fields at the top of this file) to <paramref name="stream"/>.</summary>
    /// <param name="stream">Where to write (UTF-8).</param>
    /// <param name="store">The feature's store.</param>
    /// <param name="layer">The feature's layer (recorded in the file).</param>
    /// <param name="feature">The feature index in the store.</param>
    /// <param name="index">The viewer's index (recorded in the file).</param>
    /// <exception cref="InputError">The feature is outside the store, or a stored value is damaged.</exception>
    public static void WriteFeature(Stream stream, FeatureStore store, int layer, int feature, long index)
    {
        ArgumentNullException.ThrowIfNull(store);
        var summary = store.Feature(feature);
        var top = store.Examples(feature, FeatureStoreSchema.Top);
        var sampled = store.Examples(feature, FeatureStoreSchema.Quantile);
        var intervals = store.Intervals(feature);
        var histogram = store.Histogram(feature, FeatureStoreSchema.ActsHistogram);
        using var w = new Utf8JsonWriter(stream, WriterOptions);
        w.WriteStartObject();
        w.WriteNumber("act_min", 0);
        w.WriteNumber("act_max", summary.MaxAct);
        w.WriteNumber("activation_frequency", summary.Density);
        w.WriteStartArray("top_logits");
        foreach (var r in store.Logits(feature, FeatureStoreSchema.Promoted)) w.WriteStringValue(LogitText(store, r));
        w.WriteEndArray();
        w.WriteStartArray("bottom_logits");
        foreach (var r in store.Logits(feature, FeatureStoreSchema.Suppressed)) w.WriteStringValue(LogitText(store, r));
        w.WriteEndArray();

        var shown = new HashSet<(int, int)>();
        w.WriteStartArray("examples_quantiles");
        WriteGroup(w, store, TopGroupName, top, shown);
        foreach (var interval in intervals)
        {
            var group = sampled.Where(e => e.Bin == interval.Bin).ToList();
            if (group.Count == 0) continue;
            WriteGroup(w, store, IntervalName(interval, intervals.Count), group, shown);
        }
        w.WriteEndArray();

        if (histogram is not null)
        {
            w.WriteStartArray("histogram");
            foreach (long c in histogram.Counts) w.WriteNumberValue(c);
            w.WriteEndArray();
            if (PercentileValues(histogram, store.Tokens) is { } percentiles)
            {
                w.WriteStartArray("quantile_values");
                foreach (double v in percentiles) w.WriteNumberValue(v);
                w.WriteEndArray();
            }
        }

        w.WriteNumber("layer", layer);
        w.WriteNumber("feature", feature);
        w.WriteNumber("index", index);
        w.WriteNumber("n_active", summary.NActive);
        w.WriteNumber("max_act", summary.MaxAct);
        if (summary.MeanAct is double mean) w.WriteNumber("mean_act", mean);
        else w.WriteNull("mean_act");
        w.WriteStartObject("loupe");
        w.WriteString("feature_store", store.Path);
        foreach (string key in (string[])["sae_path", "hook", "model", "model_fingerprint", "source", "n_tokens", "created_utc"])
            if (store.Meta.TryGetValue(key, out var value)) w.WriteString(key, value);
        w.WriteString("loupe_version", Attributor.LoupeVersion);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>"Interval 3/10: (0.412, 0.549]" — the store's equal activation intervals, numbered from the lowest.</summary>
    static string IntervalName(QuantileInterval interval, int count) =>
        string.Create(CultureInfo.InvariantCulture, $"Interval {interval.Bin + 1}/{count}: ({interval.Lower:0.###}, {interval.Upper:0.###}]");

    static void WriteGroup(Utf8JsonWriter w, FeatureStore store, string name, IReadOnlyList<FeatureExample> examples, HashSet<(int, int)> shown)
    {
        w.WriteStartObject();
        w.WriteString("quantile_name", name);
        w.WriteStartArray("examples");
        foreach (var e in examples)
        {
            w.WriteStartObject();
            w.WriteStartArray("tokens");
            foreach (int t in e.WindowTokens) w.WriteStringValue(TokenText(store, t));
            w.WriteEndArray();
            w.WriteStartArray("tokens_acts_list");
            foreach (float a in e.WindowActs) w.WriteNumberValue(a);
            w.WriteEndArray();
            w.WriteNumber("train_token_ind", e.Position - e.WindowStart);
            w.WriteBoolean("is_repeated_datapoint", !shown.Add((e.ContextId, e.Position)));
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>A token's text from the store's vocabulary, or "&lt;id&gt;" when it has none (a model without a tokenizer).</summary>
    public static string TokenText(FeatureStore store, int tokenId) =>
        store.TokenText(tokenId) ?? $"<{tokenId.ToString(CultureInfo.InvariantCulture)}>";

    static string LogitText(FeatureStore store, LogitRow r) => r.TokenStr ?? TokenText(store, r.TokenId);

    /// <summary>
    /// The 1st … 100th percentiles of the feature's activation over all <paramref name="tokens"/> (inactive tokens
    /// count as 0): value i is the smallest v with at least (i+1)% of tokens ≤ v, found in the histogram bin that
    /// holds it and interpolated linearly inside the bin (exact to one bin width). Null when no token was counted.
    /// </summary>
    /// <param name="histogram">The feature's activation histogram over (0, max] (its counts sum to n_active).</param>
    /// <param name="tokens">Tokens the store covers.</param>
    public static double[]? PercentileValues(FeatureHistogram histogram, long tokens)
    {
        ArgumentNullException.ThrowIfNull(histogram);
        if (tokens <= 0) return null;
        long active = histogram.Counts.Sum();
        long zeros = Math.Max(0, tokens - active);
        var values = new double[Percentiles];
        for (int i = 0; i < Percentiles; i++)
        {
            // Tokens at or below the percentile: ceil((i+1)/100 · N), computed exactly in integers.
            long needed = ((i + 1) * tokens + Percentiles - 1) / Percentiles;
            if (needed <= zeros || active == 0) { values[i] = 0; continue; }
            long rank = needed - zeros, below = 0;
            int k = 0;
            while (k < histogram.Counts.Length - 1 && below + histogram.Counts[k] < rank) below += histogram.Counts[k++];
            double lower = histogram.Edges[k], upper = histogram.Edges[k + 1];
            double within = histogram.Counts[k] == 0 ? 1 : Math.Clamp((double)(rank - below) / histogram.Counts[k], 0, 1);
            values[i] = lower + within * (upper - lower);
        }
        return values;
    }
}
