using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;

namespace Loupe.Fuzz.Mutators;

/// <summary>
/// safetensors-aware mutations: the 8-byte header length off by a little or a lot, data offsets shifted,
/// swapped, overlapping or past the end, shapes and dtypes changed, names duplicated, emptied or made
/// invalid UTF-8, and NaN / infinity / 1e20–3e38 written into an F32 tensor. Header edits keep the framing consistent
/// (the length is rewritten), so they reach the checks after the header.
/// </summary>
public static class SafeTensorsMutators
{
    public static IReadOnlyList<NamedMutator> All { get; } =
    [
        new("st-header-length", HeaderLength),
        new("st-offsets", Offsets),
        new("st-shape", Shape),
        new("st-dtype", DType),
        new("st-name", Name),
        new("st-header-json", HeaderJson),
        new("st-nonfinite", NonFinite),
    ];

    sealed record Parsed(long HeaderLength, JsonObject Header, byte[] Data);

    static Parsed? Parse(byte[] b)
    {
        if (b.Length < 8) return null;
        long n = BinaryPrimitives.ReadInt64LittleEndian(b);
        if (n <= 0 || n > b.Length - 8) return null;
        if (JsonMutators.Parse(b[8..(int)(8 + n)]) is not JsonObject header) return null;
        return new(n, header, b[(int)(8 + n)..]);
    }

    static byte[] Assemble(byte[] header, byte[] data)
    {
        var r = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(r, header.Length);
        header.CopyTo(r, 8);
        data.CopyTo(r, 8 + header.Length);
        return r;
    }

    /// <summary>The node as a long, or null when an earlier mutation made it something else.</summary>
    static long? Long(JsonNode? node) =>
        node is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.Number && v.TryGetValue(out long l) ? l
        : node is JsonValue d && d.GetValueKind() == System.Text.Json.JsonValueKind.Number && d.TryGetValue(out double x) && x is >= long.MinValue and <= long.MaxValue ? (long)x
        : null;

    static List<(string Name, JsonObject Info)> Tensors(JsonObject header) =>
        [.. header.Where(kv => kv.Key != "__metadata__" && kv.Value is JsonObject).Select(kv => (kv.Key, (JsonObject)kv.Value!))];

    static (byte[], string)? HeaderLength(byte[] b, Random rng)
    {
        if (b.Length < 8) return null;
        long n = BinaryPrimitives.ReadInt64LittleEndian(b);
        long[] choices = [n - 1, n + 1, n - 8, n + 8, 0, b.Length, b.Length - 8, long.MaxValue, (1L << 32) + n, -1, 100_000_001];
        long v = choices[rng.Next(choices.Length)];
        var r = (byte[])b.Clone();
        BinaryPrimitives.WriteInt64LittleEndian(r, v);
        return (r, $"header length {n} -> {v}");
    }

    static (byte[], string)? Offsets(byte[] b, Random rng)
    {
        if (Parse(b) is not { } p) return null;
        var tensors = Tensors(p.Header);
        if (tensors.Count == 0) return null;
        var (name, info) = tensors[rng.Next(tensors.Count)];
        if (info["data_offsets"] is not JsonArray { Count: 2 } offsets || Long(offsets[0]) is not long begin || Long(offsets[1]) is not long end) return null;
        string what;
        switch (rng.Next(7))
        {
            case 0: begin += 1; end += 1; what = "shifted +1"; break;
            case 1: begin -= 1; end -= 1; what = "shifted -1"; break;
            case 2: (begin, end) = (end, begin); what = "swapped"; break;
            case 3: end = p.Data.Length + 4; what = "end past the data"; break;
            case 4: begin = 0; what = "begin 0 (overlaps)"; break;
            case 5: end = begin; what = "empty range"; break;
            default: begin = long.MaxValue - 4; end = long.MaxValue; what = "near long.MaxValue"; break;
        }
        info["data_offsets"] = new JsonArray(begin, end);
        return (Assemble(Encoding.UTF8.GetBytes(p.Header.ToJsonString()), p.Data), $"{name}.data_offsets {what}");
    }

    static (byte[], string)? Shape(byte[] b, Random rng)
    {
        if (Parse(b) is not { } p) return null;
        var tensors = Tensors(p.Header);
        if (tensors.Count == 0) return null;
        var (name, info) = tensors[rng.Next(tensors.Count)];
        var shape = info["shape"] is JsonArray a ? a.Select(x => Long(x) ?? 0L).ToList() : [];
        string what;
        switch (rng.Next(7))
        {
            case 0 when shape.Count > 0: shape[rng.Next(shape.Count)] *= 2; what = "one dim doubled"; break;
            case 1 when shape.Count > 0: shape[rng.Next(shape.Count)] = 0; what = "one dim 0"; break;
            case 2 when shape.Count > 0: shape[rng.Next(shape.Count)] = -1; what = "one dim -1"; break;
            case 3 when shape.Count > 1: (shape[0], shape[1]) = (shape[1], shape[0]); what = "dims swapped"; break;
            case 4: shape.Add(1); what = "extra dim 1"; break;
            case 5: shape = [1L << 31, 1L << 31, 4]; what = "huge dims (2^31 x 2^31 x 4)"; break;
            default: shape = []; what = "scalar"; break;
        }
        info["shape"] = new JsonArray([.. shape.Select(d => (JsonNode)JsonValue.Create(d))]);
        return (Assemble(Encoding.UTF8.GetBytes(p.Header.ToJsonString()), p.Data), $"{name}.shape {what}");
    }

    static (byte[], string)? DType(byte[] b, Random rng)
    {
        if (Parse(b) is not { } p) return null;
        var tensors = Tensors(p.Header);
        if (tensors.Count == 0) return null;
        var (name, info) = tensors[rng.Next(tensors.Count)];
        string[] dtypes = ["F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X", ""];
        string d = dtypes[rng.Next(dtypes.Length)];
        info["dtype"] = d;
        return (Assemble(Encoding.UTF8.GetBytes(p.Header.ToJsonString()), p.Data), $"{name}.dtype = {d}");
    }

    static (byte[], string)? Name(byte[] b, Random rng)
    {
        if (Parse(b) is not { } p) return null;
        var tensors = Tensors(p.Header);
        if (tensors.Count == 0) return null;
        var (name, info) = tensors[rng.Next(tensors.Count)];
        var header = Encoding.UTF8.GetBytes(p.Header.ToJsonString());
        var key = Encoding.UTF8.GetBytes(System.Text.Json.JsonSerializer.Serialize(name));
        int at = header.AsSpan().IndexOf(key);
        if (at < 0) return null;
        byte[] replacement;
        string what;
        switch (rng.Next(4))
        {
            case 0: // the name of another tensor: a duplicate key
                var other = tensors[rng.Next(tensors.Count)].Name;
                replacement = Encoding.UTF8.GetBytes(System.Text.Json.JsonSerializer.Serialize(other)); what = $"renamed to {other} (duplicate)"; break;
            case 1: replacement = "\"\""u8.ToArray(); what = "renamed to empty"; break;
            case 2: replacement = [(byte)'"', 0xC3, (byte)'x', 0xFF, (byte)'"']; what = "renamed to invalid UTF-8"; break;
            default: replacement = "\"__metadata__\""u8.ToArray(); what = "renamed to __metadata__"; break;
        }
        byte[] edited = [.. header.AsSpan(0, at), .. replacement, .. header.AsSpan(at + key.Length)];
        return (Assemble(edited, p.Data), $"{name} {what}");
    }

    static (byte[], string)? HeaderJson(byte[] b, Random rng)
    {
        if (Parse(b) is not { } p) return null;
        var json = Encoding.UTF8.GetBytes(p.Header.ToJsonString());
        var mutators = JsonMutators.All;
        var m = mutators[rng.Next(mutators.Count)];
        if (m.Apply(json, rng) is not { } r) return null;
        return (Assemble(r.Bytes, p.Data), "header " + r.What);
    }

    static (byte[], string)? NonFinite(byte[] b, Random rng)
    {
        if (Parse(b) is not { } p) return null;
        var f32 = Tensors(p.Header).Where(t => t.Info["dtype"] is JsonValue d && d.TryGetValue(out string? s) && s == "F32"
            && t.Info["data_offsets"] is JsonArray { Count: 2 } o && Long(o[0]) is not null && Long(o[1]) is not null).ToList();
        if (f32.Count == 0) return null;
        var (name, info) = f32[rng.Next(f32.Count)];
        long begin = Long(info["data_offsets"]![0])!.Value, end = Long(info["data_offsets"]![1])!.Value;
        if (begin < 0 || end - begin < 4 || end > p.Data.Length) return null;
        long element = rng.NextInt64((end - begin) / 4);
        // Non-finite values, and finite ones large enough to overflow a product or a sum of squares (corrupt exponent bytes look like this).
        float[] values = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 3.0e38f, -3.0e38f, 1e20f, -1e30f];
        float v = values[rng.Next(values.Length)];
        var r = (byte[])b.Clone();
        BinaryPrimitives.WriteSingleLittleEndian(r.AsSpan((int)(8 + p.HeaderLength + begin + element * 4)), v);
        return (r, $"{name}[{element}] = {v}");
    }
}
