using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Metrics;

/// <summary>
/// A scalar function of the logits <c>[batch, pos, d_vocab_out]</c>, with its gradient — where
/// backward passes start. Metrics sum over the batch, so each row's gradient is its own.
/// </summary>
public interface IMetric
{
    /// <summary>A short description, e.g. <c>logit_diff(17,42)@-1</c>.</summary>
    string Name { get; }

    /// <summary>The metric's value.</summary>
    double Value(Tensor logits);

    /// <summary>d metric / d logits, same shape as the logits.</summary>
    Tensor Gradient(Tensor logits);

    /// <summary>
    /// The positions (within every sequence of <paramref name="length"/>) whose logits the metric reads, or null
    /// when it may read any. The gradient must be zero at every other position: a backward pass then takes the
    /// unembedding's backward only at these rows (one sequence position costs 1/length of the full product).
    /// </summary>
    int[]? PositionsRead(int length) => null;
}

/// <summary>Helpers shared by metrics: resolving positions, checking token ids.</summary>
static class MetricSupport
{
    public static (int B, int T, int V) Dims(Tensor logits)
    {
        if (logits.Rank != 3) throw new ArgumentException($"logits should be [batch, pos, d_vocab], got {logits.ShapeString}");
        return (logits.Dim(0), logits.Dim(1), logits.Dim(2));
    }

    /// <summary>A position counted from the end when negative (−1 = last).</summary>
    public static int Resolve(int position, int length, string what)
    {
        int p = position < 0 ? length + position : position;
        if ((uint)p >= (uint)length) throw new ArgumentOutOfRangeException(what, $"position {position} is outside a sequence of {length}");
        return p;
    }

    public static void CheckToken(int token, int vocab, string what)
    {
        if ((uint)token >= (uint)vocab) throw new ArgumentOutOfRangeException(what, $"{what} token id {token} is outside the output vocabulary (d_vocab_out = {vocab})");
    }

    public static double[] LogSoftmax(ReadOnlySpan<float> row) => Logits.LogSoftmax(row);

    /// <summary><c>value[0] = scale · Σ x[0..count)</c> on the device; nothing is read back.</summary>
    public static void SumInto(IComputeBackend backend, Tensor x, int count, double scale, Tensor value)
    {
        backend.SumMiddleAxis(x, 1, count, 1, value);
        if (scale != 1) backend.Scale(value, (float)scale, value);
    }

    /// <summary>
    /// <c>value[0] = scale · Σ_r loss[r]</c> for the cross-entropy of rows <c>[rows, n]</c> of <paramref name="x"/> with
    /// their targets (−1: ignored), on the device, without a gradient; nothing is read back.
    /// </summary>
    public static void CrossEntropyInto(IComputeBackend backend, Tensor x, int rows, int n, int[] targets, double scale, Tensor value)
    {
        var loss = backend.Empty(rows);
        backend.CrossEntropyRows(x, rows, n, targets, loss, null, 1f);
        SumInto(backend, loss, rows, scale, value);
    }

    /// <summary>
    /// Cross-entropy of every row of the logits with a target (−1: ignored) on the device: the value is
    /// <paramref name="valueScale"/>·Σ loss (one number back) and the gradient d(value)/d logits.
    /// </summary>
    public static (double Value, Tensor Gradient) CrossEntropyOnDevice(Tensor logits, IComputeBackend backend, int[] targets, float weight, double valueScale)
    {
        var (B, T, V) = Dims(logits);
        var loss = backend.Empty(B * T);
        var grad = backend.Empty(B, T, V);
        backend.CrossEntropyRows(logits, B * T, V, targets, loss, grad, weight);
        return (valueScale * backend.Sum(loss), grad);
    }
}

/// <summary>Functions of a row of logits that metrics and analyses share.</summary>
public static class Logits
{
    /// <summary>log-softmax of one row of logits, in double (max-subtracted, so large logits do not overflow).</summary>
    public static double[] LogSoftmax(ReadOnlySpan<float> row)
    {
        double max = double.NegativeInfinity;
        foreach (var v in row) max = Math.Max(max, v);
        double sum = 0;
        foreach (var v in row) sum += Math.Exp(v - max);
        double lse = max + Math.Log(sum);
        var result = new double[row.Length];
        for (int i = 0; i < row.Length; i++) result[i] = row[i] - lse;
        return result;
    }
}

/// <summary>
/// <c>Σ_b (logits[b, pos, answer_b] − logits[b, pos, wrong_b])</c>: the standard patching metric
/// (e.g. IOI's correct vs. incorrect name). One answer/wrong pair for every row, or one per row.
/// </summary>
public sealed class LogitDiff : IDeviceMetric
{
    readonly int[] _answers, _wrongs;
    readonly int _position;

    public LogitDiff(int answer, int wrong, int position = -1) : this([answer], [wrong], position) { }

    public LogitDiff(int[] answers, int[] wrongs, int position = -1)
    {
        if (answers.Length == 0 || answers.Length != wrongs.Length)
            throw new ArgumentException($"logit difference needs as many wrong tokens as answers (got {answers.Length} and {wrongs.Length})");
        _answers = answers;
        _wrongs = wrongs;
        _position = position;
    }

    public string Name => $"logit_diff({string.Join("|", _answers)},{string.Join("|", _wrongs)})@{_position}";

    public int[]? PositionsRead(int length) => [MetricSupport.Resolve(_position, length, "position")];

    (int Answer, int Wrong) Pair(int b, int batch)
    {
        if (_answers.Length != 1 && _answers.Length != batch)
            throw new ArgumentException($"{_answers.Length} answer tokens for a batch of {batch}; give one, or one per row");
        return _answers.Length == 1 ? (_answers[0], _wrongs[0]) : (_answers[b], _wrongs[b]);
    }

    public double Value(Tensor logits)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        int p = MetricSupport.Resolve(_position, T, "position");
        double sum = 0;
        for (int b = 0; b < B; b++)
        {
            var (a, w) = Pair(b, B);
            MetricSupport.CheckToken(a, V, "answer");
            MetricSupport.CheckToken(w, V, "wrong");
            var row = logits.Span.Slice((b * T + p) * V, V);
            sum += row[a] - row[w];
        }
        return sum;
    }

    public Tensor Gradient(Tensor logits)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        int p = MetricSupport.Resolve(_position, T, "position");
        var grad = Tensor.Zeros(B, T, V);
        for (int b = 0; b < B; b++)
        {
            var (a, w) = Pair(b, B);
            grad.Span[(b * T + p) * V + a] += 1f;
            grad.Span[(b * T + p) * V + w] -= 1f;
        }
        return grad;
    }

    /// <summary>
    /// On a device: the gradient is built there (±1 placed by row copies, with the signs going in like
    /// token ids), and the value is <c>Σ logits ⊙ gradient</c> — one number comes back.
    /// </summary>
    public (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        int p = MetricSupport.Resolve(_position, T, "position");
        var signs = new float[2 * B];
        for (int b = 0; b < B; b++) { signs[2 * b] = 1f; signs[2 * b + 1] = -1f; }
        var signsOnDevice = backend.ToDevice(Tensor.FromArray(signs, 2 * B), TransferKind.Inputs);
        var grad = backend.Zeros(B, T, V);
        for (int b = 0; b < B; b++)
        {
            var (a, w) = Pair(b, B);
            MetricSupport.CheckToken(a, V, "answer");
            MetricSupport.CheckToken(w, V, "wrong");
            backend.CopyRows(signsOnDevice, 2 * b, 1, grad, (long)(b * T + p) * V + a, 1, 1, 1, accumulate: true);
            backend.CopyRows(signsOnDevice, 2 * b + 1, 1, grad, (long)(b * T + p) * V + w, 1, 1, 1, accumulate: true);
        }
        var product = backend.Empty(B, T, V);
        backend.Multiply(logits, grad, product);
        return (backend.Sum(product), grad);
    }

    /// <summary>
    /// On a device, the value only: the answers' logits and the wrong ones' are gathered by row copies (one strided copy
    /// each when every row shares its pair), the wrong ones negated, and all summed into <paramref name="value"/>.
    /// </summary>
    /// <param name="logits">The logits <c>[batch, pos, d_vocab_out]</c>, on the backend's device.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    /// <param name="value">A one-element tensor on the same device that receives the value.</param>
    public void WriteValue(Tensor logits, IComputeBackend backend, Tensor value)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        int p = MetricSupport.Resolve(_position, T, "position");
        var picked = backend.Empty(2 * B);
        for (int b = 0; b < B; b++)
        {
            var (a, w) = Pair(b, B);
            MetricSupport.CheckToken(a, V, "answer");
            MetricSupport.CheckToken(w, V, "wrong");
        }
        if (_answers.Length == 1)
        {
            backend.CopyRows(logits, (long)p * V + _answers[0], T * V, picked, 0, 1, B, 1);
            backend.CopyRows(logits, (long)p * V + _wrongs[0], T * V, picked, B, 1, B, 1);
        }
        else
            for (int b = 0; b < B; b++)
            {
                backend.CopyRows(logits, (long)(b * T + p) * V + _answers[b], 1, picked, b, 1, 1, 1);
                backend.CopyRows(logits, (long)(b * T + p) * V + _wrongs[b], 1, picked, B + b, 1, 1, 1);
            }
        var wrongs = new Tensor(picked.Storage.Slice(B, B), B);
        backend.Scale(wrongs, -1f, wrongs);
        MetricSupport.SumInto(backend, picked, 2 * B, 1, value);
    }
}

/// <summary><c>Σ_b log softmax(logits[b, pos])[token]</c>: the log-probability of a token.</summary>
public sealed class LogProb(int token, int position = -1) : IDeviceMetric
{
    public string Name => $"log_prob({token})@{position}";

    public int[]? PositionsRead(int length) => [MetricSupport.Resolve(position, length, "position")];

    public double Value(Tensor logits)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        MetricSupport.CheckToken(token, V, "target");
        int p = MetricSupport.Resolve(position, T, "position");
        double sum = 0;
        for (int b = 0; b < B; b++) sum += MetricSupport.LogSoftmax(logits.Span.Slice((b * T + p) * V, V))[token];
        return sum;
    }

    public Tensor Gradient(Tensor logits)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        int p = MetricSupport.Resolve(position, T, "position");
        var grad = Tensor.Zeros(B, T, V);
        for (int b = 0; b < B; b++)
        {
            // d log p_t / d z_i = [i = t] − p_i
            var logp = MetricSupport.LogSoftmax(logits.Span.Slice((b * T + p) * V, V));
            var g = grad.Span.Slice((b * T + p) * V, V);
            for (int i = 0; i < V; i++) g[i] = (float)((i == token ? 1 : 0) - Math.Exp(logp[i]));
        }
        return grad;
    }

    /// <summary>On a device: cross-entropy rows at the scored position with weight −1 give d log p = onehot − softmax; one number comes back.</summary>
    public (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        MetricSupport.CheckToken(token, V, "target");
        int p = MetricSupport.Resolve(position, T, "position");
        var targets = new int[B * T];
        Array.Fill(targets, -1);
        for (int b = 0; b < B; b++) targets[b * T + p] = token;
        return MetricSupport.CrossEntropyOnDevice(logits, backend, targets, weight: -1f, valueScale: -1.0);
    }

    /// <summary>On a device, the value only: the scored position's rows gathered by one strided copy, their cross-entropy summed and negated.</summary>
    /// <param name="logits">The logits <c>[batch, pos, d_vocab_out]</c>, on the backend's device.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    /// <param name="value">A one-element tensor on the same device that receives the value.</param>
    public void WriteValue(Tensor logits, IComputeBackend backend, Tensor value)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        MetricSupport.CheckToken(token, V, "target");
        int p = MetricSupport.Resolve(position, T, "position");
        var rows = backend.Empty(B, V);
        backend.CopyRows(logits, (long)p * V, T * V, rows, 0, V, B, V);
        var targets = new int[B];
        Array.Fill(targets, token);
        MetricSupport.CrossEntropyInto(backend, rows, B, V, targets, -1.0, value);
    }
}

/// <summary>
/// Mean next-token cross-entropy over the predictions at positions <c>[start, end)</c> (position t
/// predicts token t+1), averaged over every row's predictions (padding excluded).
/// </summary>
public sealed class SpanLoss : IDeviceMetric
{
    readonly TokenBatch _tokens;
    readonly int _start, _end;

    /// <param name="tokens">The tokens the logits were computed from (targets are the next tokens).</param>
    /// <param name="start">First predicting position (inclusive).</param>
    /// <param name="end">Last predicting position (exclusive); at most length − 1. Negative counts from the end.</param>
    public SpanLoss(TokenBatch tokens, int start = 0, int end = -1)
    {
        _tokens = tokens;
        _start = start;
        _end = end < 0 ? tokens.Length + end : end;
        if (_start < 0 || _end > tokens.Length - 1 || _start >= _end)
            throw new ArgumentException($"loss span [{start}, {end}) is empty or outside the {tokens.Length - 1} predictions of a sequence of {tokens.Length}");
    }

    public string Name => $"loss[{_start}:{_end}]";

    public int[]? PositionsRead(int length) => length == _tokens.Length ? Enumerable.Range(_start, _end - _start).ToArray() : null;

    IEnumerable<(int B, int P, int Target)> Predictions()
    {
        for (int b = 0; b < _tokens.Batch; b++)
            for (int p = _start; p < _end; p++)
            {
                int i = b * _tokens.Length + p;
                if (_tokens.Valid is { } v && (!v[i] || !v[i + 1])) continue;
                yield return (b, p, _tokens.Ids[i + 1]);
            }
    }

    public double Value(Tensor logits)
    {
        var (_, T, V) = MetricSupport.Dims(logits);
        double sum = 0;
        int n = 0;
        foreach (var (b, p, target) in Predictions())
        {
            MetricSupport.CheckToken(target, V, "target");
            sum -= MetricSupport.LogSoftmax(logits.Span.Slice((b * T + p) * V, V))[target];
            n++;
        }
        return n == 0 ? 0 : sum / n;
    }

    public Tensor Gradient(Tensor logits)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        var grad = Tensor.Zeros(B, T, V);
        var predictions = Predictions().ToList();
        foreach (var (b, p, target) in predictions)
        {
            // d (−log p_t)/n / d z_i = (p_i − [i = t]) / n
            var logp = MetricSupport.LogSoftmax(logits.Span.Slice((b * T + p) * V, V));
            var g = grad.Span.Slice((b * T + p) * V, V);
            for (int i = 0; i < V; i++) g[i] = (float)((Math.Exp(logp[i]) - (i == target ? 1 : 0)) / predictions.Count);
        }
        return grad;
    }

    /// <summary>Per row of <c>[batch·pos]</c>: the next token where that row predicts one, −1 elsewhere; and how many rows predict.</summary>
    (int[] Targets, int Count) PredictionTargets(int B, int T, int V)
    {
        var targets = new int[B * T];
        Array.Fill(targets, -1);
        int n = 0;
        foreach (var (b, p, target) in Predictions())
        {
            MetricSupport.CheckToken(target, V, "target");
            targets[b * T + p] = target;
            n++;
        }
        return (targets, n);
    }

    /// <summary>On a device: cross-entropy over every predicting row (others ignored), weighted 1/n; one number comes back.</summary>
    public (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        var (targets, n) = PredictionTargets(B, T, V);
        if (n == 0) return (0, backend.Zeros(B, T, V));
        return MetricSupport.CrossEntropyOnDevice(logits, backend, targets, weight: 1f / n, valueScale: 1.0 / n);
    }

    /// <summary>On a device, the value only: the cross-entropy of every predicting row, summed and divided by their count.</summary>
    /// <param name="logits">The logits <c>[batch, pos, d_vocab_out]</c>, on the backend's device.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    /// <param name="value">A one-element tensor on the same device that receives the value.</param>
    public void WriteValue(Tensor logits, IComputeBackend backend, Tensor value)
    {
        var (B, T, V) = MetricSupport.Dims(logits);
        var (targets, n) = PredictionTargets(B, T, V);
        if (n == 0) backend.Fill(value, 0f);
        else MetricSupport.CrossEntropyInto(backend, logits, B * T, V, targets, 1.0 / n, value);
    }
}

/// <summary>The normalized patching metric <c>(m − m_corrupt) / (m_clean − m_corrupt)</c>: 1 = clean behaviour restored, 0 = corrupt.</summary>
public static class PatchingMetric
{
    /// <exception cref="ArgumentException">The clean and corrupt values are equal, so nothing can be normalized.</exception>
    public static double Normalize(double value, double clean, double corrupt)
    {
        double span = clean - corrupt;
        if (Math.Abs(span) < 1e-12) throw new InputError($"clean and corrupt metrics are equal ({clean}); the normalized patching metric is undefined");
        return (value - corrupt) / span;
    }
}
