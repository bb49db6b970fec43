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

    /// <summary>Parses a JSON file, turning I/O and syntax problems into exceptions that name the file.</summary>
    internal static JsonDocument ReadJson(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"Tokenizer file '{path}' does not exist.", path);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (IOException e)
        {
            throw new InvalidDataException($"Tokenizer file '{path}' could not be read: {e.Message}", e);
        }
        try
        {
            return JsonDocument.Parse(bytes, DocOptions);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Tokenizer file '{path}' is not valid JSON (truncated or malformed): {e.Message}", e);
        }
    }

    public static Tokenizer Load(string path, string? configPath, string? specialTokensMapPath = null)
    {
        using var doc = ReadJson(path);
        var ctx = new Ctx(Path.GetFileName(path), path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw ctx.Bad("", $"the top level must be a JSON object, not {root.ValueKind}");

        if (!root.TryGetProperty("model", out var modelEl) || modelEl.ValueKind != JsonValueKind.Object)
            throw ctx.Bad("model", "the 'model' object is missing");
        var normalizer = ParseNormalizer(ctx, Prop(root, "normalizer"), "normalizer");
        var preTokenizer = ParsePreTokenizer(ctx, Prop(root, "pre_tokenizer"), "pre_tokenizer");
        var model = ParseModel(ctx, modelEl);
        var addedTokens = ParseAddedTokens(ctx, Prop(root, "added_tokens"));
        var postProcessor = ParsePostProcessor(ctx, Prop(root, "post_processor"), "post_processor");
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
        if (root.ValueKind != JsonValueKind.Object) throw ctx.Bad("", $"the top level must be a JSON object, not {root.ValueKind}");

        (bool, string?)? Name(string key)
        {
            if (!root.TryGetProperty(key, out var el)) return null;
            return el.ValueKind switch
            {
                JsonValueKind.Null => (true, null),
                JsonValueKind.String => (true, el.GetString()),
                JsonValueKind.Object when el.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => (true, c.GetString()),
                _ => throw ctx.Bad(key, "expected a token string, an object with 'content', or null"),
            };
        }

        bool? Flag(string key)
        {
            if (!root.TryGetProperty(key, out var el) || el.ValueKind == JsonValueKind.Null) return null;
            return el.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw ctx.Bad(key, "expected true or false"),
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
        public InvalidDataException Bad(string where, string what) =>
            new($"Tokenizer file '{Path}'{(where.Length > 0 ? $" at '{where}'" : "")}: {what}.");

        public NotSupportedException Unsupported(string where, string kind, string type) =>
            new($"Tokenizer file '{Path}' at '{where}': {kind} type '{type}' is not supported by Loupe.Tokenizers.");
    }

    static JsonElement? Prop(JsonElement obj, string name) =>
        obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    static string TypeOf(Ctx ctx, JsonElement el, string where)
    {
        if (el.ValueKind != JsonValueKind.Object) throw ctx.Bad(where, $"expected an object, found {el.ValueKind}");
        if (!el.TryGetProperty("type", out var t) || t.ValueKind != JsonValueKind.String)
            throw ctx.Bad(where, "the 'type' field is missing");
        return t.GetString()!;
    }

    static string Str(Ctx ctx, JsonElement obj, string name, string where, string? defaultValue = null)
    {
        if (obj.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String) return v.GetString()!;
        if (defaultValue is not null && (!obj.TryGetProperty(name, out v) || v.ValueKind == JsonValueKind.Null)) return defaultValue;
        throw ctx.Bad($"{where}.{name}", "expected a string");
    }

    static string? OptStr(Ctx ctx, JsonElement obj, string name, string where)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String) throw ctx.Bad($"{where}.{name}", "expected a string or null");
        return v.GetString();
    }

    static bool Bool(Ctx ctx, JsonElement obj, string name, string where, bool defaultValue)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return defaultValue;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ctx.Bad($"{where}.{name}", "expected true or false"),
        };
    }

    static int Int(Ctx ctx, JsonElement obj, string name, string where, int defaultValue)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return defaultValue;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var i)) throw ctx.Bad($"{where}.{name}", "expected an integer");
        return i;
    }

    static JsonElement Array(Ctx ctx, JsonElement obj, string name, string where)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind != JsonValueKind.Array)
            throw ctx.Bad($"{where}.{name}", "expected an array");
        return v;
    }

    static UnicodeRegex CompileRegex(Ctx ctx, string pattern, string where)
    {
        try
        {
            return new UnicodeRegex(pattern);
        }
        catch (ArgumentException e)
        {
            throw new NotSupportedException(
                $"Tokenizer file '{ctx.Path}' at '{where}': the regex /{pattern}/ cannot be compiled by .NET: {e.Message}", e);
        }
    }

    /// <summary>A <c>{"String": ...}</c> or <c>{"Regex": ...}</c> pattern: (literal, regex).</summary>
    static (string? Literal, UnicodeRegex? Regex) ParsePattern(Ctx ctx, JsonElement obj, string where)
    {
        if (!obj.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object)
            throw ctx.Bad($"{where}.pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
        if (p.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String) return (s.GetString()!, null);
        if (p.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String)
            return (null, CompileRegex(ctx, r.GetString()!, $"{where}.pattern"));
        throw ctx.Bad($"{where}.pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
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
                    return new SequenceNormalizer(items);
                }
            case "Prepend": return new PrependNormalizer(Str(ctx, n, "prepend", where));
            case "Append": return new AppendNormalizer(Str(ctx, n, "append", where));
            case "Replace":
                {
                    var (literal, regex) = ParsePattern(ctx, n, where);
                    return new ReplaceNormalizer(literal, regex, Str(ctx, n, "content", where));
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
            default: throw ctx.Unsupported(where, "normalizer", type);
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
            _ => throw ctx.Bad($"{where}.behavior", $"unknown split behavior '{s}'"),
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
            _ => throw ctx.Bad($"{where}.prepend_scheme", $"unknown prepend scheme '{s}'"),
        };
    }

    static string ParseReplacement(Ctx ctx, JsonElement obj, string where)
    {
        var r = Str(ctx, obj, "replacement", where, "\u2581");
        if (r.Length == 0 || Rune.DecodeFromUtf16(r, out _, out var len) != System.Buffers.OperationStatus.Done || len != r.Length)
            throw ctx.Bad($"{where}.replacement", "expected a single character");
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
                    return new SequencePreTokenizer(items);
                }
            case "ByteLevel":
                return new ByteLevelPreTokenizer(Bool(ctx, p, "add_prefix_space", where, true), Bool(ctx, p, "use_regex", where, true));
            case "Split":
                {
                    var (literal, regex) = ParsePattern(ctx, p, where);
                    // HF compiles a String pattern as an escaped regex.
                    regex ??= new UnicodeRegex(Regex.Escape(literal!));
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
                    var d = Str(ctx, p, "delimiter", where);
                    if (d.Length == 0) throw ctx.Bad($"{where}.delimiter", "expected a single character");
                    var rune = Rune.GetRuneAt(d, 0);
                    return new CharSplitPreTokenizer(r => r == rune);
                }
            default: throw ctx.Unsupported(where, "pre-tokenizer", type);
        }
    }

    // ---------------------------------------------------------------- model

    static BpeModel ParseModel(Ctx ctx, JsonElement m)
    {
        string type;
        if (m.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String) type = t.GetString()!;
        else if (m.TryGetProperty("merges", out _)) type = "BPE"; // very old files have no model type
        else throw ctx.Bad("model.type", "the model type is missing");
        if (type != "BPE") throw ctx.Unsupported("model.type", "model", type);

        if (!m.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
            throw ctx.Bad("model.vocab", "expected an object mapping token strings to ids");
        var vocab = ReadVocab(ctx, vocabEl, "model.vocab");

        if (!m.TryGetProperty("merges", out var mergesEl) || mergesEl.ValueKind != JsonValueKind.Array)
            throw ctx.Bad("model.merges", "expected an array of merges");
        var merges = new List<(string, string)>(mergesEl.GetArrayLength());
        var i = 0;
        foreach (var item in mergesEl.EnumerateArray())
        {
            if (item.ValueKind == JsonValueKind.String)
                merges.Add(SplitLegacyMerge(item.GetString()!, vocab) ?? throw ctx.Bad($"model.merges[{i}]", $"merge '{item.GetString()}' is not two tokens separated by a space"));
            else if (item.ValueKind == JsonValueKind.Array && item.GetArrayLength() == 2
                     && item[0].ValueKind == JsonValueKind.String && item[1].ValueKind == JsonValueKind.String)
                merges.Add((item[0].GetString()!, item[1].GetString()!));
            else throw ctx.Bad($"model.merges[{i}]", "expected \"a b\" or [\"a\", \"b\"]");
            i++;
        }

        var options = new BpeOptions
        {
            UnkToken = OptStr(ctx, m, "unk_token", "model"),
            FuseUnk = Bool(ctx, m, "fuse_unk", "model", false),
            ByteFallback = Bool(ctx, m, "byte_fallback", "model", false),
            IgnoreMerges = Bool(ctx, m, "ignore_merges", "model", false),
            ContinuingSubwordPrefix = OptStr(ctx, m, "continuing_subword_prefix", "model"),
            EndOfWordSuffix = OptStr(ctx, m, "end_of_word_suffix", "model"),
        };
        return new BpeModel(vocab, merges, options, $"Tokenizer file '{ctx.Path}'");
    }

    internal static Dictionary<string, int> ReadVocab(Ctx ctx, JsonElement vocabEl, string where)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocabEl.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out var id) || id < 0)
                throw ctx.Bad(where, $"token '{entry.Name}' must map to a non-negative integer id");
            vocab[entry.Name] = id;
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

    static List<AddedToken> ParseAddedTokens(Ctx ctx, JsonElement? el)
    {
        var result = new List<AddedToken>();
        if (el is not { } list) return result;
        if (list.ValueKind != JsonValueKind.Array) throw ctx.Bad("added_tokens", "expected an array");
        var i = 0;
        foreach (var t in list.EnumerateArray())
        {
            var where = $"added_tokens[{i++}]";
            if (t.ValueKind != JsonValueKind.Object) throw ctx.Bad(where, "expected an object");
            if (!t.TryGetProperty("id", out var idEl) || !idEl.TryGetInt32(out var id) || id < 0)
                throw ctx.Bad($"{where}.id", "expected a non-negative integer id");
            var special = Bool(ctx, t, "special", where, false);
            result.Add(new AddedToken(id, Str(ctx, t, "content", where), special,
                SingleWord: Bool(ctx, t, "single_word", where, false),
                LStrip: Bool(ctx, t, "lstrip", where, false),
                RStrip: Bool(ctx, t, "rstrip", where, false),
                Normalized: Bool(ctx, t, "normalized", where, !special)));
        }
        return result;
    }

    // ---------------------------------------------------------------- post-processors

    static PostProcessor? ParsePostProcessor(Ctx ctx, JsonElement? el, string where)
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
                        if (ParsePostProcessor(ctx, child.ValueKind == JsonValueKind.Null ? null : child, $"{where}.processors[{i}]") is { } c) items.Add(c);
                        i++;
                    }
                    return new SequencePostProcessor(items);
                }
            case "TemplateProcessing": return ParseTemplate(ctx, p, where);
            case "BertProcessing":
            case "RobertaProcessing":
                return new ClsSepPostProcessor(ParseTokenPair(ctx, p, "cls", where), ParseTokenPair(ctx, p, "sep", where));
            default: throw ctx.Unsupported(where, "post-processor", type);
        }
    }

    static int ParseTokenPair(Ctx ctx, JsonElement p, string name, string where)
    {
        if (p.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 2
            && v[1].TryGetInt32(out var id)) return id;
        throw ctx.Bad($"{where}.{name}", "expected [token, id]");
    }

    static TemplatePostProcessor ParseTemplate(Ctx ctx, JsonElement p, string where)
    {
        var specials = new Dictionary<string, int[]>(StringComparer.Ordinal);
        if (p.TryGetProperty("special_tokens", out var st) && st.ValueKind == JsonValueKind.Object)
        {
            foreach (var entry in st.EnumerateObject())
            {
                var w = $"{where}.special_tokens.{entry.Name}";
                if (entry.Value.ValueKind != JsonValueKind.Object) throw ctx.Bad(w, "expected an object");
                var ids = Array(ctx, entry.Value, "ids", w);
                specials[entry.Name] = ids.EnumerateArray().Select(x => x.TryGetInt32(out var v) ? v : throw ctx.Bad($"{w}.ids", "expected integer ids")).ToArray();
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
        if (single.ValueKind != JsonValueKind.Array) throw ctx.Bad($"{where}.single", "expected an array of template pieces");
        var i = 0;
        foreach (var item in single.EnumerateArray())
        {
            var w = $"{where}.single[{i++}]";
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
                    return new SequenceDecoder(items);
                }
            case "Replace":
                {
                    var (literal, regex) = ParsePattern(ctx, d, where);
                    return new ReplaceDecoder(literal, regex, Str(ctx, d, "content", where));
                }
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Strip":
                {
                    var content = Str(ctx, d, "content", where);
                    if (content.Length == 0) throw ctx.Bad($"{where}.content", "expected a single character");
                    return new StripDecoder(content, Int(ctx, d, "start", where, 0), Int(ctx, d, "stop", where, 0));
                }
            case "BPEDecoder": return new BpeSuffixDecoder(Str(ctx, d, "suffix", where, "</w>"));
            default: throw ctx.Unsupported(where, "decoder", type);
        }
    }
}
