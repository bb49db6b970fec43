namespace Loupe.Circuits.Rasp;

/// <summary>A RASP program with the inputs it is meant for: what the benchmark compiles and runs.</summary>
/// <param name="Name">Short name (<c>reverse</c>, <c>sort</c>, …).</param>
/// <param name="Description">One line: what it computes and where its answers are.</param>
/// <param name="Output">The output SOp.</param>
/// <param name="Vocabulary">The input values.</param>
/// <param name="MaxSeqLen">The input length it is compiled for (BOS not counted).</param>
/// <param name="Sample">Draws one valid input of length <paramref name="MaxSeqLen"/>.</param>
/// <param name="AnswerPositions">The RASP positions whose output is the program's answer (causal attention sees what they need).</param>
public sealed record RaspProgram(string Name, string Description, SOp Output, IReadOnlyList<object> Vocabulary, int MaxSeqLen,
    Func<Random, object[]> Sample, IReadOnlyList<int> AnswerPositions);

/// <summary>
/// Tracr's library programs (<c>lib.py</c>), rewritten for causal attention: a query sees only earlier keys, so each
/// program takes a fixed-length input and puts its answers where they can be computed.
/// </summary>
public static class RaspLibrary
{
    static readonly object[] Letters = ["a", "b", "c", "d"];

    /// <summary>The programs in the order the benchmark lists them.</summary>
    public static IReadOnlyList<RaspProgram> All() => [Reverse(), Sort(), Hist(), FracPrevs(), Dyck()];

    /// <summary>
    /// Tracr's <c>make_reverse</c> with the length fixed (a causal <c>make_length</c> would count only the prefix):
    /// <c>opp = length−1−indices; reverse = Aggregate(Select(indices, opp, EQ), tokens)</c>. Position p holds x[L−1−p]
    /// wherever that is visible (p ≥ (L−1)/2); earlier positions select nothing.
    /// </summary>
    public static RaspProgram Reverse(int length = 6)
    {
        var opp = RaspOps.Map(RaspOps.Indices, i => length - 1 - (int)i, "opp_index");
        var flip = RaspOps.Select(RaspOps.Indices, opp, Comparison.EQ);
        var reverse = RaspOps.Aggregate(flip, RaspOps.Tokens, "reverse");
        return new("reverse", $"x[{length}−1−p] at positions p ≥ {length / 2} (Tracr make_reverse, length fixed)", reverse, Letters, length,
            rng => [.. Enumerable.Range(0, length).Select(_ => Letters[rng.Next(Letters.Length)])],
            [.. Enumerable.Range(0, length).Where(p => length - 1 - p <= p)]);
    }

    /// <summary>
    /// Tracr's <c>make_sort_unique</c> in three segments of n: the input x (unique values), a workspace where position n+k copies
    /// x[k] and counts the inputs ≤ it (its rank + 1, a selector width), and the answer, where position 2n+r picks the workspace
    /// position of rank r. The tokens in the workspace and answer segments are ignored.
    /// </summary>
    public static RaspProgram Sort(int n = 3, int values = 6)
    {
        const int Beyond = 99; // the key of non-input positions: larger than every value, so never ≤ a copied input
        var vocab = Enumerable.Range(0, values).Cast<object>().ToArray();
        var keyed = RaspOps.SequenceMap(RaspOps.Tokens, RaspOps.Indices, (t, i) => (int)i < n ? t : Beyond, "keyed");
        var copy = RaspOps.Aggregate(RaspOps.Select(RaspOps.Indices, RaspOps.Indices, (k, q) => (int)k < n && (int)k == (int)q - n, "k==q-n"), RaspOps.Tokens, "copy");
        var rank = RaspOps.SelectorWidth(RaspOps.Select(keyed, copy, Comparison.LEQ), "rank");
        var target = RaspOps.Select(rank, RaspOps.Indices, (k, q) => (int)q >= 2 * n && (int)k == (int)q - 2 * n + 1, "k==q-2n+1");
        var sorted = RaspOps.Aggregate(target, copy, "sort");
        return new("sort", $"the {n} unique inputs sorted, at positions {2 * n}…{3 * n - 1} (Tracr make_sort_unique, workspace segment)", sorted, vocab, 3 * n,
            rng =>
            {
                var input = vocab.OrderBy(_ => rng.Next()).Take(n).ToList();
                for (int i = n; i < 3 * n; i++) input.Add(vocab[rng.Next(values)]);
                return [.. input];
            },
            [.. Enumerable.Range(2 * n, n)]);
    }

    /// <summary>Tracr's <c>make_hist</c>: <c>SelectorWidth(Select(tokens, tokens, EQ))</c>, causal: how often the token occurred so far.</summary>
    public static RaspProgram Hist(int length = 6)
    {
        var vocab = Letters[..3];
        var hist = RaspOps.SelectorWidth(RaspOps.Select(RaspOps.Tokens, RaspOps.Tokens, Comparison.EQ), "hist");
        return new("hist", "occurrences of the token so far (Tracr make_hist)", hist, vocab, length,
            rng => [.. Enumerable.Range(0, length).Select(_ => vocab[rng.Next(vocab.Length)])],
            [.. Enumerable.Range(0, length)]);
    }

    /// <summary>Tracr's <c>make_frac_prevs</c>: the fraction of tokens so far that are "x" (numerical mean).</summary>
    public static RaspProgram FracPrevs(int length = 6)
    {
        object[] vocab = ["x", "y", "z"];
        var isX = RaspOps.NumericalMap(RaspOps.Tokens, t => (string)t == "x" ? 1 : 0, "is_x");
        var prevs = RaspOps.Select(RaspOps.Indices, RaspOps.Indices, Comparison.LEQ);
        var frac = RaspOps.NumericalAggregate(prevs, isX, "frac_prevs");
        return new("frac_prevs", "fraction of tokens so far equal to \"x\" (Tracr make_frac_prevs; numerical)", frac, vocab, length,
            rng => [.. Enumerable.Range(0, length).Select(_ => vocab[rng.Next(vocab.Length)])],
            [.. Enumerable.Range(0, length)]);
    }

    /// <summary>
    /// Whether more than half of the tokens so far are "x": <c>frac_prevs > ½</c>, a map of a numerical SOp (Tracr's discretising MLP).
    /// Not in <see cref="All"/>: it exercises the numerical → categorical map.
    /// </summary>
    public static RaspProgram Majority(int length = 6)
    {
        var frac = (AggregateSOp)FracPrevs(length).Output;
        var majority = RaspOps.Map(frac, f => (double)f > 0.5, "majority");
        return new("majority", "whether most tokens so far are \"x\" (frac_prevs > 1/2)", majority, ["x", "y", "z"], length,
            rng => [.. Enumerable.Range(0, length).Select(_ => (object)"xyz"[rng.Next(3)].ToString())],
            [.. Enumerable.Range(0, length)]);
    }

    /// <summary>
    /// Balanced parentheses (Tracr's <c>make_shuffle_dyck</c> with one pair, categorical and causal): at each position, whether
    /// the prefix is balanced — as many "(" as ")" so far and no prefix with more ")" than "(".
    /// </summary>
    public static RaspProgram Dyck(int length = 6)
    {
        object[] vocab = ["(", ")"];
        var opens = RaspOps.SelectorWidth(RaspOps.Select(RaspOps.Tokens, RaspOps.Tokens, (k, _) => (string)k == "(", "key=='('"), "opens");
        var closes = RaspOps.SelectorWidth(RaspOps.Select(RaspOps.Tokens, RaspOps.Tokens, (k, _) => (string)k == ")", "key==')'"), "closes");
        var balance = RaspOps.SequenceMap(opens, closes, (o, c) => (int)o - (int)c, "balance");
        var dips = RaspOps.SelectorWidth(RaspOps.Select(balance, balance, (k, _) => (int)k < 0, "key<0"), "dips");
        var balanced = RaspOps.SequenceMap(balance, dips, (b, d) => (int)b == 0 && (int)d == 0, "balanced");
        return new("dyck", "whether the prefix is balanced parentheses (Tracr make_shuffle_dyck, one pair)", balanced, vocab, length,
            rng => [.. Enumerable.Range(0, length).Select(_ => vocab[rng.Next(2)])],
            [.. Enumerable.Range(0, length)]);
    }
}
