using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Loupe.Models.Loading;

/// <summary>
/// A read-only, memory-mapped safetensors file — or a <c>torch.save</c> checkpoint (<c>pytorch_model.bin</c>, <c>*.pt</c>),
/// whose tensors are read in place the same way, its pickle interpreted without running any code (<see cref="Format"/>).
/// <para>
/// Layout: 8-byte little-endian header length <c>N</c>; <c>N</c> bytes of UTF-8 JSON
/// <c>{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}</c>;
/// then the data buffer. Offsets are relative to the start of the data buffer.
/// </para>
/// <para>
/// The header is validated in full by <see cref="Open"/>; tensor data is never copied into managed
/// memory except when a conversion is asked for (<see cref="GetFloat32"/> on F16/BF16/F64,
/// <see cref="GetInt64"/>). Memory and spans handed out point into the mapping and are valid until
/// <see cref="Dispose"/>. Reading from several threads at once is safe.
/// </para>
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable, INativeMemoryOwner
{
    /// <summary>Largest header accepted (as the reference implementation: 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    const string MetadataKey = "__metadata__";

    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    readonly byte* _base;          // start of the file in memory
    readonly long _dataStart;      // 8 + N
    readonly long _fileLength;
    readonly Dictionary<string, SafeTensorInfo> _tensors;
    readonly string[] _names;
    int _disposed;

    /// <summary>Full path of the file.</summary>
    public string Path { get; }

    /// <summary>The <c>__metadata__</c> entries (empty when the header has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Tensor names in header order.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>
    /// <c>safetensors</c>, or <c>pytorch</c> / <c>pytorch-legacy</c> for a torch.save file read without running its
    /// pickle (tensors named by their state-dict keys, nested dicts joined with dots; see <see cref="PyTorch.PyTorchCheckpoint"/>).
    /// </summary>
    public string Format { get; }

    /// <summary>What a torch.save file holds besides tensors that Loupe did not build (objects of other classes), by class name.</summary>
    public IReadOnlyList<string> Ignored { get; }

    /// <summary>Bytes in the data buffer (file length minus 8 minus header length).</summary>
    public long DataLength => _fileLength - _dataStart;

    /// <summary>Header length <c>N</c> in bytes.</summary>
    public long HeaderLength => _dataStart - 8;

    SafeTensorsFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePtr,
        long fileLength, long dataStart, Dictionary<string, SafeTensorInfo> tensors, string[] names,
        IReadOnlyDictionary<string, string> metadata, string format, IReadOnlyList<string> ignored)
    {
        Path = path;
        Format = format;
        Ignored = ignored;
        _map = map;
        _view = view;
        _base = basePtr;
        _fileLength = fileLength;
        _dataStart = dataStart;
        _tensors = tensors;
        _names = names;
        Names = Array.AsReadOnly(names);
        Metadata = metadata;
    }

    /// <summary>Maps <paramref name="path"/> read-only and validates its header.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InputError">
    /// The file is not a valid safetensors file: shorter than 8 bytes, header length beyond the
    /// file or over 100 MB, header not UTF-8 or not a JSON object, a missing or mistyped field, a
    /// repeated name, unknown dtype, negative or overflowing shape, byte length not equal to
    /// elements × dtype size, or tensors that do not tile the data buffer exactly (the first must
    /// begin at 0, each next where the previous ended, the last end at the end of the file: a
    /// header length that is off by a byte, a truncated file or trailing bytes are all refused).
    /// The message names the file, the tensor where there is one, and what was expected versus found.
    /// </exception>
    /// <remarks>A torch.save file (zip, or the legacy format before torch 1.6) is recognised by its first bytes and read with
    /// <see cref="PyTorch.PyTorchCheckpoint"/>; its errors name the zip member, the pickle's byte or the tensor instead.</remarks>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        path = System.IO.Path.GetFullPath(path);
        if (!File.Exists(path))
            throw new FileNotFoundException($"safetensors file {path} does not exist", path);

        InputFiles.EnsureRegularFile(path);
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
        long fileLength = stream.Length;
        if (fileLength < 8)
        {
            stream.Dispose();
            throw Bad(path, $"file is {fileLength} bytes long; expected at least 8 (the header length)");
        }

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        byte* basePtr = null;
        bool acquired = false;
        try
        {
            map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0,
                MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
            acquired = true;
            basePtr += view.PointerOffset;

            string? torchFormat = PyTorch.PyTorchCheckpoint.Detect(new ReadOnlySpan<byte>(basePtr, (int)Math.Min(fileLength, 64)));
            if (torchFormat is not null)
            {
                var contents = PyTorch.PyTorchCheckpoint.Read(path, basePtr, fileLength, torchFormat);
                return new SafeTensorsFile(path, map, view, basePtr, fileLength, 0, contents.Tensors, contents.Names,
                    new Dictionary<string, string>(), torchFormat, contents.Ignored) { _copies = CopyStridedViews(basePtr, contents) };
            }
            var (tensors, names, metadata, dataStart) = ParseHeader(path, basePtr, fileLength);
            return new SafeTensorsFile(path, map, view, basePtr, fileLength, dataStart, tensors, names, metadata, "safetensors", []);
        }
        catch
        {
            if (acquired) view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            if (map is not null) map.Dispose(); else stream.Dispose();
            throw;
        }
    }

    static (Dictionary<string, SafeTensorInfo>, string[], IReadOnlyDictionary<string, string>, long) ParseHeader(
        string path, byte* basePtr, long fileLength)
    {
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(basePtr, 8));
        if (headerLength > MaxHeaderBytes)
            throw Bad(path, $"header length is {headerLength} bytes; expected at most {MaxHeaderBytes} " +
                            (basePtr[0] == 0x80
                                ? "(the file is a Python pickle, but not one torch.save wrote: Loupe reads torch.save files and safetensors)"
                                : "(the first 8 bytes are not a safetensors header length)"));
        if ((long)headerLength > fileLength - 8)
            throw Bad(path, $"header length is {headerLength} bytes but only {fileLength - 8} bytes follow " +
                            "the 8-byte length (truncated file?)");
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        var headerBytes = new ReadOnlySpan<byte>(basePtr + 8, (int)headerLength);
        if (!System.Text.Unicode.Utf8.IsValid(headerBytes))
            throw Bad(path, $"header ({headerLength} bytes) is not valid UTF-8 (a tensor name or metadata value holds invalid bytes)");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(headerBytes.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Bad(path, $"header ({headerLength} bytes) is not valid JSON: {e.Message.Split('\n')[0]}", e);
        }

        using (doc)
        try
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Bad(path, $"header is a JSON {Kind(root)}; expected a JSON object");

            var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
            var names = new List<string>();
            IReadOnlyDictionary<string, string> metadata = new Dictionary<string, string>();
            bool sawMetadata = false;

            foreach (var prop in root.EnumerateObject())
            {
                string name = prop.Name;
                if (name == MetadataKey)
                {
                    if (sawMetadata) throw Bad(path, $"header has \"{MetadataKey}\" twice");
                    sawMetadata = true;
                    metadata = ParseMetadata(path, prop.Value);
                    continue;
                }
                if (tensors.ContainsKey(name))
                    throw Bad(path, $"header lists tensor '{name}' twice");
                var info = ParseTensor(path, name, prop.Value, dataLength);
                tensors.Add(name, info);
                names.Add(name);
            }

            CheckTiling(path, tensors.Values, dataLength);
            return (tensors, names.ToArray(), metadata, dataStart);
        }
        catch (InvalidOperationException e)
        {
            // JsonElement throws this for a string it cannot transcode, e.g. an escaped lone surrogate "\ud800".
            throw Bad(path, $"header holds a string that is not valid Unicode ({e.Message})", e);
        }
    }

    static Dictionary<string, string> ParseMetadata(string path, JsonElement value)
    {
        if (value.ValueKind == JsonValueKind.Null) return new Dictionary<string, string>();
        if (value.ValueKind != JsonValueKind.Object)
            throw Bad(path, $"\"{MetadataKey}\" is a JSON {Kind(value)}; expected an object of strings");
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var p in value.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.String)
                throw Bad(path, $"\"{MetadataKey}\" entry '{p.Name}' is a JSON {Kind(p.Value)}; expected a string");
            result[p.Name] = p.Value.GetString()!;
        }
        return result;
    }

    static SafeTensorInfo ParseTensor(string path, string name, JsonElement entry, long dataLength)
    {
        if (entry.ValueKind != JsonValueKind.Object)
            throw BadTensor(path, name, $"entry is a JSON {Kind(entry)}; expected an object with dtype, shape, data_offsets");

        if (!entry.TryGetProperty("dtype", out var dtypeEl))
            throw BadTensor(path, name, "entry has no \"dtype\" field");
        if (dtypeEl.ValueKind != JsonValueKind.String)
            throw BadTensor(path, name, $"\"dtype\" is a JSON {Kind(dtypeEl)}; expected a string");
        string dtypeText = dtypeEl.GetString()!;
        if (!DTypes.TryParse(dtypeText, out var dtype))
            throw BadTensor(path, name, $"unknown dtype '{dtypeText}'; expected one of {string.Join(", ", Enum.GetNames<DType>())}");

        if (!entry.TryGetProperty("shape", out var shapeEl))
            throw BadTensor(path, name, "entry has no \"shape\" field");
        if (shapeEl.ValueKind != JsonValueKind.Array)
            throw BadTensor(path, name, $"\"shape\" is a JSON {Kind(shapeEl)}; expected an array of non-negative integers");
        var shape = new long[shapeEl.GetArrayLength()];
        int k = 0;
        long elements = 1;
        bool overflow = false;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim))
                throw BadTensor(path, name, $"shape[{k}] is {d.GetRawText()}; expected a non-negative integer");
            if (dim < 0)
                throw BadTensor(path, name, $"shape[{k}] is {dim}; expected a non-negative integer");
            shape[k++] = dim;
            if (!overflow)
            {
                try { elements = checked(elements * dim); }
                catch (OverflowException) { overflow = true; }
            }
        }
        long expectedBytes = 0;
        if (!overflow)
        {
            try { expectedBytes = checked(elements * dtype.SizeOf()); }
            catch (OverflowException) { overflow = true; }
        }
        if (overflow)
            throw BadTensor(path, name, $"shape [{string.Join(", ", shape)}] overflows a 64-bit byte count");

        if (!entry.TryGetProperty("data_offsets", out var offEl))
            throw BadTensor(path, name, "entry has no \"data_offsets\" field");
        if (offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw BadTensor(path, name, $"\"data_offsets\" is {Truncate(offEl.GetRawText())}; expected [begin, end]");
        if (!TryGetNonNegative(offEl[0], out long begin) || !TryGetNonNegative(offEl[1], out long end))
            throw BadTensor(path, name, $"\"data_offsets\" is {Truncate(offEl.GetRawText())}; expected two non-negative integers");
        if (end < begin)
            throw BadTensor(path, name, $"data_offsets [{begin}, {end}] end before they begin");
        if (end - begin != expectedBytes)
            throw BadTensor(path, name, $"data_offsets [{begin}, {end}] span {end - begin} bytes; expected {expectedBytes} " +
                                  $"(shape [{string.Join(", ", shape)}] = {elements} elements × {dtype.SizeOf()} bytes of {dtype})");
        if (end > dataLength)
            throw BadTensor(path, name, $"data_offsets [{begin}, {end}] reach past the end of the data buffer, which is " +
                                  $"{dataLength} bytes (truncated file?)");

        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    static bool TryGetNonNegative(JsonElement e, out long value)
    {
        value = 0;
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out value) && value >= 0;
    }

    /// <summary>
    /// The tensors must tile the data buffer: sorted by offset, the first begins at 0, each next one
    /// begins where the previous ended, and the last ends at the end of the file (as the reference
    /// implementation requires). A header length one byte short still parses as JSON but shifts every
    /// tensor; this is what refuses it.
    /// </summary>
    static void CheckTiling(string path, IEnumerable<SafeTensorInfo> tensors, long dataLength)
    {
        var sorted = tensors.OrderBy(t => t.Begin).ThenBy(t => t.End).ToArray();
        long expected = 0;
        SafeTensorInfo? previous = null;
        foreach (var t in sorted)
        {
            if (t.Begin < expected)
                throw Bad(path, $"tensors '{previous!.Name}' [{previous.Begin}, {previous.End}) and '{t.Name}' " +
                                $"[{t.Begin}, {t.End}) overlap; expected disjoint byte ranges");
            if (t.Begin > expected)
                throw BadTensor(path, t.Name, $"data_offsets [{t.Begin}, {t.End}] begin at {t.Begin}; expected {expected} " +
                                 (previous is null ? "(the first tensor starts the data buffer)" : $"(where '{previous.Name}' ends: tensors must be contiguous)"));
            expected = t.End;
            previous = t;
        }
        if (expected != dataLength)
            throw Bad(path, $"the tensors cover {expected} bytes of data but {dataLength} bytes follow the header; " +
                            "expected them to end exactly at the end of the file (wrong header length, or trailing bytes?)");
    }

    /// <summary>True when the file holds a tensor called <paramref name="name"/>.</summary>
    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>Dtype, shape and offsets of a tensor.</summary>
    /// <exception cref="InputError">No such tensor (the message names the file and lists near matches).</exception>
    public SafeTensorInfo GetInfo(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (_tensors.TryGetValue(name, out var info)) return info;
        throw new InputError($"{Path}: " + NameSuggestions.Missing(name, "in the file", _names));
    }

    /// <summary>True and the info when the tensor exists.</summary>
    public bool TryGetInfo(string name, out SafeTensorInfo info) => _tensors.TryGetValue(name, out info!);

    /// <summary>The raw little-endian bytes of a tensor, straight from the mapping (no copy).</summary>
    /// <remarks>The span is valid until <see cref="Dispose"/>; do not keep it longer.</remarks>
    /// <exception cref="InputError">No such tensor.</exception>
    /// <exception cref="InputError">The tensor is 2 GiB or larger (a span cannot index it).</exception>
    /// <exception cref="ObjectDisposedException">The file was disposed.</exception>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        ThrowIfDisposed();
        var info = GetInfo(name);
        int length = CheckedLength(info, info.ByteLength, "bytes");
        return new ReadOnlySpan<byte>(DataPointer(info), length);
    }

    /// <summary>
    /// A tensor as float32, row-major. F32 tensors are returned without copying: the memory is a
    /// view of the mapping, valid until <see cref="Dispose"/> (reading it later throws
    /// <see cref="ObjectDisposedException"/>) and read-only (never write through
    /// <c>MemoryMarshal.AsMemory</c>). F16, BF16 and F64 tensors are converted into a new array.
    /// </summary>
    /// <exception cref="InputError">No such tensor.</exception>
    /// <exception cref="InputError">The tensor is not F32, F16, BF16 or F64, or has 2^31 elements or more.</exception>
    /// <exception cref="ObjectDisposedException">The file was disposed.</exception>
    public ReadOnlyMemory<float> GetFloat32(string name)
    {
        ThrowIfDisposed();
        var info = GetInfo(name);
        if (!info.DType.IsFloatingPoint())
            throw BadTensor(Path, name, $"has dtype {info.DType}; expected a floating-point dtype (F32, F16, BF16 or F64)");
        int n = CheckedLength(info, info.ElementCount, "elements");
        if (n == 0) return ReadOnlyMemory<float>.Empty;
        byte* p = DataPointer(info);
        switch (info.DType)
        {
            case DType.F32:
                return new NativeMemoryManager<float>((float*)p, n, this).Memory;
            case DType.F16:
            {
                var result = new float[n];
                DTypeConversions.HalfToSingle(new ReadOnlySpan<ushort>(p, n), result);
                return result;
            }
            case DType.BF16:
            {
                var result = new float[n];
                DTypeConversions.BFloat16ToSingle(new ReadOnlySpan<ushort>(p, n), result);
                return result;
            }
            default: // F64
            {
                var result = new float[n];
                DTypeConversions.DoubleToSingle(new ReadOnlySpan<double>(p, n), result);
                return result;
            }
        }
    }

    /// <summary>
    /// Elements <c>[offset, offset + into.Length)</c> of a floating-point tensor (flat, row-major) as float32, converted from
    /// F16, BF16 or F64, read from the mapping: rows of a tensor too large to read whole (2^31 elements or more), or
    /// rows read only when asked for (memory-mapped decoders). Values are copied as they are (no finiteness check).
    /// </summary>
    /// <exception cref="InputError">The tensor is not F32, F16, BF16 or F64.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the tensor.</exception>
    /// <exception cref="ObjectDisposedException">The file was disposed.</exception>
    public void ReadFloat32(SafeTensorInfo info, long offset, Span<float> into)
    {
        ArgumentNullException.ThrowIfNull(info);
        ThrowIfDisposed();
        if (!_tensors.TryGetValue(info.Name, out var own) || !ReferenceEquals(own, info))
            throw new ArgumentException($"{Path}: tensor info '{info.Name}' is not this file's", nameof(info));
        if (!info.DType.IsFloatingPoint())
            throw BadTensor(Path, info.Name, $"has dtype {info.DType}; expected a floating-point dtype (F32, F16, BF16 or F64)");
        if (offset < 0 || offset > info.ElementCount - into.Length)
            throw new ArgumentOutOfRangeException(nameof(offset), offset, $"{Path}: tensor '{info.Name}' has {info.ElementCount} elements; asked for {into.Length} from {offset}");
        if (into.IsEmpty) return;
        byte* p = DataPointer(info) + offset * info.DType.SizeOf();
        switch (info.DType)
        {
            case DType.F32: new ReadOnlySpan<float>(p, into.Length).CopyTo(into); break;
            case DType.F16: DTypeConversions.HalfToSingle(new ReadOnlySpan<ushort>(p, into.Length), into); break;
            case DType.BF16: DTypeConversions.BFloat16ToSingle(new ReadOnlySpan<ushort>(p, into.Length), into); break;
            default: DTypeConversions.DoubleToSingle(new ReadOnlySpan<double>(p, into.Length), into); break;
        }
    }

    /// <summary>Receives one chunk of a streamed tensor: its first element's index and the values as float32.</summary>
    public delegate void Float32Chunk(long firstElement, ReadOnlySpan<float> values);

    /// <summary>
    /// Reads a floating-point tensor front to back in chunks of <paramref name="chunkElements"/>, as float32, through
    /// ordinary file reads rather than the mapping: a whole-tensor pass (a digest, a check) over a tensor that is mapped
    /// for row reads leaves none of its pages in this process's resident memory.
    /// </summary>
    /// <exception cref="InputError">The tensor is not F32, F16, BF16 or F64.</exception>
    /// <exception cref="ObjectDisposedException">The file was disposed.</exception>
    public void StreamFloat32(SafeTensorInfo info, int chunkElements, Float32Chunk consume)
    {
        ArgumentNullException.ThrowIfNull(info);
        ArgumentNullException.ThrowIfNull(consume);
        ArgumentOutOfRangeException.ThrowIfLessThan(chunkElements, 1);
        ThrowIfDisposed();
        if (!info.DType.IsFloatingPoint())
            throw BadTensor(Path, info.Name, $"has dtype {info.DType}; expected a floating-point dtype (F32, F16, BF16 or F64)");
        long total = info.ElementCount;
        int size = info.DType.SizeOf();
        int chunk = (int)Math.Min(chunkElements, Math.Max(1, total));
        var values = new float[chunk];
        if (_copies is not null && _copies.ContainsKey(info.Name))
        {
            // A strided view's copy is in memory already.
            for (long done = 0; done < total; done += chunk)
            {
                var into = values.AsSpan(0, (int)Math.Min(chunk, total - done));
                ReadFloat32(info, done, into);
                consume(done, into);
            }
            return;
        }
        var bytes = new byte[chunk * size];
        using var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.SequentialScan);
        stream.Seek(_dataStart + info.Begin, SeekOrigin.Begin);
        for (long done = 0; done < total; done += chunk)
        {
            int n = (int)Math.Min(chunk, total - done);
            var raw = bytes.AsSpan(0, n * size);
            stream.ReadExactly(raw);
            var into = values.AsSpan(0, n);
            switch (info.DType)
            {
                case DType.F32: System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(raw).CopyTo(into); break;
                case DType.F16: DTypeConversions.HalfToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(raw), into); break;
                case DType.BF16: DTypeConversions.BFloat16ToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(raw), into); break;
                default: DTypeConversions.DoubleToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, double>(raw), into); break;
            }
            consume(done, into);
        }
    }

    /// <summary>An integer tensor (I64, I32, I16, I8, U32, U16, U8 or BOOL) widened into a new <c>long[]</c>.</summary>
    /// <exception cref="InputError">No such tensor.</exception>
    /// <exception cref="InputError">The tensor has a floating-point or U64/F8 dtype, or has 2^31 elements or more.</exception>
    /// <exception cref="ObjectDisposedException">The file was disposed.</exception>
    public long[] GetInt64(string name)
    {
        ThrowIfDisposed();
        var info = GetInfo(name);
        int n = CheckedLength(info, info.ElementCount, "elements");
        byte* p = DataPointer(info);
        var result = new long[n];
        switch (info.DType)
        {
            case DType.I64: new ReadOnlySpan<long>(p, n).CopyTo(result); break;
            case DType.I32: { var s = new ReadOnlySpan<int>(p, n); for (int i = 0; i < n; i++) result[i] = s[i]; break; }
            case DType.U32: { var s = new ReadOnlySpan<uint>(p, n); for (int i = 0; i < n; i++) result[i] = s[i]; break; }
            case DType.I16: { var s = new ReadOnlySpan<short>(p, n); for (int i = 0; i < n; i++) result[i] = s[i]; break; }
            case DType.U16: { var s = new ReadOnlySpan<ushort>(p, n); for (int i = 0; i < n; i++) result[i] = s[i]; break; }
            case DType.I8: { var s = new ReadOnlySpan<sbyte>(p, n); for (int i = 0; i < n; i++) result[i] = s[i]; break; }
            case DType.U8 or DType.BOOL: { var s = new ReadOnlySpan<byte>(p, n); for (int i = 0; i < n; i++) result[i] = s[i]; break; }
            default:
                throw BadTensor(Path, name, $"has dtype {info.DType}; expected an integer dtype (I64, I32, I16, I8, U32, U16, U8 or BOOL)");
        }
        return result;
    }

    byte* DataPointer(SafeTensorInfo info) =>
        _copies is not null && _copies.TryGetValue(info.Name, out nint copy) ? (byte*)copy : _base + _dataStart + info.Begin;

    // A torch.save file's strided views (transposed weights), copied row-major into native memory once, at open, so every
    // read sees a contiguous tensor; freed with the mapping.
    Dictionary<string, nint>? _copies;

    static Dictionary<string, nint>? CopyStridedViews(byte* basePtr, PyTorch.PyTorchCheckpoint.Contents contents)
    {
        if (contents.Strided.Count == 0) return null;
        var copies = new Dictionary<string, nint>(StringComparer.Ordinal);
        try
        {
            foreach (var (name, view) in contents.Strided)
            {
                byte* copy = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)Math.Max(contents.Tensors[name].ByteLength, 1));
                copies.Add(name, (nint)copy);
                PyTorch.PyTorchCheckpoint.Gather(basePtr, view, copy);
            }
            return copies;
        }
        catch
        {
            foreach (var copy in copies.Values) System.Runtime.InteropServices.NativeMemory.Free((void*)copy);
            throw;
        }
    }

    int CheckedLength(SafeTensorInfo info, long count, string unit)
    {
        if (count > Array.MaxLength)
            throw new InputError($"{Path}: tensor '{info.Name}' has {count} {unit}; at most {Array.MaxLength} can be read at once");
        return (int)count;
    }

    /// <inheritdoc cref="INativeMemoryOwner.ThrowIfDisposed" />
    public void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0) throw new ObjectDisposedException(nameof(SafeTensorsFile), $"{Path} was closed");
    }

    /// <summary>Unmaps the file. Memory returned by <see cref="GetFloat32"/> for F32 tensors becomes unusable.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
        if (_copies is not null)
            foreach (var copy in _copies.Values) System.Runtime.InteropServices.NativeMemory.Free((void*)copy);
    }

    /// <inheritdoc />
    public override string ToString() => $"{Path} ({_names.Length} tensors)";

    internal static InputError Bad(string path, string what, Exception? inner = null) =>
        new($"{path}: not a valid safetensors file: {what}", inner);

    internal static InputError BadTensor(string path, string tensor, string what) =>
        new(what.StartsWith("has ", StringComparison.Ordinal)
            ? $"{path}: tensor '{tensor}' {what}"
            : $"{path}: tensor '{tensor}': {what}");

    static string Kind(JsonElement e) => JsonInput.KindName(e);

    static string Truncate(string s) => s.Length <= 80 ? s : s[..80] + "…";
}

/// <summary>Builds "no tensor X in Y; did you mean …" messages.</summary>
internal static class NameSuggestions
{
    public static string Missing(string name, string where, IReadOnlyCollection<string> names)
    {
        var sb = new StringBuilder();
        sb.Append($"no tensor '{name}' {where} ({names.Count} tensors)");
        var near = Near(name, names, 5);
        if (near.Count > 0) sb.Append("; did you mean ").Append(string.Join(", ", near.Select(n => $"'{n}'"))).Append('?');
        else if (names.Count is > 0 and <= 8) sb.Append("; it has ").Append(string.Join(", ", names.Select(n => $"'{n}'")));
        return sb.ToString();
    }

    /// <summary>Names within a small edit distance, or sharing the last dotted component.</summary>
    public static List<string> Near(string name, IEnumerable<string> names, int max)
    {
        int limit = Math.Max(2, name.Length / 4);
        string last = name[(name.LastIndexOf('.') + 1)..];
        return names
            .Select(n => (n, d: Distance(name, n, limit + 1)))
            .Where(x => x.d <= limit || (x.n.Length > 0 && (x.n.EndsWith("." + last, StringComparison.Ordinal) && name.Contains('.')
                                          || x.n.EndsWith(name, StringComparison.Ordinal) || name.EndsWith(x.n, StringComparison.Ordinal))))
            .OrderBy(x => x.d).ThenBy(x => x.n, StringComparer.Ordinal)
            .Take(max).Select(x => x.n).ToList();
    }

    /// <summary>Levenshtein distance, giving up (returning <paramref name="cap"/>) once it exceeds it.</summary>
    static int Distance(string a, string b, int cap)
    {
        if (Math.Abs(a.Length - b.Length) >= cap) return cap;
        var prev = new int[b.Length + 1];
        var cur = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) prev[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            cur[0] = i;
            int rowMin = cur[0];
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                cur[j] = Math.Min(Math.Min(prev[j] + 1, cur[j - 1] + 1), prev[j - 1] + cost);
                rowMin = Math.Min(rowMin, cur[j]);
            }
            if (rowMin >= cap) return cap;
            (prev, cur) = (cur, prev);
        }
        return Math.Min(prev[b.Length], cap);
    }
}
