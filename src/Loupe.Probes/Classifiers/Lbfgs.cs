using System.Numerics.Tensors;

namespace Loupe.Probes.Classifiers;

/// <summary>
/// Deterministic L-BFGS for smooth functions (Nocedal and Wright, algorithm 7.4/7.5). Steps:
/// 1. evaluate f and ∇f at the start; stop when the gradient is within tolerance;
/// 2. direction d = −H∇f by the two-loop recursion over the last m pairs (s = Δx, y = Δ∇f) with
///    H₀ = (sᵀy / yᵀy)·I (on the first step, and after a reset, d = −∇f scaled to at most unit length);
/// 3. backtracking line search from step 1, halving until f(x + t·d) ≤ f(x) + 10⁻⁴·t·∇fᵀd (at most
///    <see cref="LbfgsOptions.LineSearchSteps"/> tries);
/// 4. keep the pair when sᵀy is positive (curvature), drop the oldest beyond m; repeat from 2 until the
///    gradient tolerance, a relative decrease of f at most <see cref="LbfgsOptions.RelativeDecreaseTolerance"/> (f has
///    stopped moving above its own rounding), the budget, or a line search that cannot decrease f.
/// </summary>
public static class Lbfgs
{
    /// <summary>Returns f(x) and writes ∇f(x) into <c>gradient</c> (same length as x).</summary>
    public delegate double Objective(ReadOnlySpan<double> x, Span<double> gradient);

    /// <summary>Minimises <paramref name="f"/> from <paramref name="start"/> (not modified).</summary>
    /// <exception cref="ArgumentException">The options are out of range, the start is empty, or f is not finite at the start.</exception>
    public static LbfgsResult Minimize(Objective f, ReadOnlySpan<double> start, LbfgsOptions? options = null)
    {
        options ??= new LbfgsOptions();
        if (options.MaxIterations < 0 || options.History < 1 || !(options.GradientTolerance >= 0) || options.LineSearchSteps < 1 || !(options.RelativeDecreaseTolerance >= 0))
            throw new ArgumentException($"L-BFGS options out of range: {options}", nameof(options));
        if (start.IsEmpty) throw new ArgumentException("the start point is empty", nameof(start));
        int n = start.Length, m = options.History;
        var x = start.ToArray();
        var g = new double[n];
        double fx = f(x, g);
        int evaluations = 1;
        if (!double.IsFinite(fx)) throw new ArgumentException($"the objective is {fx} at the start point", nameof(f));

        var s = new double[m][];      // [m][n] steps, oldest first in ring order
        var y = new double[m][];      // [m][n] gradient changes
        var rho = new double[m];      // 1 / (yᵀs)
        var alpha = new double[m];
        int stored = 0, newest = -1;
        var d = new double[n];
        var xNew = new double[n];
        var gNew = new double[n];
        var sNew = new double[n];
        var yNew = new double[n];
        int iteration = 0;
        var stop = Math.Abs(TensorPrimitives.MaxMagnitude<double>(g)) <= options.GradientTolerance ? LbfgsStop.Gradient : LbfgsStop.Budget;
        while (stop == LbfgsStop.Budget && iteration < options.MaxIterations)
        {
            iteration++;
            // Two-loop recursion: d = −H·g.
            for (int j = 0; j < n; j++) d[j] = -g[j];
            for (int i = 0; i < stored; i++)
            {
                int k = (newest - i + m) % m;
                alpha[k] = rho[k] * TensorPrimitives.Dot<double>(s[k], d);
                TensorPrimitives.MultiplyAdd<double>(y[k], -alpha[k], d, d);
            }
            if (stored > 0)
            {
                double gamma = TensorPrimitives.Dot<double>(s[newest], y[newest]) / TensorPrimitives.Dot<double>(y[newest], y[newest]);
                TensorPrimitives.Multiply<double>(d, gamma, d);
            }
            else
            {
                double norm = TensorPrimitives.Norm<double>(d);
                if (norm > 1) TensorPrimitives.Multiply<double>(d, 1 / norm, d);
            }
            for (int i = stored - 1; i >= 0; i--)
            {
                int k = (newest - i + m) % m;
                double beta = rho[k] * TensorPrimitives.Dot<double>(y[k], d);
                TensorPrimitives.MultiplyAdd<double>(s[k], alpha[k] - beta, d, d);
            }
            double slope = TensorPrimitives.Dot<double>(g, d);
            if (!(slope < 0))
            {
                // Not a descent direction (numerical trouble): forget the history and go downhill.
                stored = 0;
                for (int j = 0; j < n; j++) d[j] = -g[j];
                slope = -TensorPrimitives.Dot<double>(g, g);
            }

            // Backtracking (Armijo) line search.
            double step = 1, fNew = double.NaN;
            bool accepted = false;
            for (int tries = 0; tries < options.LineSearchSteps; tries++)
            {
                TensorPrimitives.MultiplyAdd<double>(d, step, x, xNew);
                fNew = f(xNew, gNew);
                evaluations++;
                if (double.IsFinite(fNew) && fNew <= fx + 1e-4 * step * slope)
                {
                    accepted = true;
                    break;
                }
                step *= 0.5;
            }
            if (!accepted)
            {
                stop = LbfgsStop.LineSearch;
                break;
            }

            TensorPrimitives.Subtract<double>(xNew, x, sNew);
            TensorPrimitives.Subtract<double>(gNew, g, yNew);
            double sy = TensorPrimitives.Dot<double>(sNew, yNew);
            // Keep the pair only when the curvature condition holds (H stays positive definite).
            if (sy > 1e-12 * TensorPrimitives.Dot<double>(yNew, yNew) && sy > 0)
            {
                newest = (newest + 1) % m;
                (s[newest], sNew) = (sNew, s[newest] ?? new double[n]);
                (y[newest], yNew) = (yNew, y[newest] ?? new double[n]);
                rho[newest] = 1 / sy;
                stored = Math.Min(stored + 1, m);
            }

            bool stalled = fx - fNew <= options.RelativeDecreaseTolerance * Math.Max(1, Math.Max(Math.Abs(fx), Math.Abs(fNew)));
            (x, xNew) = (xNew, x);
            (g, gNew) = (gNew, g);
            fx = fNew;
            if (Math.Abs(TensorPrimitives.MaxMagnitude<double>(g)) <= options.GradientTolerance) stop = LbfgsStop.Gradient;
            else if (stalled) stop = LbfgsStop.Decrease;
        }
        return new LbfgsResult(x, fx, iteration, evaluations, stop);
    }
}

/// <summary>Limited-memory BFGS settings.</summary>
/// <param name="MaxIterations">The iteration budget (each iteration is one line search).</param>
/// <param name="History">Correction pairs kept (m).</param>
/// <param name="GradientTolerance">Stop when <c>max_j |∂f/∂x_j|</c> falls to this.</param>
/// <param name="RelativeDecreaseTolerance">Stop when an iteration lowers f by at most this times <c>max(1, |f|)</c>. The
/// default (10⁻¹⁵) suits an f exact to double precision; an f computed in fp32 should use what SciPy's L-BFGS-B does by
/// default, ~2.2·10⁻⁹ (factr 10⁷ × machine ε), or the search spends its last iterations chasing rounding.</param>
/// <param name="LineSearchSteps">Halvings tried before a line search gives up (SciPy's maxls is 20).</param>
public sealed record LbfgsOptions(int MaxIterations = 200, int History = 10, double GradientTolerance = 1e-5,
    double RelativeDecreaseTolerance = 1e-15, int LineSearchSteps = 50);

/// <summary>Why L-BFGS stopped.</summary>
public enum LbfgsStop
{
    /// <summary>The gradient reached its tolerance.</summary>
    Gradient,
    /// <summary>f decreased by less than its relative tolerance in the last iteration.</summary>
    Decrease,
    /// <summary>The iteration budget was spent.</summary>
    Budget,
    /// <summary>No step along the search direction decreased f.</summary>
    LineSearch,
}

/// <summary>The minimiser's result.</summary>
/// <param name="X">The final point.</param>
/// <param name="Value">f at <paramref name="X"/>.</param>
/// <param name="Iterations">Iterations run.</param>
/// <param name="Evaluations">Calls of f (with its gradient).</param>
/// <param name="Stop">Why it stopped.</param>
public sealed record LbfgsResult(double[] X, double Value, int Iterations, int Evaluations, LbfgsStop Stop)
{
    /// <summary>Whether it stopped at a tolerance — the gradient's, or f's relative decrease (SciPy counts both as convergence) — rather than the budget or a failed line search.</summary>
    public bool Converged => Stop is LbfgsStop.Gradient or LbfgsStop.Decrease;
}
