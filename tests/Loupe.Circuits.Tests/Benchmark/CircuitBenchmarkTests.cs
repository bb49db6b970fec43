using Loupe.Circuits.Benchmark;

namespace Loupe.Circuits.Tests.Benchmark;

/// <summary>ROC AUC, precision/recall at k and best F1 on hand-made scores.</summary>
public class CircuitBenchmarkTests
{
    static void Near(double expected, double actual) => Assert.InRange(actual, expected - 1e-12, expected + 1e-12);

    [Fact]
    public void Perfect_and_reversed_rankings_give_auc_1_and_0()
    {
        bool[] truth = [true, true, false, false, false];
        Near(1, CircuitBenchmark.RocAuc([5, 4, 3, 2, 1], truth));
        Near(0, CircuitBenchmark.RocAuc([1, 2, 3, 4, 5], truth));
        Near(2, CircuitBenchmark.TrueInTopK([5, 4, 3, 2, 1], truth, 2));
    }

    [Fact]
    public void Auc_counts_pairs_and_ties_count_one_half()
    {
        // positives 0.9 and 0.4; negatives 0.8, 0.4, 0.1: pairs won 1+1+1 (0.9) + 0+0.5+1 (0.4) = 4.5 of 6.
        Near(4.5 / 6, CircuitBenchmark.RocAuc([0.9, 0.4, 0.8, 0.4, 0.1], [true, true, false, false, false]));
    }

    [Fact]
    public void All_equal_scores_give_auc_one_half_and_precision_at_the_base_rate()
    {
        bool[] truth = [true, false, false, false];
        double[] scores = [0.3, 0.3, 0.3, 0.3];
        Near(0.5, CircuitBenchmark.RocAuc(scores, truth));
        Near(0.25, CircuitBenchmark.TrueInTopK(scores, truth, 1));
        var row = CircuitBenchmark.Score("c", "construction", "m", scores, truth, 0);
        Near(0.25, row.PrecisionAtK);
        Near(0.25, row.RecallAtK);
        Near(0.4, row.BestF1); // everything kept: precision 1/4, recall 1
    }

    [Fact]
    public void A_tie_at_the_cut_shares_its_true_edges_pro_rata()
    {
        // k = 2: the top edge (true) is kept, then one of the three tied at 0.5 (one of them true): 1 + 1/3.
        bool[] truth = [true, true, false, false, false];
        double[] scores = [0.9, 0.5, 0.5, 0.5, 0.1];
        Near(1 + 1.0 / 3, CircuitBenchmark.TrueInTopK(scores, truth, 2));
        var row = CircuitBenchmark.Score("c", "construction", "m", scores, truth, 0);
        Near((1 + 1.0 / 3) / 2, row.PrecisionAtK);
        Assert.Equal(2, row.TrueEdges);
        Assert.Equal(5, row.Edges);
    }

    [Fact]
    public void Sign_is_ignored_and_best_f1_finds_the_threshold()
    {
        bool[] truth = [true, true, false, false];
        var row = CircuitBenchmark.Score("c", "construction", "m", [-0.9, 0.7, 0.2, -0.1], truth, 0);
        Near(1, row.Auc);
        Near(1, row.PrecisionAtK);
        Near(1, row.BestF1);
        Near(0.7, row.BestF1Threshold);
    }

    [Fact]
    public void Rounding_residue_ties_with_zero()
    {
        // What a gradient method gives a true edge behind a step function: 0 in exact arithmetic, ~1e-7 of the largest score
        // with FMA kernels. Both must score alike: a tie with the false edges at 0 (AUC 0.75 here), not a perfect ranking.
        bool[] truth = [true, true, false, false];
        var residue = CircuitBenchmark.Score("c", "construction", "m", [2.0, 2e-7, 0, 0], truth, 0);
        var exact = CircuitBenchmark.Score("c", "construction", "m", [2.0, 0, 0, 0], truth, 0);
        Near(0.75, exact.Auc);
        Near(exact.Auc, residue.Auc);
        Near(exact.PrecisionAtK, residue.PrecisionAtK);
        Near(exact.BestF1, residue.BestF1);
        // Just above the floor a score is a score.
        Near(1, CircuitBenchmark.Score("c", "construction", "m", [2.0, 3e-4, 0, 0], truth, 0).Auc);
    }

    [Fact]
    public void Degenerate_truth_gives_nan_auc_and_mismatched_lengths_are_refused()
    {
        Assert.True(double.IsNaN(CircuitBenchmark.RocAuc([1, 2], [false, false])));
        Assert.True(double.IsNaN(CircuitBenchmark.RocAuc([1, 2], [true, true])));
        Assert.Throws<ArgumentException>(() => CircuitBenchmark.RocAuc([1, 2, 3], [true, false]));
        Assert.Throws<ArgumentException>(() => CircuitBenchmark.RocAuc([1, double.NaN], [true, false]));
    }

    [Fact]
    public void Table_lists_every_row()
    {
        var rows = new[] { CircuitBenchmark.Score("planted-x", "construction", "EAP", [1, 0], [true, false], 0.5) };
        string table = CircuitBenchmark.Table(rows);
        Assert.Contains("planted-x", table);
        Assert.Contains("1.000", table);
    }
}
