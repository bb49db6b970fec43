// NumPy .npy reader (NEP 1, numpy/lib/format.py): the array format inside np.savez archives such as
// Gemma Scope's params.npz. No pickles are ever read: only plain floating-point arrays.
//
// Layout:
//   magic       6 bytes   \x93NUMPY
//   version     2 bytes   major, minor: 1.0, 2.0 or 3.0
//   HEADER_LEN  uint16 little-endian (1.0) or uint32 little-endian (2.0, 3.0)
//   header      HEADER_LEN bytes: a Python dict literal, latin-1 (1.0, 2.0) or UTF-8 (3.0), space-padded and
//               '\n'-terminated, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
//   data        prod(shape)·itemsize bytes, C order (row-major) or Fortran order (column-major)
//
// Reading:
//   1. check the magic and version, read HEADER_LEN and the header text;
//   2. parse the dict literal (strings, True/False/None, integers, tuples and lists only: nothing is evaluated);
//   3. map 'descr' to a float type: '<f2' '<f4' '<f8' and their big-endian '>' forms; refuse objects ('|O',
//      pickled Python objects), void types ('<V2' is how bfloat16 from ml_dtypes is written) and everything else;
//   4. read the data into float32 (f2 and f8 converted, big-endian byte-swapped), transposing Fortran order to
//      row-major, and require the stream to end exactly after the data.
using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace Loupe.Dictionaries.Sae;

/// <summary>Floating-point element types a .npy array may hold for Loupe.</summary>
public enum NpyElementType
{
    /// <summary>IEEE binary16 (<c>f2</c>).</summary>
    Float16,
    /// <summary>IEEE binary32 (<c>f4</c>).</summary>
    Float32,
    /// <summary>IEEE binary64 (<c>f8</c>).</summary>
    Float64,
}

/// <summary>A parsed .npy header.</summary>
/// <param name="MajorVersion">Format major version (1, 2 or 3).</param>
/// <param name="MinorVersion">Format minor version (0).</param>
/// <param name="Descr">The dtype string as written, e.g. <c>&lt;f4</c>.</param>
/// <param name="ElementType">Element type <see cref="Descr"/> denotes.</param>
/// <param name="BigEndian">Whether elements are stored big-endian (<c>&gt;</c>).</param>
/// <param name="FortranOrder">Whether the data is column-major.</param>
/// <param name="Shape">Dimensions, outermost first; empty for a 0-d (scalar) array.</param>
public sealed record NpyHeader(int MajorVersion, int MinorVersion, string Descr, NpyElementType ElementType, bool BigEndian,
    bool FortranOrder, long[] Shape)
{
    /// <summary>Bytes before the data: magic, version, header length and header (0 when not read from a stream).</summary>
    public long DataOffset { get; init; }

    /// <summary>Bytes per element.</summary>
    public int ItemSize => ElementType switch { NpyElementType.Float16 => 2, NpyElementType.Float32 => 4, _ => 8 };

    /// <summary>Number of elements, the product of <see cref="Shape"/> (1 for a scalar).</summary>
    public long ElementCount { get; } = Product(Shape);

    /// <summary>Bytes of array data that follow the header (element counts are capped so this cannot overflow).</summary>
    public long DataBytes => ElementCount * ItemSize;

    /// <summary>The shape as <c>(3, 4)</c>, as NumPy prints it.</summary>
    public string ShapeText => Shape.Length == 1 ? $"({Shape[0]},)" : $"({string.Join(", ", Shape)})";

    // Overflow-safe: a product past long.MaxValue / 8 (so that × itemsize overflows too) is refused by the reader
    // before a header is built; direct construction with such a shape throws OverflowException.
    static long Product(long[] shape)
    {
        long n = 1;
        foreach (long d in shape) n = checked(n * d);
        if (n > long.MaxValue / 8) throw new OverflowException("element count × item size overflows");
        return n;
    }
}

/// <summary>Reads NumPy .npy arrays of floats into float32, without ever unpickling.</summary>
public static class Npy
{
    /// <summary>Largest header accepted, in bytes. NumPy's own default limit (<c>max_header_size</c>) is 10 000.</summary>
    public const int MaxHeaderLength = 1 << 20;

    /// <summary>Deepest nesting of tuples/lists accepted in a header (a shape is one level; structured dtypes a few).</summary>
    public const int MaxHeaderNesting = 16;

    /// <summary>Most dimensions a shape may have (NumPy's own limit, NPY_MAXDIMS, is 64).</summary>
    public const int MaxRank = 64;

    /// <summary>Floats read per chunk: spans of bytes stay far below 2 GiB however large the array.</summary>
    internal const int DefaultChunkElements = 1 << 20;

    static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>
    /// Reads the magic, version and header of a .npy stream, leaving the stream at the first data byte.
    /// </summary>
    /// <param name="stream">The .npy bytes (a file, or one entry of a .npz).</param>
    /// <param name="source">Names the array in error messages, e.g. <c>params.npz, entry 'W_enc.npy'</c>.</param>
    /// <param name="totalBytes">
    /// The length of the whole .npy (for a .npz entry: its declared uncompressed length); null reads it from a seekable
    /// stream. When known, the header and the data the shape declares must fit in it exactly, so nothing is allocated
    /// for sizes the bytes do not back.
    /// </param>
    /// <exception cref="InputError">
    /// The stream is too short, the magic is wrong, the version is not 1.0/2.0/3.0, the header is malformed, nested
    /// too deeply or over <see cref="MaxHeaderLength"/>, a key is missing or unexpected, the dtype is not a float (objects
    /// and pickles are refused), the shape is invalid or its size overflows, or the declared data does not match the
    /// bytes present. Every message starts with <paramref name="source"/>.
    /// </exception>
    public static NpyHeader ReadHeader(Stream stream, string source, long? totalBytes = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (totalBytes is null && stream.CanSeek) totalBytes = stream.Length - stream.Position;
        // 1. Magic, version, HEADER_LEN.
        Span<byte> pre = stackalloc byte[8];
        int got = ReadFull(stream, pre);
        if (got < 8)
            throw Bad(source, got == 0 ? "is empty; expected a .npy array" : $"is {got} bytes long; too short to be a .npy array (needs at least 10)");
        if (!pre[..6].SequenceEqual(Magic))
            throw Bad(source, $"is not a .npy array: expected the magic bytes 93 4E 55 4D 50 59 (\\x93NUMPY), found {Convert.ToHexString(pre[..6])}");
        int major = pre[6], minor = pre[7];
        if (major is not (1 or 2 or 3) || minor != 0)
            throw Bad(source, $"has .npy format version {major}.{minor}; supported versions are 1.0, 2.0 and 3.0");
        Span<byte> lenBytes = stackalloc byte[4];
        int lenSize = major == 1 ? 2 : 4;
        if (ReadFull(stream, lenBytes[..lenSize]) < lenSize) throw Bad(source, "is truncated inside the header length");
        long headerLen = major == 1 ? BinaryPrimitives.ReadUInt16LittleEndian(lenBytes) : BinaryPrimitives.ReadUInt32LittleEndian(lenBytes);
        long dataOffset = 8 + lenSize + headerLen;
        if (headerLen > MaxHeaderLength)
            throw Bad(source, $"declares a {headerLen}-byte header; more than the {MaxHeaderLength} bytes accepted");
        if (totalBytes is long total && dataOffset > total)
            throw Bad(source, $"is truncated inside the header: it declares {headerLen} header bytes, but the array is only {total} bytes long");
        var headerBytes = new byte[headerLen];
        int read = ReadFull(stream, headerBytes);
        if (read < headerLen) throw Bad(source, $"is truncated inside the header: {read} of {headerLen} bytes");

        // 2. The dict literal.
        string text;
        try { text = (major == 3 ? new UTF8Encoding(false, throwOnInvalidBytes: true) : Encoding.Latin1).GetString(headerBytes); }
        catch (DecoderFallbackException) { throw Bad(source, "has a version 3.0 header that is not valid UTF-8"); }
        Dictionary<string, object?> dict;
        try { dict = new LiteralParser(text).ParseHeaderDict(); }
        catch (FormatException e) { throw Bad(source, $"has a malformed header {Quote(text)}: {e.Message}"); }
        foreach (string key in dict.Keys)
            if (key is not ("descr" or "fortran_order" or "shape"))
                throw Bad(source, $"has an unexpected header key '{Cut(key)}'; a .npy header holds exactly 'descr', 'fortran_order' and 'shape'");
        foreach (string key in (string[])["descr", "fortran_order", "shape"])
            if (!dict.ContainsKey(key)) throw Bad(source, $"header {Quote(text)} lacks the key '{key}'");

        // 3. dtype, order, shape.
        if (dict["descr"] is not string descr)
            throw Bad(source, $"has a structured dtype {Describe(dict["descr"])}; only plain float arrays are supported");
        var (type, bigEndian) = ParseDescr(descr, source);
        if (dict["fortran_order"] is not bool fortran)
            throw Bad(source, $"header field 'fortran_order' is {Describe(dict["fortran_order"])}; expected True or False");
        if (dict["shape"] is not List<object?> dims)
            throw Bad(source, $"header field 'shape' is {Describe(dict["shape"])}; expected a tuple of integers");
        if (dims.Count > MaxRank)
            throw Bad(source, $"header field 'shape' has {dims.Count} dimensions; expected at most {MaxRank}");
        var shape = new long[dims.Count];
        for (int i = 0; i < dims.Count; i++)
        {
            if (dims[i] is not long d || d < 0)
                throw Bad(source, $"header field 'shape' has {Describe(dims[i])} at position {i}; expected a non-negative integer");
            shape[i] = d;
        }
        NpyHeader header;
        try { header = new NpyHeader(major, minor, descr, type, bigEndian, fortran, shape) { DataOffset = dataOffset }; }
        catch (OverflowException) { throw Bad(source, $"has shape ({string.Join(", ", shape)}), whose size in bytes overflows"); }

        // 4. The data the header declares must be the bytes that are there (checked before anyone allocates for it).
        if (totalBytes is long all && header.DataBytes != all - dataOffset)
            throw Bad(source, header.DataBytes > all - dataOffset
                ? $"is truncated: shape {header.ShapeText} × {Cut(descr)} needs {header.DataBytes} bytes of data, the array holds {all - dataOffset}"
                : $"has {all - dataOffset - header.DataBytes} bytes after the {header.DataBytes} bytes of data that shape {header.ShapeText} × {Cut(descr)} needs");
        return header;
    }

    /// <summary>
    /// Reads the array data that follows <paramref name="header"/> into <paramref name="destination"/> as
    /// row-major float32, in chunks (arrays over 2 GiB are fine), then checks that the stream ends there.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> does not hold exactly <see cref="NpyHeader.ElementCount"/> floats.</exception>
    /// <exception cref="InputError">The data is truncated, or bytes follow it (the message starts with <paramref name="source"/>).</exception>
    public static void ReadData(Stream stream, NpyHeader header, Span<float> destination, string source) =>
        ReadData(stream, header, destination, source, DefaultChunkElements);

    /// <summary><see cref="ReadData(Stream, NpyHeader, Span{float}, string)"/> with the chunk size as a parameter (tests use tiny chunks).</summary>
    internal static void ReadData(Stream stream, NpyHeader header, Span<float> destination, string source, int chunkElements)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(header);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkElements);
        if (destination.Length != header.ElementCount)
            throw new ArgumentException($"{source}: destination holds {destination.Length} floats; the array has {header.ElementCount}", nameof(destination));
        int n = destination.Length;
        // Fortran order is read into a scratch buffer and transposed; C order straight into the destination.
        float[]? scratch = header.FortranOrder && header.Shape.Length > 1 ? new float[n] : null;
        Span<float> target = scratch ?? destination;

        int item = header.ItemSize;
        bool direct = header.ElementType == NpyElementType.Float32 && header.BigEndian == !BitConverter.IsLittleEndian;
        // Every span of bytes covers at most one chunk: MemoryMarshal.AsBytes over the whole of a > 2 GiB array would overflow.
        byte[]? buffer = direct ? null : new byte[(long)Math.Min(chunkElements, Math.Max(n, 1)) * item];
        int done = 0;
        while (done < n)
        {
            int count = Math.Min(n - done, chunkElements);
            var slice = target.Slice(done, count);
            var bytes = direct ? MemoryMarshal.AsBytes(slice) : buffer.AsSpan(0, count * item);
            int got = ReadFull(stream, bytes);
            if (got < bytes.Length) throw Truncated(source, header, (long)done * item + got);
            if (!direct) ConvertChunk(bytes, slice, header.ElementType, header.BigEndian);
            done += count;
        }
        Span<byte> probe = stackalloc byte[1];
        if (ReadFull(stream, probe) != 0)
            throw Bad(source, $"has bytes after the {header.DataBytes} bytes of data that shape {header.ShapeText} × {Cut(header.Descr)} needs");
        if (scratch is not null) FortranToRowMajor(scratch, destination, header.Shape);
    }

    /// <summary>Reads a whole .npy stream as row-major float32.</summary>
    /// <exception cref="InputError">As for <see cref="ReadHeader"/> and <see cref="ReadData(Stream, NpyHeader, Span{float}, string)"/>, or the array has more elements than a float[] can hold.</exception>
    public static float[] ReadFloat32(Stream stream, string source, out NpyHeader header)
    {
        header = ReadHeader(stream, source);
        if (header.ElementCount > Check.MaxArrayElements)
            throw Bad(source, $"has shape {header.ShapeText}: {header.ElementCount} elements, more than one float[] can hold ({Check.MaxArrayElements})");
        var data = new float[header.ElementCount];
        ReadData(stream, header, data, source);
        return data;
    }

    /// <summary>Reads a .npy array held in memory as row-major float32.</summary>
    /// <exception cref="InputError">As for <see cref="ReadHeader"/> and <see cref="ReadData(Stream, NpyHeader, Span{float}, string)"/>.</exception>
    public static float[] ReadFloat32(byte[] bytes, string source, out NpyHeader header)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        using var ms = new MemoryStream(bytes, writable: false);
        return ReadFloat32(ms, source, out header);
    }

    static (NpyElementType, bool BigEndian) ParseDescr(string descr, string source)
    {
        if (descr.Length >= 2 && descr[1] == 'O' || descr == "O")
            throw Bad(source, $"has dtype '{Cut(descr)}': an object array, stored as a Python pickle; Loupe never unpickles (save arrays with allow_pickle=False)");
        if (descr.Length >= 2 && descr[1] == 'V')
            throw Bad(source, $"has dtype '{Cut(descr)}', a raw void type (how bfloat16 from ml_dtypes is written); convert it to float32 (or float16) before saving");
        if (descr.Length == 3 && descr[0] is '<' or '>' && descr[1] == 'f')
        {
            bool big = descr[0] == '>';
            switch (descr[2])
            {
                case '2': return (NpyElementType.Float16, big);
                case '4': return (NpyElementType.Float32, big);
                case '8': return (NpyElementType.Float64, big);
            }
        }
        throw Bad(source, $"has dtype '{Cut(descr)}'; supported dtypes are '<f2', '<f4', '<f8' and their big-endian forms '>f2', '>f4', '>f8'");
    }

    static void ConvertChunk(ReadOnlySpan<byte> src, Span<float> dst, NpyElementType type, bool bigEndian)
    {
        switch (type)
        {
            case NpyElementType.Float16:
                for (int i = 0; i < dst.Length; i++)
                {
                    ushort bits = bigEndian ? BinaryPrimitives.ReadUInt16BigEndian(src[(2 * i)..]) : BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]);
                    dst[i] = (float)BitConverter.UInt16BitsToHalf(bits);
                }
                break;
            case NpyElementType.Float32:
                for (int i = 0; i < dst.Length; i++)
                    dst[i] = bigEndian ? BinaryPrimitives.ReadSingleBigEndian(src[(4 * i)..]) : BinaryPrimitives.ReadSingleLittleEndian(src[(4 * i)..]);
                break;
            default:
                for (int i = 0; i < dst.Length; i++)
                    dst[i] = (float)(bigEndian ? BinaryPrimitives.ReadDoubleBigEndian(src[(8 * i)..]) : BinaryPrimitives.ReadDoubleLittleEndian(src[(8 * i)..]));
                break;
        }
    }

    // Fortran order stores element (i0, …, i_{n−1}) at Σ i_k·Π_{j<k} d_j (first axis fastest); row-major at
    // Σ i_k·Π_{j>k} d_j. Walk the source linearly with an odometer over (i0, …) and track the row-major index.
    static void FortranToRowMajor(ReadOnlySpan<float> src, Span<float> dst, long[] shape)
    {
        int rank = shape.Length;
        var rowStride = new long[rank];                  // [rank] row-major stride of each axis
        long s = 1;
        for (int k = rank - 1; k >= 0; k--) { rowStride[k] = s; s *= shape[k]; }
        var idx = new long[rank];                        // [rank] current (i0, …, i_{n−1})
        long at = 0;
        for (int f = 0; f < src.Length; f++)
        {
            dst[(int)at] = src[f];
            for (int k = 0; k < rank; k++)
            {
                idx[k]++;
                at += rowStride[k];
                if (idx[k] < shape[k]) break;
                at -= idx[k] * rowStride[k];
                idx[k] = 0;
            }
        }
    }

    static int ReadFull(Stream s, Span<byte> buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = s.Read(buffer[total..]);
            if (n == 0) break;
            total += n;
        }
        return total;
    }

    static InputError Truncated(string source, NpyHeader h, long got) =>
        Bad(source, $"is truncated: shape {h.ShapeText} × {Cut(h.Descr)} needs {h.DataBytes} bytes of data, found {got}");

    static InputError Bad(string source, string what) => new($"{source} {what}");

    // One line, at most 200 characters: a header can be a megabyte of brackets.
    static string Quote(string text)
    {
        string t = text.TrimEnd().Replace("\n", "\\n").Replace("\r", "\\r");
        return "\"" + (t.Length > 200 ? t[..197] + "..." : t) + "\"";
    }

    static string Cut(string s) => s.Length > 40 ? s[..37] + "..." : s;

    // At most about 200 characters: a header value can be a megabyte long.
    static string Describe(object? v)
    {
        string d = DescribeFull(v);
        return d.Length > 200 ? d[..197] + "..." : d;
    }

    static string DescribeFull(object? v) => v switch
    {
        null => "None",
        string str => $"'{Cut(str)}'",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        List<object?> list => "(" + string.Join(", ", list.Take(20).Select(Describe)) + (list.Count > 20 ? ", ..." : "") + ")",
        _ => v.ToString() ?? "?",
    };

    /// <summary>
    /// The subset of Python literal syntax NumPy writes in headers: a dict with string keys whose values are
    /// strings, True/False/None, integers, and tuples or lists of those. Nothing is evaluated.
    /// </summary>
    sealed class LiteralParser(string text)
    {
        int _at;

        public Dictionary<string, object?> ParseHeaderDict()
        {
            SkipSpace();
            Expect('{');
            var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
            SkipSpace();
            while (Peek() != '}')
            {
                if (Parse() is not string key) throw new FormatException($"dict keys must be strings (at offset {_at})");
                SkipSpace();
                Expect(':');
                object? value = Parse();
                if (!dict.TryAdd(key, value)) throw new FormatException($"key '{Cut(key)}' appears twice");
                SkipSpace();
                if (Peek() == ',') { _at++; SkipSpace(); }
                else if (Peek() != '}') throw new FormatException($"expected ',' or '}}' at offset {_at}");
            }
            _at++;
            SkipSpace();
            if (_at != text.Length) throw new FormatException($"unexpected text after the dict at offset {_at}");
            return dict;
        }

        // Iterative, with an explicit stack of open sequences: a header of a million '(' must fail with a
        // message, never overflow the call stack.
        object? Parse()
        {
            var open = new Stack<(List<object?> Items, char Close)>();
            while (true)
            {
                SkipSpace();
                char c = Peek();
                object? value;
                if (c is '(' or '[')
                {
                    if (open.Count >= MaxHeaderNesting) throw new FormatException($"tuples or lists nested more than {MaxHeaderNesting} deep at offset {_at}");
                    _at++;
                    open.Push((new List<object?>(), c == '(' ? ')' : ']'));
                    SkipSpace();
                    if (Peek() != open.Peek().Close) continue;   // parse the first item
                    _at++;
                    value = open.Pop().Items;                    // () or []
                }
                else if (c is '\'' or '"') value = ParseString(c);
                else if (c is '-' or '+' || char.IsAsciiDigit(c)) value = ParseInteger();
                else if (Word("True")) value = true;
                else if (Word("False")) value = false;
                else if (Word("None")) value = null;
                else throw new FormatException($"unexpected '{c}' at offset {_at}");

                // Attach the value to the innermost open sequence, closing sequences as their brackets come.
                while (true)
                {
                    if (open.Count == 0) return value;
                    var (items, close) = open.Peek();
                    items.Add(value);
                    SkipSpace();
                    if (Peek() == ',')
                    {
                        _at++;
                        SkipSpace();
                        if (Peek() != close) break;              // another item follows
                    }
                    else if (Peek() != close) throw new FormatException($"expected ',' or '{close}' at offset {_at}");
                    _at++;
                    value = open.Pop().Items;
                }
            }
        }

        string ParseString(char quote)
        {
            _at++;
            var sb = new StringBuilder();
            while (true)
            {
                if (_at >= text.Length) throw new FormatException("unterminated string");
                char c = text[_at++];
                if (c == quote) return sb.ToString();
                if (c == '\\')
                {
                    if (_at >= text.Length) throw new FormatException("unterminated string");
                    char e = text[_at++];
                    sb.Append(e switch { 'n' => '\n', 't' => '\t', '0' => '\0', _ => e });
                }
                else sb.Append(c);
            }
        }

        long ParseInteger()
        {
            int start = _at;
            if (text[_at] is '-' or '+') _at++;
            while (_at < text.Length && char.IsAsciiDigit(text[_at])) _at++;
            if (!long.TryParse(text.AsSpan(start, _at - start), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v))
                throw new FormatException($"bad integer '{Cut(text[start.._at])}' at offset {start}");
            if (_at < text.Length && text[_at] is 'L' or 'l') _at++; // Python 2 long suffix, written by old NumPy
            return v;
        }

        bool Word(string w)
        {
            if (string.CompareOrdinal(text, _at, w, 0, w.Length) != 0) return false;
            int end = _at + w.Length;
            if (end < text.Length && (char.IsAsciiLetterOrDigit(text[end]) || text[end] == '_')) return false;
            _at = end;
            return true;
        }

        char Peek() => _at < text.Length ? text[_at] : throw new FormatException("unexpected end of header");

        void Expect(char c)
        {
            if (Peek() != c) throw new FormatException($"expected '{c}' at offset {_at}, found '{text[_at]}'");
            _at++;
        }

        void SkipSpace()
        {
            while (_at < text.Length && char.IsWhiteSpace(text[_at])) _at++;
        }
    }
}
