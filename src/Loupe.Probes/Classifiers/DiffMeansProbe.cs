using System.Numerics.Tensors;

namespace Loupe.Probes.Classifiers;

// Shapes: x [n, d] features (standardized inside the probe); y [n] class in [0, K); μ [K, d] class means of standardized rows.

/// <summary>
/// The difference-of-means (nearest class mean) probe: no optimisation, just averages. Steps:
/// 1. standardize features with the training mean and standard deviation (as the logistic probe does);
/// 2. μₖ = mean of the standardized training rows of class k; a class absent from training is never predicted;
/// 3. predict the nearest mean, <c>argminₖ ‖z − μₖ‖²</c>, computed as its linear form
///    <c>argmaxₖ z·μₖ − ½‖μₖ‖²</c> (ties go to the lower class index).
/// Because the standardized rows have mean 0, μₖ is also class k's difference-of-means direction
/// (class mean minus overall mean); <see cref="Direction"/> gives it in raw activation units.
/// </summary>
public sealed class DiffMeansProbe
{
    DiffMeansProbe(Standardizer standardizer, int classes, double[] means, int[] counts)
    {
        Standardizer = standardizer;
        Classes = classes;
        Means = means;
        Counts = counts;
        HalfNormSquared = new double[classes];
        for (int k = 0; k < classes; k++)
        {
            var mu = means.AsSpan(k * Width, Width);
            HalfNormSquared[k] = 0.5 * TensorPrimitives.Dot<double>(mu, mu);
        }
    }

    public Standardizer Standardizer { get; }
    public int Classes { get; }
    public int Width => Standardizer.Width;
    /// <summary>μ <c>[classes, width]</c> row-major, on standardized features (zeros for a class without examples).</summary>
    public double[] Means { get; }
    /// <summary>Training examples per class <c>[classes]</c>.</summary>
    public int[] Counts { get; }
    double[] HalfNormSquared { get; }

    /// <summary>Trains on rows <paramref name="x"/> <c>[n, width]</c> with labels <paramref name="y"/> <c>[n]</c>.</summary>
    /// <exception cref="ArgumentException">Sizes disagree, there are no rows, fewer than 2 classes, a label is out of range, or a feature is not finite.</exception>
    public static DiffMeansProbe Train(ReadOnlySpan<float> x, ReadOnlySpan<int> y, int width, int classes) =>
        Train(Standardizer.Fit(x, width), x, y, classes);

    /// <summary>
    /// Trains on raw rows <paramref name="x"/> <c>[n, width]</c> with <paramref name="standardizer"/> fitted on them: the class
    /// means of the raw rows, summed in double, then standardized — standardizing is affine, so this is the mean of the
    /// standardized rows without forming them.
    /// </summary>
    /// <exception cref="ArgumentException">Sizes disagree, there are no rows, fewer than 2 classes, or a label is out of range.</exception>
    public static DiffMeansProbe Train(Standardizer standardizer, ReadOnlySpan<float> x, ReadOnlySpan<int> y, int classes)
    {
        int d = standardizer.Width;
        if (x.Length != (long)y.Length * d) throw new ArgumentException($"{x.Length} feature values for {y.Length} labels of width {d}; expected {(long)y.Length * d}");
        LogisticProbe.CheckLabels(y, y.Length, classes);
        var sums = new double[classes * d];
        var counts = new int[classes];
        for (int i = 0; i < y.Length; i++)
        {
            var sum = sums.AsSpan(y[i] * d, d);
            var row = x.Slice(i * d, d);
            for (int j = 0; j < d; j++) sum[j] += row[j];
            counts[y[i]]++;
        }
        var means = new double[classes * d];
        for (int k = 0; k < classes; k++)
            if (counts[k] > 0)
                for (int j = 0; j < d; j++) means[k * d + j] = (sums[k * d + j] / counts[k] - standardizer.Mean[j]) / standardizer.Scale[j];
        return new DiffMeansProbe(standardizer, classes, means, counts);
    }

    /// <summary>Class k's difference-of-means direction in raw activation units: <c>(class mean − overall training mean)</c> <c>[width]</c>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">k is not a class.</exception>
    public float[] Direction(int k)
    {
        if ((uint)k >= (uint)Classes) throw new ArgumentOutOfRangeException(nameof(k), $"class {k} is outside [0, {Classes})");
        var direction = new float[Width];
        for (int j = 0; j < Width; j++) direction[j] = (float)(Means[k * Width + j] * Standardizer.Scale[j]);
        return direction;
    }

    /// <summary>The predicted class of one raw row <c>[width]</c>.</summary>
    /// <exception cref="ArgumentException">The row's length is not <see cref="Width"/>.</exception>
    public int Predict(ReadOnlySpan<float> x)
    {
        Span<double> z = Width <= 4096 ? stackalloc double[Width] : new double[Width];
        Standardizer.Transform(x, z);
        return PredictOne(z);
    }

    /// <summary>
    /// Predicted classes of rows standardized by this probe's standardizer, computed where they are: the linear form
    /// <c>z·μₖ − ½‖μₖ‖²</c>, with −∞ for a class without training examples.
    /// </summary>
    /// <exception cref="ArgumentException">The rows' width is not <see cref="Width"/>.</exception>
    public int[] Predict(ProbeRows rows)
    {
        if (rows.Width != Width) throw new ArgumentException($"the probe reads rows of width {Width}; got {rows.Width}", nameof(rows));
        var bias = new double[Classes];
        for (int k = 0; k < Classes; k++) bias[k] = Counts[k] > 0 ? -HalfNormSquared[k] : double.NegativeInfinity;
        return rows.ArgMaxOfLinear(Means, bias);
    }

    int PredictOne(ReadOnlySpan<double> z)
    {
        int best = -1;
        double bestScore = double.NegativeInfinity;
        for (int k = 0; k < Classes; k++)
        {
            if (Counts[k] == 0) continue;
            double score = TensorPrimitives.Dot(z, Means.AsSpan(k * Width, Width)) - HalfNormSquared[k];
            if (best < 0 || score > bestScore)
            {
                best = k;
                bestScore = score;
            }
        }
        return best;
    }
}
