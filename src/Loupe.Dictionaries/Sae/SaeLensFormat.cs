// SAELens on-disk format: a folder with cfg.json and sae_weights.safetensors (SAELens 5.x and 6.x;
// sae_lens/saes/*.py and sae_lens/loading/pretrained_sae_loaders.py are the reference).
//
// Tensors (row-major; stored F32, F16, BF16 or F64 are all read as float32):
//   W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_out]   b_dec [d_out]
//   W_skip [d_out, d_in]  skip transcoders (SAELens computes x·W_skipᵀ; Loupe keeps W_skip as [d_in, d_out])
//   threshold [d_sae]     JumpReLU θ itself (older training checkpoints: log_threshold [d_sae] instead)
//   topk_threshold []     BatchTopK training checkpoints (the learned scalar threshold)
//   scaling_factor [d_sae] pre-6 files only; accepted when all ones
//   b_gate, b_mag, r_mag [d_sae]  gated SAEs, instead of b_enc
// cfg.json: d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations, reshape_activations,
// architecture, and per architecture k (topk, batchtopk), rescale_acts_by_decoder_norm (topk), d_out (transcoders).
// Model and hook fields (model_name, hook_name, hook_layer, hook_name_out, context_size, prepend_bos) sit at the
// top level before SAELens 6 and under "metadata" from 6.0 ("meta" in the 6.0 release candidates); all are read.
//
// Architectures:
//   standard, jumprelu, topk                          SAEs (SAELens inference classes)
//   gated                                             read as the JumpReLU SAE it is at inference (GatedSae.cs)
//   transcoder, skip_transcoder,
//   jumprelu_transcoder, jumprelu_skip_transcoder     transcoders: d_out, never apply_b_dec_to_input
//   batchtopk                                         SAELens training checkpoints; SAELens saves a finished BatchTopK
//                                                     SAE as "jumprelu" with θ = the learned threshold for every feature
//   matryoshka_batchtopk                              the same, plus matryoshka_widths (the nested levels); finished, it is
//                                                     "jumprelu" too, Loupe keeping the widths under "metadata"
//   topk_transcoder, topk_skip_transcoder,
//   batchtopk_transcoder, batchtopk_skip_transcoder,
//   matryoshka_batchtopk_transcoder, …_skip_transcoder Loupe extensions (SAELens has no such classes)
//
// Load:
//   1. read cfg.json (top level, then metadata/meta) and map the architecture to an activation and shape;
//   2. read and shape-check every tensor, refusing unknown tensors and NaN/±∞;
//   3. fold what SAELens applies at inference into the weights, so Loupe's dictionary takes raw activations:
//      rescale_acts_by_decoder_norm (TopK) and expected_average_only_in (a scaling factor from the caller or from
//      SAELens's activation_scaler.json). layer_norm and constant_norm_rescale normalise each input at run time,
//      which Loupe's dictionaries do not do: they are refused rather than silently ignored.
// Save writes the flat pre-6 layout (which SAELens 6 upgrades on load, so both read it) plus a "metadata" copy of
// the model/hook fields for readers of the 6.x layout. It writes no sae_lens_version: Loupe is not SAELens.
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Reports;

namespace Loupe.Dictionaries.Sae;

/// <summary>SAELens cfg.json fields that Loupe reads and writes.</summary>
public sealed record SaeLensConfig
{
    /// <summary>SAELens architecture name as in cfg.json ("standard", "jumprelu", "topk", "jumprelu_transcoder", …).</summary>
    public string Architecture { get; init; } = "standard";
    public int DIn { get; init; }
    public int DSae { get; init; }
    /// <summary>Output width; equals DIn for an SAE.</summary>
    public int DOut { get; init; }
    /// <summary>SAELens's compute dtype. Loupe computes in float32 whatever the file holds and saves "float32".</summary>
    public string Dtype { get; init; } = "float32";
    public string Device { get; init; } = "cpu";
    /// <summary>The hook the dictionary reads (TransformerLens name), e.g. <c>blocks.12.hook_resid_post</c>; empty when unknown.</summary>
    public string HookName { get; init; } = "";
    public int HookLayer { get; init; }
    /// <summary>For a transcoder, the hook it writes (e.g. <c>blocks.3.hook_mlp_out</c>); empty otherwise or when unknown.</summary>
    public string HookNameOut { get; init; } = "";
    public bool ApplyBDecToInput { get; init; } = true;
    /// <summary>
    /// Always "none" for a loaded dictionary: SAELens's "expected_average_only_in" scaling is folded into the weights
    /// on load (the dictionary takes raw activations) and the run-time normalisations are refused.
    /// </summary>
    public string NormalizeActivations { get; init; } = "none";
    /// <summary>
    /// "hook_z" when the dictionary reads <c>attn.hook_z</c> flattened from [n_heads, d_head] to n_heads·d_head
    /// (the caller flattens, as SAELens does); "none" otherwise.
    /// </summary>
    public string ReshapeActivations { get; init; } = "none";
    public string ModelName { get; init; } = "";
    public int ContextSize { get; init; } = 128;
    public bool PrependBos { get; init; } = true;
    /// <summary>k for topk / batchtopk; 0 otherwise.</summary>
    public int K { get; init; }
    /// <summary>
    /// The TransformerLens weight-processing options cfg.json's <c>model_from_pretrained_kwargs</c> sets explicitly (fold_ln,
    /// center_writing_weights, center_unembed, fold_value_biases, refactor_factored_attn_matrices) — what the training model was
    /// loaded with — as <c>name=true|false</c> pairs in TransformerLens's order, comma-separated (a string, so configs compare by
    /// value); empty when it sets none. Options it leaves out are not here: their default depends on the SAELens version.
    /// See <see cref="TrainingProcessingOptions"/>.
    /// </summary>
    public string TrainingProcessing { get; init; } = "";

    /// <summary>
    /// A Matryoshka SAE's level widths, comma-separated and ending at d_sae (a string, so configs compare by value): from
    /// <c>matryoshka_widths</c> (a training checkpoint's field, or Loupe's record under <c>metadata</c> of a finished one,
    /// which SAELens saves as JumpReLU); empty when the file names none.
    /// </summary>
    public string MatryoshkaWidths { get; init; } = "";

    /// <summary><see cref="MatryoshkaWidths"/> as numbers (empty when none).</summary>
    public int[] MatryoshkaLevels() =>
        [.. MatryoshkaWidths.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(w => int.Parse(w, System.Globalization.CultureInfo.InvariantCulture))];

    /// <summary><see cref="TrainingProcessing"/> as option → on.</summary>
    public IReadOnlyDictionary<string, bool> TrainingProcessingOptions() =>
        TrainingProcessing.Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(pair => pair.Split('='))
            .Where(kv => kv.Length == 2 && bool.TryParse(kv[1], out _))
            .ToDictionary(kv => kv[0], kv => bool.Parse(kv[1]), StringComparer.Ordinal);
}

/// <summary>Reads and writes SAELens folders (cfg.json + sae_weights.safetensors).</summary>
public static partial class SaeLensFormat
{
    public const string ConfigFile = "cfg.json";
    public const string WeightsFile = "sae_weights.safetensors";
    /// <summary>Written by SAELens ≥ 6 training checkpoints: the input scaling factor not yet folded into the weights.</summary>
    public const string ActivationScalerFile = "activation_scaler.json";

    static readonly string[] s_dtypes = ["float32", "float16", "bfloat16", "float64"];

    /// <summary>
    /// A config for <paramref name="dict"/>: shape, architecture and k from the dictionary, hook and model fields from
    /// <paramref name="template"/>. The dictionary is a transcoder when it has a skip connection, d_out ≠ d_in, or the
    /// template names <see cref="SaeLensConfig.HookNameOut"/>.
    /// </summary>
    /// <param name="dict">The dictionary.</param>
    /// <param name="template">Hook and model fields; its shape and architecture fields are ignored.</param>
    /// <param name="trainingCheckpoint">BatchTopK only: name it "batchtopk" (resumable) rather than SAELens's inference form "jumprelu".</param>
    /// <exception cref="ArgumentException">The activation has no SAELens form.</exception>
    public static SaeLensConfig ConfigFor(SparseDictionary dict, SaeLensConfig? template = null, bool trainingCheckpoint = false)
    {
        ArgumentNullException.ThrowIfNull(dict);
        var s = dict.Shape;
        var t = template ?? new SaeLensConfig();
        bool transcoder = s.Skip || s.DIn != s.DOut || t.HookNameOut.Length > 0;
        string act = dict.Activation switch
        {
            ReluActivation => "standard",
            JumpReluActivation => "jumprelu",
            TopKActivation => "topk",
            MatryoshkaBatchTopKActivation when trainingCheckpoint => "matryoshka_batchtopk",
            BatchTopKActivation => trainingCheckpoint ? "batchtopk" : "jumprelu",
            _ => throw new ArgumentException($"activation {dict.Activation.GetType().Name} has no SAELens form", nameof(dict)),
        };
        string arch = !transcoder ? act : (act == "standard" ? "" : act + "_") + (s.Skip ? "skip_transcoder" : "transcoder");
        int k = dict.Activation switch
        {
            TopKActivation tk => tk.K,
            BatchTopKActivation b when trainingCheckpoint => b.K,
            _ => 0,
        };
        return t with
        {
            Architecture = arch, DIn = s.DIn, DSae = s.DSae, DOut = s.DOut, ApplyBDecToInput = s.ApplyBDecToInput,
            Dtype = "float32", NormalizeActivations = "none", K = k,
            MatryoshkaWidths = dict.Activation is MatryoshkaBatchTopKActivation m ? string.Join(",", m.Widths) : t.MatryoshkaWidths,
        };
    }

    /// <summary>
    /// Writes <paramref name="folder"/>/sae_weights.safetensors then cfg.json, each atomically (temp file + rename).
    /// Everything is validated before either file is touched.
    /// </summary>
    /// <param name="folder">Created if missing.</param>
    /// <param name="dict">The dictionary.</param>
    /// <param name="template">Hook and model fields (see <see cref="ConfigFor"/>).</param>
    /// <param name="trainingCheckpoint">
    /// BatchTopK only. False (default): SAELens's inference form, architecture "jumprelu" with θ = max(threshold, 0) for
    /// every feature, which SAELens loads and which encodes identically. True: architecture "batchtopk" with k and the
    /// scalar "topk_threshold", as SAELens's training checkpoints, so Loupe loads it back as BatchTopK.
    /// </param>
    /// <exception cref="ArgumentException">
    /// A parameter is NaN or infinite (the message names the tensor), or a transcoder applies b_dec to its input.
    /// </exception>
    /// <exception cref="IOException">A file cannot be written (the previous file at that path is kept).</exception>
    /// <exception cref="InputError">The folder, or a file to write in it, exists as something other than a folder / regular file.</exception>
    public static void Save(string folder, SparseDictionary dict, SaeLensConfig? template = null, bool trainingCheckpoint = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        var cfg = ConfigFor(dict, template, trainingCheckpoint);
        var s = dict.Shape;
        bool transcoder = cfg.Architecture.EndsWith("transcoder", StringComparison.Ordinal);
        if (transcoder && s.ApplyBDecToInput)
            throw new ArgumentException("SAELens transcoders never subtract b_dec from the input; this dictionary has ApplyBDecToInput = true", nameof(dict));

        // 1. Tensors, SAELens's names and orientations.
        var tensors = new List<(string Name, int[] Shape, ReadOnlyMemory<float> Data)>
        {
            ("W_enc", [s.DIn, s.DSae], dict.P.WEnc),
            ("b_enc", [s.DSae], dict.P.BEnc),
            ("W_dec", [s.DSae, s.DOut], dict.P.WDec),
            ("b_dec", [s.DOut], dict.P.BDec),
        };
        if (s.Skip) tensors.Add(("W_skip", [s.DOut, s.DIn], Transpose(dict.P.WSkip, s.DIn, s.DOut)));
        switch (dict.Activation)
        {
            case JumpReluActivation:
                tensors.Add(("threshold", [s.DSae], dict.P.LogThreshold.Select(MathF.Exp).ToArray()));
                break;
            case BatchTopKActivation when trainingCheckpoint:
                tensors.Add(("topk_threshold", [], new[] { dict.P.Threshold[0] }));
                break;
            case BatchTopKActivation:
                // Inference: acts = pre·1[pre > t]·1[pre > 0] = JumpReLU with θ = max(t, 0).
                tensors.Add(("threshold", [s.DSae], Enumerable.Repeat(Math.Max(dict.P.Threshold[0], 0f), s.DSae).ToArray()));
                break;
        }
        foreach (var (name, _, data) in tensors)
        {
            int bad = IndexOfNonFinite(data.Span);
            if (bad >= 0) throw new ArgumentException($"cannot save: tensor '{name}'[{bad}] is {data.Span[bad]}", nameof(dict));
        }

        // 2. cfg.json: flat fields (pre-6 layout, which SAELens 6 upgrades) plus the 6.x "metadata" object.
        var json = new JsonObject
        {
            ["architecture"] = cfg.Architecture,
            ["d_in"] = cfg.DIn,
            ["d_sae"] = cfg.DSae,
        };
        if (transcoder) json["d_out"] = cfg.DOut;
        json["dtype"] = cfg.Dtype;
        json["device"] = cfg.Device;
        json["apply_b_dec_to_input"] = cfg.ApplyBDecToInput;
        json["normalize_activations"] = cfg.NormalizeActivations;
        json["reshape_activations"] = cfg.ReshapeActivations;
        if (cfg.K > 0)
        {
            json["k"] = cfg.K;
            json["activation_fn_kwargs"] = new JsonObject { ["k"] = cfg.K };
            json["rescale_acts_by_decoder_norm"] = false;
        }
        // the levels (ConfigFor takes the activation's, else those the template carried in: a loaded finished Matryoshka SAE saved again)
        int[] widths = cfg.MatryoshkaLevels() is { Length: > 1 } levels && levels[^1] == s.DSae ? levels : [];
        JsonArray Widths() => new([.. widths.Select(w => (JsonNode)w)]);
        if (widths.Length > 0 && trainingCheckpoint) json["matryoshka_widths"] = Widths();
        JsonObject Meta()
        {
            var m = new JsonObject
            {
                ["model_name"] = cfg.ModelName,
                ["hook_name"] = cfg.HookName,
                ["hook_layer"] = cfg.HookLayer,
                ["hook_head_index"] = null,
            };
            if (cfg.HookNameOut.Length > 0) m["hook_name_out"] = cfg.HookNameOut;
            m["context_size"] = cfg.ContextSize;
            m["prepend_bos"] = cfg.PrependBos;
            // What the hook names mean (SAELens ignores keys it does not know).
            m[HookNames.SemanticsKey] = HookNames.Semantics;
            return m;
        }
        foreach (var (key, value) in Meta()) json[key] = value?.DeepClone();
        var metadata = Meta();
        // A finished Matryoshka SAE is a JumpReLU SAE to SAELens; its levels stay on record there (SAEMetadata keeps extra keys).
        if (widths.Length > 0 && !trainingCheckpoint) metadata["matryoshka_widths"] = Widths();
        json["metadata"] = metadata;
        string text = json.ToJsonString(new JsonSerializerOptions { WriteIndented = true });

        // 3. Weights first, then the config that describes them.
        OutputFiles.EnsureFolder(folder);
        OutputFiles.EnsureReplaceable(Path.Combine(folder, WeightsFile));
        OutputFiles.EnsureReplaceable(Path.Combine(folder, ConfigFile));
        SafeTensorsWriter.Write(Path.Combine(folder, WeightsFile), tensors);
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFile), text);
    }

    /// <summary>The processing options <c>model_from_pretrained_kwargs</c> sets to true or false (others, and other keys, are left out), as <see cref="SaeLensConfig.TrainingProcessing"/> writes them.</summary>
    static string TrainingProcessingOf(JsonNode? kwargs)
    {
        if (kwargs is not JsonObject o) return "";
        var set = new List<string>();
        foreach (var option in Loupe.Models.Processing.WeightProcessing.OptionNames)
            if (o[option] is JsonValue v && v.TryGetValue(out bool on)) set.Add(on ? option + "=true" : option + "=false");
        return string.Join(',', set);
    }

    /// <summary>Loads a SAELens folder into a dictionary that takes raw activations.</summary>
    /// <param name="folder">The folder holding cfg.json and sae_weights.safetensors.</param>
    /// <param name="normScalingFactor">
    /// For normalize_activations "expected_average_only_in": the factor c the SAE's inputs were multiplied by in
    /// training (SAELens's norm_scaling_factor, √d_in / E‖x‖). It is folded into the weights (W_enc·c, W_dec/c, b_dec/c).
    /// When null, it is read from activation_scaler.json in the folder (SAELens ≥ 6 checkpoints).
    /// </param>
    /// <exception cref="FileNotFoundException">cfg.json or sae_weights.safetensors is missing.</exception>
    /// <exception cref="InputError">
    /// cfg.json is not a JSON object (or repeats a key); a required field is missing, has the wrong JSON type or is out
    /// of range (d_in, d_sae, d_out positive, each weight matrix small enough for one array, k in [1, d_sae]); the
    /// architecture, dtype, normalisation, reshape or hook name is unknown or unsupported (layer_norm,
    /// constant_norm_rescale, expected_average_only_in without a factor, single-head dictionaries); the weights file is
    /// malformed; a tensor is missing, unexpected, has the wrong shape or holds NaN/±∞. Messages name the file and
    /// the field or tensor. Every shape is checked against the weights file before anything is allocated.
    /// </exception>
    /// <exception cref="ArgumentException"><paramref name="normScalingFactor"/> is given but the config needs none.</exception>
    public static (SparseDictionary Dictionary, SaeLensConfig Config) Load(string folder, float? normScalingFactor = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string cfgPath = Path.GetFullPath(Path.Combine(folder, ConfigFile)), wPath = Path.GetFullPath(Path.Combine(folder, WeightsFile));
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"SAELens config not found: {cfgPath}", cfgPath);
        if (!File.Exists(wPath)) throw new FileNotFoundException($"SAELens weights not found: {wPath}", wPath);

        // 1. cfg.json.
        JsonObject root = ReadJsonObject(cfgPath);
        var meta = root["metadata"] as JsonObject ?? root["meta"] as JsonObject;
        JsonNode? Field(string name) => root[name] ?? meta?[name];
        T Get<T>(string name, T fallback, bool required = false)
        {
            var node = Field(name);
            if (node is null)
                return required ? throw new InputError($"{cfgPath}: required field '{name}' is missing") : fallback;
            string expected = typeof(T) == typeof(string) ? "a string" : typeof(T) == typeof(bool) ? "true or false" : typeof(T).Name;
            if (node is not JsonValue)
                throw InputError.Expected(cfgPath, $"field '{name}'", expected, $"a JSON {node.GetValueKind().ToString().ToLowerInvariant()}");
            try { return node.GetValue<T>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException)
            { throw new InputError($"{cfgPath}: field '{name}': expected {expected}, found {Shorten(node.ToJsonString())}", e); }
        }
        int Int(string name, int fallback, long min, long max, bool required = false)
        {
            var node = Field(name);
            if (node is null)
                return required ? throw new InputError($"{cfgPath}: required field '{name}' is missing") : fallback;
            return Check.InRange(IntegerField(node, name, cfgPath), min, max, cfgPath, $"field '{name}'");
        }

        HookNames.RequireKnownSemantics(Get<string?>(HookNames.SemanticsKey, null), cfgPath);
        string arch = Get("architecture", "standard");
        if (arch == "relu") arch = "standard";
        var (actName, transcoderArch, skip) = ParseArchitecture(arch, cfgPath);
        // Before SAELens 6 a TopK SAE was architecture "standard" with activation_fn "topk" (activation_fn_str earlier).
        string activationFn = Get("activation_fn", Get("activation_fn_str", "relu")) ?? "relu";
        if (actName == "standard" && activationFn == "topk") actName = "topk";
        else if (actName == "standard" && activationFn != "relu")
            throw new InputError($"{cfgPath}: field 'activation_fn' is '{activationFn}'; a standard SAE must use relu (or topk, before SAELens 6)");
        int dIn = Int("d_in", 0, 1, int.MaxValue, required: true), dSae = Int("d_sae", 0, 1, int.MaxValue, required: true);
        int dOut = Int("d_out", dIn, 1, int.MaxValue);
        bool transcoder = transcoderArch || dOut != dIn;
        // Each matrix must fit one array; the weights file must then back these sizes (checked below, before allocating).
        Check.Product(cfgPath, "d_in × d_sae (W_enc)", Check.MaxArrayElements, dIn, dSae);
        Check.Product(cfgPath, "d_sae × d_out (W_dec)", Check.MaxArrayElements, dSae, dOut);
        if (skip) Check.Product(cfgPath, "d_in × d_out (W_skip)", Check.MaxArrayElements, dIn, dOut);

        string dtype = Get("dtype", "float32");
        if (dtype.StartsWith("torch.", StringComparison.Ordinal)) dtype = dtype[6..];
        if (!s_dtypes.Contains(dtype))
            throw new InputError($"{cfgPath}: field 'dtype' is '{dtype}'; expected one of {string.Join(", ", s_dtypes)}");

        string norm = NormalizationOf(Field("normalize_activations"), cfgPath);
        if (norm != "expected_average_only_in" && normScalingFactor is not null)
            throw new ArgumentException($"{cfgPath}: normalize_activations is '{norm}', so there is no scaling factor to fold; do not pass one", nameof(normScalingFactor));
        float? foldFactor = null;
        if (norm == "expected_average_only_in")
        {
            float c = normScalingFactor ?? ScalingFactorFromScaler(folder, cfgPath);
            if (!(c > 0) || !float.IsFinite(c))
                throw InputError.Expected(cfgPath, "the norm scaling factor", "a finite number > 0", c);
            foldFactor = c;
        }
        string reshape = Get("reshape_activations", "none");
        if (reshape is not ("none" or "hook_z"))
            throw new InputError($"{cfgPath}: field 'reshape_activations' is '{reshape}'; expected none or hook_z");

        bool applyBDec = Get("apply_b_dec_to_input", !transcoder);
        if (applyBDec && transcoder)
            throw new InputError($"{cfgPath}: apply_b_dec_to_input is true for a transcoder (architecture '{arch}', d_in {dIn}, d_out {dOut}); SAELens forbids it");

        int k = 0;
        if (actName is "topk" or "batchtopk" or "matryoshka_batchtopk")
        {
            long kk = Field("k") is JsonNode kf ? IntegerField(kf, "k", cfgPath) : 0;
            string kName = "k";
            if (Field("activation_fn_kwargs") is JsonObject kw && kw["k"] is JsonNode kn) (kk, kName) = (IntegerField(kn, "activation_fn_kwargs.k", cfgPath), "activation_fn_kwargs.k");
            if (kk <= 0) throw new InputError($"{cfgPath}: architecture '{arch}' needs a positive field 'k' (or activation_fn_kwargs.k)");
            k = Check.InRange(kk, 1, dSae, cfgPath, $"field '{kName}' (at most d_sae)");
        }
        SaeActivation act = actName switch
        {
            "standard" => new ReluActivation(),
            "jumprelu" or "gated" => new JumpReluActivation(),   // a gated SAE is read as the JumpReLU it is (GatedSae)
            "topk" => new TopKActivation(k),
            "matryoshka_batchtopk" => new MatryoshkaBatchTopKActivation(k, MatryoshkaWidthsOf(Field("matryoshka_widths"), dSae, cfgPath)),
            _ => new BatchTopKActivation(k),
        };
        string hookName = CheckHookName(Get("hook_name", Get("hook_point", "")), Field("hook_name") is null && Field("hook_point") is not null ? "hook_point" : "hook_name", cfgPath);   // hook_point: SAELens < 6 name
        // A single-head SAE reads one head of hook_z; splicing it over every head would be silently wrong.
        if (Field("hook_head_index") is JsonNode head && head.GetValueKind() != JsonValueKind.Null)
            throw new InputError($"{cfgPath}: field 'hook_head_index' is {Shorten(head.ToJsonString())}: single-head dictionaries are not supported (Loupe applies a dictionary to the whole hook)");
        var cfg = new SaeLensConfig
        {
            Architecture = arch, DIn = dIn, DSae = dSae, DOut = dOut, Dtype = dtype,
            Device = Get("device", "cpu"), HookName = hookName,
            HookLayer = Int("hook_layer", Int("hook_point_layer", LayerOf(hookName) ?? 0, 0, MaxLayer), 0, MaxLayer),
            HookNameOut = CheckHookName(Get("hook_name_out", ""), "hook_name_out", cfgPath), ApplyBDecToInput = applyBDec, NormalizeActivations = "none",
            ReshapeActivations = reshape, ModelName = Get("model_name", ""), ContextSize = Int("context_size", 128, 1, int.MaxValue),
            PrependBos = Get("prepend_bos", true), K = k, TrainingProcessing = TrainingProcessingOf(Field("model_from_pretrained_kwargs")),
            MatryoshkaWidths = act is MatryoshkaBatchTopKActivation m ? string.Join(",", m.Widths)
                : Field("matryoshka_widths") is JsonNode levels ? string.Join(",", MatryoshkaWidthsOf(levels, dSae, cfgPath)) : "",
        };

        // 2. Tensors: every name and shape is checked against cfg.json before the dictionary is allocated, so a
        //    cfg.json declaring a huge d_sae beside a small weights file fails here, not in an allocation.
        using var file = OpenSafeTensors(wPath);
        bool gated = actName == "gated";
        var expected = new HashSet<string>(StringComparer.Ordinal) { "W_enc", "W_dec", "b_dec" };
        if (gated) expected.UnionWith(s_gatedTensors);
        else expected.Add("b_enc");
        if (skip) expected.Add("W_skip");
        string? thresholdName = null;
        if (gated) { }
        else if (act is JumpReluActivation)
            thresholdName = file.Contains("threshold") ? "threshold" : file.Contains("log_threshold") ? "log_threshold" : null;
        else if (act is BatchTopKActivation)
            thresholdName = file.Contains("topk_threshold") ? "topk_threshold" : file.Contains("threshold") ? "threshold" : null;
        string Have() => Shorten(string.Join(", ", file.Names));
        if (act is JumpReluActivation && !gated && thresholdName is null)
            throw new InputError($"{wPath}: tensor 'threshold' is missing (have {Have()})");
        if (thresholdName is not null) expected.Add(thresholdName);
        if (file.Contains("scaling_factor")) expected.Add("scaling_factor");
        var unexpected = file.Names.Where(n => !expected.Contains(n)).ToList();
        if (unexpected.Count > 0)
            throw new InputError($"{wPath}: unexpected tensor(s) {Shorten(string.Join(", ", unexpected.Select(u => $"'{u}'")))} for architecture '{arch}' (expected {string.Join(", ", expected)})");

        var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal) { ["W_enc"] = [dIn, dSae], ["W_dec"] = [dSae, dOut], ["b_dec"] = [dOut] };
        foreach (var name in gated ? s_gatedTensors : ["b_enc"]) shapes[name] = [dSae];
        if (skip) shapes["W_skip"] = [dOut, dIn];
        if (thresholdName is "threshold" or "log_threshold" && act is JumpReluActivation) shapes[thresholdName] = [dSae];
        else if (thresholdName is not null)
        {
            long[] shape = file.GetInfo(thresholdName).Shape;          // topk_threshold is a 0-d buffer; Loupe wrote [1]
            if (shape.Length > 1 || shape.Length == 1 && shape[0] != 1)
                throw new InputError($"{wPath}: tensor '{thresholdName}' has shape [{string.Join(", ", shape)}]; expected a scalar ([] or [1])");
            shapes[thresholdName] = shape;
        }
        if (file.Contains("scaling_factor")) shapes["scaling_factor"] = [dSae];
        foreach (var (name, shape) in shapes)
        {
            if (!file.TryGetInfo(name, out var info)) throw new InputError($"{wPath}: tensor '{name}' is missing (have {Have()})");
            if (!info.Shape.SequenceEqual(shape))
                throw new InputError($"{wPath}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}]; cfg.json (d_in {dIn}, d_sae {dSae}, d_out {dOut}) implies [{string.Join(", ", shape)}]");
            if (!info.DType.IsFloatingPoint())
                throw new InputError($"{wPath}: tensor '{name}' has dtype {info.DType}; expected F32, F16, BF16 or F64");
        }

        var dict = new SparseDictionary(new SaeShape(dIn, dSae, dOut, applyBDec, skip), act);
        void Read(string name, Span<float> into)
        {
            try { file.GetFloat32(name).Span.CopyTo(into); }
            catch (Exception e) when (e is InvalidDataException or NotSupportedException or KeyNotFoundException)
            { throw new InputError($"{wPath}: tensor '{name}': {e.Message}", e); }
            ThrowIfNotFinite(into, $"{wPath}: tensor '{name}'");
        }
        Read("W_enc", dict.P.WEnc);
        Read("W_dec", dict.P.WDec);
        Read("b_dec", dict.P.BDec);
        if (gated)
        {
            float[] rMag = new float[dSae], bGate = new float[dSae], bMag = new float[dSae];
            Read("r_mag", rMag);
            Read("b_gate", bGate);
            Read("b_mag", bMag);
            GatedSae.FoldIntoJumpRelu(dict.P, rMag, bGate, bMag, wPath);
        }
        else Read("b_enc", dict.P.BEnc);
        if (skip)
        {
            var wSkip = new float[dict.P.WSkip.Length];               // [d_out, d_in] as SAELens stores it
            Read("W_skip", wSkip);
            Transpose(wSkip, dOut, dIn).CopyTo(dict.P.WSkip, 0);
        }
        if (thresholdName == "threshold" && act is JumpReluActivation)
        {
            var theta = new float[dSae];
            Read("threshold", theta);
            for (int i = 0; i < dSae; i++) dict.P.LogThreshold[i] = LogThreshold(theta[i]);
        }
        else if (thresholdName == "log_threshold")
        {
            Read("log_threshold", dict.P.LogThreshold);                 // SAELens < 6 JumpReLU training checkpoints
            ThrowIfLogThresholdTooLarge(dict.P.LogThreshold, $"{wPath}: tensor 'log_threshold'");
        }
        else if (thresholdName is not null)
            Read(thresholdName, dict.P.Threshold);
        if (file.Contains("scaling_factor"))
        {
            var sf = new float[dSae];
            Read("scaling_factor", sf);
            if (sf.Any(v => v != 1f))
                throw new InputError($"{wPath}: tensor 'scaling_factor' is not all ones; SAELens's finetuning scaling factor is not supported");
        }

        // 3. Fold run-time rescalings into the weights.
        if (actName is "topk" or "batchtopk" or "matryoshka_batchtopk" && Get("rescale_acts_by_decoder_norm", false)) FoldDecoderNorms(dict);
        if (foldFactor is float factor) dict.FoldInputScaling(factor);
        return (dict, cfg);
    }

    /// <summary>
    /// log θ for the JumpReLU activation, chosen so that exp(log θ) reproduces θ exactly when some float does
    /// (otherwise the nearest). θ ≤ 0 gives −∞ (θ = 0 fires for pre &gt; 0, as SAELens's threshold.relu() and the
    /// Gemma Scope reference's relu(pre)·1[pre &gt; θ] do for any negative θ).
    /// </summary>
    internal static float LogThreshold(float theta)
    {
        if (float.IsNaN(theta)) throw new ArgumentOutOfRangeException(nameof(theta), "threshold is NaN");
        if (!(theta > 0)) return float.NegativeInfinity;
        if (float.IsPositiveInfinity(theta)) return float.PositiveInfinity;
        float l = MathF.Log(theta), best = l;
        float bestErr = MathF.Abs(MathF.Exp(l) - theta);
        if (bestErr == 0) return l;
        // exp is monotone: walk a few ulps either side of the rounded log for an exact (or closer) pre-image.
        float up = l, down = l;
        for (int i = 0; i < 8; i++)
        {
            up = MathF.BitIncrement(up);
            down = MathF.BitDecrement(down);
            foreach (float c in (ReadOnlySpan<float>)[up, down])
            {
                float err = MathF.Abs(MathF.Exp(c) - theta);
                if (err == 0) return c;
                if (err < bestErr) (best, bestErr) = (c, err);
            }
        }
        return best;
    }

    /// <summary>The layer of a TransformerLens hook name ("blocks.12.hook_resid_post" → 12), or null.</summary>
    /// <remarks>An index too large for an int gives null, like a name without one.</remarks>
    public static int? LayerOf(string hookName) =>
        BlockIndex().Match(hookName) is { Success: true } m
        && int.TryParse(m.Groups[1].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int layer)
            ? layer : null;

    [GeneratedRegex(@"^blocks\.([0-9]+)\.")]
    private static partial Regex BlockIndex();

    /// <summary>
    /// The largest weight magnitude a dictionary file may hold. Real SAE and transcoder weights are O(1) (O(100)
    /// with a folded normalisation); a corrupt value near float's limit would overflow encoder or decoder products
    /// to ∞ and give silently wrong activations, so it is refused at load instead.
    /// </summary>
    internal const float MaxWeightMagnitude = 1e10f;

    /// <summary>The largest JumpReLU log threshold: θ = e^x beyond <see cref="MaxWeightMagnitude"/> is corrupt (e^89 is already ∞ in float).</summary>
    internal static readonly float MaxLogThreshold = MathF.Log(MaxWeightMagnitude);

    /// <summary>Throws an <see cref="InputError"/> naming the first log threshold above <see cref="MaxLogThreshold"/> (−∞, θ = 0, is allowed).</summary>
    internal static void ThrowIfLogThresholdTooLarge(ReadOnlySpan<float> logThreshold, string what)
    {
        for (int i = 0; i < logThreshold.Length; i++)
            if (logThreshold[i] > MaxLogThreshold)
                throw new InputError($"{what}: element {i} is {InputError.Show(logThreshold[i])}; expected a log threshold of at most {MaxLogThreshold:0.##} (θ ≤ {MaxWeightMagnitude:0e0}): the file is corrupt");
    }

    /// <summary>Throws an <see cref="InputError"/> naming <paramref name="what"/> and the first NaN, infinite or implausibly large value.</summary>
    internal static void ThrowIfNotFinite(ReadOnlySpan<float> data, string what)
    {
        int bad = IndexOfNonFinite(data);
        if (bad >= 0)
            throw new InputError(float.IsFinite(data[bad])
                ? $"{what}: element {bad} is {InputError.Show(data[bad])}; expected weights of magnitude at most {MaxWeightMagnitude:0e0} (larger ones overflow when used: the file is corrupt)"
                : $"{what}: element {bad} is {InputError.Show(data[bad])}; weights must be finite");
    }

    /// <summary>Largest cfg.json or activation_scaler.json read (real ones are a few kilobytes).</summary>
    internal const long MaxJsonBytes = 16 << 20;

    /// <summary>Highest hook layer accepted (far beyond any model, small enough to never overflow).</summary>
    const int MaxLayer = 1 << 20;

    /// <summary>Reads a small JSON object file, refusing non-objects, repeated keys and oversized files with an <see cref="InputError"/>.</summary>
    internal static JsonObject ReadJsonObject(string path)
    {
        byte[] bytes = InputFiles.ReadAllBytes(path, MaxJsonBytes);
        return JsonInput.ParseNode(bytes, path) as JsonObject ?? throw new InputError($"{path}: expected a JSON object");
    }

    /// <summary>Opens a safetensors file, reporting a malformed one as an <see cref="InputError"/> naming it.</summary>
    internal static SafeTensorsFile OpenSafeTensors(string path)
    {
        try { return SafeTensorsFile.Open(path); }
        catch (Exception e) when (e is InvalidDataException or NotSupportedException or FormatException or JsonException or KeyNotFoundException or ArgumentException)
        { throw new InputError(e.Message.Contains(path, StringComparison.Ordinal) ? e.Message : $"{path}: {e.Message}", e); }
    }

    // A hook name as TransformerLens writes them (blocks.3.hook_resid_post, hook_embed, blocks.0.attn.hook_z): ASCII
    // letters, digits, '_' and '.', at most 200 characters; empty means unknown.
    internal static string CheckHookName(string name, string field, string cfgPath)
    {
        if (name.Length == 0) return name;
        if (name.Length > 200 || !HookNameText().IsMatch(name))
            throw InputError.Expected(cfgPath, $"field '{field}'", "a hook name such as blocks.3.hook_resid_post (letters, digits, '_' and '.')", name);
        if (BlockIndex().Match(name) is { Success: true } m && !int.TryParse(m.Groups[1].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out _))
            throw InputError.Expected(cfgPath, $"field '{field}'", "a block index that fits an int", name);
        return name;
    }

    [GeneratedRegex(@"^[A-Za-z0-9_.]+$")]
    private static partial Regex HookNameText();

    static string Shorten(string text) => text.Length > 200 ? text[..197] + "..." : text;

    static int IndexOfNonFinite(ReadOnlySpan<float> data)
    {
        // NaN fails every comparison, so "not (|x| ≤ max)" catches NaN, ±∞ and huge values in one vectorized pass.
        int i = System.Numerics.Tensors.TensorPrimitives.IndexOfMaxMagnitude(data);
        if (i < 0) return -1;
        if (float.IsNaN(data[i]) || !(MathF.Abs(data[i]) <= MaxWeightMagnitude))
        {
            for (int j = 0; j < data.Length; j++) if (float.IsNaN(data[j])) return j; // report the first NaN, wherever it is
            return i;
        }
        return -1;
    }

    // A gated SAE's own tensors beside W_enc, W_dec and b_dec (it has no b_enc).
    static readonly string[] s_gatedTensors = ["b_gate", "b_mag", "r_mag"];

    // architecture → (activation, transcoder, skip)
    static readonly Dictionary<string, (string Activation, bool Transcoder, bool Skip)> s_architectures = new(StringComparer.Ordinal)
    {
        ["standard"] = ("standard", false, false),
        ["jumprelu"] = ("jumprelu", false, false),
        ["gated"] = ("gated", false, false),
        ["topk"] = ("topk", false, false),
        ["batchtopk"] = ("batchtopk", false, false),
        ["transcoder"] = ("standard", true, false),
        ["skip_transcoder"] = ("standard", true, true),
        ["jumprelu_transcoder"] = ("jumprelu", true, false),
        ["jumprelu_skip_transcoder"] = ("jumprelu", true, true),
        ["topk_transcoder"] = ("topk", true, false),
        ["topk_skip_transcoder"] = ("topk", true, true),
        ["batchtopk_transcoder"] = ("batchtopk", true, false),
        ["batchtopk_skip_transcoder"] = ("batchtopk", true, true),
        ["matryoshka_batchtopk"] = ("matryoshka_batchtopk", false, false),
        ["matryoshka_batchtopk_transcoder"] = ("matryoshka_batchtopk", true, false),
        ["matryoshka_batchtopk_skip_transcoder"] = ("matryoshka_batchtopk", true, true),
    };

    // matryoshka_widths: a JSON array of integers, strictly increasing, within d_sae (d_sae appended when missing, as SAELens does)
    static int[] MatryoshkaWidthsOf(JsonNode? node, int dSae, string cfgPath)
    {
        if (node is not JsonArray array)
            throw InputError.Expected(cfgPath, "field 'matryoshka_widths'", "an array of level widths (architecture 'matryoshka_batchtopk')",
                node is null ? "nothing" : Shorten(node.ToJsonString()));
        var widths = new List<long>(array.Count);
        foreach (var item in array)
            widths.Add(item is null ? throw InputError.Expected(cfgPath, "field 'matryoshka_widths'", "integers", "null") : IntegerField(item, "matryoshka_widths", cfgPath));
        return MatryoshkaBatchTopKActivation.CheckWidths(widths, dSae, cfgPath, "field 'matryoshka_widths'");
    }

    static (string Activation, bool Transcoder, bool Skip) ParseArchitecture(string arch, string cfgPath) =>
        s_architectures.TryGetValue(arch, out var a) ? a
            : throw new InputError($"{cfgPath}: unknown architecture '{arch}'; expected one of {string.Join(", ", s_architectures.Keys)}");

    static string NormalizationOf(JsonNode? node, string cfgPath)
    {
        if (node is null) return "none";
        string? value = node.GetValueKind() switch
        {
            JsonValueKind.False => "none",                          // pre-6 booleans: true meant expected_average_only_in
            JsonValueKind.True => "expected_average_only_in",
            JsonValueKind.String => node.GetValue<string>(),
            _ => null,
        };
        switch (value)
        {
            case "none" or "expected_average_only_in": return value;
            case "layer_norm" or "constant_norm_rescale":
                throw new InputError($"{cfgPath}: field 'normalize_activations' is '{value}': SAELens normalises every input at run time " +
                    "and un-normalises the output; Loupe's dictionaries take raw activations and do not, so this SAE is not supported");
            default:
                throw new InputError($"{cfgPath}: field 'normalize_activations' is {node.ToJsonString()}; expected none, expected_average_only_in, layer_norm or constant_norm_rescale");
        }
    }

    // An integer-valued JSON number (2 and 2.0 alike), as a long; anything else is named.
    static long IntegerField(JsonNode node, string name, string cfgPath)
    {
        if (node.GetValueKind() == JsonValueKind.Number && node.GetValue<double>() is double d && d == Math.Floor(d) && Math.Abs(d) <= 1e15)
            return (long)d;
        throw InputError.Expected(cfgPath, $"field '{name}'", "an integer", Shorten(node.ToJsonString()));
    }

    static float ScalingFactorFromScaler(string folder, string cfgPath)
    {
        string path = Path.GetFullPath(Path.Combine(folder, ActivationScalerFile));
        string hint = $"{cfgPath}: normalize_activations is 'expected_average_only_in': the weights expect inputs multiplied by a scaling factor " +
            "(√d_in / mean ‖x‖) that is not folded in";
        if (!File.Exists(path))
            throw new InputError($"{hint}, and there is no {ActivationScalerFile} beside it; pass the factor (SaeLensFormat.Load(folder, normScalingFactor: c))");
        JsonObject scaler = ReadJsonObject(path);
        if (scaler["has_whitening"] is JsonNode w && w.GetValueKind() == JsonValueKind.True)
            throw new InputError($"{path}: has_whitening is true; SAELens's activation whitening is not supported");
        if (scaler["scaling_factor"] is not JsonNode sf || sf.GetValueKind() != JsonValueKind.Number)
            throw new InputError($"{hint}, and {path} has no numeric 'scaling_factor'; pass the factor (SaeLensFormat.Load(folder, normScalingFactor: c))");
        return (float)sf.GetValue<double>();
    }

    // SAELens's _fold_norm_topk: with rescale_acts_by_decoder_norm, TopK ranks pre·‖W_dec[i]‖ and decodes acts/‖W_dec[i]‖.
    // Scaling W_enc's column i and b_enc[i] by n_i = ‖W_dec[i]‖ and W_dec's row i by 1/n_i gives the same acts and output.
    static void FoldDecoderNorms(SparseDictionary dict)
    {
        int dIn = dict.Shape.DIn, dSae = dict.Shape.DSae, dOut = dict.Shape.DOut;
        for (int i = 0; i < dSae; i++)
        {
            var row = dict.P.WDec.AsSpan(i * dOut, dOut);
            float n = MathF.Max(System.Numerics.Tensors.TensorPrimitives.Norm(row), 1e-8f);
            System.Numerics.Tensors.TensorPrimitives.Divide(row, n, row);
            dict.P.BEnc[i] *= n;
            for (int j = 0; j < dIn; j++) dict.P.WEnc[j * dSae + i] *= n;
        }
    }

    // [rows, cols] → [cols, rows]
    static float[] Transpose(ReadOnlySpan<float> src, int rows, int cols)
    {
        var dst = new float[src.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
        return dst;
    }
}
