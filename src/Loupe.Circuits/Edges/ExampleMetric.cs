using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

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

    /// <summary>
    /// <c>m_b</c> of every copy of the batch in <paramref name="logits"/> (<c>[copies·batch, pos, d_vocab_out]</c>, on
    /// <paramref name="backend"/>'s device), written into <paramref name="values"/> from <paramref name="offset"/> on
    /// (copy-major), with nothing read back. The default reads the logits on the host (free on the CPU) and sends the values in.
    /// </summary>
    /// <param name="logits">The logits of <paramref name="copies"/> copies of the batch, one after another.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    /// <param name="copies">How many copies of the batch the logits hold.</param>
    /// <param name="values">Receives <c>copies·batch</c> values.</param>
    /// <param name="offset">Where in <paramref name="values"/> the first goes.</param>
    void PerExampleInto(Tensor logits, IComputeBackend backend, int copies, Tensor values, long offset)
    {
        var host = logits.ToCpu();
        int rows = host.Dim(0) / copies, T = host.Dim(1), V = host.Dim(2);
        var all = new float[rows * copies];
        for (int c = 0; c < copies; c++)
        {
            var own = PerExample(Tensor.FromArray(host.Span.Slice(c * rows * T * V, rows * T * V).ToArray(), rows, T, V));
            for (int b = 0; b < rows; b++) all[c * rows + b] = (float)own[b];
        }
        backend.CopyRows(backend.ToDevice(Tensor.FromArray(all, all.Length)), 0, all.Length, values, offset, all.Length, 1, all.Length);
    }

    /// <summary>d Σ_b m_b / d logits on <paramref name="backend"/>'s device. The default computes it on the host and sends it in.</summary>
    /// <param name="logits">The logits <c>[batch, pos, d_vocab_out]</c>, on the backend's device.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    Tensor GradientOn(Tensor logits, IComputeBackend backend) => backend.ToDevice(Gradient(logits.ToCpu()));

    /// <summary>Whether the metric's gradient is non-zero somewhere for logits of this shape (checked without running the model).</summary>
    /// <param name="batch">Examples.</param>
    /// <param name="length">Positions per example.</param>
    /// <param name="vocab">d_vocab_out.</param>
    bool DependsOnLogits(int batch, int length, int vocab) => Gradient(Tensor.Zeros(batch, length, vocab)).Span.IndexOfAnyExcept(0f) >= 0;
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
    // The gradient on a device (it does not depend on the logits): built once per backend and shape.
    (IComputeBackend Backend, int T, int V, Tensor Weights)? _onDevice;

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

    /// <summary>Every position a term reads (the backward then unembeds only those rows).</summary>
    public int[]? PositionsRead(int length) => [.. _terms.SelectMany(t => t).Select(t => Resolve(t.Position, length)).Distinct().Order()];

    /// <summary>
    /// <c>m_b = logits[b]·w[b]</c> with w the gradient (the metric is linear): one batched matrix–vector product,
    /// nothing read back (in fp32; <see cref="PerExample"/> on the host subtracts in double).
    /// </summary>
    public void PerExampleInto(Tensor logits, IComputeBackend backend, int copies, Tensor values, long offset)
    {
        int T = logits.Dim(1), V = logits.Dim(2), B = _terms.Length;
        if (logits.Rank != 3 || logits.Dim(0) != copies * B)
            throw new ArgumentException($"the metric has terms for {B} examples × {copies} copies but the logits are {logits.ShapeString}");
        var w = Weights(backend, T, V);
        long tv = (long)T * V;
        // values[offset + c·B + b] = logits[c·B + b, :]·w[b, :] for every copy c: per example b, [copies, T·V]·[T·V, 1].
        backend.GemmBatched(false, true, copies, 1, checked((int)tv), 1f, logits, 0, checked((int)(B * tv)), tv, w, 0, checked((int)tv), tv,
            0f, values, offset, B, 1, B);
    }

    public Tensor GradientOn(Tensor logits, IComputeBackend backend)
    {
        Check(logits);
        return backend.Device.IsCpu ? Gradient(logits) : Weights(backend, logits.Dim(1), logits.Dim(2));
    }

    public bool DependsOnLogits(int batch, int length, int vocab) =>
        _terms.Any(example => example.GroupBy(t => (Resolve(t.Position, length), t.Answer, t.Wrong)).Any(g => g.Key.Answer != g.Key.Wrong));

    /// <summary>The gradient on the device: zeros, then each (row, token) weight placed by a one-element row copy from one small table (sent in with the answer ids).</summary>
    Tensor Weights(IComputeBackend backend, int T, int V)
    {
        if (_onDevice is { } cached && ReferenceEquals(cached.Backend, backend) && cached.T == T && cached.V == V) return cached.Weights;
        int B = _terms.Length;
        var entries = new Dictionary<long, float>();
        for (int b = 0; b < B; b++)
        {
            float share = 1f / _terms[b].Length;
            foreach (var (p, a, w) in _terms[b])
            {
                if ((uint)a >= (uint)V || (uint)w >= (uint)V)
                    throw new ArgumentOutOfRangeException(nameof(V), $"token {a} or {w} is outside the output vocabulary (d_vocab_out = {V})");
                long row = ((long)b * T + Resolve(p, T)) * V;
                entries[row + a] = entries.GetValueOrDefault(row + a) + share;
                entries[row + w] = entries.GetValueOrDefault(row + w) - share;
            }
        }
        var at = entries.Keys.ToArray();
        var table = backend.ToDevice(Tensor.FromArray([.. at.Select(k => entries[k])], at.Length), TransferKind.Inputs);
        var weights = backend.Zeros(B, T, V);
        for (int i = 0; i < at.Length; i++) backend.CopyRows(table, i, 1, weights, at[i], 1, 1, 1);
        _onDevice = (backend, T, V, weights);
        return weights;
    }

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
