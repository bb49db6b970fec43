using System.Numerics.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Probes.Classifiers;

// Shapes: x [n, d] features, one row per example (standardized inside the probe); y [n] class in [0, K);
//         W [K, d], row k scores class k; b [K]; θ = [W row-major, b] [K·d + K]; z = W·x + b [K]; p = softmax(z) [K].

/// <summary>
/// A linear probe: multinomial logistic regression with an L2 penalty. Steps:
/// 1. standardize features with the training mean and standard deviation (<see cref="Standardizer"/>);
/// 2. minimise <c>f(W, b) = (1/n)·Σᵢ −log softmax(W·xᵢ + b)[yᵢ] + (λ/2)·‖W‖²</c> with L-BFGS from W = 0, b = 0
///    for at most a fixed number of iterations (the objective is convex; the run is deterministic); the objective's
///    products run on the backend holding the rows, in fp32 (<see cref="LogisticObjective"/>; its double-precision
///    reference twin is <see cref="LossAndGradient"/>);
/// 3. predict <c>argmax_k (W·x + b)_k</c> on standardized x (ties go to the lower class index).
/// </summary>
public sealed class LogisticProbe
{
    LogisticProbe(Standardizer standardizer, int classes, double[] weights, double[] bias, LbfgsResult fit)
    {
        Standardizer = standardizer;
        Classes = classes;
        Weights = weights;
        Bias = bias;
        Iterations = fit.Iterations;
        Loss = fit.Value;
        Converged = fit.Converged;
        Stop = fit.Stop;
    }

    public Standardizer Standardizer { get; }
    public int Classes { get; }
    public int Width => Standardizer.Width;
    /// <summary>W <c>[classes, width]</c> row-major, on standardized features.</summary>
    public double[] Weights { get; }
    /// <summary>b <c>[classes]</c>.</summary>
    public double[] Bias { get; }
    /// <summary>L-BFGS iterations used.</summary>
    public int Iterations { get; }
    /// <summary>The final training objective (mean cross-entropy plus penalty).</summary>
    public double Loss { get; }
    /// <summary>Whether L-BFGS stopped at a tolerance (the gradient's, or f no longer decreasing above fp32 rounding) within the budget.</summary>
    public bool Converged { get; }
    /// <summary>Why L-BFGS stopped (a line search that found no decrease usually means f reached its fp32 rounding).</summary>
    public LbfgsStop Stop { get; }

    /// <summary>L-BFGS stops when f falls by less than this relative amount: the objective is summed from fp32 products (SciPy's default).</summary>
    const double Fp32RelativeDecrease = 2.2e-9;

    /// <summary>Trains on rows <paramref name="x"/> <c>[n, width]</c> with labels <paramref name="y"/> <c>[n]</c>, on the CPU backend.</summary>
    /// <exception cref="ArgumentException">Sizes disagree, there are no rows, fewer than 2 classes, a label is out of range, or a feature is not finite.</exception>
    public static LogisticProbe Train(ReadOnlySpan<float> x, ReadOnlySpan<int> y, int width, int classes, LogisticOptions? options = null)
    {
        var standardizer = Standardizer.Fit(x, width);
        return Train(standardizer, ProbeRows.Upload(CpuBackend.Instance, standardizer, x), y.ToArray(), classes, options);
    }

    /// <summary>
    /// Trains on rows already standardized by <paramref name="standardizer"/> and placed on a backend: the objective's
    /// products run there (<see cref="LogisticObjective"/>), L-BFGS on the host.
    /// </summary>
    /// <exception cref="ArgumentException">The labels do not match the rows, fewer than 2 classes, or a label is out of range.</exception>
    /// <exception cref="InputError">λ is negative or not finite.</exception>
    public static LogisticProbe Train(Standardizer standardizer, ProbeRows rows, int[] y, int classes, LogisticOptions? options = null)
    {
        options ??= new LogisticOptions();
        int d = standardizer.Width;
        if (rows.Width != d) throw new ArgumentException($"the rows have width {rows.Width} but the standardizer {d}", nameof(rows));
        if (!(double.IsFinite(options.L2) && options.L2 >= 0)) throw InputError.Expected("logistic probe options", "L2", "a finite number ≥ 0", options.L2);
        var objective = new LogisticObjective(rows, y, classes, options.L2);
        var fit = Lbfgs.Minimize((theta, grad) => objective.Evaluate(theta, grad), new double[objective.Parameters],
            new LbfgsOptions(options.MaxIterations, 10, options.GradientTolerance, Fp32RelativeDecrease, LineSearchSteps: 20));
        return new LogisticProbe(standardizer, classes, fit.X[..(classes * d)], fit.X[(classes * d)..], fit);
    }

    /// <summary>
    /// The training objective and its gradient at θ = [W, b]:
    /// <c>f = (1/n)·Σᵢ (logΣₖ exp zᵢₖ − zᵢ,yᵢ) + (λ/2)·‖W‖²</c> with <c>zᵢ = W·xᵢ + b</c>.
    /// </summary>
    /// <param name="x">Features <c>[n, d]</c> (the caller standardizes).</param>
    /// <param name="y">Labels <c>[n]</c> in <c>[0, classes)</c>.</param>
    /// <param name="d">Feature width.</param>
    /// <param name="classes">K.</param>
    /// <param name="theta">Parameters <c>[K·d + K]</c>: W row-major, then b.</param>
    /// <param name="l2">λ.</param>
    /// <param name="gradient">Receives ∂f/∂θ <c>[K·d + K]</c>.</param>
    /// <returns>f.</returns>
    /// <exception cref="ArgumentException">Sizes disagree or a label is out of range.</exception>
    public static double LossAndGradient(ReadOnlySpan<double> x, ReadOnlySpan<int> y, int d, int classes, ReadOnlySpan<double> theta, double l2, Span<double> gradient)
    {
        CheckData(x, y, d, classes);
        int K = classes, n = y.Length;
        if (theta.Length != K * d + K || gradient.Length != theta.Length)
            throw new ArgumentException($"θ and its gradient need {K * d + K} entries (W [{K}, {d}] then b [{K}]); got {theta.Length} and {gradient.Length}");
        var W = theta[..(K * d)];               // [K, d]
        var b = theta[(K * d)..];               // [K]
        var gW = gradient[..(K * d)];           // [K, d]
        var gb = gradient[(K * d)..];           // [K]
        gradient.Clear();
        Span<double> z = K <= 256 ? stackalloc double[K] : new double[K]; // [K]
        double loss = 0;
        for (int i = 0; i < n; i++)
        {
            var xi = x.Slice(i * d, d);         // [d]
            // Forward: z = W·xᵢ + b; loss += logsumexp(z) − z[yᵢ].
            for (int k = 0; k < K; k++) z[k] = TensorPrimitives.Dot(xi, W.Slice(k * d, d)) + b[k];
            double max = TensorPrimitives.Max<double>(z), sum = 0;
            for (int k = 0; k < K; k++) sum += Math.Exp(z[k] - max);
            double logZ = max + Math.Log(sum);
            loss += logZ - z[y[i]];
            // Backward of (logsumexp(z) − z[yᵢ]): ∂/∂zₖ = pₖ − [k = yᵢ]; ∂/∂Wₖ = (pₖ − [k = yᵢ])·xᵢ, ∂/∂bₖ = pₖ − [k = yᵢ].
            for (int k = 0; k < K; k++)
            {
                double delta = Math.Exp(z[k] - logZ) - (k == y[i] ? 1 : 0);
                var gWk = gW.Slice(k * d, d);
                TensorPrimitives.MultiplyAdd(xi, delta, gWk, gWk);
                gb[k] += delta;
            }
        }
        // Mean over examples, then the penalty (λ/2)·‖W‖², whose gradient is λ·W.
        TensorPrimitives.Multiply(gradient, 1.0 / n, gradient);
        TensorPrimitives.MultiplyAdd(W, l2, gW, gW);
        return loss / n + 0.5 * l2 * TensorPrimitives.Dot(W, W);
    }

    /// <summary>The class scores <c>W·x + b</c> <c>[classes]</c> of one raw row.</summary>
    /// <exception cref="ArgumentException">A length is wrong.</exception>
    public void Scores(ReadOnlySpan<float> x, Span<double> scores)
    {
        if (scores.Length != Classes) throw new ArgumentException($"scores need {Classes} entries; got {scores.Length}", nameof(scores));
        Span<double> z = Width <= 4096 ? stackalloc double[Width] : new double[Width];
        Standardizer.Transform(x, z);
        Scores(z, scores);
    }

    void Scores(ReadOnlySpan<double> z, Span<double> scores)
    {
        for (int k = 0; k < Classes; k++) scores[k] = TensorPrimitives.Dot(z, Weights.AsSpan(k * Width, Width)) + Bias[k];
    }

    /// <summary>The predicted class of one raw row <c>[width]</c>.</summary>
    /// <exception cref="ArgumentException">The row's length is not <see cref="Width"/>.</exception>
    public int Predict(ReadOnlySpan<float> x)
    {
        Span<double> scores = Classes <= 256 ? stackalloc double[Classes] : new double[Classes];
        Scores(x, scores);
        return TensorPrimitives.IndexOfMax<double>(scores);
    }

    /// <summary>Predicted classes of rows standardized by this probe's standardizer, computed where they are.</summary>
    /// <exception cref="ArgumentException">The rows' width is not <see cref="Width"/>.</exception>
    public int[] Predict(ProbeRows rows)
    {
        if (rows.Width != Width) throw new ArgumentException($"the probe reads rows of width {Width}; got {rows.Width}", nameof(rows));
        return rows.ArgMaxOfLinear(Weights, Bias);
    }

    internal static void CheckData(ReadOnlySpan<double> x, ReadOnlySpan<int> y, int d, int classes)
    {
        if (d <= 0) throw new ArgumentException($"the feature width must be positive (got {d})");
        if (x.Length != (long)y.Length * d) throw new ArgumentException($"{x.Length} feature values for {y.Length} labels of width {d}; expected {(long)y.Length * d}");
        CheckLabels(y, y.Length, classes);
    }

    internal static void CheckLabels(ReadOnlySpan<int> y, int rows, int classes)
    {
        if (classes < 2) throw new ArgumentException($"a classifier needs at least 2 classes (got {classes})");
        if (y.Length == 0) throw new ArgumentException("there are no training examples");
        if (y.Length != rows) throw new ArgumentException($"{y.Length} labels for {rows} rows");
        for (int i = 0; i < y.Length; i++)
            if ((uint)y[i] >= (uint)classes) throw new ArgumentException($"label {y[i]} of example {i} is outside [0, {classes})");
    }
}

/// <summary>Multinomial logistic regression settings.</summary>
/// <param name="L2">λ in <c>(λ/2)·‖W‖²</c> (biases are not penalised); applied to the mean loss over examples.</param>
/// <param name="MaxIterations">L-BFGS iteration budget.</param>
/// <param name="GradientTolerance">L-BFGS stops when <c>max |∂f/∂θ|</c> falls to this (or when f falls by less than 2.2·10⁻⁹ relative in an iteration).</param>
public sealed record LogisticOptions(double L2 = 1e-3, int MaxIterations = 200, double GradientTolerance = 1e-5);
