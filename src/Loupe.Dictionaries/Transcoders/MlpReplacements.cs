using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>Where the decoders of a cross-layer transcoder, or of circuit-tracer's per-layer transcoders, are kept while they replace a model's MLPs.</summary>
public enum DecoderStorage
{
    /// <summary>Mapped when they take <see cref="MlpReplacements.MapDecodersFromBytes"/> or more as float32, in memory otherwise.</summary>
    Auto,
    /// <summary>Read into memory at load (every value checked then).</summary>
    Memory,
    /// <summary>Left in their files, read row by row as features are decoded (<see cref="MappedCrossLayerTranscoder"/>, <see cref="MappedPerLayerTranscoders"/>).</summary>
    Mapped,
}

/// <summary>Where transcoders' decoders are while they run on a device (<see cref="DeviceMlpReplacement"/>).</summary>
public enum DeviceDecoders
{
    /// <summary>
    /// Whole when the device's free memory is known and they fit in <see cref="DeviceMlpReplacement.WholeUploadShare"/> of it
    /// (or the free memory is not known: the emulated device); the active rows otherwise.
    /// </summary>
    Auto,
    /// <summary>Uploaded whole, once (the fastest passes, L/2 times the encoders' memory).</summary>
    Whole,
    /// <summary>
    /// Left on the host (in memory or mapped); each pass uploads the rows of the features active in it (circuit-tracer's
    /// lazy decoder on a GPU): a CLT or a per-layer set larger than the device runs there, its encoders only resident.
    /// </summary>
    ActiveRows,
}

/// <summary>Loads whatever replaces a model's MLPs from the layouts researchers share, by what the path holds.</summary>
public static class MlpReplacements
{
    /// <summary>
    /// <list type="bullet">
    /// <item>a cross-layer transcoder folder: Loupe's (<c>cfg.json</c> + <c>clt_weights.safetensors</c>), circuit-tracer's (<c>W_enc_0.safetensors</c>, …)
    /// or Gemma Scope 2's (<c>params_layer_0.safetensors</c>, …; always with mapped decoders), or a circuit-tracer <c>config.yaml</c> with
    /// <c>model_kind: cross_layer_transcoder</c> listing Gemma Scope 2's layer files (<see cref="GemmaScope2Clt"/>);</item>
    /// <item>circuit-tracer per-layer transcoders: <c>layer_0.safetensors</c>, … (+ <c>config.yaml</c>), or a <c>config.yaml</c> (or its
    /// folder) listing one file per layer under <c>transcoders:</c> — local or <c>hf://</c>, circuit-tracer's layout, Gemma Scope
    /// <c>.npz</c> or Gemma Scope 2 <c>params.safetensors</c> (<see cref="CircuitTracerTranscoders.LoadListed(string, Func{ValueTuple{string, string, string}, string}?, bool)"/>);</item>
    /// <item>SAELens transcoders: a folder of per-layer SAELens folders (<c>layer_0/cfg.json</c>, …), or those folders comma-separated in layer order.</item>
    /// </list>
    /// </summary>
    /// <param name="path">The folder (or comma-separated SAELens folders, or a config.yaml).</param>
    /// <param name="layers">The model's n_layers (SAELens folders are matched to layers by it).</param>
    /// <param name="resolveHub">How an <c>hf://</c> entry of a config.yaml becomes a local file (default: the Hugging Face cache).</param>
    /// <param name="decoders">Where the decoders of a cross-layer transcoder or of circuit-tracer's per-layer files are kept (SAELens and Gemma Scope transcoders are read into memory).</param>
    /// <param name="log">Told how a cross-layer transcoder's or circuit-tracer's per-layer weights are kept, and their size, before they are read.</param>
    /// <exception cref="InputError">The path holds none of these, or the files are bad (the message names the file and field);
    /// <paramref name="decoders"/> is Mapped and the path holds SAELens transcoders or a file that cannot stay mapped.</exception>
    public static IMlpReplacement Load(string path, int layers, Func<(string Repo, string Path, string Revision), string>? resolveHub = null,
        DecoderStorage decoders = DecoderStorage.Auto, Action<string>? log = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string config = Path.Combine(path, CltFiles.CircuitTracerConfig);
        if (decoders == DecoderStorage.Mapped && (path.Contains(',') || (File.Exists(path) && !IsListConfig(path))
            || (Directory.Exists(path) && !IsCltFolder(path) && !IsListConfig(config) && !File.Exists(Path.Combine(path, "layer_0.safetensors")))))
            throw new InputError($"{path}: mapped decoders are for cross-layer transcoders (a folder with W_enc_0.safetensors, {CltFiles.WeightsFile} or params_layer_0.safetensors, or a cross_layer_transcoder config.yaml) " +
                "and circuit-tracer's per-layer transcoders (layer_ℓ.safetensors, or a config.yaml listing them); SAELens transcoders are read into memory");
        if (path.Contains(',')) return PerLayerTranscoders.LoadSaeLens(path, layers);
        bool fromHub = InHubCache(path);
        if (File.Exists(path) && path.EndsWith(".yaml", StringComparison.OrdinalIgnoreCase))
            return IsCrossLayerList(CircuitTracerYaml.Read(path)) ? ListedCrossLayer(path, layers, resolveHub, !fromHub, decoders, log)
                : ListedPerLayer(path);
        if (!Directory.Exists(path)) throw new InputError($"transcoder folder not found: {Path.GetFullPath(path)}");
        if (File.Exists(config) && CircuitTracerYaml.Read(config) is { Transcoders: not null } listed)
            return IsCrossLayerList(listed) ? ListedCrossLayer(config, layers, resolveHub, !fromHub, decoders, log)
                : ListedPerLayer(config);
        if (File.Exists(Path.Combine(path, "layer_0.safetensors")))
            return CircuitTracerPerLayer(path, WeightFiles(path), layers, decoders, log, () => CircuitTracerTranscoders.Load(path), () => CircuitTracerTranscoders.LoadMapped(path));
        if (IsCltFolder(path)) return LoadCrossLayer(path, layers, decoders, log);
        CheckMemory(path, WeightFiles(path));
        return PerLayerTranscoders.LoadSaeLens(path, layers);

        // A config.yaml listing circuit-tracer per-layer files (a transcoder_set).
        IMlpReplacement ListedPerLayer(string listConfig) =>
            CircuitTracerPerLayer(Path.GetFullPath(listConfig), CircuitTracerTranscoders.ListedFiles(listConfig, resolveHub, !fromHub), layers, decoders, log,
                () => CircuitTracerTranscoders.LoadListed(listConfig, resolveHub, entriesMayLeaveFolder: !fromHub),
                () => CircuitTracerTranscoders.LoadMapped(listConfig, resolveHub, entriesMayLeaveFolder: !fromHub));
    }

    /// <summary>Decoders of at least this many bytes as float32 stay mapped under <see cref="DecoderStorage.Auto"/> (1 GiB).</summary>
    public const long MapDecodersFromBytes = 1L << 30;

    static bool IsCltFolder(string folder) =>
        File.Exists(Path.Combine(folder, "W_enc_0.safetensors")) || File.Exists(Path.Combine(folder, CltFiles.WeightsFile)) || GemmaScope2Clt.IsFolder(folder);

    static bool IsCrossLayerList(CircuitTracerYaml yaml) => yaml["model_kind"] == "cross_layer_transcoder";

    static bool IsListConfig(string path) =>
        File.Exists(path) && path.EndsWith(".yaml", StringComparison.OrdinalIgnoreCase) && CircuitTracerYaml.Read(path) is { Transcoders: not null };

    // circuit-tracer's per-layer transcoders (a folder of layer_ℓ files or a transcoder_set list): the decoders mapped when asked,
    // or under Auto from MapDecodersFromBytes when every file is circuit-tracer's safetensors layout (a Gemma Scope file is read whole).
    static IMlpReplacement CircuitTracerPerLayer(string source, string[] files, int layers, DecoderStorage storage, Action<string>? log,
        Func<CircuitTracerTranscoders> inMemory, Func<MappedPerLayerTranscoders> mapped)
    {
        bool mappable = files.All(f => f.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) && !GemmaScope2Format.IsGemmaScope2File(f));
        long all = EstimateBytes(files), decoderBytes = mappable ? EstimateBytes(files, name => name == "W_dec") : 0;
        bool map = storage == DecoderStorage.Mapped || (storage == DecoderStorage.Auto && mappable && decoderBytes >= MapDecodersFromBytes);
        log?.Invoke(map
            ? $"{source}: per-layer transcoders: encoders {ByteSizes.Format(all - decoderBytes)} read into memory, decoders {ByteSizes.Format(decoderBytes)} (as float32) left mapped, read as features are decoded"
            : $"{source}: per-layer transcoders: {ByteSizes.Format(all)} read into memory");
        CheckMemory(source, files.Length, map ? all - decoderBytes : all,
            map || !mappable ? "" : $"; their decoders ({ByteSizes.Format(decoderBytes)}) can stay in their files: load with mapped decoders (--decoders mapped)");
        IMlpReplacement loaded = map ? mapped() : inMemory();
        if (loaded.Layers == layers) return loaded;
        (loaded as IDisposable)?.Dispose();
        throw new InputError($"{loaded.Source}: holds transcoders for {loaded.Layers} layer{(loaded.Layers == 1 ? "" : "s")}; the model has {layers}, one transcoder each");
    }

    // A config.yaml listing one Gemma Scope 2 CLT layer file per layer: always mapped (the files hold every slot).
    static IMlpReplacement ListedCrossLayer(string config, int layers, Func<(string Repo, string Path, string Revision), string>? resolveHub,
        bool entriesMayLeaveFolder, DecoderStorage storage, Action<string>? log)
    {
        var yaml = CircuitTracerYaml.Read(config);
        var files = CircuitTracerTranscoders.ResolveListed(yaml, resolveHub, entriesMayLeaveFolder);
        var (input, output) = GemmaScope2Clt.ListedHooks(yaml);
        return MappedGemmaScope2(config, files, layers, storage, log, () => GemmaScope2Clt.Load(files, Path.GetFullPath(config), input, output));
    }

    static MappedCrossLayerTranscoder MappedGemmaScope2(string source, string[] files, int layers, DecoderStorage storage, Action<string>? log,
        Func<MappedCrossLayerTranscoder> load)
    {
        if (storage == DecoderStorage.Memory)
            throw new InputError($"{source}: a Gemma Scope 2 cross-layer transcoder (params_layer_ℓ files) loads with its decoders mapped; drop --decoders memory");
        if (files.Length != layers)
            throw new InputError($"{source}: a cross-layer transcoder for {files.Length} layer{(files.Length == 1 ? "" : "s")}; the model has {layers}");
        long decoderBytes = EstimateBytes(files, CltFiles.IsDecoderTensor), otherBytes = EstimateBytes(files, name => !CltFiles.IsDecoderTensor(name));
        log?.Invoke($"{source}: Gemma Scope 2 cross-layer transcoder: encoders and skip paths {ByteSizes.Format(otherBytes)} read into memory, " +
            $"decoders {ByteSizes.Format(decoderBytes)} (as float32, every slot) left mapped, read as features are decoded");
        CheckMemory(source, files.Length, otherBytes, "");
        return load();
    }

    static IMlpReplacement LoadCrossLayer(string path, int layers, DecoderStorage storage, Action<string>? log)
    {
        if (GemmaScope2Clt.IsFolder(path))
        {
            var layerFiles = GemmaScope2Clt.LayerFiles(path);
            return MappedGemmaScope2(path, layerFiles, layers, storage, log, () => GemmaScope2Clt.Load(layerFiles, path));
        }
        var files = WeightFiles(path);
        long decoderBytes = EstimateBytes(files, CltFiles.IsDecoderTensor), otherBytes = EstimateBytes(files, name => !CltFiles.IsDecoderTensor(name));
        bool map = storage == DecoderStorage.Mapped || (storage == DecoderStorage.Auto && decoderBytes >= MapDecodersFromBytes);
        log?.Invoke(map
            ? $"{path}: cross-layer transcoder: encoders {ByteSizes.Format(otherBytes)} read into memory, decoders {ByteSizes.Format(decoderBytes)} (as float32) left mapped, read as features are decoded"
            : $"{path}: cross-layer transcoder: {ByteSizes.Format(otherBytes + decoderBytes)} read into memory");
        CheckMemory(path, files.Length, map ? otherBytes : otherBytes + decoderBytes,
            map ? "" : $"; its decoders ({ByteSizes.Format(decoderBytes)}) can stay in their files: load with mapped decoders (--decoders mapped)");
        IMlpReplacement clt = map ? CltFiles.LoadMapped(path) : CltFiles.Load(path);
        if (clt.Layers == layers) return clt;
        (clt as IDisposable)?.Dispose();
        throw new InputError($"{path}: a cross-layer transcoder for {clt.Layers} layer{(clt.Layers == 1 ? "" : "s")}; the model has {layers}");
    }

    /// <summary>
    /// The weight files a folder's layout is read from (circuit-tracer's layer_ℓ / W_enc_ℓ / W_dec_ℓ, Loupe's clt_weights, or the
    /// sae_weights of per-layer SAELens folders), for <see cref="EstimateBytes(IEnumerable{string})"/>; a config.yaml's list is
    /// <see cref="CircuitTracerTranscoders.ListedFiles"/>.
    /// </summary>
    public static string[] WeightFiles(string folder)
    {
        if (!Directory.Exists(folder)) return [];
        string[] Matching(string pattern) => [.. Directory.GetFiles(folder, pattern).Order(StringComparer.Ordinal)];
        if (File.Exists(Path.Combine(folder, "layer_0.safetensors"))) return Matching("layer_*.safetensors");
        if (File.Exists(Path.Combine(folder, "W_enc_0.safetensors"))) return [.. Matching("W_enc_*.safetensors"), .. Matching("W_dec_*.safetensors")];
        if (File.Exists(Path.Combine(folder, CltFiles.WeightsFile))) return [Path.Combine(folder, CltFiles.WeightsFile)];
        if (GemmaScope2Clt.IsFolder(folder)) return Matching("params_layer_*.safetensors");
        return [.. Directory.GetDirectories(folder).Select(d => Path.Combine(d, Loupe.Dictionaries.Sae.SaeLensFormat.WeightsFile)).Where(File.Exists).Order(StringComparer.Ordinal)];
    }

    /// <summary>
    /// The memory <paramref name="files"/> take once read as float32 (the product of every float tensor's shape in a safetensors
    /// header; the declared length of every array in a .npz), from their headers alone.
    /// </summary>
    public static long EstimateBytes(IEnumerable<string> files) => EstimateBytes(files, _ => true);

    /// <summary><see cref="EstimateBytes(IEnumerable{string})"/> of the safetensors tensors whose name passes <paramref name="tensor"/>.</summary>
    public static long EstimateBytes(IEnumerable<string> files, Func<string, bool> tensor)
    {
        long total = 0;
        foreach (var file in files)
        {
            if (file.EndsWith(".npz", StringComparison.OrdinalIgnoreCase))
            {
                try
                {
                    using var zip = System.IO.Compression.ZipFile.OpenRead(file);
                    foreach (var e in zip.Entries)
                    {
                        using var stream = e.Open();
                        var header = Npy.ReadHeader(stream, $"{file}, entry '{e.FullName}'", e.Length);
                        total += 4 * header.Shape.Aggregate(1L, (a, d) => a * Math.Max(0, d));
                    }
                }
                catch (InvalidDataException) { } // not a zip: its loader names the problem
                continue;
            }
            using var f = CltFiles.Open(file);
            foreach (var name in f.Names)
                if (tensor(name) && f.TryGetInfo(name, out var info) && info.DType.IsFloatingPoint())
                    total += 4 * info.Shape.Aggregate(1L, (a, d) => a * Math.Max(0, d));
        }
        return total;
    }

    /// <summary>Refuses a set that would not fit the memory this process may use (rather than failing half-way through reading it).</summary>
    /// <exception cref="InputError">The files' float tensors, as float32, take more than the memory available.</exception>
    public static void CheckMemory(string source, IReadOnlyList<string> files) => CheckMemory(source, files.Count, EstimateBytes(files), "");

    static void CheckMemory(string source, int fileCount, long need, string hint)
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (need > available)
            throw new InputError($"{source}: the transcoders' {fileCount} weight file(s) take ≈ {need / (double)(1L << 30):0.0} GiB as float32 (from their headers){hint}; " +
                $"this process may use {available / (double)(1L << 30):0.0} GiB. Use a machine with more memory, or fewer or narrower transcoders");
    }

    /// <summary>
    /// <see cref="Load(string, int, Func{ValueTuple{string, string, string}, string}?, DecoderStorage, Action{string}?)"/> for <paramref name="model"/>'s layer count.
    /// Hook names mean what TransformerLens's do on every model (an RMSNorm's <c>ln2.hook_normalized</c> is before its weight),
    /// so circuit-tracer's and SAELens's files apply as they are.
    /// </summary>
    public static IMlpReplacement Load(string path, Loupe.Models.HookedTransformer model, Func<(string Repo, string Path, string Revision), string>? resolveHub = null,
        DecoderStorage decoders = DecoderStorage.Auto, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        return Load(path, model.Config.NLayers, resolveHub, decoders, log);
    }

    /// <summary>A config inside the Hugging Face cache came from the hub: its local entries must stay beside it.</summary>
    public static bool InHubCache(string path)
    {
        string full = Path.GetFullPath(path), cache = Path.GetFullPath(Loupe.Models.Loading.HubClient.DefaultCacheDir());
        return full.StartsWith(cache.TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }
}
