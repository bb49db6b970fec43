using System.Numerics;
using System.Runtime.InteropServices;

namespace Loupe.Models.Loading;

/// <summary>
/// Widening conversions to float32 used when loading F16 / BF16 / F64 tensors.
/// Each has a <see cref="Vector{T}"/> path (whatever width the machine has) and a scalar tail;
/// the scalar forms are the reference the tests compare against.
/// </summary>
internal static class DTypeConversions
{
    /// <summary>bfloat16 → float32: the 16 bits are the top half of the float (exact, NaN kept).</summary>
    public static void BFloat16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        var dst = MemoryMarshal.Cast<float, uint>(destination);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int step = Vector<ushort>.Count, half = Vector<uint>.Count;
            for (; i <= source.Length - step; i += step)
            {
                Vector.Widen(new Vector<ushort>(source.Slice(i)), out var lo, out var hi);
                Vector.ShiftLeft(lo, 16).CopyTo(dst.Slice(i));
                Vector.ShiftLeft(hi, 16).CopyTo(dst.Slice(i + half));
            }
        }
        for (; i < source.Length; i++) dst[i] = (uint)source[i] << 16;
    }

    /// <summary>
    /// IEEE binary16 → float32, exact for every input (subnormals, ±0, ±Inf; NaNs stay NaN).
    /// Same result as <c>(float)BitConverter.UInt16BitsToHalf(h)</c>.
    /// </summary>
    public static void HalfToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        var dst = MemoryMarshal.Cast<float, uint>(destination);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int step = Vector<ushort>.Count, half = Vector<uint>.Count;
            for (; i <= source.Length - step; i += step)
            {
                Vector.Widen(new Vector<ushort>(source.Slice(i)), out var lo, out var hi);
                HalfBitsToSingleBits(lo).CopyTo(dst.Slice(i));
                HalfBitsToSingleBits(hi).CopyTo(dst.Slice(i + half));
            }
        }
        for (; i < source.Length; i++) destination[i] = (float)BitConverter.UInt16BitsToHalf(source[i]);
    }

    // Per lane (h in the low 16 bits):
    //   o = (h & 0x7FFF) << 13, rebias exponent by +112 (127 - 15);
    //   Inf/NaN (half exponent 31): rebias by another +112 so the float exponent is 255;
    //   zero/subnormal (half exponent 0): add 1 to the exponent and subtract 2^-14, which
    //   renormalises the mantissa exactly (float has 13 more mantissa bits than half).
    static Vector<uint> HalfBitsToSingleBits(Vector<uint> h)
    {
        var sign = Vector.ShiftLeft(h & new Vector<uint>(0x8000u), 16);
        var o = Vector.ShiftLeft(h & new Vector<uint>(0x7FFFu), 13);
        var exp = o & new Vector<uint>(0x0F800000u);
        o += new Vector<uint>(0x38000000u);
        var infNan = Vector.Equals(exp, new Vector<uint>(0x0F800000u));
        o += infNan & new Vector<uint>(0x38000000u);
        var denorm = Vector.Equals(exp, Vector<uint>.Zero);
        var renorm = Vector.AsVectorUInt32(
            Vector.AsVectorSingle(o + new Vector<uint>(0x00800000u)) - new Vector<float>(1.0f / 16384f));
        o = Vector.ConditionalSelect(denorm, renorm, o);
        return o | sign;
    }

    /// <summary>float64 → float32 with round-to-nearest (as the <c>(float)</c> cast).</summary>
    public static void DoubleToSingle(ReadOnlySpan<double> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int step = 2 * Vector<double>.Count;
            for (; i <= source.Length - step; i += step)
            {
                var a = new Vector<double>(source.Slice(i));
                var b = new Vector<double>(source.Slice(i + Vector<double>.Count));
                Vector.Narrow(a, b).CopyTo(destination.Slice(i));
            }
        }
        for (; i < source.Length; i++) destination[i] = (float)source[i];
    }
}
