using Loupe.Probes.Corpus;
using Loupe.Tokenizers;

namespace Loupe.Probes.Alignment;

/// <summary>
/// Tokenizes tagged sentences and puts each word's tag on its tokens. Steps:
/// 1. rebuild the text from the words (<see cref="Detokenizer.Join"/>), keeping each word's character span;
/// 2. encode it with the model's tokenizer (BOS as its template says);
/// 3. find each token's character span by decoding every prefix of the ids and measuring how much of
///    the text it reproduces: token k covers <c>[end(k−1), end(k))</c>. This is independent of the
///    tokenizer's space scheme (GPT-2's <c>Ġ</c>, SentencePiece's <c>▁</c> with a stripped leading space)
///    and of byte fallback (a byte that starts a multi-byte character decodes to U+FFFD, covers nothing,
///    and the byte that completes it covers the character);
/// 4. label tokens by <see cref="LabelPolicy"/>. A token that would carry two words' labels (a merged
///    <c>."</c>, say) is left unlabelled rather than guessed, and those words are counted.
/// A sentence whose ids do not decode back to exactly its text cannot be aligned and is skipped.
/// </summary>
public sealed class TokenAligner
{
    readonly ITokenizer _tokenizer;

    /// <param name="tokenizer">The model's tokenizer.</param>
    /// <param name="policy">Which tokens of a word are labelled.</param>
    /// <param name="addSpecialTokens">Whether to encode with the post-processor (BOS); default true, as the model was trained.</param>
    public TokenAligner(ITokenizer tokenizer, LabelPolicy policy = LabelPolicy.LastToken, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        Policy = policy;
        AddSpecialTokens = addSpecialTokens;
    }

    public LabelPolicy Policy { get; }
    public bool AddSpecialTokens { get; }

    /// <summary>Aligns one sentence; null when its tokens do not decode back to its text.</summary>
    /// <exception cref="InputError">A word is empty or contains white space.</exception>
    public AlignedSentence? Align(TaggedSentence sentence)
    {
        string text = Detokenizer.Join(sentence.Words.Select(w => w.Text).ToArray(), out var wordSpans);
        int[] ids;
        CharSpan[]? tokenSpans;
        if (_tokenizer is WordPieceTokenizer wordPiece)
        {
            // Uncased WordPiece does not decode back to the text (case, accents, spaces around punctuation); it reports offsets instead.
            var (pieces, offsets) = wordPiece.EncodeWithOffsets(text, AddSpecialTokens);
            ids = pieces;
            tokenSpans = [.. offsets.Select(o => new CharSpan(o.Start, o.End))];
        }
        else
        {
            ids = _tokenizer.Encode(text, AddSpecialTokens);
            tokenSpans = TokenSpans(_tokenizer, text, ids);
            if (tokenSpans is null) return null;
        }

        var labels = new int[ids.Length];
        Array.Fill(labels, -1);
        var owner = new int[ids.Length]; // the word that claimed each token, -1 none, -2 two or more
        Array.Fill(owner, -1);
        for (int w = 0; w < wordSpans.Length; w++)
        {
            var span = wordSpans[w];
            for (int k = 0; k < ids.Length; k++)
            {
                bool claims = Policy switch
                {
                    LabelPolicy.LastToken => tokenSpans[k].Contains(span.End - 1),
                    LabelPolicy.FirstToken => tokenSpans[k].Contains(span.Start),
                    _ => tokenSpans[k].Overlaps(span),
                };
                if (claims) owner[k] = owner[k] == -1 ? w : -2;
            }
        }
        var labelledWords = new HashSet<int>();
        for (int k = 0; k < ids.Length; k++)
            if (owner[k] >= 0)
            {
                labels[k] = UniversalTagset.IndexOf(sentence.Words[owner[k]].Tag);
                labelledWords.Add(owner[k]);
            }
        return new AlignedSentence(sentence, text, ids, tokenSpans, wordSpans, labels, wordSpans.Length - labelledWords.Count);
    }

    /// <summary>
    /// Aligns many sentences, skipping those longer than <paramref name="maxTokens"/> (the model's
    /// n_ctx) and those that cannot be aligned.
    /// </summary>
    public IReadOnlyList<AlignedSentence> AlignAll(IEnumerable<TaggedSentence> sentences, int maxTokens, out AlignmentSummary summary)
    {
        var kept = new List<AlignedSentence>();
        int offered = 0, tooLong = 0, unalignable = 0;
        foreach (var sentence in sentences)
        {
            offered++;
            var aligned = Align(sentence);
            if (aligned is null) unalignable++;
            else if (aligned.Tokens.Length > maxTokens) tooLong++;
            else kept.Add(aligned);
        }
        summary = new AlignmentSummary(offered, kept.Count, tooLong, unalignable,
            kept.Sum(s => s.WordSpans.Length), kept.Sum(s => s.LabelledTokens), kept.Sum(s => s.UnlabelledWords));
        return kept;
    }

    /// <summary>
    /// The characters of <paramref name="text"/> each of <paramref name="ids"/> decodes to <c>[pos]</c>,
    /// or null when the ids do not decode (special tokens skipped) back to exactly <paramref name="text"/>.
    /// </summary>
    public static CharSpan[]? TokenSpans(ITokenizer tokenizer, string text, int[] ids)
    {
        var spans = new CharSpan[ids.Length];
        int end = 0;
        for (int k = 0; k < ids.Length; k++)
        {
            string prefix = tokenizer.Decode(ids.AsSpan(0, k + 1), skipSpecialTokens: true);
            int matched = CommonPrefixLength(prefix, text);
            // Matching can only grow: a prefix of the ids decodes to a prefix of the text.
            int next = Math.Max(end, matched);
            spans[k] = new CharSpan(end, next);
            end = next;
        }
        string full = tokenizer.Decode(ids, skipSpecialTokens: true);
        return string.Equals(full, text, StringComparison.Ordinal) && end == text.Length ? spans : null;
    }

    static int CommonPrefixLength(string a, string b)
    {
        int n = Math.Min(a.Length, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        return i;
    }
}
