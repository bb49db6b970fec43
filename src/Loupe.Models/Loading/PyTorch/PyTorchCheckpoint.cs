using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace Loupe.Models.Loading.PyTorch;

/// <summary>
/// Reads the tensors of a <c>torch.save</c> file (<c>pytorch_model.bin</c>, <c>*.pt</c>, <c>*.pth</c>) without running
/// any of its pickle: the zip format of torch ≥ 1.6 (<c>{prefix}/data.pkl</c> + one member per storage,
/// <c>{prefix}/data/{key}</c>) and the legacy format before it (pickled magic number, protocol, system info, the object,
/// the storage keys, then each storage as an 8-byte element count and its bytes). Each tensor becomes a
/// <see cref="SafeTensorInfo"/> whose offsets are absolute in the file, so its bytes are read from the mapping as a
/// safetensors tensor's are. Nested dicts (a training checkpoint's <c>{"state_dict": …}</c>) are flattened with dots.
/// </summary>
internal static unsafe class PyTorchCheckpoint
{
    /// <summary>Largest pickle read (a 70B model's state-dict pickle is well under 10 MB).</summary>
    public const int MaxPickleBytes = 100_000_000;

    /// <summary>Deepest nesting of dicts and lists followed to find tensors.</summary>
    public const int MaxDepth = 32;

    // pickle(0x1950a86a20f9469cfc6c) after PROTO n: LONG1, 10 bytes.
    static ReadOnlySpan<byte> LegacyMagic => [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

    /// <summary>The file's format when it is a torch.save file ("pytorch" or "pytorch-legacy"), otherwise null.</summary>
    public static string? Detect(ReadOnlySpan<byte> head)
    {
        if (ZipDirectory.LooksLikeZip(head)) return "pytorch";
        if (head.Length >= 2 + LegacyMagic.Length && head[0] == 0x80 && head[2..].StartsWith(LegacyMagic)) return "pytorch-legacy";
        return null;
    }

    /// <summary>
    /// What was read: each tensor's info (offsets absolute in the file; for a strided view, [0, bytes) of the copy that
    /// <see cref="Gather"/> makes), the views that need that copy, and the classes of objects not built.
    /// </summary>
    public sealed record Contents(Dictionary<string, SafeTensorInfo> Tensors, string[] Names, IReadOnlyList<string> Ignored, IReadOnlyDictionary<string, StridedView> Strided);

    /// <summary>A tensor stored as a strided view of its storage (a transposed weight): where the storage starts in the file, and the view.</summary>
    public sealed record StridedView(long StorageStart, long Offset, long[] Shape, long[] Stride, int ElementSize);

    /// <summary>Copies a strided view's elements, row-major, from the mapped file into <paramref name="into"/> (its byte length).</summary>
    public static void Gather(byte* basePtr, StridedView view, byte* into)
    {
        int rank = view.Shape.Length, size = view.ElementSize;
        long elements = 1;
        foreach (var d in view.Shape) elements *= d;
        if (elements == 0) return;
        // The innermost dimension as one run when its elements are adjacent (a column slice), else element by element.
        long run = view.Stride[rank - 1] == 1 ? view.Shape[rank - 1] : 1;
        int outer = run > 1 ? rank - 1 : rank;
        var index = new long[rank];
        for (long e = 0; e < elements; e += run)
        {
            long at = view.Offset;
            for (int k = 0; k < outer; k++) at += index[k] * view.Stride[k];
            Buffer.MemoryCopy(basePtr + view.StorageStart + at * size, into + e * size, run * size, run * size);
            for (int k = outer - 1; k >= 0 && ++index[k] == view.Shape[k]; k--) index[k] = 0;
        }
    }

    /// <summary>The tensors of the mapped file at <paramref name="basePtr"/>.</summary>
    /// <exception cref="InputError">A malformed archive or pickle, a storage that is missing, compressed, too short or of a
    /// type Loupe does not read, a view past its storage; the message names the file and the tensor.</exception>
    public static Contents Read(string path, byte* basePtr, long length, string format) =>
        format == "pytorch" ? ReadZip(path, basePtr, length) : ReadLegacy(path, basePtr, length);

    static Contents ReadZip(string path, byte* basePtr, long length)
    {
        var entries = ZipDirectory.Read(path, basePtr, length);
        var byName = new Dictionary<string, ZipEntry>(StringComparer.Ordinal);
        foreach (var e in entries) byName.TryAdd(e.Name, e);
        var pickles = entries.Where(e => e.Name == "data.pkl" || (e.Name.EndsWith("/data.pkl", StringComparison.Ordinal) && e.Name.IndexOf('/') == e.Name.Length - 9)).ToList();
        if (pickles.Count == 0)
        {
            bool script = entries.Any(e => e.Name.EndsWith("constants.pkl", StringComparison.Ordinal) || e.Name.Contains("/code/", StringComparison.Ordinal));
            throw new InputError($"{path}: a zip archive without a data.pkl member: " + (script
                ? "a TorchScript module (torch.jit.save), whose weights Loupe does not read; save its state_dict() with torch.save or safetensors"
                : "not a torch.save checkpoint"));
        }
        if (pickles.Count > 1)
            throw new InputError($"{path}: a zip archive with {pickles.Count} data.pkl members ({string.Join(", ", pickles.Select(p => p.Name))}); expected one");
        string prefix = pickles[0].Name[..^"data.pkl".Length];
        if (byName.TryGetValue(prefix + "byteorder", out var order))
        {
            string text = Encoding.ASCII.GetString(Member(path, basePtr, order, 16));
            if (text != "little") throw new InputError($"{path}: the checkpoint was written {text}-endian (its {order.Name} member); Loupe reads little-endian files");
        }

        var storages = new Dictionary<string, StorageRef>(StringComparer.Ordinal);
        var pickle = Member(path, basePtr, pickles[0], MaxPickleBytes);
        var unpickler = new Unpickler($"{path} ({pickles[0].Name})", pid => Storage(path, pid, storages));
        int position = 0;
        object? root = unpickler.Load(pickle, ref position);

        return Collect(path, root, (tensor, storage) =>
        {
            string member = prefix + "data/" + storage.Key;
            if (!byName.TryGetValue(member, out var entry))
                throw new InputError($"{path}: tensor '{tensor}' refers to storage '{storage.Key}', but the archive has no member {member}");
            if (!entry.IsStored)
                throw new InputError($"{path}: tensor '{tensor}''s storage {member} is compressed (zip method {entry.Method}); torch.save stores storages " +
                                     "uncompressed, which Loupe reads in place: re-save the checkpoint with torch.save");
            return (entry.DataOffset, entry.Size, member);
        });
    }

    static Contents ReadLegacy(string path, byte* basePtr, long length)
    {
        var data = new ReadOnlySpan<byte>(basePtr, (int)Math.Min(length, int.MaxValue));
        var storages = new Dictionary<string, StorageRef>(StringComparer.Ordinal);
        var plain = new Unpickler(path, pid => throw new InputError($"{path}: a persistent id outside the object pickle"));
        int position = 0;
        plain.Load(data, ref position);                                   // magic number
        object? protocol = plain.Load(data, ref position);
        if (protocol is not 1001L) throw new InputError($"{path}: legacy torch.save protocol {Unpickler.Describe(protocol)}; expected 1001");
        if (plain.Load(data, ref position) is PyDict info)
            foreach (var (k, v) in info.Items)
                if (k is "little_endian" && v is false) throw new InputError($"{path}: the checkpoint was written big-endian; Loupe reads little-endian files");
        var unpickler = new Unpickler(path, pid => Storage(path, pid, storages));
        object? root = unpickler.Load(data, ref position);
        if (plain.Load(data, ref position) is not PyList keyList)
            throw new InputError($"{path}: the legacy checkpoint's storage key list is missing after its object");

        // Storages follow in the order of the key list: an 8-byte element count, then the elements.
        var located = new Dictionary<string, (long Offset, long Bytes)>(StringComparer.Ordinal);
        long at = position;
        foreach (var k in keyList.Items)
        {
            if (k is not string key) throw new InputError($"{path}: the storage key list holds {Unpickler.Describe(k)}; expected strings");
            if (at > length - 8) throw new InputError($"{path}: the file ends before storage '{key}' (truncated?)");
            long count = BinaryPrimitives.ReadInt64LittleEndian(new ReadOnlySpan<byte>(basePtr + at, 8));
            if (!storages.TryGetValue(key, out var storage))
                throw new InputError($"{path}: the storage key list names '{key}', which no tensor uses");
            long size = storage.DType.SizeOf();
            if (count < 0 || count > (length - at - 8) / size)
                throw new InputError($"{path}: storage '{key}' claims {count} elements of {size} bytes from byte {at + 8}; the file has {length} bytes (truncated?)");
            located[key] = (at + 8, count * size);
            at += 8 + count * size;
        }
        return Collect(path, root, (tensor, storage) =>
            located.TryGetValue(storage.Key, out var l)
                ? (l.Offset, l.Bytes, $"storage '{storage.Key}'")
                : throw new InputError($"{path}: tensor '{tensor}' refers to storage '{storage.Key}', which the file does not hold"));
    }

    static ReadOnlySpan<byte> Member(string path, byte* basePtr, ZipEntry entry, int maxBytes)
    {
        if (entry.Size > maxBytes) throw new InputError($"{path}: member {entry.Name} is {entry.Size} bytes; expected at most {maxBytes}");
        if (entry.IsStored) return new ReadOnlySpan<byte>(basePtr + entry.DataOffset, (int)entry.Size);
        if (entry.Method != 8) throw new InputError($"{path}: member {entry.Name} uses zip method {entry.Method}; expected stored (0) or deflate (8)");
        try
        {
            using var raw = new UnmanagedMemoryStream(basePtr + entry.DataOffset, entry.CompressedSize);
            using var inflate = new DeflateStream(raw, CompressionMode.Decompress);
            var bytes = new byte[entry.Size];
            inflate.ReadExactly(bytes);
            return bytes;
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException)
        {
            throw new InputError($"{path}: member {entry.Name} does not inflate to its {entry.Size} bytes ({e.Message})", e);
        }
    }

    /// <summary>torch's persistent id for a storage: <c>('storage', torch.XStorage, key, location, numel[, view_metadata])</c>.</summary>
    static StorageRef Storage(string path, object? pid, Dictionary<string, StorageRef> storages)
    {
        if (pid is not PyTuple { Items: ["storage", PyGlobal type, string key, string location, long numel, ..] })
            throw new InputError($"{path}: a persistent id {Unpickler.Describe(pid)}; expected ('storage', torch.XStorage, key, location, numel)");
        if (pid is PyTuple { Items.Length: 6 } legacy && legacy.Items[5] is not null)
            throw new InputError($"{path}: storage '{key}' is a view of another storage (pre-1.0 torch.save), which Loupe does not read");
        if (type.Module != "torch" || !StorageTypes.TryGetValue(type.Name, out var dtype))
            throw new InputError($"{path}: storage '{key}' has type {type}; Loupe reads {string.Join(", ", StorageTypes.Keys.Select(k => "torch." + k))}");
        if (numel < 0) throw new InputError($"{path}: storage '{key}' has {numel} elements");
        var storage = new StorageRef(key, dtype, numel, location, type.ToString());
        if (storages.TryGetValue(key, out var seen) && seen != storage)
            throw new InputError($"{path}: storage '{key}' is described twice, as {seen.TypeName} × {seen.Numel} and {type} × {numel}");
        storages[key] = storage;
        return storage;
    }

    static readonly Dictionary<string, DType> StorageTypes = new(StringComparer.Ordinal)
    {
        ["FloatStorage"] = DType.F32, ["DoubleStorage"] = DType.F64, ["HalfStorage"] = DType.F16, ["BFloat16Storage"] = DType.BF16,
        ["LongStorage"] = DType.I64, ["IntStorage"] = DType.I32, ["ShortStorage"] = DType.I16, ["CharStorage"] = DType.I8,
        ["ByteStorage"] = DType.U8, ["BoolStorage"] = DType.BOOL, ["Float8_e4m3fnStorage"] = DType.F8_E4M3, ["Float8_e5m2Storage"] = DType.F8_E5M2,
    };

    delegate (long Offset, long Bytes, string Where) Locate(string tensor, StorageRef storage);

    /// <summary>Every tensor under <paramref name="root"/>, named by its path of dict keys and list indices.</summary>
    static Contents Collect(string path, object? root, Locate locate)
    {
        var found = new List<(string Name, TensorRef Tensor)>();
        var ignored = new SortedSet<string>(StringComparer.Ordinal);
        var onPath = new HashSet<object>(ReferenceEqualityComparer.Instance);
        Walk(root, "", 0);

        if (found.Count == 0 && ignored.Count > 0)
            throw new InputError($"{path}: holds no tensors Loupe can read, only objects of other classes ({string.Join(", ", ignored.Take(5))}): " +
                                 "a whole pickled object (torch.save(model)) rather than its state_dict(), whose tensors Loupe would read");
        var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
        var strided = new Dictionary<string, StridedView>(StringComparer.Ordinal);
        var names = new string[found.Count];
        for (int i = 0; i < found.Count; i++)
        {
            var (name, t) = found[i];
            if (tensors.ContainsKey(name)) throw new InputError($"{path}: two tensors are both named '{name}' once nested keys are joined with dots");
            var (info, view) = Info(path, name, t, locate);
            tensors.Add(name, info);
            if (view is not null) strided.Add(name, view);
            names[i] = name;
        }
        return new Contents(tensors, names, [.. ignored], strided);

        void Walk(object? value, string name, int depth)
        {
            switch (value)
            {
                case TensorRef t:
                    found.Add((name, t));
                    return;
                case PyDict or PyList or PyTuple when depth >= MaxDepth:
                    throw new InputError($"{path}: '{name}' is nested more than {MaxDepth} dicts or lists deep");
                case PyDict or PyList or PyTuple when !onPath.Add(value):
                    return; // a container that holds itself: its tensors are reached the first time round
                case PyDict d:
                    foreach (var (k, v) in d.Items) Walk(v, Join(name, k switch { string s => s, long l => l.ToString(System.Globalization.CultureInfo.InvariantCulture), _ => Unpickler.Describe(k) }), depth + 1);
                    onPath.Remove(value);
                    return;
                case PyList l:
                    for (int i = 0; i < l.Items.Count; i++) Walk(l.Items[i], Join(name, i.ToString(System.Globalization.CultureInfo.InvariantCulture)), depth + 1);
                    onPath.Remove(value);
                    return;
                case PyTuple tuple:
                    for (int i = 0; i < tuple.Items.Length; i++) Walk(tuple.Items[i], Join(name, i.ToString(System.Globalization.CultureInfo.InvariantCulture)), depth + 1);
                    onPath.Remove(value);
                    return;
                case Opaque o:
                    ignored.Add(o.What);
                    return;
            }
        }

        static string Join(string prefix, string key) => prefix.Length == 0 ? key : prefix + "." + key;
    }

    static (SafeTensorInfo Info, StridedView? View) Info(string path, string name, TensorRef t, Locate locate)
    {
        var (offset, bytes, where) = locate(name, t.Storage);
        long size = t.Storage.DType.SizeOf();
        if (bytes != t.Storage.Numel * size)
            throw new InputError($"{path}: tensor '{name}''s storage {where} holds {bytes} bytes; its description says {t.Storage.Numel} elements of {size} bytes");
        long elements = 1;
        try { foreach (var d in t.Shape) elements = checked(elements * d); }
        catch (OverflowException) { throw new InputError($"{path}: tensor '{name}' has shape [{string.Join(", ", t.Shape)}], which overflows"); }
        // Row-major strides (a dimension of length 1 may have any stride): the bytes are read in place. Otherwise a view
        // (a transposed weight, as HF's own checkpoints hold) whose elements are copied out when the file is opened.
        bool contiguous = true;
        long expected = 1, last = t.Offset;
        for (int i = t.Shape.Length - 1; i >= 0; i--)
        {
            if (t.Shape[i] != 1 && t.Stride[i] != expected) contiguous = false;
            expected *= t.Shape[i];
            if (t.Shape[i] > 0) last += (t.Shape[i] - 1) * t.Stride[i];
        }
        if (t.Offset > t.Storage.Numel || (elements > 0 && last >= t.Storage.Numel))
            throw new InputError($"{path}: tensor '{name}' (shape [{string.Join(", ", t.Shape)}], strides [{string.Join(", ", t.Stride)}], from element {t.Offset}) " +
                                 $"runs past the end of its storage of {t.Storage.Numel} elements");
        if (contiguous || elements == 0)
        {
            long begin = offset + t.Offset * size;
            return (new SafeTensorInfo(name, t.Storage.DType, t.Shape, begin, begin + elements * size), null);
        }
        // A view of distinct elements is no larger than its storage; one that repeats them (an expand(), stride 0) could
        // ask a small file for any amount of memory.
        if (elements > t.Storage.Numel - t.Offset)
            throw new InputError($"{path}: tensor '{name}' (shape [{string.Join(", ", t.Shape)}], strides [{string.Join(", ", t.Stride)}]) has more elements than its storage " +
                                 $"of {t.Storage.Numel} holds: a view that repeats elements (an expand()); save .contiguous() copies");
        if (elements * size > Array.MaxLength)
            throw new InputError($"{path}: tensor '{name}' is a strided view of {elements * size} bytes; Loupe copies views of at most {Array.MaxLength} bytes: save .contiguous() copies");
        return (new SafeTensorInfo(name, t.Storage.DType, t.Shape, 0, elements * size), new StridedView(offset, t.Offset, t.Shape, t.Stride, (int)size));
    }
}
