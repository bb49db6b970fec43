using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Circuits.Edges;

/// <summary>
/// Runs the model as a circuit: the clean input, except that every removed edge <c>P → C</c> carries P's
/// corrupted output instead of its output in this run. C's input is therefore
/// <c>(its input in this run) + Σ_removed (act_P(corrupted) − act_P(this run))</c> — EAP-IG's <c>evaluate_graph</c>
/// and ACDC's patching. With one edge removed this is exact edge patching.
/// Several circuits share a forward pass, each in its own copy of the batch.
/// Where the input changes: a head's q/k/v slot recomputes that head's projection from <c>LN1(resid_pre + c)</c>
/// at hook_q/k/v; an MLP slot adds <c>c</c> at resid_mid and takes it back at resid_post (so only the MLP sees it,
/// norm or not); the logits slot adds <c>c</c> at the last resid_post.
/// </summary>
public sealed class CircuitEvaluator
{
    readonly HookedTransformer _model;
    readonly EdgeGraph _graph;
    readonly EdgeSetup _setup;
    readonly TokenBatch _clean;
    readonly IExampleMetric _metric;

    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape, or the metric cannot tell them apart.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public CircuitEvaluator(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric)
    {
        (_model, _graph, _clean, _metric) = (model, graph, clean, metric);
        _setup = EdgeSetup.Create(model, graph, clean, corrupted, metric);
    }

    /// <summary>The graph whose edges are removed.</summary>
    public EdgeGraph Graph => _graph;
    /// <summary>The metric (mean over examples) of the clean run: every edge kept.</summary>
    public double Clean => _setup.CleanMetric.Average();
    /// <summary>The metric of the corrupted run: every edge removed.</summary>
    public double Corrupted => _setup.CorruptedMetric.Average();
    /// <summary>Per-example metric of the clean and corrupted runs.</summary>
    public IReadOnlyList<double> CleanPerExample => _setup.CleanMetric;
    public IReadOnlyList<double> CorruptedPerExample => _setup.CorruptedMetric;

    /// <summary>
    /// The most circuits in one forward pass (each a copy of the batch). The pass is also kept under about 64 M
    /// logits, so large vocabularies run one circuit at a time.
    /// </summary>
    public int CopiesPerPass { get; init; } = 16;

    /// <summary>Forward passes run so far.</summary>
    public int Passes { get; private set; }

    /// <summary>The metric (mean over examples) of the circuit keeping the edges where <paramref name="inCircuit"/> is true.</summary>
    public double Evaluate(bool[] inCircuit) => Evaluate([Removed(inCircuit)])[0];

    /// <summary>The metric (mean over examples) with each list of edges removed, in order.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An edge index is outside the graph.</exception>
    public double[] Evaluate(IReadOnlyList<int[]> removedEdges)
    {
        foreach (var list in removedEdges)
            foreach (int e in list)
                if ((uint)e >= (uint)_graph.Edges.Count) throw new ArgumentOutOfRangeException(nameof(removedEdges), $"edge {e} is outside the graph's {_graph.Edges.Count} edges");
        int rows = _setup.Rows;
        long logitsPerCopy = (long)rows * _model.Config.VocabOut;
        int perPass = (int)Math.Clamp(64L * 1024 * 1024 / Math.Max(logitsPerCopy, 1), 1, CopiesPerPass);
        var means = new double[removedEdges.Count];
        for (int start = 0; start < means.Length; start += perPass)
        {
            int count = Math.Min(perPass, means.Length - start);
            var perExample = RunCopies([.. removedEdges.Skip(start).Take(count)]);
            for (int c = 0; c < count; c++) means[start + c] = perExample[c].Average();
        }
        return means;
    }

    /// <summary>The removed edges of a circuit mask.</summary>
    /// <exception cref="ArgumentException">The mask's length is not the graph's edge count.</exception>
    public int[] Removed(bool[] inCircuit)
    {
        if (inCircuit.Length != _graph.Edges.Count) throw new ArgumentException($"the circuit mask has {inCircuit.Length} entries; the graph has {_graph.Edges.Count} edges", nameof(inCircuit));
        return [.. Enumerable.Range(0, inCircuit.Length).Where(e => !inCircuit[e])];
    }

    /// <summary>
    /// One forward pass over <c>copies.Length</c> copies of the clean batch; per copy, the per-example metric. Every
    /// correction is built with backend operations where the model runs; only the metric values come back.
    /// </summary>
    double[][] RunCopies(int[][] copies)
    {
        var model = _model;
        var be = model.Backend;
        int count = copies.Length, B = _clean.Batch, T = _clean.Length, rows = _setup.Rows, D = _setup.D, n = _setup.Width;
        int H = model.Config.NHeads, E = model.Config.DHead, L = model.Config.NLayers;
        // Per copy: destination slot → removed sources; per copy and source: act(corrupted) − act(this run), once it is known.
        var removed = new Dictionary<int, List<int>>[count];
        var pending = new Dictionary<int, Tensor>[count];
        var removedFrom = new HashSet<int>[count]; // per copy: sources with at least one removed edge
        var neededSources = new HashSet<int>();
        for (int c = 0; c < count; c++)
        {
            removed[c] = [];
            pending[c] = [];
            removedFrom[c] = [];
            foreach (int e in copies[c])
            {
                var edge = _graph.Edges[e];
                if (!removed[c].TryGetValue(edge.Destination, out var list)) removed[c][edge.Destination] = list = [];
                list.Add(edge.Source);
                neededSources.Add(edge.Source);
                removedFrom[c].Add(edge.Source);
            }
        }
        Tensor? Correction(int c, int slot)
        {
            if (!removed[c].TryGetValue(slot, out var sources)) return null;
            var sum = be.Zeros(n);
            foreach (int s in sources) be.CopyRows(pending[c][s], 0, n, sum, 0, n, 1, n, accumulate: true);
            return sum;
        }
        // A hook's edits go into a copy of its activation.
        Tensor Copy(Tensor act)
        {
            var copy = be.Empty(act.Shape.ToArray());
            be.CopyRows(act, 0, act.Length, copy, 0, act.Length, 1, act.Length);
            return copy;
        }

        var ids = new int[count * B * T];
        for (int c = 0; c < count; c++) _clean.Ids.CopyTo(ids, c * B * T);
        var options = new RunOptions();

        // Sources: record corrupted − this run's output for the copies that removed an edge out of them.
        foreach (var group in neededSources.GroupBy(s => EdgeSetup.OutputHook(_graph.Sources[s])))
        {
            var sources = group.ToArray();
            options.AddHook(group.Key, (act, _) =>
            {
                int stride = act.Length / count;
                foreach (int s in sources)
                    for (int c = 0; c < count; c++)
                    {
                        if (!removedFrom[c].Contains(s)) continue;
                        var diff = be.Empty(n);
                        _setup.ReadOutput(_graph.Sources[s], act, (long)c * stride, diff, 0);
                        be.Scale(diff, -1f, diff);
                        be.CopyRows(_setup.Corrupted, (long)s * n, n, diff, 0, n, 1, n, accumulate: true);
                        pending[c][s] = diff;
                    }
                return null;
            });
        }

        // Slots, grouped by the hook where their input changes.
        var residPre = new Tensor?[L];
        var residPreHooked = new HashSet<int>();
        var mlpCorrection = new Tensor?[count, L];
        var slotsByHook = Enumerable.Range(0, _graph.Destinations.Count)
            .Where(s => Enumerable.Range(0, count).Any(c => removed[c].ContainsKey(s)))
            .GroupBy(s => EdgeSetup.InputHook(_graph.Destinations[s]));
        foreach (var group in slotsByHook)
        {
            var slots = group.ToArray();
            var kind = _graph.Destinations[slots[0]].Kind;
            int l = _graph.Destinations[slots[0]].Layer;
            if (kind is SlotKind.Query or SlotKind.Key or SlotKind.Value && residPreHooked.Add(l))
                options.AddHook(HookNames.ResidPre(l), (act, _) => { residPre[l] = Copy(act); return null; });
            options.AddHook(group.Key, (act, _) =>
            {
                var edited = Copy(act);
                bool residual = kind is SlotKind.Mlp or SlotKind.Logits;
                long perCopy = (long)rows * (residual ? D : H * E);
                var x = residual ? null : be.Empty(rows, D);
                var normed = residual ? null : be.Empty(rows, D);
                var scale = residual ? null : be.Empty(rows);
                var head = residual ? null : be.Empty(rows, E);
                for (int c = 0; c < count; c++)
                    foreach (int s in slots)
                    {
                        if (Correction(c, s) is not { } correction) continue;
                        if (residual)
                        {
                            be.CopyRows(correction, 0, n, edited, c * perCopy, n, 1, n, accumulate: true);
                            if (kind == SlotKind.Mlp) mlpCorrection[c, l] = correction;
                            continue;
                        }
                        // One head's q, k or v from LN1(resid_pre + correction), written over that head's slice of the projection.
                        var slot = _graph.Destinations[s];
                        be.CopyRows(residPre[l]!, (long)c * n, n, x!, 0, n, 1, n);
                        be.CopyRows(correction, 0, n, x!, 0, n, 1, n, accumulate: true);
                        _setup.NormForward(model.Anatomy(l).Ln1, x!, normed!, scale!);
                        _setup.ProjectionForward(slot, normed!, head!);
                        be.CopyRows(head!, 0, E, edited, c * perCopy + (long)slot.Head * E, H * E, rows, E);
                    }
                return edited;
            });
        }
        // An MLP's correction is taken back after the MLP has read it: only the MLP saw it.
        foreach (int l in Enumerable.Range(0, L).Where(l => Enumerable.Range(0, count).Any(c => _graph.Destinations.Select((d, i) => (d, i)).Any(x => x.d.Kind == SlotKind.Mlp && x.d.Layer == l && removed[c].ContainsKey(x.i)))))
            options.AddHook(HookNames.ResidPost(l), (act, _) =>
            {
                var edited = Copy(act);
                var negative = be.Empty(n);
                for (int c = 0; c < count; c++)
                    if (mlpCorrection[c, l] is { } correction)
                    {
                        be.Scale(correction, -1f, negative);
                        be.CopyRows(negative, 0, n, edited, (long)c * n, n, 1, n, accumulate: true);
                    }
                return edited;
            });

        var logits = model.Run(new TokenBatch(ids, count * B, T), options).Logits;
        Passes++;
        return EdgeSetup.PerExample(_metric, be, logits, count);
    }
}
