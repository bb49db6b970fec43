using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Loupe.Tokenizers;

/// <summary>How BERT's normalizer treats text (HF <c>BertNormalizer</c>, the slow <c>BasicTokenizer</c>).</summary>
/// <param name="CleanText">Drop control characters (and NUL, U+FFFD); map every whitespace character to a space.</param>
/// <param name="HandleChineseChars">Put spaces around CJK ideographs, so each is its own word.</param>
/// <param name="StripAccents">Decompose (NFD) and drop combining marks; null follows <paramref name="Lowercase"/>.</param>
/// <param name="Lowercase">Lower-case the text.</param>
public sealed record BertNormalization(bool CleanText = true, bool HandleChineseChars = true, bool? StripAccents = null, bool Lowercase = true);

/// <summary>
/// BERT's WordPiece tokenizer, as HF's <c>BertTokenizer</c> computes it: special tokens in the text are kept whole
/// (case-sensitively); the rest is normalized (<see cref="BertNormalization"/>), split on whitespace and around
/// every punctuation character, and each word is matched greedily, longest piece first, continuation pieces carrying
/// <c>##</c>; a word longer than <c>max_input_chars_per_word</c> (100) or with an unmatched rest becomes <c>[UNK]</c>.
/// <see cref="Encode"/> wraps a text as <c>[CLS] A [SEP]</c>; <see cref="EncodePair"/> gives <c>[CLS] A [SEP] B [SEP]</c>
/// with token types 0 then 1.
/// </summary>
public sealed class WordPieceTokenizer : ITokenizer
{
    readonly Dictionary<string, int> _vocab;
    readonly string[] _byId;
    readonly string _prefix;
    readonly int _maxChars;
    readonly BertNormalization _normalization;
    readonly string[] _special; // kept whole in the input, longest first
    readonly HashSet<int> _specialIds;
    readonly int _cls, _sep, _unk;

    WordPieceTokenizer(Dictionary<string, int> vocab, BertNormalization normalization, string unk, string cls, string sep, string pad, string mask,
        IEnumerable<string> extraSpecial, string prefix, int maxChars, string source)
    {
        _vocab = vocab;
        int size = vocab.Count == 0 ? 0 : vocab.Values.Max() + 1;
        _byId = new string[size];
        foreach (var (token, id) in vocab) _byId[id] = token;
        _normalization = normalization;
        _prefix = prefix;
        _maxChars = maxChars;
        int Required(string token, string role) => vocab.TryGetValue(token, out int id) ? id
            : throw new InputError($"{source}: the {role} token '{token}' is not in the vocabulary");
        _unk = Required(unk, "unknown");
        _cls = Required(cls, "classifier");
        _sep = Required(sep, "separator");
        PadTokenId = vocab.TryGetValue(pad, out int p) ? p : null;
        _special = new[] { unk, cls, sep, pad, mask }.Concat(extraSpecial).Where(vocab.ContainsKey).Distinct().OrderByDescending(s => s.Length).ToArray();
        _specialIds = [.. _special.Select(s => vocab[s])];
        VocabSize = size;
    }

    public int VocabSize { get; }
    /// <summary>[CLS], which starts every encoded text.</summary>
    public int? BosTokenId => _cls;
    /// <summary>[SEP], which ends every encoded text.</summary>
    public int? EosTokenId => _sep;
    public int? PadTokenId { get; }
    public int? UnkTokenId => _unk;
    public bool AddsBosByDefault => true;

    /// <summary>The token ids of <paramref name="text"/>, wrapped as <c>[CLS] text [SEP]</c> when <paramref name="addSpecialTokens"/>.</summary>
    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        if (addSpecialTokens) ids.Add(_cls);
        Tokenize(text, ids);
        if (addSpecialTokens) ids.Add(_sep);
        return [.. ids];
    }

    /// <summary>A sentence pair: <c>[CLS] a [SEP] b [SEP]</c> and its token types (0 through the first [SEP], then 1).</summary>
    public (int[] Ids, int[] TokenTypeIds) EncodePair(string a, string b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        var ids = new List<int> { _cls };
        Tokenize(a, ids);
        ids.Add(_sep);
        int first = ids.Count;
        Tokenize(b, ids);
        ids.Add(_sep);
        var types = new int[ids.Count];
        for (int i = first; i < types.Length; i++) types[i] = 1;
        return ([.. ids], types);
    }

    /// <summary>Joins the tokens with spaces and glues <c>##</c> continuations to the piece before them.</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var sb = new StringBuilder();
        foreach (int id in ids)
        {
            string token = IdToToken(id);
            if (skipSpecialTokens && _specialIds.Contains(id)) continue;
            if (token.StartsWith(_prefix, StringComparison.Ordinal)) sb.Append(token.AsSpan(_prefix.Length));
            else
            {
                if (sb.Length > 0) sb.Append(' ');
                sb.Append(token);
            }
        }
        return sb.ToString();
    }

    public string IdToToken(int id) => (uint)id < (uint)_byId.Length && _byId[id] is { } t ? t
        : throw new InputError($"token id {id}: expected an id in [0, {VocabSize - 1}] that names a token of this vocabulary");

    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return _vocab.TryGetValue(token, out int id) ? id : null;
    }

    /// <summary>
    /// <see cref="Encode"/> with the characters of <paramref name="text"/> each token comes from (<c>[Start, End)</c>;
    /// an empty span at the start or end for the added [CLS] and [SEP]), for labelling tokens by words.
    /// </summary>
    public (int[] Ids, (int Start, int End)[] Spans) EncodeWithOffsets(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        var spans = new List<(int, int)>();
        if (addSpecialTokens) { ids.Add(_cls); spans.Add((0, 0)); }
        Tokenize(text, ids, spans);
        if (addSpecialTokens) { ids.Add(_sep); spans.Add((text.Length, text.Length)); }
        return ([.. ids], [.. spans]);
    }

    void Tokenize(string text, List<int> ids, List<(int, int)>? spans = null)
    {
        int start = 0;
        while (start < text.Length)
        {
            // Special tokens written in the text are kept whole, before any normalization.
            int at = -1;
            string? found = null;
            foreach (var s in _special)
            {
                int i = text.IndexOf(s, start, StringComparison.Ordinal);
                if (i >= 0 && (at < 0 || i < at)) { at = i; found = s; }
            }
            int end = at < 0 ? text.Length : at;
            foreach (var word in Words(text, start, end)) Pieces(word, ids, spans);
            if (found is null) break;
            ids.Add(_vocab[found]);
            spans?.Add((at, at + found.Length));
            start = at + found.Length;
        }
    }

    /// <summary>A normalized word and, per char of it, the offset in the original text of the character it came from.</summary>
    readonly record struct Word(string Text, int[] Origin, int End);

    /// <summary>
    /// Normalized words of <c>text[start..end)</c>: split on whitespace, each punctuation character and each CJK
    /// ideograph a word of its own. Normalization is per character (lower-casing and accent stripping do not depend
    /// on neighbours), which is what lets every normalized char remember where it came from.
    /// </summary>
    List<Word> Words(string text, int start, int end)
    {
        var n = _normalization;
        bool strip = n.StripAccents ?? n.Lowercase;
        var words = new List<Word>();
        var sb = new StringBuilder();
        var origin = new List<int>();
        int wordEnd = start;
        void Flush()
        {
            if (sb.Length > 0) words.Add(new Word(sb.ToString(), [.. origin], wordEnd));
            sb.Clear();
            origin.Clear();
        }
        void Single(string piece, int from, int to)
        {
            Flush();
            words.Add(new Word(piece, Enumerable.Repeat(from, piece.Length).ToArray(), to));
        }
        int i = start;
        while (i < end)
        {
            var rune = Rune.GetRuneAt(text, i);
            int next = i + rune.Utf16SequenceLength;
            if (n.CleanText && (rune.Value == 0 || rune.Value == 0xFFFD || IsControl(rune))) { i = next; continue; }
            if (IsWhitespace(rune)) { Flush(); i = next; continue; }
            if (n.HandleChineseChars && IsChinese(rune.Value)) { Single(rune.ToString(), i, next); i = next; continue; }
            string normalized = rune.ToString();
            if (n.Lowercase) normalized = normalized.ToLowerInvariant();
            if (strip) normalized = StripAccents(normalized);
            foreach (var r in normalized.EnumerateRunes())
            {
                if (IsPunctuation(r)) Single(r.ToString(), i, next);
                else
                {
                    sb.Append(r.ToString());
                    for (int c = 0; c < r.Utf16SequenceLength; c++) origin.Add(i);
                    wordEnd = next;
                }
            }
            i = next;
        }
        Flush();
        return words;
    }

    /// <summary>Greedy longest-match-first WordPiece of one word; the whole word is [UNK] when any rest has no piece.</summary>
    void Pieces(Word word, List<int> ids, List<(int, int)>? spans)
    {
        // Char offset of each rune in the word, plus its length at the end.
        var bounds = new List<int>();
        for (int c = 0; c < word.Text.Length; c += Rune.GetRuneAt(word.Text, c).Utf16SequenceLength) bounds.Add(c);
        int runes = bounds.Count;
        bounds.Add(word.Text.Length);
        int Origin(int rune) => rune < runes ? word.Origin[bounds[rune]] : word.End;
        if (runes > _maxChars)
        {
            ids.Add(_unk);
            spans?.Add((word.Origin[0], word.End));
            return;
        }
        int before = ids.Count, start = 0;
        while (start < runes)
        {
            int end = runes, match = -1;
            while (start < end)
            {
                string piece = (start > 0 ? _prefix : "") + word.Text[bounds[start]..bounds[end]];
                if (_vocab.TryGetValue(piece, out match)) break;
                match = -1;
                end--;
            }
            if (match < 0)
            {
                ids.RemoveRange(before, ids.Count - before);
                spans?.RemoveRange(before, spans.Count - before);
                ids.Add(_unk);
                spans?.Add((word.Origin[0], word.End));
                return;
            }
            ids.Add(match);
            spans?.Add((Origin(start), Origin(end)));
            start = end;
        }
    }

    static string StripAccents(string s)
    {
        // Loupe's own tables: string.Normalize depends on ICU, which invariant-globalization hosts lack.
        var decomposed = UnicodeNormalization.Normalize(s, NormalizationForm.FormD);
        var sb = new StringBuilder(decomposed.Length);
        foreach (var rune in decomposed.EnumerateRunes())
            if (Rune.GetUnicodeCategory(rune) != UnicodeCategory.NonSpacingMark) sb.Append(rune.ToString());
        return sb.ToString();
    }

    static bool IsWhitespace(Rune r) => r.Value is ' ' or '\t' or '\n' or '\r' || Rune.GetUnicodeCategory(r) == UnicodeCategory.SpaceSeparator;

    static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned;
    }

    static bool IsPunctuation(Rune r)
    {
        int c = r.Value;
        // BERT counts every non-alphanumeric ASCII character as punctuation (e.g. $, ^, `), besides Unicode's P* classes.
        if (c is >= 33 and <= 47 or >= 58 and <= 64 or >= 91 and <= 96 or >= 123 and <= 126) return true;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }

    static bool IsChinese(int c) =>
        c is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B820 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;

    /// <summary>
    /// From a bare <c>vocab.txt</c> (one token a line, the line number its id) and, when given,
    /// <c>tokenizer_config.json</c> (<c>do_lower_case</c>, <c>tokenize_chinese_chars</c>, <c>strip_accents</c>, the special tokens).
    /// </summary>
    /// <exception cref="InputError">A file is malformed or a special token is missing from the vocabulary.</exception>
    public static WordPieceTokenizer FromVocabTxt(string vocabPath, string? tokenizerConfigPath = null)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        int id = 0;
        foreach (var line in File.ReadLines(vocabPath))
        {
            // As HF's load_vocab: ids are line numbers, and a repeated token keeps its last line.
            vocab[line.TrimEnd('\r', '\n')] = id;
            id++;
        }
        var normalization = new BertNormalization();
        string unk = "[UNK]", cls = "[CLS]", sep = "[SEP]", pad = "[PAD]", mask = "[MASK]";
        if (tokenizerConfigPath is not null)
        {
            using var doc = TokenizerJson.ReadJson(tokenizerConfigPath);
            var root = doc.RootElement;
            bool? Flag(string name) => root.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
            string Name(string field, string fallback) => root.TryGetProperty(field, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : fallback;
            normalization = new BertNormalization(true, Flag("tokenize_chinese_chars") ?? true, Flag("strip_accents"), Flag("do_lower_case") ?? true);
            (unk, cls, sep, pad, mask) = (Name("unk_token", unk), Name("cls_token", cls), Name("sep_token", sep), Name("pad_token", pad), Name("mask_token", mask));
        }
        return new WordPieceTokenizer(vocab, normalization, unk, cls, sep, pad, mask, [], "##", 100, vocabPath);
    }

    /// <summary>
    /// From a <c>tokenizer.json</c> whose model is WordPiece: BertNormalizer, BertPreTokenizer, WordPiece (vocab,
    /// unk_token, continuing_subword_prefix, max_input_chars_per_word), TemplateProcessing or BertProcessing with [CLS]/[SEP].
    /// </summary>
    /// <exception cref="InputError">The file is malformed, or uses a normalizer or pre-tokenizer this tokenizer does not implement (the message names the field).</exception>
    public static WordPieceTokenizer FromTokenizerJson(string path)
    {
        using var doc = TokenizerJson.ReadJson(path);
        var root = doc.RootElement;
        InputError Bad(string field, string what) => new($"{path}: {field}: {what}");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object) throw Bad("model", "missing");
        string? Type(JsonElement e) => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) ? t.GetString() : null;
        if (Type(model) != "WordPiece") throw Bad("model.type", $"expected WordPiece, found {Type(model) ?? "none"}");
        if (!model.TryGetProperty("vocab", out var vocabJson) || vocabJson.ValueKind != JsonValueKind.Object) throw Bad("model.vocab", "expected an object of token → id");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabJson.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int v) || v < 0) throw Bad($"model.vocab.{p.Name}", "expected a non-negative integer id");
            vocab[p.Name] = v;
        }
        string Str(JsonElement e, string field, string fallback) => e.TryGetProperty(field, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : fallback;
        string unk = Str(model, "unk_token", "[UNK]");
        string prefix = Str(model, "continuing_subword_prefix", "##");
        int maxChars = model.TryGetProperty("max_input_chars_per_word", out var mc) && mc.ValueKind == JsonValueKind.Number ? mc.GetInt32() : 100;

        var normalization = new BertNormalization(false, false, false, false);
        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind != JsonValueKind.Null)
        {
            if (Type(norm) != "BertNormalizer") throw Bad("normalizer.type", $"expected BertNormalizer or null with a WordPiece model, found {Type(norm) ?? "none"}");
            bool? Flag(string name) => norm.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
            normalization = new BertNormalization(Flag("clean_text") ?? true, Flag("handle_chinese_chars") ?? true, Flag("strip_accents"), Flag("lowercase") ?? true);
        }
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind != JsonValueKind.Null && Type(pre) != "BertPreTokenizer")
            throw Bad("pre_tokenizer.type", $"expected BertPreTokenizer with a WordPiece model, found {Type(pre) ?? "none"}");

        var special = new List<string>();
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var t in added.EnumerateArray())
                if (t.TryGetProperty("content", out var c) && c.GetString() is { } content && t.TryGetProperty("id", out var idJson))
                {
                    vocab.TryAdd(content, idJson.GetInt32());
                    special.Add(content);
                }
        string cls = "[CLS]", sep = "[SEP]";
        if (root.TryGetProperty("post_processor", out var post) && post.ValueKind == JsonValueKind.Object)
        {
            if (Type(post) == "TemplateProcessing" && post.TryGetProperty("single", out var single) && single.ValueKind == JsonValueKind.Array)
            {
                var tokens = single.EnumerateArray().Where(i => i.TryGetProperty("SpecialToken", out _))
                    .Select(i => i.GetProperty("SpecialToken").GetProperty("id").GetString()!).ToList();
                if (tokens.Count != 2) throw Bad("post_processor.single", "expected the template [CLS] $A [SEP]");
                (cls, sep) = (tokens[0], tokens[1]);
            }
            else if (Type(post) == "BertProcessing")
            {
                cls = post.GetProperty("cls")[0].GetString()!;
                sep = post.GetProperty("sep")[0].GetString()!;
            }
            else throw Bad("post_processor.type", $"expected TemplateProcessing or BertProcessing with a WordPiece model, found {Type(post) ?? "none"}");
        }
        return new WordPieceTokenizer(vocab, normalization, unk, cls, sep, "[PAD]", "[MASK]", special, prefix, maxChars, path);
    }

    /// <summary>Whether a tokenizer.json's model is WordPiece (so <see cref="FromTokenizerJson"/> reads it).</summary>
    public static bool IsWordPieceJson(string path)
    {
        using var doc = TokenizerJson.ReadJson(path);
        // Anything but an object (even `null`) is not WordPiece; the BPE loader then refuses it with a message.
        return doc.RootElement.ValueKind == JsonValueKind.Object
            && doc.RootElement.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.Object
            && m.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "WordPiece";
    }
}
