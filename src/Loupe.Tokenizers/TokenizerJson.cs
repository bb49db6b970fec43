using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Loupe.Tokenizers;

/// <summary>
/// Reads Hugging Face <c>tokenizer.json</c> (and <c>tokenizer_config.json</c>) into a <see cref="Tokenizer"/>.
/// Every error names the file and the JSON location that was wrong.
/// </summary>
internal static class TokenizerJson
{
    static readonly JsonDocumentOptions DocOptions = new()
    {
        AllowTrailingCommas = true,
        CommentHandling = JsonCommentHandling.Skip,
        MaxDepth = 256,
    };

    /// <summary>
    /// Parses a JSON file. Invalid UTF-8, malformed JSON and strings that do not decode (lone
    /// surrogate escapes) are <see cref="InputError"/>s naming the file and the line and byte;
    /// later reads of strings from the document therefore cannot fail.
    /// </summary>
    internal static JsonDocument ReadJson(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"Tokenizer file '{path}' does not exist.", path);
        InputFiles.EnsureRegularFile(path);
        ReadOnlyMemory<byte> bytes = File.ReadAllBytes(path);
        if (bytes.Span.StartsWith("\uFEFF"u8)) bytes = bytes[3..];
        if (!System.Text.Unicode.Utf8.IsValid(bytes.Span))
            throw new InputError($"{path}: not valid UTF-8 at {Position(bytes.Span, FirstInvalidUtf8(bytes.Span))}");
        var readerOptions = new JsonReaderOptions
        {
            AllowTrailingCommas = DocOptions.AllowTrailingCommas,
            CommentHandling = DocOptions.CommentHandling,
            MaxDepth = DocOptions.MaxDepth,
        };
        var reader = new Utf8JsonReader(bytes.Span, readerOptions);
        try
        {
            while (reader.Read())
            {
                // Unescaped strings are valid UTF-8 (checked above); escaped ones may hold a lone surrogate.
                if (reader.TokenType is JsonTokenType.String or JsonTokenType.PropertyName && reader.ValueIsEscaped)
                {
                    try
                    {
                        reader.GetString();
                    }
                    catch (InvalidOperationException)
                    {
                        throw new InputError($"{path}: the string at {Position(bytes.Span, (int)reader.TokenStartIndex)} "
                            + "holds an escape that is not valid UTF-16 (a lone surrogate such as \\ud800)");
                    }
                }
            }
            return JsonDocument.Parse(bytes, DocOptions);
        }
        catch (JsonException e)
        {
            var reason = e.Message;
            var cut = reason.IndexOf(" Path:", StringComparison.Ordinal);
            if (cut < 0) cut = reason.IndexOf(" LineNumber:", StringComparison.Ordinal);
            if (cut > 0) reason = reason[..cut];
            var where = e.LineNumber is long line && e.BytePositionInLine is long col ? $"line {line + 1}, byte {col + 1}" : "an unknown position";
            throw new InputError($"{path}: not valid JSON at {where} (truncated or malformed): {reason.ReplaceLineEndings(" ").TrimEnd('.')}", e);
        }
    }

    /// <summary>Offset of the first byte that does not start a valid UTF-8 sequence.</summary>
    internal static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        var offset = 0;
        while (offset < bytes.Length)
        {
            if (Rune.DecodeFromUtf8(bytes[offset..], out _, out var used) != System.Buffers.OperationStatus.Done) return offset;
            offset += used;
        }
        return offset;
    }

    /// <summary>"line L, byte B (offset O)" of a byte offset, both 1-based like an editor shows them.</summary>
    internal static string Position(ReadOnlySpan<byte> bytes, int offset)
    {
        var before = bytes[..Math.Min(offset, bytes.Length)];
        var line = before.Count((byte)'\n') + 1;
        var lineStart = before.LastIndexOf((byte)'\n') + 1;
        return $"line {line}, byte {offset - lineStart + 1} (file offset {offset})";
    }

    public static Tokenizer Load(string path, string? configPath, string? specialTokensMapPath = null)
    {
        using var doc = ReadJson(path);
        var ctx = new Ctx(Path.GetFileName(path), path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw ctx.Expected("", "a JSON object at the top level", root);

        if (!root.TryGetProperty("model", out var modelEl)) throw ctx.Bad("model", "the model object is missing");
        if (modelEl.ValueKind != JsonValueKind.Object) throw ctx.Expected("model", "an object", modelEl);
        var normalizer = ParseNormalizer(ctx, Prop(root, "normalizer"), "normalizer");
        var preTokenizer = ParsePreTokenizer(ctx, Prop(root, "pre_tokenizer"), "pre_tokenizer");
        var model = ParseModel(ctx, modelEl);
        var addedTokens = ParseAddedTokens(ctx, Prop(root, "added_tokens"), model);
        bool IsToken(int id) => model.IdToToken(id) is not null || addedTokens.Any(a => a.Id == id);
        var postProcessor = ParsePostProcessor(ctx, Prop(root, "post_processor"), "post_processor", IsToken);
        var decoder = ParseDecoder(ctx, Prop(root, "decoder"), "decoder");

        var settings = new SpecialTokenSettings();
        if (specialTokensMapPath is not null) settings = ReadSpecialTokenSettings(specialTokensMapPath, settings);
        if (configPath is not null) settings = ReadSpecialTokenSettings(configPath, settings);
        return new Tokenizer(model, normalizer, preTokenizer, postProcessor, decoder, addedTokens, settings);
    }

    /// <summary>Reads special token names and add_bos_token/add_eos_token from a tokenizer_config.json-like file.</summary>
    internal static SpecialTokenSettings ReadSpecialTokenSettings(string path, SpecialTokenSettings settings)
    {
        using var doc = ReadJson(path);
        var ctx = new Ctx(Path.GetFileName(path), path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw ctx.Expected("", "a JSON object at the top level", root);

        (bool, string?)? Name(string key)
        {
            if (!root.TryGetProperty(key, out var el)) return null;
            return el.ValueKind switch
            {
                JsonValueKind.Null => (true, null),
                JsonValueKind.String => (true, el.GetString()),
                JsonValueKind.Object when el.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => (true, c.GetString()),
                _ => throw ctx.Expected(key, "a token string, an object with a string \"content\", or null", el),
            };
        }

        bool? Flag(string key)
        {
            if (!root.TryGetProperty(key, out var el) || el.ValueKind == JsonValueKind.Null) return null;
            return el.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw ctx.Expected(key, "true or false", el),
            };
        }

        if (Name("bos_token") is var (hb, b)) settings = settings with { HasBos = hb, Bos = b };
        if (Name("eos_token") is var (he, e)) settings = settings with { HasEos = he, Eos = e };
        if (Name("pad_token") is var (hp, p)) settings = settings with { HasPad = hp, Pad = p };
        if (Name("unk_token") is var (hu, u)) settings = settings with { HasUnk = hu, Unk = u };
        if (Flag("add_bos_token") is bool ab) settings = settings with { AddBosToken = ab };
        if (Flag("add_eos_token") is bool ae) settings = settings with { AddEosToken = ae };
        return settings;
    }

    /// <summary>File name and path used in error messages.</summary>
    internal sealed record Ctx(string Name, string Path)
    {
        /// <summary>"{path}: {where}: {what}" — <paramref name="where"/> is the JSON location (empty for the whole file).</summary>
        public InputError Bad(string where, string what) =>
            new($"{Path}: {(where.Length > 0 ? where + ": " : "")}{what}");

        /// <summary>"{path}: {where}: expected {expected}, found {what the JSON holds}".</summary>
        public InputError Expected(string where, string expected, JsonElement found) =>
            Bad(where, $"expected {expected}, found {Describe(found)}");

        public InputError Unsupported(string where, string kind, string type, string supported) =>
            Bad(where, $"expected a {kind} type Loupe.Tokenizers supports ({supported}), found {InputError.Show(type)}");
    }

    /// <summary>What a JSON value is, for "found …" in messages.</summary>
    internal static string Describe(JsonElement el) => el.ValueKind switch
    {
        JsonValueKind.String => $"the string {InputError.Show(el.GetString())}",
        JsonValueKind.Number => $"the number {(el.GetRawText() is var raw && raw.Length > 40 ? raw[..37] + "..." : raw)}",
        JsonValueKind.True => "true",
        JsonValueKind.False => "false",
        JsonValueKind.Null => "null",
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => $"an array of {el.GetArrayLength()}",
        _ => el.ValueKind.ToString(),
    };

    /// <summary><c>parent["name"]</c>, the location of an object member whose name is data (a vocabulary token).</summary>
    internal static string Member(string parent, string name) => $"{parent}[{InputError.Show(name)}]";

    /// <summary>A token id: an integer in [0, <see cref="Limits.MaxTokenId"/>].</summary>
    internal static int Id(Ctx ctx, JsonElement el, string where)
    {
        if (el.ValueKind != JsonValueKind.Number || !el.TryGetInt64(out var id)) throw ctx.Expected(where, "an integer id", el);
        if (id < 0 || id > Limits.MaxTokenId)
            throw ctx.Bad(where, $"expected an id in [0, {Limits.MaxTokenId}], found {id}");
        return (int)id;
    }

    /// <summary>A string that is inserted into text (prefix, suffix, replacement): at most <see cref="Limits.MaxInsertedLength"/> characters.</summary>
    static string Inserted(Ctx ctx, string value, string where)
    {
        if (value.Length > Limits.MaxInsertedLength)
            throw ctx.Bad(where, $"expected at most {Limits.MaxInsertedLength} characters, found {value.Length:N0}");
        return value;
    }

    /// <summary>A string that must be exactly one character (one code point).</summary>
    static Rune SingleChar(Ctx ctx, string value, string where)
    {
        if (value.Length == 0 || Rune.DecodeFromUtf16(value, out var rune, out var len) != System.Buffers.OperationStatus.Done || len != value.Length)
            throw ctx.Bad(where, $"expected a single character, found {InputError.Show(value)}");
        return rune;
    }

    static JsonElement? Prop(JsonElement obj, string name) =>
        obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    static string TypeOf(Ctx ctx, JsonElement el, string where)
    {
        if (el.ValueKind != JsonValueKind.Object) throw ctx.Expected(where, "an object", el);
        if (!el.TryGetProperty("type", out var t)) throw ctx.Bad($"{where}.type", "the type field is missing");
        if (t.ValueKind != JsonValueKind.String) throw ctx.Expected($"{where}.type", "a type name", t);
        return t.GetString()!;
    }

    static string Str(Ctx ctx, JsonElement obj, string name, string where, string? defaultValue = null)
    {
        if (obj.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String) return v.GetString()!;
        if (defaultValue is not null && (!obj.TryGetProperty(name, out v) || v.ValueKind == JsonValueKind.Null)) return defaultValue;
        if (!obj.TryGetProperty(name, out v)) throw ctx.Bad($"{where}.{name}", "the field is missing (expected a string)");
        throw ctx.Expected($"{where}.{name}", "a string", v);
    }

    static string? OptStr(Ctx ctx, JsonElement obj, string name, string where)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String) throw ctx.Expected($"{where}.{name}", "a string or null", v);
        return v.GetString();
    }

    static bool Bool(Ctx ctx, JsonElement obj, string name, string where, bool defaultValue)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return defaultValue;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ctx.Expected($"{where}.{name}", "true or false", v),
        };
    }

    static int Count(Ctx ctx, JsonElement obj, string name, string where, int defaultValue)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return defaultValue;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var i) || i < 0)
            throw ctx.Expected($"{where}.{name}", "a non-negative integer", v);
        return i;
    }

    static JsonElement Array(Ctx ctx, JsonElement obj, string name, string where)
    {
        if (!obj.TryGetProperty(name, out var v)) throw ctx.Bad($"{where}.{name}", "the field is missing (expected an array)");
        if (v.ValueKind != JsonValueKind.Array) throw ctx.Expected($"{where}.{name}", "an array", v);
        return v;
    }

    static UnicodeRegex CompileRegex(Ctx ctx, string pattern, string where)
    {
        if (pattern.Length > Limits.MaxPatternLength)
            throw ctx.Bad(where, $"expected a pattern of at most {Limits.MaxPatternLength:N0} characters, found {pattern.Length:N0}");
        try
        {
            return UnicodeRegex.FromFile(pattern, $"{ctx.Path}: {where}");
        }
        catch (ArgumentException e)
        {
            throw ctx.Bad(where, $"expected a regular expression .NET can compile, found {InputError.Show(pattern)} ({e.Message.ReplaceLineEndings(" ")})");
        }
    }

    /// <summary>A <c>{"String": ...}</c> or <c>{"Regex": ...}</c> pattern: (literal, regex).</summary>
    static (string? Literal, UnicodeRegex? Regex) ParsePattern(Ctx ctx, JsonElement obj, string where)
    {
        const string expected = "{\"String\": \"...\"} or {\"Regex\": \"...\"}";
        if (!obj.TryGetProperty("pattern", out var p)) throw ctx.Bad($"{where}.pattern", $"the field is missing (expected {expected})");
        if (p.ValueKind != JsonValueKind.Object) throw ctx.Expected($"{where}.pattern", expected, p);
        if (p.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String) return (s.GetString()!, null);
        if (p.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String)
            return (null, CompileRegex(ctx, r.GetString()!, $"{where}.pattern.Regex"));
        throw ctx.Bad($"{where}.pattern", $"expected {expected}, found an object without either");
    }

    // ---------------------------------------------------------------- normalizers

    static Normalizer? ParseNormalizer(Ctx ctx, JsonElement? el, string where)
    {
        if (el is not { } n) return null;
        var type = TypeOf(ctx, n, where);
        switch (type)
        {
            case "Sequence":
                {
                    var list = Array(ctx, n, "normalizers", where);
                    var items = new List<Normalizer>();
                    var i = 0;
                    foreach (var child in list.EnumerateArray())
                    {
                        if (ParseNormalizer(ctx, child.ValueKind == JsonValueKind.Null ? null : child, $"{where}.normalizers[{i}]") is { } c) items.Add(c);
                        i++;
                    }
                    return new SequenceNormalizer(items, $"{ctx.Path}: {where}");
                }
            case "Prepend": return new PrependNormalizer(Inserted(ctx, Str(ctx, n, "prepend", where), $"{where}.prepend"));
            case "Append": return new AppendNormalizer(Inserted(ctx, Str(ctx, n, "append", where), $"{where}.append"));
            case "Replace":
                {
                    var (literal, regex) = ParsePattern(ctx, n, where);
                    return new ReplaceNormalizer(literal, regex, Inserted(ctx, Str(ctx, n, "content", where), $"{where}.content"), $"{ctx.Path}: {where}");
                }
            case "NFC": return new UnicodeNormalizer(NormalizationForm.FormC);
            case "NFD": return new UnicodeNormalizer(NormalizationForm.FormD);
            case "NFKC": return new UnicodeNormalizer(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeNormalizer(NormalizationForm.FormKD);
            case "Lowercase": return new LowercaseNormalizer();
            case "Strip":
                return new StripNormalizer(Bool(ctx, n, "strip_left", where, true), Bool(ctx, n, "strip_right", where, true));
            case "StripAccents": return new StripAccentsNormalizer();
            case "ByteLevel": return new ByteLevelNormalizer();
            default:
                throw ctx.Unsupported($"{where}.type", "normalizer", type,
                    "Sequence, Prepend, Append, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, ByteLevel");
        }
    }

    // ---------------------------------------------------------------- pre-tokenizers

    static SplitBehavior ParseBehavior(Ctx ctx, JsonElement obj, string where, SplitBehavior defaultValue)
    {
        var s = OptStr(ctx, obj, "behavior", where);
        return s switch
        {
            null => defaultValue,
            "Removed" => SplitBehavior.Removed,
            "Isolated" => SplitBehavior.Isolated,
            "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
            "MergedWithNext" => SplitBehavior.MergedWithNext,
            "Contiguous" => SplitBehavior.Contiguous,
            _ => throw ctx.Bad($"{where}.behavior", $"expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous, found {InputError.Show(s)}"),
        };
    }

    static PrependScheme ParsePrependScheme(Ctx ctx, JsonElement obj, string where)
    {
        var s = OptStr(ctx, obj, "prepend_scheme", where);
        return s switch
        {
            // Files older than prepend_scheme only have add_prefix_space.
            null => Bool(ctx, obj, "add_prefix_space", where, true) ? PrependScheme.Always : PrependScheme.Never,
            "always" => PrependScheme.Always,
            "first" => PrependScheme.First,
            "never" => PrependScheme.Never,
            _ => throw ctx.Bad($"{where}.prepend_scheme", $"expected always, first or never, found {InputError.Show(s)}"),
        };
    }

    static string ParseReplacement(Ctx ctx, JsonElement obj, string where)
    {
        var r = Str(ctx, obj, "replacement", where, "\u2581");
        SingleChar(ctx, r, $"{where}.replacement");
        return r;
    }

    static PreTokenizer? ParsePreTokenizer(Ctx ctx, JsonElement? el, string where)
    {
        if (el is not { } p) return null;
        var type = TypeOf(ctx, p, where);
        switch (type)
        {
            case "Sequence":
                {
                    var list = Array(ctx, p, "pretokenizers", where);
                    var items = new List<PreTokenizer>();
                    var i = 0;
                    foreach (var child in list.EnumerateArray())
                    {
                        if (ParsePreTokenizer(ctx, child.ValueKind == JsonValueKind.Null ? null : child, $"{where}.pretokenizers[{i}]") is { } c) items.Add(c);
                        i++;
                    }
                    return new SequencePreTokenizer(items, $"{ctx.Path}: {where}");
                }
            case "ByteLevel":
                return new ByteLevelPreTokenizer(Bool(ctx, p, "add_prefix_space", where, true), Bool(ctx, p, "use_regex", where, true));
            case "Split":
                {
                    var (literal, regex) = ParsePattern(ctx, p, where);
                    // HF compiles a String pattern as an escaped regex.
                    regex ??= CompileRegex(ctx, Regex.Escape(literal!), $"{where}.pattern.String");
                    if (!p.TryGetProperty("behavior", out _)) throw ctx.Bad($"{where}.behavior", "the split behavior is missing");
                    var behavior = ParseBehavior(ctx, p, where, SplitBehavior.Removed);
                    return new SplitPreTokenizer(regex, behavior, Bool(ctx, p, "invert", where, false));
                }
            case "Metaspace":
                return new MetaspacePreTokenizer(ParseReplacement(ctx, p, where), ParsePrependScheme(ctx, p, where),
                    Bool(ctx, p, "split", where, true));
            case "Digits": return new DigitsPreTokenizer(Bool(ctx, p, "individual_digits", where, false));
            case "Punctuation": return new PunctuationPreTokenizer(ParseBehavior(ctx, p, where, SplitBehavior.Isolated));
            case "Whitespace": return new WhitespacePreTokenizer();
            case "WhitespaceSplit": return new CharSplitPreTokenizer(Splitting.IsWhiteSpace);
            case "BertPreTokenizer": return new BertPreTokenizer();
            case "CharDelimiterSplit":
                {
                    var rune = SingleChar(ctx, Str(ctx, p, "delimiter", where), $"{where}.delimiter");
                    return new CharSplitPreTokenizer(r => r == rune);
                }
            default:
                throw ctx.Unsupported($"{where}.type", "pre-tokenizer", type,
                    "Sequence, ByteLevel, Split, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit, BertPreTokenizer, CharDelimiterSplit");
        }
    }

    // ---------------------------------------------------------------- model

    static BpeModel ParseModel(Ctx ctx, JsonElement m)
    {
        string type;
        if (m.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String) type = t.GetString()!;
        else if (m.TryGetProperty("type", out t) && t.ValueKind != JsonValueKind.Null) throw ctx.Expected("model.type", "a model type name", t);
        else if (m.TryGetProperty("merges", out _)) type = "BPE"; // very old files have no model type
        else throw ctx.Bad("model.type", "the model type is missing");
        if (type != "BPE") throw ctx.Unsupported("model.type", "model", type, "BPE");

        if (!m.TryGetProperty("vocab", out var vocabEl)) throw ctx.Bad("model.vocab", "the vocabulary is missing");
        if (vocabEl.ValueKind != JsonValueKind.Object) throw ctx.Expected("model.vocab", "an object mapping token strings to ids", vocabEl);
        var vocab = ReadVocab(ctx, vocabEl, "model.vocab");

        if (!m.TryGetProperty("merges", out var mergesEl)) throw ctx.Bad("model.merges", "the merges are missing");
        if (mergesEl.ValueKind != JsonValueKind.Array) throw ctx.Expected("model.merges", "an array of merges", mergesEl);
        var merges = new List<(string, string)>(mergesEl.GetArrayLength());
        var i = 0;
        foreach (var item in mergesEl.EnumerateArray())
        {
            if (item.ValueKind == JsonValueKind.String)
                merges.Add(SplitLegacyMerge(item.GetString()!, vocab)
                    ?? throw ctx.Bad($"model.merges[{i}]", $"expected two tokens of model.vocab separated by a space, found {InputError.Show(item.GetString())}"));
            else if (item.ValueKind == JsonValueKind.Array && item.GetArrayLength() == 2
                     && item[0].ValueKind == JsonValueKind.String && item[1].ValueKind == JsonValueKind.String)
                merges.Add((item[0].GetString()!, item[1].GetString()!));
            else throw ctx.Expected($"model.merges[{i}]", "\"a b\" or [\"a\", \"b\"]", item);
            i++;
        }

        var options = new BpeOptions
        {
            UnkToken = OptStr(ctx, m, "unk_token", "model"),
            FuseUnk = Bool(ctx, m, "fuse_unk", "model", false),
            ByteFallback = Bool(ctx, m, "byte_fallback", "model", false),
            IgnoreMerges = Bool(ctx, m, "ignore_merges", "model", false),
            ContinuingSubwordPrefix = OptStr(ctx, m, "continuing_subword_prefix", "model") is { } prefix
                ? Inserted(ctx, prefix, "model.continuing_subword_prefix") : null,
            EndOfWordSuffix = OptStr(ctx, m, "end_of_word_suffix", "model") is { } suffix
                ? Inserted(ctx, suffix, "model.end_of_word_suffix") : null,
        };
        return new BpeModel(vocab, merges, options, ctx.Path, rank => $"model.merges[{rank}]");
    }

    internal static Dictionary<string, int> ReadVocab(Ctx ctx, JsonElement vocabEl, string where)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var byId = new Dictionary<int, string>();
        foreach (var entry in vocabEl.EnumerateObject())
        {
            var w = Member(where, entry.Name);
            var id = Id(ctx, entry.Value, w);
            if (!vocab.TryAdd(entry.Name, id)) throw ctx.Bad(w, "the token appears twice; expected each token once");
            if (!byId.TryAdd(id, entry.Name))
                throw ctx.Bad(w, $"expected a unique id, found {id}, which {Member(where, byId[id])} already has");
        }
        return vocab;
    }

    /// <summary>
    /// Splits a legacy <c>"a b"</c> merge. With more than one space the split is resolved against
    /// the vocabulary (both halves and their concatenation must be tokens, at exactly one position).
    /// </summary>
    internal static (string, string)? SplitLegacyMerge(string line, IReadOnlyDictionary<string, int> vocab)
    {
        var first = line.IndexOf(' ');
        if (first < 0) return null;
        if (line.IndexOf(' ', first + 1) < 0) return (line[..first], line[(first + 1)..]);
        (string, string)? found = null;
        for (var k = line.IndexOf(' '); k >= 0; k = line.IndexOf(' ', k + 1))
        {
            string a = line[..k], b = line[(k + 1)..];
            if (!vocab.ContainsKey(a) || !vocab.ContainsKey(b) || !vocab.ContainsKey(a + b)) continue;
            if (found is not null) return null;
            found = (a, b);
        }
        return found;
    }

    /// <summary>
    /// The added tokens. An id must be unique among them, and where the model vocabulary has the same
    /// id or the same content, both must agree (HF would otherwise silently renumber the token).
    /// </summary>
    static List<AddedToken> ParseAddedTokens(Ctx ctx, JsonElement? el, BpeModel model)
    {
        var result = new List<AddedToken>();
        if (el is not { } list) return result;
        if (list.ValueKind != JsonValueKind.Array) throw ctx.Expected("added_tokens", "an array", list);
        var byId = new Dictionary<int, (string Content, string Where)>();
        var i = 0;
        foreach (var t in list.EnumerateArray())
        {
            var where = $"added_tokens[{i++}]";
            if (t.ValueKind != JsonValueKind.Object) throw ctx.Expected(where, "an object", t);
            if (!t.TryGetProperty("id", out var idEl)) throw ctx.Bad($"{where}.id", "the id is missing");
            var id = Id(ctx, idEl, $"{where}.id");
            var content = Str(ctx, t, "content", where);
            if (byId.TryGetValue(id, out var other) && other.Content != content)
                throw ctx.Bad($"{where}.id", $"expected a unique id, found {id}, which {other.Where} ({InputError.Show(other.Content)}) already has");
            byId.TryAdd(id, (content, where));
            if (model.IdToToken(id) is { } inVocab && inVocab != content)
                throw ctx.Bad($"{where}.id", $"expected an id that model.vocab does not give to another token, found {id}, which is {InputError.Show(inVocab)} in model.vocab");
            if (model.TokenToId(content) is int vocabId && vocabId != id)
                throw ctx.Bad($"{where}.id", $"expected {vocabId}, the id model.vocab gives {InputError.Show(content)}, found {id}");
            var special = Bool(ctx, t, "special", where, false);
            result.Add(new AddedToken(id, content, special,
                SingleWord: Bool(ctx, t, "single_word", where, false),
                LStrip: Bool(ctx, t, "lstrip", where, false),
                RStrip: Bool(ctx, t, "rstrip", where, false),
                Normalized: Bool(ctx, t, "normalized", where, !special)));
        }
        return result;
    }

    // ---------------------------------------------------------------- post-processors

    static PostProcessor? ParsePostProcessor(Ctx ctx, JsonElement? el, string where, Func<int, bool> isToken)
    {
        if (el is not { } p) return null;
        var type = TypeOf(ctx, p, where);
        switch (type)
        {
            case "ByteLevel": return new ByteLevelPostProcessor();
            case "Sequence":
                {
                    var list = Array(ctx, p, "processors", where);
                    var items = new List<PostProcessor>();
                    var i = 0;
                    foreach (var child in list.EnumerateArray())
                    {
                        if (ParsePostProcessor(ctx, child.ValueKind == JsonValueKind.Null ? null : child, $"{where}.processors[{i}]", isToken) is { } c) items.Add(c);
                        i++;
                    }
                    return new SequencePostProcessor(items);
                }
            case "TemplateProcessing": return ParseTemplate(ctx, p, where, isToken);
            case "BertProcessing":
            case "RobertaProcessing":
                return new ClsSepPostProcessor(ParseTokenPair(ctx, p, "cls", where, isToken), ParseTokenPair(ctx, p, "sep", where, isToken));
            default:
                throw ctx.Unsupported($"{where}.type", "post-processor", type,
                    "ByteLevel, Sequence, TemplateProcessing, BertProcessing, RobertaProcessing");
        }
    }

    /// <summary>An id the post-processor inserts: it must name a token, or Decode would fail on Encode's output.</summary>
    static int ExistingId(Ctx ctx, JsonElement el, string where, Func<int, bool> isToken)
    {
        var id = Id(ctx, el, where);
        if (!isToken(id)) throw ctx.Bad(where, $"expected the id of a token in model.vocab or added_tokens, found {id}");
        return id;
    }

    static int ParseTokenPair(Ctx ctx, JsonElement p, string name, string where, Func<int, bool> isToken)
    {
        if (!p.TryGetProperty(name, out var v)) throw ctx.Bad($"{where}.{name}", "the field is missing (expected [token, id])");
        if (v.ValueKind != JsonValueKind.Array || v.GetArrayLength() != 2) throw ctx.Expected($"{where}.{name}", "[token, id]", v);
        return ExistingId(ctx, v[1], $"{where}.{name}[1]", isToken);
    }

    static TemplatePostProcessor ParseTemplate(Ctx ctx, JsonElement p, string where, Func<int, bool> isToken)
    {
        var specials = new Dictionary<string, int[]>(StringComparer.Ordinal);
        if (p.TryGetProperty("special_tokens", out var st) && st.ValueKind is not (JsonValueKind.Object or JsonValueKind.Null))
            throw ctx.Expected($"{where}.special_tokens", "an object", st);
        if (st.ValueKind == JsonValueKind.Object)
        {
            foreach (var entry in st.EnumerateObject())
            {
                var w = $"{where}.special_tokens.{entry.Name}";
                if (entry.Value.ValueKind != JsonValueKind.Object) throw ctx.Expected(w, "an object", entry.Value);
                var ids = Array(ctx, entry.Value, "ids", w);
                specials[entry.Name] = ids.EnumerateArray().Select((x, k) => ExistingId(ctx, x, $"{w}.ids[{k}]", isToken)).ToArray();
            }
        }

        if (!p.TryGetProperty("single", out var single)) throw ctx.Bad($"{where}.single", "the single-sequence template is missing");
        var items = new List<TemplateItem>();

        TemplateItem Special(string name, string w) =>
            specials.TryGetValue(name, out var ids) ? new TemplateItem(ids)
                : throw ctx.Bad(w, $"special token '{name}' is used in the template but missing from special_tokens");

        if (single.ValueKind == JsonValueKind.String)
        {
            // "<s> $A" form: $A / $B / $ / $0 are sequences, anything else a special token (":n" type ids ignored).
            foreach (var raw in single.GetString()!.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                var piece = raw;
                var colon = piece.LastIndexOf(':');
                if (colon > 0 && int.TryParse(piece.AsSpan(colon + 1), out _)) piece = piece[..colon];
                if (piece.StartsWith('$'))
                {
                    if (piece is "$" or "$A" or "$a" || (piece.Length > 1 && char.IsAsciiDigit(piece[1]))) items.Add(new TemplateItem(null));
                }
                else items.Add(Special(piece, $"{where}.single"));
            }
            return new TemplatePostProcessor(items);
        }
        if (single.ValueKind != JsonValueKind.Array) throw ctx.Expected($"{where}.single", "an array of template pieces", single);
        var i = 0;
        foreach (var item in single.EnumerateArray())
        {
            var w = $"{where}.single[{i++}]";
            if (item.ValueKind != JsonValueKind.Object) throw ctx.Expected(w, "{\"SpecialToken\": ...} or {\"Sequence\": ...}", item);
            if (item.TryGetProperty("SpecialToken", out var sp) && sp.ValueKind == JsonValueKind.Object)
                items.Add(Special(Str(ctx, sp, "id", w), w));
            else if (item.TryGetProperty("Sequence", out var seq) && seq.ValueKind == JsonValueKind.Object)
            {
                if (OptStr(ctx, seq, "id", w) is null or "A") items.Add(new TemplateItem(null));
            }
            else throw ctx.Bad(w, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
        }
        return new TemplatePostProcessor(items);
    }

    // ---------------------------------------------------------------- decoders

    static Decoder? ParseDecoder(Ctx ctx, JsonElement? el, string where)
    {
        if (el is not { } d) return null;
        var type = TypeOf(ctx, d, where);
        switch (type)
        {
            case "ByteLevel": return new ByteLevelDecoder();
            case "Metaspace": return new MetaspaceDecoder(ParseReplacement(ctx, d, where), ParsePrependScheme(ctx, d, where));
            case "Sequence":
                {
                    var list = Array(ctx, d, "decoders", where);
                    var items = new List<Decoder>();
                    var i = 0;
                    foreach (var child in list.EnumerateArray())
                    {
                        if (ParseDecoder(ctx, child.ValueKind == JsonValueKind.Null ? null : child, $"{where}.decoders[{i}]") is { } c) items.Add(c);
                        i++;
                    }
                    return new SequenceDecoder(items, $"{ctx.Path}: {where}");
                }
            case "Replace":
                {
                    var (literal, regex) = ParsePattern(ctx, d, where);
                    return new ReplaceDecoder(literal, regex, Inserted(ctx, Str(ctx, d, "content", where), $"{where}.content"), $"{ctx.Path}: {where}");
                }
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Strip":
                {
                    var content = SingleChar(ctx, Str(ctx, d, "content", where), $"{where}.content");
                    return new StripDecoder(content, Count(ctx, d, "start", where, 0), Count(ctx, d, "stop", where, 0));
                }
            case "BPEDecoder": return new BpeSuffixDecoder(Inserted(ctx, Str(ctx, d, "suffix", where, "</w>"), $"{where}.suffix"));
            default:
                throw ctx.Unsupported($"{where}.type", "decoder", type,
                    "ByteLevel, Metaspace, Sequence, Replace, ByteFallback, Fuse, Strip, BPEDecoder");
        }
    }
}

/// <summary>Sanity bounds on tokenizer-file fields; real files are far inside them.</summary>
internal static class Limits
{
    /// <summary>Largest token id accepted (real vocabularies have at most a few hundred thousand tokens).</summary>
    public const int MaxTokenId = (1 << 24) - 1;

    /// <summary>Longest string inserted into text (subword prefix, suffix, replacement content; real ones are 1–4 characters).</summary>
    public const int MaxInsertedLength = 256;

    /// <summary>Longest regex pattern (real pre-tokenizer patterns are under 2,000 characters).</summary>
    public const int MaxPatternLength = 65_536;
}
