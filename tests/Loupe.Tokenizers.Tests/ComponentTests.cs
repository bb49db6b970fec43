using System.Text;

namespace Loupe.Tokenizers.Tests;

/// <summary>Unit tests of the pipeline components against the behaviour of HF <c>tokenizers</c>.</summary>
public class ComponentTests
{
    static string[] Texts(List<Piece> pieces) => pieces.Select(p => p.Text).ToArray();

    static List<Piece> Run(PreTokenizer pt, string text) => pt.Run(new Piece(text, true));

    // ------------------------------------------------------------------ byte-level alphabet

    [Fact]
    public void ByteLevelAlphabet_MatchesGpt2BytesToUnicode()
    {
        var chars = Enumerable.Range(0, 256).Select(b => ByteLevelAlphabet.ByteToChar((byte)b)).ToArray();
        Assert.Equal(256, chars.Distinct().Count());
        Assert.Equal('!', ByteLevelAlphabet.ByteToChar((byte)'!'));
        Assert.Equal('\u0120', ByteLevelAlphabet.ByteToChar(0x20)); // Ġ
        Assert.Equal('\u010A', ByteLevelAlphabet.ByteToChar(0x0A)); // Ċ
        Assert.Equal('\u0100', ByteLevelAlphabet.ByteToChar(0x00));
        Assert.Equal('\u0121', ByteLevelAlphabet.ByteToChar(0x7F));
        Assert.Equal('\u0143', ByteLevelAlphabet.ByteToChar(0xAD)); // Ń
        Assert.Equal('\u00FF', ByteLevelAlphabet.ByteToChar(0xFF));
        for (var b = 0; b < 256; b++)
        {
            Assert.True(ByteLevelAlphabet.TryCharToByte(chars[b], out var back));
            Assert.Equal(b, back);
        }
        Assert.Equal("ĠâĤ¬", ByteLevelAlphabet.Encode(" €"));
    }

    // ------------------------------------------------------------------ Unicode normalization

    [Theory] // expected values from CPython's unicodedata
    [InlineData("e\u0301", "\u00E9", "e\u0301", "\u00E9", "e\u0301")]
    [InlineData("\u00C5", "\u00C5", "A\u030A", "\u00C5", "A\u030A")]
    [InlineData("\u212B", "\u00C5", "A\u030A", "\u00C5", "A\u030A")]
    [InlineData("\uFB01", "\uFB01", "\uFB01", "fi", "fi")]
    [InlineData("\u2460", "\u2460", "\u2460", "1", "1")]
    [InlineData("\uD55C", "\uD55C", "\u1112\u1161\u11AB", "\uD55C", "\u1112\u1161\u11AB")]
    [InlineData("\u1112\u1161\u11AB", "\uD55C", "\u1112\u1161\u11AB", "\uD55C", "\u1112\u1161\u11AB")]
    [InlineData("\u1E69", "\u1E69", "s\u0323\u0307", "\u1E69", "s\u0323\u0307")]
    [InlineData("s\u0307\u0323", "\u1E69", "s\u0323\u0307", "\u1E69", "s\u0323\u0307")]
    [InlineData("\u0958", "\u0915\u093C", "\u0915\u093C", "\u0915\u093C", "\u0915\u093C")]
    [InlineData("caf\u00E9 na\u00EFve", "caf\u00E9 na\u00EFve", "cafe\u0301 nai\u0308ve", "caf\u00E9 na\u00EFve", "cafe\u0301 nai\u0308ve")]
    [InlineData("\u0132", "\u0132", "\u0132", "IJ", "IJ")]
    [InlineData("\u00BD", "\u00BD", "\u00BD", "1\u20442", "1\u20442")]
    [InlineData("\U0001D400\U0001D401", "\U0001D400\U0001D401", "\U0001D400\U0001D401", "AB", "AB")]
    [InlineData("\uFF76\uFF9E", "\uFF76\uFF9E", "\uFF76\uFF9E", "\u30AC", "\u30AB\u3099")]
    [InlineData("\u0344", "\u0308\u0301", "\u0308\u0301", "\u0308\u0301", "\u0308\u0301")]
    [InlineData("a\u0328\u0301\u0302", "\u0105\u0301\u0302", "a\u0328\u0301\u0302", "\u0105\u0301\u0302", "a\u0328\u0301\u0302")]
    [InlineData("\u0B47\u0B3E", "\u0B4B", "\u0B47\u0B3E", "\u0B4B", "\u0B47\u0B3E")]
    [InlineData("\uFB2C", "\u05E9\u05BC\u05C1", "\u05E9\u05BC\u05C1", "\u05E9\u05BC\u05C1", "\u05E9\u05BC\u05C1")]
    [InlineData("x\u0301\u0301", "x\u0301\u0301", "x\u0301\u0301", "x\u0301\u0301", "x\u0301\u0301")]
    [InlineData("\u0301e", "\u0301e", "\u0301e", "\u0301e", "\u0301e")]
    [InlineData("plain ascii", "plain ascii", "plain ascii", "plain ascii", "plain ascii")]
    public void UnicodeNormalization_MatchesUnicodeData(string input, string nfc, string nfd, string nfkc, string nfkd)
    {
        Assert.Equal(nfc, UnicodeNormalization.Normalize(input, NormalizationForm.FormC));
        Assert.Equal(nfd, UnicodeNormalization.Normalize(input, NormalizationForm.FormD));
        Assert.Equal(nfkc, UnicodeNormalization.Normalize(input, NormalizationForm.FormKC));
        Assert.Equal(nfkd, UnicodeNormalization.Normalize(input, NormalizationForm.FormKD));
    }

    [Fact]
    public void Normalizers_Basic()
    {
        Assert.Equal("▁hello▁world", new SequenceNormalizer([new PrependNormalizer("▁"), new ReplaceNormalizer(" ", null, "▁")]).Normalize("hello world"));
        Assert.Equal("", new PrependNormalizer("▁").Normalize(""));
        Assert.Equal("a-b-c", new ReplaceNormalizer(null, new UnicodeRegex(@"\s+"), "-").Normalize("a  b\t\nc"));
        Assert.Equal("$1x", new ReplaceNormalizer(null, new UnicodeRegex("a"), "$1").Normalize("ax")); // content is literal
        Assert.Equal("héllo i\u0307", new LowercaseNormalizer().Normalize("HÉLLO İ"));
        Assert.Equal("a b", new StripNormalizer(true, true).Normalize(" \t a b \n"));
        Assert.Equal("a b \n", new StripNormalizer(true, false).Normalize(" \t a b \n"));
        Assert.Equal("cafe", new SequenceNormalizer([new UnicodeNormalizer(NormalizationForm.FormD), new StripAccentsNormalizer()]).Normalize("café"));
    }

    // ------------------------------------------------------------------ pre-tokenizers

    [Theory] // the cases of HF's normalizer.rs split tests
    [InlineData("Removed", new[] { "The", "final", "countdown" })]
    [InlineData("Isolated", new[] { "The", "-", "final", "-", "-", "countdown" })]
    [InlineData("MergedWithPrevious", new[] { "The-", "final-", "-", "countdown" })]
    [InlineData("MergedWithNext", new[] { "The", "-final", "-", "-countdown" })]
    [InlineData("Contiguous", new[] { "The", "-", "final", "--", "countdown" })]
    public void Split_Behaviors(string behavior, string[] expected)
    {
        var split = new SplitPreTokenizer(new UnicodeRegex("-"), Enum.Parse<SplitBehavior>(behavior), invert: false);
        Assert.Equal(expected, Texts(Run(split, "The-final--countdown")));
    }

    [Fact]
    public void Split_InvertAndRegexPatterns()
    {
        // invert: the pattern describes the pieces to keep.
        var words = new SplitPreTokenizer(new UnicodeRegex(@"\w+"), SplitBehavior.Removed, invert: true);
        Assert.Equal(["Hey", "man"], Texts(Run(words, "Hey, man!")));
        var ws = new SplitPreTokenizer(new UnicodeRegex(@"\s+"), SplitBehavior.Removed, invert: false);
        Assert.Equal(["a", "b", "c"], Texts(Run(ws, "  a b\t\nc ")));
    }

    [Fact]
    public void Split_RegexMatchesSupplementaryCharactersAsCodePoints()
    {
        var split = new SplitPreTokenizer(new UnicodeRegex(@"\p{L}+|\p{N}{1,2}"), SplitBehavior.Isolated, false);
        // 𝐀 (U+1D400, Lu) and 𝟏 (U+1D7CF, Nd) are single code points of two UTF-16 units each.
        Assert.Equal(["𝐀𝐁", " ", "ab", "𝟏𝟐", "𝟑"], Texts(Run(split, "𝐀𝐁 ab𝟏𝟐𝟑")));
        Assert.Equal(["🙂", "x"], Texts(Run(new SplitPreTokenizer(new UnicodeRegex(@"\p{L}+"), SplitBehavior.Isolated, false), "🙂x")));
    }

    [Fact]
    public void Metaspace_PreTokenizer()
    {
        var always = new MetaspacePreTokenizer("▁", PrependScheme.Always, split: true);
        Assert.Equal(["▁Hey", "▁friend!"], Texts(Run(always, "Hey friend!")));
        Assert.Equal(["▁Hey", "▁", "▁", "▁friend!"], Texts(Run(always, "Hey   friend!")));
        var never = new MetaspacePreTokenizer("▁", PrependScheme.Never, split: true);
        Assert.Equal(["Hey", "▁friend!"], Texts(Run(never, "Hey friend!")));
        var first = new MetaspacePreTokenizer("▁", PrependScheme.First, split: false);
        Assert.Equal(["▁Hey▁friend"], Texts(first.Run(new Piece("Hey friend", true))));
        Assert.Equal(["Hey▁friend"], Texts(first.Run(new Piece("Hey friend", false))));
    }

    [Fact]
    public void Digits_Punctuation_Whitespace_Bert()
    {
        Assert.Equal(["Hey ", "1", "2", "3", " friend!"], Texts(Run(new DigitsPreTokenizer(true), "Hey 123 friend!")));
        Assert.Equal(["Hey ", "123", " friend!"], Texts(Run(new DigitsPreTokenizer(false), "Hey 123 friend!")));
        Assert.Equal(["Hey friend", "!", "     How are you", "?", "!", "?"],
            Texts(Run(new PunctuationPreTokenizer(SplitBehavior.Isolated), "Hey friend!     How are you?!?")));
        Assert.Equal(["How", "are", "you", "doing", "?"], Texts(Run(new WhitespacePreTokenizer(), "How are you doing?")));
        Assert.Equal(["Hey", "man", "!", "Good", "?"], Texts(Run(new WhitespacePreTokenizer(), "Hey man!Good?")));
        Assert.Equal(["Hey", "friend", "!", "How", "are", "you", "?", "!", "?"],
            Texts(Run(new BertPreTokenizer(), "Hey friend!     How are you?!?")));
        Assert.Equal(["a,b", "c"], Texts(Run(new CharSplitPreTokenizer(Splitting.IsWhiteSpace), "a,b \u00A0c")));
    }

    [Fact]
    public void ByteLevel_PreTokenizer()
    {
        var gpt2 = new ByteLevelPreTokenizer(addPrefixSpace: false, useRegex: true);
        Assert.Equal(["Hello", "Ġmy", "Ġfriend", ",", "Ġhow", "Ġis", "Ġyour", "Ġday", "Ġgoing", "?"],
            Texts(Run(gpt2, "Hello my friend, how is your day going?")));
        Assert.Equal(["Hello", "Ġthere", "ĊĊĠ", "Ġworld", "ĠĠ"], Texts(Run(gpt2, "Hello there\n\n  world  ")));
        Assert.Equal(["I", "'m", "Ġfine", "'s"], Texts(Run(gpt2, "I'm fine's")));
        var prefixed = new ByteLevelPreTokenizer(addPrefixSpace: true, useRegex: true);
        Assert.Equal(["Ġhello"], Texts(Run(prefixed, "hello")));
        Assert.Equal(["Ġhello"], Texts(Run(prefixed, " hello")));
        var noRegex = new ByteLevelPreTokenizer(addPrefixSpace: false, useRegex: false);
        Assert.Equal(["aĠbĊ"], Texts(Run(noRegex, "a b\n")));
    }

    // ------------------------------------------------------------------ decoders

    [Fact]
    public void Decoders()
    {
        Assert.Equal(["ab", "c"], new ByteFallbackDecoder().DecodeChain(["<0x61>", "<0x62>", "c"]));
        Assert.Equal(["\uFFFD", "\uFFFD", "x"], new ByteFallbackDecoder().DecodeChain(["<0xE2>", "<0x82>", "x"]));
        Assert.Equal(["€"], new ByteFallbackDecoder().DecodeChain(["<0xE2>", "<0x82>", "<0xAC>"]));
        Assert.Equal(["<0xZZ>"], new ByteFallbackDecoder().DecodeChain(["<0xZZ>"]));
        Assert.Equal(["Hey", " friend!"], new MetaspaceDecoder("▁", PrependScheme.Always).DecodeChain(["▁Hey", "▁friend!"]));
        Assert.Equal([" Hey", " friend!"], new MetaspaceDecoder("▁", PrependScheme.Never).DecodeChain(["▁Hey", "▁friend!"]));
        Assert.Equal(["hey", "friend ", ""], new StripDecoder(new System.Text.Rune(' '), 1, 0).DecodeChain([" hey", "friend ", " "]));
        Assert.Equal(["  x "], new StripDecoder(new System.Text.Rune(' '), 0, 2).DecodeChain(["  x   "]));
        Assert.Equal(["abc"], new FuseDecoder().DecodeChain(["a", "b", "c"]));
        Assert.Equal("hello world", new ByteLevelDecoder().Decode(["hello", "Ġworld"]));
        Assert.Equal("€", new ByteLevelDecoder().Decode(["âĤ", "¬"]));
        Assert.Equal("\uFFFD", new ByteLevelDecoder().Decode(["âĤ"]));
        Assert.Equal("<|x|>€", new ByteLevelDecoder().Decode(["<|x|>", "âĤ¬"]));
        Assert.Equal("ab c", new BpeSuffixDecoder("</w>").Decode(["a", "b</w>", "c</w>"]));
        var llama = new SequenceDecoder([new ReplaceDecoder("▁", null, " "), new ByteFallbackDecoder(), new FuseDecoder(), new StripDecoder(new System.Text.Rune(' '), 1, 0)]);
        Assert.Equal("Hi €!", llama.Decode(["▁Hi", "▁", "<0xE2>", "<0x82>", "<0xAC>", "!"]));
    }

    // ------------------------------------------------------------------ BPE model

    static BpeModel Bpe(string[] vocab, (string, string)[] merges, BpeOptions? options = null) =>
        new(vocab.Select((t, i) => (t, i)).ToDictionary(x => x.t, x => x.i), merges, options ?? new BpeOptions(), "test", rank => $"merges[{rank}]");

    static int[] Tokenize(BpeModel m, string word)
    {
        var ids = new List<int>();
        m.Tokenize(word, ids);
        return ids.ToArray();
    }

    [Fact]
    public void Bpe_AppliesLowestRankFirstAndLeftmostOnTies()
    {
        // a=0 b=1 c=2 ab=3 bc=4 abc=5 aa=6 aaaa=7
        var m = Bpe(["a", "b", "c", "ab", "bc", "abc", "aa", "aaaa"],
            [("b", "c"), ("a", "b"), ("a", "bc"), ("a", "a"), ("aa", "aa")]);
        Assert.Equal([5], Tokenize(m, "abc"));     // bc first (rank 0), then a+bc
        Assert.Equal([3, 3], Tokenize(m, "abab"));
        Assert.Equal([7, 0], Tokenize(m, "aaaaa")); // aa aa a → aaaa a
        Assert.Equal([7, 7], Tokenize(m, "aaaaaaaa"));
        Assert.Equal([6, 5], Tokenize(m, "aaabc")); // bc, then a+bc (rank 2) before a+a (rank 3)
    }

    [Fact]
    public void Bpe_MatchesNaiveReferenceOnRandomWords()
    {
        // Reference: repeatedly merge the adjacent pair with the lowest rank, leftmost first.
        string[] vocab = ["a", "b", "c", "ab", "bc", "ca", "abc", "aa", "bca", "cab", "aab", "abca"];
        (string, string)[] merges = [("a", "b"), ("b", "c"), ("c", "a"), ("ab", "c"), ("a", "a"), ("bc", "a"), ("c", "ab"), ("a", "ab"), ("ab", "ca")];
        var m = Bpe(vocab, merges);
        var rank = merges.Select((p, i) => (p, i)).ToDictionary(x => x.p, x => x.i);
        var rng = new Random(42);
        for (var n = 0; n < 500; n++)
        {
            var word = new string(Enumerable.Range(0, rng.Next(1, 30)).Select(_ => "abc"[rng.Next(3)]).ToArray());
            var symbols = word.Select(c => c.ToString()).ToList();
            while (true)
            {
                var best = -1;
                var bestRank = int.MaxValue;
                for (var i = 0; i + 1 < symbols.Count; i++)
                    if (rank.TryGetValue((symbols[i], symbols[i + 1]), out var r) && r < bestRank) { best = i; bestRank = r; }
                if (best < 0) break;
                symbols[best] += symbols[best + 1];
                symbols.RemoveAt(best + 1);
            }
            var expected = symbols.Select(s => Array.IndexOf(vocab, s)).ToArray();
            Assert.Equal(expected, Tokenize(m, word));
        }
    }

    [Fact]
    public void Bpe_ContinuingSubwordPrefixAndEndOfWordSuffix()
    {
        var prefixed = Bpe(["a", "##b", "##c", "ab", "##bc", "abc"], [("a", "##b"), ("ab", "##c")],
            new BpeOptions { ContinuingSubwordPrefix = "##" });
        Assert.Equal([5], Tokenize(prefixed, "abc"));
        Assert.Equal([3], Tokenize(prefixed, "ab"));

        var suffixed = Bpe(["a", "b", "b</w>", "ab</w>", "a</w>"], [("a", "b</w>")], new BpeOptions { EndOfWordSuffix = "</w>" });
        Assert.Equal([3], Tokenize(suffixed, "ab"));
        Assert.Equal([0, 1, 3], Tokenize(suffixed, "abab"));
        Assert.Equal([4], Tokenize(suffixed, "a"));
    }

    [Fact]
    public void Bpe_UnknownsAndByteFallback()
    {
        string[] vocab = ["<unk>", "a", "<0xC3>", "<0xA9>"];
        Assert.Equal([1, 0, 1], Tokenize(Bpe(vocab, [], new BpeOptions { UnkToken = "<unk>", FuseUnk = true }), "axyza"));
        Assert.Equal([1, 0, 0, 0, 1], Tokenize(Bpe(vocab, [], new BpeOptions { UnkToken = "<unk>" }), "axyza"));
        Assert.Equal([1, 2, 3], Tokenize(Bpe(vocab, [], new BpeOptions { UnkToken = "<unk>", ByteFallback = true }), "aé"));
        // A character whose bytes are not all in the vocabulary falls back to <unk>.
        Assert.Equal([1, 0], Tokenize(Bpe(vocab, [], new BpeOptions { UnkToken = "<unk>", ByteFallback = true }), "a€"));
        // Without unk_token, unknown characters are dropped (as in HF).
        Assert.Equal([1, 1], Tokenize(Bpe(vocab, [], new BpeOptions()), "a€a"));
    }

    [Fact]
    public void AddedVocabulary_LeftmostLongestMatching()
    {
        var added = new AddedVocabulary([new AddedToken(10, "<a>", true), new AddedToken(11, "<a><b>", true), new AddedToken(12, "<b>", true)], null);
        var segments = added.SplitRaw("x<a><b><b>y<a>");
        Assert.Equal([(0, 1, -1), (1, 7, 11), (7, 10, 12), (10, 11, -1), (11, 14, 10)],
            segments.Select(s => (s.Start, s.End, s.Token?.Id ?? -1)).ToArray());
    }
}
