using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Loupe.Circuits.Edges;
using Loupe.Models;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe circuit</c>: edge attribution scores (EAP, EAP-IG, exact patching) over every edge, in EAP-IG's JSON shape.</summary>
static class CircuitCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var clean = new Option<string>("--clean") { Description = "Clean token ids, rows separated by ';' (e.g. \"1,2,3;4,5,6\")", Required = true };
        var corrupt = new Option<string>("--corrupt") { Description = "Corrupted token ids, the same shape as --clean", Required = true };
        var answer = new Option<int>("--answer") { Description = "The metric is logit[answer] − logit[wrong] at the last position, per example (mean)", Required = true };
        var wrong = new Option<int>("--wrong") { Description = "See --answer", Required = true };
        var method = new Option<string>("--method") { Description = "eap, eap-ig (inputs) or exact", DefaultValueFactory = _ => "eap" };
        var steps = new Option<int>("--steps") { Description = "EAP-IG integration steps", DefaultValueFactory = _ => 5 };
        var top = new Option<int>("--top") { Description = "Edges kept in the circuit (largest |score|)", DefaultValueFactory = _ => 20 };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: circuit.json ({cfg, nodes, edges} as EAP-IG writes a graph)", Required = true };
        var command = new Command("circuit",
            "Score every edge of the model's graph (input, each head's output, each MLP → each head's q/k/v input, each MLP input, the logits) " +
            "by EAP, EAP-IG or exact edge patching, for a clean/corrupted pair of batches and a logit-difference metric; keep the top edges.\n\n" +
            "Examples:\n  loupe circuit --model M --clean \"1,2,3;4,5,6\" --corrupt \"1,2,7;4,5,8\" --answer 17 --wrong 42 --method eap-ig --out circuit/")
        { model, clean, corrupt, answer, wrong, method, steps, top, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!);
            var c = CliSupport.ParseTokens(parse.GetValue(clean)!, "--clean");
            var x = CliSupport.ParseTokens(parse.GetValue(corrupt)!, "--corrupt");
            CliSupport.CheckTokens(m, c, "--clean");
            CliSupport.CheckTokens(m, x, "--corrupt");
            if (c.Batch != x.Batch || c.Length != x.Length)
                throw new InputError($"argument: --corrupt: {x.Batch} rows of {x.Length} tokens; --clean has {c.Batch} rows of {c.Length} (the pairs must match)");
            int a = CliSupport.OutputToken(m, parse.GetValue(answer), "--answer"), w = CliSupport.OutputToken(m, parse.GetValue(wrong), "--wrong");
            var metric = new MeanLogitDiff([.. Enumerable.Range(0, c.Batch).Select(_ => new[] { new LogitDiffTerm(c.Length - 1, a, w) })]);
            var graph = EdgeGraph.FromModel(m);
            string name = parse.GetValue(method)!;
            var scores = name switch
            {
                "eap" => EdgeAttribution.Eap(m, graph, c, x, metric),
                "eap-ig" => EdgeAttribution.EapIgInputs(m, graph, c, x, metric, CliSupport.Int(parse, steps, 1, 10_000)),
                "exact" => EdgeAttribution.Exact(m, graph, c, x, metric),
                _ => throw InputError.Expected("argument", "--method", "eap, eap-ig or exact", name),
            };
            int keep = CliSupport.Int(parse, top, 1, graph.Edges.Count);
            var kept = Enumerable.Range(0, graph.Edges.Count).OrderByDescending(i => Math.Abs(scores.Scores[i])).Take(keep).ToHashSet();
            var nodes = new HashSet<string>();
            foreach (int i in kept)
            {
                var e = graph.Edges[i];
                nodes.Add(graph.Sources[e.Source].Name);
                nodes.Add(SlotNode(graph.Destinations[e.Destination].Name));
            }
            var json = new JsonObject
            {
                ["cfg"] = new JsonObject { ["n_layers"] = m.Config.NLayers, ["n_heads"] = m.Config.NHeads, ["parallel_attn_mlp"] = m.Config.ParallelAttnMlp, ["d_model"] = m.Config.DModel },
                ["nodes"] = new JsonObject([.. graph.Sources.Select(s => s.Name).Concat(graph.Destinations.Select(d => SlotNode(d.Name))).Distinct()
                    .Select(n => KeyValuePair.Create(n, (JsonNode?)nodes.Contains(n)))]),
                ["edges"] = new JsonObject([.. graph.Edges.Select((e, i) => KeyValuePair.Create(e.Name, (JsonNode?)new JsonObject { ["score"] = scores.Scores[i], ["in_graph"] = kept.Contains(i) }))]),
                ["loupe"] = new JsonObject { ["model"] = m.Source, ["method"] = scores.Method, ["metric"] = metric.Name, ["answer"] = a, ["wrong"] = w, ["examples"] = c.Batch, ["loupe_version"] = Loupe.Attribution.Attributor.LoupeVersion },
            };
            string path = Path.Combine(folder, "circuit.json");
            Loupe.Reports.AtomicFile.WriteAllText(path, json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"{graph.Edges.Count} edges scored by {scores.Method}; top {keep} by |score|:");
            foreach (int i in kept.OrderByDescending(i => Math.Abs(scores.Scores[i])))
                Console.WriteLine($"  {graph.Edges[i].Name,-28} {scores.Scores[i].ToString("+0.00000;-0.00000", CultureInfo.InvariantCulture)}");
            Console.WriteLine($"wrote {path}");
            return 0;
        }));
        return command;
    }

    /// <summary>A destination slot's node: <c>a1.h2&lt;q&gt;</c> belongs to node <c>a1.h2</c>.</summary>
    static string SlotNode(string slot) => slot.IndexOf('<') is int i and > 0 ? slot[..i] : slot;
}
