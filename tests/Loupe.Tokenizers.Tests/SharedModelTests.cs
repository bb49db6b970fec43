using System.Text.Json;
using Loupe.Testing;

namespace Loupe.Tokenizers.Tests;

/// <summary>Exact agreement with the reference tokenizers of the real models in ../shared.</summary>
public class SharedModelTests
{
    public sealed record Case(string Text, int[] Ids);

    static List<Case> ReadCases(string relative)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedData.Require(relative)));
        return doc.RootElement.EnumerateArray()
            .Select(e => new Case(e.GetProperty("text").GetString()!, e.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray()))
            .ToList();
    }

    static readonly Lazy<ITokenizer> Stories = new(() =>
        TokenizerLoader.FromTokenizerJson(SharedData.Require("models/stories260K/tokenizer.json")));

    static readonly Lazy<ITokenizer> Gpt2 = new(() => TokenizerLoader.FromVocabAndMerges(
        SharedData.Require("models/gpt2-tokenizer/vocab.json"), SharedData.Require("models/gpt2-tokenizer/merges.txt")));

    [RequiresSharedFact("models/stories260K/tokenizer_cases.json")]
    public void Stories260K_EncodesEveryCaseExactly()
    {
        var failures = new List<string>();
        foreach (var c in ReadCases("models/stories260K/tokenizer_cases.json"))
        {
            var ids = Stories.Value.Encode(c.Text);
            if (!ids.SequenceEqual(c.Ids))
                failures.Add($"{JsonSerializer.Serialize(c.Text)}: expected [{string.Join(",", c.Ids)}] got [{string.Join(",", ids)}]");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [RequiresSharedFact("models/stories260K/tokenizer_cases.json")]
    public void Stories260K_DecodesEveryCaseBack()
    {
        foreach (var c in ReadCases("models/stories260K/tokenizer_cases.json"))
            Assert.Equal(c.Text, Stories.Value.Decode(c.Ids, skipSpecialTokens: true));
    }

    [RequiresSharedFact("models/stories260K/tokenizer.json")]
    public void Stories260K_SpecialTokensAndVocabulary()
    {
        var t = Stories.Value;
        Assert.Equal(512, t.VocabSize);
        Assert.Equal(1, t.BosTokenId);
        Assert.Equal(2, t.EosTokenId);
        Assert.Equal(0, t.UnkTokenId);
        Assert.Null(t.PadTokenId);
        Assert.True(t.AddsBosByDefault);
        Assert.Equal("<0x0A>", t.IdToToken(13));
        Assert.Equal(265, t.TokenToId("▁the"));
        Assert.Null(t.TokenToId("definitely-not-a-token"));
        Assert.Equal(t.Encode("Once upon a time").Skip(1), t.Encode("Once upon a time", addSpecialTokens: false));
        // Special tokens written in the text map to their ids; the normalizer prepends ▁ to each stretch of text.
        var ids = t.Encode("a</s>a", addSpecialTokens: false);
        Assert.Equal([261, 2, 261], ids);
        Assert.Equal("<s> a", t.Decode([1, 261]));
        Assert.Equal("a", t.Decode([1, 261], skipSpecialTokens: true));
    }

    [RequiresSharedFact("models/stories260K/tokenizer_cases.json")]
    public void Stories260K_FromFolderMatchesFromTokenizerJson()
    {
        var folder = Path.GetDirectoryName(SharedData.Require("models/stories260K/tokenizer.json"))!;
        var t = TokenizerLoader.FromFolder(folder);
        foreach (var c in ReadCases("models/stories260K/tokenizer_cases.json"))
            Assert.Equal(c.Ids, t.Encode(c.Text));
    }

    [RequiresSharedFact("models/gpt2-tokenizer/tokenizer_cases.json")]
    public void Gpt2_EncodesEveryCaseExactly()
    {
        var failures = new List<string>();
        foreach (var c in ReadCases("models/gpt2-tokenizer/tokenizer_cases.json"))
        {
            var ids = Gpt2.Value.Encode(c.Text);
            if (!ids.SequenceEqual(c.Ids))
                failures.Add($"{JsonSerializer.Serialize(c.Text)}: expected [{string.Join(",", c.Ids)}] got [{string.Join(",", ids)}]");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [RequiresSharedFact("models/gpt2-tokenizer/tokenizer_cases.json")]
    public void Gpt2_FromFolder_EncodesAndDecodesEveryCase()
    {
        var t = TokenizerLoader.FromFolder(Path.GetDirectoryName(SharedData.Require("models/gpt2-tokenizer/vocab.json"))!);
        foreach (var c in ReadCases("models/gpt2-tokenizer/tokenizer_cases.json"))
        {
            Assert.Equal(c.Ids, t.Encode(c.Text));
            Assert.Equal(c.Text, t.Decode(c.Ids));
        }
    }

    [RequiresSharedFact("models/gpt2-tokenizer/vocab.json")]
    public void Gpt2_SpecialTokensAndVocabulary()
    {
        var t = Gpt2.Value;
        Assert.Equal(50257, t.VocabSize);
        Assert.Equal(50256, t.BosTokenId);
        Assert.Equal(50256, t.EosTokenId);
        Assert.False(t.AddsBosByDefault);
        Assert.Equal("Ġthe", t.IdToToken(262));
        Assert.Equal(15496, t.TokenToId("Hello"));
        Assert.Equal([15496, 50256, 995], t.Encode("Hello<|endoftext|> world"));
        Assert.Equal("Hello<|endoftext|> world", t.Decode([15496, 50256, 995]));
        Assert.Equal("Hello world", t.Decode([15496, 50256, 995], skipSpecialTokens: true));
        Assert.Equal(t.Encode("Hello world"), t.Encode("Hello world", addSpecialTokens: false));
    }

    [RequiresSharedTheory("models/gpt2-tokenizer/vocab.json")]
    [InlineData("")]
    [InlineData("Ünïcödé 🙂🙃 𝐀𝐁𝐂 日本語 한국어 עברית العربية")]
    [InlineData("\u0000\u0001\t\r\n\u00A0\u2028 \u200B\uFEFF")]
    [InlineData("e\u0301 \u1112\u1161\u11AB  ＡＢＣ ①②")]
    [InlineData("lone surrogates are not text, but 𝄞 is")]
    public void Gpt2_RoundTripsArbitraryUnicode(string text)
    {
        Assert.Equal(text, Gpt2.Value.Decode(Gpt2.Value.Encode(text, addSpecialTokens: false)));
    }

    [RequiresSharedFact("models/gpt2-tokenizer/vocab.json")]
    public void Gpt2_RoundTripsRandomUnicode()
    {
        var rng = new Random(1234);
        for (var n = 0; n < 200; n++)
        {
            var sb = new System.Text.StringBuilder();
            var len = rng.Next(0, 40);
            for (var i = 0; i < len; i++)
            {
                int cp;
                do
                {
                    cp = rng.Next(4) switch
                    {
                        0 => rng.Next(0x20, 0x7F),
                        1 => rng.Next(0, 0x800),
                        2 => rng.Next(0x800, 0x10000),
                        _ => rng.Next(0x10000, 0x110000),
                    };
                } while (cp is >= 0xD800 and <= 0xDFFF);
                sb.Append(char.ConvertFromUtf32(cp));
            }
            var text = sb.ToString();
            Assert.Equal(text, Gpt2.Value.Decode(Gpt2.Value.Encode(text, addSpecialTokens: false)));
        }
    }

    [RequiresSharedFact("models/gpt2-tokenizer/vocab.json")]
    public void Gpt2_EncodesLargeTextQuicklyAndThreadSafely()
    {
        var words = new[] { "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog's", "back,", "1234", "naïve", "🙂", "\n", "  " };
        var rng = new Random(7);
        var sb = new System.Text.StringBuilder();
        while (sb.Length < 200_000) sb.Append(words[rng.Next(words.Length)]).Append(' ');
        var text = sb.ToString();

        var sw = System.Diagnostics.Stopwatch.StartNew();
        var ids = Gpt2.Value.Encode(text, addSpecialTokens: false);
        sw.Stop();
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20), $"encoding 200k characters took {sw.Elapsed}");
        Assert.Equal(text, Gpt2.Value.Decode(ids));

        var chunks = Enumerable.Range(0, 32).Select(i => text.Substring(i * 5000, 5000)).ToArray();
        var serial = chunks.Select(c => Gpt2.Value.Encode(c)).ToArray();
        var parallel = new int[chunks.Length][];
        Parallel.For(0, chunks.Length, i => parallel[i] = Gpt2.Value.Encode(chunks[i]));
        for (var i = 0; i < chunks.Length; i++) Assert.Equal(serial[i], parallel[i]);
    }
}
