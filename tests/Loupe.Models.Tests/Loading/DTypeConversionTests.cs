using Loupe.Models.Loading;
using static Loupe.Models.Tests.Loading.RawSafeTensors;

namespace Loupe.Models.Tests.Loading;

/// <summary>F16 / BF16 / F64 tensors are converted exactly to float32.</summary>
public class DTypeConversionTests
{
    static bool SameFloat(float expected, float actual) =>
        float.IsNaN(expected) ? float.IsNaN(actual) : BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(actual);

    [Fact]
    public void F16File_HandComputedValues()
    {
        // binary16 bit patterns and their exact values.
        (ushort Bits, float Value)[] cases =
        [
            (0x3C00, 1f), (0xC000, -2f), (0x3800, 0.5f), (0x3555, 0.333251953125f), (0x7BFF, 65504f),
            (0x0001, 5.9604644775390625e-8f), (0x03FF, 6.0975551605224609375e-5f), (0x0400, 6.103515625e-5f),
            (0x0000, 0f), (0x8000, -0f), (0x7C00, float.PositiveInfinity), (0xFC00, float.NegativeInfinity),
            (0x4248, 3.140625f), (0xB266, -0.199951171875f),
        ];
        // Repeat the cases so both the vector path and the scalar tail see each one.
        var bits = Enumerable.Range(0, 5).SelectMany(_ => cases.Select(c => c.Bits)).Append((ushort)0x7E00).ToArray();
        using var dir = new TempDir();
        string path = Write(dir.File("f16.safetensors"), Header(Entry("h", "F16", [bits.Length], 0, 2 * bits.Length)), UInt16Bytes(bits));
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(DType.F16, f.GetInfo("h").DType);
        var got = f.GetFloat32("h").Span;
        for (int i = 0; i < bits.Length - 1; i++)
            Assert.True(SameFloat(cases[i % cases.Length].Value, got[i]), $"F16 0x{bits[i]:X4}: expected {cases[i % cases.Length].Value}, got {got[i]}");
        Assert.True(float.IsNaN(got[^1]));
    }

    [Fact]
    public void BF16File_HandComputedValues()
    {
        (ushort Bits, float Value)[] cases =
        [
            (0x3F80, 1f), (0xC020, -2.5f), (0x4049, 3.140625f), (0x0000, 0f), (0x8000, -0f),
            (0x7F80, float.PositiveInfinity), (0xFF80, float.NegativeInfinity), (0x3E80, 0.25f),
            (0x0001, 9.18354961579912115600575419705e-41f), (0x7F7F, 3.3895313892515355e38f),
        ];
        var bits = Enumerable.Range(0, 7).SelectMany(_ => cases.Select(c => c.Bits)).Append((ushort)0x7FC0).ToArray();
        using var dir = new TempDir();
        string path = Write(dir.File("bf16.safetensors"), Header(Entry("b", "BF16", [bits.Length], 0, 2 * bits.Length)), UInt16Bytes(bits));
        using var f = SafeTensorsFile.Open(path);
        var got = f.GetFloat32("b").Span;
        for (int i = 0; i < bits.Length - 1; i++)
            Assert.True(SameFloat(cases[i % cases.Length].Value, got[i]), $"BF16 0x{bits[i]:X4}: expected {cases[i % cases.Length].Value}, got {got[i]}");
        Assert.True(float.IsNaN(got[^1]));
    }

    [Fact]
    public void EveryF16AndBF16BitPattern_MatchesTheScalarDefinition()
    {
        var all = new ushort[65536];
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        var half = new float[all.Length];
        var bf = new float[all.Length];
        DTypeConversions.HalfToSingle(all, half);
        DTypeConversions.BFloat16ToSingle(all, bf);
        for (int i = 0; i < all.Length; i++)
        {
            float h = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            Assert.True(SameFloat(h, half[i]), $"F16 0x{i:X4}: expected {h}, got {half[i]}");
            float b = BitConverter.UInt32BitsToSingle((uint)i << 16);
            Assert.True(SameFloat(b, bf[i]), $"BF16 0x{i:X4}: expected {b}, got {bf[i]}");
        }
    }

    [Fact]
    public void Conversions_EveryLengthUpTo40_HandleTheTail()
    {
        var rng = new Random(1);
        for (int n = 0; n <= 40; n++)
        {
            var src = Enumerable.Range(0, n).Select(_ => (ushort)rng.Next(0, 0x7C00)).ToArray();
            var dst = new float[n + 1];
            dst[n] = 123f;
            DTypeConversions.HalfToSingle(src, dst);
            for (int i = 0; i < n; i++) Assert.Equal((float)BitConverter.UInt16BitsToHalf(src[i]), dst[i]);
            Assert.Equal(123f, dst[n]);

            var d = Enumerable.Range(0, n).Select(_ => rng.NextDouble() * 1e6 - 5e5).ToArray();
            var fd = new float[n + 1];
            fd[n] = 7f;
            DTypeConversions.DoubleToSingle(d, fd);
            for (int i = 0; i < n; i++) Assert.Equal((float)d[i], fd[i]);
            Assert.Equal(7f, fd[n]);
        }
    }

    [Fact]
    public void F64File_IsRoundedToFloat32()
    {
        double[] values = [1.0, -0.1, 1e-40, 3.4e38, 1e300, Math.PI, 0.5, 2, 3, 4, 5, 6, 7];
        var bytes = new byte[values.Length * 8];
        for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(8 * i), values[i]);
        using var dir = new TempDir();
        string path = Write(dir.File("f64.safetensors"), Header(Entry("d", "F64", [values.Length], 0, bytes.Length)), bytes);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(values.Select(v => (float)v).ToArray(), f.GetFloat32("d").ToArray());
        Assert.Equal(float.PositiveInfinity, f.GetFloat32("d").Span[4]);
    }

    [Fact]
    public void IntegerDtypes_WidenToInt64()
    {
        var bytes = new byte[4 * 3 + 2 * 2 + 3];
        BitConverter.TryWriteBytes(bytes.AsSpan(0), -5);
        BitConverter.TryWriteBytes(bytes.AsSpan(4), int.MaxValue);
        BitConverter.TryWriteBytes(bytes.AsSpan(8), 7);
        BitConverter.TryWriteBytes(bytes.AsSpan(12), (short)-300);
        BitConverter.TryWriteBytes(bytes.AsSpan(14), (short)300);
        bytes[16] = 0xFF; bytes[17] = 1; bytes[18] = 0;
        using var dir = new TempDir();
        string path = Write(dir.File("ints.safetensors"),
            Header(Entry("i32", "I32", [3], 0, 12), Entry("i16", "I16", [2], 12, 16), Entry("i8", "I8", [1], 16, 17),
                Entry("mask", "BOOL", [2], 17, 19)), bytes);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal([-5L, int.MaxValue, 7], f.GetInt64("i32"));
        Assert.Equal([-300L, 300], f.GetInt64("i16"));
        Assert.Equal([-1L], f.GetInt64("i8"));
        Assert.Equal([1L, 0], f.GetInt64("mask"));
        Assert.Equal([0xFF, 1, 0], f.GetBytes("i8").ToArray().Concat(f.GetBytes("mask").ToArray()).ToArray());
    }
}
