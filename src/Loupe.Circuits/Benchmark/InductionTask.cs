using Loupe.Circuits.Edges;
using Loupe.Models;

namespace Loupe.Circuits.Benchmark;

/// <summary>Which half of the repeated sequence the corrupted batch replaces.</summary>
public enum InductionCorruption
{
    /// <summary>
    /// Positions 48..63 (the second copy) get fresh tokens, as in ../shared/fixtures/circuits: the queries of the
    /// induction heads change, everything before position 48 (the keys they attend to) stays clean.
    /// </summary>
    SecondCopy,

    /// <summary>
    /// Positions 16..31 (the first copy) get fresh tokens: the keys and values the induction heads attend to change
    /// (through the previous-token head), the queries do not — this is the corruption under which the previous-token
    /// head → induction-head keys edges carry the signal.
    /// </summary>
    FirstCopy,
}

/// <summary>
/// The 2-layer attention-only induction model of ../shared/models/induction-attn-only-2l on the repeated-token task of
/// ../shared/fixtures/circuits: 16 sequences of 64 random tokens (vocabulary 0..127) whose positions 48..63 repeat 16..31;
/// the metric is the mean over p = 48..62 of logit(clean next token) − logit(corrupted next token). Its circuit is not
/// known by construction, so the ground truth is exact edge patching: the edges with |exact| ≥ 10 % of the largest.
/// </summary>
public static class InductionTask
{
    /// <summary>
    /// The share of the largest |exact| score an edge needs to be in the ground truth. Second-copy corruption: the scores
    /// fall into two groups separated by a wide gap (22 edges down to 0.20 × max, then 0.02 × max and below; the 22 hold
    /// 98.6 % of the total |exact|), so any cut from 2 % to 19 % gives the same set and 10 % sits in the gap; EAP-IG's own
    /// exact scores on the fixture's data give the same 22 edges. First-copy corruption: the scores taper off (12 edges
    /// down to 0.16 × max, the next at 0.10 × max), so that variant's truth is less sharp; its AUCs move by ≤ 0.01 for cuts at 5 % or 20 %.
    /// </summary>
    public const double TruthFraction = 0.1;

    const int Examples = 16, Length = 64, Vocab = 128, FirstCopy = 16, SecondCopy = 48, CopyLength = 16;

    /// <summary>Clean and corrupted batches (seeded <see cref="Random"/>) and the metric.</summary>
    /// <param name="corruption">Which copy the corrupted batch replaces.</param>
    /// <param name="seed">Seed of the tokens.</param>
    public static (TokenBatch Clean, TokenBatch Corrupted, MeanLogitDiff Metric) Data(InductionCorruption corruption, int seed = 0)
    {
        var random = new Random(seed);
        var clean = new int[Examples * Length];
        var corrupted = new int[Examples * Length];
        for (int b = 0; b < Examples; b++)
        {
            var row = clean.AsSpan(b * Length, Length);
            for (int t = 0; t < Length; t++) row[t] = random.Next(Vocab);
            row.Slice(FirstCopy, CopyLength).CopyTo(row.Slice(SecondCopy, CopyLength));
            row.CopyTo(corrupted.AsSpan(b * Length, Length));
            int replaced = corruption == InductionCorruption.SecondCopy ? SecondCopy : FirstCopy;
            for (int t = replaced; t < replaced + CopyLength; t++)
                corrupted[b * Length + t] = (row[t] + 1 + random.Next(Vocab - 1)) % Vocab; // never the clean token
        }
        // The wrong answer is what the corrupted sequence would continue with: its own next token in the second copy
        // (second-copy corruption), or the token after the corrupted first copy (first-copy corruption).
        int offset = corruption == InductionCorruption.SecondCopy ? 0 : FirstCopy - SecondCopy;
        var metric = new MeanLogitDiff([.. Enumerable.Range(0, Examples).Select(b => Enumerable.Range(SecondCopy, CopyLength - 1)
            .Select(p => new LogitDiffTerm(p, clean[b * Length + p + 1], corrupted[b * Length + p + 1 + offset])).ToArray())]);
        return (new TokenBatch(clean, Examples, Length), new TokenBatch(corrupted, Examples, Length), metric);
    }

    /// <summary>The edges of <paramref name="exact"/> with |score| ≥ <paramref name="fraction"/> × the largest |score|.</summary>
    public static HashSet<string> TruthFromExact(EdgeScores exact, double fraction = TruthFraction)
    {
        double largest = exact.Scores.Max(Math.Abs);
        return new HashSet<string>(exact.Graph.Edges.Where((_, i) => Math.Abs(exact.Scores[i]) >= fraction * largest).Select(e => e.Name), StringComparer.Ordinal);
    }

    /// <summary>The known circuit of the induction model in <paramref name="folder"/>; runs exact patching once for the ground truth.</summary>
    /// <param name="folder">The checkpoint (../shared/models/induction-attn-only-2l).</param>
    /// <param name="corruption">Which copy the corrupted batch replaces.</param>
    /// <param name="seed">Seed of the tokens.</param>
    public static KnownCircuit Build(string folder, InductionCorruption corruption = InductionCorruption.SecondCopy, int seed = 0)
    {
        var model = ModelLoader.LoadFolder(folder);
        try
        {
            var (clean, corrupted, metric) = Data(corruption, seed);
            var exact = EdgeAttribution.Exact(model, EdgeGraph.FromModel(model), clean, corrupted, metric);
            var truth = TruthFromExact(exact);
            string name = corruption == InductionCorruption.SecondCopy ? "induction-attn-only-2l" : "induction-attn-only-2l.first-copy";
            string what = corruption == InductionCorruption.SecondCopy ? "second copy (48..63) corrupted" : "first copy (16..31) corrupted";
            return new KnownCircuit(name, $"2-layer attention-only induction model, {what}; truth: edges with |exact| ≥ {TruthFraction:0.##} × max",
                model, clean, corrupted, metric, truth, "exact patching");
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }
}
