namespace Loupe.Probes.Classifiers;

/// <summary>
/// Per-feature standardization fitted on training rows: <c>z_j = (x_j − mean_j) / scale_j</c>, where
/// scale is the population standard deviation, or 1 for a feature that is constant in training
/// (so it maps to 0 rather than to NaN). Both probes see features through one of these, so a weight
/// or a mean is in units of standard deviations.
/// </summary>
public sealed class Standardizer
{
    Standardizer(double[] mean, double[] scale)
    {
        Mean = mean;
        Scale = scale;
    }

    /// <summary>Training mean per feature <c>[width]</c>.</summary>
    public double[] Mean { get; }
    /// <summary>Training standard deviation per feature <c>[width]</c> (1 where it was 0).</summary>
    public double[] Scale { get; }
    public int Width => Mean.Length;

    /// <summary>Fits the mean and scale of the rows of <paramref name="x"/> <c>[n, width]</c>.</summary>
    /// <exception cref="ArgumentException">No rows, the width is not positive, sizes disagree, or a value is NaN or infinite.</exception>
    public static Standardizer Fit(ReadOnlySpan<float> x, int width)
    {
        if (width <= 0) throw new ArgumentException($"width must be positive (got {width})", nameof(width));
        if (x.Length == 0 || x.Length % width != 0) throw new ArgumentException($"{x.Length} values do not make rows of width {width}", nameof(x));
        int n = x.Length / width;
        var mean = new double[width];
        var m2 = new double[width];
        // Welford's update, row by row: stable for activations with a large common offset.
        for (int i = 0; i < n; i++)
        {
            var row = x.Slice(i * width, width);
            for (int j = 0; j < width; j++)
            {
                double v = row[j];
                if (!double.IsFinite(v)) throw new InputError($"probe features: feature {j} of row {i} is {v}; expected finite activations (the model produced NaN or ∞ at this hook)");
                double delta = v - mean[j];
                mean[j] += delta / (i + 1);
                m2[j] += delta * (v - mean[j]);
            }
        }
        var scale = new double[width];
        for (int j = 0; j < width; j++)
        {
            double sd = Math.Sqrt(m2[j] / n);
            scale[j] = sd > 1e-12 * Math.Max(1, Math.Abs(mean[j])) ? sd : 1;
        }
        return new Standardizer(mean, scale);
    }

    /// <summary>Standardizes one row <c>[width]</c> into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException">A length is not <see cref="Width"/>.</exception>
    public void Transform(ReadOnlySpan<float> row, Span<double> destination)
    {
        if (row.Length != Width || destination.Length != Width)
            throw new ArgumentException($"rows have width {Width}; got {row.Length} values and a destination of {destination.Length}");
        for (int j = 0; j < Width; j++) destination[j] = (row[j] - Mean[j]) / Scale[j];
    }

    /// <summary>
    /// Standardizes every row of <paramref name="x"/> <c>[n, width]</c> into <paramref name="z"/> (computed in double, rounded
    /// to fp32 once; <paramref name="z"/> may be <paramref name="x"/> itself).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="x"/> is empty, not whole rows, or longer than <paramref name="z"/>.</exception>
    /// <exception cref="InputError">A value is NaN or infinite (the message names its row and feature).</exception>
    public void Transform(ReadOnlySpan<float> x, Span<float> z)
    {
        int d = Width;
        if (x.Length == 0 || x.Length % d != 0 || z.Length < x.Length) throw new ArgumentException($"{x.Length} values do not make rows of width {d} (destination {z.Length})", nameof(x));
        for (int i = 0; i < x.Length; i += d)
            for (int j = 0; j < d; j++)
            {
                float v = x[i + j];
                if (!float.IsFinite(v)) throw new InputError($"probe features: feature {j} of row {i / d} is {v}; expected finite activations (the model produced NaN or ∞ at this hook)");
                z[i + j] = (float)((v - Mean[j]) / Scale[j]);
            }
    }

    /// <summary>Standardizes every row of <paramref name="x"/> <c>[n, width]</c> into a new <c>[n, width]</c> array.</summary>
    /// <exception cref="ArgumentException"><paramref name="x"/> is not whole rows.</exception>
    public double[] Transform(ReadOnlySpan<float> x)
    {
        if (x.Length % Width != 0) throw new ArgumentException($"{x.Length} values do not make rows of width {Width}", nameof(x));
        var z = new double[x.Length];
        for (int i = 0; i < x.Length / Width; i++) Transform(x.Slice(i * Width, Width), z.AsSpan(i * Width, Width));
        return z;
    }
}
