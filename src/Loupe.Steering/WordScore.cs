using System.Text.RegularExpressions;

namespace Loupe.Steering;

/// <summary>
/// A lexical trait score: the number of words of a text found in a positive list minus the number
/// found in a negative list. Words are runs of letters (and apostrophes), compared case-insensitively
/// and whole (no stemming: list every form, e.g. <c>cry, cried, crying</c>).
/// </summary>
public sealed partial class WordScore
{
    readonly HashSet<string> _positive, _negative;

    /// <exception cref="InputError">A list is empty or a word is in both lists.</exception>
    public WordScore(IEnumerable<string> positiveWords, IEnumerable<string> negativeWords)
    {
        _positive = Normalize(positiveWords);
        _negative = Normalize(negativeWords);
        if (_positive.Count == 0 || _negative.Count == 0)
            throw new InputError($"both word lists need at least one word (positive {_positive.Count}, negative {_negative.Count})");
        var both = _positive.Intersect(_negative).ToArray();
        if (both.Length > 0) throw new InputError($"words in both lists: {string.Join(", ", both)}");
    }

    public IReadOnlyCollection<string> PositiveWords => _positive;
    public IReadOnlyCollection<string> NegativeWords => _negative;

    /// <summary>Reads two word lists (one word a line; blank lines and lines starting with # are skipped).</summary>
    /// <exception cref="FileNotFoundException">A file does not exist.</exception>
    /// <exception cref="InputError">As for the constructor.</exception>
    public static WordScore FromFiles(string positivePath, string negativePath)
    {
        var positive = ReadList(positivePath);
        var negative = ReadList(negativePath);
        if (positive.Count == 0) throw InputError.Expected(positivePath, "word list", "at least one word (one a line)", "none");
        if (negative.Count == 0) throw InputError.Expected(negativePath, "word list", "at least one word (one a line)", "none");
        return new WordScore(positive, negative);
    }

    /// <summary>Counts of positive and negative words in <paramref name="text"/>.</summary>
    public (int Positive, int Negative) Count(string text)
    {
        int pos = 0, neg = 0;
        foreach (Match m in Word().Matches(text))
        {
            string w = m.Value.ToLowerInvariant();
            if (_positive.Contains(w)) pos++;
            else if (_negative.Contains(w)) neg++;
        }
        return (pos, neg);
    }

    /// <summary>positive count − negative count.</summary>
    public int Score(string text)
    {
        var (pos, neg) = Count(text);
        return pos - neg;
    }

    /// <summary>One word a line; blank lines and <c>#</c> comments are skipped.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public static IReadOnlyList<string> ReadList(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"list file not found: {path}", path);
        return File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();
    }

    static HashSet<string> Normalize(IEnumerable<string> words) =>
        new(words.Select(w => w.Trim().ToLowerInvariant()).Where(w => w.Length > 0), StringComparer.Ordinal);

    [GeneratedRegex(@"[A-Za-z']+")]
    private static partial Regex Word();
}
