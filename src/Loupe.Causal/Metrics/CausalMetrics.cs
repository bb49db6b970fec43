using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Causal.Metrics;

/// <summary>
/// <c>Σ_b mean_{p ∈ [start, end)} log softmax(logits[b, p])[targets[b, p + 1]]</c>: how well the
/// model predicts FIXED token sequences (e.g. the clean ones) over a span, whatever tokens it was
/// actually run on, so clean and corrupt runs are scored against the same targets. Row b of the
/// logits is scored against row b of the targets; the value sums over rows like the other metrics.
/// </summary>
public sealed class TargetLogProb : IDeviceMetric
{
    readonly TokenBatch _targets;
    readonly int _start, _end;

    /// <param name="targets">The sequences whose next tokens are predicted (position p predicts token p + 1 of its row).</param>
    /// <param name="start">First predicting position (inclusive).</param>
    /// <param name="end">Last predicting position (exclusive), at most length − 1.</param>
    /// <exception cref="InputError">The span is empty or outside the sequence.</exception>
    public TargetLogProb(TokenBatch targets, int start, int end)
    {
        if (start < 0 || end > targets.Length - 1 || start >= end)
            throw new InputError($"span [{start}, {end}) is empty or outside the {targets.Length - 1} predictions of a sequence of {targets.Length}");
        _targets = targets;
        _start = start;
        _end = end;
    }

    /// <summary>One target sequence (a batch of one row).</summary>
    public TargetLogProb(int[] targets, int start, int end) : this(TokenBatch.Single(targets), start, end) { }

    public string Name => $"target_log_prob[{_start}:{_end}]";

    public int[]? PositionsRead(int length) => _end <= length ? Enumerable.Range(_start, _end - _start).ToArray() : null;

    public double Value(Tensor logits)
    {
        var (B, T, V) = Dims(logits);
        double total = 0;
        for (int b = 0; b < B; b++)
        {
            double sum = 0;
            for (int p = _start; p < _end; p++)
            {
                int target = Target(b, p);
                if ((uint)target >= (uint)V) throw new InputError($"target token {target} is outside d_vocab_out = {V}");
                sum += Logits.LogSoftmax(logits.Span.Slice((b * T + p) * V, V))[target];
            }
            total += sum / (_end - _start);
        }
        return total;
    }

    public Tensor Gradient(Tensor logits)
    {
        var (B, T, V) = Dims(logits);
        var grad = Tensor.Zeros(B, T, V);
        int n = _end - _start;
        for (int b = 0; b < B; b++)
            for (int p = _start; p < _end; p++)
            {
                // d log p_t / d z_i = [i = t] − p_i, averaged over the span.
                var logp = Logits.LogSoftmax(logits.Span.Slice((b * T + p) * V, V));
                var g = grad.Span.Slice((b * T + p) * V, V);
                int target = Target(b, p);
                for (int i = 0; i < V; i++) g[i] = (float)(((i == target ? 1 : 0) - Math.Exp(logp[i])) / n);
            }
        return grad;
    }

    /// <summary>
    /// On a device: cross-entropy rows over the span (other rows ignored) with weight −1/n give
    /// d(mean log p)/d logits = (onehot − softmax)/n; one number comes back.
    /// </summary>
    public (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend)
    {
        var (B, T, V) = Dims(logits);
        int n = _end - _start;
        var targets = SpanTargets(B, T, V);
        var loss = backend.Empty(B * T);
        var grad = backend.Empty(B, T, V);
        backend.CrossEntropyRows(logits, B * T, V, targets, loss, grad, -1f / n);
        return (-backend.Sum(loss) / n, grad);
    }

    /// <summary>Per row of <c>[batch·pos]</c>: the target token inside the span, −1 elsewhere (the device ops skip those rows).</summary>
    /// <exception cref="InputError">A target outside the output vocabulary.</exception>
    int[] SpanTargets(int B, int T, int V)
    {
        var targets = new int[B * T];
        Array.Fill(targets, -1);
        for (int b = 0; b < B; b++)
            for (int p = _start; p < _end; p++)
            {
                int target = Target(b, p);
                if ((uint)target >= (uint)V) throw new InputError($"target token {target} is outside d_vocab_out = {V}");
                targets[b * T + p] = target;
            }
        return targets;
    }

    /// <summary>On a device, the value only: cross-entropy over the span's rows (no gradient), summed into <paramref name="value"/> as −Σ/n.</summary>
    /// <param name="logits">The logits <c>[batch, pos, d_vocab_out]</c>, on the backend's device.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    /// <param name="value">A one-element tensor on the same device that receives the value.</param>
    public void WriteValue(Tensor logits, IComputeBackend backend, Tensor value)
    {
        var (B, T, V) = Dims(logits);
        int n = _end - _start;
        var targets = SpanTargets(B, T, V);
        var loss = backend.Empty(B * T);
        backend.CrossEntropyRows(logits, B * T, V, targets, loss, null, 1f);
        backend.SumMiddleAxis(loss, 1, B * T, 1, value);
        backend.Scale(value, -1f / n, value);
    }

    int Target(int b, int p) => _targets.Ids[b * _targets.Length + p + 1];

    (int B, int T, int V) Dims(Tensor logits)
    {
        if (logits.Rank != 3) throw new ArgumentException($"logits should be [batch, pos, d_vocab], got {logits.ShapeString}", nameof(logits));
        if (logits.Dim(1) < _end) throw new ArgumentException($"logits cover {logits.Dim(1)} positions; the span needs {_end}", nameof(logits));
        if (logits.Dim(0) != _targets.Batch) throw new ArgumentException($"logits have {logits.Dim(0)} rows but there are {_targets.Batch} target rows", nameof(logits));
        return (logits.Dim(0), logits.Dim(1), logits.Dim(2));
    }

}

/// <summary>
/// The fraction of rows whose argmax over the first <c>vocabLimit</c> logits at
/// <c>position</c> is that row's answer (e.g. modular addition: <c>logits[:, −1, :113]</c>).
/// Unlike the other metrics it averages over rows, and it has no gradient.
/// </summary>
public sealed class ArgmaxAccuracy(int[] answers, int position = -1, int vocabLimit = int.MaxValue) : IMetric
{
    public string Name => $"accuracy@{position}";

    public int[]? PositionsRead(int length) => position < 0 ? (length + position >= 0 ? [length + position] : null) : (position < length ? [position] : null);

    public double Value(Tensor logits)
    {
        if (logits.Rank != 3) throw new ArgumentException($"logits should be [batch, pos, d_vocab], got {logits.ShapeString}", nameof(logits));
        int B = logits.Dim(0), T = logits.Dim(1), V = Math.Min(logits.Dim(2), vocabLimit);
        if (answers.Length != B) throw new InputError($"{answers.Length} answers for a batch of {B} rows");
        int p = position < 0 ? T + position : position;
        if ((uint)p >= (uint)T) throw new InputError($"position {position} is outside a sequence of {T}");
        int correct = 0;
        for (int b = 0; b < B; b++)
        {
            var row = logits.Span.Slice((b * T + p) * logits.Dim(2), V);
            int best = 0;
            for (int i = 1; i < V; i++) if (row[i] > row[best]) best = i;
            if (best == answers[b]) correct++;
        }
        return (double)correct / B;
    }

    /// <exception cref="NotSupportedException">Always: accuracy is piecewise constant.</exception>
    public Tensor Gradient(Tensor logits) => throw new NotSupportedException("accuracy is piecewise constant and has no useful gradient; use a log-probability or logit-difference metric");
}

/// <summary><c>mean_b log softmax(logits[b, position, :vocabLimit])[answers[b]]</c>: the mean log-probability of each row's own answer.</summary>
public sealed class AnswerLogProb(int[] answers, int position = -1, int vocabLimit = int.MaxValue) : IDeviceMetric
{
    public string Name => $"answer_log_prob@{position}";

    public int[]? PositionsRead(int length) => position < 0 ? (length + position >= 0 ? [length + position] : null) : (position < length ? [position] : null);

    public double Value(Tensor logits)
    {
        if (logits.Rank != 3) throw new ArgumentException($"logits should be [batch, pos, d_vocab], got {logits.ShapeString}", nameof(logits));
        int B = logits.Dim(0), T = logits.Dim(1), V = Math.Min(logits.Dim(2), vocabLimit);
        if (answers.Length != B) throw new InputError($"{answers.Length} answers for a batch of {B} rows");
        int p = position < 0 ? T + position : position;
        double sum = 0;
        for (int b = 0; b < B; b++) sum += Logits.LogSoftmax(logits.Span.Slice((b * T + p) * logits.Dim(2), V))[answers[b]];
        return sum / B;
    }

    public Tensor Gradient(Tensor logits)
    {
        int B = logits.Dim(0), T = logits.Dim(1), Vfull = logits.Dim(2), V = Math.Min(Vfull, vocabLimit);
        int p = position < 0 ? T + position : position;
        var grad = Tensor.Zeros(B, T, Vfull);
        for (int b = 0; b < B; b++)
        {
            var logp = Logits.LogSoftmax(logits.Span.Slice((b * T + p) * Vfull, V));
            var g = grad.Span.Slice((b * T + p) * Vfull, V);
            for (int i = 0; i < V; i++) g[i] = (float)(((i == answers[b] ? 1 : 0) - Math.Exp(logp[i])) / B);
        }
        return grad;
    }

    /// <summary>The scored position's first <c>vocabLimit</c> logits of every row, gathered on the device by one strided copy.</summary>
    /// <exception cref="InputError">Answers that do not match the batch, a position outside the sequence, or an answer outside the scored logits.</exception>
    (Tensor Rows, int B, int T, int Vfull, int V, int Position) ScoredRows(Tensor logits, IComputeBackend backend)
    {
        if (logits.Rank != 3) throw new ArgumentException($"logits should be [batch, pos, d_vocab], got {logits.ShapeString}", nameof(logits));
        int B = logits.Dim(0), T = logits.Dim(1), Vfull = logits.Dim(2), V = Math.Min(Vfull, vocabLimit);
        if (answers.Length != B) throw new InputError($"{answers.Length} answers for a batch of {B} rows");
        int p = position < 0 ? T + position : position;
        if ((uint)p >= (uint)T) throw new InputError($"position {position} is outside a sequence of {T}");
        foreach (int a in answers)
            if ((uint)a >= (uint)V) throw new InputError($"answer token {a} is outside the {V} scored logits");
        var rows = backend.Empty(B, V);
        backend.CopyRows(logits, (long)p * Vfull, T * Vfull, rows, 0, V, B, V);
        return (rows, B, T, Vfull, V, p);
    }

    /// <summary>
    /// On a device: the scored position's first <c>vocabLimit</c> logits are gathered by one strided copy,
    /// cross-entropy with weight −1/B gives the gradient there, and it is copied back into place; one number comes back.
    /// </summary>
    public (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend)
    {
        var (rows, B, T, Vfull, V, p) = ScoredRows(logits, backend);
        var loss = backend.Empty(B);
        var dRows = backend.Empty(B, V);
        backend.CrossEntropyRows(rows, B, V, answers, loss, dRows, -1f / B);
        var grad = backend.Zeros(B, T, Vfull);
        backend.CopyRows(dRows, 0, V, grad, (long)p * Vfull, T * Vfull, B, V);
        return (-backend.Sum(loss) / B, grad);
    }

    /// <summary>On a device, the value only: the scored rows gathered as in <see cref="Evaluate"/>, their cross-entropy summed into <paramref name="value"/> as −Σ/B.</summary>
    /// <param name="logits">The logits <c>[batch, pos, d_vocab_out]</c>, on the backend's device.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    /// <param name="value">A one-element tensor on the same device that receives the value.</param>
    public void WriteValue(Tensor logits, IComputeBackend backend, Tensor value)
    {
        var (rows, B, T, Vfull, V, p) = ScoredRows(logits, backend);
        var loss = backend.Empty(B);
        backend.CrossEntropyRows(rows, B, V, answers, loss, null, 1f);
        backend.SumMiddleAxis(loss, 1, B, 1, value);
        backend.Scale(value, -1f / B, value);
    }
}
