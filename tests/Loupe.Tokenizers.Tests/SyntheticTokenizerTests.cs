using System.Text.Json.Nodes;
using static Loupe.Tokenizers.Tests.SyntheticTokenizers;

namespace Loupe.Tokenizers.Tests;

/// <summary>Behaviour of hand-built tokenizer.json files in the style of Llama-3, Gemma and Mistral.</summary>
public sealed class SyntheticTokenizerTests : IDisposable
{
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    static int B(char c) => c; // Llama-3 style: a printable ASCII byte's id is its value

    // ------------------------------------------------------------------ Llama-3 style

    [Fact]
    public void Llama3_PrependsBeginOfTextOnlyWithSpecialTokens()
    {
        var t = Load(_dir, Llama3());
        Assert.Equal(L3Bot, t.BosTokenId);
        Assert.Equal(L3Eot, t.EosTokenId); // no config: guessed from the usual names
        Assert.True(t.AddsBosByDefault);
        Assert.Equal([L3Bot, L3Hello, L3SpaceWorld], t.Encode("hello world"));
        Assert.Equal([L3Hello, L3SpaceWorld], t.Encode("hello world", addSpecialTokens: false));
        Assert.Equal([L3Bot], t.Encode(""));
        Assert.Empty(t.Encode("", addSpecialTokens: false));
    }

    [Fact]
    public void Llama3_IgnoreMergesUsesWholeWordVocabularyHits()
    {
        // " hello" is one regex piece "Ġhello", which is in the vocabulary but unreachable by merges.
        Assert.Equal([L3SpaceHello], Load(_dir, Llama3(ignoreMerges: true)).Encode(" hello", false));
        Assert.Equal([B(' '), L3Hello], Load(_dir, Llama3(ignoreMerges: false)).Encode(" hello", false));
    }

    [Fact]
    public void Llama3_RegexSplitsDigitsInGroupsOfThree()
    {
        var t = Load(_dir, Llama3());
        Assert.Equal([L3OneTwoThree, B('4'), B('5')], t.Encode("12345", false));
        // Contractions are matched case-insensitively: "'S" is its own piece.
        Assert.Equal([B('h'), B('i'), B('\''), B('S')], t.Encode("hi'S", false));
    }

    [Fact]
    public void Llama3_SplitsSpecialTokensInsideText()
    {
        var t = Load(_dir, Llama3());
        Assert.Equal([B('h'), B('i'), L3EndOfText, B('t'), 256 /* he */, B('r'), B('e')], t.Encode("hi<|endoftext|>there", false));
        Assert.Equal([L3Bot, L3Hello, L3EndOfText, L3SpaceWorld], t.Encode("hello<|endoftext|> world"));
        // A partial special token is plain text.
        Assert.DoesNotContain(L3EndOfText, t.Encode("<|endoftext|", false));
    }

    [Fact]
    public void Llama3_DecodesAndSkipsSpecialTokens()
    {
        var t = Load(_dir, Llama3());
        var ids = t.Encode("hello<|endoftext|> world");
        Assert.Equal("<|begin_of_text|>hello<|endoftext|> world", t.Decode(ids));
        Assert.Equal("hello world", t.Decode(ids, skipSpecialTokens: true));
        Assert.Equal("Ġworld", t.IdToToken(L3SpaceWorld));
        Assert.Equal(L3Bot, t.TokenToId("<|begin_of_text|>"));
        Assert.Equal(271, t.VocabSize);
    }

    [Theory]
    [InlineData("hello world")]
    [InlineData("€ 😀 𝐀𝐁 日本語  tabs\tand\nnewlines\r\n  ")]
    [InlineData("it's 123456789 o'clock, isn't it?!")]
    public void Llama3_RoundTripsText(string text)
    {
        var t = Load(_dir, Llama3());
        Assert.Equal(text, t.Decode(t.Encode(text, false)));
        Assert.Equal(text, t.Decode(t.Encode(text), skipSpecialTokens: true));
    }

    [Fact]
    public void Llama3_SupplementaryLettersMatchLetterClass()
    {
        // 𝐀𝐁 are letters (Lu) outside the BMP: one "\p{L}+" piece, so " 𝐀𝐁" keeps its space in one word.
        var t = (Tokenizer)Load(_dir, Llama3());
        var words = t.PreTokenizer!.Run(new Piece(" 𝐀𝐁12", true)).Select(p => p.Text).ToArray();
        Assert.Equal([ByteLevelAlphabet.Encode(" 𝐀𝐁"), "12"], words);
    }

    [Fact]
    public void Llama3_ConfigCanTurnBosOff()
    {
        var config = new JsonObject { ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|end_of_text|>", ["add_bos_token"] = false };
        var t = Load(_dir, Llama3(), config);
        Assert.False(t.AddsBosByDefault);
        Assert.Equal(L3Eot, t.EosTokenId);
        Assert.Equal([L3Hello], t.Encode("hello"));
    }

    // ------------------------------------------------------------------ Gemma style

    [Fact]
    public void Gemma_EncodesWithBosAndMerges()
    {
        var json = Gemma();
        var t = Load(_dir, json);
        Assert.Equal(GBos, t.BosTokenId);
        Assert.Equal(GEos, t.EosTokenId);
        Assert.Equal(GPad, t.PadTokenId);
        Assert.Equal(GUnk, t.UnkTokenId);
        Assert.True(t.AddsBosByDefault);
        Assert.Equal([GBos, GId(json, "hello"), GId(json, "▁world")], t.Encode("hello world"));
        Assert.Equal([GId(json, "▁hello")], t.Encode(" hello", false));
    }

    [Fact]
    public void Gemma_ByteFallbackForUnseenCharacter()
    {
        var t = Load(_dir, Gemma());
        // € is E2 82 AC in UTF-8.
        Assert.Equal([GBos, GByte(0xE2), GByte(0x82), GByte(0xAC)], t.Encode("€"));
        Assert.Equal([GLetter('a'), GByte(0xE2), GByte(0x82), GByte(0xAC), GLetter('b')], t.Encode("a€b", false));
        Assert.Equal("<0xE2>", t.IdToToken(GByte(0xE2)));
        Assert.Equal("a€b", t.Decode(t.Encode("a€b"), skipSpecialTokens: true));
        Assert.Equal("<bos>a€b", t.Decode(t.Encode("a€b")));
    }

    [Fact]
    public void Gemma_InvalidByteRunsDecodeToReplacementCharacters()
    {
        var t = Load(_dir, Gemma());
        Assert.Equal("\uFFFD\uFFFDa", t.Decode([GByte(0xE2), GByte(0x82), GLetter('a')]));
        Assert.Equal("é", t.Decode([GByte(0xC3), GByte(0xA9)]));
    }

    [Fact]
    public void Gemma_SplitsSpecialTokensInsideText()
    {
        var json = Gemma();
        var t = Load(_dir, json);
        Assert.Equal([GBos, GId(json, "hello"), GEndOfText, GId(json, "▁world")], t.Encode("hello<|endoftext|> world"));
        Assert.Equal([GEos, GEos], t.Encode("<eos><eos>", false));
        Assert.Equal("hello<|endoftext|> world", t.Decode(t.Encode("hello<|endoftext|> world"), skipSpecialTokens: false)[5..]);
        Assert.Equal("hello world", t.Decode(t.Encode("hello<|endoftext|> world"), skipSpecialTokens: true));
    }

    [Fact]
    public void Gemma_UnknownCharactersWithoutByteFallback()
    {
        var fused = Load(_dir, Gemma(byteFallback: false, fuseUnk: true));
        Assert.Equal([GLetter('a'), GUnk, GLetter('b')], fused.Encode("a€€b", false));
        var separate = Load(_dir, Gemma(byteFallback: false, fuseUnk: false));
        Assert.Equal([GLetter('a'), GUnk, GUnk, GLetter('b')], separate.Encode("a€€b", false));
    }

    [Fact]
    public void Gemma_VocabSizeCoversAddedTokensAndHolesAreErrors()
    {
        var t = Load(_dir, Gemma());
        Assert.Equal(GEndOfText + 1, t.VocabSize);
        var e = Assert.Throws<InputError>(() => t.IdToToken(298));
        Assert.Contains("298", e.Message);
    }

    // ------------------------------------------------------------------ Metaspace (prepend_scheme = first)

    [Fact]
    public void Metaspace_PrependsOnlyAtTheStartOfTheInput()
    {
        var json = MetaspaceFirst();
        var t = Load(_dir, json);
        Assert.Equal([GBos, GId(json, "▁hello"), GId(json, "▁world")], t.Encode("hello world"));
        // After an added token the text does not start the input, so no ▁ is prepended.
        Assert.Equal([GEndOfText, GId(json, "hello")], t.Encode("<|endoftext|>hello", false));
        Assert.Equal([GId(json, "▁hello"), GEndOfText, GId(json, "▁world")], t.Encode("hello<|endoftext|> world", false));
        Assert.Equal("hello world", t.Decode(t.Encode("hello world"), skipSpecialTokens: true));
    }

    [Fact]
    public void Metaspace_AlwaysSchemeWithSplit()
    {
        var json = MetaspaceFirst();
        json["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["add_prefix_space"] = true };
        json["decoder"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["add_prefix_space"] = true };
        var t = Load(_dir, json);
        Assert.Equal([GId(json, "▁hello"), GEndOfText, GId(json, "▁hello")], t.Encode("hello<|endoftext|>hello", false));
        Assert.Equal("hello world", t.Decode(t.Encode("hello world", false)));
    }

    // ------------------------------------------------------------------ added-token options and config

    [Fact]
    public void AddedToken_LStripRStripAndSingleWord()
    {
        var json = Llama3();
        var added = (JsonArray)json["added_tokens"]!;
        added.Add(AddedToken(300, "<mask>", lstrip: true, rstrip: true));
        added.Add(AddedToken(301, "wor", special: false, singleWord: true));
        var t = Load(_dir, json);
        // The spaces around <mask> are absorbed by the token.
        Assert.Equal([L3Hello, 300, L3Hello], t.Encode("hello   <mask>  hello", false));
        // "wor" alone is the added token; inside "world" it is not.
        Assert.Equal([301], t.Encode("wor", false));
        Assert.DoesNotContain(301, t.Encode("world", false));
        Assert.Contains(301, t.Encode("this wor that", false));
    }

    [Fact]
    public void AddedToken_NormalizedTokensMatchAfterNormalization()
    {
        var json = Gemma();
        json["normalizer"] = new JsonObject
        {
            ["type"] = "Sequence",
            ["normalizers"] = new JsonArray(new JsonObject { ["type"] = "Lowercase" }, json["normalizer"]!.DeepClone()),
        };
        ((JsonArray)json["added_tokens"]!).Add(AddedToken(301, "hey", special: false, normalized: true));
        var t = Load(_dir, json);
        Assert.Equal([301, GId(json, "▁world")], t.Encode("HEY world", false));
    }

    [Fact]
    public void Config_AddsBosWhenTemplateDoesNot_AndReadsTokenObjects()
    {
        var json = Gemma();
        json["post_processor"] = null;
        var config = new JsonObject
        {
            ["add_bos_token"] = true,
            ["add_eos_token"] = true,
            ["bos_token"] = new JsonObject { ["content"] = "<bos>", ["lstrip"] = false },
            ["eos_token"] = "<eos>",
            ["pad_token"] = null,
        };
        var t = Load(_dir, json, config);
        Assert.True(t.AddsBosByDefault);
        Assert.Null(t.PadTokenId);
        Assert.Equal([GBos, GLetter('a'), GEos], t.Encode("a"));
        Assert.Equal([GLetter('a')], t.Encode("a", false));
    }

    [Fact]
    public void FromFolder_PrefersTokenizerJsonAndReadsConfig()
    {
        _dir.Write("tokenizer.json", Gemma().ToJsonString());
        _dir.Write("tokenizer_config.json", new JsonObject { ["add_bos_token"] = false }.ToJsonString());
        var t = TokenizerLoader.FromFolder(_dir.Path);
        Assert.False(t.AddsBosByDefault);
        Assert.Equal([GLetter('a')], t.Encode("a"));
    }

    [Fact]
    public void RobertaProcessing_WrapsInClsAndSep()
    {
        var json = Llama3();
        json["post_processor"] = new JsonObject
        {
            ["type"] = "RobertaProcessing",
            ["sep"] = new JsonArray("<|end_of_text|>", L3Eot),
            ["cls"] = new JsonArray("<|begin_of_text|>", L3Bot),
            ["trim_offsets"] = true,
            ["add_prefix_space"] = false,
        };
        var t = Load(_dir, json);
        Assert.Equal([L3Bot, L3Hello, L3Eot], t.Encode("hello"));
    }

    [Fact]
    public void Qwen2Style_NfcNormalizerComposesBeforeByteLevel()
    {
        var json = Llama3();
        json["normalizer"] = new JsonObject { ["type"] = "NFC" };
        var t = Load(_dir, json);
        Assert.Equal(t.Encode("caf\u00E9", false), t.Encode("cafe\u0301", false));
        Assert.Equal("caf\u00E9", t.Decode(t.Encode("cafe\u0301", false)));
    }

    [Fact]
    public void Template_StringFormAndEosFromConfig()
    {
        var json = Llama3();
        json["post_processor"] = new JsonObject
        {
            ["type"] = "TemplateProcessing",
            ["single"] = "<|begin_of_text|> $A:0 <|end_of_text|>",
            ["special_tokens"] = new JsonObject
            {
                ["<|begin_of_text|>"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["ids"] = new JsonArray(L3Bot), ["tokens"] = new JsonArray("<|begin_of_text|>") },
                ["<|end_of_text|>"] = new JsonObject { ["id"] = "<|end_of_text|>", ["ids"] = new JsonArray(L3Eot), ["tokens"] = new JsonArray("<|end_of_text|>") },
            },
        };
        var t = Load(_dir, json);
        Assert.Equal([L3Bot, L3Hello, L3Eot], t.Encode("hello"));
        var noEos = Load(_dir, json, new JsonObject { ["eos_token"] = "<|end_of_text|>", ["add_eos_token"] = false });
        Assert.Equal([L3Bot, L3Hello], noEos.Encode("hello"));
    }

    [Fact]
    public void LegacyMergesWithSpacesInsideTokensAreResolvedByVocabulary()
    {
        var vocab = new Dictionary<string, int> { ["a"] = 0, ["b c"] = 1, ["ab c"] = 2, ["a b"] = 3 };
        Assert.Equal(("a", "b c"), TokenizerJson.SplitLegacyMerge("a b c", vocab));
        Assert.Equal(("x", "y"), TokenizerJson.SplitLegacyMerge("x y", vocab));
        Assert.Null(TokenizerJson.SplitLegacyMerge("xy", vocab));
    }
}
