using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Loupe.Fuzz.Mutators;

/// <summary>
/// Structure-aware JSON mutations: a value found by walking the document is replaced by a hostile one
/// (boundary numbers, NaN, wrong types, 10,000-deep arrays, 3 MB strings, invalid UTF-8), a key is
/// duplicated or deleted, or an array element is repeated. The replacement is spliced in as raw bytes, so
/// text that is not valid JSON (NaN, invalid UTF-8, duplicate keys) reaches the parser unchanged.
/// </summary>
public static class JsonMutators
{
    const string Placeholder = "__LOUPE_FUZZ_PLACEHOLDER__";

    static readonly string[] s_numbers =
        ["0", "-1", "1", "2147483647", "2147483648", "-2147483648", "4294967296", "9.2e18", "9223372036854775807", "18446744073709551616",
         "1e308", "-1e308", "1e400", "NaN", "-Infinity", "Infinity", "\"NaN\"", "\"-Infinity\"", "\"string\"", "1.5", "-0", "1e-45", "3"];

    static readonly Func<Random, string>[] s_values =
    [
        _ => "null", _ => "[]", _ => "{}", _ => "true", _ => "\"\"", _ => "\"string\"", _ => "0", _ => "-1", _ => "2147483647", _ => "NaN",
        _ => new string('[', 10_000) + new string(']', 10_000),
        _ => "{\"a\":" + string.Concat(Enumerable.Repeat("{\"a\":", 9_999)) + "1" + new string('}', 10_000),
        _ => "\"" + new string('a', 3 << 20) + "\"",
        _ => "[" + string.Join(",", Enumerable.Repeat("0", 100_000)) + "]",
        _ => "\"../../../../etc/passwd\"", _ => "\"/tmp/loupe-fuzz-absolute\"", _ => "\"\\u0000\"", _ => "\"\\ud800\"", _ => "\"ü☃𝄞\"",
        rng => rng.Next(s_numbers.Length) is var i ? s_numbers[i] : "0",
    ];

    public static IReadOnlyList<NamedMutator> All { get; } =
    [
        new("json-number", ReplaceNumber),
        new("json-value", ReplaceValue),
        new("json-invalid-utf8", InvalidUtf8),
        new("json-duplicate-key", DuplicateKey),
        new("json-delete-key", DeleteKey),
        new("json-repeat-element", RepeatElement),
    ];

    /// <summary>Parses JSON bytes for mutation (null when the bytes no longer are JSON, e.g. after a byte-level step).</summary>
    public static JsonNode? Parse(byte[] bytes)
    {
        try
        {
            var node = JsonNode.Parse(bytes, documentOptions: new JsonDocumentOptions { MaxDepth = 512 });
            // JsonNode decodes lazily: meet duplicate keys and invalid UTF-8 here, not while a mutator walks the tree.
            if (node is not null)
                foreach (var slot in Slots(node))
                    if (slot.Node is JsonValue v && v.GetValueKind() == JsonValueKind.String) _ = v.GetValue<string>();
            return node;
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException) { return null; }
    }

    public sealed record Slot(JsonNode? Node, JsonNode? Parent, string? Key, int Index, string Path);

    /// <summary>Every value in the document with its parent, for replacing it (null JSON values included).</summary>
    public static List<Slot> Slots(JsonNode root)
    {
        var list = new List<Slot> { new(root, null, null, -1, "$") };
        var stack = new Stack<(JsonNode Node, string Path)>();
        stack.Push((root, "$"));
        while (stack.Count > 0)
        {
            var (node, path) = stack.Pop();
            if (node is JsonObject obj)
                foreach (var (key, child) in obj)
                {
                    var p = $"{path}.{key}";
                    list.Add(new(child, obj, key, -1, p));
                    if (child is not null) stack.Push((child, p));
                }
            else if (node is JsonArray arr)
                for (int i = 0; i < arr.Count; i++)
                {
                    var p = $"{path}[{i}]";
                    list.Add(new(arr[i], arr, null, i, p));
                    if (arr[i] is { } c) stack.Push((c, p));
                }
        }
        return list;
    }

    /// <summary>Replaces the value in <paramref name="slot"/> with raw bytes and serializes the document.</summary>
    public static byte[] Splice(JsonNode root, Slot slot, byte[] raw)
    {
        if (slot.Parent is null) return raw;
        var placeholder = JsonValue.Create(Placeholder);
        if (slot.Parent is JsonObject o) o[slot.Key!] = placeholder;
        else ((JsonArray)slot.Parent)[slot.Index] = placeholder;
        var text = Encoding.UTF8.GetBytes(root.ToJsonString());
        var marker = Encoding.UTF8.GetBytes("\"" + Placeholder + "\"");
        int at = text.AsSpan().IndexOf(marker);
        return [.. text.AsSpan(0, at), .. raw, .. text.AsSpan(at + marker.Length)];
    }

    static Slot Pick(List<Slot> slots, Random rng, Func<Slot, bool>? prefer = null)
    {
        if (prefer is not null && rng.Next(4) != 0)
        {
            var preferred = slots.Where(prefer).ToList();
            if (preferred.Count > 0) return preferred[rng.Next(preferred.Count)];
        }
        // Skip the root most of the time: replacing the whole document is one mutation among many.
        return slots.Count > 1 && rng.Next(20) != 0 ? slots[1 + rng.Next(slots.Count - 1)] : slots[0];
    }

    static bool IsNumber(Slot s) => s.Node is JsonValue v && v.GetValueKind() == JsonValueKind.Number;

    static (byte[], string)? ReplaceNumber(byte[] b, Random rng)
    {
        if (Parse(b) is not { } root) return null;
        var slots = Slots(root);
        var numbers = slots.Where(IsNumber).ToList();
        if (numbers.Count == 0) return null;
        var slot = numbers[rng.Next(numbers.Count)];
        string value = s_numbers[rng.Next(s_numbers.Length)];
        return (Splice(root, slot, Encoding.UTF8.GetBytes(value)), $"{slot.Path} = {value}");
    }

    static (byte[], string)? ReplaceValue(byte[] b, Random rng)
    {
        if (Parse(b) is not { } root) return null;
        var slots = Slots(root);
        var slot = Pick(slots, rng);
        string value = s_values[rng.Next(s_values.Length)](rng);
        return (Splice(root, slot, Encoding.UTF8.GetBytes(value)), $"{slot.Path} = {Describe(value)}");
    }

    static (byte[], string)? InvalidUtf8(byte[] b, Random rng)
    {
        if (Parse(b) is not { } root) return null;
        var slots = Slots(root);
        var slot = Pick(slots, rng, s => s.Node is JsonValue v && v.GetValueKind() == JsonValueKind.String);
        byte[][] bad = [[0xFF], [0xC3], [0xED, 0xA0, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0x80, 0x80]];
        var raw = new List<byte> { (byte)'"', (byte)'a' };
        raw.AddRange(bad[rng.Next(bad.Length)]);
        raw.Add((byte)'"');
        return (Splice(root, slot, [.. raw]), $"{slot.Path} = invalid UTF-8 string");
    }

    static (byte[], string)? DuplicateKey(byte[] b, Random rng)
    {
        if (Parse(b) is not { } root) return null;
        var slots = Slots(root).Where(s => s.Parent is JsonObject).ToList();
        if (slots.Count == 0) return null;
        var slot = slots[rng.Next(slots.Count)];
        string original = slot.Node?.ToJsonString() ?? "null";
        string second = rng.Next(2) == 0 ? original : s_values[rng.Next(s_values.Length)](rng);
        string raw = $"{original},{JsonSerializer.Serialize(slot.Key)}:{second}";
        return (Splice(root, slot, Encoding.UTF8.GetBytes(raw)), $"{slot.Path} duplicated as {Describe(second)}");
    }

    static (byte[], string)? DeleteKey(byte[] b, Random rng)
    {
        if (Parse(b) is not { } root) return null;
        var slots = Slots(root).Where(s => s.Parent is JsonObject).ToList();
        if (slots.Count == 0) return null;
        var slot = slots[rng.Next(slots.Count)];
        ((JsonObject)slot.Parent!).Remove(slot.Key!);
        return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"{slot.Path} deleted");
    }

    static (byte[], string)? RepeatElement(byte[] b, Random rng)
    {
        if (Parse(b) is not { } root) return null;
        var slots = Slots(root).Where(s => s.Parent is JsonArray).ToList();
        if (slots.Count == 0) return null;
        var slot = slots[rng.Next(slots.Count)];
        int times = rng.Next(2) == 0 ? 2 : 200;
        string one = slot.Node?.ToJsonString() ?? "null";
        string raw = string.Join(",", Enumerable.Repeat(one, times));
        return (Splice(root, slot, Encoding.UTF8.GetBytes(raw)), $"{slot.Path} repeated {times} times");
    }

    public static string Describe(string value) => value.Length <= 40 ? value : $"{value[..12]}…({value.Length} chars)";
}
