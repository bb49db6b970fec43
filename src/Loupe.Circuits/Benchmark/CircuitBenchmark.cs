using System.Diagnostics;
using System.Globalization;
using System.Text;
using Loupe.Circuits.Edges;
using Loupe.Reports;

namespace Loupe.Circuits.Benchmark;

/// <summary>How well one method's edge scores find one known circuit.</summary>
/// <param name="Circuit">The known circuit's name.</param>
/// <param name="GroundTruth">Where its true edges come from (<c>construction</c>, <c>exact patching</c>).</param>
/// <param name="Edges">Edges in the model's graph.</param>
/// <param name="TrueEdges">Edges in the circuit.</param>
/// <param name="Method">The discovery method's name.</param>
/// <param name="Auc">ROC AUC of |score| against membership in the circuit (ties count half); NaN when every edge or no edge is true.</param>
/// <param name="PrecisionAtK">Share of the top k = <paramref name="TrueEdges"/> edges by |score| that are true (ties at the cut shared out evenly).</param>
/// <param name="RecallAtK">Share of the true edges among the top k (equal to the precision when k = |true edges|, kept for the general shape).</param>
/// <param name="BestF1">The best F1 over every threshold on |score| (keep the edges with |score| ≥ threshold).</param>
/// <param name="BestF1Threshold">The |score| threshold that gives <paramref name="BestF1"/>.</param>
/// <param name="Seconds">Wall time of the method on this circuit.</param>
public sealed record BenchmarkRow(string Circuit, string GroundTruth, int Edges, int TrueEdges, string Method,
    double Auc, double PrecisionAtK, double RecallAtK, double BestF1, double BestF1Threshold, double Seconds);

/// <summary>
/// Scores discovery methods against circuits whose edges are known: ROC AUC, precision and recall of the top-k
/// edges (k = number of true edges) and the best-F1 threshold, all on |score| (an edge that lowers the metric
/// matters as much as one that raises it). A score within <see cref="NoiseFloor"/> of the largest counts as 0.
/// </summary>
public static class CircuitBenchmark
{
    /// <summary>
    /// |score| ≤ NoiseFloor · max |score| is scored as 0, a tie with every edge the method gives nothing. The scores are sums
    /// of fp32 products, so an edge whose score is 0 in exact arithmetic comes out as rounding: on the compiled RASP models
    /// a gradient method gives the edges behind a lookup-table MLP (a step function, derivative 0) residues of 1e-9–1.4e-5
    /// of the largest score with FMA GEMM kernels and exactly 0 without them, which ranked them above the false edges
    /// (AUC 1.000) on one machine and tied them (0.625–0.75) on another. 1e-4 is seven times the largest residue measured
    /// (EAP-IG with interpolated activations through sort's saturated attention).
    /// </summary>
    public const double NoiseFloor = 1e-4;

    /// <summary>Runs every method on every circuit, in order.</summary>
    /// <param name="circuits">The known circuits.</param>
    /// <param name="methods">The methods to score.</param>
    /// <param name="progress">Called after each row (e.g. to print it), or null.</param>
    /// <exception cref="ArgumentException">A circuit names a true edge its model's graph does not have.</exception>
    public static IReadOnlyList<BenchmarkRow> Run(IEnumerable<KnownCircuit> circuits, IReadOnlyList<DiscoveryMethod> methods, Action<BenchmarkRow>? progress = null)
    {
        var rows = new List<BenchmarkRow>();
        foreach (var circuit in circuits)
        {
            var graph = EdgeGraph.FromModel(circuit.Model);
            var truth = TruthMask(graph, circuit);
            foreach (var method in methods)
            {
                var clock = Stopwatch.StartNew();
                var scores = method.Score(circuit.Model, graph, circuit.Clean, circuit.Corrupted, circuit.Metric);
                double seconds = clock.Elapsed.TotalSeconds;
                var row = Score(circuit.Name, circuit.GroundTruth, method.Name, scores.Scores, truth, seconds);
                rows.Add(row);
                progress?.Invoke(row);
            }
        }
        return rows;
    }

    /// <summary>Membership of every edge of <paramref name="graph"/> in the circuit's true edges.</summary>
    /// <exception cref="ArgumentException">A true edge is not in the graph.</exception>
    public static bool[] TruthMask(EdgeGraph graph, KnownCircuit circuit)
    {
        var missing = circuit.TrueEdges.Where(e => graph.IndexOf(e) < 0).ToArray();
        if (missing.Length > 0)
            throw new ArgumentException($"known circuit '{circuit.Name}' names edges its model's graph does not have: {string.Join(", ", missing.Take(5))}");
        return [.. graph.Edges.Select(e => circuit.TrueEdges.Contains(e.Name))];
    }

    /// <summary>One row from raw scores (sign ignored, those within <see cref="NoiseFloor"/> of the largest as 0) and the truth mask.</summary>
    /// <param name="circuit">The circuit's name.</param>
    /// <param name="groundTruth">Where its truth comes from.</param>
    /// <param name="method">The method's name.</param>
    /// <param name="scores">One score per edge.</param>
    /// <param name="truth">Whether each edge is in the circuit.</param>
    /// <param name="seconds">The method's wall time.</param>
    public static BenchmarkRow Score(string circuit, string groundTruth, string method, IReadOnlyList<double> scores, IReadOnlyList<bool> truth, double seconds)
    {
        var magnitude = scores.Select(Math.Abs).ToArray();
        double floor = NoiseFloor * (magnitude.Length == 0 ? 0 : magnitude.Max());
        for (int i = 0; i < magnitude.Length; i++) if (magnitude[i] <= floor) magnitude[i] = 0;
        int k = truth.Count(t => t);
        double topK = TrueInTopK(magnitude, truth, k);
        var (f1, threshold) = BestF1(magnitude, truth);
        return new BenchmarkRow(circuit, groundTruth, scores.Count, k, method, RocAuc(magnitude, truth),
            k == 0 ? double.NaN : topK / k, k == 0 ? double.NaN : topK / k, f1, threshold, seconds);
    }

    /// <summary>
    /// ROC AUC of <paramref name="scores"/> (larger = more likely true) by the rank-sum (Mann–Whitney) formula with
    /// average ranks, so tied scores count one half; NaN when there are no positives or no negatives.
    /// </summary>
    /// <exception cref="ArgumentException">The lengths differ or a score is NaN.</exception>
    public static double RocAuc(IReadOnlyList<double> scores, IReadOnlyList<bool> truth)
    {
        Check(scores, truth);
        int n = scores.Count, positives = truth.Count(t => t), negatives = n - positives;
        if (positives == 0 || negatives == 0) return double.NaN;
        var ranks = AverageRanks(scores);
        double rankSum = 0;
        for (int i = 0; i < n; i++)
            if (truth[i]) rankSum += ranks[i];
        return (rankSum - positives * (positives + 1) / 2.0) / ((double)positives * negatives);
    }

    /// <summary>
    /// The expected number of true edges among the <paramref name="k"/> largest scores when ties at the cut are broken
    /// uniformly at random (a tied group straddling the cut contributes its share of true edges pro rata).
    /// </summary>
    /// <exception cref="ArgumentException">The lengths differ or a score is NaN.</exception>
    public static double TrueInTopK(IReadOnlyList<double> scores, IReadOnlyList<bool> truth, int k)
    {
        Check(scores, truth);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        double found = 0;
        int taken = 0;
        foreach (var group in TieGroupsDescending(scores))
        {
            if (taken >= k) break;
            int trueInGroup = group.Count(i => truth[i]);
            int room = Math.Min(group.Length, k - taken);
            found += trueInGroup * (double)room / group.Length;
            taken += room;
        }
        return found;
    }

    /// <summary>The best F1 over thresholds at each distinct score (keep edges with score ≥ threshold), and that threshold; (0, NaN) without true edges.</summary>
    /// <exception cref="ArgumentException">The lengths differ or a score is NaN.</exception>
    public static (double F1, double Threshold) BestF1(IReadOnlyList<double> scores, IReadOnlyList<bool> truth)
    {
        Check(scores, truth);
        int positives = truth.Count(t => t), kept = 0, hits = 0;
        double best = 0, threshold = double.NaN;
        if (positives == 0) return (0, double.NaN);
        foreach (var group in TieGroupsDescending(scores))
        {
            kept += group.Length;
            hits += group.Count(i => truth[i]);
            double f1 = 2.0 * hits / (kept + positives);
            if (f1 > best) (best, threshold) = (f1, scores[group[0]]);
        }
        return (best, threshold);
    }

    static IEnumerable<int[]> TieGroupsDescending(IReadOnlyList<double> scores)
    {
        var order = Enumerable.Range(0, scores.Count).OrderByDescending(i => scores[i]).ToArray();
        for (int start = 0; start < order.Length;)
        {
            int end = start + 1;
            while (end < order.Length && scores[order[end]] == scores[order[start]]) end++;
            yield return order[start..end];
            start = end;
        }
    }

    static double[] AverageRanks(IReadOnlyList<double> scores)
    {
        var order = Enumerable.Range(0, scores.Count).OrderBy(i => scores[i]).ToArray();
        var ranks = new double[scores.Count];
        for (int start = 0; start < order.Length;)
        {
            int end = start + 1;
            while (end < order.Length && scores[order[end]] == scores[order[start]]) end++;
            double rank = (start + 1 + end) / 2.0; // ranks start..end-1 (1-based: start+1..end), averaged
            for (int j = start; j < end; j++) ranks[order[j]] = rank;
            start = end;
        }
        return ranks;
    }

    static void Check(IReadOnlyList<double> scores, IReadOnlyList<bool> truth)
    {
        if (scores.Count != truth.Count) throw new ArgumentException($"{scores.Count} scores but {truth.Count} truth labels");
        if (scores.Any(double.IsNaN)) throw new ArgumentException("a score is NaN; the method failed on this circuit");
    }

    /// <summary>The rows as a plain-text table, one line per (circuit, method).</summary>
    public static string Table(IReadOnlyList<BenchmarkRow> rows)
    {
        static string F(double v, string format) => double.IsNaN(v) ? "n/a" : v.ToString(format, CultureInfo.InvariantCulture);
        int circuitWidth = Math.Max(7, rows.Select(r => r.Circuit.Length).DefaultIfEmpty(0).Max());
        int methodWidth = Math.Max(6, rows.Select(r => r.Method.Length).DefaultIfEmpty(0).Max());
        int truthWidth = Math.Max(12, rows.Select(r => r.GroundTruth.Length).DefaultIfEmpty(0).Max());
        var text = new StringBuilder();
        text.AppendLine($"{"circuit".PadRight(circuitWidth)}  {"ground truth".PadRight(truthWidth)}  {"edges",5}  {"true",4}  {"method".PadRight(methodWidth)}  {"AUC",6}  {"P@k",6}  {"R@k",6}  {"bestF1",6}  {"seconds",8}");
        foreach (var r in rows)
            text.AppendLine($"{r.Circuit.PadRight(circuitWidth)}  {r.GroundTruth.PadRight(truthWidth)}  {r.Edges,5}  {r.TrueEdges,4}  {r.Method.PadRight(methodWidth)}  " +
                $"{F(r.Auc, "0.000"),6}  {F(r.PrecisionAtK, "0.000"),6}  {F(r.RecallAtK, "0.000"),6}  {F(r.BestF1, "0.000"),6}  {F(r.Seconds, "0.00"),8}");
        return text.ToString();
    }

    /// <summary>Writes the rows and a description of each circuit as snake_case JSON, atomically.</summary>
    /// <param name="path">The JSON file.</param>
    /// <param name="rows">The benchmark rows.</param>
    /// <param name="circuits">The circuits scored (their descriptions and true edges are recorded).</param>
    public static void WriteJson(string path, IReadOnlyList<BenchmarkRow> rows, IEnumerable<KnownCircuit> circuits) =>
        AtomicFile.WriteJson(path, new
        {
            circuits = circuits.Select(c => new { c.Name, c.Description, c.GroundTruth, true_edges = c.TrueEdges.Order(StringComparer.Ordinal).ToArray(), metric = c.Metric.Name }),
            rows,
        });
}
