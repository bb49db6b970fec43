using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Circuits.Edges;

/// <summary>
/// A metric with a value per example <c>m_b</c>. As an <see cref="IMetric"/> its value is the batch sum
/// <c>Σ_b m_b</c> (so one backward pass gives every example's own gradient); exact patching reads
/// <see cref="PerExample"/>.
/// </summary>
public interface IExampleMetric : IMetric
{
    /// <summary><c>m_b</c> for every row of the logits <c>[batch, pos, d_vocab_out]</c>.</summary>
    double[] PerExample(Tensor logits);
}

/// <summary>One logit difference: <c>logits[position, answer] − logits[position, wrong]</c>.</summary>
/// <param name="Position">The position (negative counts from the end).</param>
/// <param name="Answer">The token whose logit counts positively.</param>
/// <param name="Wrong">The token whose logit counts negatively.</param>
public readonly record struct LogitDiffTerm(int Position, int Answer, int Wrong);

/// <summary>
/// <c>m_b = mean over the example's terms of (logits[b, p, answer] − logits[b, p, wrong])</c>:
/// one term for IOI-style tasks at the last position, one per position for induction.
/// </summary>
public sealed class MeanLogitDiff : IExampleMetric
{
    readonly LogitDiffTerm[][] _terms;

    /// <param name="terms">Per example, its (position, answer, wrong) terms; every example needs at least one.</param>
    /// <exception cref="ArgumentException">An example has no terms.</exception>
    public MeanLogitDiff(IReadOnlyList<LogitDiffTerm[]> terms)
    {
        if (terms.Count == 0 || terms.Any(t => t.Length == 0)) throw new ArgumentException("every example needs at least one logit-difference term", nameof(terms));
        _terms = [.. terms];
    }

    public string Name => $"mean_logit_diff[{_terms.Length} examples]";

    public double[] PerExample(Tensor logits)
    {
        var (B, T, V) = Check(logits);
        var span = logits.Span;
        var values = new double[B];
        for (int b = 0; b < B; b++)
        {
            double sum = 0;
            foreach (var (p, a, w) in _terms[b])
            {
                int row = (b * T + Resolve(p, T)) * V;
                sum += (double)span[row + a] - span[row + w];
            }
            values[b] = sum / _terms[b].Length;
        }
        return values;
    }

    public double Value(Tensor logits) => PerExample(logits).Sum();

    public Tensor Gradient(Tensor logits)
    {
        var (B, T, V) = Check(logits);
        var grad = Tensor.Zeros(B, T, V);
        var g = grad.Span;
        for (int b = 0; b < B; b++)
        {
            float share = 1f / _terms[b].Length;
            foreach (var (p, a, w) in _terms[b])
            {
                int row = (b * T + Resolve(p, T)) * V;
                g[row + a] += share;
                g[row + w] -= share;
            }
        }
        return grad;
    }

    (int B, int T, int V) Check(Tensor logits)
    {
        if (logits.Rank != 3) throw new ArgumentException($"logits should be [batch, pos, d_vocab], got {logits.ShapeString}");
        int B = logits.Dim(0), T = logits.Dim(1), V = logits.Dim(2);
        if (B != _terms.Length) throw new ArgumentException($"the metric has terms for {_terms.Length} examples but the batch has {B}");
        foreach (var t in _terms.SelectMany(x => x))
        {
            Resolve(t.Position, T);
            if ((uint)t.Answer >= (uint)V || (uint)t.Wrong >= (uint)V)
                throw new ArgumentOutOfRangeException(nameof(logits), $"token {t.Answer} or {t.Wrong} is outside the output vocabulary (d_vocab_out = {V})");
        }
        return (B, T, V);
    }

    static int Resolve(int position, int length)
    {
        int p = position < 0 ? length + position : position;
        if ((uint)p >= (uint)length) throw new ArgumentOutOfRangeException(nameof(position), $"position {position} is outside a sequence of {length}");
        return p;
    }
}
