using System.Text.Json;

namespace Loupe.Models.Loading;

/// <summary>
/// A model's weights: one <c>model.safetensors</c>, or the shards named by
/// <c>model.safetensors.index.json</c> (<c>{"metadata": {…}, "weight_map": {tensor: shard file}}</c>); failing those,
/// the same as torch.save files (<c>pytorch_model.bin</c>, <c>pytorch_model.bin.index.json</c>), read without running
/// their pickles (<see cref="SafeTensorsFile.Format"/>).
/// Shards are memory-mapped lazily, each at most once, on the first access to one of their
/// tensors; F32 weights are never copied. Reading from several threads at once is safe.
/// </summary>
public sealed class SafeTensorsCheckpoint : IDisposable
{
    /// <summary>File name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>File name of the index of a sharded checkpoint.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>File name of a single-file checkpoint that torch.save wrote (read without running its pickle).</summary>
    public const string PyTorchFileName = "pytorch_model.bin";

    /// <summary>File name of the index of a sharded torch.save checkpoint (the same JSON as <see cref="IndexFileName"/>).</summary>
    public const string PyTorchIndexFileName = "pytorch_model.bin.index.json";

    readonly SafeTensorsFile? _single;
    readonly Dictionary<string, Shard>? _byTensor;   // sharded: tensor → shard
    readonly Shard[] _shards;
    readonly string[] _names;
    int _disposed;

    /// <summary>The file that was opened: the single .safetensors file or the index JSON.</summary>
    public string Path { get; }

    /// <summary>True when the checkpoint is sharded (opened through an index).</summary>
    public bool IsSharded => _single is null;

    /// <summary>Every .safetensors file of the checkpoint (one, or the shards in index order).</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>
    /// Metadata: the single file's <c>__metadata__</c>, or the index's <c>"metadata"</c>
    /// (non-string values such as <c>total_size</c> are given as their JSON text).
    /// </summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Tensor names (header order, or weight_map order when sharded).</summary>
    public IReadOnlyList<string> Names { get; }

    sealed class Shard(string path, SafeTensorsCheckpoint owner)
    {
        readonly object _gate = new();
        SafeTensorsFile? _file;
        public readonly string Path = path;
        public readonly List<string> Tensors = [];

        public void Close()
        {
            lock (_gate)
            {
                _file?.Dispose();
                _file = null;
            }
        }

        public SafeTensorsFile File
        {
            get
            {
                var f = Volatile.Read(ref _file);
                if (f is not null) return f;
                lock (_gate)
                {
                    owner.ThrowIfDisposed();
                    if (_file is not null) return _file;
                    var opened = SafeTensorsFile.Open(Path);
                    try
                    {
                        foreach (var t in Tensors)
                            if (!opened.Contains(t))
                                throw new InputError(
                                    $"{owner.Path}: weight_map maps tensor '{t}' to shard {System.IO.Path.GetFileName(Path)}, " +
                                    $"but {Path} has no such tensor (index and shards do not match)");
                    }
                    catch
                    {
                        opened.Dispose();
                        throw;
                    }
                    Volatile.Write(ref _file, opened);
                    return opened;
                }
            }
        }
    }

    SafeTensorsCheckpoint(SafeTensorsFile single)
    {
        _single = single;
        Path = single.Path;
        Files = [single.Path];
        Metadata = single.Metadata;
        _names = single.Names.ToArray();
        Names = Array.AsReadOnly(_names);
        _shards = [];
    }

    SafeTensorsCheckpoint(string indexPath, IReadOnlyDictionary<string, string> metadata,
        List<(string Tensor, string ShardFile)> map)
    {
        Path = indexPath;
        Metadata = metadata;
        string folder = System.IO.Path.GetDirectoryName(indexPath)!;
        var shards = new Dictionary<string, Shard>(StringComparer.Ordinal);
        var order = new List<Shard>();
        _byTensor = new Dictionary<string, Shard>(StringComparer.Ordinal);
        foreach (var (tensor, shardFile) in map)
        {
            if (!shards.TryGetValue(shardFile, out var shard))
            {
                string full = System.IO.Path.GetFullPath(System.IO.Path.Combine(folder, shardFile));
                if (!File.Exists(full))
                    throw new InputError(
                        $"{indexPath}: weight_map names shard '{shardFile}' (for tensor '{tensor}'), but {full} does not exist");
                shard = new Shard(full, this);
                shards.Add(shardFile, shard);
                order.Add(shard);
            }
            shard.Tensors.Add(tensor);
            _byTensor.Add(tensor, shard);
        }
        _shards = order.ToArray();
        Files = order.Select(s => s.Path).ToArray();
        _names = map.Select(m => m.Tensor).ToArray();
        Names = Array.AsReadOnly(_names);
    }

    /// <summary>
    /// The weights file <see cref="Open"/> takes from <paramref name="folder"/>, in order of preference: model.safetensors, its
    /// index, then (before safetensors, Hugging Face saved torch.save files, whose pickles are read, never run)
    /// pytorch_model.bin and its index; null when the folder has none of them.
    /// </summary>
    public static string? WeightsFileIn(string folder) =>
        new[] { SingleFileName, IndexFileName, PyTorchFileName, PyTorchIndexFileName }
            .Select(name => System.IO.Path.Combine(folder, name)).FirstOrDefault(File.Exists);

    /// <summary>
    /// Opens a checkpoint: a folder holding <c>model.safetensors</c> (preferred), <c>model.safetensors.index.json</c>,
    /// <c>pytorch_model.bin</c> or <c>pytorch_model.bin.index.json</c>, the path of an index JSON, or the path of a single
    /// .safetensors or torch.save file.
    /// </summary>
    /// <exception cref="FileNotFoundException">The path does not exist, or the folder has no weights.</exception>
    /// <exception cref="InputError">
    /// A malformed file or index (see <see cref="SafeTensorsFile.Open"/>); an index entry that is
    /// not a plain file name in the index's folder, or names a shard that does not exist (the
    /// message names the index and the shard).
    /// </exception>
    public static SafeTensorsCheckpoint Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        path = System.IO.Path.GetFullPath(path);
        if (Directory.Exists(path))
        {
            if (WeightsFileIn(path) is { } file)
                return file.EndsWith(".json", StringComparison.Ordinal) ? OpenIndex(file) : new SafeTensorsCheckpoint(SafeTensorsFile.Open(file));
            throw new FileNotFoundException(
                $"{path} has none of {SingleFileName}, {IndexFileName}, {PyTorchFileName} or {PyTorchIndexFileName}", System.IO.Path.Combine(path, SingleFileName));
        }
        if (!File.Exists(path))
            throw new FileNotFoundException($"checkpoint {path} does not exist", path);
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return OpenIndex(path);
        return new SafeTensorsCheckpoint(SafeTensorsFile.Open(path));
    }

    /// <summary>Largest index JSON read (real ones are well under 1 MB).</summary>
    public const long MaxIndexBytes = SafeTensorsFile.MaxHeaderBytes;

    static SafeTensorsCheckpoint OpenIndex(string indexPath)
    {
        using (var doc = JsonInput.Parse(InputFiles.ReadAllBytes(indexPath, MaxIndexBytes), indexPath, maxDepth: 16))
        try
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Bad(indexPath, "expected a JSON object");
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            if (root.TryGetProperty("metadata", out var md) && md.ValueKind == JsonValueKind.Object)
                foreach (var p in md.EnumerateObject())
                    metadata[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : p.Value.GetRawText();
            if (!root.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw Bad(indexPath, "expected a \"weight_map\" object of tensor name → shard file");
            var map = new List<(string, string)>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new InputError($"{indexPath}: weight_map entry for tensor '{p.Name}' is not a string; expected a shard file name");
                string shard = p.Value.GetString()!;
                if (!IsPlainFileName(shard))
                    throw new InputError($"{indexPath}: weight_map maps tensor '{p.Name}' to '{shard}'; expected a file name in the same folder");
                if (!seen.Add(p.Name))
                    throw new InputError($"{indexPath}: weight_map lists tensor '{p.Name}' twice");
                map.Add((p.Name, shard));
            }
            if (map.Count == 0) throw Bad(indexPath, "the weight_map is empty; expected at least one tensor");
            return new SafeTensorsCheckpoint(indexPath, metadata, map);
        }
        catch (InvalidOperationException e)
        {
            // A string JsonElement cannot transcode, e.g. an escaped lone surrogate "\ud800".
            throw Bad(indexPath, $"holds a string that is not valid Unicode ({e.Message})", e);
        }
    }

    static InputError Bad(string indexPath, string what, Exception? inner = null) =>
        new($"{indexPath}: not a valid safetensors index: {what}", inner);

    internal static bool IsPlainFileName(string name) =>
        name.Length > 0 && name != "." && name != ".." && name.IndexOfAny(['/', '\\', '\0']) < 0
        && !System.IO.Path.IsPathRooted(name);

    /// <summary>True when the checkpoint has a tensor called <paramref name="name"/> (opens no shard).</summary>
    public bool Contains(string name) => _single?.Contains(name) ?? _byTensor!.ContainsKey(name);

    /// <summary>The file holding a tensor, opening its shard if needed.</summary>
    /// <exception cref="InputError">No such tensor; the shard is malformed or lacks a tensor the index maps to it.</exception>
    public SafeTensorsFile FileOf(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        ThrowIfDisposed();
        if (_single is not null) return _single;
        if (_byTensor!.TryGetValue(name, out var shard)) return shard.File;
        throw new InputError($"{Path}: " + NameSuggestions.Missing(name, "in the checkpoint", _names));
    }

    /// <inheritdoc cref="SafeTensorsFile.GetInfo" />
    public SafeTensorInfo GetInfo(string name) => FileOf(name).GetInfo(name);

    /// <inheritdoc cref="SafeTensorsFile.GetFloat32" />
    public ReadOnlyMemory<float> GetFloat32(string name) => FileOf(name).GetFloat32(name);

    /// <inheritdoc cref="SafeTensorsFile.GetInt64" />
    public long[] GetInt64(string name) => FileOf(name).GetInt64(name);

    /// <inheritdoc cref="SafeTensorsFile.GetBytes" />
    public ReadOnlySpan<byte> GetBytes(string name) => FileOf(name).GetBytes(name);

    void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0) throw new ObjectDisposedException(nameof(SafeTensorsCheckpoint), $"{Path} was closed");
    }

    /// <summary>Unmaps every opened file; F32 memory handed out becomes unusable.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _single?.Dispose();
        // A shard being opened right now finishes first (Close takes the same lock); a later
        // open sees _disposed and throws.
        foreach (var s in _shards) s.Close();
    }

    /// <inheritdoc />
    public override string ToString() => $"{Path} ({_names.Length} tensors in {Files.Count} file(s))";
}
