using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using static Loupe.Tokenizers.Tests.SyntheticTokenizers;

namespace Loupe.Tokenizers.Tests;

/// <summary>
/// Regression tests for corrupted tokenizer files (issue 8): each is refused with one
/// <see cref="InputError"/> line naming the file, the field and what was found, never a hang, a stack
/// overflow or a System.Text.Json message.
/// </summary>
public sealed class BadInputTests : IDisposable
{
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    InputError Refused(JsonObject tokenizer) => Assert.Throws<InputError>(() => Load(_dir, tokenizer));

    static JsonObject Vocab(JsonObject tokenizer) => (JsonObject)tokenizer["model"]!["vocab"]!;

    // ------------------------------------------------------------------ regexes

    [Fact]
    public void CatastrophicNormalizerRegex_StopsWithinSecondsNamingFileFieldAndPattern()
    {
        var json = Gemma();
        json["normalizer"] = new JsonObject
        {
            ["type"] = "Replace",
            ["pattern"] = new JsonObject { ["Regex"] = "(a+)+$" },
            ["content"] = "x",
        };
        var t = Load(_dir, json);
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<InputError>(() => t.Encode(new string('a', 33) + "!"));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");
        Assert.Contains("tokenizer.json: normalizer.pattern.Regex: the pattern \"(a+)+$\" took longer than 1 s on a 34-character input", e.Message);
    }

    [Fact]
    public void CatastrophicSplitRegex_NamesThePreTokenizer()
    {
        var json = Llama3();
        json["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"] = new JsonObject { ["Regex"] = "(x+x+)+y" };
        var t = Load(_dir, json);
        var e = Assert.Throws<InputError>(() => t.Encode(new string('x', 40)));
        Assert.Contains("pre_tokenizer.pretokenizers[0].pattern.Regex", e.Message);
        Assert.Contains("(x+x+)+y", e.Message);
    }

    [Fact]
    public void OverlongRegex_IsRefusedAtLoad()
    {
        var json = Llama3();
        json["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"] = new JsonObject { ["Regex"] = new string('a', Limits.MaxPatternLength + 1) };
        Assert.Contains("expected a pattern of at most", Refused(json).Message);
    }

    [Fact]
    public void FileRegexesKeepBacktrackingSemantics()
    {
        // .NET's NonBacktracking engine finds only the second comma here; HF (Oniguruma) finds both.
        var split = new SplitPreTokenizer(UnicodeRegex.FromFile(" ?, ?", "test"), SplitBehavior.Isolated, invert: false);
        Assert.Equal([" a", ",", ","], split.Run(new Piece(" a,,", true)).Select(p => p.Text));
    }

    // ------------------------------------------------------------------ stack and sizes

    [Fact]
    public void HugeContinuingSubwordPrefix_IsRefusedNotAStackOverflow()
    {
        var json = Gemma();
        json["model"]!["continuing_subword_prefix"] = new string('#', 3_000_000);
        var e = Refused(json);
        Assert.Contains("tokenizer.json: model.continuing_subword_prefix: expected at most 256 characters, found 3,000,000", e.Message);
    }

    [Fact]
    public void ByteFallbackOfALongPiece_UsesThePool()
    {
        // 256 byte tokens; every piece falls back to bytes. The second piece is the 256-character prefix plus 'b'.
        var vocab = Enumerable.Range(0, 256).ToDictionary(b => $"<0x{b:X2}>", b => b);
        var prefix = new string('#', Limits.MaxInsertedLength);
        var model = new BpeModel(vocab, [], new BpeOptions { ByteFallback = true, ContinuingSubwordPrefix = prefix }, "test", r => $"{r}");
        var ids = new List<int>();
        model.Tokenize("ab", ids);
        Assert.Equal([(int)'a', .. Enumerable.Repeat((int)'#', prefix.Length), (int)'b'], ids);
    }

    [Theory]
    [InlineData("normalizer", "{\"type\":\"Prepend\",\"prepend\":\"LONG\"}", "normalizer.prepend")]
    [InlineData("normalizer", "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"LONG\"}", "normalizer.content")]
    [InlineData("decoder", "{\"type\":\"BPEDecoder\",\"suffix\":\"LONG\"}", "decoder.suffix")]
    public void OverlongInsertedStrings_AreRefused(string field, string component, string where)
    {
        var json = Gemma();
        json[field] = JsonNode.Parse(component.Replace("LONG", new string('z', 10_000)));
        Assert.Contains($"{where}: expected at most 256 characters, found 10,000", Refused(json).Message);
    }

    [Fact]
    public void RunawayNormalizerGrowth_IsRefusedNotOutOfMemory()
    {
        // An empty-matching pattern replaced by 256 characters, five times over, would grow 10 characters to 10^13.
        var step = new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["Regex"] = "" }, ["content"] = new string('z', 256) };
        var json = Gemma();
        json["normalizer"] = new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray([.. Enumerable.Range(0, 5).Select(_ => step.DeepClone())]) };
        var t = Load(_dir, json);
        var e = Assert.Throws<InputError>(() => t.Encode("abcdefghij"));
        Assert.Contains("tokenizer.json: normalizer.normalizers[1].pattern.Regex: expected to grow a text at most 16-fold, found that it turns 2,826 characters into 726,538", e.Message);

        // Two decoders that each turn a character into 256 stop at the second.
        JsonObject Grow(string from) => new() { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = from }, ["content"] = new string('z', 256) };
        json = Gemma();
        json["decoder"] = new JsonObject { ["type"] = "Sequence", ["decoders"] = new JsonArray(Grow("a"), Grow("z")) };
        t = Load(_dir, json);
        e = Assert.Throws<InputError>(() => t.Decode([GLetter('a')]));
        Assert.Contains("tokenizer.json: decoder.decoders[1]: expected to grow a text at most 16-fold, found that it turns 256 characters into 65,536", e.Message);
    }

    [Fact]
    public void DeeplyNestedJson_IsRefusedNotAStackOverflow()
    {
        var path = _dir.Write("tokenizer.json", "{\"model\":" + new string('[', 100_000) + new string(']', 100_000) + "}");
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(path));
        Assert.Contains("not valid JSON at line 1", e.Message);
        Assert.Contains("depth", e.Message);
    }

    // ------------------------------------------------------------------ vocabulary

    [Fact]
    public void StringId_NamesTheToken()
    {
        var json = Gemma();
        Vocab(json)["hello"] = "5";
        Assert.Contains("tokenizer.json: model.vocab[\"hello\"]: expected an integer id, found the string \"5\"", Refused(json).Message);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(2147483647L)]
    [InlineData(1e20)]
    [InlineData(1.5)]
    public void OutOfRangeIds_AreRefused(double id)
    {
        var json = Gemma();
        Vocab(json)["zz"] = id;
        var e = Refused(json);
        Assert.Contains("model.vocab[\"zz\"]: expected", e.Message);
    }

    [Fact]
    public void DuplicateIdsAndTokens_AreRefused()
    {
        var json = Gemma();
        Vocab(json)["zz"] = GLetter('a');
        Assert.Contains("model.vocab[\"zz\"]: expected a unique id, found 261, which model.vocab[\"a\"] already has", Refused(json).Message);

        var path = _dir.Write("dup.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"a\": 0}, \"merges\": []}}");
        Assert.Contains("model.vocab[\"a\"]: the token appears twice", Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(path)).Message);
    }

    [Fact]
    public void MissingModelParts_AreRefused()
    {
        var json = Gemma();
        ((JsonObject)json["model"]!).Remove("merges");
        Assert.Contains("model.merges: the merges are missing", Refused(json).Message);

        json = Gemma();
        json["model"] = "BPE";
        Assert.Contains("model: expected an object, found the string \"BPE\"", Refused(json).Message);

        json = Gemma();
        json["model"]!["type"] = 3;
        Assert.Contains("model.type: expected a model type name, found the number 3", Refused(json).Message);

        json = Gemma();
        ((JsonArray)json["model"]!["merges"]!).Add(new JsonArray("a", 7));
        Assert.Contains("model.merges[10]: expected \"a b\" or [\"a\", \"b\"], found an array of 2", Refused(json).Message);

        json = Gemma();
        ((JsonArray)json["model"]!["merges"]!).Add(new JsonArray("a", "q"));
        Assert.Contains("model.merges[10]: expected a merge of two vocabulary tokens into a third, found \"a q\", whose merged token \"aq\"", Refused(json).Message);
    }

    [Fact]
    public void UnkTokenMissingFromTheVocabulary_IsNamedWhenNeeded()
    {
        var json = Gemma(byteFallback: false);
        json["model"]!["unk_token"] = "<nope>";
        var t = Load(_dir, json);
        var e = Assert.Throws<InputError>(() => t.Encode("A", addSpecialTokens: false));
        Assert.Contains("model.unk_token: expected a token of the vocabulary, found \"<nope>\"", e.Message);
    }

    // ------------------------------------------------------------------ added tokens and post-processor

    [Fact]
    public void AddedTokensWithBadIds_AreRefused()
    {
        var json = Gemma();
        ((JsonArray)json["added_tokens"]!)[4]!["id"] = "300";
        Assert.Contains("added_tokens[4].id: expected an integer id, found the string \"300\"", Refused(json).Message);

        json = Gemma();
        ((JsonArray)json["added_tokens"]!)[4]!["id"] = -7;
        Assert.Contains("added_tokens[4].id: expected an id in [0, 16777215], found -7", Refused(json).Message);

        json = Gemma();
        ((JsonArray)json["added_tokens"]!).Add(AddedToken(GEndOfText, "<other>"));
        Assert.Contains("added_tokens[5].id: expected a unique id, found 300, which added_tokens[4] (\"<|endoftext|>\") already has", Refused(json).Message);

        json = Gemma();
        ((JsonArray)json["added_tokens"]!).Add(AddedToken(GLetter('b'), "<mine>"));
        Assert.Contains("added_tokens[5].id: expected an id that model.vocab does not give to another token, found 262, which is \"b\"", Refused(json).Message);

        json = Gemma();
        ((JsonArray)json["added_tokens"]!)[1]!["id"] = 299;
        Assert.Contains("added_tokens[1].id: expected 1, the id model.vocab gives \"<eos>\", found 299", Refused(json).Message);

        json = Gemma();
        ((JsonObject)((JsonArray)json["added_tokens"]!)[4]!).Remove("content");
        Assert.Contains("added_tokens[4].content: the field is missing", Refused(json).Message);
    }

    [Fact]
    public void TemplateIdsMustBeIntegersNamingTokens()
    {
        var json = Gemma();
        json["post_processor"]!["special_tokens"]!["<bos>"]!["ids"] = new JsonArray("2");
        Assert.Contains("post_processor.special_tokens.<bos>.ids[0]: expected an integer id, found the string \"2\"", Refused(json).Message);

        json = Gemma();
        json["post_processor"]!["special_tokens"]!["<bos>"]!["ids"] = new JsonArray(5000);
        Assert.Contains("post_processor.special_tokens.<bos>.ids[0]: expected the id of a token in model.vocab or added_tokens, found 5000", Refused(json).Message);

        json = Gemma();
        json["post_processor"] = new JsonObject { ["type"] = "BertProcessing", ["cls"] = new JsonArray("<bos>", "x"), ["sep"] = new JsonArray("<eos>", 1) };
        Assert.Contains("post_processor.cls[1]: expected an integer id, found the string \"x\"", Refused(json).Message);

        json = Gemma();
        ((JsonArray)json["post_processor"]!["single"]!).Add(7);
        Assert.Contains("post_processor.single[2]: expected {\"SpecialToken\": ...} or {\"Sequence\": ...}, found the number 7", Refused(json).Message);
    }

    // ------------------------------------------------------------------ components

    [Fact]
    public void SingleCharacterFields_RefuseOtherStrings()
    {
        var json = Gemma();
        json["pre_tokenizer"] = new JsonObject { ["type"] = "CharDelimiterSplit", ["delimiter"] = "" };
        Assert.Contains("pre_tokenizer.delimiter: expected a single character, found \"\"", Refused(json).Message);

        json = MetaspaceFirst();
        json["decoder"]!["decoders"]![3]!["content"] = "ab";
        Assert.Contains("decoder.decoders[3].content: expected a single character, found \"ab\"", Refused(json).Message);

        json = MetaspaceFirst();
        json["decoder"]!["decoders"]![3]!["start"] = "1";
        Assert.Contains("decoder.decoders[3].start: expected a non-negative integer, found the string \"1\"", Refused(json).Message);
    }

    [Fact]
    public void UnknownTypes_NameTheTypeAndWhatIsSupported()
    {
        var json = Gemma();
        json["normalizer"] = new JsonObject { ["type"] = "Precompiled" };
        Assert.Contains("normalizer.type: expected a normalizer type Loupe.Tokenizers supports (Sequence, Prepend", Refused(json).Message);

        json = Gemma();
        json["pre_tokenizer"] = new JsonObject { ["type"] = 5 };
        Assert.Contains("pre_tokenizer.type: expected a type name, found the number 5", Refused(json).Message);

        json = Gemma();
        json["pre_tokenizer"]!["behavior"] = "Sideways";
        Assert.Contains("pre_tokenizer.behavior: expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous, found \"Sideways\"", Refused(json).Message);
    }

    // ------------------------------------------------------------------ encodings

    [Fact]
    public void InvalidUtf8_NamesFileLineAndByte()
    {
        var bytes = Encoding.UTF8.GetBytes(Gemma().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        var at = Array.IndexOf(bytes, (byte)'h', Array.IndexOf(bytes, (byte)'\n') + 1);
        bytes[at] = 0xFF;
        var path = Path.Combine(_dir.Path, "tokenizer.json");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(path));
        Assert.Contains($"{path}: not valid UTF-8 at line ", e.Message);

        var vocab = Path.Combine(_dir.Path, "vocab.json");
        File.WriteAllBytes(vocab, [.. "{\"a\": 0, \"\xC3\": 1}"u8.ToArray().Take(10), 0xC3, .. "\": 1}"u8.ToArray()]);
        var merges = _dir.Write("merges.txt", "#version: 0.2\n");
        Assert.Contains("vocab.json: not valid UTF-8 at line 1, byte 11", Assert.Throws<InputError>(() => TokenizerLoader.FromVocabAndMerges(vocab, merges)).Message);

        _dir.Write("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
        File.WriteAllBytes(merges, [.. "#version: 0.2\na b\n"u8.ToArray(), 0x80, (byte)'\n']);
        Assert.Contains("merges.txt: not valid UTF-8 at line 3, byte 1", Assert.Throws<InputError>(() => TokenizerLoader.FromVocabAndMerges(vocab, merges)).Message);
    }

    [Fact]
    public void LoneSurrogateEscape_IsRefused()
    {
        var path = _dir.Write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\\ud800\": 0}, \"merges\": []}}");
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(path));
        Assert.Contains("tokenizer.json: the string at line 1, byte ", e.Message);
        Assert.Contains("holds an escape that is not valid UTF-16", e.Message);
    }

    [Fact]
    public void MergesTxtWithUnknownTokens_NamesTheLine()
    {
        var vocab = _dir.Write("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2, \"c\": 3}");
        var merges = _dir.Write("merges.txt", "#version: 0.2\na b\nab c\n");
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromVocabAndMerges(vocab, merges));
        Assert.Contains("merges.txt: line 3: expected a merge of two vocabulary tokens into a third, found \"ab c\", whose merged token \"abc\"", e.Message);
    }

    // ------------------------------------------------------------------ tokenizer_config.json

    [Fact]
    public void TokenizerConfigWithWrongTypes_NamesTheField()
    {
        var e = Assert.Throws<InputError>(() => Load(_dir, Gemma(), new JsonObject { ["bos_token"] = 2 }));
        Assert.Contains("tokenizer_config.json: bos_token: expected a token string", e.Message);
        Assert.Contains("found the number 2", e.Message);
        e = Assert.Throws<InputError>(() => Load(_dir, Gemma(), new JsonObject { ["add_bos_token"] = "yes" }));
        Assert.Contains("tokenizer_config.json: add_bos_token: expected true or false, found the string \"yes\"", e.Message);
    }

    // ------------------------------------------------------------------ ids from callers

    [Fact]
    public void DecodeOfIdsWithNoToken_NamesTheId()
    {
        var t = Load(_dir, Gemma());
        Assert.Contains("token id 301: expected an id in [0, 300]", Assert.Throws<InputError>(() => t.Decode([301])).Message);
        Assert.Contains("token id -1: expected an id in [0, 300]", Assert.Throws<InputError>(() => t.Decode([-1])).Message);
        Assert.Contains("token id 298: expected the id of a token", Assert.Throws<InputError>(() => t.Decode([298])).Message);
        Assert.Contains("token id 2147483647", Assert.Throws<InputError>(() => t.IdToToken(int.MaxValue)).Message);
    }
}
