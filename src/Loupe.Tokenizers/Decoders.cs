using System.Text;

namespace Loupe.Tokenizers;

/// <summary>A decoder (HF <c>decoders</c>): turns the token strings of a sequence back into text pieces.</summary>
internal abstract class Decoder
{
    /// <summary>Transforms the token strings; the final text is their concatenation.</summary>
    public abstract List<string> DecodeChain(List<string> tokens);

    public string Decode(List<string> tokens) => string.Concat(DecodeChain(tokens));
}

/// <summary>Applies several decoders in order.</summary>
internal sealed class SequenceDecoder(IReadOnlyList<Decoder> decoders, string source = "decoder") : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        long inputLength = tokens.Sum(t => (long)t.Length);
        foreach (var d in decoders)
        {
            tokens = d.DecodeChain(tokens);
            Growth.Check(source, inputLength, tokens.Sum(t => (long)t.Length));
        }
        return tokens;
    }
}

/// <summary>
/// Byte-level decoder: maps every character of every token back to its byte and decodes the
/// whole byte string as UTF-8 (invalid sequences become U+FFFD). A token containing a character
/// outside the byte alphabet contributes its own UTF-8 bytes.
/// </summary>
internal sealed class ByteLevelDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var token in tokens)
        {
            var start = bytes.Count;
            var ok = true;
            foreach (var c in token)
            {
                if (!ByteLevelAlphabet.TryCharToByte(c, out var b))
                {
                    ok = false;
                    break;
                }
                bytes.Add(b);
            }
            if (!ok)
            {
                bytes.RemoveRange(start, bytes.Count - start);
                bytes.AddRange(Encoding.UTF8.GetBytes(token));
            }
        }
        return [Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes))];
    }
}

/// <summary>Metaspace decoder: <c>▁</c> becomes a space, except in the first token when a prefix was prepended.</summary>
internal sealed class MetaspaceDecoder(string replacement, PrependScheme scheme) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (var i = 0; i < tokens.Count; i++)
        {
            var drop = i == 0 && scheme != PrependScheme.Never;
            result.Add(tokens[i].Replace(replacement, drop ? "" : " ", StringComparison.Ordinal));
        }
        return result;
    }
}

/// <summary>Replaces a literal string or regex matches in each token.</summary>
internal sealed class ReplaceDecoder(string? literal, UnicodeRegex? regex, string content, string source = "replace decoder") : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        foreach (var t in tokens)
        {
            if (regex is not null) result.Add(regex.Replace(t, content));
            else if (string.IsNullOrEmpty(literal)) result.Add(t);
            else
            {
                Growth.Check(source, t.Length, Growth.LengthAfterReplace(t, literal, content));
                result.Add(t.Replace(literal, content, StringComparison.Ordinal));
            }
        }
        return result;
    }
}

/// <summary>
/// Byte-fallback decoder: runs of <c>&lt;0xNN&gt;</c> tokens become the text their bytes encode;
/// a run that is not valid UTF-8 becomes one U+FFFD per byte.
/// </summary>
internal sealed class ByteFallbackDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        var strict = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

        void Flush()
        {
            if (pending.Count == 0) return;
            try
            {
                result.Add(strict.GetString(pending.ToArray()));
            }
            catch (DecoderFallbackException)
            {
                for (var k = 0; k < pending.Count; k++) result.Add("\uFFFD");
            }
            pending.Clear();
        }

        foreach (var t in tokens)
        {
            if (TryParseByteToken(t, out var b))
            {
                pending.Add(b);
                continue;
            }
            Flush();
            result.Add(t);
        }
        Flush();
        return result;
    }

    internal static bool TryParseByteToken(string token, out byte value)
    {
        value = 0;
        return token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
            && byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier,
                System.Globalization.CultureInfo.InvariantCulture, out value);
    }
}

/// <summary>Joins all tokens into one.</summary>
internal sealed class FuseDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

/// <summary>Removes up to <c>start</c> leading and <c>stop</c> trailing copies of a character from each token.</summary>
internal sealed class StripDecoder(Rune content, int start, int stop) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var c = content;
        foreach (var token in tokens)
        {
            var runes = token.EnumerateRunes().ToList();
            var startCut = 0;
            for (var i = 0; i < Math.Min(start, runes.Count); i++)
            {
                if (runes[i] != c) break;
                startCut = i + 1;
            }
            var stopCut = runes.Count;
            for (var i = 0; i < stop && runes.Count - i - 1 >= 0; i++)
            {
                var index = runes.Count - i - 1;
                if (runes[index] != c) break;
                stopCut = index;
            }
            var sb = new StringBuilder();
            for (var i = startCut; i < stopCut; i++) sb.Append(runes[i].ToString());
            result.Add(sb.ToString());
        }
        return result;
    }
}

/// <summary>Classic BPE decoder: the end-of-word suffix becomes a space (nothing after the last token).</summary>
internal sealed class BpeSuffixDecoder(string suffix) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (var i = 0; i < tokens.Count; i++)
            result.Add(tokens[i].Replace(suffix, i == tokens.Count - 1 ? "" : " ", StringComparison.Ordinal));
        return result;
    }
}
