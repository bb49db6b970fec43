using Loupe.Probes.Classifiers;

namespace Loupe.Probes.Experiment;

/// <summary>Which probes to train.</summary>
[Flags]
public enum ProbeKinds
{
    /// <summary>Multinomial logistic regression (<see cref="LogisticProbe"/>).</summary>
    Logistic = 1,
    /// <summary>Nearest class mean (<see cref="DiffMeansProbe"/>).</summary>
    DiffMeans = 2,
    Both = Logistic | DiffMeans,
}

/// <summary>How probes are trained and evaluated.</summary>
/// <param name="Probes">Which probes.</param>
/// <param name="Seed">Seeds the train/held-out split.</param>
/// <param name="HeldOutFraction">Share of sentences held out, in (0, 1).</param>
/// <param name="Logistic">Logistic regression settings (default <see cref="LogisticOptions"/>).</param>
/// <param name="MaxParallelism">Hooks trained at once (-1: one per core). Results do not depend on it.</param>
public sealed record ProbeOptions(ProbeKinds Probes = ProbeKinds.Both, int Seed = 0, double HeldOutFraction = 0.2, LogisticOptions? Logistic = null, int MaxParallelism = -1);

/// <summary>A train/held-out split of sentences: <c>HeldOut[s]</c> says whether sentence s is held out.</summary>
public sealed record SentenceSplit(bool[] HeldOut)
{
    public int HeldOutCount => HeldOut.Count(h => h);
    public int TrainCount => HeldOut.Length - HeldOutCount;

    /// <summary>
    /// Holds out <c>round(fraction · sentences)</c> sentences (at least one, and at least one left to
    /// train on), chosen by a Fisher–Yates shuffle seeded with <paramref name="seed"/>.
    /// </summary>
    /// <exception cref="InputError">Fewer than 2 sentences, or the fraction is not in (0, 1).</exception>
    public static SentenceSplit Create(int sentences, double fraction, int seed)
    {
        if (sentences < 2) throw new InputError($"a train/held-out split needs at least 2 sentences (got {sentences})");
        if (!(fraction > 0 && fraction < 1)) throw new InputError($"the held-out fraction must be in (0, 1) (got {fraction})");
        var order = Enumerable.Range(0, sentences).ToArray();
        var random = new Random(seed);
        for (int i = sentences - 1; i > 0; i--)
        {
            int j = random.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        int heldOut = Math.Clamp((int)Math.Round(fraction * sentences), 1, sentences - 1);
        var mask = new bool[sentences];
        for (int i = 0; i < heldOut; i++) mask[order[i]] = true;
        return new SentenceSplit(mask);
    }
}

/// <summary>How one probe did at one hook.</summary>
/// <param name="TrainAccuracy">Accuracy on the training tokens.</param>
/// <param name="HeldOutAccuracy">Accuracy on the held-out tokens.</param>
/// <param name="Confusion">Held-out counts <c>[true class][predicted class]</c>: rows are true classes, columns predictions.</param>
/// <param name="Iterations">L-BFGS iterations (logistic only).</param>
/// <param name="Converged">Whether L-BFGS met its tolerance (logistic only).</param>
/// <param name="Stop">Why L-BFGS stopped: gradient, decrease, budget or line_search (logistic only).</param>
public sealed record ProbeScore(double TrainAccuracy, double HeldOutAccuracy, int[][] Confusion, int? Iterations = null, bool? Converged = null, string? Stop = null);

/// <summary>Both probes' scores at one hook.</summary>
/// <param name="Hook">The hook point.</param>
/// <param name="Index">Its position in the probed list (forward order).</param>
/// <param name="Width">Feature width.</param>
/// <param name="Logistic">Null when not trained.</param>
/// <param name="DiffMeans">Null when not trained.</param>
public sealed record HookProbeResult(string Hook, int Index, int Width, ProbeScore? Logistic, ProbeScore? DiffMeans)
{
    /// <summary>The held-out accuracy used to rank hooks: the logistic probe's when trained, else the diff-of-means probe's.</summary>
    public double RankingAccuracy => (Logistic ?? DiffMeans)!.HeldOutAccuracy;
}

/// <summary>The probes at every hook, with the split and the baseline they are judged against.</summary>
/// <param name="Classes">Class names (a label indexes this list).</param>
/// <param name="Hooks">Per-hook results, in forward order.</param>
/// <param name="Split">Which sentences were held out.</param>
/// <param name="TrainCounts">Training tokens per class <c>[classes]</c>.</param>
/// <param name="HeldOutCounts">Held-out tokens per class <c>[classes]</c>.</param>
/// <param name="MajorityClass">The most frequent training class (lower index on ties).</param>
/// <param name="BaselineAccuracy">Held-out accuracy of always predicting <paramref name="MajorityClass"/>.</param>
public sealed record ProbeRun(IReadOnlyList<string> Classes, IReadOnlyList<HookProbeResult> Hooks, SentenceSplit Split,
    int[] TrainCounts, int[] HeldOutCounts, int MajorityClass, double BaselineAccuracy)
{
    public int TrainTokens => TrainCounts.Sum();
    public int HeldOutTokens => HeldOutCounts.Sum();

    /// <summary>The hook with the highest <see cref="HookProbeResult.RankingAccuracy"/> (earliest on ties).</summary>
    public HookProbeResult Best => Hooks.Aggregate((best, h) => h.RankingAccuracy > best.RankingAccuracy ? h : best);
}
