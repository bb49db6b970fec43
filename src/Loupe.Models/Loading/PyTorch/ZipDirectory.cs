using System.Buffers.Binary;
using System.Text;

namespace Loupe.Models.Loading.PyTorch;

/// <summary>One member of a zip archive: where its bytes start in the file and how they are stored.</summary>
internal sealed record ZipEntry(string Name, int Method, long CompressedSize, long Size, long DataOffset)
{
    /// <summary>Zip compression method 0: the bytes are stored as they are (what torch.save writes).</summary>
    public bool IsStored => Method == 0;
}

/// <summary>
/// The central directory of a zip archive in memory (a mapped file), with zip64 sizes and offsets: enough to find each
/// member's bytes without copying them. torch.save writes an uncompressed zip whose members are 64-byte aligned, so a
/// tensor's storage can be read straight from the mapping, as a safetensors buffer is.
/// </summary>
internal static unsafe class ZipDirectory
{
    const uint EndSignature = 0x06054b50, End64Signature = 0x06064b50, End64LocatorSignature = 0x07064b50;
    const uint CentralSignature = 0x02014b50, LocalSignature = 0x04034b50;

    /// <summary>More members than any checkpoint has (a model has a few thousand storages).</summary>
    public const long MaxEntries = 10_000_000;

    /// <summary>True when the file starts like a zip archive (a local file header).</summary>
    public static bool LooksLikeZip(ReadOnlySpan<byte> head) =>
        head.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(head) == LocalSignature;

    /// <summary>Every member, in directory order.</summary>
    /// <exception cref="InputError">The archive is truncated or malformed (the message names the file and what is wrong).</exception>
    public static List<ZipEntry> Read(string path, byte* basePtr, long length)
    {
        long end = FindEnd(path, basePtr, length);
        var e = new ReadOnlySpan<byte>(basePtr + end, 22);
        long entries = BinaryPrimitives.ReadUInt16LittleEndian(e[10..]);
        long directorySize = BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
        long directoryOffset = BinaryPrimitives.ReadUInt32LittleEndian(e[16..]);
        if (entries == 0xFFFF || directorySize == 0xFFFFFFFF || directoryOffset == 0xFFFFFFFF)
            (entries, directorySize, directoryOffset) = ReadEnd64(path, basePtr, length, end);
        if (entries > MaxEntries)
            throw Bad(path, $"the directory lists {entries} members; expected at most {MaxEntries}");
        if (directoryOffset < 0 || directorySize < 0 || directoryOffset > length || directorySize > length - directoryOffset)
            throw Bad(path, $"the central directory [{directoryOffset}, +{directorySize}) lies outside the file of {length} bytes (truncated?)");

        var result = new List<ZipEntry>((int)Math.Min(entries, 65_536));
        long at = directoryOffset, stop = directoryOffset + directorySize;
        for (long i = 0; i < entries; i++)
        {
            if (stop - at < 46) throw Bad(path, $"the central directory ends inside member {i} of {entries}");
            var h = new ReadOnlySpan<byte>(basePtr + at, 46);
            if (BinaryPrimitives.ReadUInt32LittleEndian(h) != CentralSignature)
                throw Bad(path, $"member {i} of the central directory (at byte {at}) does not start with a directory signature");
            int flags = BinaryPrimitives.ReadUInt16LittleEndian(h[8..]);
            int method = BinaryPrimitives.ReadUInt16LittleEndian(h[10..]);
            long compressed = BinaryPrimitives.ReadUInt32LittleEndian(h[20..]);
            long size = BinaryPrimitives.ReadUInt32LittleEndian(h[24..]);
            int nameLength = BinaryPrimitives.ReadUInt16LittleEndian(h[28..]);
            int extraLength = BinaryPrimitives.ReadUInt16LittleEndian(h[30..]);
            int commentLength = BinaryPrimitives.ReadUInt16LittleEndian(h[32..]);
            long local = BinaryPrimitives.ReadUInt32LittleEndian(h[42..]);
            if (stop - at - 46 < (long)nameLength + extraLength + commentLength)
                throw Bad(path, $"member {i}'s name and extra fields run past the end of the central directory");
            var nameBytes = new ReadOnlySpan<byte>(basePtr + at + 46, nameLength);
            if (!System.Text.Unicode.Utf8.IsValid(nameBytes))
                throw Bad(path, $"member {i}'s name is not valid UTF-8");
            string name = Encoding.UTF8.GetString(nameBytes);
            if ((flags & 1) != 0) throw Bad(path, $"member '{name}' is encrypted");
            ReadZip64Extra(path, name, new ReadOnlySpan<byte>(basePtr + at + 46 + nameLength, extraLength), ref size, ref compressed, ref local);
            long data = DataStart(path, name, basePtr, length, local);
            if (compressed > length - data)
                throw Bad(path, $"member '{name}' ({compressed} bytes from byte {data}) runs past the end of the file of {length} bytes (truncated?)");
            if (method == 0 && compressed != size)
                throw Bad(path, $"member '{name}' is stored uncompressed but its sizes differ ({compressed} vs {size} bytes)");
            result.Add(new ZipEntry(name, method, compressed, size, data));
            at += 46 + nameLength + extraLength + commentLength;
        }
        return result;
    }

    static long FindEnd(string path, byte* basePtr, long length)
    {
        if (length < 22) throw Bad(path, $"the file is {length} bytes long; a zip archive ends with a 22-byte directory record");
        long lowest = Math.Max(0, length - 22 - 65_535);
        for (long at = length - 22; at >= lowest; at--)
            if (BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(basePtr + at, 4)) == EndSignature
                && at + 22 + BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(basePtr + at + 20, 2)) == length)
                return at;
        throw Bad(path, "no end-of-directory record at the end of the file (truncated, or not a zip archive)");
    }

    static (long Entries, long Size, long Offset) ReadEnd64(string path, byte* basePtr, long length, long end)
    {
        if (end < 20 || BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(basePtr + end - 20, 4)) != End64LocatorSignature)
            throw Bad(path, "the directory record defers to a zip64 record, but there is no zip64 locator before it");
        long record = (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(basePtr + end - 12, 8)), long.MaxValue);
        if (record > end - 20 - 56)
            throw Bad(path, $"the zip64 directory record at byte {record} lies outside the file");
        var r = new ReadOnlySpan<byte>(basePtr + record, 56);
        if (BinaryPrimitives.ReadUInt32LittleEndian(r) != End64Signature)
            throw Bad(path, $"no zip64 directory record at byte {record}, where the locator points");
        return (Clamp(BinaryPrimitives.ReadUInt64LittleEndian(r[32..])), Clamp(BinaryPrimitives.ReadUInt64LittleEndian(r[40..])),
            Clamp(BinaryPrimitives.ReadUInt64LittleEndian(r[48..])));
    }

    static long Clamp(ulong v) => v > long.MaxValue ? long.MaxValue : (long)v;

    /// <summary>A field of 0xFFFFFFFF is in the zip64 extra field (id 1), in the order size, compressed size, offset.</summary>
    static void ReadZip64Extra(string path, string name, ReadOnlySpan<byte> extra, ref long size, ref long compressed, ref long local)
    {
        bool needSize = size == 0xFFFFFFFF, needCompressed = compressed == 0xFFFFFFFF, needLocal = local == 0xFFFFFFFF;
        if (!needSize && !needCompressed && !needLocal) return;
        while (extra.Length >= 4)
        {
            int id = BinaryPrimitives.ReadUInt16LittleEndian(extra);
            int n = BinaryPrimitives.ReadUInt16LittleEndian(extra[2..]);
            if (n > extra.Length - 4) break;
            var field = extra.Slice(4, n);
            if (id == 1)
            {
                int at = 0;
                if (needSize) { size = Read64(path, name, field, ref at); }
                if (needCompressed) { compressed = Read64(path, name, field, ref at); }
                if (needLocal) { local = Read64(path, name, field, ref at); }
                return;
            }
            extra = extra[(4 + n)..];
        }
        throw Bad(path, $"member '{name}' has 32-bit sizes or offset marked as zip64 but no zip64 extra field");
    }

    static long Read64(string path, string name, ReadOnlySpan<byte> field, ref int at)
    {
        if (field.Length - at < 8) throw Bad(path, $"member '{name}''s zip64 extra field is too short");
        long v = Clamp(BinaryPrimitives.ReadUInt64LittleEndian(field[at..]));
        at += 8;
        return v;
    }

    static long DataStart(string path, string name, byte* basePtr, long length, long local)
    {
        if (local < 0 || local > length - 30)
            throw Bad(path, $"member '{name}''s local header at byte {local} lies outside the file");
        var h = new ReadOnlySpan<byte>(basePtr + local, 30);
        if (BinaryPrimitives.ReadUInt32LittleEndian(h) != LocalSignature)
            throw Bad(path, $"member '{name}''s local header at byte {local} does not start with a header signature");
        long start = local + 30 + BinaryPrimitives.ReadUInt16LittleEndian(h[26..]) + BinaryPrimitives.ReadUInt16LittleEndian(h[28..]);
        if (start > length) throw Bad(path, $"member '{name}''s local header runs past the end of the file");
        return start;
    }

    static InputError Bad(string path, string what) => new($"{path}: not a readable zip archive (a PyTorch checkpoint is one): {what}");
}
