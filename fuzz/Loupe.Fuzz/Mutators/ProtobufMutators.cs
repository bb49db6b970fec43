using System.Buffers.Binary;
using System.Text;

namespace Loupe.Fuzz.Mutators;

/// <summary>
/// Protocol-buffer-aware mutations (ONNX models): the wire format is decoded into a tree of fields (length-delimited
/// fields that decode as messages become subtrees), one field anywhere is changed, and the tree is encoded again, so
/// lengths stay consistent and the change reaches the reader's checks: varints set to 0, −1, 2³¹, 2³², 2⁶², 2⁶³ or a
/// random value; a field deleted, duplicated or moved to another wire type; a byte string truncated, emptied, doubled or
/// filled with NaN floats; a length prefix made wrong (the one edit that breaks the framing).
/// </summary>
public static class ProtobufMutators
{
    public static IReadOnlyList<NamedMutator> All { get; } =
    [
        new("pb-varint", Varint),
        new("pb-varint", Varint),
        new("pb-field", Field),
        new("pb-bytes", ByteString),
        new("pb-length", Length),
    ];

    /// <summary>One field: its number and wire type, and a varint, a fixed-width value, raw bytes, or a decoded submessage.</summary>
    public sealed class PbField(int number, int wire)
    {
        public int Number = number;
        public int Wire = wire;
        public ulong Value;
        public byte[] Bytes = [];
        public List<PbField>? Message;
        /// <summary>A wrong length prefix to write instead of the payload's (the bytes that follow are the true payload).</summary>
        public ulong? LengthOverride;
    }

    /// <summary>Decodes a message; null when the bytes are not a well-formed message (then they stay a byte string).</summary>
    public static List<PbField>? Decode(ReadOnlySpan<byte> data, int depth = 0)
    {
        var fields = new List<PbField>();
        int at = 0;
        while (at < data.Length)
        {
            if (!TryVarint(data, ref at, out ulong key)) return null;
            int number = (int)(key >> 3), wire = (int)(key & 7);
            if (number <= 0 || key >> 3 > int.MaxValue) return null;
            var field = new PbField(number, wire);
            switch (wire)
            {
                case 0:
                    if (!TryVarint(data, ref at, out field.Value)) return null;
                    break;
                case 1 or 5:
                    int width = wire == 1 ? 8 : 4;
                    if (at + width > data.Length) return null;
                    field.Bytes = data.Slice(at, width).ToArray();
                    at += width;
                    break;
                case 2:
                    if (!TryVarint(data, ref at, out ulong length) || length > (ulong)(data.Length - at)) return null;
                    field.Bytes = data.Slice(at, (int)length).ToArray();
                    at += (int)length;
                    // A string of printable text is kept as bytes; anything that decodes fully as fields becomes a subtree.
                    if (depth < 8 && field.Bytes.Length > 1 && !LooksLikeText(field.Bytes)) field.Message = Decode(field.Bytes, depth + 1);
                    break;
                default:
                    return null;
            }
            fields.Add(field);
        }
        return fields;
    }

    static bool LooksLikeText(byte[] bytes) => bytes.All(b => b is >= 0x20 and < 0x7F);

    static bool TryVarint(ReadOnlySpan<byte> data, ref int at, out ulong value)
    {
        value = 0;
        for (int shift = 0; shift < 64 && at < data.Length; shift += 7)
        {
            byte b = data[at++];
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return true;
        }
        return false;
    }

    public static byte[] Encode(List<PbField> fields)
    {
        var output = new MemoryStream();
        foreach (var f in fields) Write(output, f);
        return output.ToArray();
    }

    static void Write(MemoryStream output, PbField f)
    {
        WriteVarint(output, ((ulong)f.Number << 3) | (uint)f.Wire);
        switch (f.Wire)
        {
            case 0: WriteVarint(output, f.Value); break;
            case 2:
                var payload = f.Message is null ? f.Bytes : Encode(f.Message);
                WriteVarint(output, f.LengthOverride ?? (ulong)payload.Length);
                output.Write(payload);
                break;
            default: output.Write(f.Bytes); break;
        }
    }

    public static void WriteVarint(Stream output, ulong value)
    {
        while (value >= 0x80)
        {
            output.WriteByte((byte)(value | 0x80));
            value >>= 7;
        }
        output.WriteByte((byte)value);
    }

    /// <summary>Every field in the tree with the list that holds it (for deleting, duplicating and replacing).</summary>
    static List<(PbField Field, List<PbField> Parent, string Path)> All_(List<PbField> root)
    {
        var found = new List<(PbField, List<PbField>, string)>();
        var pending = new Stack<(List<PbField> List, string Path)>([(root, "")]);
        while (pending.TryPop(out var item))
            for (int i = 0; i < item.List.Count; i++)
            {
                var f = item.List[i];
                string path = $"{item.Path}/{f.Number}[{i}]";
                found.Add((f, item.List, path));
                if (f.Message is not null) pending.Push((f.Message, path));
            }
        return found;
    }

    static (byte[], string)? Edit(byte[] bytes, Random rng, Func<(PbField Field, List<PbField> Parent, string Path), bool> eligible,
        Func<(PbField Field, List<PbField> Parent, string Path), Random, string> edit)
    {
        if (Decode(bytes) is not { } root) return null;
        var candidates = All_(root).Where(eligible).ToList();
        if (candidates.Count == 0) return null;
        var chosen = candidates[rng.Next(candidates.Count)];
        string what = edit(chosen, rng);
        return (Encode(root), $"{chosen.Path}: {what}");
    }

    static readonly ulong[] s_varints = [0, 1, 2, 3, 7, 11, ulong.MaxValue, ulong.MaxValue - 1, int.MaxValue, 1UL << 31, 1UL << 32, (1UL << 32) + 1, 1UL << 62, 1UL << 63, 65_536];

    static (byte[], string)? Varint(byte[] b, Random rng) => Edit(b, rng, c => c.Field.Wire == 0, (c, r) =>
    {
        ulong old = c.Field.Value;
        c.Field.Value = r.Next(4) == 0 ? (ulong)r.NextInt64() : s_varints[r.Next(s_varints.Length)];
        return $"varint {old} -> {c.Field.Value}";
    });

    static (byte[], string)? Field(byte[] b, Random rng) => Edit(b, rng, _ => true, (c, r) =>
    {
        int at = c.Parent.IndexOf(c.Field);
        switch (r.Next(4))
        {
            case 0: c.Parent.RemoveAt(at); return "deleted";
            case 1:
                c.Parent.Insert(at, c.Field.Message is null
                    ? new PbField(c.Field.Number, c.Field.Wire) { Value = c.Field.Value, Bytes = c.Field.Bytes }
                    : Decode(Encode([c.Field]))![0]);
                return "duplicated";
            case 2:
                c.Field.Number = r.Next(3) == 0 ? r.Next(1, 1 << 20) : r.Next(1, 16);
                return $"renumbered {c.Field.Number}";
            default:
                int wire = r.Next(4) switch { 0 => 0, 1 => 1, 2 => 2, _ => 5 };
                c.Field.Wire = wire;
                c.Field.Message = null;
                if (wire is 1 or 5) c.Field.Bytes = new byte[wire == 1 ? 8 : 4];
                return $"wire type {wire}";
        }
    });

    static (byte[], string)? ByteString(byte[] b, Random rng) => Edit(b, rng, c => c.Field.Wire == 2, (c, r) =>
    {
        var data = c.Field.Message is null ? c.Field.Bytes : Encode(c.Field.Message);
        c.Field.Message = null;
        switch (r.Next(5))
        {
            case 0: c.Field.Bytes = []; return "emptied";
            case 1: c.Field.Bytes = data[..r.Next(data.Length + 1)]; return $"truncated to {c.Field.Bytes.Length} of {data.Length}";
            case 2: c.Field.Bytes = [.. data, .. data]; return "doubled";
            case 3:
                var nan = (byte[])data.Clone();
                for (int i = 0; i + 4 <= nan.Length; i += 4 * (1 + r.Next(8))) BinaryPrimitives.WriteSingleLittleEndian(nan.AsSpan(i), r.Next(2) == 0 ? float.NaN : float.PositiveInfinity);
                c.Field.Bytes = nan;
                return "NaN/∞ floats written";
            default:
                c.Field.Bytes = Encoding.UTF8.GetBytes(r.Next(2) == 0 ? "embeddings.word_embeddings.weight" : "encoder.layer.0.attention.self.query.bias");
                return "replaced by a weight's name";
        }
    });

    /// <summary>A length prefix made wrong: the framing of the enclosing message breaks from that field on.</summary>
    static (byte[], string)? Length(byte[] b, Random rng) => Edit(b, rng, c => c.Field.Wire == 2, (c, r) =>
    {
        long length = c.Field.Message is null ? c.Field.Bytes.Length : Encode(c.Field.Message).Length;
        ulong[] lengths = [(ulong)length + 1, (ulong)Math.Max(0, length - 1), (ulong)length + 1000, int.MaxValue, (ulong)int.MaxValue + 1, ulong.MaxValue, 0];
        c.Field.LengthOverride = lengths[r.Next(lengths.Length)];
        return $"length prefix {length} -> {c.Field.LengthOverride}";
    });
}
