using System.Text.Json;
using System.Text.Unicode;

namespace Loupe;

/// <summary>
/// Reading JSON from files Loupe did not write. System.Text.Json accepts escaped lone surrogates
/// (<c>"\ud800"</c>) while parsing and only fails later, with an <see cref="InvalidOperationException"/>
/// that names nothing, when the string is read; invalid UTF-8 fails the same way. Checking the whole
/// text first turns both, and malformed or over-deep JSON, into one <see cref="InputError"/> naming the file and place.
/// </summary>
public static class JsonInput
{
    /// <summary>Refuses text that is not valid UTF-8, not valid JSON, nested deeper than <paramref name="maxDepth"/>, or holds a string that is not valid Unicode.</summary>
    /// <param name="utf8">The file's bytes.</param>
    /// <param name="where">The file (and, for embedded JSON, the field) named in messages.</param>
    /// <param name="maxDepth">The deepest nesting accepted.</param>
    /// <exception cref="InputError">The text is refused; the message names where and why.</exception>
    public static void Validate(ReadOnlySpan<byte> utf8, string where, int maxDepth = 64)
    {
        if (!Utf8.IsValid(utf8))
        {
            int at = FirstInvalidUtf8(utf8);
            throw new InputError($"{where}: expected UTF-8 text, found an invalid byte sequence at byte {at} (0x{utf8[at]:X2})");
        }
        var reader = new Utf8JsonReader(utf8, new JsonReaderOptions { MaxDepth = maxDepth, CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        try
        {
            while (reader.Read())
                if (reader.TokenType is JsonTokenType.String or JsonTokenType.PropertyName && reader.ValueIsEscaped)
                    _ = reader.GetString(); // unescapes: a lone surrogate throws here
        }
        catch (JsonException e)
        {
            throw new InputError($"{where}: expected valid JSON (nested at most {maxDepth} deep), found an error at line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}: {FirstSentence(e.Message)}");
        }
        catch (InvalidOperationException)
        {
            throw new InputError($"{where}: a string at byte {reader.TokenStartIndex}: expected valid Unicode, found an escaped lone surrogate (\\uD800–\\uDFFF without its pair)");
        }
    }

    /// <summary><see cref="Validate"/>, then the parsed document.</summary>
    public static JsonDocument Parse(byte[] utf8, string where, int maxDepth = 64, bool allowDuplicateProperties = true)
    {
        Validate(utf8, where, maxDepth);
        try
        {
            return JsonDocument.Parse(utf8, Options(maxDepth, allowDuplicateProperties));
        }
        catch (JsonException e)
        {
            throw new InputError($"{where}: expected valid JSON, found: {FirstSentence(e.Message)}");
        }
    }

    /// <summary>
    /// <see cref="Validate"/>, then the text as a mutable tree. Duplicate keys are refused: a <see cref="System.Text.Json.Nodes.JsonObject"/>
    /// cannot hold them and would otherwise fail with an exception that names nothing when the key is first looked up.
    /// </summary>
    public static System.Text.Json.Nodes.JsonNode? ParseNode(byte[] utf8, string where, int maxDepth = 64)
    {
        Validate(utf8, where, maxDepth);
        try
        {
            var node = System.Text.Json.Nodes.JsonNode.Parse(utf8, documentOptions: Options(maxDepth, allowDuplicateProperties: false));
            // A JsonObject meets duplicate keys when its properties are first enumerated, not while parsing: do that here.
            if (node is not null) Touch(node);
            return node;
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw new InputError($"{where}: expected valid JSON without repeated keys, found: {FirstSentence(e.Message)}");
        }
    }

    /// <summary>What <see cref="Parse"/> and <see cref="ParseNode"/> accept once <see cref="Validate"/> has passed.</summary>
    static JsonDocumentOptions Options(int maxDepth, bool allowDuplicateProperties) => new()
    {
        MaxDepth = maxDepth, CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true, AllowDuplicateProperties = allowDuplicateProperties,
    };

    static void Touch(System.Text.Json.Nodes.JsonNode root)
    {
        var pending = new Stack<System.Text.Json.Nodes.JsonNode>([root]);
        while (pending.TryPop(out var node))
        {
            if (node is System.Text.Json.Nodes.JsonObject o) { foreach (var (_, v) in o) if (v is not null) pending.Push(v); }
            else if (node is System.Text.Json.Nodes.JsonArray a) { foreach (var v in a) if (v is not null) pending.Push(v); }
        }
    }

    /// <summary>The JSON type of a value as a noun for messages: object, array, string, number, boolean or null.</summary>
    public static string KindName(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Object => "object",
        JsonValueKind.Array => "array",
        JsonValueKind.String => "string",
        JsonValueKind.Number => "number",
        JsonValueKind.True or JsonValueKind.False => "boolean",
        JsonValueKind.Null => "null",
        _ => value.ValueKind.ToString().ToLowerInvariant(),
    };

    static int FirstInvalidUtf8(ReadOnlySpan<byte> utf8)
    {
        int good = 0;
        while (good < utf8.Length)
        {
            var status = System.Text.Rune.DecodeFromUtf8(utf8[good..], out _, out int consumed);
            if (status != System.Buffers.OperationStatus.Done) return good;
            good += consumed;
        }
        return Math.Max(0, utf8.Length - 1);
    }

    static string FirstSentence(string message)
    {
        int end = message.IndexOf(". ", StringComparison.Ordinal);
        return (end > 0 ? message[..end] : message.TrimEnd('.')).ReplaceLineEndings(" ");
    }
}
