using System.Text.Json.Nodes;
using static Loupe.Tokenizers.Tests.SyntheticTokenizers;

namespace Loupe.Tokenizers.Tests;

/// <summary>Malformed files, unsupported components and bad ids are <see cref="InputError"/>s naming the file, field and value.</summary>
public sealed class ErrorTests : IDisposable
{
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void TruncatedJson_IsInputErrorNamingTheFileAndPosition()
    {
        var full = Gemma().ToJsonString();
        var path = _dir.Write("tokenizer.json", full[..(full.Length / 2)]);
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("not valid JSON at line 1, byte", e.Message);
    }

    [Fact]
    public void EmptyOrNonObjectJson_IsInputError()
    {
        Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(_dir.Write("a.json", "")));
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(_dir.Write("b.json", "[1,2]")));
        Assert.Contains("b.json", e.Message);
        e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(_dir.Write("c.json", "{\"version\":\"1.0\"}")));
        Assert.Contains("model", e.Message);
    }

    [Fact]
    public void UnknownModelType_IsInputErrorNamingTypeAndFile()
    {
        var json = Gemma();
        json["model"]!["type"] = "Bogus";
        var path = _dir.Write("tokenizer.json", json.ToJsonString());
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(path));
        Assert.Contains("Bogus", e.Message);
        Assert.Contains(path, e.Message);

        json["model"]!["type"] = "WordPiece";
        var e2 = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(_dir.Write("tokenizer.json", json.ToJsonString())));
        Assert.Contains("WordPiece", e2.Message);
    }

    [Theory]
    [InlineData("normalizer", "Precompiled")]
    [InlineData("pre_tokenizer", "UnicodeScripts")]
    [InlineData("post_processor", "MysteryProcessing")]
    [InlineData("decoder", "CTC")]
    public void UnknownComponentType_IsInputErrorNamingTypeAndFile(string field, string type)
    {
        var json = Gemma();
        json[field] = new JsonObject { ["type"] = type };
        var path = _dir.Write("tokenizer.json", json.ToJsonString());
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromTokenizerJson(path));
        Assert.Contains(type, e.Message);
        Assert.Contains(field, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void NestedUnknownType_NamesItsLocation()
    {
        var json = Llama3();
        ((JsonArray)json["pre_tokenizer"]!["pretokenizers"]!).Add(new JsonObject { ["type"] = "Nope" });
        var e = Assert.Throws<InputError>(() => Load(_dir, json));
        Assert.Contains("pre_tokenizer.pretokenizers[2]", e.Message);
    }

    [Fact]
    public void MissingVocabOrMergeTokens_AreInputErrors()
    {
        var json = Gemma();
        ((JsonObject)json["model"]!).Remove("vocab");
        var e = Assert.Throws<InputError>(() => Load(_dir, json));
        Assert.Contains("model.vocab", e.Message);

        json = Gemma();
        ((JsonArray)json["model"]!["merges"]!).Add("x zz");
        e = Assert.Throws<InputError>(() => Load(_dir, json));
        Assert.Contains("zz", e.Message);

        json = Gemma();
        ((JsonArray)json["model"]!["merges"]!).Add("nospace");
        e = Assert.Throws<InputError>(() => Load(_dir, json));
        Assert.Contains("model.merges[10]", e.Message);
    }

    [Fact]
    public void TemplateWithUndeclaredSpecialToken_IsInputError()
    {
        var json = Gemma();
        ((JsonObject)json["post_processor"]!["special_tokens"]!).Clear();
        var e = Assert.Throws<InputError>(() => Load(_dir, json));
        Assert.Contains("<bos>", e.Message);
    }

    [Fact]
    public void BadRegex_IsInputErrorNamingFieldAndPattern()
    {
        var json = Llama3();
        json["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"] = new JsonObject { ["Regex"] = "(unclosed" };
        var e = Assert.Throws<InputError>(() => Load(_dir, json));
        Assert.Contains("(unclosed", e.Message);
        Assert.Contains("tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex: expected a regular expression", e.Message);
    }

    [Fact]
    public void MissingFiles_AreFileNotFound()
    {
        var missing = Path.Combine(_dir.Path, "nope.json");
        var e = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.FromTokenizerJson(missing));
        Assert.Contains(missing, e.Message);
        Assert.Throws<FileNotFoundException>(() => TokenizerLoader.FromVocabAndMerges(missing, missing));
        var f = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.FromFolder(_dir.Path));
        Assert.Contains("tokenizer.json", f.Message);
        Assert.Throws<DirectoryNotFoundException>(() => TokenizerLoader.FromFolder(Path.Combine(_dir.Path, "no-such-folder")));
    }

    [Fact]
    public void BadVocabJsonOrMergesTxt_AreInputErrors()
    {
        var vocab = _dir.Write("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
        var merges = _dir.Write("merges.txt", "#version: 0.2\na b\n");
        var t = TokenizerLoader.FromVocabAndMerges(vocab, merges);
        Assert.Equal([2], t.Encode("ab"));

        var badMerges = _dir.Write("bad_merges.txt", "#version: 0.2\na b\nabc\n");
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromVocabAndMerges(vocab, badMerges));
        Assert.Contains("line 3", e.Message);
        Assert.Contains("bad_merges.txt", e.Message);

        var badVocab = _dir.Write("bad_vocab.json", "{\"a\": \"zero\"}");
        e = Assert.Throws<InputError>(() => TokenizerLoader.FromVocabAndMerges(badVocab, merges));
        Assert.Contains("bad_vocab.json", e.Message);

        var truncated = _dir.Write("trunc_vocab.json", "{\"a\": 0, \"b\"");
        e = Assert.Throws<InputError>(() => TokenizerLoader.FromVocabAndMerges(truncated, merges));
        Assert.Contains("trunc_vocab.json", e.Message);
    }

    [Fact]
    public void IdOutOfRange_InDecodeAndIdToToken()
    {
        var t = Load(_dir, Gemma());
        var e = Assert.Throws<InputError>(() => t.Decode([GLetter('a'), 5000]));
        Assert.Contains("5000", e.Message);
        Assert.Contains(t.VocabSize.ToString(), e.Message);
        e = Assert.Throws<InputError>(() => t.IdToToken(-1));
        Assert.Contains("-1", e.Message);
        Assert.Contains(t.VocabSize.ToString(), e.Message);
        Assert.Throws<InputError>(() => t.IdToToken(t.VocabSize));
        Assert.Throws<InputError>(() => t.Decode([-3], skipSpecialTokens: true));
    }
}
