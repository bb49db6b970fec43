using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Probes.Classifiers;

// Shapes: z [n, d] standardized rows on the device; y [n] labels; W [K, d], b [K]; θ = [W row-major, b] [K·d + K];
//         logits [n, K]; dLogits [n, K]; ∂W [K, d]; ∂b [K].

/// <summary>
/// The logistic probe's objective on a backend: the same function as <see cref="LogisticProbe.LossAndGradient"/> (its
/// double-precision reference twin), computed as products on the device where the rows are. One evaluation:
/// 1. W and b (rounded to fp32) go to the device — K·d + K values;
/// 2. per block of rows: logits = z·Wᵀ + b (one GEMM); per row, loss = logsumexp − logit[y] and ∂loss/∂logits =
///    (softmax − onehot)/n (<see cref="IComputeBackend.CrossEntropyRows"/>; the labels travel with it); Σ loss (in double,
///    one scalar back); ∂W += dLogitsᵀ·z (one GEMM), ∂b += Σ_rows dLogits. A device takes all rows as one block;
/// 3. f = Σ loss / n;
/// 4. ∂W and ∂b come back (K·d + K values) and the penalty (λ/2)‖W‖² is added on the host in double.
/// L-BFGS itself stays on the host in double: its vectors are θ-sized (K·d + K), negligible next to the products.
/// </summary>
public sealed class LogisticObjective
{
    readonly ProbeRows _rows;
    readonly int[] _labels;
    readonly int _classes, _block;
    readonly double _l2;
    readonly Tensor _logits, _loss, _dLogits, _gradW, _gradB;
    readonly float[] _w, _b, _hostGradW, _hostGradB;

    /// <exception cref="ArgumentException">The labels do not match the rows, fewer than 2 classes, a label is out of range, or λ is negative or not finite.</exception>
    public LogisticObjective(ProbeRows rows, int[] labels, int classes, double l2)
    {
        LogisticProbe.CheckLabels(labels, rows.Count, classes);
        if (!(double.IsFinite(l2) && l2 >= 0)) throw new ArgumentException($"λ must be finite and ≥ 0 (got {l2})");
        (_rows, _labels, _classes, _l2) = (rows, labels, classes, l2);
        var be = rows.Backend;
        int n = rows.Count, d = rows.Width;
        _block = RowBlock(be, n, d);
        _logits = be.Empty(_block, classes);
        _loss = be.Empty(_block);
        _dLogits = be.Empty(_block, classes);
        _gradW = be.Empty(classes, d);
        _gradB = be.Empty(classes);
        _w = new float[classes * d];
        _b = new float[classes];
        _hostGradW = new float[classes * d];
        _hostGradB = new float[classes];
    }

    /// <summary>
    /// Rows per pass. On the CPU, blocks of ~4 MB of z: the gradient's product reads a block while the logits' product
    /// has just brought it into cache (one trip over z from memory per evaluation instead of two; 1.3–2.5× on the
    /// two products, <c>Loupe.Bench probes</c>). A device takes every row at once (one launch per step, one scalar back).
    /// </summary>
    static int RowBlock(IComputeBackend backend, int rows, int width) =>
        backend.Device.IsCpu ? Math.Min(rows, Math.Max((1 << 20) / width, 256)) : rows;

    /// <summary>θ's length: K·d + K.</summary>
    public int Parameters => _classes * _rows.Width + _classes;

    /// <summary>f(θ) = (1/n)·Σᵢ (logΣₖ exp zᵢₖ − zᵢ,yᵢ) + (λ/2)·‖W‖²; writes ∂f/∂θ into <paramref name="gradient"/>.</summary>
    /// <exception cref="ArgumentException">θ or the gradient is not <see cref="Parameters"/> long.</exception>
    public double Evaluate(ReadOnlySpan<double> theta, Span<double> gradient)
    {
        int K = _classes, d = _rows.Width, n = _rows.Count;
        if (theta.Length != Parameters || gradient.Length != Parameters)
            throw new ArgumentException($"θ and its gradient need {Parameters} entries (W [{K}, {d}] then b [{K}]); got {theta.Length} and {gradient.Length}");
        var be = _rows.Backend;
        for (int i = 0; i < _w.Length; i++) _w[i] = (float)theta[i];
        for (int k = 0; k < K; k++) _b[k] = (float)theta[K * d + k];
        var w = be.ToDevice(Tensor.FromArray(_w, K, d));
        var b = be.ToDevice(Tensor.FromArray(_b, K));

        double loss = 0;
        for (int start = 0; start < n; start += _block)
        {
            int m = Math.Min(_block, n - start);
            long at = (long)start * d;
            // logits = z·Wᵀ + b; loss and (softmax − onehot)/n per row; ∂W += dLogitsᵀ·z; ∂b += Σ_rows dLogits.
            be.Gemm(false, true, m, K, d, 1f, _rows.Z, at, d, w, 0, d, 0f, _logits, 0, K);
            be.AddRowVector(_logits, m, b);
            if (m < _block) be.Fill(_loss, 0f); // a short last block leaves the previous block's losses beyond m
            be.CrossEntropyRows(_logits, m, K, _labels.AsSpan(start, m), _loss, _dLogits, 1f / n);
            loss += be.Sum(_loss);
            be.Gemm(true, false, K, d, m, 1f, _dLogits, 0, K, _rows.Z, at, d, start == 0 ? 0f : 1f, _gradW, 0, d);
            be.SumMiddleAxis(_dLogits, 1, m, K, _gradB, accumulate: start > 0);
        }
        _gradW.CopyTo(_hostGradW);
        _gradB.CopyTo(_hostGradB);

        // The penalty (λ/2)·‖W‖² and its gradient λ·W, in double on the host.
        double penalty = 0;
        for (int i = 0; i < K * d; i++)
        {
            penalty += theta[i] * theta[i];
            gradient[i] = _hostGradW[i] + _l2 * theta[i];
        }
        for (int k = 0; k < K; k++) gradient[K * d + k] = _hostGradB[k];
        return loss / n + 0.5 * _l2 * penalty;
    }
}
