using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Loupe.Models.Loading;

/// <summary>
/// One tensor to write: name, dtype, shape and its little-endian data. The data is referenced,
/// not copied, until <see cref="SafeTensorsWriter.Write(string, IEnumerable{SafeTensorEntry}, IReadOnlyDictionary{string, string}?)"/>
/// streams it to disk.
/// </summary>
public sealed class SafeTensorEntry
{
    readonly ReadOnlyMemory<float> _f32;
    readonly ReadOnlyMemory<long> _i64;
    readonly ReadOnlyMemory<byte> _raw;
    readonly Action<Stream>? _stream;

    /// <summary>Tensor name.</summary>
    public string Name { get; }

    /// <summary>Element type written to the header.</summary>
    public DType DType { get; }

    /// <summary>Dimensions, outermost first.</summary>
    public long[] Shape { get; }

    /// <summary>Number of elements the data holds.</summary>
    public long DataElements { get; }

    SafeTensorEntry(string name, DType dtype, long[] shape, long dataElements,
        ReadOnlyMemory<float> f32 = default, ReadOnlyMemory<long> i64 = default, ReadOnlyMemory<byte> raw = default, Action<Stream>? stream = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(shape);
        Name = name;
        DType = dtype;
        Shape = shape;
        DataElements = dataElements;
        _f32 = f32;
        _i64 = i64;
        _raw = raw;
        _stream = stream;
    }

    /// <summary>
    /// A float32 tensor whose bytes <paramref name="write"/> produces when the file is written (e.g. row by row
    /// from a source too large to hold as one array); it must write exactly the product of the shape × 4 bytes.
    /// </summary>
    public static SafeTensorEntry F32Streamed(string name, long[] shape, Action<Stream> write) =>
        new(name, DType.F32, shape, shape.Aggregate(1L, (a, d) => a * d), stream: write ?? throw new ArgumentNullException(nameof(write)));

    /// <summary>A float32 tensor.</summary>
    public static SafeTensorEntry F32(string name, int[] shape, ReadOnlyMemory<float> data) =>
        new(name, DType.F32, ToLong(shape), data.Length, f32: data);

    /// <summary>An int64 tensor (e.g. token ids).</summary>
    public static SafeTensorEntry I64(string name, int[] shape, ReadOnlyMemory<long> data) =>
        new(name, DType.I64, ToLong(shape), data.Length, i64: data);

    /// <summary>Any dtype, given as raw little-endian bytes (length must be elements × dtype size).</summary>
    /// <exception cref="ArgumentException">The byte count is not a multiple of the dtype size.</exception>
    public static SafeTensorEntry Raw(string name, DType dtype, long[] shape, ReadOnlyMemory<byte> data)
    {
        int size = dtype.SizeOf();
        if (data.Length % size != 0)
            throw new ArgumentException(
                $"tensor '{name}': {data.Length} bytes is not a whole number of {dtype} elements ({size} bytes each)", nameof(data));
        return new(name, dtype, (long[])shape.Clone(), data.Length / size, raw: data);
    }

    static long[] ToLong(int[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        return Array.ConvertAll(shape, d => (long)d);
    }

    internal long ByteLength => DataElements * DType.SizeOf();

    internal void WriteTo(Stream stream)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors are little-endian");
        if (_stream is not null)
        {
            long before = stream.Position;
            _stream(stream);
            if (stream.Position - before != DataElements * 4)
                throw new InvalidOperationException($"tensor '{Name}': the stream wrote {stream.Position - before} bytes, expected {DataElements * 4}");
        }
        else if (DType == DType.F32 && _raw.IsEmpty) stream.Write(MemoryMarshal.AsBytes(_f32.Span));
        else if (DType == DType.I64 && _raw.IsEmpty) stream.Write(MemoryMarshal.AsBytes(_i64.Span));
        else stream.Write(_raw.Span);
    }
}

/// <summary>
/// Writes safetensors files atomically: the data goes to <c>path.tmp-XXXX</c> in the same folder,
/// is flushed to disk, then renamed over the target path; on any failure the temporary
/// file is deleted and an existing file at the path is left untouched. The header is padded with
/// spaces so the data buffer starts at a multiple of 8 bytes; tensors are laid out contiguously
/// in the order given. Tensor data is streamed from the caller's memory (no combined buffer).
/// </summary>
public static class SafeTensorsWriter
{
    /// <summary>Writes float32 tensors.</summary>
    /// <exception cref="ArgumentException">
    /// A tensor's data length differs from the product of its shape, a dimension is negative, a
    /// name is empty, repeated or <c>__metadata__</c> (the message names the tensor).
    /// </exception>
    /// <exception cref="IOException">The file cannot be written (the previous file is kept).</exception>
    public static void Write(string path, IEnumerable<(string Name, int[] Shape, ReadOnlyMemory<float> Data)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        Write(path, tensors.Select(t => SafeTensorEntry.F32(t.Name, t.Shape, t.Data)), metadata);
    }

    /// <summary>Writes int64 tensors.</summary>
    /// <exception cref="ArgumentException">As for the float32 overload.</exception>
    /// <exception cref="IOException">The file cannot be written (the previous file is kept).</exception>
    public static void Write(string path, IEnumerable<(string Name, int[] Shape, ReadOnlyMemory<long> Data)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        Write(path, tensors.Select(t => SafeTensorEntry.I64(t.Name, t.Shape, t.Data)), metadata);
    }

    /// <summary>Writes tensors of any dtype (mix <see cref="SafeTensorEntry.F32"/>, <see cref="SafeTensorEntry.I64"/>, …).</summary>
    /// <exception cref="ArgumentException">As for the float32 overload.</exception>
    /// <exception cref="IOException">The file cannot be written (the previous file is kept).</exception>
    /// <exception cref="InputError">The path names something other than a regular file (a folder, link, device, pipe).</exception>
    public static void Write(string path, IEnumerable<SafeTensorEntry> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);
        path = Path.GetFullPath(path);

        // 1. Collect and validate (references only, no data copied) and lay out the offsets.
        var entries = new List<(SafeTensorEntry Entry, long Begin, long End)>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        long offset = 0;
        foreach (var e in tensors)
        {
            ArgumentNullException.ThrowIfNull(e, nameof(tensors));
            Validate(e, names);
            long end = checked(offset + e.ByteLength);
            entries.Add((e, offset, end));
            offset = end;
        }

        // 2. Header JSON, padded with spaces so that 8 + N is a multiple of 8.
        byte[] header = BuildHeader(entries.Select(x => (x.Entry.Name, x.Entry.DType, x.Entry.Shape, x.Begin, x.End)), metadata);

        // 3. Stream to a temporary file beside the target, flush to disk, rename over the target
        //    (only ever over a regular file: a device node, folder or link named by mistake is refused).
        OutputFiles.EnsureReplaceable(path);
        string tmp = path + ".tmp-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None,
                       bufferSize: 1 << 16, FileOptions.None))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
                fs.Write(len);
                fs.Write(header);
                foreach (var (entry, begin, end) in entries)
                {
                    long before = fs.Position;
                    entry.WriteTo(fs);
                    if (fs.Position - before != end - begin)
                        throw new InvalidOperationException(
                            $"tensor '{entry.Name}': wrote {fs.Position - before} bytes, expected {end - begin} (data changed while writing?)");
                }
                fs.Flush(flushToDisk: true);
            }
            OutputFiles.Replace(tmp, path);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    static void Validate(SafeTensorEntry e, HashSet<string> names)
    {
        if (e.Name == "__metadata__")
            throw new ArgumentException("a tensor cannot be called '__metadata__' (reserved by the format)", nameof(e));
        if (!names.Add(e.Name))
            throw new ArgumentException($"tensor '{e.Name}' is given twice", nameof(e));
        long product = 1;
        for (int i = 0; i < e.Shape.Length; i++)
        {
            if (e.Shape[i] < 0)
                throw new ArgumentException($"tensor '{e.Name}': shape[{i}] is {e.Shape[i]}; expected a non-negative size", nameof(e));
            try { product = checked(product * e.Shape[i]); }
            catch (OverflowException) { throw new ArgumentException($"tensor '{e.Name}': shape [{string.Join(", ", e.Shape)}] overflows", nameof(e)); }
        }
        if (product != e.DataElements)
            throw new ArgumentException(
                $"tensor '{e.Name}': shape [{string.Join(", ", e.Shape)}] has {product} elements but the data has {e.DataElements}",
                nameof(e));
    }

    internal static byte[] BuildHeader(IEnumerable<(string Name, DType DType, long[] Shape, long Begin, long End)> entries,
        IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new ArrayBufferWriter<byte>(4096);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata)
                {
                    ArgumentNullException.ThrowIfNull(v, $"metadata[{k}]");
                    w.WriteString(k, v);
                }
                w.WriteEndObject();
            }
            foreach (var (name, dtype, shape, begin, end) in entries)
            {
                w.WriteStartObject(name);
                w.WriteString("dtype", dtype.ToHeaderString());
                w.WriteStartArray("shape");
                foreach (var d in shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(begin);
                w.WriteNumberValue(end);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        int n = buffer.WrittenCount;
        int padded = (n + 7) & ~7;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(n).Fill((byte)' ');
        return header;
    }
}

/// <summary>
/// A safetensors file written while its tensors are produced: the header comes first, from the names,
/// dtypes and shapes declared up front (e.g. from <see cref="HookedTransformer.HookPoints"/>), then each
/// tensor's bytes in the declared order as they arrive, so nothing has to be held until the end. The file
/// appears at its path (atomically, as with <see cref="SafeTensorsWriter"/>) only on <see cref="Complete"/>;
/// disposed before that, the temporary file is deleted.
/// </summary>
public sealed class SafeTensorsStreamWriter : IDisposable
{
    readonly string _path, _tmp;
    readonly FileStream _stream;
    readonly List<(string Name, DType DType, long[] Shape, long Bytes)> _entries;
    int _next;
    bool _completed;

    /// <exception cref="InputError">The path names something other than a regular file.</exception>
    /// <exception cref="ArgumentException">A name repeats or is <c>__metadata__</c>, or a dimension is negative.</exception>
    public SafeTensorsStreamWriter(string path, IEnumerable<(string Name, DType DType, long[] Shape)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        _path = Path.GetFullPath(path);
        _entries = [];
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, dtype, shape) in tensors)
        {
            if (name == "__metadata__" || !names.Add(name)) throw new ArgumentException($"tensor name '{name}' is reserved or given twice", nameof(tensors));
            if (shape.Any(d => d < 0)) throw new ArgumentException($"tensor '{name}': negative dimension in [{string.Join(", ", shape)}]", nameof(tensors));
            _entries.Add((name, dtype, (long[])shape.Clone(), checked(shape.Aggregate(1L, (a, d) => checked(a * d)) * dtype.SizeOf())));
        }
        long offset = 0;
        var laidOut = _entries.Select(e => { long begin = offset; offset += e.Bytes; return (e.Name, e.DType, e.Shape, begin, offset); }).ToList();
        byte[] header = SafeTensorsWriter.BuildHeader(laidOut, metadata);
        OutputFiles.EnsureReplaceable(_path);
        _tmp = _path + ".tmp-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        _stream = new FileStream(_tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 16);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        _stream.Write(len);
        _stream.Write(header);
    }

    /// <summary>The name of the next tensor the file expects, or null when every one was written.</summary>
    public string? Next => _next < _entries.Count ? _entries[_next].Name : null;

    /// <summary>Writes the next declared tensor's little-endian bytes.</summary>
    /// <exception cref="InvalidOperationException">It is not the tensor expected next, or its size differs from the declared shape.</exception>
    public void Write(string name, ReadOnlySpan<byte> data)
    {
        if (_next >= _entries.Count || _entries[_next].Name != name)
            throw new InvalidOperationException($"'{name}' arrived where the file expects {(Next is { } n ? $"'{n}'" : "no more tensors")}");
        if (data.Length != _entries[_next].Bytes)
            throw new InvalidOperationException($"tensor '{name}': {data.Length} bytes, the declared shape [{string.Join(", ", _entries[_next].Shape)}] needs {_entries[_next].Bytes}");
        _stream.Write(data);
        _next++;
    }

    /// <summary>A float32 tensor (read on the host first when it lives on a device: one counted copy).</summary>
    public void Write(string name, Tensors.Tensor tensor) => Write(name, MemoryMarshal.AsBytes(tensor.ToCpu().Span));

    /// <summary>Flushes to disk and renames the file into place.</summary>
    /// <exception cref="InvalidOperationException">Declared tensors were not written.</exception>
    public void Complete()
    {
        if (Next is { } missing) throw new InvalidOperationException($"tensor '{missing}' and {_entries.Count - _next - 1} after it were declared but never written");
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
        OutputFiles.Replace(_tmp, _path);
        _completed = true;
    }

    public void Dispose()
    {
        if (_completed) return;
        _stream.Dispose();
        try { File.Delete(_tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
