using System.Text.Json;

namespace Loupe.Models.Loading;

/// <summary>
/// Typed reads of a Hugging Face (or TransformerLens) config.json; every error names the file
/// and the field.
/// </summary>
public sealed class HfConfig
{
    readonly JsonElement _root;

    HfConfig(string path, JsonElement root)
    {
        Path = path;
        _root = root;
    }

    public string Path { get; }

    /// <exception cref="FileNotFoundException">There is no config.json.</exception>
    /// <exception cref="InvalidDataException">The file is not a JSON object.</exception>
    public static HfConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"model config not found: {path} (a model folder needs config.json)", path);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: expected a JSON object, found {doc.RootElement.ValueKind}");
            return new HfConfig(path, doc.RootElement.Clone());
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path} is not valid JSON: {e.Message}", e);
        }
    }

    public bool Has(string field) => _root.TryGetProperty(field, out var v) && v.ValueKind != JsonValueKind.Null;

    public string? String(string field) => Has(field) && _root.GetProperty(field).ValueKind == JsonValueKind.String ? _root.GetProperty(field).GetString() : null;

    public int Int(string field) => OptionalInt(field) ?? throw Missing(field, "an integer");

    public int? OptionalInt(string field)
    {
        if (!Has(field)) return null;
        var v = _root.GetProperty(field);
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
        if (v.ValueKind == JsonValueKind.Array && v.GetArrayLength() > 0 && v[0].TryGetInt32(out int first)) return first; // eos_token_id lists
        throw new InvalidDataException($"{Path}: field '{field}' should be an integer, found {v.GetRawText()}");
    }

    public double Double(string field, double fallback) => OptionalDouble(field) ?? fallback;

    public double? OptionalDouble(string field)
    {
        if (!Has(field)) return null;
        var v = _root.GetProperty(field);
        if (v.ValueKind == JsonValueKind.Number) return v.GetDouble();
        throw new InvalidDataException($"{Path}: field '{field}' should be a number, found {v.GetRawText()}");
    }

    public bool Bool(string field, bool fallback)
    {
        if (!Has(field)) return fallback;
        var v = _root.GetProperty(field);
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new InvalidDataException($"{Path}: field '{field}' should be true or false, found {v.GetRawText()}"),
        };
    }

    public JsonElement? Element(string field) => Has(field) ? _root.GetProperty(field) : null;

    public InvalidDataException Missing(string field, string what) =>
        new($"{Path}: required field '{field}' ({what}) is missing");
}
