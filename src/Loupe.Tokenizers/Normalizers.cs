using System.Text;

namespace Loupe.Tokenizers;

/// <summary>A text normalizer (HF <c>normalizers</c>), applied to each stretch of text between added tokens.</summary>
internal abstract class Normalizer
{
    public abstract string Normalize(string text);
}

/// <summary>
/// How far normalizers and decoders may grow a text. Real ones at most quadruple it (ByteLevel maps a
/// character to up to four), so more than 16-fold is a runaway file (an empty-matching pattern replaced
/// by long content, nested in a sequence), stopped before it exhausts memory.
/// </summary>
internal static class Growth
{
    public static long Limit(long inputLength) => 16 * inputLength + 4096;

    /// <exception cref="InputError">The output would exceed <see cref="Limit"/>.</exception>
    public static void Check(string source, long inputLength, long outputLength)
    {
        if (outputLength > Limit(inputLength))
            throw new InputError($"{source}: expected to grow a text at most 16-fold, found that it turns {inputLength:N0} characters into {outputLength:N0}");
    }

    /// <summary>Length of <paramref name="text"/> after replacing every <paramref name="literal"/> with <paramref name="content"/>.</summary>
    public static long LengthAfterReplace(string text, string literal, string content)
    {
        if (content.Length <= literal.Length) return text.Length;
        long count = 0;
        for (var i = text.IndexOf(literal, StringComparison.Ordinal); i >= 0; i = text.IndexOf(literal, i + literal.Length, StringComparison.Ordinal)) count++;
        return text.Length + count * (content.Length - literal.Length);
    }
}

/// <summary>Applies several normalizers in order.</summary>
internal sealed class SequenceNormalizer(IReadOnlyList<Normalizer> normalizers, string source = "normalizer") : Normalizer
{
    public IReadOnlyList<Normalizer> Normalizers { get; } = normalizers;

    public override string Normalize(string text)
    {
        var inputLength = text.Length;
        foreach (var n in Normalizers)
        {
            text = n.Normalize(text);
            Growth.Check(source, inputLength, text.Length);
        }
        return text;
    }
}

/// <summary>Prepends a string to non-empty text (Llama-2 style <c>▁</c>).</summary>
internal sealed class PrependNormalizer(string prepend) : Normalizer
{
    public override string Normalize(string text) => text.Length == 0 ? text : prepend + text;
}

/// <summary>Appends a string to non-empty text.</summary>
internal sealed class AppendNormalizer(string append) : Normalizer
{
    public override string Normalize(string text) => text.Length == 0 ? text : text + append;
}

/// <summary>Replaces a literal string or regex matches with fixed content.</summary>
internal sealed class ReplaceNormalizer(string? literal, UnicodeRegex? regex, string content, string source = "replace normalizer") : Normalizer
{
    public override string Normalize(string text)
    {
        if (regex is not null) return regex.Replace(text, content);
        if (string.IsNullOrEmpty(literal)) return text;
        Growth.Check(source, text.Length, Growth.LengthAfterReplace(text, literal, content));
        return text.Replace(literal, content, StringComparison.Ordinal);
    }
}

/// <summary>Unicode normalization (NFC, NFD, NFKC, NFKD).</summary>
internal sealed class UnicodeNormalizer(NormalizationForm form) : Normalizer
{
    public NormalizationForm Form { get; } = form;

    public override string Normalize(string text) => UnicodeNormalization.Normalize(text, Form);
}

/// <summary>Unicode lowercasing (Rust <c>str::to_lowercase</c>).</summary>
internal sealed class LowercaseNormalizer : Normalizer
{
    public override string Normalize(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var r in text.EnumerateRunes())
        {
            // The one unconditional multi-character lowercase mapping (SpecialCasing.txt).
            if (r.Value == 0x130) sb.Append("i\u0307");
            else sb.Append(Rune.ToLowerInvariant(r).ToString());
        }
        return sb.ToString();
    }
}

/// <summary>Strips whitespace at the start and/or end.</summary>
internal sealed class StripNormalizer(bool left, bool right) : Normalizer
{
    public override string Normalize(string text)
    {
        var start = 0;
        var end = text.Length;
        if (left) while (start < end && char.IsWhiteSpace(text[start])) start++;
        if (right) while (end > start && char.IsWhiteSpace(text[end - 1])) end--;
        return start == 0 && end == text.Length ? text : text[start..end];
    }
}

/// <summary>Removes combining marks (category Mn), usually after NFD.</summary>
internal sealed class StripAccentsNormalizer : Normalizer
{
    public override string Normalize(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var r in text.EnumerateRunes())
            if (Rune.GetUnicodeCategory(r) != System.Globalization.UnicodeCategory.NonSpacingMark) sb.Append(r.ToString());
        return sb.ToString();
    }
}

/// <summary>Maps the UTF-8 bytes of the text to GPT-2's byte-level alphabet.</summary>
internal sealed class ByteLevelNormalizer : Normalizer
{
    public override string Normalize(string text) => ByteLevelAlphabet.Encode(text);
}
