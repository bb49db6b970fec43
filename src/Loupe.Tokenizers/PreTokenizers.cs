using System.Text;

namespace Loupe.Tokenizers;

/// <summary>A pre-tokenizer (HF <c>pre_tokenizers</c>): splits normalized text into words for the model.</summary>
internal abstract class PreTokenizer
{
    /// <summary>Appends the pieces <paramref name="piece"/> splits into (empty pieces are dropped).</summary>
    public abstract void PreTokenize(Piece piece, List<Piece> output);

    /// <summary>Runs the pre-tokenizer over one piece and returns the non-empty results.</summary>
    public List<Piece> Run(Piece piece)
    {
        var output = new List<Piece>();
        PreTokenize(piece, output);
        output.RemoveAll(p => p.Text.Length == 0);
        return output;
    }
}

/// <summary>Applies several pre-tokenizers in order, each to every piece the previous produced.</summary>
/// Each step may grow the text (ByteLevel maps a byte to a character), so a file repeating such steps is
/// stopped by the same 16-fold limit as normalizers instead of doubling the text step after step.
internal sealed class SequencePreTokenizer(IReadOnlyList<PreTokenizer> preTokenizers, string source = "pre_tokenizer") : PreTokenizer
{
    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var current = new List<Piece> { piece };
        foreach (var pt in preTokenizers)
        {
            var next = new List<Piece>(current.Count * 2);
            foreach (var p in current)
                if (p.Text.Length > 0) pt.PreTokenize(p, next);
            Growth.Check(source, piece.Text.Length, next.Sum(p => (long)p.Text.Length));
            current = next;
        }
        foreach (var p in current)
            if (p.Text.Length > 0) output.Add(p);
    }
}

/// <summary>
/// GPT-2 byte-level pre-tokenizer: optional prefix space, the GPT-2 split regex, then each
/// piece's UTF-8 bytes mapped to <see cref="ByteLevelAlphabet"/>.
/// </summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : PreTokenizer
{
    /// <summary>The GPT-2 pre-tokenization pattern.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    static readonly UnicodeRegex Gpt2Regex = new(Gpt2Pattern);

    public bool AddPrefixSpace { get; } = addPrefixSpace;
    public bool UseRegex { get; } = useRegex;

    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var text = piece.Text;
        if (AddPrefixSpace && !text.StartsWith(' ')) text = " " + text;
        if (!UseRegex)
        {
            output.Add(new Piece(ByteLevelAlphabet.Encode(text), piece.AtStart));
            return;
        }
        var matches = new List<MatchSpan>();
        Gpt2Regex.FindMatches(text, matches);
        var split = new List<Piece>(matches.Count);
        Splitting.Apply(new Piece(text, piece.AtStart), matches, SplitBehavior.Isolated, false, split);
        foreach (var p in split) output.Add(new Piece(ByteLevelAlphabet.Encode(p.Text), p.AtStart));
    }
}

/// <summary>Splits on a regex or literal pattern with a delimiter behaviour (HF <c>Split</c>).</summary>
internal sealed class SplitPreTokenizer(UnicodeRegex pattern, SplitBehavior behavior, bool invert) : PreTokenizer
{
    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var matches = new List<MatchSpan>();
        pattern.FindMatches(piece.Text, matches);
        Splitting.Apply(piece, matches, behavior, invert, output);
    }
}

/// <summary>Whether and where <see cref="MetaspacePreTokenizer"/> prepends the replacement character.</summary>
internal enum PrependScheme
{
    Always,
    First,
    Never,
}

/// <summary>SentencePiece-style pre-tokenizer: spaces become <c>▁</c>, optionally prepended, optionally split before each <c>▁</c>.</summary>
internal sealed class MetaspacePreTokenizer(string replacement, PrependScheme scheme, bool split) : PreTokenizer
{
    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var text = piece.Text.Replace(" ", replacement, StringComparison.Ordinal);
        var prepend = scheme switch
        {
            PrependScheme.Always => true,
            PrependScheme.First => piece.AtStart,
            _ => false,
        };
        if (prepend && !text.StartsWith(replacement, StringComparison.Ordinal)) text = replacement + text;
        var p = new Piece(text, piece.AtStart);
        if (!split)
        {
            output.Add(p);
            return;
        }
        var rep = Rune.GetRuneAt(replacement, 0);
        var matches = new List<MatchSpan>();
        Splitting.FindCharMatches(text, r => r == rep, matches);
        Splitting.Apply(p, matches, SplitBehavior.MergedWithNext, false, output);
    }
}

/// <summary>Splits digits from other text: each digit alone, or runs of digits together.</summary>
internal sealed class DigitsPreTokenizer(bool individualDigits) : PreTokenizer
{
    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var matches = new List<MatchSpan>();
        Splitting.FindCharMatches(piece.Text, Splitting.IsNumeric, matches);
        Splitting.Apply(piece, matches, individualDigits ? SplitBehavior.Isolated : SplitBehavior.Contiguous, false, output);
    }
}

/// <summary>Splits on punctuation characters, each one a match.</summary>
internal sealed class PunctuationPreTokenizer(SplitBehavior behavior) : PreTokenizer
{
    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var matches = new List<MatchSpan>();
        Splitting.FindCharMatches(piece.Text, Splitting.IsPunctuation, matches);
        Splitting.Apply(piece, matches, behavior, false, output);
    }
}

/// <summary>Keeps runs of word characters and runs of other non-space characters (<c>\w+|[^\w\s]+</c>).</summary>
internal sealed class WhitespacePreTokenizer : PreTokenizer
{
    // Rust regex's Unicode \w (alphabetic, marks, digits, connector punctuation, joiners); .NET's \w lacks Mc, Me and Nl.
    const string Word = @"\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\u200C\u200D";
    static readonly UnicodeRegex Words = new($@"[{Word}]+|[^{Word}\s]+");

    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var matches = new List<MatchSpan>();
        Words.FindMatches(piece.Text, matches);
        Splitting.Apply(piece, matches, SplitBehavior.Removed, invert: true, output);
    }
}

/// <summary>Splits on a predicate character and removes it (WhitespaceSplit, CharDelimiterSplit).</summary>
internal sealed class CharSplitPreTokenizer(Func<Rune, bool> isDelimiter) : PreTokenizer
{
    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var matches = new List<MatchSpan>();
        Splitting.FindCharMatches(piece.Text, isDelimiter, matches);
        Splitting.Apply(piece, matches, SplitBehavior.Removed, false, output);
    }
}

/// <summary>BERT pre-tokenizer: split on whitespace (removed), then isolate punctuation.</summary>
internal sealed class BertPreTokenizer : PreTokenizer
{
    public override void PreTokenize(Piece piece, List<Piece> output)
    {
        var words = new List<Piece>();
        new CharSplitPreTokenizer(Splitting.IsWhiteSpace).PreTokenize(piece, words);
        var punct = new PunctuationPreTokenizer(SplitBehavior.Isolated);
        foreach (var w in words) punct.PreTokenize(w, output);
    }
}
