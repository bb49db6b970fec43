using Loupe.Probes.Corpus;

namespace Loupe.Probes.Alignment;

/// <summary>Which tokens of a word carry the word's label.</summary>
public enum LabelPolicy
{
    /// <summary>The token holding the word's last character (default): in a causal model it is the first position that has read the whole word.</summary>
    LastToken,
    /// <summary>The token holding the word's first character.</summary>
    FirstToken,
    /// <summary>Every token that overlaps the word.</summary>
    EveryToken,
}

/// <summary>A sentence tokenized for a model, with a label per token.</summary>
/// <param name="Source">The tagged sentence.</param>
/// <param name="Text">The detokenized text that was encoded.</param>
/// <param name="Tokens">Token ids <c>[pos]</c>, BOS first when the tokenizer adds one.</param>
/// <param name="TokenSpans">Characters of <paramref name="Text"/> each token decodes to <c>[pos]</c> (empty for BOS and for a byte that only starts a character).</param>
/// <param name="WordSpans">Characters of each word <c>[word]</c>.</param>
/// <param name="Labels">Class per token <c>[pos]</c>: an index into <see cref="UniversalTagset.Tags"/>, or -1 for an unlabelled token.</param>
/// <param name="UnlabelledWords">Words whose label token was shared with another word's and so was left unlabelled.</param>
public sealed record AlignedSentence(TaggedSentence Source, string Text, int[] Tokens, CharSpan[] TokenSpans, CharSpan[] WordSpans, int[] Labels, int UnlabelledWords)
{
    /// <summary>How many tokens carry a label.</summary>
    public int LabelledTokens => Labels.Count(l => l >= 0);
}

/// <summary>Counts from aligning many sentences.</summary>
/// <param name="Sentences">Sentences offered.</param>
/// <param name="Aligned">Sentences kept.</param>
/// <param name="TooLong">Skipped: more tokens than the context allows.</param>
/// <param name="Unalignable">Skipped: the tokens do not decode back to the text (the tokenizer normalizes it).</param>
/// <param name="Words">Words in the kept sentences.</param>
/// <param name="LabelledTokens">Labelled tokens in the kept sentences.</param>
/// <param name="UnlabelledWords">Words in the kept sentences that got no token (shared label token).</param>
public sealed record AlignmentSummary(int Sentences, int Aligned, int TooLong, int Unalignable, int Words, int LabelledTokens, int UnlabelledWords);
