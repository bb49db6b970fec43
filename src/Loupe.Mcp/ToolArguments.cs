using System.Globalization;
using System.Text.Json;
using ModelContextProtocol.Protocol;
using ModelContextProtocol.Server;

namespace Loupe.Mcp;

/// <summary>
/// Checks a tool call's arguments against the tool's input schema before the SDK binds them to the method's parameters.
/// Binding fails on a missing required argument or a value of the wrong type (<c>"topK": 1.5</c>, a token id past 2³¹)
/// with an exception the SDK answers as a bare "An error occurred invoking 'tool'." — an agent cannot tell what it sent
/// wrong. Here the call is answered instead with an error result naming the argument, what was expected and what came.
/// </summary>
public static class ToolArguments
{
    /// <summary>The call-tool filter: a call whose arguments do not fit the schema gets an error result and never reaches the tool.</summary>
    public static McpRequestHandler<CallToolRequestParams, CallToolResult> Filter(McpRequestHandler<CallToolRequestParams, CallToolResult> next) =>
        async (context, cancellation) =>
        {
            if (context.MatchedPrimitive is McpServerTool tool && Problem(tool.ProtocolTool.InputSchema, context.Params?.Arguments) is { } problem)
                return new CallToolResult { IsError = true, Content = [new TextContentBlock { Text = $"{tool.ProtocolTool.Name}: {problem}" }] };
            return await next(context, cancellation);
        };

    /// <summary>The first argument that does not fit <paramref name="schema"/> (an object schema: properties, required), or null.</summary>
    public static string? Problem(JsonElement schema, IDictionary<string, JsonElement>? arguments)
    {
        if (schema.ValueKind != JsonValueKind.Object || !schema.TryGetProperty("properties", out var properties) || properties.ValueKind != JsonValueKind.Object) return null;
        if (schema.TryGetProperty("required", out var required) && required.ValueKind == JsonValueKind.Array)
            foreach (var name in required.EnumerateArray())
                if (name.GetString() is { } n && (arguments is null || !arguments.TryGetValue(n, out var given) || given.ValueKind is JsonValueKind.Undefined))
                    return $"argument '{n}' is required";
        if (arguments is null) return null;
        foreach (var (name, value) in arguments)
            if (properties.TryGetProperty(name, out var property) && Mismatch(property, value, name) is { } mismatch)
                return mismatch;
        return null;
    }

    static string? Mismatch(JsonElement schema, JsonElement value, string path)
    {
        var types = TypesOf(schema);
        if (types.Count == 0) return null;
        if (value.ValueKind == JsonValueKind.Null) return types.Contains("null") ? null : Wrong(path, types, value);
        foreach (var type in types)
        {
            bool fits = type switch
            {
                // The tools' integers are 32-bit (ids, counts, layers): a value the SDK could not bind is refused here.
                "integer" => value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out _),
                "number" => value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out double d) && double.IsFinite(d) && Math.Abs(d) <= float.MaxValue,
                "string" => value.ValueKind == JsonValueKind.String,
                "boolean" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
                "object" => value.ValueKind == JsonValueKind.Object,
                "array" => value.ValueKind == JsonValueKind.Array,
                "null" => false, // null itself was answered above
                _ => true,
            };
            if (!fits) continue;
            if (type == "array" && schema.TryGetProperty("items", out var items))
            {
                int i = 0;
                foreach (var item in value.EnumerateArray())
                    if (Mismatch(items, item, $"{path}[{i++}]") is { } inner) return inner;
            }
            return null;
        }
        return Wrong(path, types, value);
    }

    static List<string> TypesOf(JsonElement schema) =>
        !schema.TryGetProperty("type", out var type) ? []
        : type.ValueKind == JsonValueKind.String ? [type.GetString()!]
        : type.ValueKind == JsonValueKind.Array ? [.. type.EnumerateArray().Where(t => t.ValueKind == JsonValueKind.String).Select(t => t.GetString()!)]
        : [];

    static string Wrong(string path, List<string> types, JsonElement value)
    {
        var expected = types.Where(t => t != "null").Select(t => t switch
        {
            "integer" => "an integer between −2³¹ and 2³¹ − 1",
            "number" => "a finite number",
            "array" => "an array",
            "object" => "an object",
            "boolean" => "true or false",
            _ => "a " + t,
        });
        string found = value.ValueKind switch
        {
            JsonValueKind.String => "the string " + InputError.Show(value.GetString()),
            JsonValueKind.Number => value.GetRawText(),
            JsonValueKind.Array => "an array",
            JsonValueKind.Object => "an object",
            JsonValueKind.True or JsonValueKind.False => value.GetRawText(),
            _ => "null",
        };
        return string.Create(CultureInfo.InvariantCulture, $"argument '{path}': expected {string.Join(" or ", expected)}{(types.Contains("null") ? " (or null)" : "")}, found {found}");
    }
}
