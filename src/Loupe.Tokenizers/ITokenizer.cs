namespace Loupe.Tokenizers;

/// <summary>
/// A text tokenizer: maps text to token ids and back, following the Hugging Face
/// <c>tokenizers</c> semantics of the files it was loaded from.
/// Implementations are immutable and safe to use from several threads at once.
/// </summary>
public interface ITokenizer
{
    /// <summary>Largest token id plus one, over the model vocabulary and the added tokens.</summary>
    int VocabSize { get; }

    /// <summary>Id of the beginning-of-sequence token, or null when the tokenizer has none.</summary>
    int? BosTokenId { get; }

    /// <summary>Id of the end-of-sequence token, or null when the tokenizer has none.</summary>
    int? EosTokenId { get; }

    /// <summary>Id of the padding token, or null when the tokenizer has none.</summary>
    int? PadTokenId { get; }

    /// <summary>Id of the unknown token, or null when the tokenizer has none.</summary>
    int? UnkTokenId { get; }

    /// <summary>True when <see cref="Encode"/> with <c>addSpecialTokens</c> prepends the BOS token.</summary>
    bool AddsBosByDefault { get; }

    /// <summary>
    /// Encodes <paramref name="text"/> to token ids. Added tokens written in the text (such as
    /// <c>&lt;|endoftext|&gt;</c>) map to their ids. When <paramref name="addSpecialTokens"/> is true
    /// the post-processor runs (it typically prepends BOS).
    /// </summary>
    int[] Encode(string text, bool addSpecialTokens = true);

    /// <summary>
    /// Decodes token ids back to text. When <paramref name="skipSpecialTokens"/> is true, tokens flagged
    /// special are dropped.
    /// </summary>
    /// <exception cref="InputError">An id has no token (negative, past the vocabulary, or a gap in it); the message names the id.</exception>
    string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false);

    /// <summary>The raw vocabulary string of a token id (byte-level tokens stay in their mapped alphabet).</summary>
    /// <exception cref="InputError">The id has no token; the message names it.</exception>
    string IdToToken(int id);

    /// <summary>The id of a raw vocabulary string (added tokens first), or null when absent.</summary>
    int? TokenToId(string token);
}
