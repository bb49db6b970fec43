using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Loupe.Tokenizers;

/// <summary>A span of a string with a flag telling whether a pattern matched it.</summary>
internal readonly record struct MatchSpan(int Start, int End, bool IsMatch);

/// <summary>How a split treats the matched delimiters (HF <c>SplitDelimiterBehavior</c>).</summary>
internal enum SplitBehavior
{
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

/// <summary>A piece of text being pre-tokenized; <see cref="AtStart"/> is true when it begins the original input.</summary>
internal readonly record struct Piece(string Text, bool AtStart);

/// <summary>
/// A regex that matches by Unicode code point the way Oniguruma / Rust <c>regex</c> do.
/// .NET matches UTF-16 code units, so a supplementary-plane letter or digit would not match
/// <c>\p{L}</c> or <c>\p{N}</c>; before matching, each surrogate pair is replaced by one BMP
/// character of the same general category, and match offsets are mapped back.
/// </summary>
/// <remarks>
/// Patterns from tokenizer files run on .NET's backtracking engine, which has the leftmost-first
/// semantics of HF's Oniguruma, under a match timeout: a pattern that backtracks catastrophically
/// (<c>(a+)+$</c>) becomes an <see cref="InputError"/> naming the file, field and pattern instead of a
/// hang. <see cref="RegexOptions.NonBacktracking"/> is not used: besides refusing lookarounds (GPT-2's
/// <c>\s+(?!\S)</c>), it drops matches of patterns that start with an optional element on .NET 7–10
/// (<c>" ?, ?"</c> on <c>" a,,"</c> finds one match, not two; dotnet/runtime#130176), which would
/// silently change tokenizations of patterns like <c>" ?\p{L}+"</c>.
/// </remarks>
internal sealed class UnicodeRegex
{
    /// <summary>How long one match of a pattern from a file may take.</summary>
    internal static readonly TimeSpan FileMatchTimeout = TimeSpan.FromSeconds(1);

    public Regex Regex { get; }

    /// <summary>"{file}: {field}" for patterns read from a file; null for Loupe's own patterns.</summary>
    readonly string? _source;

    /// <summary>A built-in pattern (known to run in linear time): no timeout.</summary>
    public UnicodeRegex(string pattern)
    {
        Regex = new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);
    }

    UnicodeRegex(Regex regex, string source)
    {
        Regex = regex;
        _source = source;
    }

    /// <summary>A pattern read from a tokenizer file; <paramref name="source"/> is "{file}: {field}" for error messages.</summary>
    /// <exception cref="ArgumentException">The pattern does not parse.</exception>
    public static UnicodeRegex FromFile(string pattern, string source) =>
        new(new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant, FileMatchTimeout), source);

    /// <summary>Raw matches of the pattern in <paramref name="text"/>, as (start, end) offsets of the original string.</summary>
    /// <exception cref="InputError">A pattern from a file took longer than <see cref="FileMatchTimeout"/> on one match.</exception>
    public List<(int Start, int End)> Matches(string text)
    {
        var result = new List<(int, int)>();
        try
        {
            if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0)
            {
                foreach (var m in Regex.EnumerateMatches(text)) result.Add((m.Index, m.Index + m.Length));
                return result;
            }
            var (mapped, map) = MapSupplementary(text);
            foreach (var m in Regex.EnumerateMatches(mapped)) result.Add((map[m.Index], map[m.Index + m.Length]));
            return result;
        }
        catch (RegexMatchTimeoutException e)
        {
            throw new InputError($"{_source ?? "built-in pattern"}: the pattern {InputError.Show(Regex.ToString())} took longer than "
                + $"{FileMatchTimeout.TotalSeconds:0.#} s on a {text.Length:N0}-character input; it backtracks catastrophically "
                + "(nested quantifiers such as (a+)+), so Loupe stops instead of hanging", e);
        }
    }

    /// <summary>Spans covering all of <paramref name="text"/>, flagged by whether they matched (HF <c>find_matches</c>).</summary>
    public void FindMatches(string text, List<MatchSpan> output)
    {
        if (text.Length == 0)
        {
            output.Add(new MatchSpan(0, 0, false));
            return;
        }
        var prev = 0;
        foreach (var (start, end) in Matches(text))
        {
            if (prev != start) output.Add(new MatchSpan(prev, start, false));
            output.Add(new MatchSpan(start, end, true));
            prev = end;
        }
        if (prev != text.Length) output.Add(new MatchSpan(prev, text.Length, false));
    }

    /// <summary>Replaces every match with <paramref name="content"/> (taken literally).</summary>
    public string Replace(string text, string content)
    {
        var matches = Matches(text);
        if (matches.Count == 0) return text;
        var length = (long)text.Length;
        foreach (var (start, end) in matches) length += content.Length - (end - start);
        Growth.Check(_source ?? "built-in pattern", text.Length, length);
        var sb = new StringBuilder(text.Length + 16);
        var prev = 0;
        foreach (var (start, end) in matches)
        {
            sb.Append(text, prev, start - prev).Append(content);
            prev = end;
        }
        return sb.Append(text, prev, text.Length - prev).ToString();
    }

    static (string Mapped, int[] Map) MapSupplementary(string text)
    {
        var sb = new StringBuilder(text.Length);
        var map = new List<int>(text.Length + 1);
        for (var i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                var cp = char.ConvertToUtf32(text[i], text[i + 1]);
                sb.Append(Representative(CharUnicodeInfo.GetUnicodeCategory(cp)));
                map.Add(i);
                i++;
                continue;
            }
            sb.Append(text[i]);
            map.Add(i);
        }
        map.Add(text.Length);
        return (sb.ToString(), map.ToArray());
    }

    /// <summary>A BMP character of the given general category, with no special meaning in the usual patterns.</summary>
    internal static char Representative(UnicodeCategory category) => category switch
    {
        UnicodeCategory.UppercaseLetter => '\u0100',
        UnicodeCategory.LowercaseLetter => '\u0101',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\u05D0',
        UnicodeCategory.NonSpacingMark => '\u0300',
        UnicodeCategory.SpacingCombiningMark => '\u0903',
        UnicodeCategory.EnclosingMark => '\u20DD',
        UnicodeCategory.DecimalDigitNumber => '\u0660',
        UnicodeCategory.LetterNumber => '\u2160',
        UnicodeCategory.OtherNumber => '\u00B2',
        UnicodeCategory.SpaceSeparator => '\u2000',
        UnicodeCategory.LineSeparator => '\u2028',
        UnicodeCategory.ParagraphSeparator => '\u2029',
        UnicodeCategory.Control => '\u0080',
        UnicodeCategory.Format => '\u00AD',
        UnicodeCategory.PrivateUse => '\uE000',
        UnicodeCategory.ConnectorPunctuation => '\u203F',
        UnicodeCategory.DashPunctuation => '\u2010',
        UnicodeCategory.OpenPunctuation => '\u2045',
        UnicodeCategory.ClosePunctuation => '\u2046',
        UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        UnicodeCategory.OtherPunctuation => '\u00A1',
        UnicodeCategory.MathSymbol => '\u00AC',
        UnicodeCategory.CurrencySymbol => '\u00A2',
        UnicodeCategory.ModifierSymbol => '\u00A8',
        UnicodeCategory.OtherSymbol => '\u00A6',
        _ => '\u0378', // unassigned
    };
}

/// <summary>Helpers shared by pre-tokenizers: the HF split algorithm and per-character matching.</summary>
internal static class Splitting
{
    /// <summary>Spans of <paramref name="text"/> where each code point satisfying <paramref name="predicate"/> is its own match.</summary>
    public static void FindCharMatches(string text, Func<Rune, bool> predicate, List<MatchSpan> output)
    {
        if (text.Length == 0)
        {
            output.Add(new MatchSpan(0, 0, false));
            return;
        }
        var last = 0;
        var i = 0;
        while (i < text.Length)
        {
            if (Rune.DecodeFromUtf16(text.AsSpan(i), out var rune, out var len) != OperationStatus.Done)
                rune = Rune.ReplacementChar;
            if (predicate(rune))
            {
                if (last < i) output.Add(new MatchSpan(last, i, false));
                output.Add(new MatchSpan(i, i + len, true));
                last = i + len;
            }
            i += len;
        }
        if (last < text.Length) output.Add(new MatchSpan(last, text.Length, false));
    }

    /// <summary>Applies a split behaviour to covering match spans and appends the non-empty pieces.</summary>
    public static void Apply(Piece piece, List<MatchSpan> matches, SplitBehavior behavior, bool invert, List<Piece> output)
    {
        if (invert)
            for (var i = 0; i < matches.Count; i++) matches[i] = matches[i] with { IsMatch = !matches[i].IsMatch };

        // (start, end, remove)
        var splits = new List<(int Start, int End, bool Remove)>(matches.Count);
        switch (behavior)
        {
            case SplitBehavior.Isolated:
                foreach (var m in matches) splits.Add((m.Start, m.End, false));
                break;
            case SplitBehavior.Removed:
                foreach (var m in matches) splits.Add((m.Start, m.End, m.IsMatch));
                break;
            case SplitBehavior.Contiguous:
                {
                    var previous = false;
                    foreach (var m in matches)
                    {
                        if (m.IsMatch == previous && splits.Count > 0) splits[^1] = splits[^1] with { End = m.End };
                        else splits.Add((m.Start, m.End, false));
                        previous = m.IsMatch;
                    }
                    break;
                }
            case SplitBehavior.MergedWithPrevious:
                {
                    var previous = false;
                    foreach (var m in matches)
                    {
                        if (m.IsMatch && !previous && splits.Count > 0) splits[^1] = splits[^1] with { End = m.End };
                        else splits.Add((m.Start, m.End, false));
                        previous = m.IsMatch;
                    }
                    break;
                }
            case SplitBehavior.MergedWithNext:
                {
                    var previous = false;
                    for (var i = matches.Count - 1; i >= 0; i--)
                    {
                        var m = matches[i];
                        if (m.IsMatch && !previous && splits.Count > 0) splits[^1] = splits[^1] with { Start = m.Start };
                        else splits.Add((m.Start, m.End, false));
                        previous = m.IsMatch;
                    }
                    splits.Reverse();
                    break;
                }
        }

        foreach (var (start, end, remove) in splits)
        {
            if (remove || end <= start) continue;
            var text = start == 0 && end == piece.Text.Length ? piece.Text : piece.Text[start..end];
            output.Add(new Piece(text, piece.AtStart && start == 0));
        }
    }

    /// <summary>Rust <c>char::is_whitespace</c> (the Unicode White_Space property).</summary>
    public static bool IsWhiteSpace(Rune r) => Rune.IsWhiteSpace(r);

    /// <summary>Rust <c>char::is_numeric</c>: general categories Nd, Nl, No.</summary>
    public static bool IsNumeric(Rune r) => Rune.GetUnicodeCategory(r) is UnicodeCategory.DecimalDigitNumber
        or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;

    /// <summary>HF's punctuation test: ASCII punctuation or a Unicode punctuation category.</summary>
    public static bool IsPunctuation(Rune r)
    {
        if (r.Value < 0x80) return r.Value is >= 0x21 and <= 0x2F or >= 0x3A and <= 0x40 or >= 0x5B and <= 0x60 or >= 0x7B and <= 0x7E;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }

    /// <summary>Rust regex <c>\w</c>: alphabetic, marks, decimal digits, connector punctuation.</summary>
    public static bool IsWordChar(Rune r) => Rune.GetUnicodeCategory(r) switch
    {
        UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
            or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter or UnicodeCategory.LetterNumber
            or UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark
            or UnicodeCategory.DecimalDigitNumber or UnicodeCategory.ConnectorPunctuation => true,
        _ => r.Value is 0x200C or 0x200D,
    };
}
