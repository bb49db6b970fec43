namespace Loupe.Probes.Alignment;

/// <summary>A half-open range of characters <c>[Start, End)</c> in a string.</summary>
public readonly record struct CharSpan(int Start, int End)
{
    public int Length => End - Start;
    public bool Contains(int index) => index >= Start && index < End;
    public bool Overlaps(CharSpan other) => Start < other.End && other.Start < End;
}

/// <summary>
/// Rebuilds running text from a tokenized sentence the way it would be printed: one space between
/// words, except none before closing punctuation (<c>, . ; : ! ? ) ] %</c>, closing quotes) and
/// clitics (<c>'s 're 'll 've 'd 'm n't</c>), and none after opening brackets, opening quotes and
/// <c>$</c>. Brown's quote tokens <c>``</c> and <c>''</c> become <c>"</c>; a lone <c>'</c> (Brown uses it
/// to open and to close) and <c>--</c> are spaced like words. Every word keeps its character span.
/// </summary>
public static class Detokenizer
{
    static readonly HashSet<string> s_noSpaceBefore = new(StringComparer.Ordinal)
        { ",", ".", ";", ":", "!", "?", ")", "]", "}", "''", "%", "...", "'s", "'re", "'ll", "'ve", "'d", "'m", "n't", "’s", "’re", "’ll", "’ve", "’d", "’m", "n’t" };

    static readonly HashSet<string> s_noSpaceAfter = new(StringComparer.Ordinal) { "(", "[", "{", "``", "$" };

    /// <summary>The text a word contributes (<c>``</c> and <c>''</c> → <c>"</c>; everything else as is).</summary>
    public static string Surface(string word) => word is "``" or "''" ? "\"" : word;

    /// <summary>Joins <paramref name="words"/> into text.</summary>
    /// <param name="words">The corpus words, in order.</param>
    /// <param name="wordSpans">Where each word's surface text lies in the result.</param>
    /// <exception cref="InputError">A word is empty or contains white space (it would not survive tokenization as one word).</exception>
    public static string Join(IReadOnlyList<string> words, out CharSpan[] wordSpans)
    {
        var text = new System.Text.StringBuilder();
        wordSpans = new CharSpan[words.Count];
        for (int i = 0; i < words.Count; i++)
        {
            string word = words[i];
            if (word.Length == 0 || word.Any(char.IsWhiteSpace))
                throw new InputError($"word {i} ('{word}') is empty or contains white space");
            if (i > 0 && !s_noSpaceAfter.Contains(words[i - 1]) && !s_noSpaceBefore.Contains(word.ToLowerInvariant()))
                text.Append(' ');
            string surface = Surface(word);
            wordSpans[i] = new CharSpan(text.Length, text.Length + surface.Length);
            text.Append(surface);
        }
        return text.ToString();
    }
}
