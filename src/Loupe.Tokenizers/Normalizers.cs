using System.Text;

namespace Loupe.Tokenizers;

/// <summary>A text normalizer (HF <c>normalizers</c>), applied to each stretch of text between added tokens.</summary>
internal abstract class Normalizer
{
    public abstract string Normalize(string text);
}

/// <summary>Applies several normalizers in order.</summary>
internal sealed class SequenceNormalizer(IReadOnlyList<Normalizer> normalizers) : Normalizer
{
    public IReadOnlyList<Normalizer> Normalizers { get; } = normalizers;

    public override string Normalize(string text)
    {
        foreach (var n in Normalizers) text = n.Normalize(text);
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
internal sealed class ReplaceNormalizer(string? literal, UnicodeRegex? regex, string content) : Normalizer
{
    public override string Normalize(string text)
    {
        if (regex is not null) return regex.Replace(text, content);
        if (string.IsNullOrEmpty(literal)) return text;
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
