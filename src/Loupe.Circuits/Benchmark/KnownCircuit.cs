using Loupe.Circuits.Edges;
using Loupe.Models;

namespace Loupe.Circuits.Benchmark;

/// <summary>
/// A model whose circuit is known independently of the method being scored, with a task to run it on.
/// </summary>
/// <param name="Name">Short name used in tables and JSON (e.g. <c>rasp-reverse</c>, <c>induction-attn-only-2l</c>).</param>
/// <param name="Description">One line: what the model computes and where its ground truth comes from.</param>
/// <param name="Model">The model (its <see cref="EdgeGraph"/> is what the edges are named in).</param>
/// <param name="Clean">Inputs on which the circuit does its work.</param>
/// <param name="Corrupted">Inputs of the same shape that break the behaviour the metric measures.</param>
/// <param name="Metric">Per-example metric on the clean run's logits.</param>
/// <param name="TrueEdges">EAP-IG edge names (<c>a0.h2->a1.h1&lt;k&gt;</c>) that belong to the circuit.</param>
/// <param name="GroundTruth">Where <paramref name="TrueEdges"/> comes from: <c>construction</c> (compiled or planted weights) or <c>exact patching</c>.</param>
public sealed record KnownCircuit(string Name, string Description, HookedTransformer Model, TokenBatch Clean, TokenBatch Corrupted,
    IExampleMetric Metric, IReadOnlySet<string> TrueEdges, string GroundTruth);

/// <summary>A circuit-discovery method as the benchmark runs it: a score per edge (larger |score| = more important).</summary>
/// <param name="Name">The method's name in tables (<c>EAP</c>, <c>EAP-IG-inputs.steps5</c>, <c>exact</c>, <c>ACDC</c>).</param>
/// <param name="Score">Scores every edge of the graph for the task.</param>
public sealed record DiscoveryMethod(string Name, Func<HookedTransformer, EdgeGraph, TokenBatch, TokenBatch, IExampleMetric, EdgeScores> Score);

/// <summary>The discovery methods Loupe has, in the order tables list them.</summary>
public static class DiscoveryMethods
{
    /// <summary>Every method, with its default settings.</summary>
    public static IReadOnlyList<DiscoveryMethod> All { get; } =
    [
        new("EAP", EdgeAttribution.Eap),
        new("EAP-IG-inputs.steps5", (m, g, c, x, metric) => EdgeAttribution.EapIgInputs(m, g, c, x, metric, 5)),
        new("EAP-IG-activations.steps5", (m, g, c, x, metric) => EdgeAttribution.EapIgActivations(m, g, c, x, metric, 5)),
        new("exact", (m, g, c, x, metric) => EdgeAttribution.Exact(m, g, c, x, metric)),
        new("ACDC", Acdc),
    ];

    /// <summary>
    /// ACDC with τ = 2 % of |m_clean − m_corrupted|; its scores are the metric changes it measured when trying each edge
    /// (edges into nodes that lost every outgoing edge score 0).
    /// </summary>
    static EdgeScores Acdc(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric)
    {
        var evaluator = new CircuitEvaluator(model, graph, clean, corrupted, metric);
        return Edges.Acdc.Run(evaluator, 0.02 * Math.Abs(evaluator.Clean - evaluator.Corrupted)).Scores;
    }
}
