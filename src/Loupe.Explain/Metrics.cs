namespace Loupe.Explain;

/// <summary>
/// A scorer's result over its examples: accuracy, precision, recall and F1 of the 0/1 answers (positive class:
/// activating / correctly marked), AUROC of P("1") when every answer had logprobs (else null), the number of
/// examples and of answers that could not be parsed (counted as 0).
/// </summary>
public sealed record ScoreMetrics(double Accuracy, double Precision, double Recall, double F1, double? Auroc, int N, int Unparsed)
{
    /// <summary>Metric name → value, as stored in <c>explanation_scores</c>.</summary>
    public IEnumerable<(string Metric, double Value)> Values()
    {
        yield return ("accuracy", Accuracy);
        yield return ("precision", Precision);
        yield return ("recall", Recall);
        yield return ("f1", F1);
        if (Auroc is double a) yield return ("auroc", a);
        yield return ("n", N);
        yield return ("unparsed", Unparsed);
    }

    public static ScoreMetrics Compute(IReadOnlyList<bool> labels, IReadOnlyList<bool> predictions, IReadOnlyList<double>? probabilities, int unparsed)
    {
        int tp = 0, fp = 0, fn = 0, tn = 0;
        for (int i = 0; i < labels.Count; i++)
        {
            if (labels[i] && predictions[i]) tp++;
            else if (!labels[i] && predictions[i]) fp++;
            else if (labels[i]) fn++;
            else tn++;
        }
        int n = labels.Count;
        double precision = tp + fp == 0 ? 0 : (double)tp / (tp + fp), recall = tp + fn == 0 ? 0 : (double)tp / (tp + fn);
        double f1 = precision + recall == 0 ? 0 : 2 * precision * recall / (precision + recall);
        return new ScoreMetrics(n == 0 ? 0 : (double)(tp + tn) / n, precision, recall, f1, probabilities is null ? null : AreaUnderRoc(labels, probabilities), n, unparsed);
    }

    /// <summary>Area under the ROC curve: P(score of a positive &gt; score of a negative), ties counted half; null without both classes.</summary>
    public static double? AreaUnderRoc(IReadOnlyList<bool> labels, IReadOnlyList<double> scores)
    {
        int positives = labels.Count(l => l), negatives = labels.Count - positives;
        if (positives == 0 || negatives == 0) return null;
        // Mann–Whitney U from average ranks (ties share their mean rank).
        var order = Enumerable.Range(0, scores.Count).OrderBy(i => scores[i]).ToArray();
        double rankSum = 0;
        for (int i = 0; i < order.Length;)
        {
            int j = i;
            while (j + 1 < order.Length && scores[order[j + 1]] == scores[order[i]]) j++;
            double rank = (i + j) / 2.0 + 1;
            for (int k = i; k <= j; k++) if (labels[order[k]]) rankSum += rank;
            i = j + 1;
        }
        return (rankSum - positives * (positives + 1) / 2.0) / ((double)positives * negatives);
    }
}
