using System.Globalization;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Models;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Reports;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Causal.Lens;

// The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens"; the
// tuned-lens package's TunedLens): one affine translator per block input — resid_pre 0 … L−1, which are Hugging
// Face's hidden_states[0 … L−1] — added residually, then the model's own final norm and unembedding:
//     lens_ℓ(h) = unembed(ln_final(h + h·W_ℓᵀ + b_ℓ))
// The final residual needs no translator: through ln_final and W_U it is the model's output. Translators start at
// zero, so an untrained tuned lens is the logit lens exactly. Loupe also applies a final logit soft-cap (Gemma 2)
// after the unembedding, so that the last stage reproduces the model's logits; tuned-lens's Unembed leaves it out.
// Files are laid out as tuned-lens lays them out: config.json (its TunedLensConfig fields) and the translators'
// state dict — {ℓ}.weight [d_model, d_model] (out × in, torch's Linear) and {ℓ}.bias [d_model] — here in
// params.safetensors, or tuned-lens's own params.pt (a torch.save file, read without running its pickle).

/// <summary>A tuned lens: an affine translator per block input (steps at the top of this file).</summary>
public sealed class TunedLens
{
    public const string ConfigFile = "config.json";
    public const string ParamsFile = "params.safetensors";

    /// <summary>The translators as tuned-lens saves them (torch.save), read when a folder has no <see cref="ParamsFile"/>.</summary>
    public const string TorchParamsFile = "params.pt";
    public const string LensType = "linear_tuned_lens";

    readonly float[][] _weights, _biases;
    readonly DeviceWeight[] _deviceWeights, _deviceBiases;

    TunedLens(int dModel, float[][] weights, float[][] biases, bool hasBias, string? baseModel, string? weightProcessing = null)
    {
        WeightProcessing = weightProcessing;
        DModel = dModel;
        _weights = weights;
        _biases = biases;
        HasBias = hasBias;
        BaseModel = baseModel;
        _deviceWeights = [.. weights.Select(w => new DeviceWeight(w, [dModel, dModel]))];
        _deviceBiases = [.. biases.Select(b => new DeviceWeight(b, [dModel]))];
    }

    public int DModel { get; }

    /// <summary>Translators: one per block (resid_pre 0 … L−1).</summary>
    public int Layers => _weights.Length;

    /// <summary>Whether the translators have a bias (tuned-lens's <c>bias</c>; true by default).</summary>
    public bool HasBias { get; }

    /// <summary>The model the lens was tuned for, as its config names it (<c>base_model_name_or_path</c>).</summary>
    public string? BaseModel { get; }

    /// <summary>
    /// The weight processing of the model it was trained on (<c>loupe_weight_processing</c>, Loupe's own config field; null when
    /// the config does not say, as tuned-lens's do not: Hugging Face models unprocessed).
    /// </summary>
    public string? WeightProcessing { get; }

    /// <summary>
    /// A sentence when the lens was trained on a model processed otherwise than <paramref name="model"/> (centring the
    /// writing weights shifts every residual the translators read); null when they agree or the lens does not say.
    /// </summary>
    public string? ProcessingWarning(HookedTransformer model) =>
        WeightProcessing is { } trained && trained != model.Processing.Describe()
            ? $"warning: the tuned lens was trained on the model with weight processing '{trained}'; this model has '{model.Processing.Describe()}' (pass --process {trained} to match)"
            : null;

    /// <summary>Translator ℓ's weight, <c>[d_model (out), d_model (in)]</c> row-major, as torch's Linear holds it.</summary>
    public ReadOnlySpan<float> Weight(int layer) => _weights[layer];

    /// <summary>Translator ℓ's bias <c>[d_model]</c> (zeros without a bias).</summary>
    public ReadOnlySpan<float> Bias(int layer) => _biases[layer];

    /// <summary>The untrained lens of <paramref name="model"/>: every translator zero, i.e. the logit lens.</summary>
    public static TunedLens Identity(HookedTransformer model, bool bias = true)
    {
        int d = model.Config.DModel, l = model.Config.NLayers;
        return new TunedLens(d, [.. Enumerable.Range(0, l).Select(_ => new float[d * d])], [.. Enumerable.Range(0, l).Select(_ => new float[d])], bias, model.Source,
            model.Processing.Describe());
    }

    /// <summary>A lens from given translators (training results, tests): weights <c>[layer][out·d + in]</c>, biases <c>[layer][d]</c>.</summary>
    /// <exception cref="ArgumentException">Shapes disagree or there are no translators.</exception>
    public static TunedLens FromTranslators(IReadOnlyList<float[]> weights, IReadOnlyList<float[]> biases, bool hasBias = true, string? baseModel = null, string? weightProcessing = null)
    {
        if (weights.Count == 0 || weights.Count != biases.Count) throw new ArgumentException($"{weights.Count} weights and {biases.Count} biases; give one of each per layer (at least one)");
        int d = biases[0].Length;
        for (int l = 0; l < weights.Count; l++)
            if (weights[l].Length != d * d || biases[l].Length != d) throw new ArgumentException($"translator {l}: weight of {weights[l].Length} and bias of {biases[l].Length} values; expected {d}×{d} and {d}");
        if (!hasBias && biases.Any(b => b.Any(v => v != 0f))) throw new ArgumentException("a lens without bias has zero biases");
        return new TunedLens(d, [.. weights.Select(w => (float[])w.Clone())], [.. biases.Select(b => (float[])b.Clone())], hasBias, baseModel, weightProcessing);
    }

    /// <summary>Refuses a lens whose shape is not the model's (d_model, one translator per block).</summary>
    /// <exception cref="InputError">d_model or the layer count differ (naming <paramref name="where"/>).</exception>
    public void CheckFits(HookedTransformer model, string where)
    {
        if (DModel != model.Config.DModel || Layers != model.Config.NLayers)
            throw new InputError($"{where}: a tuned lens for d_model {DModel} with {Layers} translators; the model has d_model {model.Config.DModel} and {model.Config.NLayers} layers" +
                (BaseModel is null ? "" : $" (the lens was tuned for {BaseModel})"));
    }

    /// <summary><c>x + x·W_ℓᵀ + b_ℓ</c> for one residual vector, on the host (float, the translator's dot products by SIMD).</summary>
    public float[] Translate(ReadOnlySpan<float> x, int layer)
    {
        int d = DModel;
        if (x.Length != d) throw new ArgumentException($"a vector of {x.Length}; the lens has d_model {d}", nameof(x));
        var w = _weights[layer];
        var b = _biases[layer];
        var y = new float[d];
        for (int o = 0; o < d; o++) y[o] = x[o] + TensorPrimitives.Dot(w.AsSpan(o * d, d), x) + b[o];
        return y;
    }

    /// <summary>
    /// <c>x + x·W_ℓᵀ + b_ℓ</c> for <paramref name="rows"/> rows of x <c>[rows, d_model]</c> on <paramref name="backend"/>'s
    /// device (the translator uploaded once per backend), into a new tensor.
    /// </summary>
    public Tensor Translate(IComputeBackend backend, Tensor x, int rows, int layer)
    {
        int d = DModel;
        var y = backend.Empty(rows, d);
        backend.Linear(x, rows, d, _deviceWeights[layer].On(backend)!, true, d, HasBias ? _deviceBiases[layer].On(backend) : null, y);
        backend.Add(y, x, y);
        return y;
    }

    // ---- files -------------------------------------------------------------------------------------------

    /// <summary>
    /// Writes <c>config.json</c> (tuned-lens's TunedLensConfig fields) and <c>params.safetensors</c> (<c>{ℓ}.weight</c>,
    /// <c>{ℓ}.bias</c>) into <paramref name="folder"/>, each atomically.
    /// </summary>
    public void Save(string folder, IReadOnlyDictionary<string, string>? extraConfig = null)
    {
        Directory.CreateDirectory(folder);
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>();
        for (int l = 0; l < Layers; l++)
        {
            tensors.Add(($"{l}.weight", [DModel, DModel], _weights[l]));
            if (HasBias) tensors.Add(($"{l}.bias", [DModel], _biases[l]));
        }
        SafeTensorsWriter.Write(Path.Combine(folder, ParamsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var config = new JsonObject
        {
            ["base_model_name_or_path"] = BaseModel,
            ["d_model"] = DModel,
            ["num_hidden_layers"] = Layers,
            ["bias"] = HasBias,
            ["base_model_revision"] = null,
            ["unembed_hash"] = null,
            ["lens_type"] = LensType,
        };
        if (WeightProcessing is not null) config["loupe_weight_processing"] = WeightProcessing;
        if (extraConfig is not null)
            foreach (var (k, v) in extraConfig) config[k] = v;
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFile), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>
    /// Reads a lens: a folder with <c>params.safetensors</c> or tuned-lens's <c>params.pt</c> (and its <c>config.json</c>,
    /// optional), or either file itself. Tensor names are tuned-lens's state dict (<c>{ℓ}.weight</c>, <c>{ℓ}.bias</c>; an older whole-lens
    /// state dict's <c>layer_translators.{ℓ}.*</c> too, its <c>unembed.*</c> copies of the model ignored). F32, F16, BF16
    /// and F64 are read as float32.
    /// </summary>
    /// <exception cref="InputError">Files missing, a
    /// config field of the wrong kind, a missing, misshapen, unexpected or non-finite tensor — each naming the file and field or tensor.</exception>
    public static TunedLens Load(string path)
    {
        string paramsPath, configPath;
        if (Directory.Exists(path))
        {
            paramsPath = Path.Combine(path, ParamsFile);
            configPath = Path.Combine(path, ConfigFile);
            if (!File.Exists(paramsPath))
            {
                // tuned-lens's own file: a torch.save state dict, read without running its pickle.
                paramsPath = Path.Combine(path, TorchParamsFile);
                if (!File.Exists(paramsPath))
                    throw new InputError($"{path}: neither {ParamsFile} nor {TorchParamsFile} (a tuned lens folder holds one of them and {ConfigFile})");
            }
        }
        else if (File.Exists(path))
        {
            paramsPath = path;
            configPath = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, ConfigFile);
        }
        else throw new InputError($"tuned lens not found: {path}");

        return LoadParams(paramsPath, File.Exists(configPath) ? configPath : null, ignore: null);
    }

    /// <summary>The lens in <paramref name="paramsPath"/>, its config from <paramref name="configPath"/> when given; tensors <paramref name="ignore"/> accepts are skipped (a training checkpoint's momentum).</summary>
    internal static TunedLens LoadParams(string paramsPath, string? configPath, Func<string, bool>? ignore)
    {
        var config = configPath is null ? null : ReadConfig(configPath);
        configPath ??= "the lens";
        using var file = SafeTensorsFile.Open(paramsPath);
        var names = new Dictionary<(int Layer, bool IsBias), string>();
        foreach (var name in file.Names)
        {
            if (name.StartsWith("unembed.", StringComparison.Ordinal) || ignore?.Invoke(name) == true) continue; // unembed.*: an old whole-lens state dict's copy of the model's own unembedding
            string key = name.StartsWith("layer_translators.", StringComparison.Ordinal) ? name["layer_translators.".Length..] : name;
            int dot = key.IndexOf('.');
            if (dot <= 0 || !int.TryParse(key.AsSpan(0, dot), NumberStyles.None, CultureInfo.InvariantCulture, out int layer) || key[(dot + 1)..] is not ("weight" or "bias"))
                throw new InputError($"{paramsPath}: unexpected tensor '{name}' (a tuned lens holds {{layer}}.weight and {{layer}}.bias)");
            if (!names.TryAdd((layer, key.EndsWith("bias", StringComparison.Ordinal)), name))
                throw new InputError($"{paramsPath}: tensors '{names[(layer, key.EndsWith("bias", StringComparison.Ordinal))]}' and '{name}' are the same translator's");
        }
        int layers = config?.Layers ?? (names.Keys.Where(k => !k.IsBias).Select(k => k.Layer + 1).DefaultIfEmpty(0).Max());
        if (layers == 0) throw new InputError($"{paramsPath}: no translator weights ({{layer}}.weight)");
        bool hasBias = config?.Bias ?? names.Keys.Any(k => k.IsBias);
        int d = config?.DModel ?? (int)file.GetInfo(names.GetValueOrDefault((0, false)) ?? throw new InputError($"{paramsPath}: no tensor '0.weight'")).Shape[^1];
        foreach (var (layer, isBias) in names.Keys)
        {
            if (layer >= layers) throw new InputError($"{paramsPath}: tensor '{names[(layer, isBias)]}' is for layer {layer}; the lens has {layers} translators ({configPath}: num_hidden_layers)");
            if (isBias && !hasBias) throw new InputError($"{paramsPath}: tensor '{names[(layer, isBias)]}' but {configPath} says bias: false");
        }
        // Every translator's tensors named before anything is allocated (a config's num_hidden_layers is not trusted).
        for (int l = 0; l < layers; l++)
        {
            if (!names.ContainsKey((l, false))) throw new InputError($"{paramsPath}: missing tensor '{l}.weight' (the lens has {layers} translators: {configPath})");
            if (hasBias && !names.ContainsKey((l, true))) throw new InputError($"{paramsPath}: missing tensor '{l}.bias'");
        }
        var weights = new float[layers][];
        var biases = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            weights[l] = Read(file, paramsPath, names.GetValueOrDefault((l, false)) ?? $"{l}.weight", [d, d]);
            biases[l] = hasBias ? Read(file, paramsPath, names.GetValueOrDefault((l, true)) ?? $"{l}.bias", [d]) : new float[d];
        }
        return new TunedLens(d, weights, biases, hasBias, config?.BaseModel, config?.WeightProcessing);
    }

    sealed record Config(int DModel, int Layers, bool Bias, string? BaseModel, string? WeightProcessing);

    static Config ReadConfig(string path)
    {
        using var doc = JsonInput.Parse(InputFiles.ReadAllBytes(path, 1 << 20), path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw InputError.Expected(path, "the document", "a JSON object", JsonInput.KindName(root));
        if (root.TryGetProperty("lens_type", out var type) && !(type.ValueKind == JsonValueKind.String && type.GetString() == LensType))
            throw InputError.Expected(path, "lens_type", $"\"{LensType}\" (the only kind tuned-lens writes)", type.ToString());
        int dModel = PositiveInt(root, "d_model", path);
        int layers = PositiveInt(root, "num_hidden_layers", path);
        bool bias = true;
        if (root.TryGetProperty("bias", out var b) && b.ValueKind != JsonValueKind.Null)
            bias = b.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw InputError.Expected(path, "bias", "true or false", JsonInput.KindName(b)),
            };
        string? baseModel = root.TryGetProperty("base_model_name_or_path", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString() : null;
        string? processing = root.TryGetProperty("loupe_weight_processing", out var wp) && wp.ValueKind == JsonValueKind.String ? wp.GetString() : null;
        return new Config(dModel, layers, bias, baseModel, processing);
    }

    static int PositiveInt(JsonElement root, string field, string path)
    {
        if (!root.TryGetProperty(field, out var v)) throw new InputError($"{path}: missing field '{field}'");
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int n) || n <= 0)
            throw InputError.Expected(path, field, "a positive integer", v.ToString());
        return n;
    }

    static float[] Read(SafeTensorsFile file, string path, string name, long[] shape)
    {
        if (!file.Contains(name)) throw new InputError($"{path}: missing tensor '{name}'");
        var info = file.GetInfo(name);
        if (!info.Shape.SequenceEqual(shape))
            throw new InputError($"{path}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}]; expected [{string.Join(", ", shape)}]");
        var values = file.GetFloat32(name).ToArray();
        int bad = Array.FindIndex(values, v => !float.IsFinite(v));
        if (bad >= 0) throw new InputError($"{path}: tensor '{name}' holds {values[bad]} at element {bad}; a translator must be finite");
        return values;
    }
}
