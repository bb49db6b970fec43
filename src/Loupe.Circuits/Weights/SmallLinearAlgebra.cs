using System.Numerics;

namespace Loupe.Circuits.Weights;

/// <summary>
/// Dense fp64 linear algebra for the small (r×r, r = d_head) problems a <see cref="FactoredMatrix"/>
/// reduces to, and the row-major products that set them up. Every matrix is a row-major <c>double[]</c>.
/// </summary>
internal static class SmallLinearAlgebra
{
    /// <summary><c>C[m, n] = op(A)·op(B)</c>; A is stored <c>[m, k]</c> (or <c>[k, m]</c> when transposed), B likewise.</summary>
    public static double[] Multiply(ReadOnlySpan<double> a, ReadOnlySpan<double> b, int m, int k, int n, bool transA = false, bool transB = false)
    {
        var c = new double[m * n];
        var row = new double[n];
        for (int i = 0; i < m; i++)
        {
            Array.Clear(row);
            for (int p = 0; p < k; p++)
            {
                double aip = transA ? a[p * m + i] : a[i * k + p];
                if (aip == 0) continue;
                if (!transB)
                {
                    var bRow = b.Slice(p * n, n);
                    for (int j = 0; j < n; j++) row[j] += aip * bRow[j];
                }
                else
                {
                    for (int j = 0; j < n; j++) row[j] += aip * b[j * k + p];
                }
            }
            row.CopyTo(c.AsSpan(i * n, n));
        }
        return c;
    }

    /// <summary>The transpose of a row-major <c>[rows, cols]</c> matrix.</summary>
    public static double[] Transpose(ReadOnlySpan<double> a, int rows, int cols)
    {
        var t = new double[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
        return t;
    }

    /// <summary>
    /// The R of a Householder QR of <c>A [m, n]</c>: <c>[min(m, n), n]</c>, upper trapezoidal, with
    /// <c>AᵀA = RᵀR</c>. Q is never formed: callers only need norms and singular values, which Q preserves.
    /// </summary>
    public static double[] HouseholderR(ReadOnlySpan<double> a, int m, int n)
    {
        var w = a.ToArray();
        int k = Math.Min(m, n);
        var v = new double[m];
        for (int j = 0; j < k; j++)
        {
            double norm = 0;
            for (int i = j; i < m; i++) norm += w[i * n + j] * w[i * n + j];
            norm = Math.Sqrt(norm);
            if (norm == 0) continue;
            double alpha = w[j * n + j] > 0 ? -norm : norm;
            for (int i = j; i < m; i++) v[i] = w[i * n + j];
            v[j] -= alpha;
            double vv = 0;
            for (int i = j; i < m; i++) vv += v[i] * v[i];
            if (vv == 0) continue;
            // A ← (I − 2vvᵀ/vᵀv)·A on rows j.., columns j..
            for (int c = j; c < n; c++)
            {
                double dot = 0;
                for (int i = j; i < m; i++) dot += v[i] * w[i * n + c];
                double f = 2 * dot / vv;
                for (int i = j; i < m; i++) w[i * n + c] -= f * v[i];
            }
        }
        var r = new double[k * n];
        for (int i = 0; i < k; i++)
            for (int c = i; c < n; c++) r[i * n + c] = w[i * n + c];
        return r;
    }

    /// <summary>
    /// Singular values of <c>M [rows, cols]</c>, largest first (min(rows, cols) of them), by one-sided
    /// (Hestenes) Jacobi: rotate pairs of columns until all are orthogonal; the column norms are then the
    /// singular values. Accurate to working precision for the small matrices used here.
    /// </summary>
    public static double[] SingularValues(ReadOnlySpan<double> m, int rows, int cols)
    {
        // Work on the shape with at least as many rows as columns; columns stored contiguously.
        double[] columns;
        int p, q;
        if (rows >= cols) { columns = Transpose(m, rows, cols); p = rows; q = cols; }
        else { columns = m.ToArray(); p = cols; q = rows; }
        const double eps = 1e-15;
        for (int sweep = 0; sweep < 60; sweep++)
        {
            bool rotated = false;
            for (int i = 0; i < q - 1; i++)
                for (int j = i + 1; j < q; j++)
                {
                    var ui = columns.AsSpan(i * p, p);
                    var uj = columns.AsSpan(j * p, p);
                    double alpha = 0, beta = 0, gamma = 0;
                    for (int t = 0; t < p; t++) { alpha += ui[t] * ui[t]; beta += uj[t] * uj[t]; gamma += ui[t] * uj[t]; }
                    if (Math.Abs(gamma) <= eps * Math.Sqrt(alpha * beta) || gamma == 0) continue;
                    rotated = true;
                    double zeta = (beta - alpha) / (2 * gamma);
                    double tan = Math.Sign(zeta == 0 ? 1 : zeta) / (Math.Abs(zeta) + Math.Sqrt(1 + zeta * zeta));
                    double cos = 1 / Math.Sqrt(1 + tan * tan), sin = cos * tan;
                    for (int t = 0; t < p; t++)
                    {
                        double a = ui[t], b = uj[t];
                        ui[t] = cos * a - sin * b;
                        uj[t] = sin * a + cos * b;
                    }
                }
            if (!rotated) break;
        }
        var sigma = new double[q];
        for (int i = 0; i < q; i++)
        {
            double s = 0;
            foreach (double x in columns.AsSpan(i * p, p)) s += x * x;
            sigma[i] = Math.Sqrt(s);
        }
        Array.Sort(sigma, (x, y) => y.CompareTo(x));
        return sigma;
    }

    /// <summary>
    /// Eigenvalues of a real general <c>[n, n]</c> matrix, complex pairs included, sorted by descending
    /// modulus. Steps: (1) Householder reduction to upper Hessenberg form; (2) complex shifted QR
    /// iteration (Givens rotations, Wilkinson shift, an exceptional shift every 10 stalled steps) on the
    /// active block, deflating an eigenvalue whenever a subdiagonal entry becomes negligible.
    /// </summary>
    /// <exception cref="InvalidOperationException">The iteration did not converge (never seen on finite input).</exception>
    public static Complex[] Eigenvalues(ReadOnlySpan<double> matrix, int n)
    {
        var h = matrix.ToArray();
        ReduceToHessenberg(h, n);
        var z = new Complex[n * n];
        for (int i = 0; i < n * n; i++) z[i] = h[i];
        var eigen = new Complex[n];
        int hi = n - 1, stalled = 0, total = 0;
        var cs = new Complex[n];
        var sn = new Complex[n];
        while (hi >= 0)
        {
            if (hi == 0) { eigen[0] = z[0]; break; }
            int lo = hi;
            while (lo > 0)
            {
                double scale = Complex.Abs(z[lo * n + lo]) + Complex.Abs(z[(lo - 1) * n + lo - 1]);
                if (scale == 0) scale = 1;
                if (Complex.Abs(z[lo * n + lo - 1]) <= 1e-15 * scale) { z[lo * n + lo - 1] = 0; break; }
                lo--;
            }
            if (lo == hi) { eigen[hi] = z[hi * n + hi]; hi--; stalled = 0; continue; }
            if (++total > 100 * n) throw new InvalidOperationException($"eigenvalues: the QR iteration did not converge for a {n}×{n} matrix");

            Complex mu;
            if (++stalled % 10 == 0)
                mu = z[hi * n + hi] + Complex.Abs(z[hi * n + hi - 1]) * 0.75; // exceptional shift breaks a cycle
            else
            {
                Complex a = z[(hi - 1) * n + hi - 1], b = z[(hi - 1) * n + hi], c = z[hi * n + hi - 1], d = z[hi * n + hi];
                Complex half = (a - d) / 2, disc = Complex.Sqrt(half * half + b * c), mean = (a + d) / 2;
                Complex mu1 = mean + disc, mu2 = mean - disc;
                mu = Complex.Abs(mu1 - d) < Complex.Abs(mu2 - d) ? mu1 : mu2;
            }

            // One QR step on the block [lo, hi]: H − μI = QR, H ← RQ + μI.
            for (int k = lo; k <= hi; k++) z[k * n + k] -= mu;
            for (int k = lo; k < hi; k++)
            {
                Complex x = z[k * n + k], y = z[(k + 1) * n + k];
                double r = Math.Sqrt(x.Real * x.Real + x.Imaginary * x.Imaginary + y.Real * y.Real + y.Imaginary * y.Imaginary);
                Complex c = r == 0 ? Complex.One : x / r, s = r == 0 ? Complex.Zero : y / r;
                cs[k] = c; sn[k] = s;
                for (int j = k; j <= hi; j++)
                {
                    Complex t1 = z[k * n + j], t2 = z[(k + 1) * n + j];
                    z[k * n + j] = Complex.Conjugate(c) * t1 + Complex.Conjugate(s) * t2;
                    z[(k + 1) * n + j] = -s * t1 + c * t2;
                }
            }
            for (int k = lo; k < hi; k++)
            {
                Complex c = cs[k], s = sn[k];
                for (int i = lo; i <= Math.Min(k + 1, hi); i++)
                {
                    Complex t1 = z[i * n + k], t2 = z[i * n + k + 1];
                    z[i * n + k] = t1 * c + t2 * s;
                    z[i * n + k + 1] = -t1 * Complex.Conjugate(s) + t2 * Complex.Conjugate(c);
                }
            }
            for (int k = lo; k <= hi; k++) z[k * n + k] += mu;
        }
        Array.Sort(eigen, (x, y) => Complex.Abs(y).CompareTo(Complex.Abs(x)));
        return eigen;
    }

    /// <summary>In place: <c>H ← P·H·P</c> with Householder reflections P until H is upper Hessenberg (same eigenvalues).</summary>
    static void ReduceToHessenberg(double[] h, int n)
    {
        var v = new double[n];
        for (int k = 0; k < n - 2; k++)
        {
            double norm = 0;
            for (int i = k + 1; i < n; i++) norm += h[i * n + k] * h[i * n + k];
            norm = Math.Sqrt(norm);
            if (norm == 0) continue;
            double alpha = h[(k + 1) * n + k] > 0 ? -norm : norm;
            Array.Clear(v);
            for (int i = k + 1; i < n; i++) v[i] = h[i * n + k];
            v[k + 1] -= alpha;
            double vv = 0;
            for (int i = k + 1; i < n; i++) vv += v[i] * v[i];
            if (vv == 0) continue;
            for (int c = 0; c < n; c++)
            {
                double dot = 0;
                for (int i = k + 1; i < n; i++) dot += v[i] * h[i * n + c];
                double f = 2 * dot / vv;
                for (int i = k + 1; i < n; i++) h[i * n + c] -= f * v[i];
            }
            for (int r = 0; r < n; r++)
            {
                double dot = 0;
                for (int i = k + 1; i < n; i++) dot += h[r * n + i] * v[i];
                double f = 2 * dot / vv;
                for (int i = k + 1; i < n; i++) h[r * n + i] -= f * v[i];
            }
        }
    }
}
