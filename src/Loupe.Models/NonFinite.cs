using System.Numerics;
using System.Runtime.InteropServices;

namespace Loupe.Models;

/// <summary>
/// Finds NaN and ±∞ in float data: a vectorized pass that only says "all finite" (memory-bound, so
/// it costs about one read of the data), then a scalar pass to locate the first bad element.
/// </summary>
internal static class NonFinite
{
    /// <summary>
    /// Index of the first NaN or ±∞ in <paramref name="x"/>, or −1 when every element is finite.
    /// With <paramref name="allowNegativeInfinity"/>, −∞ counts as finite (masked attention scores hold it).
    /// </summary>
    public static int IndexOf(ReadOnlySpan<float> x, bool allowNegativeInfinity = false)
    {
        if (AllFinite(x, allowNegativeInfinity)) return -1;
        for (int i = 0; i < x.Length; i++)
            if (IsBad(x[i], allowNegativeInfinity)) return i;
        return -1;
    }

    static bool IsBad(float v, bool allowNegativeInfinity) =>
        float.IsNaN(v) || float.IsPositiveInfinity(v) || (!allowNegativeInfinity && float.IsNegativeInfinity(v));

    static bool AllFinite(ReadOnlySpan<float> x, bool allowNegativeInfinity)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && x.Length >= Vector<float>.Count)
        {
            // A comparison with NaN is false, so "|v| < ∞" (or "v < ∞") is true exactly for the values allowed.
            var infinity = new Vector<float>(float.PositiveInfinity);
            var ok = Vector<int>.AllBitsSet;
            var vectors = MemoryMarshal.Cast<float, Vector<float>>(x);
            if (allowNegativeInfinity)
                foreach (var v in vectors) ok &= Vector.LessThan(v, infinity);
            else
                foreach (var v in vectors) ok &= Vector.LessThan(Vector.Abs(v), infinity);
            if (ok != Vector<int>.AllBitsSet) return false;
            i = vectors.Length * Vector<float>.Count;
        }
        for (; i < x.Length; i++)
            if (IsBad(x[i], allowNegativeInfinity)) return false;
        return true;
    }

    /// <summary>"NaN" / "+∞" / "−∞".</summary>
    public static string Describe(float v) => float.IsNaN(v) ? "NaN" : float.IsPositiveInfinity(v) ? "+∞" : "−∞";

    /// <summary>The multi-index of a flat row-major index, e.g. "[0, 2, 17]".</summary>
    public static string Unravel(long index, ReadOnlySpan<int> shape)
    {
        var parts = new long[shape.Length];
        for (int a = shape.Length - 1; a >= 0; a--)
        {
            int d = Math.Max(shape[a], 1);
            parts[a] = index % d;
            index /= d;
        }
        return "[" + string.Join(", ", parts) + "]";
    }
}
