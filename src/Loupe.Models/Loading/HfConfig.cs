using System.Globalization;
using System.Text.Json;

namespace Loupe.Models.Loading;

/// <summary>
/// Typed, range-checked reads of a Hugging Face (or TransformerLens) config.json. Every error is an
/// <see cref="InputError"/> naming the file and the field, what was expected and what was found,
/// so a bad config never reaches an allocation or a division.
/// </summary>
public sealed class HfConfig
{
    /// <summary>Largest config.json read (real ones are a few KB).</summary>
    public const long MaxConfigBytes = 16 << 20;

    /// <summary>Most layers accepted (the largest released models have ~130).</summary>
    public const int MaxLayers = 10_000;

    /// <summary>Widest d_model, d_mlp, d_head and n_heads·d_head accepted (released models stay under 2^17).</summary>
    public const int MaxWidth = 1 << 20;

    /// <summary>Largest vocabulary accepted (released models stay under 2^19).</summary>
    public const int MaxVocab = 1 << 24;

    /// <summary>Longest context accepted; rotary tables grow only as far as positions are used.</summary>
    public const int MaxContext = 1 << 24;

    readonly JsonElement _root;

    HfConfig(string path, JsonElement root)
    {
        Path = path;
        _root = root;
    }

    public string Path { get; }

    /// <exception cref="FileNotFoundException">There is no config.json.</exception>
    /// <exception cref="InputError">The file is too large, not UTF-8, not JSON, or not a JSON object.</exception>
    public static HfConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"model config not found: {path} (a model folder needs config.json)", path);
        // Size, file type, UTF-8, lone surrogates and JSON syntax are all refused here, each naming the file.
        using var doc = JsonInput.Parse(InputFiles.ReadAllBytes(path, MaxConfigBytes), path);
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
            throw new InputError($"{path}: top level: expected a JSON object, found {Kind(doc.RootElement)}");
        return new HfConfig(path, doc.RootElement.Clone());
    }

    /// <summary>
    /// A nested config object (e.g. a multimodal model's <c>text_config</c>) as a config of its own, with
    /// <paramref name="defaults"/> filling the fields it leaves out (as the sub-config class's defaults do in
    /// transformers). Messages name the file and the object.
    /// </summary>
    /// <exception cref="InputError">The field is missing or not a JSON object.</exception>
    public HfConfig Section(string field, IReadOnlyDictionary<string, object?> defaults)
    {
        if (!Has(field)) throw Missing(field, "a JSON object");
        var v = Get(field);
        if (v.ValueKind != JsonValueKind.Object) throw Wrong(field, "a JSON object", v);
        var merged = new System.Text.Json.Nodes.JsonObject();
        foreach (var (key, value) in defaults) merged[key] = System.Text.Json.JsonSerializer.SerializeToNode(value);
        foreach (var p in v.EnumerateObject()) merged[p.Name] = System.Text.Json.Nodes.JsonNode.Parse(p.Value.GetRawText());
        using var doc = JsonDocument.Parse(merged.ToJsonString());
        return new HfConfig($"{Path} ({field})", doc.RootElement.Clone());
    }

    public bool Has(string field) => _root.TryGetProperty(field, out var v) && v.ValueKind != JsonValueKind.Null;

    JsonElement Get(string field) => _root.GetProperty(field);

    /// <summary>A string field, or null when absent or null.</summary>
    /// <exception cref="InputError">The field holds something other than a string.</exception>
    public string? String(string field)
    {
        if (!Has(field)) return null;
        var v = Get(field);
        if (v.ValueKind != JsonValueKind.String) throw Wrong(field, "a string", v);
        try { return v.GetString(); }
        catch (InvalidOperationException) { throw Wrong(field, "a string of valid Unicode", v); }
    }

    /// <summary>A required integer in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    /// <exception cref="InputError">Missing, not an integer, or out of range.</exception>
    public int Int(string field, int min = 1, int max = int.MaxValue) =>
        OptionalInt(field, min, max) ?? throw Missing(field, min >= 1 ? "a positive integer" : "an integer");

    /// <summary>An integer in [<paramref name="min"/>, <paramref name="max"/>], or null when absent or null.</summary>
    /// <exception cref="InputError">Not an integer, or out of range.</exception>
    public int? OptionalInt(string field, int min = 1, int max = int.MaxValue)
    {
        if (!Has(field)) return null;
        var v = Get(field);
        long value = Integer(field, v);
        return Check.InRange(value, min, max, Path, field);
    }

    /// <summary>
    /// A token id (bos_token_id, eos_token_id): an integer, or the first of a list of them, or null.
    /// </summary>
    /// <exception cref="InputError">Not an integer (or list of integers), or negative.</exception>
    public int? OptionalTokenId(string field)
    {
        if (!Has(field)) return null;
        var v = Get(field);
        if (v.ValueKind == JsonValueKind.Array)
        {
            if (v.GetArrayLength() == 0) return null;
            v = v[0];
        }
        return Check.InRange(Integer(field, v), 0, int.MaxValue, Path, field);
    }

    long Integer(string field, JsonElement v)
    {
        if (v.ValueKind == JsonValueKind.Number)
        {
            if (v.TryGetInt64(out long l)) return l;
            // Some exporters write sizes as 64.0; accept integral values, refuse 1.5 and 1e30.
            if (v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < 1e15) return (long)d;
        }
        throw Wrong(field, "an integer", v);
    }

    /// <summary>A number field, or <paramref name="fallback"/> when absent or null; must be finite and in [min, max].</summary>
    /// <exception cref="InputError">Not a number, NaN/∞ (as a string), or out of range.</exception>
    public double Double(string field, double fallback, double min = double.NegativeInfinity, double max = double.PositiveInfinity) =>
        OptionalDouble(field, min, max) ?? fallback;

    /// <summary>A number field, or null when absent or null; must be finite and in [min, max].</summary>
    public double? OptionalDouble(string field, double min = double.NegativeInfinity, double max = double.PositiveInfinity)
    {
        if (!Has(field)) return null;
        var v = Get(field);
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d)) throw Wrong(field, "a number", v);
        return Check.Finite(d, min, max, Path, field);
    }

    /// <summary>A number strictly above zero (and at most <paramref name="max"/>), or the fallback when absent.</summary>
    public double Positive(string field, double fallback, double max = double.MaxValue)
    {
        if (!Has(field)) return fallback;
        var v = Get(field);
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d)) throw Wrong(field, "a number", v);
        if (!double.IsFinite(d) || d <= 0 || d > max)
            throw InputError.Expected(Path, field, max == double.MaxValue ? "a finite number > 0" : $"a number in (0, {InputError.Show(max)}]", d);
        return d;
    }

    public bool Bool(string field, bool fallback)
    {
        if (!Has(field)) return fallback;
        var v = Get(field);
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Wrong(field, "true or false", v),
        };
    }

    public JsonElement? Element(string field) => Has(field) ? Get(field) : null;

    public InputError Missing(string field, string what) =>
        new($"{Path}: required field '{field}' ({what}) is missing");

    /// <summary>"{file}: {field}: expected {expected}, found {the JSON text}".</summary>
    public InputError Wrong(string field, string expected, JsonElement found) =>
        new($"{Path}: {field}: expected {expected}, found {Kind(found)}{(found.ValueKind is JsonValueKind.Null ? "" : " " + Truncate(found.GetRawText()))}");

    /// <summary>An error about a field's value that is not a range (e.g. an unsupported setting).</summary>
    public InputError Invalid(string field, string message) => new($"{Path}: {field}: {message}");

    /// <summary>d / h after checking that h divides d: "hidden_size 64 is not divisible by num_attention_heads 3".</summary>
    public int Quotient(string dividendField, int dividend, string divisorField, int divisor)
    {
        if (divisor <= 0 || dividend % divisor != 0)
            throw new InputError($"{Path}: {dividendField} {dividend} is not divisible by {divisorField} {divisor}");
        return dividend / divisor;
    }

    /// <summary>Checks that a product of sizes (e.g. n_heads·d_head) stays within <paramref name="max"/>.</summary>
    public int ProductWithin(string what, int max, params int[] factors)
    {
        long p = Check.Product(Path, what, max, Array.ConvertAll(factors, f => (long)f));
        return (int)p;
    }

    static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Number => "the number",
        JsonValueKind.Null => "null",
        JsonValueKind.Object or JsonValueKind.Array => "an " + JsonInput.KindName(e),
        _ => "a " + JsonInput.KindName(e),
    };

    static string Truncate(string s) => s.Length <= 60 ? s : s[..57] + "...";

    internal static string Format(double d) => d.ToString("R", CultureInfo.InvariantCulture);
}
