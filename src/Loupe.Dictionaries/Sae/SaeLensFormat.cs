// SAELens on-disk format: a folder with cfg.json and sae_weights.safetensors.
//
// Tensors (float32, row-major):
//   W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_out]   b_dec [d_out]
//   threshold [d_sae]  jumprelu (θ itself, not its log)
//   threshold [1]      batchtopk (the learned inference threshold)
//   W_skip [d_in, d_out]  skip-transcoders
// cfg.json: architecture ("standard" | "topk" | "batchtopk" | "jumprelu"), d_in, d_sae, (d_out for
// transcoders), dtype, device, hook_name, hook_layer, apply_b_dec_to_input, normalize_activations,
// model_name, context_size, prepend_bos, and for topk/batchtopk activation_fn_kwargs {"k": K} plus "k".
// Loading also reads fields nested under "metadata" (SAELens ≥ 6 writes model/hook fields there).
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Models.Loading;
using Loupe.Reports;

namespace Loupe.Dictionaries.Sae;

/// <summary>SAELens cfg.json fields that Loupe reads and writes.</summary>
public sealed record SaeLensConfig
{
    public string Architecture { get; init; } = "standard";
    public int DIn { get; init; }
    public int DSae { get; init; }
    /// <summary>Output width; equals DIn for an SAE.</summary>
    public int DOut { get; init; }
    public string Dtype { get; init; } = "float32";
    public string Device { get; init; } = "cpu";
    public string HookName { get; init; } = "";
    public int HookLayer { get; init; }
    public bool ApplyBDecToInput { get; init; } = true;
    /// <summary>"none" or "expected_average_only_in" (carried, not applied by the dictionary).</summary>
    public string NormalizeActivations { get; init; } = "none";
    public string ModelName { get; init; } = "";
    public int ContextSize { get; init; } = 128;
    public bool PrependBos { get; init; } = true;
    /// <summary>k for topk / batchtopk; 0 otherwise.</summary>
    public int K { get; init; }
}

/// <summary>Reads and writes SAELens folders (cfg.json + sae_weights.safetensors).</summary>
public static class SaeLensFormat
{
    public const string ConfigFile = "cfg.json";
    public const string WeightsFile = "sae_weights.safetensors";
    static readonly string[] s_normalizations = ["none", "expected_average_only_in"];

    /// <summary>A config for <paramref name="dict"/>, filling shape and architecture from it.</summary>
    public static SaeLensConfig ConfigFor(SparseDictionary dict, SaeLensConfig? template = null) => (template ?? new SaeLensConfig()) with
    {
        Architecture = dict.Architecture,
        DIn = dict.Shape.DIn,
        DSae = dict.Shape.DSae,
        DOut = dict.Shape.DOut,
        ApplyBDecToInput = dict.Shape.ApplyBDecToInput,
        K = dict.Activation switch { TopKActivation t => t.K, BatchTopKActivation b => b.K, _ => 0 },
    };

    /// <summary>Writes <paramref name="folder"/>/cfg.json and sae_weights.safetensors (each atomically).</summary>
    public static void Save(string folder, SparseDictionary dict, SaeLensConfig? template = null)
    {
        var cfg = ConfigFor(dict, template);
        var s = dict.Shape;
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("W_enc", [s.DIn, s.DSae], dict.P.WEnc),
            ("b_enc", [s.DSae], dict.P.BEnc),
            ("W_dec", [s.DSae, s.DOut], dict.P.WDec),
            ("b_dec", [s.DOut], dict.P.BDec),
        };
        if (s.Skip) tensors.Add(("W_skip", [s.DIn, s.DOut], dict.P.WSkip));
        if (dict.Activation is JumpReluActivation) tensors.Add(("threshold", [s.DSae], dict.P.LogThreshold.Select(MathF.Exp).ToArray()));
        if (dict.Activation is BatchTopKActivation) tensors.Add(("threshold", [1], dict.P.Threshold));
        Directory.CreateDirectory(folder);
        SafeTensorsWriter.Write(Path.Combine(folder, WeightsFile), tensors);

        var json = new JsonObject
        {
            ["architecture"] = cfg.Architecture,
            ["d_in"] = cfg.DIn,
            ["d_sae"] = cfg.DSae,
            ["dtype"] = cfg.Dtype,
            ["device"] = cfg.Device,
            ["model_name"] = cfg.ModelName,
            ["hook_name"] = cfg.HookName,
            ["hook_layer"] = cfg.HookLayer,
            ["apply_b_dec_to_input"] = cfg.ApplyBDecToInput,
            ["normalize_activations"] = cfg.NormalizeActivations,
            ["context_size"] = cfg.ContextSize,
            ["prepend_bos"] = cfg.PrependBos,
        };
        if (cfg.DOut != cfg.DIn || s.Skip) json["d_out"] = cfg.DOut;
        if (cfg.K > 0)
        {
            json["k"] = cfg.K;
            json["activation_fn_kwargs"] = new JsonObject { ["k"] = cfg.K };
        }
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFile), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Loads a SAELens folder.</summary>
    /// <exception cref="FileNotFoundException">cfg.json or sae_weights.safetensors is missing.</exception>
    /// <exception cref="InvalidDataException">
    /// A required cfg field is missing or has the wrong type, the architecture or normalisation is unknown,
    /// dtype is not float32, or a tensor is missing or has the wrong shape (messages name file and field).
    /// </exception>
    public static (SparseDictionary Dictionary, SaeLensConfig Config) Load(string folder)
    {
        string cfgPath = Path.Combine(folder, ConfigFile), wPath = Path.Combine(folder, WeightsFile);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"SAELens config not found: {cfgPath}", cfgPath);
        if (!File.Exists(wPath)) throw new FileNotFoundException($"SAELens weights not found: {wPath}", wPath);
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(cfgPath)) as JsonObject ?? throw new InvalidDataException($"{cfgPath}: not a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{cfgPath}: invalid JSON: {e.Message}", e); }
        var meta = root["metadata"] as JsonObject;
        JsonNode? Field(string name) => root[name] ?? meta?[name];
        T Get<T>(string name, T fallback, bool required = false)
        {
            var node = Field(name);
            if (node is null)
                return required ? throw new InvalidDataException($"{cfgPath}: required field '{name}' is missing") : fallback;
            try { return node.GetValue<T>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new InvalidDataException($"{cfgPath}: field '{name}' should be {typeof(T).Name}, found {node.ToJsonString()}", e); }
        }

        int dIn = Get("d_in", 0, required: true), dSae = Get("d_sae", 0, required: true);
        int dOut = Get("d_out", dIn);
        string arch = Get("architecture", "standard");
        int k = Get("k", 0);
        if (Field("activation_fn_kwargs") is JsonObject kw && kw["k"] is JsonNode kn)
        {
            try { k = kn.GetValue<int>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new InvalidDataException($"{cfgPath}: field 'activation_fn_kwargs.k' should be an integer, found {kn.ToJsonString()}", e); }
        }
        string dtype = Get("dtype", "float32");
        if (dtype is not ("float32" or "torch.float32"))
            throw new InvalidDataException($"{cfgPath}: field 'dtype' is '{dtype}'; only float32 is supported");
        string norm = Get("normalize_activations", "none");
        if (!s_normalizations.Contains(norm))
            throw new InvalidDataException($"{cfgPath}: field 'normalize_activations' is '{norm}'; expected one of {string.Join(", ", s_normalizations)}");
        if (dIn <= 0 || dSae <= 0 || dOut <= 0) throw new InvalidDataException($"{cfgPath}: d_in, d_sae and d_out must be positive (got {dIn}, {dSae}, {dOut})");
        bool applyBDec = Get("apply_b_dec_to_input", dIn == dOut);

        SaeActivation act = arch switch
        {
            "standard" or "relu" => new ReluActivation(),
            "jumprelu" => new JumpReluActivation(),
            "topk" => new TopKActivation(k > 0 ? k : throw new InvalidDataException($"{cfgPath}: architecture 'topk' needs field 'k' (or activation_fn_kwargs.k)")),
            "batchtopk" => new BatchTopKActivation(k > 0 ? k : throw new InvalidDataException($"{cfgPath}: architecture 'batchtopk' needs field 'k' (or activation_fn_kwargs.k)")),
            _ => throw new InvalidDataException($"{cfgPath}: unknown architecture '{arch}'; expected standard, topk, batchtopk or jumprelu"),
        };
        var cfg = new SaeLensConfig
        {
            Architecture = arch == "relu" ? "standard" : arch, DIn = dIn, DSae = dSae, DOut = dOut, Dtype = "float32",
            Device = Get("device", "cpu"), HookName = Get("hook_name", ""), HookLayer = Get("hook_layer", 0),
            ApplyBDecToInput = applyBDec, NormalizeActivations = norm, ModelName = Get("model_name", ""),
            ContextSize = Get("context_size", 128), PrependBos = Get("prepend_bos", true), K = k,
        };

        using var file = SafeTensorsFile.Open(wPath);
        bool skip = file.Contains("W_skip");
        if (applyBDec && dIn != dOut) throw new InvalidDataException($"{cfgPath}: apply_b_dec_to_input is true but d_in {dIn} != d_out {dOut}");
        var dict = new SparseDictionary(new SaeShape(dIn, dSae, dOut, applyBDec, skip), act);
        void Read(string name, float[] into, params long[] shape)
        {
            if (!file.Contains(name)) throw new InvalidDataException($"{wPath}: tensor '{name}' is missing (have {string.Join(", ", file.Names)})");
            var actual = file.GetInfo(name).Shape;
            if (!actual.SequenceEqual(shape))
                throw new InvalidDataException($"{wPath}: tensor '{name}' has shape [{string.Join(", ", actual)}]; cfg.json implies [{string.Join(", ", shape)}]");
            file.GetFloat32(name).Span.CopyTo(into);
        }
        Read("W_enc", dict.P.WEnc, dIn, dSae);
        Read("b_enc", dict.P.BEnc, dSae);
        Read("W_dec", dict.P.WDec, dSae, dOut);
        Read("b_dec", dict.P.BDec, dOut);
        if (skip) Read("W_skip", dict.P.WSkip, dIn, dOut);
        if (act is JumpReluActivation)
        {
            var theta = new float[dSae];
            Read("threshold", theta, dSae);
            for (int i = 0; i < dSae; i++)
            {
                if (!(theta[i] >= 0)) throw new InvalidDataException($"{wPath}: tensor 'threshold'[{i}] is {theta[i]}; JumpReLU thresholds must be ≥ 0");
                dict.P.LogThreshold[i] = MathF.Log(theta[i]); // θ round-trips to within a few ulps (stored as log θ for training)
            }
        }
        if (act is BatchTopKActivation && file.Contains("threshold")) Read("threshold", dict.P.Threshold, 1);
        return (dict, cfg);
    }
}
