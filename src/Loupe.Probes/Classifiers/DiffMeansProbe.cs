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
    public static DiffMeansProbe Train(ReadOnlySpan<float> x, ReadOnlySpan<int> y, int width, int classes)
    {
        var standardizer = Standardizer.Fit(x, width);
        return Train(standardizer, standardizer.Transform(x), y.ToArray(), classes);
    }

    /// <summary>Trains on rows already standardized by <paramref name="standardizer"/>.</summary>
    internal static DiffMeansProbe Train(Standardizer standardizer, double[] z, int[] y, int classes)
    {
        int d = standardizer.Width;
        LogisticProbe.CheckData(z, y, d, classes);
        var means = new double[classes * d];
        var counts = new int[classes];
        for (int i = 0; i < y.Length; i++)
        {
            var mu = means.AsSpan(y[i] * d, d);
            TensorPrimitives.Add(mu, z.AsSpan(i * d, d), mu);
            counts[y[i]]++;
        }
        for (int k = 0; k < classes; k++)
            if (counts[k] > 0) TensorPrimitives.Multiply(means.AsSpan(k * d, d), 1.0 / counts[k], means.AsSpan(k * d, d));
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

    /// <summary>Predicted classes of already-standardized rows <c>[n, width]</c>.</summary>
    internal int[] PredictStandardized(ReadOnlySpan<double> z)
    {
        var predictions = new int[z.Length / Width];
        for (int i = 0; i < predictions.Length; i++) predictions[i] = PredictOne(z.Slice(i * Width, Width));
        return predictions;
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
