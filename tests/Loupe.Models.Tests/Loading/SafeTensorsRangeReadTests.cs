using System.Runtime.InteropServices;
using Loupe.Models.Loading;

namespace Loupe.Models.Tests.Loading;

/// <summary>
/// <see cref="SafeTensorsFile.ReadFloat32"/> (a range of elements from the mapping) and <see cref="SafeTensorsFile.StreamFloat32"/>
/// (the whole tensor by file reads, in chunks) give what <see cref="SafeTensorsFile.GetFloat32"/> gives, for every float dtype.
/// </summary>
public class SafeTensorsRangeReadTests
{
    [Fact]
    public void RangesAndChunksOfEveryFloatDtypeEqualTheWholeTensorRead()
    {
        using var dir = new TempDir();
        string path = dir.File("t.safetensors");
        var values = Enumerable.Range(0, 37).Select(i => (i - 18) * 0.375f).ToArray();   // exact in every dtype
        var f16 = values.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray();
        var bf16 = values.Select(v => (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16)).ToArray();
        var f64 = values.Select(v => (double)v).ToArray();
        SafeTensorsWriter.Write(path,
        [
            SafeTensorEntry.F32("f32", [37], values),
            SafeTensorEntry.Raw("f16", DType.F16, [37], MemoryMarshal.AsBytes(f16.AsSpan()).ToArray()),
            SafeTensorEntry.Raw("bf16", DType.BF16, [37], MemoryMarshal.AsBytes(bf16.AsSpan()).ToArray()),
            SafeTensorEntry.Raw("f64", DType.F64, [37], MemoryMarshal.AsBytes(f64.AsSpan()).ToArray()),
            SafeTensorEntry.I64("ids", [2], new long[] { 1, 2 }),
        ]);
        using var f = SafeTensorsFile.Open(path);
        foreach (var name in new[] { "f32", "f16", "bf16", "f64" })
        {
            var info = f.GetInfo(name);
            Assert.Equal(values, f.GetFloat32(name).ToArray());
            var range = new float[10];
            f.ReadFloat32(info, 27, range);
            Assert.Equal(values[27..], range);
            f.ReadFloat32(info, 0, range.AsSpan(0, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => f.ReadFloat32(info, 28, new float[10]));
            Assert.Throws<ArgumentOutOfRangeException>(() => f.ReadFloat32(info, -1, new float[1]));
            var streamed = new float[37];
            var starts = new List<long>();
            f.StreamFloat32(info, 8, (first, chunk) => { starts.Add(first); chunk.CopyTo(streamed.AsSpan((int)first)); });
            Assert.Equal([0L, 8, 16, 24, 32], starts);
            Assert.Equal(values, streamed);
        }
        Assert.Throws<InputError>(() => f.ReadFloat32(f.GetInfo("ids"), 0, new float[1]));
        using var other = SafeTensorsFile.Open(path);
        Assert.Throws<ArgumentException>(() => f.ReadFloat32(other.GetInfo("f32"), 0, new float[1]));   // another file's info
        f.Dispose();
        Assert.Throws<ObjectDisposedException>(() => f.ReadFloat32(other.GetInfo("f32"), 0, new float[1]));
    }
}
