using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Probes.Classifiers;

// Shapes: x [n, d] raw features; z [n, d] = (x − mean) / scale, fp32, on the backend's device.

/// <summary>
/// Standardized rows where a backend computes on them: the probes' training and scoring are products over these
/// (<c>z·Wᵀ</c>, <c>dZᵀ·z</c>), so they run on whatever device the model ran on. Standardizing happens once, on the
/// host (in double, rounded to fp32 once), and the rows cross to the device in one counted copy; on the CPU backend
/// they are the host array itself.
/// </summary>
public sealed class ProbeRows
{
    ProbeRows(IComputeBackend backend, Tensor z, int count, int width)
    {
        (Backend, Z, Count, Width) = (backend, z, count, width);
    }

    public IComputeBackend Backend { get; }
    /// <summary>z <c>[count, width]</c> on <see cref="Backend"/>'s device.</summary>
    public Tensor Z { get; }
    public int Count { get; }
    public int Width { get; }

    /// <summary>Standardizes rows <paramref name="x"/> <c>[n, width]</c> with <paramref name="standardizer"/> and places them on <paramref name="backend"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="x"/> is empty or not whole rows of the standardizer's width.</exception>
    /// <exception cref="InputError">A value is NaN or infinite.</exception>
    public static ProbeRows Upload(IComputeBackend backend, Standardizer standardizer, ReadOnlySpan<float> x)
    {
        var z = new float[x.Length];
        standardizer.Transform(x, z);
        return FromStandardized(backend, z, standardizer.Width);
    }

    /// <summary>
    /// Standardizes <paramref name="x"/> in place (the caller's own copy, e.g. rows gathered for one hook) and places it
    /// on <paramref name="backend"/>: no second host copy of a hook's rows.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="x"/> is empty or not whole rows of the standardizer's width.</exception>
    /// <exception cref="InputError">A value is NaN or infinite.</exception>
    public static ProbeRows StandardizeInPlace(IComputeBackend backend, Standardizer standardizer, float[] x)
    {
        standardizer.Transform(x, x.AsSpan());
        return FromStandardized(backend, x, standardizer.Width);
    }

    static ProbeRows FromStandardized(IComputeBackend backend, float[] z, int width)
    {
        int n = z.Length / width;
        return new ProbeRows(backend, backend.ToDevice(Tensor.FromArray(z, n, width)), n, width);
    }

    /// <summary>
    /// <c>argmaxₖ (z·Wᵀ + b)ₖ</c> of every row (ties to the lower class), computed on the device; only the classes come back.
    /// A bias of −∞ rules a class out.
    /// </summary>
    /// <param name="weights">W <c>[classes, width]</c> row-major, on standardized features.</param>
    /// <param name="bias">b <c>[classes]</c>.</param>
    /// <exception cref="ArgumentException">A length disagrees with the rows' width or the bias's classes.</exception>
    public int[] ArgMaxOfLinear(ReadOnlySpan<double> weights, ReadOnlySpan<double> bias)
    {
        int classes = bias.Length;
        if (classes == 0 || weights.Length != classes * Width)
            throw new ArgumentException($"W needs [{classes}, {Width}] = {classes * Width} entries for {classes} classes; got {weights.Length}", nameof(weights));
        var w = Backend.ToDevice(Tensor.FromArray(ToFloats(weights), classes, Width));
        var b = Backend.ToDevice(Tensor.FromArray(ToFloats(bias), classes));
        var scores = Backend.Empty(Count, classes);
        Backend.Linear(Z, Count, Width, w, weightIsOutIn: true, classes, b, scores);
        return Backend.ArgMaxRows(scores, Count, classes);
    }

    internal static float[] ToFloats(ReadOnlySpan<double> values)
    {
        var f = new float[values.Length];
        for (int i = 0; i < f.Length; i++) f[i] = (float)values[i];
        return f;
    }
}
