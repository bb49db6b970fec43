// A pruned graph as the JSON that circuit-tracer's utils.create_graph_files writes and Neuronpedia's
// graph viewer reads (schema: tests/data/attribution/neuronpedia-graph-schema.json).
//
// 1. Nodes: every node the pruning keeps, in node order, as circuit-tracer's frontend Node:
//      feature  node_id "{layer}_{feature}_{pos}"   jsNodeId "{layer}_{feature}-0"   feature = cantor(layer, feature) (v0.5.0)
//      error    node_id "0_{layer}_{pos}"           jsNodeId "{layer}_{pos}-0"       feature = −1
//      token    node_id "E_{token}_{pos}"           jsNodeId "E_{token}-{pos}"       feature = pos
//      logit    node_id "{L+1}_{token}_{T−1}"       jsNodeId "L_{token}-{T−1}"       feature = token; clerp 'Output "tok" (p=0.123)'
//    influence = the node's cumulative score (none for logits), activation = the feature's activation.
// 2. Links: every kept edge between kept nodes, row-major (by target, then source): weight = A[target, source].
// 3. Nodes without a link are left out, except tokens and logits.
// 4. metadata (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, schema_version) and qParams;
//    a graph with provenance adds what made it (info.generator, generation_settings, pruning_settings and
//    a "loupe" object: model and transcoder fingerprints, settings, version, time): the schema allows extra keys.
// 5. Files: "{slug}.json" and graph-metadata.json (the folder's index: {"graphs": [metadata…]}, one entry per slug).
//
// Error node ids are circuit-tracer's ("0_{layer}_{pos}"), which can collide with the feature node of
// layer 0, feature = layer, at the same position; later circuit-tracer versions changed the id to
// "{layer}_-1_{pos}". Both versions this file follows (d797c82 and v0.5.0) use the old form, as does the fixture;
// when two nodes written to one file would share an id that way, every error id takes the later form instead.

using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Loupe.Attribution.Graph;

/// <summary>Which circuit-tracer release's JSON conventions to follow.</summary>
public enum NeuronpediaFlavor
{
    /// <summary>v0.5.0: a feature node's <c>feature</c> is cantor(layer, feature) = (l+f)(l+f+1)/2 + f, and <c>metadata.schema_version</c> is 1.</summary>
    V050,
    /// <summary>d797c82 with a custom transcoder list: <c>feature</c> is the feature index, no schema_version.</summary>
    D797c82,
}

/// <summary>What a Neuronpedia graph file is called and how its tokens read.</summary>
public sealed record NeuronpediaGraphOptions
{
    /// <summary>The graph's slug: its file name (<c>{slug}.json</c>) and id in graph-metadata.json.</summary>
    public required string Slug { get; init; }

    /// <summary>
    /// Neuronpedia's model id. When null: <c>"custom-{hash}"</c> of <see cref="TranscoderList"/> as circuit-tracer
    /// names a custom transcoder list (a stable hash here; circuit-tracer's is Python's salted <c>hash</c>), else
    /// the provenance's model.
    /// </summary>
    public string? Scan { get; init; }

    /// <summary>The transcoders' names (circuit-tracer's <c>transcoder_list</c>).</summary>
    public IReadOnlyList<string> TranscoderList { get; init; } = [];

    /// <summary>
    /// Decodes one token id (prompt tokens and logits). When null, prompt tokens come from the graph's
    /// <see cref="AttributionGraph.TokenStrings"/> when it has them, else (and for logits) as <c>"&lt;id&gt;"</c>.
    /// </summary>
    public Func<int, string>? TokenText { get; init; }

    /// <summary>The release whose conventions to follow (default v0.5.0).</summary>
    public NeuronpediaFlavor Flavor { get; init; } = NeuronpediaFlavor.V050;
}

/// <summary>circuit-tracer's <c>create_graph_files</c> (the steps are listed at the top of this file).</summary>
public static class NeuronpediaGraphJson
{
    /// <summary>The folder index circuit-tracer maintains beside the graph files.</summary>
    public const string IndexFileName = "graph-metadata.json";

    static readonly JsonWriterOptions WriterOptions = new() { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>
    /// Writes <c>{slug}.json</c> into <paramref name="folder"/> (created if missing) and adds or replaces the
    /// slug's entry in the folder's graph-metadata.json; both atomically. Returns the graph file's path.
    /// </summary>
    /// <param name="folder">The output folder.</param>
    /// <param name="graph">The graph.</param>
    /// <param name="pruning">Its pruning (<see cref="GraphPruning.Prune"/>).</param>
    /// <param name="options">Slug, scan, token text, flavor.</param>
    /// <exception cref="ArgumentException">The slug is empty or not a plain file name, no scan can be named, the pruning is for another node count, or a written number is NaN or infinite.</exception>
    /// <exception cref="InputError">The folder path is a file, or the existing graph-metadata.json is not <c>{"graphs": [...]}</c>.</exception>
    public static string WriteFiles(string folder, AttributionGraph graph, GraphPruneResult pruning, NeuronpediaGraphOptions options)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        CheckSlug(options);
        var metadata = Metadata(graph, pruning, options);
        OutputFiles.EnsureFolder(folder);
        string path = Path.Combine(Path.GetFullPath(folder), options.Slug + ".json");
        OutputFiles.WriteAtomic(path, stream => Write(stream, graph, pruning, options, metadata));
        AddToIndex(folder, metadata);
        return path;
    }

    /// <summary>Writes the graph JSON to <paramref name="stream"/>.</summary>
    /// <param name="stream">Where to write (UTF-8, indented).</param>
    /// <param name="graph">The graph.</param>
    /// <param name="pruning">Its pruning (<see cref="GraphPruning.Prune"/>).</param>
    /// <param name="options">Slug, scan, token text, flavor.</param>
    /// <exception cref="ArgumentException">As for <see cref="WriteFiles"/>.</exception>
    public static void Write(Stream stream, AttributionGraph graph, GraphPruneResult pruning, NeuronpediaGraphOptions options)
    {
        CheckSlug(options);
        Write(stream, graph, pruning, options, Metadata(graph, pruning, options));
    }

    static void Write(Stream stream, AttributionGraph graph, GraphPruneResult pruning, NeuronpediaGraphOptions options, JsonObject metadata)
    {
        int n = GraphInfluence.CheckShape(graph);
        if (pruning.NodeCount != n)
            throw new ArgumentException($"the pruning is for {pruning.NodeCount} nodes; the graph has {n}", nameof(pruning));

        // 1–3. Kept nodes, their links, and the nodes that some link touches (ids as strings, as circuit-tracer compares them).
        var ids = new string?[n];
        bool layerErrorIds = ErrorIdsCollide(graph, pruning.KeptNodes());
        foreach (int i in pruning.KeptNodes()) ids[i] = NodeId(graph, i, layerErrorIds);
        var connected = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (t, s) in KeptLinks(pruning, ids)) { connected.Add(ids[s]!); connected.Add(ids[t]!); }

        using var w = new Utf8JsonWriter(stream, WriterOptions);
        w.WriteStartObject();
        w.WritePropertyName("metadata");
        metadata.WriteTo(w);
        w.WriteStartObject("qParams");
        w.WriteStartArray("pinnedIds"); w.WriteEndArray();
        w.WriteStartArray("supernodes"); w.WriteEndArray();
        w.WriteString("linkType", "both");
        w.WriteString("clickedId", "");
        w.WriteString("sg_pos", "");
        w.WriteEndObject();

        w.WriteStartArray("nodes");
        for (int i = 0; i < n; i++)
        {
            if (ids[i] is not { } id) continue;
            var kind = graph.Node(i).Kind;
            if (kind is NodeKind.Feature or NodeKind.Error && !connected.Contains(id)) continue;
            WriteNode(w, graph, pruning, options, i, id);
        }
        w.WriteEndArray();

        w.WriteStartArray("links");
        foreach (var (t, s) in KeptLinks(pruning, ids))
        {
            w.WriteStartObject();
            w.WriteString("source", ids[s]);
            w.WriteString("target", ids[t]);
            WriteFinite(w, "weight", graph.Edge(t, s), ids[s]!);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    static IEnumerable<(int Target, int Source)> KeptLinks(GraphPruneResult pruning, string?[] ids) =>
        pruning.KeptEdges().Where(e => ids[e.Target] is not null && ids[e.Source] is not null);

    /// <summary>
    /// Whether, among <paramref name="nodes"/>, circuit-tracer's error id <c>"0_{layer}_{pos}"</c> equals a feature's
    /// <c>"0_{feature}_{pos}"</c> (a layer-0 feature whose index is a layer number, at the same position).
    /// </summary>
    public static bool ErrorIdsCollide(AttributionGraph graph, IEnumerable<int> nodes)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (int i in nodes)
            if (!seen.Add(NodeId(graph, i, layerErrorIds: false))) return true;
        return false;
    }

    /// <summary>The node's id in the JSON, circuit-tracer's form (see the table at the top of this file).</summary>
    public static string NodeId(AttributionGraph graph, int index) => NodeId(graph, index, layerErrorIds: false);

    /// <summary>The node's id; with <paramref name="layerErrorIds"/> error nodes are <c>"{layer}_-1_{pos}"</c> (no collision possible).</summary>
    public static string NodeId(AttributionGraph graph, int index, bool layerErrorIds)
    {
        var node = graph.Node(index);
        return node.Kind switch
        {
            NodeKind.Feature => $"{node.Layer}_{node.Index}_{node.Position}",
            NodeKind.Error => layerErrorIds ? $"{node.Layer}_-1_{node.Position}" : $"0_{node.Layer}_{node.Position}",
            NodeKind.Token => $"E_{node.Index}_{node.Position}",
            _ => $"{graph.Layers + 1}_{node.Index}_{node.Position}",
        };
    }

    static void WriteNode(Utf8JsonWriter w, AttributionGraph graph, GraphPruneResult pruning, NeuronpediaGraphOptions options, int i, string id)
    {
        var node = graph.Node(i);
        long feature = node.Kind switch
        {
            NodeKind.Feature => options.Flavor == NeuronpediaFlavor.V050 ? Cantor(node.Layer, node.Index) : node.Index,
            NodeKind.Error => -1,
            NodeKind.Token => node.Position,
            _ => node.Index,
        };
        string layer = node.Kind switch
        {
            NodeKind.Token => "E",
            NodeKind.Logit => (graph.Layers + 1).ToString(CultureInfo.InvariantCulture),
            _ => node.Layer.ToString(CultureInfo.InvariantCulture),
        };
        bool isLogit = node.Kind == NodeKind.Logit;
        string featureType = node.Kind switch
        {
            NodeKind.Feature => "cross layer transcoder",
            NodeKind.Error => "mlp reconstruction error",
            NodeKind.Token => "embedding",
            _ => "logit",
        };
        string jsNodeId = node.Kind switch
        {
            NodeKind.Feature => $"{node.Layer}_{node.Index}-0",
            NodeKind.Error => $"{node.Layer}_{node.Position}-0",
            NodeKind.Token => $"E_{node.Index}-{node.Position}",
            _ => $"L_{node.Index}-{node.Position}",
        };
        double probability = isLogit ? node.Value : 0.0;

        w.WriteStartObject();
        w.WriteString("node_id", id);
        w.WriteNumber("feature", feature);
        w.WriteString("layer", layer);
        w.WriteNumber("ctx_idx", node.Position);
        w.WriteString("feature_type", featureType);
        WriteFinite(w, "token_prob", probability, id);
        w.WriteBoolean("is_target_logit", isLogit && i == graph.LogitOffset);
        w.WriteNumber("run_idx", 0);
        w.WriteNumber("reverse_ctx_idx", 0);
        w.WriteString("jsNodeId", jsNodeId);
        w.WriteString("clerp", isLogit
            ? $"Output \"{ProcessToken(graph.LogitLabels?[i - graph.LogitOffset] ?? LogitText(options, node.Index))}\" (p={probability.ToString("F3", CultureInfo.InvariantCulture)})"
            : "");
        if (isLogit) w.WriteNull("influence");
        else WriteFinite(w, "influence", pruning.CumulativeScores[i], id);
        if (node.Kind == NodeKind.Feature) WriteFinite(w, "activation", node.Value, id);
        else w.WriteNull("activation");
        w.WriteEndObject();
    }

    static void WriteFinite(Utf8JsonWriter w, string name, double value, string id)
    {
        if (!double.IsFinite(value))
            throw new ArgumentException($"node {id}: {name} is {value}; JSON holds only finite numbers", "graph");
        w.WriteNumber(name, value);
    }

    /// <summary>cantor(x, y) = (x + y)(x + y + 1)/2 + y: v0.5.0's single number for (layer, feature).</summary>
    public static long Cantor(long layer, long feature) => (layer + feature) * (layer + feature + 1) / 2 + feature;

    /// <summary>circuit-tracer's process_token: newline, tab and carriage return as visible symbols.</summary>
    public static string ProcessToken(string token) => token.Replace("\n", "⏎").Replace("\t", "→").Replace("\r", "↵");

    static string DefaultText(int id) => $"<{id.ToString(CultureInfo.InvariantCulture)}>";

    static string LogitText(NeuronpediaGraphOptions options, int id) => (options.TokenText ?? DefaultText)(id);

    static string[] PromptTexts(AttributionGraph graph, NeuronpediaGraphOptions options) =>
        options.TokenText is { } decode ? Array.ConvertAll(graph.InputTokens, t => decode(t))
        : graph.TokenStrings is { } strings ? strings
        : Array.ConvertAll(graph.InputTokens, DefaultText);

    /// <summary>The <c>metadata</c> object (also the graph's entry in graph-metadata.json).</summary>
    /// <exception cref="ArgumentException">No scan can be named (no <see cref="NeuronpediaGraphOptions.Scan"/>, transcoder list or provenance).</exception>
    public static JsonObject Metadata(AttributionGraph graph, GraphPruneResult pruning, NeuronpediaGraphOptions options)
    {
        string scan = options.Scan
            ?? (options.TranscoderList.Count > 0 ? "custom-" + StableHash(string.Join("-", options.TranscoderList)) : null)
            ?? graph.Provenance?.Model
            ?? throw new ArgumentException("no scan: set the options' Scan (Neuronpedia's model id), a transcoder list, or the graph's provenance", nameof(options));
        string[] texts = PromptTexts(graph, options);
        var metadata = new JsonObject
        {
            ["slug"] = options.Slug,
            ["scan"] = scan,
            ["transcoder_list"] = new JsonArray(options.TranscoderList.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray()),
            ["prompt_tokens"] = new JsonArray(texts.Select(x => (JsonNode?)JsonValue.Create(ProcessToken(x))).ToArray()),
            ["prompt"] = graph.Prompt ?? string.Concat(texts),
            ["node_threshold"] = pruning.NodeThreshold,
        };
        if (options.Flavor == NeuronpediaFlavor.V050) metadata["schema_version"] = 1;

        if (graph.Provenance is { } p)
        {
            metadata["info"] = new JsonObject
            {
                ["generator"] = new JsonObject { ["name"] = "Loupe", ["version"] = p.LoupeVersion },
                ["create_time_ms"] = p.CreatedUtc.ToUnixTimeMilliseconds(),
                ["source_urls"] = new JsonArray(JsonValue.Create(p.Transcoders)),
            };
            var generation = new JsonObject();
            foreach (var (key, value) in p.Settings) if (SettingValue(key, value) is { } v) generation[key] = v;
            metadata["generation_settings"] = generation;
            metadata["pruning_settings"] = new JsonObject { ["node_threshold"] = pruning.NodeThreshold, ["edge_threshold"] = pruning.EdgeThreshold };
            var settings = new JsonObject();
            foreach (var (key, value) in p.Settings) settings[key] = value;
            metadata["loupe"] = new JsonObject
            {
                ["model"] = p.Model,
                ["model_fingerprint"] = p.ModelFingerprint,
                ["transcoders"] = p.Transcoders,
                ["transcoder_fingerprint"] = p.TranscoderFingerprint,
                ["settings"] = settings,
                ["loupe_version"] = p.LoupeVersion,
                ["created_utc"] = p.CreatedUtc.ToString("O", CultureInfo.InvariantCulture),
            };
        }
        return metadata;
    }

    /// <summary>A setting as a JSON value: numbers as numbers; the schema types four of them as integer or number, so one that does not parse is left out there (it stays, as text, under "loupe").</summary>
    static JsonNode? SettingValue(string key, string value)
    {
        bool isInteger = long.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out long l);
        bool isNumber = double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d);
        return key switch
        {
            "max_n_logits" or "batch_size" or "max_feature_nodes" => isInteger ? JsonValue.Create(l) : null,
            "desired_logit_prob" => isNumber ? JsonValue.Create(d) : null,
            _ => isInteger ? JsonValue.Create(l) : isNumber ? JsonValue.Create(d)
                : value is "true" or "false" ? JsonValue.Create(value == "true") : JsonValue.Create(value),
        };
    }

    static string StableHash(string text) =>
        BitConverter.ToInt64(SHA256.HashData(Encoding.UTF8.GetBytes(text)), 0).ToString(CultureInfo.InvariantCulture);

    /// <summary>Whether <paramref name="slug"/> can name a graph's files: a plain file name, no folder separators, not "." or "..".</summary>
    public static bool IsPlainSlug(string? slug) =>
        !string.IsNullOrWhiteSpace(slug) && slug is not ("." or "..") && slug.IndexOfAny(['/', '\\']) < 0 && slug.IndexOfAny(Path.GetInvalidFileNameChars()) < 0;

    static void CheckSlug(NeuronpediaGraphOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string slug = options.Slug;
        if (!IsPlainSlug(slug))
            throw new ArgumentException($"slug '{slug}': expected a plain file name (no folder separators), e.g. \"my-graph\"", nameof(options));
    }

    /// <summary>circuit-tracer's add_graph_metadata: replaces the slug's entry in the folder's graph-metadata.json (appending it last).</summary>
    static void AddToIndex(string folder, JsonObject metadata)
    {
        string path = Path.Combine(Path.GetFullPath(folder), IndexFileName);
        var graphs = new JsonArray();
        if (File.Exists(path))
        {
            JsonNode? root;
            try { root = JsonNode.Parse(File.ReadAllBytes(path)); }
            catch (JsonException e) { throw new InputError($"{path}: not valid JSON ({e.Message}); expected {{\"graphs\": [...]}}", e); }
            if (root is not JsonObject obj || obj["graphs"] is not JsonArray existing)
                throw new InputError($"{path}: expected an object {{\"graphs\": [...]}}; found {root?.GetValueKind().ToString() ?? "null"} without a \"graphs\" array");
            foreach (var entry in existing)
                if (!(entry is JsonObject e && e["slug"] is JsonValue s && s.TryGetValue(out string? slug) && slug == (string?)metadata["slug"]))
                    graphs.Add(entry?.DeepClone());
        }
        graphs.Add(metadata.DeepClone());
        var index = new JsonObject { ["graphs"] = graphs };
        OutputFiles.WriteAtomic(path, stream =>
        {
            using var w = new Utf8JsonWriter(stream, WriterOptions);
            index.WriteTo(w);
        });
    }
}
