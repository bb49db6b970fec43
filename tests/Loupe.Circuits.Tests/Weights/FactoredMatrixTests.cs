using System.Numerics;
using Loupe.Circuits.Weights;

namespace Loupe.Circuits.Tests.Weights;

/// <summary>Every factored result is checked against the dense product formed here, in the test.</summary>
public class FactoredMatrixTests
{
    static double[] Random(Random rng, int n) => [.. Enumerable.Range(0, n).Select(_ => rng.NextDouble() * 2 - 1)];

    static double[] Dense(double[] a, double[] b, int m, int k, int n)
    {
        var c = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
                c[i * n + j] = s;
            }
        return c;
    }

    static void Close(double expected, double actual, double rel = 1e-9) =>
        Assert.InRange(actual, expected - rel * (1 + Math.Abs(expected)), expected + rel * (1 + Math.Abs(expected)));

    /// <summary>An orthogonal n×n matrix: a product of random plane rotations.</summary>
    static double[] Orthogonal(Random rng, int n)
    {
        var q = new double[n * n];
        for (int i = 0; i < n; i++) q[i * n + i] = 1;
        for (int step = 0; step < 4 * n * n; step++)
        {
            int i = rng.Next(n), j = rng.Next(n);
            if (i == j) continue;
            double t = rng.NextDouble() * 2 * Math.PI, c = Math.Cos(t), s = Math.Sin(t);
            for (int r = 0; r < n; r++)
            {
                double a = q[r * n + i], b = q[r * n + j];
                q[r * n + i] = c * a - s * b;
                q[r * n + j] = s * a + c * b;
            }
        }
        return q;
    }

    [Fact]
    public void FrobeniusNormMatchesTheDenseProduct()
    {
        var rng = new Random(1);
        int m = 40, r = 6, n = 33;
        var a = Random(rng, m * r); var b = Random(rng, r * n);
        var dense = Dense(a, b, m, r, n);
        Close(Math.Sqrt(dense.Sum(x => x * x)), new FactoredMatrix(a, b, m, r, n).FrobeniusNorm());
    }

    [Fact]
    public void ProductAndTransposeMatchDense()
    {
        var rng = new Random(2);
        int m = 20, r1 = 5, k = 17, r2 = 3, n = 11;
        var a = Random(rng, m * r1); var b = Random(rng, r1 * k);
        var c = Random(rng, k * r2); var d = Random(rng, r2 * n);
        var x = new FactoredMatrix(a, b, m, r1, k);
        var y = new FactoredMatrix(c, d, k, r2, n);
        var product = x * y;
        Assert.Equal(Math.Min(r1, r2), product.Inner);
        var expected = Dense(Dense(a, b, m, r1, k), Dense(c, d, k, r2, n), m, k, n);
        var actual = product.ToDense();
        for (int i = 0; i < expected.Length; i++) Close(expected[i], actual[i]);
        var yx = y.Transpose() * x.Transpose(); // (xy)ᵀ
        Assert.Equal(Math.Min(r1, r2), yx.Inner);
        var t = yx.ToDense();
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) Close(expected[i * n + j], t[j * m + i]);
        Assert.Throws<ArgumentException>(() => x * x);
    }

    [Fact]
    public void SingularValuesOfAConstructedProductAreTheChosenOnes()
    {
        // A = U[:, :r]·diag(s), B = V[:, :r]ᵀ with U, V orthogonal: AB has singular values s exactly.
        var rng = new Random(3);
        int m = 30, r = 5, n = 25;
        double[] s = [7, 3.5, 1, 0.25, 1e-3];
        var u = Orthogonal(rng, m); var v = Orthogonal(rng, n);
        var a = new double[m * r]; var b = new double[r * n];
        for (int i = 0; i < m; i++) for (int j = 0; j < r; j++) a[i * r + j] = u[i * m + j] * s[j];
        for (int j = 0; j < r; j++) for (int c = 0; c < n; c++) b[j * n + c] = v[c * n + j];
        var sigma = new FactoredMatrix(a, b, m, r, n).SingularValues();
        Assert.Equal(r, sigma.Length);
        for (int i = 0; i < r; i++) Close(s[i], sigma[i], 1e-10);
    }

    [Fact]
    public void SingularValuesMatchDenseInvariants()
    {
        // Σσ² = ‖AB‖²_F and Σσ⁴ = ‖(AB)ᵀ(AB)‖²_F, both from the dense product.
        var rng = new Random(4);
        int m = 24, r = 7, n = 19;
        var a = Random(rng, m * r); var b = Random(rng, r * n);
        var dense = Dense(a, b, m, r, n);
        var t = new double[n * m];
        for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) t[j * m + i] = dense[i * n + j];
        var gram = Dense(t, dense, n, m, n);
        var sigma = new FactoredMatrix(a, b, m, r, n).SingularValues();
        Close(dense.Sum(x => x * x), sigma.Sum(x => x * x));
        Close(gram.Sum(x => x * x), sigma.Sum(x => x * x * x * x));
        for (int i = 1; i < sigma.Length; i++) Assert.True(sigma[i - 1] >= sigma[i]);
    }

    [Fact]
    public void EigenvaluesOfARotatedQuasiTriangularMatrixAreItsBlocks()
    {
        // T has eigenvalues 2 ± 3i, −1.5, 0.5 ± 0.1i, 4 and junk above the blocks; Q·T·Qᵀ keeps them.
        var rng = new Random(5);
        int n = 6;
        var tm = new double[n * n];
        for (int i = 0; i < n; i++) for (int j = i + 1; j < n; j++) tm[i * n + j] = rng.NextDouble();
        void Block(int i, double re, double im) { tm[i * n + i] = re; tm[(i + 1) * n + i + 1] = re; tm[i * n + i + 1] = im; tm[(i + 1) * n + i] = -im; }
        Block(0, 2, 3); tm[2 * n + 2] = -1.5; Block(3, 0.5, 0.1); tm[5 * n + 5] = 4;
        var q = Orthogonal(rng, n);
        var qt = new double[n * n];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) qt[j * n + i] = q[i * n + j];
        var m = Dense(Dense(q, tm, n, n, n), qt, n, n, n);
        var identity = new double[n * n];
        for (int i = 0; i < n; i++) identity[i * n + i] = 1;
        var eig = new FactoredMatrix(m, identity, n, n, n).Eigenvalues();
        Complex[] expected = [new(2, 3), new(2, -3), new(-1.5, 0), new(0.5, 0.1), new(0.5, -0.1), new(4, 0)];
        foreach (var e in expected)
            Assert.True(eig.Any(x => Complex.Abs(x - e) < 1e-9), $"eigenvalue {e} missing from [{string.Join(", ", eig)}]");
    }

    [Fact]
    public void EigenvaluesMatchTracesOfDensePowers()
    {
        // Σλᵏ = tr((AB)ᵏ) for k = 1, 2, 3; the dense m×m powers are formed here.
        var rng = new Random(6);
        int m = 30, r = 8;
        var a = Random(rng, m * r); var b = Random(rng, r * m);
        var eig = new FactoredMatrix(a, b, m, r, m).Eigenvalues();
        Assert.Equal(r, eig.Length);
        var p1 = Dense(a, b, m, r, m);
        var p = p1;
        for (int k = 1; k <= 3; k++)
        {
            double trace = 0;
            for (int i = 0; i < m; i++) trace += p[i * m + i];
            var sum = eig.Aggregate(Complex.Zero, (acc, l) => acc + Complex.Pow(l, k));
            Close(trace, sum.Real, 1e-8);
            Assert.InRange(sum.Imaginary, -1e-8 * (1 + Math.Abs(trace)), 1e-8 * (1 + Math.Abs(trace)));
            p = Dense(p, p1, m, m, m);
        }
        Assert.Throws<InvalidOperationException>(() => new FactoredMatrix(a, b[..(r * 5)], m, r, 5).Eigenvalues());
    }
}
