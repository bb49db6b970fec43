using Loupe.Models.Loading;
using static Loupe.Models.Tests.Loading.RawSafeTensors;

namespace Loupe.Models.Tests.Loading;

/// <summary>Every malformed file is an <see cref="InputError"/> naming the file (and tensor).</summary>
public class SafeTensorsValidationTests
{
    static InputError OpenBad(TempDir dir, byte[] bytes, out string path)
    {
        path = dir.File("bad.safetensors");
        File.WriteAllBytes(path, bytes);
        string p = path;
        return Assert.Throws<InputError>(() => SafeTensorsFile.Open(p).Dispose());
    }

    static InputError OpenBad(string header, byte[] data, out string path, out TempDir dir, ulong? headerLength = null)
    {
        dir = new TempDir();
        return OpenBad(dir, Build(header, data, headerLength), out path);
    }

    [Fact]
    public void FileShorterThan8Bytes()
    {
        using var dir = new TempDir();
        var e = OpenBad(dir, [1, 2, 3], out var path);
        Assert.Contains(path, e.Message);
        Assert.Contains("3 bytes", e.Message);
        Assert.Contains("at least 8", e.Message);
    }

    [Fact]
    public void EmptyFile()
    {
        using var dir = new TempDir();
        var e = OpenBad(dir, [], out var path);
        Assert.Contains(path, e.Message);
        Assert.Contains("0 bytes", e.Message);
    }

    [Fact]
    public void HeaderLengthBeyondTheFile()
    {
        var e = OpenBad("{}", [], out var path, out var dir, headerLength: 1000);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("1000", e.Message);
            Assert.Contains("only 2 bytes", e.Message);
        }
    }

    [Fact]
    public void AbsurdHeaderLength()
    {
        var e = OpenBad("{}", [], out var path, out var dir, headerLength: ulong.MaxValue);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains(ulong.MaxValue.ToString(), e.Message);
            Assert.Contains("at most 100000000", e.Message);
        }
    }

    [Theory]
    [InlineData("{\"a\": ")]
    [InlineData("not json at all")]
    [InlineData("{\"a\":{\"dtype\":\"F32\"} trailing")]
    public void HeaderNotValidJson(string header)
    {
        var e = OpenBad(header, [], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("not valid JSON", e.Message);
            Assert.IsAssignableFrom<System.Text.Json.JsonException>(e.InnerException);
        }
    }

    [Theory]
    [InlineData("[1, 2]", "array")]
    [InlineData("\"text\"", "string")]
    [InlineData("42", "number")]
    public void HeaderNotAnObject(string header, string kind)
    {
        var e = OpenBad(header, [], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains($"JSON {kind}; expected a JSON object", e.Message);
        }
    }

    [Theory]
    [InlineData("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "\"dtype\"")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "\"shape\"")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", "\"data_offsets\"")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", "[begin, end]")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0-4\"}}", "[begin, end]")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-1,3]}}", "non-negative")]
    [InlineData("{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", "expected a string")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", "expected an array")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", "shape[0] is 1.5")]
    [InlineData("{\"w\":[0,4]}", "expected an object")]
    public void MissingOrMistypedField_NamesTheTensor(string header, string expected)
    {
        var e = OpenBad(header, new byte[4], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'w'", e.Message);
            Assert.Contains(expected, e.Message);
        }
    }

    [Fact]
    public void UnknownDtype()
    {
        var e = OpenBad(Header(Entry("blocks.0.attn.W_Q", "F33", [1], 0, 4)), new byte[4], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'blocks.0.attn.W_Q'", e.Message);
            Assert.Contains("unknown dtype 'F33'", e.Message);
            Assert.Contains("BF16", e.Message);
        }
    }

    [Fact]
    public void NegativeShape()
    {
        var e = OpenBad(Header(Entry("w", "F32", [2, -3], 0, 0)), [], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'w'", e.Message);
            Assert.Contains("shape[1] is -3", e.Message);
        }
    }

    [Fact]
    public void OverflowingShape()
    {
        var e = OpenBad(Header(Entry("huge", "F32", [1L << 40, 1L << 40], 0, 4)), new byte[4], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'huge'", e.Message);
            Assert.Contains("overflows", e.Message);
        }
    }

    [Fact]
    public void ByteLengthNotMatchingShapeTimesDtypeSize()
    {
        var e = OpenBad(Header(Entry("w", "BF16", [2, 3], 0, 24)), new byte[24], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'w'", e.Message);
            Assert.Contains("span 24 bytes; expected 12", e.Message);
            Assert.Contains("6 elements × 2 bytes of BF16", e.Message);
        }
    }

    [Fact]
    public void EndBeforeBegin()
    {
        var e = OpenBad(Header(Entry("w", "F32", [1], 8, 4)), new byte[8], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'w'", e.Message);
            Assert.Contains("end before they begin", e.Message);
        }
    }

    [Fact]
    public void OffsetsBeyondTheDataBuffer_TruncatedFile()
    {
        // Header says 16 floats; only 10 bytes of data follow.
        var e = OpenBad(Header(Entry("a", "F32", [1], 0, 4), Entry("b", "F32", [4], 4, 20)), new byte[10],
            out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'b'", e.Message);
            Assert.Contains("past the end of the data buffer, which is 10 bytes", e.Message);
            Assert.Contains("truncated", e.Message);
        }
    }

    [Fact]
    public void OverlappingTensors()
    {
        var e = OpenBad(Header(Entry("a", "F32", [2], 0, 8), Entry("b", "F32", [2], 4, 12)), new byte[12],
            out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'a'", e.Message);
            Assert.Contains("'b'", e.Message);
            Assert.Contains("overlap", e.Message);
        }
    }

    [Fact]
    public void DuplicateTensorName()
    {
        var e = OpenBad(Header(Entry("a", "F32", [1], 0, 4), Entry("a", "F32", [1], 4, 8)), new byte[8],
            out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'a' twice", e.Message);
        }
    }

    [Fact]
    public void MetadataValueNotAString()
    {
        var e = OpenBad("{\"__metadata__\":{\"total_size\":12}}", [], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'total_size'", e.Message);
            Assert.Contains("expected a string", e.Message);
        }
    }

    [Fact]
    public void EmptyTensorsAreAllowed_AndDataOrderNeedNotFollowHeaderOrder()
    {
        using var dir = new TempDir();
        var data = new byte[8];
        BitConverter.TryWriteBytes(data.AsSpan(4), 2.5f);
        BitConverter.TryWriteBytes(data.AsSpan(0), -1f);
        string path = Write(dir.File("order.safetensors"),
            Header(Entry("late", "F32", [1], 4, 8), Entry("early", "F32", [1], 0, 4), Entry("none", "F32", [0], 4, 4),
                "\"__metadata__\":{\"format\":\"pt\"}") + "   ",
            data);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(["late", "early", "none"], f.Names);
        Assert.Equal([2.5f], f.GetFloat32("late").ToArray());
        Assert.Equal([-1f], f.GetFloat32("early").ToArray());
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(4, f.GetBytes("early").Length);
    }

    [Fact]
    public void HoleBetweenTensors_IsRefused()
    {
        var e = OpenBad(Header(Entry("a", "F32", [1], 0, 4), Entry("b", "F32", [1], 8, 12)), new byte[12], out var path, out var dir);
        using (dir)
        {
            Assert.Contains(path, e.Message);
            Assert.Contains("'b'", e.Message);
            Assert.Contains("expected 4", e.Message);
        }
    }

    [Fact]
    public void FirstTensorNotAtZero_IsRefused()
    {
        var e = OpenBad(Header(Entry("a", "F32", [1], 4, 8)), new byte[8], out _, out var dir);
        using (dir) Assert.Contains("expected 0", e.Message);
    }

    [Fact]
    public void TrailingBytesAfterTheLastTensor_AreRefused()
    {
        var e = OpenBad(Header(Entry("a", "F32", [1], 0, 4)), new byte[5], out _, out var dir);
        using (dir) Assert.Contains("end exactly at the end of the file", e.Message);
    }

    /// <summary>The silent NaN table: a header length one short still parses (the last byte is padding), and every tensor shifts.</summary>
    [Fact]
    public void HeaderLengthOneShort_IsRefused_ThoughTheJsonStillParses()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        var data = new byte[16];
        for (int i = 0; i < 4; i++) BitConverter.TryWriteBytes(data.AsSpan(4 * i), i + 1f);
        // A header padded with spaces, as writers pad it to align the data.
        string header = Header(Entry("w", "F32", [4], 0, 16)) + "   ";
        File.WriteAllBytes(path, Build(header, data));
        using (var good = SafeTensorsFile.Open(path)) Assert.Equal([1f, 2f, 3f, 4f], good.GetFloat32("w").ToArray());
        for (int k = 1; k <= 3; k++)
        {
            File.WriteAllBytes(path, Build(header, data, (ulong)(header.Length - k)));
            var e = Assert.Throws<InputError>(() => SafeTensorsFile.Open(path).Dispose());
            Assert.Contains(path, e.Message);
        }
    }

    [Fact]
    public void InvalidUtf8InATensorName_NamesTheFile()
    {
        using var dir = new TempDir();
        var header = System.Text.Encoding.UTF8.GetBytes(Header(Entry("wXX", "F32", [1], 0, 4)));
        int at = Array.IndexOf(header, (byte)'X');
        header[at] = 0xC3; header[at + 1] = 0x28; // an invalid two-byte sequence
        var bytes = new byte[8 + header.Length + 4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        var e = OpenBad(dir, bytes, out var path);
        Assert.Contains(path, e.Message);
        Assert.Contains("UTF-8", e.Message);
        Assert.DoesNotContain("transcode", e.Message);
    }

    [Fact]
    public void EscapedLoneSurrogateInATensorName_NamesTheFile()
    {
        var e = OpenBad(Header(Entry("w\\ud800", "F32", [1], 0, 4)), new byte[4], out var path, out var dir);
        using (dir) Assert.Contains(path, e.Message);
    }

    [Fact]
    public void HugeTensorCount_IsRefusedOnBytesNotAllocation()
    {
        // Shape product fits in a long but the data is absent: refused by the byte check, nothing allocated.
        var e = OpenBad(Header(Entry("w", "F32", [1L << 40, 1L << 20], 0, 1L << 62)), new byte[4], out _, out var dir);
        using (dir) Assert.Contains("'w'", e.Message);
    }

    [Fact]
    public void NonexistentFile_IsFileNotFound()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<FileNotFoundException>(() => SafeTensorsFile.Open(dir.File("nope.safetensors")));
        Assert.Contains(dir.File("nope.safetensors"), e.Message);
    }

    [Fact]
    public void GetFloat32_OnAnIntegerTensor_NamesTensorFileAndDtype()
    {
        using var dir = new TempDir();
        string path = dir.File("ids.safetensors");
        SafeTensorsWriter.Write(path, [("input_ids", [2], (ReadOnlyMemory<long>)new long[] { 1, 2 })]);
        using var f = SafeTensorsFile.Open(path);
        var e = Assert.Throws<InputError>(() => f.GetFloat32("input_ids"));
        Assert.Equal($"{path}: tensor 'input_ids' has dtype I64; expected a floating-point dtype (F32, F16, BF16 or F64)", e.Message);
    }

    [Fact]
    public void GetInt64_OnAFloatTensor_NamesTensorFileAndDtype()
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        SafeTensorsWriter.Write(path, [("w", [1], (ReadOnlyMemory<float>)new float[] { 1 })]);
        using var f = SafeTensorsFile.Open(path);
        var e = Assert.Throws<InputError>(() => f.GetInt64("w"));
        Assert.Contains($"{path}: tensor 'w' has dtype F32; expected an integer dtype", e.Message);
    }

    [Fact]
    public void MissingTensor_IsAnInputError_NamingTensorFileAndNearMatches()
    {
        using var dir = new TempDir();
        string path = dir.File("m.safetensors");
        ReadOnlyMemory<float> one = new float[] { 1 };
        SafeTensorsWriter.Write(path,
        [
            ("transformer.h.0.attn.c_attn.weight", [1], one),
            ("transformer.h.1.attn.c_attn.weight", [1], one),
            ("transformer.wte.weight", [1], one),
        ]);
        using var f = SafeTensorsFile.Open(path);
        var e = Assert.Throws<InputError>(() => f.GetInfo("transformer.h.0.attn.c_atn.weight"));
        Assert.Contains("'transformer.h.0.attn.c_atn.weight'", e.Message);
        Assert.Contains(path, e.Message);
        Assert.Contains("did you mean 'transformer.h.0.attn.c_attn.weight'", e.Message);
        Assert.False(f.Contains("transformer.h.0.attn.c_atn.weight"));

        var e2 = Assert.Throws<InputError>(() => f.GetFloat32("wte.weight"));
        Assert.Contains("'transformer.wte.weight'", e2.Message);

        var e3 = Assert.Throws<InputError>(() => f.GetBytes("zzzzzzzzzzzzzzzzzzzzzz").Length);
        Assert.Contains("it has", e3.Message); // few tensors, no near match: lists them
    }
}
