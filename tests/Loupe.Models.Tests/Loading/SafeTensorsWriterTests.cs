using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Loupe.Models.Loading;

namespace Loupe.Models.Tests.Loading;

public class SafeTensorsWriterTests
{
    static float[] Ramp(int n, float scale = 0.25f) => Enumerable.Range(0, n).Select(i => (i - n / 2) * scale).ToArray();

    [Fact]
    public void RoundTrip_F32_KeepsNamesOrderShapesDataAndMetadata()
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        var a = Ramp(6);
        var b = new[] { 3.5f };
        var c = Array.Empty<float>();
        var d = Ramp(7 * 5, 1e-3f);
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("zeta.weight", [2, 3], a),
            ("scalar", [], b),
            ("empty", [0, 4], c),
            ("alpha.bias", [7, 5], d),
        };
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "héllo \"quoted\"" };
        SafeTensorsWriter.Write(path, tensors, metadata);

        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(["zeta.weight", "scalar", "empty", "alpha.bias"], f.Names);
        Assert.Equal(metadata.OrderBy(kv => kv.Key), f.Metadata.OrderBy(kv => kv.Key));
        Assert.Equal([2L, 3], f.GetInfo("zeta.weight").Shape);
        Assert.Empty(f.GetInfo("scalar").Shape);
        Assert.Equal([0L, 4], f.GetInfo("empty").Shape);
        Assert.Equal(a, f.GetFloat32("zeta.weight").ToArray());
        Assert.Equal(b, f.GetFloat32("scalar").ToArray());
        Assert.True(f.GetFloat32("empty").IsEmpty);
        Assert.Equal(d, f.GetFloat32("alpha.bias").ToArray());

        // Offsets are contiguous, in the order given, and cover the whole data buffer.
        long expected = 0;
        foreach (var name in f.Names)
        {
            var info = f.GetInfo(name);
            Assert.Equal(DType.F32, info.DType);
            Assert.Equal(expected, info.Begin);
            expected = info.End;
        }
        Assert.Equal(expected, f.DataLength);
        Assert.Equal(new FileInfo(path).Length, 8 + f.HeaderLength + f.DataLength);
    }

    [Theory]
    [InlineData("a")]
    [InlineData("ab")]
    [InlineData("abc")]
    [InlineData("abcd")]
    [InlineData("abcde")]
    [InlineData("abcdef")]
    [InlineData("abcdefg")]
    [InlineData("abcdefgh")]
    public void Header_IsPaddedWithSpacesTo8ByteAlignment(string name)
    {
        using var dir = new TempDir();
        string path = dir.File("p.safetensors");
        SafeTensorsWriter.Write(path, [(name, [3], (ReadOnlyMemory<float>)new float[] { 1, 2, 3 })]);
        var bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);
        Assert.Equal(8 + (long)n + 12, bytes.Length);
        var header = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.StartsWith("{", header);
        Assert.EndsWith("}", header.TrimEnd(' '));
        Assert.True(header.TrimEnd(' ').Length > header.Length - 8);
        Assert.Equal([1f, 2f, 3f], MemoryMarshal.Cast<byte, float>(bytes.AsSpan(8 + (int)n)).ToArray());
    }

    [Fact]
    public void Int64Overload_AndMixedEntries_RoundTrip()
    {
        using var dir = new TempDir();
        string ids = dir.File("ids.safetensors");
        SafeTensorsWriter.Write(ids, [("input_ids", [2, 2], (ReadOnlyMemory<long>)new long[] { 1, -2, long.MaxValue, 4 })]);
        using (var f = SafeTensorsFile.Open(ids))
        {
            Assert.Equal(DType.I64, f.GetInfo("input_ids").DType);
            Assert.Equal([1L, -2, long.MaxValue, 4], f.GetInt64("input_ids"));
        }

        string mixed = dir.File("mixed.safetensors");
        SafeTensorsWriter.Write(mixed,
        [
            SafeTensorEntry.F32("logits", [1, 3], new float[] { 0.5f, -1f, 2f }),
            SafeTensorEntry.I64("tokens", [2], new long[] { 17, 42 }),
            SafeTensorEntry.Raw("half", DType.F16, [2], RawSafeTensors.UInt16Bytes([0x3C00, 0xC000])),
        ]);
        using var m = SafeTensorsFile.Open(mixed);
        Assert.Equal([0.5f, -1f, 2f], m.GetFloat32("logits").ToArray());
        Assert.Equal([17L, 42], m.GetInt64("tokens"));
        Assert.Equal([1f, -2f], m.GetFloat32("half").ToArray());
    }

    [Fact]
    public void Write_LeavesNoTemporaryFiles_AndReplacesAnExistingFile()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        SafeTensorsWriter.Write(path, [("x", [2], (ReadOnlyMemory<float>)new float[] { 1, 2 })]);
        SafeTensorsWriter.Write(path, [("y", [3], (ReadOnlyMemory<float>)new float[] { 4, 5, 6 })]);
        Assert.Equal(["model.safetensors"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(["y"], f.Names);
        Assert.Equal([4f, 5f, 6f], f.GetFloat32("y").ToArray());
    }

    static IEnumerable<(string, int[], ReadOnlyMemory<float>)> ThrowsAfterOne()
    {
        yield return ("first", [2], new float[] { 9, 9 });
        throw new InvalidOperationException("producer failed");
    }

    [Fact]
    public void ExceptionMidEnumeration_LeavesThePreviousFileIntact()
    {
        using var dir = new TempDir();
        string path = dir.File("a.safetensors");
        SafeTensorsWriter.Write(path, [("keep", [2], (ReadOnlyMemory<float>)new float[] { 1, 2 })]);
        var before = File.ReadAllBytes(path);

        var e = Assert.Throws<InvalidOperationException>(() => SafeTensorsWriter.Write(path, ThrowsAfterOne()));
        Assert.Equal("producer failed", e.Message);
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(["a.safetensors"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
    }

    /// <summary>Memory whose span cannot be produced: makes the writer fail while streaming data.</summary>
    sealed class FailingMemory(int length) : MemoryManager<float>
    {
        public override Span<float> GetSpan() => throw new IOException("disk went away");
        public override MemoryHandle Pin(int elementIndex = 0) => throw new NotSupportedException();
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
        public override Memory<float> Memory => CreateMemory(length);
    }

    [Fact]
    public void ExceptionWhileStreamingData_DeletesTheTemporaryFile_AndKeepsThePreviousFile()
    {
        using var dir = new TempDir();
        string path = dir.File("b.safetensors");
        SafeTensorsWriter.Write(path, [("keep", [1], (ReadOnlyMemory<float>)new float[] { 7 })]);
        var before = File.ReadAllBytes(path);

        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("ok", [2], new float[] { 1, 2 }),
            ("bad", [4], new FailingMemory(4).Memory),
        };
        var e = Assert.Throws<IOException>(() => SafeTensorsWriter.Write(path, tensors));
        Assert.Equal("disk went away", e.Message);
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(["b.safetensors"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
    }

    [Fact]
    public void DataLengthNotMatchingShape_IsAnArgumentExceptionNamingTheTensor_AndWritesNothing()
    {
        using var dir = new TempDir();
        string path = dir.File("c.safetensors");
        var e = Assert.Throws<ArgumentException>(() =>
            SafeTensorsWriter.Write(path, [("blocks.0.W_Q", [2, 3], (ReadOnlyMemory<float>)new float[5])]));
        Assert.Contains("blocks.0.W_Q", e.Message);
        Assert.Contains("6 elements", e.Message);
        Assert.Contains("5", e.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void DuplicateOrReservedOrNegativeShape_AreArgumentExceptions()
    {
        using var dir = new TempDir();
        string path = dir.File("d.safetensors");
        ReadOnlyMemory<float> one = new float[] { 1 };
        var dup = Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [("x", [1], one), ("x", [1], one)]));
        Assert.Contains("'x'", dup.Message);
        var reserved = Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [("__metadata__", [1], one)]));
        Assert.Contains("__metadata__", reserved.Message);
        var negative = Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [("neg", [-1], one)]));
        Assert.Contains("'neg'", negative.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void GetFloat32_OnF32_IsZeroCopyOverTheMapping_AndUnusableAfterDispose()
    {
        using var dir = new TempDir();
        string path = dir.File("z.safetensors");
        SafeTensorsWriter.Write(path, [("w", [4], (ReadOnlyMemory<float>)new float[] { 1, 2, 3, 4 })]);
        var f = SafeTensorsFile.Open(path);
        var mem = f.GetFloat32("w");
        Assert.True(MemoryMarshal.TryGetMemoryManager<float, NativeMemoryManager<float>>(mem, out var manager));
        Assert.Same(f, manager!.Owner);
        Assert.Equal(3f, mem.Span[2]);
        f.Dispose();
        Assert.Throws<ObjectDisposedException>(() => mem.Span[0]);
        Assert.Throws<ObjectDisposedException>(() => f.GetFloat32("w"));
    }

    [Fact]
    public void RefusesToReplaceAnythingButARegularFile()
    {
        using var dir = new TempDir();
        var tensors = new[] { ("w", new[] { 1 }, (ReadOnlyMemory<float>)new float[] { 1 }) };
        string folder = Directory.CreateDirectory(dir.File("a-folder")).FullName;
        Assert.Throws<InputError>(() => SafeTensorsWriter.Write(folder, tensors));
        Assert.True(Directory.Exists(folder));

        string target = dir.File("target.safetensors");
        File.WriteAllText(target, "keep me");
        string link = dir.File("link.safetensors");
        File.CreateSymbolicLink(link, target);
        Assert.Throws<InputError>(() => SafeTensorsWriter.Write(link, tensors));
        Assert.Equal("keep me", File.ReadAllText(target));
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp-*"));

        string file = dir.File("ok.safetensors");
        SafeTensorsWriter.Write(file, tensors);
        SafeTensorsWriter.Write(file, tensors); // a regular file is replaced
        using var f = SafeTensorsFile.Open(file);
        Assert.Equal([1f], f.GetFloat32("w").ToArray());
    }
}
