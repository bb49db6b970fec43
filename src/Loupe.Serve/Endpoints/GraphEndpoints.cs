using System.Globalization;
using System.Text.Json;
using Loupe.Attribution;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Transcoders;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Loupe.Serve.Endpoints;

/// <summary>Node kinds in <see cref="CompactGraph"/> (small integers, so a 20,000-node graph stays a few arrays).</summary>
public enum CompactNodeKind { Token = 0, Feature = 1, Error = 2, Logit = 3 }

/// <summary>A graph's nodes as parallel arrays (index i is node i).</summary>
/// <param name="NodeId">circuit-tracer's node_id.</param>
/// <param name="Kind">A <see cref="CompactNodeKind"/> per node.</param>
/// <param name="Layer">The model layer; embeddings −1; logits <see cref="CompactGraph.Layers"/>.</param>
/// <param name="Position">The token position (ctx_idx).</param>
/// <param name="Feature">The transcoder feature index (features), the token id (embeddings and logits), −1 (errors).</param>
/// <param name="Activation">The feature's activation (0 for other kinds).</param>
/// <param name="Influence">The node's cumulative influence (0 for logits).</param>
/// <param name="TokenProb">A logit's probability (0 for other kinds).</param>
/// <param name="Clerp">The node's label (logits: <c>Output "tok" (p=…)</c>), empty when none.</param>
public sealed record CompactNodes(string[] NodeId, int[] Kind, int[] Layer, int[] Position, int[] Feature, float[] Activation, float[] Influence, float[] TokenProb, string[] Clerp);

/// <summary>A graph's edges as parallel arrays of node indices and weights (weight = A[target, source]).</summary>
/// <param name="Source">Source node index.</param>
/// <param name="Target">Target node index.</param>
/// <param name="Weight">The edge's weight.</param>
public sealed record CompactEdges(int[] Source, int[] Target, float[] Weight);

/// <summary>A Neuronpedia-schema graph file in the form the Graph page draws from.</summary>
/// <param name="Id">The artifact id.</param>
/// <param name="Name">The artifact's path in the workspace.</param>
/// <param name="Slug">metadata.slug.</param>
/// <param name="PromptTokens">metadata.prompt_tokens (display text per position).</param>
/// <param name="TokenIds">The prompt's token ids by position, from the embedding nodes (−1 where none).</param>
/// <param name="Layers">Model layers (logit nodes sit on this row).</param>
/// <param name="Nodes">The nodes.</param>
/// <param name="Edges">The edges.</param>
public sealed record CompactGraph(string Id, string Name, string Slug, string[] PromptTokens, int[] TokenIds, int Layers, CompactNodes Nodes, CompactEdges Edges);

/// <summary>One feature edit for <c>POST /api/graph/intervene</c>.</summary>
/// <param name="Layer">Transcoder layer.</param>
/// <param name="Position">Token position, or −1 for every position.</param>
/// <param name="Feature">Feature index in that layer.</param>
/// <param name="Value">The factor (scale; 0 ablates) or the activation to set.</param>
/// <param name="Mode"><c>scale</c> (default) or <c>set</c>.</param>
public sealed record FeatureEditRequest(int Layer, int Position, int Feature, float Value, string? Mode);

/// <summary>Body of <c>POST /api/graph/intervene</c>.</summary>
/// <param name="Tokens">The prompt's token ids (the graph's <see cref="CompactGraph.TokenIds"/>).</param>
/// <param name="Edits">The feature edits.</param>
/// <param name="TopK">Next tokens to list (1–50, default 10).</param>
/// <param name="Frozen">Freeze attention, norms and MLP outputs at the prompt's values (direct effects only).</param>
public sealed record InterveneRequest(int[]? Tokens, FeatureEditRequest[]? Edits, int? TopK, bool? Frozen);

/// <summary>A next token before and after the edits.</summary>
/// <param name="Id">Token id.</param>
/// <param name="Text">Its text.</param>
/// <param name="Before">Probability without the edits (null when outside the top k).</param>
/// <param name="After">Probability with the edits (null when outside the top k).</param>
/// <param name="DeltaLogit">The logit's change.</param>
public sealed record InterventionTokenView(int Id, string Text, float? Before, float? After, double DeltaLogit);

/// <summary>The answer of <c>POST /api/graph/intervene</c>.</summary>
/// <param name="Before">Top-k next tokens of the unedited run (id, text, probability).</param>
/// <param name="After">Top-k next tokens with the edits.</param>
/// <param name="Tokens">The union of both, with probabilities and the logit change.</param>
public sealed record InterventionView(NextTokenView[] Before, NextTokenView[] After, InterventionTokenView[] Tokens);

/// <summary>What the Graph page can do on this server.</summary>
/// <param name="Interventions">Whether the server has transcoders (<c>--transcoders</c>).</param>
/// <param name="TranscoderLayers">Their layer count (0 without).</param>
/// <param name="FeatureStores">The loaded feature stores: file name, hook, d_sae.</param>
public sealed record GraphCapabilities(bool Interventions, int TranscoderLayers, FeatureStoreInfo[] FeatureStores);

/// <summary>A loaded feature store.</summary>
/// <param name="Name">Its file name.</param>
/// <param name="Hook">The hook its dictionary reads.</param>
/// <param name="DSae">Features.</param>
public sealed record FeatureStoreInfo(string Name, string Hook, int DSae);

/// <summary>One top-activating example, as a token window.</summary>
/// <param name="Activation">The activation at the example's token.</param>
/// <param name="Tokens">The window's token texts.</param>
/// <param name="Acts">The feature's activation on each window token.</param>
/// <param name="Focus">The example token's index in the window.</param>
public sealed record FeatureExampleView(double Activation, string[] Tokens, float[] Acts, int Focus);

/// <summary>A feature's dashboard summary from a feature store.</summary>
/// <param name="Store">The store's file name.</param>
/// <param name="Layer">The layer asked for.</param>
/// <param name="Feature">The feature.</param>
/// <param name="Density">Share of tokens where it is active.</param>
/// <param name="MaxAct">Its largest activation.</param>
/// <param name="Explanation">The first stored explanation, or null.</param>
/// <param name="Examples">Top-activating examples (at most 5).</param>
public sealed record FeatureDashboardView(string Store, int Layer, int Feature, double Density, double MaxAct, string? Explanation, FeatureExampleView[] Examples);

/// <summary>The Graph page's API: graphs in compact form, feature dashboards beside a pinned node, and interventions.</summary>
public static class GraphEndpoints
{
    public static void Map(WebApplication app, ModelGate gate, ServeOptions options, Workspace workspace, ServedStores served, ReplacementModel? replacement)
    {
        var model = gate.Model;
        // The stores --features serves (the Features page's too; they are disposed with the server).
        var stores = served.All.Select(s => s.Store).ToArray();

        var api = app.MapGroup("/api/graph");
        api.MapGet("/capabilities", () => new GraphCapabilities(replacement is not null, replacement?.Transcoders.Layers ?? 0,
            [.. stores.Select(s => new FeatureStoreInfo(Path.GetFileName(s.Path), s.Hook, s.DSae))]))
            .WithSummary("Whether interventions (--transcoders) and feature dashboards (--features) are available");
        // Compact forms are cached (by id, size and time) and prepared in the background at start, so opening a large graph
        // costs the browser one small parse rather than the server a 20 MB one.
        var cache = new System.Collections.Concurrent.ConcurrentDictionary<string, (string Stamp, byte[] Json)>();
        async Task<byte[]?> CompactBytes(string id, CancellationToken cancel)
        {
            if (workspace.List().FirstOrDefault(a => a.Id == id) is not { } artifact) return null;
            string stamp = $"{artifact.Bytes}:{artifact.Modified}";
            if (cache.TryGetValue(id, out var hit) && hit.Stamp == stamp) return hit.Json;
            using var doc = await workspace.ReadJsonAsync(id, artifact.Name, cancel);
            if (doc is null) return null;
            byte[] json = JsonSerializer.SerializeToUtf8Bytes(Compact(doc.RootElement, id, artifact.Name), ServeHost.Json);
            if (cache.Count >= 8) cache.Clear();
            cache[id] = (stamp, json);
            return json;
        }
        app.Lifetime.ApplicationStarted.Register(() => Task.Run(async () =>
        {
            foreach (var a in workspace.List().Where(a => a.Kind == "graph" && a.Bytes < 256L << 20).Take(8))
                try { await CompactBytes(a.Id, app.Lifetime.ApplicationStopping); }
                catch (Exception e) when (e is InputError or JsonException or IOException or OperationCanceledException) { }
        }));
        api.MapGet("/{id}", async (string id, CancellationToken cancel) =>
            await CompactBytes(id, cancel) is { } json ? Results.Bytes(json, "application/json") : Results.NotFound(new { error = "no artifact with that id" })).WithSummary("A graph artifact (Neuronpedia schema) as parallel arrays: nodes (kind, layer, position, feature, activation, influence) and edges (source, target, weight)");
        api.MapGet("/feature/{layer:int}/{feature:int}", (int layer, int feature) =>
        {
            var store = StoreFor(stores, layer);
            if (store is null) return Results.NotFound(new { error = stores.Length == 0 ? "no feature store loaded (start the server with --features FILE)" : $"no feature store for layer {layer}" });
            lock (store)
            {
                if ((uint)feature >= (uint)store.DSae) return Results.NotFound(new { error = $"feature {feature} is not in 0…{store.DSae - 1}" });
                return Results.Json(Dashboard(store, model, layer, feature), ServeHost.Json);
            }
        }).WithSummary("A feature's dashboard summary (density, top examples, explanation) from the feature store for its layer");
        api.MapPost("/intervene", async (InterveneRequest body, CancellationToken cancel) =>
        {
            if (replacement is null)
                return Results.Json(new { error = "interventions need transcoders: start the server with --transcoders DIR (as for loupe intervene)" }, ServeHost.Json, statusCode: 409);
            int[] ids = Analyses.Tokens(model, null, body.Tokens, options);
            var edits = Edits(body.Edits, replacement.Transcoders, ids.Length);
            int k = Math.Clamp(body.TopK ?? 10, 1, 50);
            var view = await gate.RunAsync(_ =>
            {
                var frozen = body.Frozen == true ? replacement.Freeze(ids) : null;
                var before = replacement.Run(ids, frozen: frozen, topK: k);
                var after = replacement.Run(ids, edits, frozen, topK: k);
                return View(model, before, after);
            }, cancel);
            return Results.Json(view, ServeHost.Json);
        }).WithSummary("Ablates or scales transcoder features (as loupe intervene) and returns the next tokens before and after");
    }

    /// <summary>The edits, checked against the transcoders and the prompt length.</summary>
    /// <exception cref="InputError">No edits, or an edit names a layer, position or feature that does not exist, or an unknown mode.</exception>
    public static FeatureIntervention[] Edits(FeatureEditRequest[]? edits, IMlpReplacement transcoders, int positions)
    {
        if (edits is null || edits.Length == 0) throw new InputError("edits: give at least one feature edit");
        if (edits.Length > 256) throw new InputError("edits: at most 256");
        return [.. edits.Select(e =>
        {
            if ((uint)e.Layer >= (uint)transcoders.Layers) throw new InputError($"edits: layer {e.Layer} is not in 0…{transcoders.Layers - 1}");
            if ((uint)e.Feature >= (uint)transcoders.Features(e.Layer)) throw new InputError($"edits: feature {e.Feature} is not in 0…{transcoders.Features(e.Layer) - 1} of layer {e.Layer}");
            if (e.Position < -1 || e.Position >= positions) throw new InputError($"edits: position {e.Position} is not in 0…{positions - 1} (or −1 for every position)");
            if (!float.IsFinite(e.Value)) throw new InputError("edits: the value must be a finite number");
            var kind = (e.Mode ?? "scale") switch
            {
                "scale" => InterventionKind.Scale,
                "set" => InterventionKind.Set,
                var m => throw new InputError($"edits: mode '{m}' is not scale or set"),
            };
            return new FeatureIntervention(e.Layer, e.Position, e.Feature, e.Value, kind);
        })];
    }

    static InterventionView View(Loupe.Models.HookedTransformer model, InterventionResult before, InterventionResult after)
    {
        NextTokenView[] Top(InterventionResult r) => [.. r.Top.Select(t => new NextTokenView(t.Token, Analyses.Text(model, t.Token), t.Probability))];
        float? P(InterventionResult r, int id) => r.Top.FirstOrDefault(t => t.Token == id) is var x && x.Token == id ? x.Probability : null;
        var union = before.Top.Select(t => t.Token).Union(after.Top.Select(t => t.Token));
        return new InterventionView(Top(before), Top(after),
            [.. union.Select(id => new InterventionTokenView(id, Analyses.Text(model, id), P(before, id), P(after, id), after.LastLogits[id] - (double)before.LastLogits[id]))]);
    }

    static FeatureStore? StoreFor(FeatureStore[] stores, int layer)
    {
        string marker = $"blocks.{layer.ToString(CultureInfo.InvariantCulture)}.";
        // A store whose hook names no layer (e.g. a cross-layer transcoder's) is used for every layer when it is the only one.
        return stores.FirstOrDefault(s => s.Hook.StartsWith(marker, StringComparison.Ordinal))
            ?? (stores.Length == 1 && !stores[0].Hook.StartsWith("blocks.", StringComparison.Ordinal) ? stores[0] : null);
    }

    static FeatureDashboardView Dashboard(FeatureStore store, Loupe.Models.HookedTransformer model, int layer, int feature)
    {
        var summary = store.Feature(feature);
        string Text(int id) => store.TokenText(id) ?? Analyses.Text(model, id);
        var examples = store.Examples(feature, limit: 5).Select(e =>
            new FeatureExampleView(e.Activation, [.. e.WindowTokens.Select(Text)], e.WindowActs, e.Position - e.WindowStart)).ToArray();
        return new FeatureDashboardView(Path.GetFileName(store.Path), layer, feature, summary.Density, summary.MaxAct,
            store.Explanations(feature).FirstOrDefault()?.Text, examples);
    }

    /// <summary>Reads a Neuronpedia-schema graph (nodes, links, metadata) into parallel arrays.</summary>
    /// <exception cref="InputError">The JSON has no nodes or links array, or a link names a node that is not listed.</exception>
    public static CompactGraph Compact(JsonElement root, string id, string name)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("nodes", out var nodes) || nodes.ValueKind != JsonValueKind.Array
            || !root.TryGetProperty("links", out var links) || links.ValueKind != JsonValueKind.Array)
            throw new InputError($"{name}: not a graph (needs nodes and links arrays)");
        int n = nodes.GetArrayLength();
        var c = new CompactNodes(new string[n], new int[n], new int[n], new int[n], new int[n], new float[n], new float[n], new float[n], new string[n]);
        var index = new Dictionary<string, int>(n, StringComparer.Ordinal);
        int i = 0, logitLayer = -1, maxLayer = -1, maxPos = -1;
        foreach (var node in nodes.EnumerateArray())
        {
            if (node.ValueKind != JsonValueKind.Object) throw new InputError($"{name}: nodes[{i}]: expected an object, found {JsonInput.KindName(node)}");
            string nodeId = Str(node, "node_id") ?? $"node{i}";
            string type = Str(node, "feature_type") ?? "";
            string layer = Str(node, "layer") ?? "0";
            string[] parts = nodeId.Split('_');
            var kind = type switch
            {
                "embedding" => CompactNodeKind.Token,
                "mlp reconstruction error" => CompactNodeKind.Error,
                "logit" => CompactNodeKind.Logit,
                _ => CompactNodeKind.Feature,
            };
            int layerNumber = layer == "E" ? -1 : int.TryParse(layer, NumberStyles.Integer, CultureInfo.InvariantCulture, out int l) ? l : 0;
            c.NodeId[i] = nodeId;
            c.Kind[i] = (int)kind;
            c.Layer[i] = layerNumber;
            c.Position[i] = node.TryGetProperty("ctx_idx", out var ctx) && ctx.ValueKind == JsonValueKind.Number && ctx.TryGetInt32(out int p) ? p : 0;
            // A position is an index into the prompt: one far past any context would size the token table by it.
            if (c.Position[i] is < 0 or > MaxPosition) throw new InputError($"{name}: nodes[{i}]: 'ctx_idx' is {c.Position[i]}; expected a prompt position 0..{MaxPosition}");
            long featureField = node.TryGetProperty("feature", out var f) && f.ValueKind == JsonValueKind.Number && f.TryGetInt64(out long fv) ? fv : -1;
            // Feature nodes: the index from node_id ("{layer}_{feature}_{pos}"), since v0.5.0's "feature" is cantor(layer, feature).
            c.Feature[i] = kind switch
            {
                CompactNodeKind.Feature => parts.Length == 3 && int.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int fi) ? fi : (int)featureField,
                CompactNodeKind.Token => parts.Length == 3 && int.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int ti) ? ti : -1,
                CompactNodeKind.Logit => (int)featureField,
                _ => -1,
            };
            c.Activation[i] = Num(node, "activation");
            c.Influence[i] = Num(node, "influence");
            c.TokenProb[i] = Num(node, "token_prob");
            c.Clerp[i] = Str(node, "clerp") ?? "";
            if (kind == CompactNodeKind.Logit) logitLayer = Math.Max(logitLayer, layerNumber);
            else maxLayer = Math.Max(maxLayer, layerNumber);
            maxPos = Math.Max(maxPos, c.Position[i]);
            index.TryAdd(nodeId, i);
            i++;
        }
        // Logits are written on row L+1; draw them on the row just above the last layer.
        int layers = logitLayer > 0 ? logitLayer - 1 : maxLayer + 1;
        for (int j = 0; j < n; j++) if (c.Kind[j] == (int)CompactNodeKind.Logit) c.Layer[j] = layers;

        int m = links.GetArrayLength();
        var edges = new CompactEdges(new int[m], new int[m], new float[m]);
        int e = 0;
        foreach (var link in links.EnumerateArray())
        {
            if (link.ValueKind != JsonValueKind.Object) throw new InputError($"{name}: links[{e}]: expected an object, found {JsonInput.KindName(link)}");
            string s = Str(link, "source") ?? "", t = Str(link, "target") ?? "";
            if (!index.TryGetValue(s, out int si) || !index.TryGetValue(t, out int ti))
                throw new InputError($"{name}: link {e} names a node that is not listed ({s} → {t})");
            edges.Source[e] = si;
            edges.Target[e] = ti;
            edges.Weight[e] = Num(link, "weight");
            e++;
        }

        var meta = root.TryGetProperty("metadata", out var md) && md.ValueKind == JsonValueKind.Object ? md : default;
        string[] promptTokens = meta.ValueKind == JsonValueKind.Object && meta.TryGetProperty("prompt_tokens", out var pt) && pt.ValueKind == JsonValueKind.Array
            ? [.. pt.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : x.ToString())]
            : [];
        var tokenIds = Enumerable.Repeat(-1, Math.Max(promptTokens.Length, maxPos + 1)).ToArray();
        for (int j = 0; j < n; j++)
            if (c.Kind[j] == (int)CompactNodeKind.Token && c.Position[j] < tokenIds.Length) tokenIds[c.Position[j]] = c.Feature[j];
        string slug = meta.ValueKind == JsonValueKind.Object ? Str(meta, "slug") ?? "" : "";
        return new CompactGraph(id, name, slug, promptTokens, tokenIds, layers, c, edges);
    }

    static string? Str(JsonElement e, string key) => e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    /// <summary>A number of the graph as the page gets it (float): one beyond float's range would become ∞, which JSON cannot carry.</summary>
    static float Num(JsonElement e, string key)
    {
        if (!e.TryGetProperty(key, out var v) || v.ValueKind != JsonValueKind.Number) return 0f;
        float value = (float)v.GetDouble();
        return float.IsFinite(value) ? value : throw new InputError($"'{key}' is {v.GetRawText()}, beyond the range of a 32-bit float");
    }

    /// <summary>The largest prompt position a graph may name (far beyond any model's context).</summary>
    const int MaxPosition = 1 << 20;
}
