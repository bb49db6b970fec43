using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace Loupe.Fuzz.Mutators;

/// <summary>
/// .npy header mutations (nested shape tuples, huge and negative dims, other dtypes, fortran order, header
/// length and version bytes) and .npz mutations (a member mutated and the archive rebuilt; members
/// dropped, duplicated, renamed or added).
/// </summary>
public static class NpyMutators
{
    /// <summary>A version 1.0 .npy file of little-endian float32 values.</summary>
    public static byte[] Write(float[] data, params long[] shape) => WriteRaw(MemoryAsBytes(data), "<f4", shape);

    static byte[] MemoryAsBytes(float[] data)
    {
        var bytes = new byte[data.Length * 4];
        Buffer.BlockCopy(data, 0, bytes, 0, bytes.Length);
        return bytes;
    }

    public static byte[] WriteRaw(byte[] data, string descr, long[] shape, string? shapeText = null, string fortran = "False")
    {
        shapeText ??= shape.Length == 1 ? $"({shape[0]},)" : $"({string.Join(", ", shape)})";
        var dict = $"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shapeText}, }}";
        int total = 10 + dict.Length + 1;
        int padded = (total + 63) / 64 * 64;
        dict = dict.PadRight(padded - 10 - 1) + "\n";
        bool v2 = dict.Length > ushort.MaxValue;
        return Assemble(dict, v2, data);
    }

    public static IReadOnlyList<NamedMutator> Npy { get; } =
    [
        new("npy-shape", Shape),
        new("npy-descr", Descr),
        new("npy-fortran", Fortran),
        new("npy-header-length", HeaderLength),
        new("npy-version", Version),
        new("npy-nonfinite", NonFinite),
    ];

    public static IReadOnlyList<NamedMutator> Npz { get; } =
    [
        new("npz-member", MutateMember),
        new("npz-drop", DropMember),
        new("npz-duplicate", DuplicateMember),
        new("npz-rename", RenameMember),
        new("npz-add", AddMember),
    ];

    /// <summary>(header dict text, offset of the data) of a v1/v2 .npy file, or null.</summary>
    static (string Dict, int DataStart, int LengthBytes)? Header(byte[] b)
    {
        if (b.Length < 10 || b[0] != 0x93 || !b.AsSpan(1, 5).SequenceEqual("NUMPY"u8)) return null;
        int lengthBytes = b[6] == 1 ? 2 : 4;
        if (b.Length < 8 + lengthBytes) return null;
        long n = lengthBytes == 2 ? BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(8)) : BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(8));
        int start = 8 + lengthBytes;
        if (start + n > b.Length) return null;
        return (Encoding.Latin1.GetString(b, start, (int)n), start + (int)n, lengthBytes);
    }

    /// <summary>Magic, version (1: 2-byte header length, 2: 4-byte), the header dict, then the data.</summary>
    static byte[] Assemble(string dict, bool v2, byte[] data)
    {
        var header = new List<byte> { 0x93 };
        header.AddRange("NUMPY"u8.ToArray());
        header.Add(v2 ? (byte)2 : (byte)1);
        header.Add(0);
        if (v2) { var n = new byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(n, (uint)dict.Length); header.AddRange(n); }
        else { var n = new byte[2]; BinaryPrimitives.WriteUInt16LittleEndian(n, (ushort)dict.Length); header.AddRange(n); }
        header.AddRange(Encoding.Latin1.GetBytes(dict));
        return [.. header, .. data];
    }

    static byte[] Rebuild(byte[] b, string dict, int dataStart)
    {
        // Keep the version the original had unless the header no longer fits in 2 bytes.
        var data = b[dataStart..];
        bool v2 = dict.Length > ushort.MaxValue || b[6] != 1;
        return Assemble(dict, v2, data);
    }

    static string ReplaceField(string dict, string field, string value)
    {
        var m = System.Text.RegularExpressions.Regex.Match(dict, $"'{field}':\\s*(\\([^)]*\\)|'[^']*'|\\w+)");
        return m.Success ? dict[..m.Groups[1].Index] + value + dict[(m.Groups[1].Index + m.Groups[1].Length)..] : dict;
    }

    static (byte[], string)? Shape(byte[] b, Random rng)
    {
        if (Header(b) is not { } h) return null;
        int depth = rng.Next(2) == 0 ? 10_000 : 100;
        string[] shapes =
        [
            new string('(', depth) + new string(')', depth),
            "(" + new string('(', depth) + "1" + new string(')', depth) + ",)",
            "(4294967296, 4294967296)", "(2147483648,)", "(64, 33554432)", "(-1, 64)", "(0,)", "()", "(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)",
            "(9223372036854775807, 2)", "(99999999999999999999999,)", "(1,,)", "(64 40)", "[64, 40]", "(1e3,)", "'x'", "None",
        ];
        string shape = shapes[rng.Next(shapes.Length)];
        return (Rebuild(b, ReplaceField(h.Dict, "shape", shape), h.DataStart), $"npy shape = {JsonMutators.Describe(shape)}");
    }

    static (byte[], string)? Descr(byte[] b, Random rng)
    {
        if (Header(b) is not { } h) return null;
        string[] descrs = ["'<f8'", "'>f4'", "'<f2'", "'|O'", "'<i4'", "'<i8'", "'|b1'", "'<c8'", "'garbage'", "''", "[('a', '<f4')]", "4"];
        string d = descrs[rng.Next(descrs.Length)];
        return (Rebuild(b, ReplaceField(h.Dict, "descr", d), h.DataStart), $"npy descr = {d}");
    }

    static (byte[], string)? Fortran(byte[] b, Random rng)
    {
        if (Header(b) is not { } h) return null;
        string[] values = ["True", "1", "'x'", "None"];
        string v = values[rng.Next(values.Length)];
        return (Rebuild(b, ReplaceField(h.Dict, "fortran_order", v), h.DataStart), $"npy fortran_order = {v}");
    }

    static (byte[], string)? HeaderLength(byte[] b, Random rng)
    {
        if (Header(b) is not { } h) return null;
        var r = (byte[])b.Clone();
        long n = h.LengthBytes == 2 ? BinaryPrimitives.ReadUInt16LittleEndian(r.AsSpan(8)) : BinaryPrimitives.ReadUInt32LittleEndian(r.AsSpan(8));
        long[] choices = [n - 1, n + 1, 0, 65535, uint.MaxValue, r.Length];
        long v = choices[rng.Next(choices.Length)];
        if (h.LengthBytes == 2) BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(8), (ushort)v);
        else BinaryPrimitives.WriteUInt32LittleEndian(r.AsSpan(8), (uint)v);
        return (r, $"npy header length {n} -> {(h.LengthBytes == 2 ? (ushort)v : (uint)v)}");
    }

    static (byte[], string)? Version(byte[] b, Random rng)
    {
        if (b.Length < 8) return null;
        var r = (byte[])b.Clone();
        byte[] versions = [0, 2, 3, 4, 255];
        r[6] = versions[rng.Next(versions.Length)];
        return (r, $"npy major version = {r[6]}");
    }

    static (byte[], string)? NonFinite(byte[] b, Random rng)
    {
        if (Header(b) is not { } h || !h.Dict.Contains("'<f4'") || b.Length - h.DataStart < 4) return null;
        var r = (byte[])b.Clone();
        int element = rng.Next((b.Length - h.DataStart) / 4);
        float v = rng.Next(2) == 0 ? float.NaN : float.PositiveInfinity;
        BinaryPrimitives.WriteSingleLittleEndian(r.AsSpan(h.DataStart + element * 4), v);
        return (r, $"npy element {element} = {v}");
    }

    // ---- npz ----

    static List<(string Name, byte[] Bytes)>? Members(byte[] b)
    {
        try
        {
            using var zip = new ZipArchive(new MemoryStream(b), ZipArchiveMode.Read);
            var list = new List<(string, byte[])>();
            foreach (var e in zip.Entries)
            {
                if (e.Length > 64 << 20) return null;
                using var s = e.Open();
                var ms = new MemoryStream();
                s.CopyTo(ms);
                list.Add((e.FullName, ms.ToArray()));
            }
            return list;
        }
        catch (Exception e) when (e is InvalidDataException or IOException or NotSupportedException or ArgumentException) { return null; }
    }

    public static byte[] Zip(IEnumerable<(string Name, byte[] Bytes)> members, bool compress = false)
    {
        var ms = new MemoryStream();
        using (var zip = new ZipArchive(ms, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (name, bytes) in members)
            {
                var entry = zip.CreateEntry(name, compress ? CompressionLevel.Fastest : CompressionLevel.NoCompression);
                entry.LastWriteTime = new DateTimeOffset(2024, 1, 1, 0, 0, 0, TimeSpan.Zero); // same bytes every run
                using var s = entry.Open();
                s.Write(bytes);
            }
        return ms.ToArray();
    }

    static (byte[], string)? MutateMember(byte[] b, Random rng)
    {
        if (Members(b) is not { Count: > 0 } members) return null;
        int i = rng.Next(members.Count);
        var pool = rng.Next(3) == 0 ? ByteMutators.All : Npy;
        var m = pool[rng.Next(pool.Count)];
        if (m.Apply(members[i].Bytes, rng) is not { } r) return null;
        members[i] = (members[i].Name, r.Bytes);
        return (Zip(members, compress: rng.Next(2) == 0), $"{members[i].Name}: {m.Name} {r.What}");
    }

    static (byte[], string)? DropMember(byte[] b, Random rng)
    {
        if (Members(b) is not { Count: > 0 } members) return null;
        int i = rng.Next(members.Count);
        var name = members[i].Name;
        members.RemoveAt(i);
        return (Zip(members), $"{name} dropped");
    }

    static (byte[], string)? DuplicateMember(byte[] b, Random rng)
    {
        if (Members(b) is not { Count: > 0 } members) return null;
        var m = members[rng.Next(members.Count)];
        members.Add(m);
        return (Zip(members), $"{m.Name} duplicated");
    }

    static (byte[], string)? RenameMember(byte[] b, Random rng)
    {
        if (Members(b) is not { Count: > 0 } members) return null;
        int i = rng.Next(members.Count);
        string[] names = ["../evil.npy", "/abs.npy", "W_ENC.npy", "W_enc", " ", "W_enc.npy.npy", "dir/W_enc.npy"];
        var old = members[i].Name;
        members[i] = (names[rng.Next(names.Length)], members[i].Bytes);
        return (Zip(members), $"{old} renamed to '{members[i].Name}'");
    }

    static (byte[], string)? AddMember(byte[] b, Random rng)
    {
        if (Members(b) is not { } members) return null;
        members.Add(("extra.npy", Write([1f, 2f], 2)));
        return (Zip(members), "extra.npy added");
    }
}
