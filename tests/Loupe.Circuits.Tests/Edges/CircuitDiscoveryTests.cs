using System.Text.Json.Nodes;
using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Circuits.Tests.Edges;

/// <summary>
/// Circuit runs, ACDC, selection and faithfulness on the tiny GPT-2 fixture and the real 2-layer induction model.
/// The independent anchors: removing every edge must reproduce the corrupted run (a separate forward pass on the
/// corrupted tokens), removing none the clean run; ACDC's circuit must be the induction circuit the fixture's
/// README establishes from attention patterns (a0.h2 the previous-token head, a1.h1–3 induction heads), on the
/// side the corruption touches.
/// </summary>
public class CircuitDiscoveryTests(ITestOutputHelper output)
{
    const string Induction = "models/induction-attn-only-2l";

    static (HookedTransformer Model, Fixture Data, MeanLogitDiff Metric) Gpt2()
    {
        var data = Fixture.Load("gpt2");
        return (ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2")), data, data.Gpt2Metric());
    }

    static (HookedTransformer Model, Fixture Data, MeanLogitDiff Metric) InductionModel()
    {
        var data = Fixture.Load("induction-attn-only-2l");
        return (ModelLoader.LoadFolder(SharedData.Require(Induction)), data, data.InductionMetric());
    }

    static void Close(double expected, double actual, string what, double tolerance = 1e-4) =>
        Assert.True(Math.Abs(actual - expected) <= tolerance * Math.Max(1, Math.Abs(expected)), $"{what}: expected {expected:G9}, got {actual:G9}");

    [Fact]
    public void RemovingEveryEdgeIsTheCorruptedRunAndRemovingNoneTheClean()
    {
        var (model, data, metric) = Gpt2();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var evaluator = new CircuitEvaluator(model, graph, data.Clean, data.Corrupted, metric);
        double none = evaluator.Evaluate(new bool[graph.Edges.Count]);
        double all = evaluator.Evaluate(Enumerable.Repeat(true, graph.Edges.Count).ToArray());
        double corrupted = metric.PerExample(model.Run(data.Corrupted).Logits.ToCpu()).Average();
        double clean = metric.PerExample(model.Run(data.Clean).Logits.ToCpu()).Average();
        output.WriteLine($"clean {clean:G9} / {all:G9}; corrupted {corrupted:G9} / {none:G9}");
        Close(corrupted, none, "no edge kept");
        Close(clean, all, "every edge kept", 1e-9);
        Close(corrupted, evaluator.Corrupted, "evaluator's corrupted metric", 1e-6);
    }

    [RequiresSharedFact(Induction)]
    public void InductionModelWithoutEdgesIsItsCorruptedRun()
    {
        var (model, data, metric) = InductionModel();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var evaluator = new CircuitEvaluator(model, graph, data.Clean, data.Corrupted, metric);
        double none = evaluator.Evaluate(new bool[graph.Edges.Count]);
        Close(metric.PerExample(model.Run(data.Corrupted).Logits.ToCpu()).Average(), none, "no edge kept");
    }

    [RequiresSharedFact(Induction)]
    public void AcdcKeepsTheInductionCircuitAndNothingBelowItsThreshold()
    {
        var (model, data, metric) = InductionModel();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var evaluator = new CircuitEvaluator(model, graph, data.Clean, data.Corrupted, metric);
        const double tau = 0.05;
        var result = Acdc.Run(evaluator, tau);
        var kept = graph.Edges.Where((e, i) => result.InCircuit[i]).Select(e => e.Name).ToList();
        output.WriteLine($"ACDC τ={tau}: {kept.Count} of {graph.Edges.Count} edges, {result.Passes} passes, metric {result.Metric:G5} (clean {evaluator.Clean:G5}, corrupted {evaluator.Corrupted:G5})");
        output.WriteLine(string.Join(", ", kept));
        // The corruption changes positions 48–63 only: an induction head at p attends to p − 31 (in 17–32, the same in
        // both runs), so its keys and values are untouched and only its query (the current token) carries the difference.
        Assert.Contains("input->a1.h1<q>", kept);
        Assert.Contains("a0.h2->a1.h1<q>", kept);
        Assert.Contains("a1.h1->logits", kept);
        Assert.DoesNotContain(kept, e => e.Contains("->a1.") && (e.EndsWith("<k>") || e.EndsWith("<v>")));
        Assert.True(kept.Count(e => e.StartsWith("a1.h") && e.EndsWith("->logits")) >= 2, "at least two induction heads reach the logits");
        Close(result.Metric, evaluator.Evaluate(result.InCircuit), "ACDC's running metric vs a fresh evaluation of its circuit");
        for (int e = 0; e < graph.Edges.Count; e++)
            if (result.InCircuit[e]) Assert.True(Math.Abs(result.Scores.Scores[e]) >= tau, $"{graph.Edges[e].Name} kept with effect {result.Scores.Scores[e]}");
        Assert.True((result.Metric - evaluator.Corrupted) / (evaluator.Clean - evaluator.Corrupted) > 0.8, "the circuit recovers most of the metric");
    }

    [RequiresSharedFact(Induction)]
    public void FaithfulnessOfEapCircuitsGrowsToTheCleanRun()
    {
        var (model, data, metric) = InductionModel();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var evaluator = new CircuitEvaluator(model, graph, data.Clean, data.Corrupted, metric);
        var scores = EdgeAttribution.Eap(model, graph, data.Clean, data.Corrupted, metric);
        foreach (var rule in new[] { SelectionRule.TopN, SelectionRule.Greedy })
        {
            var curve = Faithfulness.Curve(evaluator, scores, rule);
            output.WriteLine($"{rule}: " + string.Join("  ", curve.Select(p => $"{p.Percent}%:{p.Edges}e:{p.Recovered:F3}")));
            Assert.Equal(Faithfulness.DefaultPercents.Count, curve.Count);
            Close(1, curve[^1].Recovered, "100 % of the edges", 1e-6);
            Assert.True(curve.First(p => p.Percent == 50).Recovered > 0.9, "half the edges recover nearly all the metric");
            Assert.True(curve.First(p => p.Percent == 20).Recovered > curve.First(p => p.Percent == 5).Recovered, "more edges recover more");
        }
    }

    [Fact]
    public void SelectionRulesKeepWhatTheySay()
    {
        var (model, data, metric) = Gpt2();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var scores = EdgeAttribution.Eap(model, graph, data.Clean, data.Corrupted, metric);
        var top = CircuitSelection.TopN(scores, 25);
        Assert.Equal(25, top.Count(x => x));
        double smallestKept = Enumerable.Range(0, top.Length).Where(e => top[e]).Min(e => Math.Abs(scores.Scores[e]));
        Assert.All(Enumerable.Range(0, top.Length).Where(e => !top[e]), e => Assert.True(Math.Abs(scores.Scores[e]) <= smallestKept));
        var threshold = CircuitSelection.Threshold(scores, smallestKept);
        Assert.Equal(top, threshold);

        var greedy = CircuitSelection.Greedy(scores, 25);
        Assert.Equal(25, greedy.Count(x => x));
        // Every greedy edge enters the logits or a node that itself has a greedy edge out.
        var hasOut = new HashSet<int>(Enumerable.Range(0, greedy.Length).Where(e => greedy[e]).Select(e => graph.Edges[e].Source));
        foreach (int e in Enumerable.Range(0, greedy.Length).Where(e => greedy[e]))
        {
            var slot = graph.Destinations[graph.Edges[e].Destination];
            Assert.True(slot.Kind == SlotKind.Logits || hasOut.Contains(Acdc.SourceOf(graph, slot)), $"{graph.Edges[e].Name} is not connected to the logits");
        }

        var pruned = CircuitSelection.Prune(graph, top);
        Assert.Equal(pruned, CircuitSelection.Prune(graph, pruned));
        Assert.All(Enumerable.Range(0, top.Length), e => Assert.True(!pruned[e] || top[e]));
    }

    [Fact]
    public void EapIgActivationsWithOneStepScoresEdgesIntoTheLogitsAsEap()
    {
        // With one step every run is the clean forward pass; only the gradient upstream of the held node is cut,
        // which cannot reach the last resid_post: the logits' slot gradient is EAP's in every run.
        var (model, data, metric) = Gpt2();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var eap = EdgeAttribution.Eap(model, graph, data.Clean, data.Corrupted, metric);
        var ig = EdgeAttribution.EapIgActivations(model, graph, data.Clean, data.Corrupted, metric, 1);
        Assert.Equal("EAP-IG-activations.steps1", ig.Method);
        for (int e = 0; e < graph.Edges.Count; e++)
            if (graph.Edges[e].Name.EndsWith("->logits")) Close(eap.Scores[e], ig.Scores[e], graph.Edges[e].Name, 1e-5);
        // Edges into layer 0's heads get gradient only from the runs that leave layer 0's attention free.
        Assert.Contains(Enumerable.Range(0, graph.Edges.Count), e => graph.Edges[e].Name.Contains("->a0.") && Math.Abs(ig.Scores[e]) > 0);
    }

    [Fact]
    public void MetricsThatCannotSeeTheModelAreRefused()
    {
        var (model, data, metric) = Gpt2();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var same = Assert.Throws<ArgumentException>(() => EdgeAttribution.Eap(model, graph, data.Clean, data.Clean, metric));
        Assert.Contains("same value on every clean and corrupted example", same.Message);
        var constant = new MeanLogitDiff([.. Enumerable.Range(0, data.Clean.Batch).Select(_ => new[] { new LogitDiffTerm(-1, 17, 17) })]);
        var flat = Assert.Throws<ArgumentException>(() => EdgeAttribution.Exact(model, graph, data.Clean, data.Corrupted, constant));
        Assert.Contains("does not depend on the logits", flat.Message);
    }

    [Fact]
    public void ReportIsEapIgsGraphJsonAndAPicture()
    {
        var (model, data, metric) = Gpt2();
        using var _ = model;
        var graph = EdgeGraph.FromModel(model);
        var scores = EdgeAttribution.Eap(model, graph, data.Clean, data.Corrupted, metric);
        var circuit = CircuitSelection.Greedy(scores, 10);
        var report = new CircuitReport(model, scores, circuit, metric.Name, "greedy 10") { Evaluation = (0.1, 0.3, -0.2) };
        var json = report.ToJson();
        Assert.Equal(graph.Edges.Count, json["edges"]!.AsObject().Count);
        Assert.Equal(10, json["edges"]!.AsObject().Count(e => e.Value!["in_graph"]!.GetValue<bool>()));
        Assert.Equal(model.Config.NLayers, json["cfg"]!["n_layers"]!.GetValue<int>());
        Assert.True(json["nodes"]!["logits"]!.GetValue<bool>());
        Close(0.6, json["loupe"]!["evaluation"]!["recovered"]!.GetValue<double>(), "recovered");
        string svg = report.ToSvg();
        Assert.StartsWith("<svg", svg);
        Assert.Equal(10, svg.Split("<path").Length - 1);
    }

    [Fact]
    public void FoldedNormsGiveTheSameScoresAndCircuitRuns()
    {
        // fold_ln moves ln1's weight and bias into W_Q/W_K/W_V: every slot input and head output is unchanged.
        var (model, data, metric) = Gpt2();
        using var _ = model;
        using var folded = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"), processing: new Loupe.Models.Processing.WeightProcessing { FoldLn = true });
        var (g, f) = (EdgeGraph.FromModel(model), EdgeGraph.FromModel(folded));
        var plain = EdgeAttribution.Eap(model, g, data.Clean, data.Corrupted, metric);
        var processed = EdgeAttribution.Eap(folded, f, data.Clean, data.Corrupted, metric);
        double max = plain.Scores.Max(Math.Abs);
        for (int e = 0; e < plain.Scores.Length; e++) Close(plain.Scores[e], processed.Scores[e], g.Edges[e].Name, 1e-4 * max);
        var circuit = CircuitSelection.TopN(plain, 30);
        Close(new CircuitEvaluator(model, g, data.Clean, data.Corrupted, metric).Evaluate(circuit),
              new CircuitEvaluator(folded, f, data.Clean, data.Corrupted, metric).Evaluate(circuit), "circuit metric", 1e-4);
    }
}
