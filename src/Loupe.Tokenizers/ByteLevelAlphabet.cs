namespace Loupe.Tokenizers;

/// <summary>
/// GPT-2's reversible byte ↔ printable-character mapping (<c>bytes_to_unicode</c>): printable
/// Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onward in byte order.
/// </summary>
public static class ByteLevelAlphabet
{
    static readonly char[] ByteToCharTable = BuildTable();
    static readonly Dictionary<char, byte> CharToByteTable = BuildReverse();

    static char[] BuildTable()
    {
        var table = new char[256];
        var n = 0;
        for (var b = 0; b < 256; b++)
        {
            var printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char)b : (char)(256 + n++);
        }
        return table;
    }

    static Dictionary<char, byte> BuildReverse()
    {
        var map = new Dictionary<char, byte>(256);
        for (var b = 0; b < 256; b++) map[ByteToCharTable[b]] = (byte)b;
        return map;
    }

    /// <summary>The character that stands for byte <paramref name="b"/>.</summary>
    public static char ByteToChar(byte b) => ByteToCharTable[b];

    /// <summary>The byte a mapped character stands for; false when <paramref name="c"/> is not in the alphabet.</summary>
    public static bool TryCharToByte(char c, out byte b) => CharToByteTable.TryGetValue(c, out b);

    /// <summary>Maps the UTF-8 bytes of <paramref name="text"/> to the byte-level alphabet.</summary>
    public static string Encode(ReadOnlySpan<char> text)
    {
        if (text.IsEmpty) return string.Empty;
        var max = System.Text.Encoding.UTF8.GetMaxByteCount(text.Length);
        byte[]? rented = null;
        Span<byte> bytes = max <= 512 ? stackalloc byte[max] : (rented = System.Buffers.ArrayPool<byte>.Shared.Rent(max));
        try
        {
            var count = System.Text.Encoding.UTF8.GetBytes(text, bytes);
            Span<char> chars = count <= 512 ? stackalloc char[count] : new char[count];
            for (var i = 0; i < count; i++) chars[i] = ByteToCharTable[bytes[i]];
            return new string(chars);
        }
        finally
        {
            if (rented is not null) System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        }
    }
}
