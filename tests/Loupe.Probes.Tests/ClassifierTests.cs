using Loupe.Probes.Classifiers;

namespace Loupe.Probes.Tests;

/// <summary>The probes and their optimiser on problems with known answers.</summary>
public class ClassifierTests
{
    static double Normal(Random r) => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());

    [Fact]
    public void LogisticGradientMatchesCentralFiniteDifferences()
    {
        const int n = 30, d = 5, K = 4;
        const double l2 = 0.1, h = 1e-6;
        var r = new Random(7);
        var x = Enumerable.Range(0, n * d).Select(_ => Normal(r)).ToArray();
        var y = Enumerable.Range(0, n).Select(_ => r.Next(K)).ToArray();
        var theta = Enumerable.Range(0, K * d + K).Select(_ => 0.5 * Normal(r)).ToArray();
        var grad = new double[theta.Length];
        LogisticProbe.LossAndGradient(x, y, d, K, theta, l2, grad);
        var scratch = new double[theta.Length];
        for (int j = 0; j < theta.Length; j++)
        {
            var plus = (double[])theta.Clone();
            var minus = (double[])theta.Clone();
            plus[j] += h;
            minus[j] -= h;
            double numeric = (LogisticProbe.LossAndGradient(x, y, d, K, plus, l2, scratch) - LogisticProbe.LossAndGradient(x, y, d, K, minus, l2, scratch)) / (2 * h);
            Assert.True(Math.Abs(grad[j] - numeric) <= 1e-7 + 1e-6 * Math.Abs(numeric), $"θ[{j}]: analytic {grad[j]:G10}, finite difference {numeric:G10}");
        }
    }

    [Fact]
    public void LogisticLossAtZeroIsLogK()
    {
        const int n = 10, d = 3, K = 5;
        var x = new double[n * d];
        var y = Enumerable.Range(0, n).Select(i => i % K).ToArray();
        double loss = LogisticProbe.LossAndGradient(x, y, d, K, new double[K * d + K], 1.0, new double[K * d + K]);
        Assert.Equal(Math.Log(K), loss, 1e-12);
    }

    /// <summary>Three classes labelled by the argmax of a random linear map, with a margin: linearly separable.</summary>
    static (float[] X, int[] Y) Separable(int n, int d, int seed)
    {
        var r = new Random(seed);
        var w = Enumerable.Range(0, 3 * d).Select(_ => Normal(r)).ToArray();
        var x = new List<float>();
        var y = new List<int>();
        while (y.Count < n)
        {
            var row = Enumerable.Range(0, d).Select(_ => Normal(r) * 3 + 10).ToArray(); // offset and scale: standardization must cope
            var scores = Enumerable.Range(0, 3).Select(k => Enumerable.Range(0, d).Sum(j => w[k * d + j] * (row[j] - 10))).ToArray();
            var sorted = scores.OrderDescending().ToArray();
            if (sorted[0] - sorted[1] < 1.0) continue; // margin
            x.AddRange(row.Select(v => (float)v));
            y.Add(Array.IndexOf(scores, sorted[0]));
        }
        return (x.ToArray(), y.ToArray());
    }

    [Fact]
    public void LogisticRegressionSeparatesALinearlySeparableThreeClassProblem()
    {
        const int d = 10;
        var (x, y) = Separable(900, d, 3); // one map: the first 600 rows train, the rest test
        float[] xTrain = x[..(600 * d)], xTest = x[(600 * d)..];
        int[] yTrain = y[..600], yTest = y[600..];
        var probe = LogisticProbe.Train(xTrain, yTrain, d, 3, new LogisticOptions(L2: 1e-4, MaxIterations: 300));
        double Accuracy(float[] xs, int[] ys) => Enumerable.Range(0, ys.Length).Count(i => probe.Predict(xs.AsSpan(i * d, d)) == ys[i]) / (double)ys.Length;
        Assert.True(Accuracy(xTrain, yTrain) > 0.98, $"train accuracy {Accuracy(xTrain, yTrain):F3}");
        Assert.True(Accuracy(xTest, yTest) > 0.95, $"held-out accuracy {Accuracy(xTest, yTest):F3}");

        // Deterministic: the same data gives the same weights, bit for bit.
        var again = LogisticProbe.Train(xTrain, yTrain, d, 3, new LogisticOptions(L2: 1e-4, MaxIterations: 300));
        Assert.Equal(probe.Weights, again.Weights);
    }

    [Fact]
    public void DiffMeansRecoversGaussianClassMeans()
    {
        const int d = 8, perClass = 400, K = 3;
        var r = new Random(11);
        var means = new double[K][];
        for (int k = 0; k < K; k++) means[k] = Enumerable.Range(0, d).Select(_ => 2 * Normal(r)).ToArray();
        var x = new List<float>();
        var y = new List<int>();
        for (int i = 0; i < perClass; i++)
            for (int k = 0; k < K; k++)
            {
                x.AddRange(means[k].Select(m => (float)(m + Normal(r))));
                y.Add(k);
            }
        var probe = DiffMeansProbe.Train(x.ToArray(), y.ToArray(), d, K);
        int correct = Enumerable.Range(0, y.Count).Count(i => probe.Predict(x.ToArray().AsSpan(i * d, d)) == y[i]);
        Assert.True(correct > 0.95 * y.Count, $"accuracy {correct / (double)y.Count:F3}");
        // Direction k ≈ μ_k − mean of the μ (the classes are balanced).
        for (int k = 0; k < K; k++)
        {
            var direction = probe.Direction(k);
            for (int j = 0; j < d; j++)
            {
                double expected = means[k][j] - means.Average(m => m[j]);
                Assert.True(Math.Abs(direction[j] - expected) < 0.2, $"class {k} feature {j}: direction {direction[j]:F3}, expected {expected:F3}");
            }
        }
        Assert.Equal([perClass, perClass, perClass], probe.Counts);
    }

    [Fact]
    public void DiffMeansNeverPredictsAClassWithoutTrainingExamples()
    {
        float[] x = [0, 0, 1, 1, 10, 10];
        var probe = DiffMeansProbe.Train(x, [0, 0, 2], 2, 3);
        Assert.Equal(2, probe.Predict([9, 9]));
        Assert.Equal(0, probe.Predict([0.2f, 0.3f]));
        Assert.Equal(0, probe.Counts[1]);
    }

    [Fact]
    public void LbfgsFindsTheRosenbrockMinimum()
    {
        // f = (1 − a)² + 100 (b − a²)², minimum 0 at (1, 1).
        var result = Lbfgs.Minimize((p, g) =>
        {
            double a = p[0], b = p[1];
            g[0] = -2 * (1 - a) - 400 * a * (b - a * a);
            g[1] = 200 * (b - a * a);
            return (1 - a) * (1 - a) + 100 * (b - a * a) * (b - a * a);
        }, [-1.2, 1.0], new LbfgsOptions(MaxIterations: 500, GradientTolerance: 1e-9));
        Assert.True(result.Converged);
        Assert.Equal(1, result.X[0], 1e-5);
        Assert.Equal(1, result.X[1], 1e-5);
    }

    [Fact]
    public void StandardizerMapsConstantFeaturesToZero()
    {
        float[] x = [1, 5, 3, 5, 5, 5];
        var s = Standardizer.Fit(x, 2);
        Assert.Equal([3, 5], s.Mean);
        Assert.Equal(1, s.Scale[1]);
        var z = s.Transform(x);
        double[] expected = [-1.224744871391589, 0, 0, 0, 1.224744871391589, 0];
        Assert.Equal(expected.Length, z.Length);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], z[i], 1e-12);
    }

    [Fact]
    public void BadTrainingDataIsRejected()
    {
        Assert.Throws<ArgumentException>(() => LogisticProbe.Train([1, 2, 3, 4], [0, 3], 2, 3));      // label out of range
        Assert.Throws<ArgumentException>(() => LogisticProbe.Train([1, 2, 3, 4], [0, 1], 2, 1));      // one class
        Assert.Throws<ArgumentException>(() => LogisticProbe.Train([1, 2, 3], [0, 1], 2, 2));         // ragged rows
        Assert.Throws<InputError>(() => DiffMeansProbe.Train([1, float.NaN, 3, 4], [0, 1], 2, 2)); // a NaN activation is bad input, not a bug
        Assert.Throws<InputError>(() => LogisticProbe.Train([1, 2, 3, 4], [0, 1], 2, 2, new LogisticOptions(L2: -1)));
        Assert.Throws<InputError>(() => LogisticProbe.Train([1, 2, 3, 4], [0, 1], 2, 2, new LogisticOptions(L2: double.NaN)));
    }
}
