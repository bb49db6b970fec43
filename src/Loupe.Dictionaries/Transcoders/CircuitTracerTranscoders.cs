// Per-layer transcoders in circuit-tracer's layout, as one IMlpReplacement.
//
// Folder (circuit_tracer/transcoder/single_layer_transcoder.py: TranscoderSet.to_safetensors / load_transcoder):
//   layer_{ℓ}.safetensors   W_enc [d_sae, d_model]   W_dec [d_sae, d_model]   b_enc [d_sae]   b_dec [d_model]
//                           activation_function.threshold [d_sae] (JumpReLU θ)   k (I64 scalar, TopK)
//                           W_skip [d_model, d_model] applied as x·W_skipᵀ
//   config.yaml             model_kind: transcoder_set, feature_input_hook, feature_output_hook, activation, k
// Older files (load_relu_transcoder, up to v0.5) store W_dec as [d_model, d_sae]; W_enc is [d_sae, d_model] in both,
// and Gemma-Scope-style files hold W_enc as [d_model, d_sae]. Orientation is read from the shapes against b_enc
// (d_sae) and b_dec (d_model); a square matrix is taken in today's orientation.
// Each layer becomes a Loupe transcoder (SparseDictionary, W_enc [d_in, d_sae], W_dec [d_sae, d_out]).
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>One transcoder per layer, each writing its own layer's MLP output (see the file header).</summary>
public sealed class CircuitTracerTranscoders : IMlpReplacement
{
    readonly SparseDictionary[] _layers;

    /// <param name="layers">Layer ℓ's transcoder at index ℓ; all with the same d_in and d_out.</param>
    /// <param name="inputHookPattern">Hook each layer reads; <c>{layer}</c> stands for the layer.</param>
    /// <param name="outputHookPattern">Hook each layer replaces.</param>
    /// <param name="source">Where it came from.</param>
    public CircuitTracerTranscoders(IReadOnlyList<SparseDictionary> layers, string inputHookPattern = CrossLayerTranscoder.DefaultInputHook,
        string outputHookPattern = CrossLayerTranscoder.DefaultOutputHook, string source = "(in memory)")
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (layers.Count == 0) throw new ArgumentException("at least one layer", nameof(layers));
        _layers = layers.ToArray();
        foreach (var d in _layers)
        {
            if (d.Shape.DIn != _layers[0].Shape.DIn || d.Shape.DOut != _layers[0].Shape.DOut)
                throw new ArgumentException("every layer's transcoder must have the same d_in and d_out", nameof(layers));
            if (d.Shape.ApplyBDecToInput) throw new ArgumentException("transcoders never subtract b_dec from the input", nameof(layers));
        }
        InputHookPattern = inputHookPattern;
        OutputHookPattern = outputHookPattern;
        Source = source;
    }

    /// <summary>The entries of the config.yaml list these came from (local paths or hf:// URIs, in layer order), or null.</summary>
    public IReadOnlyList<string>? Listed { get; private init; }

    public IReadOnlyList<SparseDictionary> Dictionaries => _layers;
    public string InputHookPattern { get; }
    public string OutputHookPattern { get; }
    public int Layers => _layers.Length;
    public int DIn => _layers[0].Shape.DIn;
    public int DOut => _layers[0].Shape.DOut;
    public int Features(int layer) => _layers[layer].Shape.DSae;
    public string InputHook(int layer) => InputHookPattern.Replace("{layer}", L(layer), StringComparison.Ordinal);
    public string OutputHook(int layer) => OutputHookPattern.Replace("{layer}", L(layer), StringComparison.Ordinal);
    static string L(int layer) => layer.ToString(System.Globalization.CultureInfo.InvariantCulture);
    public int LastTarget(int layer) { _ = _layers[layer]; return layer; }
    public bool HasSkip => _layers.Any(d => d.Shape.Skip);

    /// <summary>Where the decoders go when the transcoders run on a device (<see cref="DeviceMlpReplacement.Upload"/>).</summary>
    public DeviceDecoders DecodersOnDevice { get; set; }
    public float[]? SkipWeights(int layer) => _layers[layer].Shape.Skip ? _layers[layer].P.WSkip : null;
    public string Source { get; }

    public string Fingerprint
    {
        get
        {
            using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            foreach (var d in _layers)
            {
                sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"plt {d.Architecture} {d.Shape}\n"));
                foreach (var a in new[] { d.P.WEnc, d.P.BEnc, d.P.WDec, d.P.BDec, d.P.WSkip,
                             d.Activation is JumpReluActivation ? d.P.LogThreshold : [], d.Activation is BatchTopKActivation ? d.P.Threshold : [] })
                    sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()));
            }
            return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
        }
    }

    public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts) => Encode(_layers[layer], x, rows, pre, acts);

    public void EncoderDirection(int layer, int feature, Span<float> into) => EncoderColumn(_layers[layer], layer, feature, into);

    // A transcoder's inference encode (no b_dec subtracted: transcoders never do).
    internal static void Encode(SparseDictionary d, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts)
    {
        var xIn = new float[rows * d.Shape.DIn];
        d.EncodePre(x, rows, xIn, pre);
        d.Activation.Forward(pre, acts, rows, d.Shape.DSae, training: false, d.P);
    }

    // W_enc[:, feature] (d_in floats) of layer ℓ's transcoder.
    internal static void EncoderColumn(SparseDictionary d, int layer, int feature, Span<float> into)
    {
        if ((uint)feature >= (uint)d.Shape.DSae) throw new ArgumentOutOfRangeException(nameof(feature), feature, $"layer {layer} has {d.Shape.DSae} features");
        for (int j = 0; j < d.Shape.DIn; j++) into[j] = d.P.WEnc[j * d.Shape.DSae + feature];
    }

    public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into)
    {
        if (targetLayer != layer) throw new ArgumentOutOfRangeException(nameof(targetLayer), targetLayer, $"a per-layer transcoder of layer {layer} writes only layer {layer}");
        var d = _layers[layer];
        d.P.WDec.AsSpan(feature * d.Shape.DOut, d.Shape.DOut).CopyTo(into);
    }

    public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon)
    {
        var d = _layers[targetLayer];
        ReadOnlySpan<float> x = d.Shape.Skip ? inputs[targetLayer] : default;
        d.Decode(acts[targetLayer], x, rows, recon);
    }

    // ---- files ----

    /// <summary>Writes circuit-tracer's per-layer layout (today's orientation) and its config.yaml.</summary>
    /// <exception cref="ArgumentException">A weight is not finite.</exception>
    public void Save(string folder, string? modelName = null)
    {
        OutputFiles.EnsureFolder(folder);
        string? activation = null;
        int k = 0;
        for (int l = 0; l < Layers; l++)
        {
            var d = _layers[l];
            var s = d.Shape;
            var tensors = new List<SafeTensorEntry>
            {
                SafeTensorEntry.F32("W_enc", [s.DSae, s.DIn], CltFiles.Transpose(d.P.WEnc, s.DIn, s.DSae)),
                SafeTensorEntry.F32("W_dec", [s.DSae, s.DOut], d.P.WDec),
                SafeTensorEntry.F32("b_enc", [s.DSae], d.P.BEnc),
                SafeTensorEntry.F32("b_dec", [s.DOut], d.P.BDec),
            };
            if (s.Skip) tensors.Add(SafeTensorEntry.F32("W_skip", [s.DOut, s.DIn], CltFiles.Transpose(d.P.WSkip, s.DIn, s.DOut)));
            switch (d.Activation)
            {
                case JumpReluActivation:
                    tensors.Add(SafeTensorEntry.F32("activation_function.threshold", [s.DSae], d.P.LogThreshold.Select(MathF.Exp).ToArray()));
                    activation = "jump_relu";
                    break;
                case BatchTopKActivation:
                    // inference rule pre·1[pre > t]·1[pre > 0] = JumpReLU with θ = max(t, 0)
                    tensors.Add(SafeTensorEntry.F32("activation_function.threshold", [s.DSae], Enumerable.Repeat(Math.Max(d.P.Threshold[0], 0f), s.DSae).ToArray()));
                    activation = "jump_relu";
                    break;
                case TopKActivation t:
                    tensors.Add(SafeTensorEntry.I64("k", [], new long[] { t.K }));
                    activation = "topk";
                    k = t.K;
                    break;
                default:
                    activation = "relu";
                    break;
            }
            foreach (var (name, data) in d.P.Trainable(d.Activation))
                if (Array.FindIndex(data, v => !float.IsFinite(v) && !(name == "log_threshold" && float.IsNegativeInfinity(v))) is int bad and >= 0)
                    throw new ArgumentException($"cannot save layer {l}: tensor '{name}'[{bad}] is {data[bad]}");
            SafeTensorsWriter.Write(Path.Combine(folder, $"layer_{l}.safetensors"), tensors);
        }
        var yaml = new List<(string, string)>
        {
            ("model_kind", "transcoder_set"),
            ("model_name", modelName ?? ""),
            ("feature_input_hook", CltFiles.RelativeHook(InputHookPattern)),
            ("feature_output_hook", CltFiles.RelativeHook(OutputHookPattern)),
            ("activation", activation ?? "relu"),
        };
        if (k > 0) yaml.Add(("k", k.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        yaml.Add(("loupe_fingerprint", Fingerprint));
        yaml.Add(("loupe_version", CltFiles.LoupeVersion));
        yaml.Add((CltFiles.HookSemanticsKey, CltFiles.HookSemantics));
        CltFiles.WriteYaml(Path.Combine(folder, CltFiles.CircuitTracerConfig), yaml);
    }

    /// <summary>Loads a folder of <c>layer_ℓ.safetensors</c> (see the file header).</summary>
    /// <exception cref="InputError">
    /// No layer_0.safetensors, or layers are not consecutive from 0; a tensor is missing, has a shape that fits neither
    /// orientation, or holds NaN/±∞; a JumpReLU threshold is negative; k is out of range; layers disagree on d_model.
    /// Messages name the file, the tensor, what was expected and what was found.
    /// </exception>
    public static CircuitTracerTranscoders Load(string folder, string? inputHookPattern = null, string? outputHookPattern = null)
    {
        var yaml = CircuitTracerYaml.Read(Path.Combine(folder, CltFiles.CircuitTracerConfig));
        if (yaml.Transcoders is not null) return LoadListed(yaml, inputHookPattern, outputHookPattern);
        int layers = 0;
        while (File.Exists(Path.Combine(folder, $"layer_{layers}.safetensors"))) layers++;
        if (layers == 0) throw new InputError($"{folder}: layer_0.safetensors is missing (circuit-tracer's per-layer layout has layer_ℓ.safetensors per layer, or a config.yaml listing them under 'transcoders:')");
        int found = Directory.GetFiles(folder, "layer_*.safetensors").Length;
        if (found != layers) throw new InputError($"{folder}: holds {found} layer_*.safetensors files but only layers 0…{layers - 1} are consecutive; expected one per layer from 0");
        var (input, output, activation, k) = Settings(yaml, inputHookPattern, outputHookPattern);
        var dicts = new SparseDictionary[layers];
        for (int l = 0; l < layers; l++)
        {
            dicts[l] = LoadLayer(Path.Combine(folder, $"layer_{l}.safetensors"), activation, k);
            if (l > 0 && (dicts[l].Shape.DIn != dicts[0].Shape.DIn || dicts[l].Shape.DOut != dicts[0].Shape.DOut))
                throw InputError.Expected(Path.Combine(folder, $"layer_{l}.safetensors"), "d_model", $"{dicts[0].Shape.DIn} like layer_0", dicts[l].Shape.DIn);
        }
        return new CircuitTracerTranscoders(dicts, input, output, folder);
    }

    /// <summary>
    /// <see cref="Load(string, string?, string?)"/> (a folder of <c>layer_ℓ.safetensors</c>, or a config.yaml — or its folder —
    /// listing such files) with the decoders left mapped in the files (<see cref="MappedPerLayerTranscoders"/>).
    /// </summary>
    /// <exception cref="InputError">
    /// As <see cref="Load(string, string?, string?)"/>; also a listed entry that is not a circuit-tracer safetensors file (Gemma Scope
    /// <c>.npz</c>, Gemma Scope 2), a <c>W_dec</c> stored <c>[d_model, d_sae]</c> (before v0.6), or layers of different widths.
    /// </exception>
    public static MappedPerLayerTranscoders LoadMapped(string path, Func<(string Repo, string Path, string Revision), string>? resolveHub = null,
        bool entriesMayLeaveFolder = true)
    {
        string configPath = File.Exists(path) ? path : Path.Combine(path, CltFiles.CircuitTracerConfig), folder = path;
        var yaml = CircuitTracerYaml.Read(configPath);
        string[] files;
        string source;
        if (yaml.Transcoders is not null)
        {
            if (yaml["model_kind"] is { } kind && kind != "transcoder_set")
                throw new InputError($"{Path.GetFullPath(configPath)}: model_kind is '{kind}'; mapped per-layer decoders are for a transcoder_set");
            files = ResolveListed(yaml, resolveHub, entriesMayLeaveFolder);
            source = Path.GetFullPath(configPath);
            for (int l = 0; l < files.Length; l++)
                if (files[l].EndsWith(".npz", StringComparison.OrdinalIgnoreCase) || GemmaScope2Format.IsGemmaScope2File(files[l]))
                    throw new InputError($"{Where(source, l)}: {files[l]} is a Gemma Scope file; its decoders cannot stay mapped (circuit-tracer's layer_ℓ.safetensors layout only): load them into memory (--decoders memory)");
        }
        else
        {
            int layers = 0;
            while (File.Exists(Path.Combine(folder, $"layer_{layers}.safetensors"))) layers++;
            if (layers == 0) throw new InputError($"{folder}: layer_0.safetensors is missing (circuit-tracer's per-layer layout has layer_ℓ.safetensors per layer, or a config.yaml listing them under 'transcoders:')");
            int found = Directory.GetFiles(folder, "layer_*.safetensors").Length;
            if (found != layers) throw new InputError($"{folder}: holds {found} layer_*.safetensors files but only layers 0…{layers - 1} are consecutive; expected one per layer from 0");
            files = [.. Enumerable.Range(0, layers).Select(l => Path.Combine(folder, $"layer_{l}.safetensors"))];
            source = folder;
        }
        var (input, output, activation, k) = Settings(yaml, null, null);
        var layersRead = files.Select(f => LoadLayer(f, activation, k, mapDecoder: true)).ToArray();
        return new MappedPerLayerTranscoders(layersRead, files, input, output, source) { Listed = yaml.Transcoders is { } entries ? [.. entries] : null };
    }

    /// <summary>
    /// Loads the transcoders a circuit-tracer <c>config.yaml</c> lists, one per layer in layer order under <c>transcoders:</c>:
    /// local files (relative to the config's folder) or <c>hf://ORG/NAME/PATH[?revision=REV]</c> files, each circuit-tracer's
    /// <c>layer_ℓ.safetensors</c> layout, a Gemma Scope <c>params.npz</c> or a Gemma Scope 2 <c>params.safetensors</c> — the way
    /// circuit-tracer's presets (e.g. Gemma 2's Gemma Scope transcoders) are published.
    /// </summary>
    /// <param name="configPath">The config.yaml.</param>
    /// <param name="resolveHub">
    /// Gives the local file of an <c>hf://</c> entry (repository, path, revision); by default the Hugging Face cache is looked up
    /// and an entry not in it is refused (the CLI downloads them first).
    /// </param>
    /// <param name="entriesMayLeaveFolder">
    /// False for a config that came from the hub: a local entry must then be a relative path inside the config's folder.
    /// </param>
    /// <exception cref="InputError">
    /// No <c>transcoders:</c> list; an entry is missing, not cached, outside the folder when it must not be, or of an unknown
    /// kind; the files are malformed or disagree on d_model. Messages name the config, the entry (its layer) and the file.
    /// </exception>
    public static CircuitTracerTranscoders LoadListed(string configPath, Func<(string Repo, string Path, string Revision), string>? resolveHub = null,
        bool entriesMayLeaveFolder = true)
    {
        var yaml = CircuitTracerYaml.Read(configPath);
        if (!File.Exists(configPath)) throw new InputError($"transcoder config not found: {Path.GetFullPath(configPath)}");
        if (yaml.Transcoders is null) throw new InputError($"{configPath}: has no 'transcoders:' list (one file per layer)");
        return LoadListed(yaml, null, null, resolveHub, entriesMayLeaveFolder);
    }

    static CircuitTracerTranscoders LoadListed(CircuitTracerYaml yaml, string? inputHookPattern, string? outputHookPattern,
        Func<(string Repo, string Path, string Revision), string>? resolveHub = null, bool entriesMayLeaveFolder = true)
    {
        string config = Path.GetFullPath(yaml.Path);
        if (yaml["model_kind"] is { } kind && kind != "transcoder_set")
            throw new InputError($"{config}: model_kind is '{kind}' with a 'transcoders:' list; Loupe reads such lists for per-layer transcoders (transcoder_set) ; load a cross_layer_transcoder list (Gemma Scope 2's params_layer_ℓ files) with MlpReplacements.Load or GemmaScope2Clt.LoadListed");
        var entries = yaml.Transcoders!;
        if (entries.Count == 0) throw new InputError($"{config}: the 'transcoders:' list is empty; expected one file per layer");
        var (input, output, activation, k) = Settings(yaml, inputHookPattern, outputHookPattern);
        var files = ResolveListed(yaml, resolveHub, entriesMayLeaveFolder);
        MlpReplacements.CheckMemory(config, files);
        var dicts = new SparseDictionary[entries.Count];
        for (int l = 0; l < entries.Count; l++)
        {
            string where = Where(config, l), file = files[l];
            var dict = file.EndsWith(".npz", StringComparison.OrdinalIgnoreCase) ? GemmaScopeFormat.Load(file).Dictionary
                : GemmaScope2Format.IsGemmaScope2File(file) ? GemmaScope2Format.LoadWeights(file)
                : LoadLayer(file, activation, k);
            if (dict.Shape.ApplyBDecToInput) throw new InputError($"{where}: {file} subtracts b_dec from its input (an SAE, not a transcoder)");
            if (l > 0 && (dict.Shape.DIn != dicts[0].Shape.DIn || dict.Shape.DOut != dicts[0].Shape.DOut))
                throw InputError.Expected($"{where}: {file}", "d_in → d_out", $"{dicts[0].Shape.DIn} → {dicts[0].Shape.DOut} like layer 0", $"{dict.Shape.DIn} → {dict.Shape.DOut}");
            dicts[l] = dict;
        }
        return new CircuitTracerTranscoders(dicts, input, output, config) { Listed = [.. entries] };
    }

    /// <summary>
    /// The local file of every entry a config.yaml lists, in layer order (hf:// entries through <paramref name="resolveHub"/>, by
    /// default the Hugging Face cache), found and checked before any weight is read — to estimate the memory a set takes.
    /// </summary>
    /// <exception cref="InputError">As <see cref="LoadListed(string, Func{ValueTuple{string, string, string}, string}?, bool)"/>, for the entries.</exception>
    public static string[] ListedFiles(string configPath, Func<(string Repo, string Path, string Revision), string>? resolveHub = null, bool entriesMayLeaveFolder = true) =>
        ResolveListed(CircuitTracerYaml.Read(configPath), resolveHub, entriesMayLeaveFolder);

    internal static string[] ResolveListed(CircuitTracerYaml yaml, Func<(string Repo, string Path, string Revision), string>? resolveHub, bool entriesMayLeaveFolder)
    {
        string config = Path.GetFullPath(yaml.Path), folder = Path.GetDirectoryName(config)!;
        var entries = yaml.Transcoders ?? throw new InputError($"{config}: has no 'transcoders:' list (one file per layer)");
        resolveHub ??= CachedHubFile;
        var files = new string[entries.Count];
        for (int l = 0; l < entries.Count; l++)
        {
            string where = Where(config, l);
            string entry = entries[l];
            if (entry.Any(char.IsControl))
                throw InputError.Expected(where, "the entry", "a file path or hf:// URI (no control characters)", entry);
            string file;
            if (CircuitTracerYaml.ParseHfUri(entry, where) is { } hub) file = resolveHub(hub);
            else
            {
                if (entry.Length == 0) throw InputError.Expected(where, "the entry", "a file path or hf:// URI", "an empty string");
                bool rooted = Path.IsPathRooted(entry);
                file = Path.GetFullPath(rooted ? entry : Path.Combine(folder, entry));
                if (!entriesMayLeaveFolder && (rooted || !file.StartsWith(folder + Path.DirectorySeparatorChar, StringComparison.Ordinal)))
                    throw new InputError($"{where}: '{entry}' points outside the config's folder; a config from the hub may only list files beside it or hf:// URIs");
            }
            if (Directory.Exists(file))
            {
                string[] candidates = [Path.Combine(file, GemmaScopeFormat.ParamsFile), Path.Combine(file, GemmaScope2Format.ParamsFile)];
                file = candidates.FirstOrDefault(File.Exists) ?? throw new InputError($"{where}: folder {file} holds no {GemmaScopeFormat.ParamsFile} or {GemmaScope2Format.ParamsFile}");
            }
            if (!File.Exists(file)) throw new InputError($"{where}: file not found: {file}");
            if (!file.EndsWith(".npz", StringComparison.OrdinalIgnoreCase) && !file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                throw new InputError($"{where}: '{file}' is neither a .safetensors nor a .npz file");
            files[l] = file;
        }
        return files;
    }

    static string Where(string config, int layer) => $"{config}, transcoders[{layer}] (layer {layer})";

    // The hooks, activation and k a config.yaml gives. circuit-tracer names hooks as TransformerLens does, and so does Loupe
    // (an RMSNorm's "ln2.hook_normalized" is before its weight), except in configs Loupe wrote before that (CltFiles.LegacyLoupeExport).
    internal static (string Input, string Output, string? Activation, int? K) Settings(CircuitTracerYaml yaml, string? inputHookPattern, string? outputHookPattern)
    {
        string? fi = yaml["feature_input_hook"], fo = yaml["feature_output_hook"];
        bool legacy = CltFiles.LegacyLoupeExport(yaml.Scalars, yaml.Path);
        string input = inputHookPattern ?? (fi is not null ? CltFiles.AbsoluteHook(fi, legacy) : CrossLayerTranscoder.DefaultInputHook);
        string output = outputHookPattern ?? (fo is not null ? CltFiles.AbsoluteHook(fo) : CrossLayerTranscoder.DefaultOutputHook);
        int? k = yaml["k"] is { } ks && int.TryParse(ks, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int kv) ? kv : null;
        return (input, output, yaml["activation"], k);
    }

    static string CachedHubFile((string Repo, string Path, string Revision) entry)
    {
        using var client = new HubClient();
        return client.TryGetCachedPath(entry.Repo, entry.Path, entry.Revision) ?? throw new InputError(
            $"hf://{entry.Repo}/{entry.Path} (revision '{entry.Revision}') is not in the Hugging Face cache ({HubClient.DefaultCacheDir()}); " +
            "`loupe` downloads it when the config is given as --transcoders (not with HF_HUB_OFFLINE set)");
    }

    static SparseDictionary LoadLayer(string path, string? configActivation, int? configK) => LoadLayer(path, configActivation, configK, mapDecoder: false).Dictionary;

    /// <summary>
    /// One <c>layer_ℓ.safetensors</c>: with <paramref name="mapDecoder"/> the dictionary is only the encoder side (a d_out of 1,
    /// no decoder, no skip: W_dec stays in the file), and b_dec and W_skip <c>[d_in, d_out]</c> come beside it with the real shape.
    /// </summary>
    internal static (SparseDictionary Dictionary, SaeShape Shape, float[] BDec, float[]? Skip) LoadLayer(string path, string? configActivation, int? configK, bool mapDecoder)
    {
        using var f = CltFiles.Open(path);
        long Len(string name)
        {
            if (!f.TryGetInfo(name, out var i)) throw new InputError($"{path}: tensor '{name}' is missing; the file holds {string.Join(", ", f.Names.Take(12))}");
            if (i.Shape.Length != 1) throw InputError.Expected(path, $"tensor '{name}'", "a vector", CltFiles.Shape(i.Shape));
            return i.Shape[0];
        }
        int dSae = (int)Len("b_enc"), dOut = (int)Len("b_dec");
        if (!f.TryGetInfo("W_enc", out var we)) throw new InputError($"{path}: tensor 'W_enc' is missing; expected [d_sae = {dSae}, d_model]");
        if (we.Shape.Length != 2 || (we.Shape[0] != dSae && we.Shape[1] != dSae))
            throw InputError.Expected(path, "tensor 'W_enc'", $"[d_sae = {dSae}, d_model] or [d_model, {dSae}]", CltFiles.Shape(we.Shape));
        bool encFeatureMajor = we.Shape[0] == dSae;            // today's and v0.5's [d_sae, d_in]; square counts as this
        int dIn = (int)(encFeatureMajor ? we.Shape[1] : we.Shape[0]);
        bool skip = f.Contains("W_skip");
        string arch = f.Contains("activation_function.threshold") || f.Contains("threshold") ? "jumprelu"
            : f.Contains("k") || configActivation == "topk" ? "topk" : configActivation == "jump_relu" ? "jumprelu" : "relu";
        int k = 0;
        if (arch == "topk")
        {
            if (f.Contains("k"))
            {
                var kt = f.GetInt64("k");
                if (kt.Length != 1) throw InputError.Expected(path, "tensor 'k'", "a scalar", $"{kt.Length} values");
                k = (int)Math.Clamp(kt[0], int.MinValue, int.MaxValue);
            }
            else k = configK ?? throw new InputError($"{path}: a TopK transcoder needs k: neither a 'k' tensor nor 'k' in config.yaml");
            Check.InRange(k, 1, dSae, path, $"k (at most d_sae = {dSae})");
        }
        if (arch == "jumprelu" && !f.Contains("activation_function.threshold") && !f.Contains("threshold"))
            throw new InputError($"{path}: config.yaml says jump_relu but tensor 'activation_function.threshold' is missing");
        var shape = SaeShape.Transcoder(dIn, dSae, dOut, skip);
        var dict = new SparseDictionary(mapDecoder ? SaeShape.Transcoder(dIn, dSae, 1) : shape, CltFiles.ActivationOf(arch, k, dSae, path));
        var p = dict.P;
        float[] bDec = mapDecoder ? new float[dOut] : p.BDec, wSkip = mapDecoder ? (skip ? new float[dIn * dOut] : []) : p.WSkip;
        if (encFeatureMajor)
        {
            var t = new float[dSae * dIn];
            CltFiles.Read(f, path, "W_enc", [dSae, dIn], t);
            CltFiles.Transpose(t, dSae, dIn).CopyTo(p.WEnc, 0);
        }
        else CltFiles.Read(f, path, "W_enc", [dIn, dSae], p.WEnc);
        if (!f.TryGetInfo("W_dec", out var wd)) throw new InputError($"{path}: tensor 'W_dec' is missing; expected [d_sae = {dSae}, d_model = {dOut}]");
        if (mapDecoder)
        {
            // Left in the file, a feature's row read when it is decoded: only today's [d_sae, d_model] holds rows contiguously.
            if (wd.Shape.Length == 2 && wd.Shape[0] == dOut && wd.Shape[1] == dSae && dOut != dSae)
                throw new InputError($"{path}: tensor 'W_dec' is [d_model = {dOut}, d_sae = {dSae}] (circuit-tracer before v0.6), whose feature rows are not contiguous; its decoders cannot stay mapped: load them into memory (--decoders memory)");
            CltFiles.CheckShape(f, path, "W_dec", [dSae, dOut]);
        }
        else if (wd.Shape.Length == 2 && wd.Shape[0] == dSae && wd.Shape[1] == dOut) CltFiles.Read(f, path, "W_dec", [dSae, dOut], p.WDec);
        else if (wd.Shape.Length == 2 && wd.Shape[0] == dOut && wd.Shape[1] == dSae)
        {
            var t = new float[dSae * dOut];
            CltFiles.Read(f, path, "W_dec", [dOut, dSae], t);   // up to v0.5: [d_model, d_sae]
            CltFiles.Transpose(t, dOut, dSae).CopyTo(p.WDec, 0);
        }
        else throw InputError.Expected(path, "tensor 'W_dec'", $"[d_sae = {dSae}, d_model = {dOut}] (or [{dOut}, {dSae}] before v0.6)", CltFiles.Shape(wd.Shape));
        CltFiles.Read(f, path, "b_enc", [dSae], p.BEnc);
        CltFiles.Read(f, path, "b_dec", [dOut], bDec);
        if (skip)
        {
            var t = new float[dOut * dIn];
            CltFiles.Read(f, path, "W_skip", [dOut, dIn], t);       // x·W_skipᵀ
            CltFiles.Transpose(t, dOut, dIn).CopyTo(wSkip, 0);
        }
        if (arch == "jumprelu")
        {
            string name = f.Contains("activation_function.threshold") ? "activation_function.threshold" : "threshold";
            var theta = new float[dSae];
            CltFiles.Read(f, path, name, [dSae], theta);
            for (int i = 0; i < dSae; i++)
            {
                if (theta[i] < 0) throw InputError.Expected(path, $"tensor '{name}' element {i}", "a JumpReLU threshold ≥ 0", theta[i]);
                p.LogThreshold[i] = MathF.Log(theta[i]);
            }
        }
        return (dict, shape, bDec, skip ? wSkip : null);
    }
}
