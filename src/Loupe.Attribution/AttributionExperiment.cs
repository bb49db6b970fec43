using Loupe.Attribution.Graph;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;

namespace Loupe.Attribution;

/// <summary>What <c>AttributionExperiment.Run</c> wrote and measured.</summary>
/// <param name="Graph">The unpruned graph.</param>
/// <param name="Pruning">Node and edge pruning at the requested thresholds.</param>
/// <param name="Scores">Replacement and completeness scores of the unpruned graph.</param>
/// <param name="Stats">Time, batches, pass equivalents and the memory estimate.</param>
/// <param name="GraphJson">The Neuronpedia graph file.</param>
/// <param name="GraphSafetensors">The raw graph (adjacency, nodes, activations, pruning).</param>
/// <param name="HeadsJson">The per-head split of the pruned graph's edges, when asked for.</param>
public sealed record AttributionOutputs(AttributionGraph Graph, GraphPruneResult Pruning, GraphScoreResult Scores, AttributionStats Stats, string GraphJson, string GraphSafetensors, string? HeadsJson);

/// <summary>
/// <c>loupe attribute</c> as a library call: attribute a prompt, prune, score, and write the graph as
/// circuit-tracer / Neuronpedia JSON (plus the folder's graph-metadata.json) and as safetensors. Every
/// file is written atomically, so an interrupted run leaves the folder as it was.
/// </summary>
public static class AttributionExperiment
{
    /// <param name="model">The model.</param>
    /// <param name="transcoders">The dictionaries that replace its MLPs.</param>
    /// <param name="tokens">The prompt's token ids.</param>
    /// <param name="prompt">The prompt as text, when known.</param>
    /// <param name="settings">Attribution settings.</param>
    /// <param name="nodeThreshold">Node-influence pruning threshold (circuit-tracer: 0.8).</param>
    /// <param name="edgeThreshold">Edge-influence pruning threshold (circuit-tracer: 0.98).</param>
    /// <param name="folder">Output folder.</param>
    /// <param name="slug">The graph's name: <c>{slug}.json</c> and <c>{slug}.safetensors</c>.</param>
    /// <param name="perHead">Also split every kept edge by the attention heads that carried it (<c>{slug}.heads.json</c>).</param>
    /// <param name="scan">
    /// The graph JSON's <c>metadata.scan</c> (Neuronpedia's name for the transcoder set, or circuit-tracer's
    /// <c>ORG/NAME[//PATH][@REV]</c> for a hub set); null: <c>custom-…</c> from the transcoder list.
    /// </param>
    public static AttributionOutputs Run(HookedTransformer model, IMlpReplacement transcoders, int[] tokens, string? prompt,
        AttributionSettings settings, double nodeThreshold, double edgeThreshold, string folder, string slug, bool perHead = false, string? scan = null) =>
        Run(new Attributor(model, transcoders, settings), model, transcoders, tokens, prompt, nodeThreshold, edgeThreshold, folder, slug, perHead, scan);

    /// <summary>As the other overload, with the transcoders' weights already on the model's device (a server uploads them once for every graph).</summary>
    /// <param name="model">The model, on the backend the weights were uploaded to.</param>
    /// <param name="transcoders">The transcoders' weights on that backend.</param>
    /// <param name="tokens">The prompt's token ids.</param>
    /// <param name="prompt">The prompt as text, when known.</param>
    /// <param name="settings">Attribution settings.</param>
    /// <param name="nodeThreshold">Node-influence pruning threshold.</param>
    /// <param name="edgeThreshold">Edge-influence pruning threshold.</param>
    /// <param name="folder">Output folder.</param>
    /// <param name="slug">The graph's name.</param>
    /// <param name="perHead">Also split every kept edge by attention head.</param>
    public static AttributionOutputs Run(HookedTransformer model, DeviceMlpReplacement transcoders, int[] tokens, string? prompt,
        AttributionSettings settings, double nodeThreshold, double edgeThreshold, string folder, string slug, bool perHead = false) =>
        Run(new Attributor(model, transcoders, settings), model, transcoders.Replacement, tokens, prompt, nodeThreshold, edgeThreshold, folder, slug, perHead, null);

    static AttributionOutputs Run(Attributor attributor, HookedTransformer model, IMlpReplacement transcoders, int[] tokens, string? prompt,
        double nodeThreshold, double edgeThreshold, string folder, string slug, bool perHead, string? scan)
    {
        var graph = attributor.Attribute(tokens, prompt);
        var pruning = GraphPruning.Prune(graph, nodeThreshold, edgeThreshold);
        var scores = GraphScores.Compute(graph);
        var tokenizer = model.Tokenizer;
        var options = new NeuronpediaGraphOptions
        {
            Slug = slug,
            Scan = scan,
            // A config's list as it names the files (hf:// URIs stay as circuit-tracer writes them); else folder/layer_ℓ.
            TranscoderList = transcoders is CircuitTracerTranscoders { Listed: { } listed } ? [.. listed]
                : transcoders is MappedPerLayerTranscoders { Listed: { } mappedList } ? [.. mappedList]
                : [.. Enumerable.Range(0, transcoders.Layers).Select(l => $"{Path.GetFileName(transcoders.Source.TrimEnd('/'))}/layer_{l}")],
            TokenText = tokenizer is null ? null : id => tokenizer.Decode([id]),
        };
        string json = NeuronpediaGraphJson.WriteFiles(folder, graph, pruning, options);
        string raw = Path.Combine(Path.GetFullPath(folder), slug + ".safetensors");
        GraphSafetensors.Write(raw, graph, pruning);
        string? heads = null;
        if (perHead)
        {
            var split = attributor.AttributeHeads(graph, [.. pruning.KeptEdges()]);
            heads = Path.Combine(Path.GetFullPath(folder), slug + ".heads.json");
            WriteHeads(heads, graph, split, pruning.KeptNodes());
        }
        return new AttributionOutputs(graph, pruning, scores, attributor.Stats!, json, raw, heads);
    }

    /// <summary>
    /// <c>[{target, source, weight, direct, heads: [{layer, head, weight}]}]</c> with Neuronpedia node ids, heads by
    /// magnitude; <c>weight = direct + Σ heads</c>.
    /// </summary>
    static void WriteHeads(string path, AttributionGraph graph, IReadOnlyList<EdgeHeads> split, int[] keptNodes)
    {
        var array = new System.Text.Json.Nodes.JsonArray();
        bool layerErrorIds = NeuronpediaGraphJson.ErrorIdsCollide(graph, keptNodes);
        foreach (var e in split)
            array.Add(new System.Text.Json.Nodes.JsonObject
            {
                ["target"] = NeuronpediaGraphJson.NodeId(graph, e.Target, layerErrorIds),
                ["source"] = NeuronpediaGraphJson.NodeId(graph, e.Source, layerErrorIds),
                ["weight"] = e.Total,
                ["direct"] = e.Direct,
                ["heads"] = new System.Text.Json.Nodes.JsonArray([.. e.Heads.Select(h => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject
                {
                    ["layer"] = h.Layer, ["head"] = h.Head, ["weight"] = h.Weight,
                })]),
            });
        var root = new System.Text.Json.Nodes.JsonObject
        {
            ["description"] = "Each kept edge split by the attention head nearest the target on its paths: weight = direct (residual only) + Σ heads.",
            ["prompt_tokens"] = new System.Text.Json.Nodes.JsonArray([.. graph.InputTokens.Select(t => (System.Text.Json.Nodes.JsonNode)t)]),
            ["edges"] = array,
        };
        if (graph.Provenance is { } p)
            root["loupe"] = new System.Text.Json.Nodes.JsonObject
            {
                ["model"] = p.Model, ["model_fingerprint"] = p.ModelFingerprint,
                ["transcoders"] = p.Transcoders, ["transcoder_fingerprint"] = p.TranscoderFingerprint,
                ["settings"] = new System.Text.Json.Nodes.JsonObject([.. p.Settings.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value))]),
                ["loupe_version"] = p.LoupeVersion, ["created_utc"] = p.CreatedUtc.ToString("O"),
            };
        OutputFiles.WriteAtomic(path, stream =>
        {
            using var w = new System.Text.Json.Utf8JsonWriter(stream, new System.Text.Json.JsonWriterOptions { Indented = true });
            root.WriteTo(w);
        });
    }
}
