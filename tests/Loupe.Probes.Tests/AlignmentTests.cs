using Loupe.Models;
using Loupe.Probes.Alignment;
using Loupe.Probes.Corpus;
using Loupe.Testing;
using Loupe.Tokenizers;

namespace Loupe.Probes.Tests;

/// <summary>Rebuilding text from words and putting word tags on tokens.</summary>
public class AlignmentTests
{
    static TaggedSentence Parse(string line) => BrownCorpus.ParseSentence(line, "test", 1);

    [Theory]
    [InlineData("The cat 's toy , it said .", "The cat's toy, it said.")]
    [InlineData("`` I do n't know '' , he said .", "\"I don't know\", he said.")]
    [InlineData("It cost $ 5 ( or so ) ; fine !", "It cost $5 (or so); fine!")]
    [InlineData("They saw 'em -- twice ?", "They saw 'em -- twice?")]
    public void DetokenizesWithoutSpacesBeforePunctuationAndClitics(string words, string expected)
    {
        var list = words.Split(' ');
        string text = Detokenizer.Join(list, out var spans);
        Assert.Equal(expected, text);
        for (int i = 0; i < list.Length; i++)
            Assert.Equal(Detokenizer.Surface(list[i]), text[spans[i].Start..spans[i].End]);
    }

    [RequiresSharedFact("models/stories260K")]
    public void LabelsTheLastTokenOfEachWordWithStories260KsTokenizer()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var tokenizer = model.Tokenizer!;
        var aligned = new TokenAligner(tokenizer).Align(Parse("The/at cat's/nn$ toy/nn ,/, it/pps said/vbd ./."))!;
        Assert.Equal("The cat's toy, it said.", aligned.Text);
        Assert.Equal(tokenizer.Encode(aligned.Text), aligned.Tokens);
        Assert.Equal(1, aligned.Tokens[0]);
        Assert.Equal(-1, aligned.Labels[0]); // BOS
        // The tokenizer splits "cat's" into ▁c·at·'·s and "toy" into ▁to·y: only the last piece of each word is labelled.
        var labelled = Enumerable.Range(0, aligned.Tokens.Length).Where(k => aligned.Labels[k] >= 0)
            .Select(k => (tokenizer.IdToToken(aligned.Tokens[k]), UniversalTagset.Tags[aligned.Labels[k]])).ToArray();
        Assert.Equal([("▁The", "DET"), ("s", "NOUN"), ("y", "NOUN"), (",", "."), ("▁it", "PRON"), ("▁said", "VERB"), (".", ".")], labelled);
        Assert.Equal(7, aligned.LabelledTokens);
        Assert.Equal(0, aligned.UnlabelledWords);
        // Each labelled token ends exactly where its word ends.
        for (int w = 0, k = 0; k < aligned.Tokens.Length; k++)
            if (aligned.Labels[k] >= 0) Assert.Equal(aligned.WordSpans[w++].End, aligned.TokenSpans[k].End);
    }

    [RequiresSharedFact("models/stories260K")]
    public void FirstAndEveryTokenPoliciesLabelOtherPieces()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var sentence = Parse("The/at cat's/nn$ toy/nn ./.");
        var first = new TokenAligner(model.Tokenizer!, LabelPolicy.FirstToken).Align(sentence)!;
        var every = new TokenAligner(model.Tokenizer!, LabelPolicy.EveryToken).Align(sentence)!;
        string Pieces(AlignedSentence a) => string.Join("|", Enumerable.Range(0, a.Tokens.Length).Where(k => a.Labels[k] >= 0).Select(k => model.Tokenizer!.IdToToken(a.Tokens[k])));
        Assert.Equal("▁The|▁c|▁to|.", Pieces(first));
        Assert.Equal("▁The|▁c|at|'|s|▁to|y|.", Pieces(every));
    }

    [Fact]
    public void ATokenEndingTwoWordsIsLeftUnlabelledAndCounted()
    {
        // Greedy longest match over a GPT-2-like vocabulary where '."' is one token.
        var tokenizer = new GreedyTokenizer(["He", " said", "hi", ".\"", ".", "\"", " \"", " "]);
        var aligned = new TokenAligner(tokenizer).Align(Parse("He/pps said/vbd ``/`` hi/uh ./. ''/''"))!;
        Assert.Equal("He said \"hi.\"", aligned.Text);
        Assert.Equal(["He", " said", " \"", "hi", ".\""], aligned.Tokens.Select(t => tokenizer.IdToToken(t)));
        Assert.Equal(["PRON", "VERB", ".", "PRT", null], aligned.Labels.Select(l => l >= 0 ? UniversalTagset.Tags[l] : null));
        Assert.Equal(2, aligned.UnlabelledWords);
    }

    [Fact]
    public void SentencesThatDoNotRoundTripOrDoNotFitAreSkipped()
    {
        var lowercasing = new GreedyTokenizer(["the", " cat", " sat", "."], lowercase: true);
        Assert.Null(new TokenAligner(lowercasing).Align(Parse("The/at cat/nn sat/vbd ./.")));

        var kept = new TokenAligner(lowercasing).AlignAll(
            [Parse("the/at cat/nn ./."), Parse("the/at cat/nn sat/vbd ./."), Parse("The/at cat/nn ./.")], maxTokens: 3, out var summary);
        Assert.Single(kept);
        Assert.Equal(new AlignmentSummary(3, 1, 1, 1, 3, 3, 0), summary);
    }

    /// <summary>Greedy longest match; every character not in the vocabulary is its own token. Decode concatenates.</summary>
    sealed class GreedyTokenizer : ITokenizer
    {
        readonly List<string> _vocab;
        readonly bool _lowercase;

        public GreedyTokenizer(IEnumerable<string> vocab, bool lowercase = false)
        {
            _vocab = vocab.ToList();
            _lowercase = lowercase;
        }

        public int VocabSize => _vocab.Count;
        public int? BosTokenId => null;
        public int? EosTokenId => null;
        public int? PadTokenId => null;
        public int? UnkTokenId => null;
        public bool AddsBosByDefault => false;

        public int[] Encode(string text, bool addSpecialTokens = true)
        {
            if (_lowercase) text = text.ToLowerInvariant();
            var ids = new List<int>();
            for (int i = 0; i < text.Length;)
            {
                int best = -1;
                for (int v = 0; v < _vocab.Count; v++)
                    if (string.CompareOrdinal(text, i, _vocab[v], 0, _vocab[v].Length) == 0 && (best < 0 || _vocab[v].Length > _vocab[best].Length)) best = v;
                if (best < 0)
                {
                    _vocab.Add(text[i].ToString());
                    best = _vocab.Count - 1;
                }
                ids.Add(best);
                i += _vocab[best].Length;
            }
            return ids.ToArray();
        }

        public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
        {
            var text = new System.Text.StringBuilder();
            foreach (int id in ids) text.Append(_vocab[id]);
            return text.ToString();
        }

        public string IdToToken(int id) => _vocab[id];
        public int? TokenToId(string token) => _vocab.IndexOf(token) is var i && i >= 0 ? i : null;
    }
}
