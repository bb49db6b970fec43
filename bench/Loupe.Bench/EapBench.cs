using System.Diagnostics;
using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Bench;

// Edge attribution patching over every edge of a model, against the same work done one edge at a time:
// 1. batched: EdgeAttribution.Eap — two cached forwards, one forward + backward, then every layer's slots against
//    every source in one GEMM;
// 2. one edge at a time: a forward + backward whose gradient is read at that edge's slot only (the dominant cost
//    of scoring an edge on its own; the activation differences are shared and not counted against it), timed on a
//    sample of edges spread over the graph and extrapolated to all of them.

/// <summary>EAP throughput on one model.</summary>
public sealed record EapResult(string Model, int Pairs, int Length, int Edges, double BatchedSeconds, double OneEdgeSecondsEach, int OneEdgeSamples)
{
    public double BatchedEdgesPerSecond => Edges / BatchedSeconds;
    public double OneEdgeEdgesPerSecond => 1 / OneEdgeSecondsEach;
    public double Speedup => BatchedEdgesPerSecond / OneEdgeEdgesPerSecond;
}

public static class EapBench
{
    public static EapResult Run(string name, string folder, bool quick, TextWriter log)
    {
        using var model = ModelLoader.LoadFolder(folder);
        int pairs = quick ? 4 : 32, T = quick ? 16 : 64, V = model.Config.DVocab;
        var random = new Random(11);
        var clean = new int[pairs * T];
        for (int i = 0; i < clean.Length; i++) clean[i] = random.Next(V);
        var corrupt = (int[])clean.Clone();
        for (int b = 0; b < pairs; b++)
            for (int p = T / 2; p < T; p += 3) corrupt[b * T + p] = random.Next(V);
        var (c, x) = (new TokenBatch(clean, pairs, T), new TokenBatch(corrupt, pairs, T));
        var metric = new MeanLogitDiff([.. Enumerable.Range(0, pairs).Select(_ => new[] { new LogitDiffTerm(T - 1, 17, 42) })]);
        var graph = EdgeGraph.FromModel(model);

        log.WriteLine($"eap [{name}]: warm-up on one pair …");
        EdgeAttribution.Eap(model, graph, new TokenBatch(clean[..T], 1, T), new TokenBatch(corrupt[..T], 1, T),
            new MeanLogitDiff([[new LogitDiffTerm(T - 1, 17, 42)]]));
        log.WriteLine($"eap [{name}]: all {graph.Edges.Count} edges, {pairs} pairs × {T} tokens …");
        var clock = Stopwatch.StartNew();
        EdgeAttribution.Eap(model, graph, c, x, metric);
        double batched = clock.Elapsed.TotalSeconds;

        int samples = quick ? 4 : 3;
        var slots = Enumerable.Range(0, samples).Select(i => graph.Destinations[i * (graph.Destinations.Count - 1) / Math.Max(1, samples - 1)]).ToArray();
        log.WriteLine($"eap [{name}]: one edge at a time, {samples} edges timed …");
        clock.Restart();
        foreach (var slot in slots)
        {
            var hooks = slot.Kind switch
            {
                SlotKind.Query => [HookNames.Q(slot.Layer)],
                SlotKind.Key => [HookNames.K(slot.Layer)],
                SlotKind.Value => [HookNames.V(slot.Layer)],
                SlotKind.Mlp => new[] { HookNames.ResidMid(slot.Layer), HookNames.ResidPost(slot.Layer) },
                _ => [HookNames.ResidPost(slot.Layer)],
            };
            var options = new RunOptions { GradientFilter = hooks.Contains, CacheFilter = h => h == HookNames.ResidPre(slot.Layer) };
            model.RunWithGradients(c, metric, null, options);
        }
        double each = clock.Elapsed.TotalSeconds / samples;
        return new EapResult(name, pairs, T, graph.Edges.Count, batched, each, samples);
    }

    public static void Print(TextWriter w, EapResult r)
    {
        w.WriteLine();
        w.WriteLine($"## Edge attribution patching — {r.Model}, {r.Pairs} prompt pairs × {r.Length} tokens, {r.Edges} edges");
        w.WriteLine($"all edges at once (EdgeAttribution.Eap)   {r.BatchedSeconds,9:F2} s   {r.BatchedEdgesPerSecond,12:N0} edges/s");
        w.WriteLine($"one edge at a time ({r.OneEdgeSamples} timed)           {r.OneEdgeSecondsEach,9:F2} s each   {r.OneEdgeEdgesPerSecond,8:F3} edges/s   ({r.Edges * r.OneEdgeSecondsEach / 3600:F1} h for all, extrapolated)");
        w.WriteLine($"speed-up                                  {r.Speedup,9:N0}×");
    }
}
