using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Loupe.Serve.Endpoints;

/// <summary>A node of a circuit-discovery graph, placed by layer.</summary>
/// <param name="Name">EAP-IG's name: input, a{l}.h{h}, m{l}, logits.</param>
/// <param name="Kind">input, head, mlp or logits.</param>
/// <param name="Layer">Its layer; input −1, logits n_layers.</param>
/// <param name="Head">The head (heads), else −1.</param>
/// <param name="InGraph">Whether the circuit keeps it.</param>
public sealed record CircuitNodeView(string Name, string Kind, int Layer, int Head, bool InGraph);

/// <summary>A scored edge.</summary>
/// <param name="Name">EAP-IG's name (<c>a0.h2->a1.h1&lt;k&gt;</c>).</param>
/// <param name="Source">Source node name.</param>
/// <param name="Target">Target node name.</param>
/// <param name="Slot">q, k or v into a head; empty otherwise.</param>
/// <param name="Score">Its score.</param>
/// <param name="InGraph">Whether the circuit keeps it.</param>
public sealed record CircuitEdgeView(string Name, string Source, string Target, string Slot, double Score, bool InGraph);

/// <summary>A circuit-discovery file (EAP-IG's {cfg, nodes, edges} with Loupe's <c>loupe</c> block) as the Circuits page draws it.</summary>
/// <param name="Id">Artifact id.</param>
/// <param name="Name">Artifact path.</param>
/// <param name="Layers">cfg.n_layers.</param>
/// <param name="Heads">cfg.n_heads.</param>
/// <param name="Loupe">The <c>loupe</c> block as written (method, metric, selection, evaluation, faithfulness…), or null.</param>
/// <param name="Nodes">Every node.</param>
/// <param name="Edges">The circuit's edges, then the highest-|score| others, by |score| descending (at most 2,000 besides the circuit's).</param>
/// <param name="TotalEdges">Edges in the file.</param>
/// <param name="EdgesInGraph">Edges the circuit keeps.</param>
public sealed record CircuitView(string Id, string Name, int Layers, int Heads, JsonElement? Loupe, CircuitNodeView[] Nodes, CircuitEdgeView[] Edges, int TotalEdges, int EdgesInGraph);

/// <summary>The Circuits page's API: patching sweeps and circuit-discovery graphs from the workspace, by id.</summary>
public static class CircuitEndpoints
{
    const int MaxOtherEdges = 2000;

    public static void Map(WebApplication app, Workspace workspace)
    {
        var api = app.MapGroup("/api/circuits");
        api.MapGet("/{id}", async (string id, CancellationToken cancel) =>
        {
            var name = workspace.List().FirstOrDefault(a => a.Id == id)?.Name;
            using var doc = name is null ? null : await workspace.ReadJsonAsync(id, name, cancel);
            if (doc is null) return Results.NotFound(new { error = "no artifact with that id" });
            return Results.Json(Circuit(doc.RootElement, id, name!), ServeHost.Json);
        }).WithSummary("A circuit-discovery artifact (EAP-IG {cfg, nodes, edges} + loupe block): nodes by layer, edges by |score|, evaluation and faithfulness");
    }

    /// <summary>Reads a circuit file.</summary>
    /// <exception cref="InputError">It has no cfg, nodes or edges object.</exception>
    public static CircuitView Circuit(JsonElement root, string id, string name)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("cfg", out var cfg) || cfg.ValueKind != JsonValueKind.Object
            || !root.TryGetProperty("nodes", out var nodes) || nodes.ValueKind != JsonValueKind.Object
            || !root.TryGetProperty("edges", out var edges) || edges.ValueKind != JsonValueKind.Object)
            throw new InputError($"{name}: not a circuit (needs cfg, nodes and edges objects, as EAP-IG writes)");
        int layers = cfg.TryGetProperty("n_layers", out var nl) && nl.ValueKind == JsonValueKind.Number && nl.TryGetInt32(out int l) ? l : 0;
        int heads = cfg.TryGetProperty("n_heads", out var nh) && nh.ValueKind == JsonValueKind.Number && nh.TryGetInt32(out int h) ? h : 0;
        var nodeViews = nodes.EnumerateObject().Select(p => Node(p.Name, p.Value.ValueKind == JsonValueKind.True, layers)).ToArray();
        var all = edges.EnumerateObject().Select(p =>
        {
            string edgeName = p.Name;
            int arrow = edgeName.IndexOf("->", StringComparison.Ordinal);
            string source = arrow > 0 ? edgeName[..arrow] : edgeName, dest = arrow > 0 ? edgeName[(arrow + 2)..] : "";
            int lt = dest.IndexOf('<');
            string slot = lt > 0 && dest.EndsWith('>') ? dest[(lt + 1)..^1] : "";
            string target = lt > 0 ? dest[..lt] : dest;
            if (p.Value.ValueKind != JsonValueKind.Object)
                throw new InputError($"{name}: edges[{InputError.Show(edgeName)}]: expected an object {{\"score\": …, \"in_graph\": …}} as EAP-IG writes, found {JsonInput.KindName(p.Value)}");
            double score = p.Value.TryGetProperty("score", out var s) && s.ValueKind == JsonValueKind.Number ? s.GetDouble() : 0;
            bool inGraph = p.Value.TryGetProperty("in_graph", out var g) && g.ValueKind == JsonValueKind.True;
            return new CircuitEdgeView(edgeName, source, target, slot, score, inGraph);
        }).ToList();
        var kept = all.Where(e => e.InGraph).OrderByDescending(e => Math.Abs(e.Score));
        var others = all.Where(e => !e.InGraph).OrderByDescending(e => Math.Abs(e.Score)).Take(MaxOtherEdges);
        JsonElement? loupe = root.TryGetProperty("loupe", out var lp) && lp.ValueKind == JsonValueKind.Object ? lp.Clone() : null;
        return new CircuitView(id, name, layers, heads, loupe, nodeViews, [.. kept, .. others], all.Count, all.Count(e => e.InGraph));
    }

    static CircuitNodeView Node(string name, bool inGraph, int layers)
    {
        if (name == "input") return new(name, "input", -1, -1, inGraph);
        if (name == "logits") return new(name, "logits", layers, -1, inGraph);
        if (name.StartsWith('m') && int.TryParse(name[1..], NumberStyles.Integer, CultureInfo.InvariantCulture, out int ml)) return new(name, "mlp", ml, -1, inGraph);
        int dot = name.IndexOf(".h", StringComparison.Ordinal);
        if (name.StartsWith('a') && dot > 1 && int.TryParse(name[1..dot], NumberStyles.Integer, CultureInfo.InvariantCulture, out int al)
            && int.TryParse(name[(dot + 2)..], NumberStyles.Integer, CultureInfo.InvariantCulture, out int head))
            return new(name, "head", al, head, inGraph);
        return new(name, "other", 0, -1, inGraph);
    }
}
