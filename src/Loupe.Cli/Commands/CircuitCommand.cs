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
        var method = new Option<string>("--method") { Description = "eap, eap-ig (inputs), eap-ig-activations, exact or acdc", DefaultValueFactory = _ => "eap" };
        var steps = new Option<int>("--steps") { Description = "EAP-IG integration steps", DefaultValueFactory = _ => 5 };
        var select = new Option<string>("--select") { Description = "How the circuit is chosen from the scores: top (the --top edges of largest |score|), greedy (EAP-IG's growth from the logits) or threshold (|score| ≥ --threshold); ACDC keeps its own circuit", DefaultValueFactory = _ => "top" };
        var top = new Option<int>("--top") { Description = "Edges kept by --select top or greedy", DefaultValueFactory = _ => 20 };
        var threshold = new Option<double>("--threshold") { Description = "τ for --select threshold, and ACDC's: an edge goes when removing it moves the metric by less than τ", DefaultValueFactory = _ => 0.01 };
        var prune = new Option<bool>("--prune") { Description = "Drop edges out of nodes with no kept input or into nodes with no kept output (EAP-IG's prune)" };
        var faithfulness = new Option<bool>("--faithfulness") { Description = "Also evaluate circuits of 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 % of the edges (metric recovered; faithfulness.svg)" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: circuit.json ({cfg, nodes, edges} as EAP-IG writes a graph, plus Loupe's provenance) and circuit.svg", Required = true };
        var command = new Command("circuit",
            "Score every edge of the model's graph (input, each head's output, each MLP → each head's q/k/v input, each MLP input, the logits) " +
            "by EAP, EAP-IG (inputs or activations), exact edge patching or ACDC, for a clean/corrupted pair of batches and a logit-difference metric; " +
            "choose a circuit (top-n, threshold or greedy), evaluate it with every other edge patched to its corrupted value, and draw it.\n\n" +
            "Examples:\n  loupe circuit --model M --clean \"1,2,3;4,5,6\" --corrupt \"1,2,7;4,5,8\" --answer 17 --wrong 42 --method eap-ig --select greedy --top 30 --faithfulness --out circuit/\n" +
            "  loupe circuit --model M --clean ... --corrupt ... --answer 17 --wrong 42 --method acdc --threshold 0.02 --out acdc/")
        { model, clean, corrupt, answer, wrong, method, steps, select, top, threshold, prune, faithfulness, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            // Scores, circuit runs and ACDC run where the model is: on a device each reads back one table (scores or metric values).
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var c = CliSupport.ParseTokens(parse.GetValue(clean)!, "--clean");
            var x = CliSupport.ParseTokens(parse.GetValue(corrupt)!, "--corrupt");
            CliSupport.CheckTokens(m, c, "--clean");
            CliSupport.CheckTokens(m, x, "--corrupt");
            if (c.Batch != x.Batch || c.Length != x.Length)
                throw new InputError($"argument: --corrupt: {x.Batch} rows of {x.Length} tokens; --clean has {c.Batch} rows of {c.Length} (the pairs must match)");
            // The same tokens give the same metric on both sides: nothing to attribute (the scorers refuse it past this point as a bug).
            if (c.Ids.SequenceEqual(x.Ids))
                throw new InputError("argument: --corrupt: the same tokens as --clean; the corrupted rows must differ from the clean ones where the metric looks");
            if (EdgeGraph.Unsupported(m) is string unsupported)
                throw new InputError($"argument: --model: {unsupported}; circuit scores GPT-2-style models (sequential pre-norm blocks, one kv head per head)");
            int a = CliSupport.OutputToken(m, parse.GetValue(answer), "--answer"), w = CliSupport.OutputToken(m, parse.GetValue(wrong), "--wrong");
            if (a == w) throw new InputError($"argument: --wrong: the same token as --answer ({a}); the logit difference would be 0 for every input");
            var metric = new MeanLogitDiff([.. Enumerable.Range(0, c.Batch).Select(_ => new[] { new LogitDiffTerm(c.Length - 1, a, w) })]);
            var graph = EdgeGraph.FromModel(m);
            string name = parse.GetValue(method)!, rule = parse.GetValue(select)!;
            double tau = parse.GetValue(threshold);
            if (!double.IsFinite(tau) || tau < 0) throw InputError.Expected("argument", "--threshold", "a finite number ≥ 0", tau.ToString(CultureInfo.InvariantCulture));
            var selection = rule switch
            {
                "top" => SelectionRule.TopN,
                "greedy" => SelectionRule.Greedy,
                "threshold" => SelectionRule.Threshold,
                _ => throw InputError.Expected("argument", "--select", "top, greedy or threshold", rule),
            };
            int keep = CliSupport.Int(parse, top, 1, graph.Edges.Count);
            var evaluator = new CircuitEvaluator(m, graph, c, x, metric);
            var settings = new Dictionary<string, JsonNode?> { ["answer"] = a, ["wrong"] = w, ["examples"] = c.Batch, ["weight_processing"] = m.Processing.Describe() };
            EdgeScores scores;
            bool[] circuit;
            string described;
            if (name == "acdc")
            {
                var acdc = Acdc.Run(evaluator, tau, new Progress<string>(Console.Error.WriteLine));
                (scores, circuit, described) = (acdc.Scores, acdc.InCircuit, $"ACDC τ = {tau.ToString("G4", CultureInfo.InvariantCulture)}");
                settings["acdc_passes"] = acdc.Passes;
            }
            else
            {
                int s = name is "eap-ig" or "eap-ig-activations" ? CliSupport.Int(parse, steps, 1, 10_000) : 0;
                scores = name switch
                {
                    "eap" => EdgeAttribution.Eap(m, graph, c, x, metric),
                    "eap-ig" => EdgeAttribution.EapIgInputs(m, graph, c, x, metric, s),
                    "eap-ig-activations" => EdgeAttribution.EapIgActivations(m, graph, c, x, metric, s),
                    "exact" => EdgeAttribution.Exact(m, graph, c, x, metric),
                    _ => throw InputError.Expected("argument", "--method", "eap, eap-ig, eap-ig-activations, exact or acdc", name),
                };
                circuit = CircuitSelection.Select(scores, selection, keep, tau);
                described = selection switch
                {
                    SelectionRule.TopN => $"top {keep} by |score|",
                    SelectionRule.Greedy => $"greedy {keep}",
                    _ => $"|score| ≥ {tau.ToString("G4", CultureInfo.InvariantCulture)}",
                };
            }
            if (parse.GetValue(prune)) { circuit = CircuitSelection.Prune(graph, circuit); described += ", pruned"; }
            double circuitMetric = evaluator.Evaluate(circuit);
            IReadOnlyList<FaithfulnessPoint>? curve = null;
            if (parse.GetValue(faithfulness))
                curve = Faithfulness.Curve(evaluator, scores, selection == SelectionRule.Greedy ? SelectionRule.Greedy : SelectionRule.TopN);
            var report = new CircuitReport(m, scores, circuit, metric.Name, described)
            {
                Evaluation = (circuitMetric, evaluator.Clean, evaluator.Corrupted),
                Faithfulness = curve,
                Settings = settings,
            };
            var (jsonPath, svgPath) = report.Save(folder);
            int kept = circuit.Count(k => k);
            Console.WriteLine($"{graph.Edges.Count} edges scored by {scores.Method}; circuit: {kept} edges ({described}); the largest by |score|:");
            foreach (int i in CircuitSelection.Ranking(scores).Where(i => circuit[i]).Take(20))
                Console.WriteLine($"  {graph.Edges[i].Name,-28} {scores.Scores[i].ToString("+0.00000;-0.00000", CultureInfo.InvariantCulture)}");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"metric: clean {evaluator.Clean:G5}, corrupted {evaluator.Corrupted:G5}, circuit {circuitMetric:G5} ({(circuitMetric - evaluator.Corrupted) / (evaluator.Clean - evaluator.Corrupted):P1} recovered)"));
            if (curve is not null)
            {
                Console.WriteLine("faithfulness (share of edges kept → metric recovered):");
                foreach (var p in curve) Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {p.Percent,5:G3} % {p.Edges,7} edges  {p.Recovered,8:P1}"));
                string chart = Path.Combine(folder, "faithfulness.svg");
                new Loupe.Reports.LineChart
                {
                    Title = $"Faithfulness of {scores.Method} circuits",
                    X = [.. curve.Select(p => Math.Log10(p.Percent))],
                    Series = [("metric recovered", [.. curve.Select(p => p.Recovered)])],
                    XAxis = "log10(% of edges kept)",
                    YAxis = "(m − m_corrupted) / (m_clean − m_corrupted)",
                }.Save(chart);
                Console.WriteLine($"wrote {chart}");
            }
            Console.WriteLine($"wrote {jsonPath} and {svgPath}");
            return 0;
        }));
        return command;
    }
}
