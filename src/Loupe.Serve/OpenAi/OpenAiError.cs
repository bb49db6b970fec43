using System.Text.Json;

namespace Loupe.Serve.OpenAi;

/// <summary>An error answered in OpenAI's shape: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
public sealed class OpenAiError(int status, string message, string type, string? param, string? code) : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public static OpenAiError Invalid(string message, string? param = null, string? code = null) => new(400, message, "invalid_request_error", param, code);

    public object Body => new { error = new { message = Message, type = Type, param = Param, code = Code } };
}

/// <summary>Typed reads of a request's JSON fields, each failing with an OpenAI-shaped 400 that names the field.</summary>
static class Fields
{
    public static JsonElement? Get(JsonElement obj, string name) =>
        obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public static string? String(JsonElement obj, string name, string? path = null) => Get(obj, name) is { } v
        ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw Wrong(path ?? name, "a string", v)
        : null;

    public static double? Number(JsonElement obj, string name, double min, double max, string? path = null)
    {
        if (Get(obj, name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d) || !double.IsFinite(d)) throw Wrong(path ?? name, "a number", v);
        if (d < min || d > max) throw OpenAiError.Invalid($"'{path ?? name}' must be between {min} and {max}; got {d}", path ?? name, "invalid_value");
        return d;
    }

    public static int? Int(JsonElement obj, string name, int min, int max, string? path = null)
    {
        if (Get(obj, name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long l)) throw Wrong(path ?? name, "an integer", v);
        if (l < min || l > max) throw OpenAiError.Invalid($"'{path ?? name}' must be between {min} and {max}; got {l}", path ?? name, "invalid_value");
        return (int)l;
    }

    public static bool? Bool(JsonElement obj, string name, string? path = null) => Get(obj, name) is { } v
        ? v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Wrong(path ?? name, "a boolean", v)
        : null;

    public static OpenAiError Wrong(string path, string expected, JsonElement found) =>
        OpenAiError.Invalid($"'{path}' must be {expected}; got {Kind(found)}", path, "invalid_type");

    static string Kind(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.String => "a string",
        JsonValueKind.Number => $"the number {v.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => "null",
    };
}
