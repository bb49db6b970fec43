using System.Buffers.Binary;
using System.Text;
using Loupe.Dictionaries.Sae;
using static Loupe.Dictionaries.Tests.Sae.NpyFixtures;

namespace Loupe.Dictionaries.Tests.Sae;

public sealed class NpyTests
{
    static float[] Read(byte[] bytes, out NpyHeader h) => Loupe.Dictionaries.Sae.Npy.ReadFloat32(bytes, "x.npy", out h);

    [Fact]
    public void ReadsLiteralVersion1Float32Bytes()
    {
        // np.save(f, np.array([1.0, -2.0], dtype='<f4')) byte for byte: magic, 1.0, HEADER_LEN = 118 (0x76),
        // the dict padded to 127 − 10 = 118 bytes ending in '\n', then 00 00 80 3F and 00 00 00 C0.
        string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        var bytes = new List<byte> { 0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 0x01, 0x00, 0x76, 0x00 };
        bytes.AddRange(Encoding.ASCII.GetBytes(dict.PadRight(117) + "\n"));
        Assert.Equal(128, bytes.Count);   // the data starts 64-byte aligned
        bytes.AddRange(new byte[] { 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0 });

        var data = Read([.. bytes], out var h);
        Assert.Equal([1f, -2f], data);
        Assert.Equal((1, 0, "<f4", NpyElementType.Float32, false, false), (h.MajorVersion, h.MinorVersion, h.Descr, h.ElementType, h.BigEndian, h.FortranOrder));
        Assert.Equal([2L], h.Shape);
    }

    public static TheoryData<string, byte[]> Dtypes => new()
    {
        { "<f4", F4(0.5f, -1.25f, 3f, 1e-3f, 65504f, -0f) },
        { ">f4", F4BigEndian(0.5f, -1.25f, 3f, 1e-3f, 65504f, -0f) },
        { "<f8", F8(0.5f, -1.25f, 3f, 1e-3f, 65504f, -0f) },
        { "<f2", F2(0.5f, -1.25f, 3f, 1e-3f, 65504f, -0f) },
    };

    [Theory]
    [MemberData(nameof(Dtypes))]
    public void ReadsFloatDtypes(string descr, byte[] data)
    {
        var got = Read(NpyFile(descr, "(2, 3)", data), out var h);
        float tiny = descr == "<f2" ? (float)(Half)1e-3f : 1e-3f;   // binary16 rounds 0.001
        Assert.Equal([0.5f, -1.25f, 3f, tiny, 65504f, -0f], got);
        Assert.Equal([2L, 3L], h.Shape);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void ReadsVersions2And3(int major)
    {
        var got = Read(NpyFile("<f4", "(3,)", F4(1, 2, 3), major: major), out var h);
        Assert.Equal([1f, 2f, 3f], got);
        Assert.Equal(major, h.MajorVersion);
    }

    [Fact]
    public void FortranOrderIsTransposedToRowMajor()
    {
        // a = [[0, 1, 2], [3, 4, 5]] stored column by column.
        var got = Read(NpyFile("<f4", "(2, 3)", F4(0, 3, 1, 4, 2, 5), fortran: true), out _);
        Assert.Equal([0f, 1f, 2f, 3f, 4f, 5f], got);

        // 3-D: element (i, j, k) = 100i + 10j + k, shape (2, 3, 4); Fortran order runs i fastest.
        var f = new List<float>();
        for (int k = 0; k < 4; k++) for (int j = 0; j < 3; j++) for (int i = 0; i < 2; i++) f.Add(100 * i + 10 * j + k);
        var got3 = Read(NpyFile("<f8", "(2, 3, 4)", F8([.. f]), fortran: true), out _);
        var expected = new List<float>();
        for (int i = 0; i < 2; i++) for (int j = 0; j < 3; j++) for (int k = 0; k < 4; k++) expected.Add(100 * i + 10 * j + k);
        Assert.Equal(expected, got3);
    }

    [Fact]
    public void ReadsScalarsAndEmptyArrays()
    {
        Assert.Equal([7f], Read(NpyFile("<f4", "()", F4(7)), out var h));
        Assert.Empty(h.Shape);
        Assert.Empty(Read(NpyFile("<f4", "(0, 3)", []), out h));
        Assert.Equal([0L, 3L], h.Shape);
    }

    [Fact]
    public void AcceptsHeaderSpellingsNumPyHasWritten()
    {
        // Double quotes, keys in another order, Python 2 long suffix, no trailing comma.
        var bytes = NpyFile("<f4", "", F4(1, 2), header: "{\"shape\": (2L,), \"fortran_order\": False, \"descr\": \"<f4\"}");
        Assert.Equal([1f, 2f], Read(bytes, out _));
    }

    public static TheoryData<string, byte[], string> Malformed => new()
    {
        { "wrong magic", [.. Encoding.ASCII.GetBytes("PK\x03\x04 not an array at all")], "magic" },
        { "empty", [], "empty" },
        { "version 4.0", Patch(NpyFile("<f4", "(1,)", F4(1)), 6, 4), "version 4.0" },
        { "truncated data", NpyFile("<f4", "(2, 3)", F4(1, 2, 3, 4, 5)), "truncated" },
        { "truncated header", NpyFile("<f4", "(2,)", F4(1, 2))[..40], "truncated inside the header" },
        { "trailing bytes", NpyFile("<f4", "(1,)", F4(1, 2)), "after the 4 bytes" },
        { "pickled objects", NpyFile("|O", "(1,)", [0x80, 0x04, 0x95]), "pickle" },
        { "bfloat16 as void", NpyFile("<V2", "(1,)", [0, 0]), "bfloat16" },
        { "integers", NpyFile("<i4", "(1,)", [1, 0, 0, 0]), "'<i4'" },
        { "structured", NpyFile("", "", [], header: "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }"), "structured" },
        { "missing shape", NpyFile("", "", [], header: "{'descr': '<f4', 'fortran_order': False, }"), "'shape'" },
        { "extra key", NpyFile("", "", F4(1), header: "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1, }"), "'x'" },
        { "negative dimension", NpyFile("<f4", "(-1,)", []), "non-negative" },
        { "not a literal", NpyFile("", "", [], header: "{'descr': __import__('os'), }"), "malformed header" },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void BadArraysAreRefusedWithTheSourceNamed(string what, byte[] bytes, string expected)
    {
        _ = what;
        var e = Assert.Throws<InputError>(() => Loupe.Dictionaries.Sae.Npy.ReadFloat32(bytes, "params.npz, entry 'W_enc.npy'", out _));
        Assert.StartsWith("params.npz, entry 'W_enc.npy'", e.Message);
        Assert.Contains(expected, e.Message);
    }

    static byte[] Patch(byte[] b, int at, byte v)
    {
        b[at] = v;
        return b;
    }
}

/// <summary>
/// .npy and .npz fixtures written byte by byte from the published layouts (NEP 1 / numpy.lib.format for .npy;
/// PKWARE APPNOTE 4.3 for the zip container), independently of the reader under test.
/// </summary>
static class NpyFixtures
{
    /// <summary>
    /// A .npy file: magic \x93NUMPY, version, little-endian header length (2 bytes in 1.0, 4 in 2.0/3.0), the dict
    /// literal padded with spaces and ended by '\n' so the data starts at a multiple of 64, then the data.
    /// </summary>
    public static byte[] NpyFile(string descr, string shape, byte[] data, bool fortran = false, int major = 1, string? header = null)
    {
        header ??= $"{{'descr': '{descr}', 'fortran_order': {(fortran ? "True" : "False")}, 'shape': {shape}, }}";
        int prefix = 6 + 2 + (major == 1 ? 2 : 4);
        int total = prefix + header.Length + 1;
        int padded = (total + 63) / 64 * 64;
        string text = header + new string(' ', padded - total) + "\n";
        byte[] headerBytes = (major == 3 ? Encoding.UTF8 : Encoding.Latin1).GetBytes(text);
        var ms = new MemoryStream();
        ms.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', (byte)major, 0]);
        if (major == 1) ms.Write([(byte)(headerBytes.Length & 0xFF), (byte)(headerBytes.Length >> 8)]);
        else
        {
            var len = new byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(len, (uint)headerBytes.Length);
            ms.Write(len);
        }
        ms.Write(headerBytes);
        ms.Write(data);
        return ms.ToArray();
    }

    public static byte[] F4(params float[] v) => Bytes(v, 4, (s, x) => BinaryPrimitives.WriteSingleLittleEndian(s, x));
    public static byte[] F4BigEndian(params float[] v) => Bytes(v, 4, (s, x) => BinaryPrimitives.WriteSingleBigEndian(s, x));
    public static byte[] F8(params float[] v) => Bytes(v, 8, (s, x) => BinaryPrimitives.WriteDoubleLittleEndian(s, x));
    public static byte[] F2(params float[] v) => Bytes(v, 2, (s, x) => BinaryPrimitives.WriteHalfLittleEndian(s, (Half)x));

    delegate void Writer(Span<byte> s, float x);

    static byte[] Bytes(float[] v, int size, Writer write)
    {
        var b = new byte[v.Length * size];
        for (int i = 0; i < v.Length; i++) write(b.AsSpan(i * size, size), v[i]);
        return b;
    }

    /// <summary>
    /// A zip with stored (uncompressed) entries laid out as Python's zipfile does for np.savez: every local header
    /// carries a ZIP64 extra field (np.savez opens entries with force_zip64=True), sizes 0xFFFFFFFF in the header.
    /// </summary>
    public static byte[] StoredZip(params (string Name, byte[] Data)[] entries)
    {
        var ms = new MemoryStream();
        var w = new BinaryWriter(ms);
        var offsets = new List<uint>();
        foreach (var (name, data) in entries)
        {
            offsets.Add((uint)ms.Position);
            byte[] n = Encoding.UTF8.GetBytes(name);
            w.Write(0x04034b50u);            // local file header signature
            w.Write((ushort)45);             // version needed: 4.5 (ZIP64)
            w.Write((ushort)0);              // flags
            w.Write((ushort)0);              // method: stored
            w.Write((ushort)0);              // time
            w.Write((ushort)0x21);           // date 1980-01-01
            w.Write(Crc32(data));
            w.Write(0xFFFFFFFFu);            // compressed size: see ZIP64 extra
            w.Write(0xFFFFFFFFu);            // uncompressed size: see ZIP64 extra
            w.Write((ushort)n.Length);
            w.Write((ushort)20);             // extra field length
            w.Write(n);
            w.Write((ushort)0x0001);         // ZIP64 extended information
            w.Write((ushort)16);
            w.Write((ulong)data.Length);     // uncompressed
            w.Write((ulong)data.Length);     // compressed
            w.Write(data);
        }
        uint cdStart = (uint)ms.Position;
        for (int i = 0; i < entries.Length; i++)
        {
            var (name, data) = entries[i];
            byte[] n = Encoding.UTF8.GetBytes(name);
            w.Write(0x02014b50u);            // central directory header signature
            w.Write((ushort)45);             // version made by
            w.Write((ushort)45);             // version needed
            w.Write((ushort)0);
            w.Write((ushort)0);
            w.Write((ushort)0);
            w.Write((ushort)0x21);
            w.Write(Crc32(data));
            w.Write((uint)data.Length);
            w.Write((uint)data.Length);
            w.Write((ushort)n.Length);
            w.Write((ushort)0);              // extra
            w.Write((ushort)0);              // comment
            w.Write((ushort)0);              // disk
            w.Write((ushort)0);              // internal attributes
            w.Write(0u);                     // external attributes
            w.Write(offsets[i]);
            w.Write(n);
        }
        uint cdSize = (uint)ms.Position - cdStart;
        w.Write(0x06054b50u);                // end of central directory
        w.Write((ushort)0);
        w.Write((ushort)0);
        w.Write((ushort)entries.Length);
        w.Write((ushort)entries.Length);
        w.Write(cdSize);
        w.Write(cdStart);
        w.Write((ushort)0);
        w.Flush();
        return ms.ToArray();
    }

    /// <summary>A zip with deflated entries (as np.savez_compressed writes), via the framework's zip writer.</summary>
    public static byte[] DeflatedZip(params (string Name, byte[] Data)[] entries)
    {
        var ms = new MemoryStream();
        using (var zip = new System.IO.Compression.ZipArchive(ms, System.IO.Compression.ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (name, data) in entries)
            {
                var e = zip.CreateEntry(name, System.IO.Compression.CompressionLevel.Optimal);
                using var s = e.Open();
                s.Write(data);
            }
        return ms.ToArray();
    }

    // CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as zip requires.
    static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
        }
        return ~crc;
    }
}
