using System.Text.Json;
using Loupe.Testing;

namespace Loupe.Tokenizers.Tests;

/// <summary>
/// BERT's WordPiece against HF's slow BertTokenizer (tests/data/reference/minilm/tokenizer_cases.json: accents,
/// CJK, emoji, a 120-character word, literal [CLS], one pair), from tokenizer.json and from a bare vocab.txt.
/// </summary>
public sealed class WordPieceTests
{
    static string Fixture(string name) => Path.Combine(SharedData.TestData(Path.Combine("reference", "minilm")), name);

    public static TheoryData<string> Sources => new() { "tokenizer.json", "vocab.txt" };

    /// <summary>The tokenizer from tokenizer.json, or from a vocab.txt written from its vocabulary (+ tokenizer_config.json).</summary>
    static WordPieceTokenizer Load(string source)
    {
        if (source == "tokenizer.json") return Assert.IsType<WordPieceTokenizer>(TokenizerLoader.FromFolder(FolderWith("tokenizer.json")));
        return Assert.IsType<WordPieceTokenizer>(TokenizerLoader.FromFolder(FolderWith("vocab.txt")));
    }

    static string FolderWith(string file)
    {
        string folder = Path.Combine(Path.GetTempPath(), $"loupe-wordpiece-{file}-{Environment.ProcessId}");
        Directory.CreateDirectory(folder);
        File.Copy(Fixture("tokenizer_config.json"), Path.Combine(folder, "tokenizer_config.json"), overwrite: true);
        if (file == "tokenizer.json") File.Copy(Fixture("tokenizer.json"), Path.Combine(folder, "tokenizer.json"), overwrite: true);
        else
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(Fixture("tokenizer.json")));
            var lines = doc.RootElement.GetProperty("model").GetProperty("vocab").EnumerateObject().OrderBy(p => p.Value.GetInt32()).Select(p => p.Name);
            File.WriteAllLines(Path.Combine(folder, "vocab.txt"), lines);
        }
        return folder;
    }

    static JsonElement Cases()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Fixture("tokenizer_cases.json")));
        return doc.RootElement.Clone();
    }

    [Theory]
    [MemberData(nameof(Sources))]
    public void Every_case_gives_the_ids_of_hugging_face_bert_tokenizer(string source)
    {
        var tokenizer = Load(source);
        var cases = Cases();
        var failures = new List<string>();
        int count = 0;
        foreach (var c in cases.GetProperty("single").EnumerateArray().Concat(cases.GetProperty("sentences").EnumerateArray()))
        {
            string text = c.GetProperty("text").GetString()!;
            var expected = c.GetProperty("input_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            var actual = tokenizer.Encode(text);
            count++;
            if (!expected.SequenceEqual(actual))
                failures.Add($"{JsonSerializer.Serialize(text)}: expected [{string.Join(",", expected)}], got [{string.Join(",", actual)}]");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.Equal(15, count);
    }

    [Theory]
    [MemberData(nameof(Sources))]
    public void A_pair_gets_type_ids_zero_then_one(string source)
    {
        var pair = Cases().GetProperty("pair");
        var texts = pair.GetProperty("text").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var (ids, types) = Load(source).EncodePair(texts[0], texts[1]);
        Assert.Equal(pair.GetProperty("input_ids").EnumerateArray().Select(x => x.GetInt32()), ids);
        Assert.Equal(pair.GetProperty("token_type_ids").EnumerateArray().Select(x => x.GetInt32()), types);
    }

    [Fact]
    public void Special_ids_tokens_and_decoding()
    {
        var tokenizer = Load("tokenizer.json");
        Assert.Equal(30522, tokenizer.VocabSize);
        Assert.Equal(101, tokenizer.BosTokenId);
        Assert.Equal(102, tokenizer.EosTokenId);
        Assert.Equal(0, tokenizer.PadTokenId);
        Assert.Equal(100, tokenizer.UnkTokenId);
        Assert.Equal("##ffa", tokenizer.IdToToken(20961));
        Assert.Equal(14477, tokenizer.TokenToId("una"));
        Assert.Equal("unaffable", tokenizer.Decode(tokenizer.Encode("unaffable", addSpecialTokens: false)));
        Assert.Equal("hello, world!", tokenizer.Decode(tokenizer.Encode("Hello, world!"), skipSpecialTokens: true).Replace(" ,", ",").Replace(" !", "!"));
        Assert.Throws<InputError>(() => tokenizer.IdToToken(30522));
    }

    [Fact]
    public void Offsets_name_the_characters_each_token_comes_from()
    {
        var tokenizer = Load("tokenizer.json");
        const string text = "Unaffable café, [SEP] 中文!";
        var (ids, spans) = tokenizer.EncodeWithOffsets(text);
        Assert.Equal(tokenizer.Encode(text), ids);
        var pieces = ids.Zip(spans, (id, s) => $"{tokenizer.IdToToken(id)}={text[s.Start..s.End]}").ToArray();
        Assert.Equal(["[CLS]=", "una=Una", "##ffa=ffa", "##ble=ble", "cafe=café", ",=,", "[SEP]=[SEP]", "中=中", "文=文", "!=!", "[SEP]="], pieces);
        foreach (var c in Cases().GetProperty("single").EnumerateArray())
        {
            string t = c.GetProperty("text").GetString()!;
            var (withOffsets, s) = tokenizer.EncodeWithOffsets(t);
            Assert.Equal(tokenizer.Encode(t), withOffsets);
            Assert.All(s, span => Assert.True(0 <= span.Start && span.Start <= span.End && span.End <= t.Length));
        }
    }

    [Fact]
    public void Strip_accents_null_follows_lowercase_and_false_keeps_them()
    {
        string folder = FolderWith("vocab.txt");
        var cased = Path.Combine(folder, "cased");
        Directory.CreateDirectory(cased);
        File.Copy(Path.Combine(folder, "vocab.txt"), Path.Combine(cased, "vocab.txt"), overwrite: true);
        File.WriteAllText(Path.Combine(cased, "tokenizer_config.json"), "{\"do_lower_case\": true, \"strip_accents\": false}");
        var keeping = TokenizerLoader.FromFolder(cased);
        var stripping = Load("vocab.txt");
        Assert.Equal([7668], stripping.Encode("café", addSpecialTokens: false));
        Assert.NotEqual(stripping.Encode("café", addSpecialTokens: false), keeping.Encode("café", addSpecialTokens: false));
    }

    [Fact]
    public void A_wordpiece_tokenizer_json_with_another_normalizer_is_refused_naming_the_field()
    {
        string folder = FolderWith("tokenizer.json");
        string path = Path.Combine(folder, "tokenizer.json");
        File.WriteAllText(path, File.ReadAllText(Fixture("tokenizer.json")).Replace("\"BertNormalizer\"", "\"NFKC\""));
        var e = Assert.Throws<InputError>(() => TokenizerLoader.FromFolder(folder));
        Assert.Contains("normalizer.type", e.Message);
    }
}
