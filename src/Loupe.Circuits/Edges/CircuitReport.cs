using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Loupe.Models;

namespace Loupe.Circuits.Edges;

/// <summary>
/// A scored graph and the circuit chosen from it, as files: JSON in EAP-IG's <c>{cfg, nodes, edges}</c> shape
/// (so EAP-IG's <c>Graph.from_json</c> reads it) with Loupe's provenance beside it, and an SVG picture.
/// </summary>
/// <param name="Model">The model scored.</param>
/// <param name="Scores">Every edge's score.</param>
/// <param name="InCircuit">The circuit: edges kept.</param>
/// <param name="Metric">The metric's name.</param>
/// <param name="Selection">How the circuit was chosen (e.g. <c>top-n 20</c>, <c>greedy 50</c>, <c>|score| ≥ 0.01</c>, <c>ACDC τ = 0.05</c>).</param>
public sealed record CircuitReport(HookedTransformer Model, EdgeScores Scores, bool[] InCircuit, string Metric, string Selection)
{
    /// <summary>The circuit's metric and the clean and corrupted runs' (when evaluated).</summary>
    public (double Circuit, double Clean, double Corrupted)? Evaluation { get; init; }
    /// <summary>A faithfulness curve to record with the circuit.</summary>
    public IReadOnlyList<FaithfulnessPoint>? Faithfulness { get; init; }
    /// <summary>Further settings to record (steps, examples, threshold, …).</summary>
    public IReadOnlyDictionary<string, JsonNode?> Settings { get; init; } = new Dictionary<string, JsonNode?>();

    /// <summary>A destination slot's node: <c>a1.h2&lt;q&gt;</c> belongs to node <c>a1.h2</c>.</summary>
    public static string SlotNode(string slot) => slot.IndexOf('<') is int i and > 0 ? slot[..i] : slot;

    /// <summary>The JSON document.</summary>
    public JsonObject ToJson()
    {
        var graph = Scores.Graph;
        var nodes = new HashSet<string>(StringComparer.Ordinal);
        for (int e = 0; e < InCircuit.Length; e++)
            if (InCircuit[e])
            {
                nodes.Add(graph.Sources[graph.Edges[e].Source].Name);
                nodes.Add(SlotNode(graph.Destinations[graph.Edges[e].Destination].Name));
            }
        var cfg = Model.Config;
        var loupe = new JsonObject
        {
            ["model"] = Model.Source,
            ["method"] = Scores.Method,
            ["metric"] = Metric,
            ["selection"] = Selection,
            ["edges_in_circuit"] = InCircuit.Count(x => x),
            ["loupe_version"] = LoupeVersion,
        };
        foreach (var (key, value) in Settings) loupe[key] = value?.DeepClone();
        if (Evaluation is var (circuit, clean, corrupted))
            loupe["evaluation"] = new JsonObject
            {
                ["circuit"] = circuit, ["clean"] = clean, ["corrupted"] = corrupted,
                ["recovered"] = (circuit - corrupted) / (clean - corrupted),
            };
        if (Faithfulness is { } curve)
            loupe["faithfulness"] = new JsonArray([.. curve.Select(p => (JsonNode)new JsonObject
            {
                ["percent"] = p.Percent, ["edges"] = p.Edges, ["metric"] = p.Metric, ["recovered"] = p.Recovered,
            })]);
        return new JsonObject
        {
            ["cfg"] = new JsonObject { ["n_layers"] = cfg.NLayers, ["n_heads"] = cfg.NHeads, ["parallel_attn_mlp"] = cfg.ParallelAttnMlp, ["d_model"] = cfg.DModel },
            ["nodes"] = new JsonObject([.. graph.Sources.Select(s => s.Name).Concat(graph.Destinations.Select(d => SlotNode(d.Name))).Distinct()
                .Select(n => KeyValuePair.Create(n, (JsonNode?)nodes.Contains(n)))]),
            ["edges"] = new JsonObject([.. graph.Edges.Select((e, i) => KeyValuePair.Create(e.Name,
                (JsonNode?)new JsonObject { ["score"] = Scores.Scores[i], ["in_graph"] = InCircuit[i] }))]),
            ["loupe"] = loupe,
        };
    }

    /// <summary>
    /// The circuit as a picture: one row per layer (input at the bottom, logits at the top), heads then the MLP
    /// along each row; an edge is a curve into the q, k or v side of a head (left, middle, right of its box) or into
    /// an MLP or the logits, blue when its score is positive and red when negative, its width ∝ |score|.
    /// Nodes outside the circuit are drawn faint.
    /// </summary>
    public string ToSvg()
    {
        var graph = Scores.Graph;
        int L = Model.Config.NLayers, H = Model.Config.NHeads;
        bool mlps = graph.Sources.Any(s => s.Kind == SourceKind.Mlp);
        int columns = H + (mlps ? 1 : 0);
        const int boxW = 46, boxH = 22, gapX = 14, rowH = 80, margin = 40;
        int width = Math.Max(660, margin * 2 + columns * (boxW + gapX)), height = margin * 2 + 40 + (L + 1) * rowH + boxH;
        double Y(int layer) => height - margin - boxH - (layer + 1) * rowH; // layer -1 = input row
        double left = (width - columns * (boxW + gapX) + gapX) / 2.0;
        (double X, double Y) Place(string node, int layer, int column) => (left + column * (boxW + gapX), Y(layer));
        var where = new Dictionary<string, (double X, double Y)>(StringComparer.Ordinal)
        {
            ["input"] = (width / 2.0 - boxW / 2.0, Y(-1)),
            ["logits"] = (width / 2.0 - boxW / 2.0, Y(L) + 0),
        };
        foreach (var s in graph.Sources.Where(s => s.Kind != SourceKind.Input))
            where[s.Name] = Place(s.Name, s.Layer, s.Kind == SourceKind.Head ? s.Head : H);
        var used = new HashSet<string>(StringComparer.Ordinal);
        double max = Enumerable.Range(0, InCircuit.Length).Where(e => InCircuit[e]).Select(e => Math.Abs(Scores.Scores[e])).DefaultIfEmpty(1).Max();
        if (max == 0) max = 1;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"10\">\n");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{width / 2}\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">{E($"{Scores.Method}: {InCircuit.Count(x => x)} of {InCircuit.Length} edges ({Selection})")}</text>\n");
        for (int e = 0; e < InCircuit.Length; e++)
        {
            if (!InCircuit[e]) continue;
            var edge = graph.Edges[e];
            var source = graph.Sources[edge.Source];
            var slot = graph.Destinations[edge.Destination];
            string target = SlotNode(slot.Name);
            used.Add(source.Name);
            used.Add(target);
            var (sx, sy) = where[source.Name];
            var (tx, ty) = where[target];
            double fromX = sx + boxW / 2.0, fromY = sy;
            double toX = tx + slot.Kind switch { SlotKind.Query => boxW * 0.2, SlotKind.Key => boxW * 0.5, SlotKind.Value => boxW * 0.8, _ => boxW / 2.0 }, toY = ty + boxH;
            double score = Scores.Scores[e], w = 0.6 + 5 * Math.Abs(score) / max;
            string colour = score >= 0 ? "#2b6cb0" : "#c53030";
            double bend = (fromY - toY) / 2;
            svg.Append(CultureInfo.InvariantCulture,
                $"<path d=\"M{fromX:F1},{fromY:F1} C{fromX:F1},{fromY - bend:F1} {toX:F1},{toY + bend:F1} {toX:F1},{toY:F1}\" fill=\"none\" stroke=\"{colour}\" stroke-opacity=\"0.75\" stroke-width=\"{w:F2}\"><title>{E($"{edge.Name}: {score:G5}")}</title></path>\n");
        }
        foreach (var (name, (x, y)) in where)
        {
            bool inCircuit = used.Contains(name);
            string fill = name is "input" or "logits" ? "#e2e8f0" : name.StartsWith('m') ? "#fefcbf" : "#ebf8ff";
            svg.Append(CultureInfo.InvariantCulture,
                $"<g opacity=\"{(inCircuit ? 1 : 0.25)}\"><rect x=\"{x:F1}\" y=\"{y:F1}\" width=\"{boxW}\" height=\"{boxH}\" rx=\"4\" fill=\"{fill}\" stroke=\"#4a5568\"/>" +
                $"<text x=\"{x + boxW / 2.0:F1}\" y=\"{y + boxH / 2.0 + 3.5:F1}\" text-anchor=\"middle\">{E(name)}</text></g>\n");
        }
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{margin}\" y=\"{height - 10}\" fill=\"#4a5568\">edges enter a head at q (left), k (middle), v (right); blue = positive score, red = negative; width ∝ |score|</text>\n");
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    /// <summary>Writes <c>circuit.json</c> and <c>circuit.svg</c> into <paramref name="folder"/> (atomically); returns their paths.</summary>
    public (string Json, string Svg) Save(string folder)
    {
        Directory.CreateDirectory(folder);
        string json = Path.Combine(folder, "circuit.json"), svg = Path.Combine(folder, "circuit.svg");
        Loupe.Reports.AtomicFile.WriteAllText(json, ToJson().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        Loupe.Reports.AtomicFile.WriteAllText(svg, ToSvg());
        return (json, svg);
    }

    static string E(string s) => WebUtility.HtmlEncode(s);

    /// <summary>This build's version (the assembly's informational version).</summary>
    public static string LoupeVersion { get; } =
        typeof(CircuitReport).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion ?? "0.0.0";
}
