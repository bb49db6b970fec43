// Crosscoders as their authors save them, and as Loupe saves them.
//
// 1. saprmarks/dictionary_learning (the science-of-finetuning crosscoders, Minder et al. 2025), dictionary.py:
//      encoder.weight [L, d, F]  encoder.bias [F]  decoder.weight [L, F, d]  decoder.bias [L, d]
//      f = ReLU(Σ_l x_l·W_enc^l + b_enc); x̂_l = f·W_dec^l + b_dec^l                       (CrossCoder)
//    BatchTopKCrossCoder adds k [], threshold [] and code_normalization_id []; its inference encode keeps f_i where
//    f_i·n_i > threshold (n_i per CodeNormalization: CROSSCODER = 1 → Σ_l ‖W_dec^l[i]‖, SAE = 2 → ‖[W_dec^1[i] | …]‖,
//    MIXED = 3 → α_sae·SAE + α_cc·CROSSCODER, NONE = 4 → 1; DECOUPLED = 5, one code per layer, is refused).
//    With encoder_layers the encoder reads only those layers (its weight has one block per listed layer).
//    Saved as a trainer folder (ae.pt = torch.save(state_dict) + config.json whose trainer.dict_class names the class) or
//    by the hub mixin (model.safetensors + config.json holding the constructor's arguments: activation_dim, dict_size,
//    num_layers or num_encoder_layers, k, code_normalization, …). torch.compile's "_orig_mod." prefix is dropped, as
//    CrossCoder.from_pretrained drops it.
// 2. ckkissane/crosscoder-model-diff-replication (Kissane et al. 2024, the open replication of Anthropic's model diffing):
//      W_enc [2, d, F]  b_enc [F]  W_dec [F, 2, d]  b_dec [2, d];  same f and x̂
//    saved as {N}.pt beside {N}_cfg.json (d_in, dict_size, hook_point, model_name, …). Its training normalised each
//    model's activations by a factor it did not save: pass them as input scales.
// 3. Loupe: the hub-mixin layout of (1) (config.json holds only the constructor's arguments), with a "loupe" JSON object in
//    the safetensors metadata naming the sources, input scales and provenance.
// Sources: the "loupe" metadata, else the hook the config names (submodule_name; dictionary_learning's crosscoder script reads
// layer_{layer}_out, the block's output = hook_resid_post; Kissane's hook_point), one per model, labelled A, B, …; the
// caller's models and hooks override them.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>What the caller says about a crosscoder's sources, over what its files say.</summary>
public sealed record CrosscoderSourceOptions
{
    /// <summary>One label per source, or one label for all (a one-model, several-layer crosscoder); null: the file's or A, B, ….</summary>
    public IReadOnlyList<string>? Models { get; init; }

    /// <summary>One hook per source, or one hook for all (model diffing at one hook); null: the file's.</summary>
    public IReadOnlyList<string>? Hooks { get; init; }

    /// <summary>One input scale per source (the factors training multiplied the activations by); null: the file's or 1.</summary>
    public IReadOnlyList<float>? InputScales { get; init; }
}

/// <summary>Reads and writes crosscoders (see the file header).</summary>
public static class CrosscoderFiles
{
    /// <summary>Loupe's (and the hub mixin's) weights file.</summary>
    public const string WeightsFile = "model.safetensors";

    /// <summary>The config beside it.</summary>
    public const string ConfigFile = "config.json";

    const string CompiledPrefix = "_orig_mod.";

    /// <summary>The safetensors metadata key of Loupe's own record (sources, input scales, provenance) in a saved crosscoder.</summary>
    public const string LoupeMetadataKey = "loupe";

    /// <summary>True when <paramref name="path"/> looks like a crosscoder (folder or weights file) in a layout Loupe reads.</summary>
    public static bool IsCrosscoder(string path)
    {
        try { return Locate(path) is not null; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InputError) { return false; }
    }

    /// <summary>The error an SAE loader gives for a crosscoder's files.</summary>
    public static InputError NotAnSae(string path) =>
        new($"{path}: a crosscoder (one dictionary over several models' or layers' activations), not an SAE; " +
            "read it with `loupe crosscoder diff` / `loupe crosscoder eval` (CrosscoderFiles.Load)");

    /// <summary>Loads the crosscoder at <paramref name="path"/>: a folder, or its weights file.</summary>
    /// <exception cref="FileNotFoundException">Nothing at the path.</exception>
    /// <exception cref="InputError">Not a crosscoder layout Loupe reads, or tensors or config fields that are missing, misshapen,
    /// not finite or contradict each other; the message names the file and the field or tensor.</exception>
    /// <param name="path">The folder, or its weights file.</param>
    /// <param name="options">Labels, hooks and input scales over the files'.</param>
    /// <param name="plan">Told the shape and the memory the crosscoder takes, before it is allocated.</param>
    public static Crosscoder Load(string path, CrosscoderSourceOptions? options = null, Action<string>? plan = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new CrosscoderSourceOptions();
        path = Path.GetFullPath(path);
        if (!File.Exists(path) && !Directory.Exists(path)) throw new FileNotFoundException($"crosscoder not found: {path}", path);
        var (weights, config, layout) = Locate(path)
            ?? throw new InputError($"{path}: no crosscoder found: Loupe reads dictionary_learning's (ae.pt + config.json, or model.safetensors + config.json) " +
                                    "and Kissane's ({N}.pt + {N}_cfg.json) layouts");
        JsonObject? cfg = config is null ? null : SaeLensFormat.ReadJsonObject(config);
        using var file = SaeLensFormat.OpenSafeTensors(weights);
        JsonObject? loupe = null;
        if (file.Metadata.TryGetValue(LoupeMetadataKey, out var text))
            loupe = JsonInput.ParseNode(System.Text.Encoding.UTF8.GetBytes(text), $"{weights} (metadata '{LoupeMetadataKey}')") as JsonObject
                ?? throw new InputError($"{weights}: metadata '{LoupeMetadataKey}' is not a JSON object");
        return layout == Layout.Kissane ? ReadKissane(file, weights, cfg, config, loupe, options, plan) : ReadDictionaryLearning(file, weights, cfg, config, loupe, layout, options, plan);
    }

    enum Layout { TrainerFolder, Hub, Kissane }

    // Which files hold the crosscoder at path, or null when none of the layouts is there.
    static (string Weights, string? Config, Layout Layout)? Locate(string path)
    {
        string folder = Directory.Exists(path) ? path : Path.GetDirectoryName(path)!;
        string? file = File.Exists(path) ? path : null;
        string name = file is null ? "" : Path.GetFileName(file);
        if ((file is null || name == WeightsFile) && File.Exists(Path.Combine(folder, WeightsFile)) && HasFields(Path.Combine(folder, ConfigFile), "activation_dim", "dict_size"))
            return (Path.Combine(folder, WeightsFile), Path.Combine(folder, ConfigFile), Layout.Hub);
        if ((file is null || name == DictionaryLearningFormat.WeightsFile) && File.Exists(Path.Combine(folder, DictionaryLearningFormat.WeightsFile)))
        {
            string cfg = Path.Combine(folder, ConfigFile);
            return (Path.Combine(folder, DictionaryLearningFormat.WeightsFile), File.Exists(cfg) ? cfg : null, Layout.TrainerFolder);
        }
        // Kissane: {N}.pt + {N}_cfg.json (one pair, or the one the path names)
        var candidates = file is not null ? [file] : Directory.GetFiles(folder, "*.pt").Concat(Directory.GetFiles(folder, "*.safetensors")).Order(StringComparer.Ordinal).ToArray();
        var pairs = candidates.Select(w => (Weights: w, Config: KissaneConfig(w))).Where(p => p.Config is not null).ToArray();
        if (pairs.Length > 1)
            throw new InputError($"{folder}: {pairs.Length} crosscoder checkpoints ({string.Join(", ", pairs.Select(p => Path.GetFileName(p.Weights)))}); name the one to read");
        return pairs.Length == 1 ? (pairs[0].Weights, pairs[0].Config, Layout.Kissane) : null;
    }

    static string? KissaneConfig(string weights)
    {
        string folder = Path.GetDirectoryName(weights)!, stem = Path.GetFileNameWithoutExtension(weights);
        foreach (var c in new[] { $"{stem}_cfg.json", "cfg.json", "cc_cfg.json" })
            if (HasFields(Path.Combine(folder, c), "d_in", "dict_size")) return Path.Combine(folder, c);
        return null;
    }

    // Whether `path` is a JSON object holding every field: what tells a crosscoder's config from a model's or an SAE's
    // (a model folder also holds config.json + model.safetensors; a SAELens folder cfg.json + a weights file).
    static bool HasFields(string path, params string[] fields)
    {
        if (!File.Exists(path)) return false;
        try { return SaeLensFormat.ReadJsonObject(path) is var o && fields.All(o.ContainsKey); }
        catch (InputError) { return false; }
    }

    // ---- dictionary_learning ----

    static Crosscoder ReadDictionaryLearning(SafeTensorsFile file, string path, JsonObject? cfg, string? cfgPath, JsonObject? loupe, Layout layout, CrosscoderSourceOptions options, Action<string>? plan)
    {
        var names = Names(file);
        JsonObject? trainer = layout == Layout.TrainerFolder && cfg is not null
            ? cfg["trainer"] as JsonObject ?? throw InputError.Expected(cfgPath!, "field 'trainer'", "an object (dictionary_learning's trainer config)", cfg["trainer"]?.ToJsonString() ?? "nothing")
            : null;
        JsonObject? settings = layout == Layout.Hub ? cfg : trainer;
        string where = cfgPath ?? path;
        string? dictClass = Str(trainer, "dict_class", where);
        bool batchTopK = dictClass is not null ? dictClass.Contains("BatchTopK", StringComparison.Ordinal) : names.ContainsKey("threshold");
        if (dictClass is not null && dictClass is not ("CrossCoder" or "BatchTopKCrossCoder"))
            throw InputError.Expected(where, "trainer.dict_class", "CrossCoder or BatchTopKCrossCoder (an SAE class is read by `loupe sae`)", dictClass);
        if (Str(settings, "decoder_type", where) is { } decoderType && decoderType != "linear" || names.Keys.Any(n => n.StartsWith("decoder.layers.", StringComparison.Ordinal)))
            throw new InputError($"{path}: an embedding-bag decoder (decoder_type 'embedding_bag'); Loupe reads the linear decoder (decoder.weight [L, F, d])");

        var encInfo = Info(file, names, path, "encoder.weight", 3);
        var decInfo = Info(file, names, path, "decoder.weight", 3);
        int layers = Dim(decInfo.Shape[0], path, "decoder.weight", "layers"), f = Dim(decInfo.Shape[1], path, "decoder.weight", "dict_size"), d = Dim(decInfo.Shape[2], path, "decoder.weight", "activation_dim");
        int encBlocks = Dim(encInfo.Shape[0], path, "encoder.weight", "layers");
        if (encInfo.Shape[1] != d || encInfo.Shape[2] != f)
            throw InputError.Expected(path, "tensor 'encoder.weight'", $"[layers, {d}, {f}] to match decoder.weight {CltFiles.Shape(decInfo.Shape)}", CltFiles.Shape(encInfo.Shape));
        Check.Product(path, "layers × activation_dim × dict_size", Check.MaxArrayElements, layers, d, f);
        ExpectInt(settings, "activation_dim", d, where, path);
        ExpectInt(settings, "dict_size", f, where, path);
        int[] encoderLayers = EncoderLayers(settings, where, encBlocks, layers);

        var allowed = new List<string> { "encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias" };
        if (batchTopK) allowed.AddRange(["k", "threshold", "code_normalization_id"]);
        if (names.Keys.FirstOrDefault(n => !allowed.Contains(n)) is { } unknown)
            throw new InputError($"{path}: unexpected tensor '{unknown}' for a {(batchTopK ? "BatchTopKCrossCoder" : "CrossCoder")}, which holds {string.Join(", ", allowed)}");

        int n = layers;
        plan?.Invoke(Plan(n, d, f));
        // A BatchTopK crosscoder is held as the JumpReLU its inference rule is (thresholds set below), in the same arrays.
        var dict = new SparseDictionary(SaeShape.Sae(n * d, f, applyBDecToInput: false), batchTopK ? new JumpReluActivation() : new ReluActivation());
        var p = dict.P;
        // Read in place, block by block: no second copy of a multi-GB matrix.
        string encName = Stored(file, names, path, "encoder.weight"), decName = Stored(file, names, path, "decoder.weight");
        CltFiles.CheckShape(file, path, encName, [encBlocks, d, f]);
        for (int b = 0; b < encBlocks; b++)
            ReadRange(file, path, encName, (long)b * d * f, p.WEnc.AsSpan((int)((long)encoderLayers[b] * d * f), d * f));
        CltFiles.Read(file, path, Stored(file, names, path, "encoder.bias"), [f], p.BEnc);
        CltFiles.CheckShape(file, path, decName, [n, f, d]);
        for (int l = 0; l < n; l++)
            for (int i = 0; i < f; i++)
                ReadRange(file, path, decName, ((long)l * f + i) * d, p.WDec.AsSpan((int)(((long)i * n + l) * d), d));
        CltFiles.Read(file, path, Stored(file, names, path, "decoder.bias"), [n, d], p.BDec);

        var sources = Sources(options, n, loupe, path, HookFromConfig(settings, where));
        float[] scales = Scales(options, n, loupe, path);
        string origin = $"{path} (dictionary_learning {(batchTopK ? "BatchTopKCrossCoder" : "CrossCoder")}, {(layout == Layout.Hub ? "hub layout" : "trainer folder")})";
        if (!batchTopK) return new Crosscoder(sources, d, dict, scales) { Architecture = "relu", Origin = origin };

        int k = names.ContainsKey("k") ? DictionaryLearningFormat.ScalarInt(file, path, Stored(file, names, path, "k")) : (int)(DictionaryLearningFormat.Int(settings, "k", where) ?? 0);
        var norm = CodeNormalizationOf(file, names, path, settings, where);
        var thInfo = Info(file, names, path, "threshold", -1);
        if (thInfo.ElementCount != 1)
            throw new InputError($"{path}: tensor 'threshold' holds {thInfo.ElementCount} values (one per layer: a DECOUPLED code); Loupe reads one threshold");
        float theta = file.GetFloat32(Stored(file, names, path, "threshold")).Span[0];
        CltFiles.CheckValues([theta], path, "threshold", 0);
        if (theta < 0)
            throw new InputError($"{path}: tensor 'threshold' is {theta.ToString(CultureInfo.InvariantCulture)}: never set by training; without it a BatchTopK " +
                                 "crosscoder keeps the k·batch largest latents of a whole batch, which depends on the batch; Loupe encodes with the learned threshold");
        SetThresholds(p, n, d, f, theta, norm.Kind, norm.AlphaSae, norm.AlphaCc);
        return new Crosscoder(sources, d, dict, scales)
        {
            Architecture = "batchtopk", BatchTopKThreshold = theta, K = k, CodeNormalization = norm.Kind, Origin = origin,
        };
    }

    // f_i·n_i > θ  ⇔  f_i > θ / n_i  (n_i > 0): a JumpReLU with θ_i = θ / n_i on the same weights (a copy of p); n_i = 0 never fires.
    internal static SparseDictionary FoldThreshold(SaeParameters p, int n, int d, int f, float theta, CodeNormalization kind, float alphaSae = 1f, float alphaCc = 0.1f)
    {
        var dict = new SparseDictionary(p.Shape, new JumpReluActivation());
        var q = dict.P;
        p.WEnc.CopyTo(q.WEnc, 0);
        p.BEnc.CopyTo(q.BEnc, 0);
        p.WDec.CopyTo(q.WDec, 0);
        p.BDec.CopyTo(q.BDec, 0);
        SetThresholds(q, n, d, f, theta, kind, alphaSae, alphaCc);
        return dict;
    }

    // log θ_i = log(θ / n_i) from the decoder in p; n_i = 0 never fires.
    static void SetThresholds(SaeParameters p, int n, int d, int f, float theta, CodeNormalization kind, float alphaSae, float alphaCc)
    {
        var norms = Crosscoder.SegmentNorms(p.WDec, f, n, d);
        for (int i = 0; i < f; i++)
        {
            float code = Crosscoder.CodeNorm(kind, norms.AsSpan(i * n, n), alphaSae, alphaCc);
            float ti = code > 0 ? theta / code : float.MaxValue;
            p.LogThreshold[i] = SaeLensFormat.LogThreshold(float.IsFinite(ti) ? ti : float.MaxValue);
        }
    }

    static (CodeNormalization Kind, float AlphaSae, float AlphaCc) CodeNormalizationOf(SafeTensorsFile file, Dictionary<string, string> names, string path, JsonObject? settings, string where)
    {
        CodeNormalization kind;
        if (names.TryGetValue("code_normalization_id", out var idName))
        {
            int id = DictionaryLearningFormat.ScalarInt(file, path, idName);
            kind = id switch
            {
                1 => CodeNormalization.Crosscoder, 2 => CodeNormalization.Sae, 3 => CodeNormalization.Mixed, 4 => CodeNormalization.None,
                5 => throw new InputError($"{path}: code_normalization_id 5 (DECOUPLED: one code per layer); Loupe reads crosscoders with one code per latent"),
                _ => throw InputError.Expected(path, "tensor 'code_normalization_id'", "1 (CROSSCODER), 2 (SAE), 3 (MIXED) or 4 (NONE)", id),
            };
        }
        else
        {
            string name = Str(settings, "code_normalization", where) ?? "CROSSCODER";
            kind = name.ToUpperInvariant() switch
            {
                "CROSSCODER" => CodeNormalization.Crosscoder, "SAE" => CodeNormalization.Sae, "MIXED" => CodeNormalization.Mixed, "NONE" => CodeNormalization.None,
                "DECOUPLED" => throw new InputError($"{where}: code_normalization DECOUPLED (one code per layer); Loupe reads crosscoders with one code per latent"),
                _ => throw InputError.Expected(where, "field 'code_normalization'", "CROSSCODER, SAE, MIXED or NONE", name),
            };
        }
        float alphaSae = (float)(Num(settings, "code_normalization_alpha_sae", where) ?? 1.0), alphaCc = (float)(Num(settings, "code_normalization_alpha_cc", where) ?? 0.1);
        return (kind, alphaSae, alphaCc);
    }

    // The layers the encoder's blocks read: all of them in order, or the config's encoder_layers (encoder_layers_indices).
    static int[] EncoderLayers(JsonObject? settings, string where, int blocks, int layers)
    {
        JsonNode? list = settings?["encoder_layers"] ?? settings?["encoder_layers_indices"];
        if (list is null)
        {
            if (blocks != layers)
                throw new InputError($"{where}: the encoder has {blocks} layer blocks and the decoder {layers}, and no encoder_layers says which layers the encoder reads");
            return Enumerable.Range(0, layers).ToArray();
        }
        if (list is not JsonArray arr || arr.Count != blocks || arr.Any(v => v is null || v.GetValueKind() != JsonValueKind.Number || !v.AsValue().TryGetValue(out int _)))
            throw InputError.Expected(where, "field 'encoder_layers'", $"a list of {blocks} layer indices (one per encoder block)", list.ToJsonString());
        var idx = arr.Select(v => v!.GetValue<int>()).ToArray();
        if (idx.Any(i => i < 0 || i >= layers) || idx.Distinct().Count() != idx.Length)
            throw InputError.Expected(where, "field 'encoder_layers'", $"distinct indices below {layers} (the decoder's layers)", list.ToJsonString());
        return idx;
    }

    // ---- Kissane ----

    static Crosscoder ReadKissane(SafeTensorsFile file, string path, JsonObject? cfg, string? cfgPath, JsonObject? loupe, CrosscoderSourceOptions options, Action<string>? plan)
    {
        var names = Names(file);
        string where = cfgPath ?? path;
        var encInfo = Info(file, names, path, "W_enc", 3);
        var decInfo = Info(file, names, path, "W_dec", 3);
        int n = Dim(encInfo.Shape[0], path, "W_enc", "n_models"), d = Dim(encInfo.Shape[1], path, "W_enc", "d_in"), f = Dim(encInfo.Shape[2], path, "W_enc", "dict_size");
        if (decInfo.Shape[0] != f || decInfo.Shape[1] != n || decInfo.Shape[2] != d)
            throw InputError.Expected(path, "tensor 'W_dec'", $"[{f}, {n}, {d}] to match W_enc {CltFiles.Shape(encInfo.Shape)}", CltFiles.Shape(decInfo.Shape));
        Check.Product(path, "n_models × d_in × dict_size", Check.MaxArrayElements, n, d, f);
        ExpectInt(cfg, "d_in", d, where, path);
        ExpectInt(cfg, "dict_size", f, where, path);
        string[] allowed = ["W_enc", "b_enc", "W_dec", "b_dec"];
        if (names.Keys.FirstOrDefault(x => !allowed.Contains(x)) is { } unknown)
            throw new InputError($"{path}: unexpected tensor '{unknown}' for Kissane's CrossCoder, which holds {string.Join(", ", allowed)}");
        plan?.Invoke(Plan(n, d, f));
        var dict = new SparseDictionary(SaeShape.Sae(n * d, f, applyBDecToInput: false), new ReluActivation());
        CltFiles.Read(file, path, Stored(file, names, path, "W_enc"), [n, d, f], dict.P.WEnc);   // [n, d, F] is the row-blocks of [n·d, F]
        CltFiles.Read(file, path, Stored(file, names, path, "b_enc"), [f], dict.P.BEnc);
        CltFiles.Read(file, path, Stored(file, names, path, "W_dec"), [f, n, d], dict.P.WDec);   // [F, n, d] is [F, n·d]
        CltFiles.Read(file, path, Stored(file, names, path, "b_dec"), [n, d], dict.P.BDec);
        string? hook = Str(cfg, "hook_point", where);
        if (hook is not null) SaeLensFormat.CheckHookName(hook, "hook_point", where);
        var sources = Sources(options, n, loupe, path, hook);
        return new Crosscoder(sources, d, dict, Scales(options, n, loupe, path)) { Architecture = "relu", Origin = $"{path} (Kissane's crosscoder-model-diff-replication)" };
    }

    // ---- Loupe's own ----

    /// <summary>
    /// Saves <paramref name="crosscoder"/> in the hub-mixin layout (model.safetensors + config.json), which dictionary_learning's
    /// CrossCoder / BatchTopKCrossCoder.from_pretrained(folder, from_hub=True) and Loupe read back; both files are written atomically.
    /// </summary>
    /// <exception cref="InputError">The folder cannot be made, or names something that is not a folder.</exception>
    public static void Save(string folder, Crosscoder crosscoder, IReadOnlyDictionary<string, string>? provenance = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        ArgumentNullException.ThrowIfNull(crosscoder);
        OutputFiles.EnsureFolder(folder);
        int n = crosscoder.Sources.Count, d = crosscoder.Width, f = crosscoder.DSae;
        var p = crosscoder.Dictionary.P;
        var dec = new float[(long)n * f * d]; // [L, F, d]
        for (int i = 0; i < f; i++)
            for (int l = 0; l < n; l++)
                p.WDec.AsSpan((int)(((long)i * n + l) * d), d).CopyTo(dec.AsSpan((int)(((long)l * f + i) * d), d));
        bool topK = crosscoder.Architecture == "batchtopk";
        var tensors = new List<SafeTensorEntry>
        {
            SafeTensorEntry.F32("encoder.weight", [n, d, f], p.WEnc),
            SafeTensorEntry.F32("encoder.bias", [f], p.BEnc),
            SafeTensorEntry.F32("decoder.weight", [n, f, d], dec),
            SafeTensorEntry.F32("decoder.bias", [n, d], p.BDec),
        };
        if (topK)
        {
            tensors.Add(SafeTensorEntry.I64("k", [], new long[] { crosscoder.K }));
            tensors.Add(SafeTensorEntry.F32("threshold", [], new[] { crosscoder.BatchTopKThreshold }));
            tensors.Add(SafeTensorEntry.I64("code_normalization_id", [], new long[] { (int)crosscoder.CodeNormalization + 1 }));
        }
        var loupe = new JsonObject
        {
            ["architecture"] = crosscoder.Architecture,
            ["sources"] = new JsonArray(crosscoder.Sources.Select(s => (JsonNode)new JsonObject { ["model"] = s.Model, ["hook"] = s.Hook }).ToArray()),
            ["input_scales"] = new JsonArray(crosscoder.InputScales.Select(c => (JsonNode)JsonValue.Create(c)).ToArray()),
            ["loupe_version"] = CltFiles.LoupeVersion,
        };
        if (provenance is not null) foreach (var (key, value) in provenance) loupe[key] = value;
        var meta = new Dictionary<string, string> { ["format"] = "pt", [LoupeMetadataKey] = loupe.ToJsonString() };
        SafeTensorsWriter.Write(Path.Combine(folder, WeightsFile), tensors, meta);
        // The constructor's arguments only: the hub mixin hands config.json's keys to __init__ (CrossCoder's canonical
        // signature names num_layers; BatchTopKCrossCoder's num_encoder_layers, k, code_normalization).
        var cfg = new JsonObject { ["activation_dim"] = d, ["dict_size"] = f };
        if (topK)
        {
            cfg["num_encoder_layers"] = n;
            cfg["k"] = crosscoder.K;
            cfg["code_normalization"] = crosscoder.CodeNormalization.ToString().ToUpperInvariant();
        }
        else cfg["num_layers"] = n;
        string json = cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
        OutputFiles.WriteAtomic(Path.Combine(folder, ConfigFile), s => s.Write(System.Text.Encoding.UTF8.GetBytes(json)));
    }

    /// <summary>
    /// Writes latent <paramref name="latent"/>'s decoder vector in source <paramref name="source"/>, in that model's units
    /// (W_dec^s[j] / c_s; unit length with <paramref name="unit"/>), as a steering vector file (tensor "direction", the
    /// source's hook in the metadata) that <c>loupe steer --vector</c> and <c>SteeringVector.Load</c> read: add a
    /// chat-only latent's direction to the base model and see what it does.
    /// </summary>
    /// <exception cref="InputError">The latent or source is out of range, the source names no hook, or the vector is 0.</exception>
    public static void SaveDecoderVector(string path, Crosscoder crosscoder, int latent, int source, bool unit = false)
    {
        ArgumentNullException.ThrowIfNull(crosscoder);
        if (latent < 0 || latent >= crosscoder.DSae) throw new InputError($"argument: --latent: {latent} is out of range (d_sae = {crosscoder.DSae})");
        if (source < 0 || source >= crosscoder.Sources.Count) throw new InputError($"argument: --source: {source} is out of range ({crosscoder.Sources.Count} sources)");
        var src = crosscoder.Sources[source];
        if (src.Hook.Length == 0) throw new InputError($"source {src}: the crosscoder's files name no hook; pass --hooks");
        var v = crosscoder.DecoderVector(latent, source).ToArray();
        float norm = System.Numerics.Tensors.TensorPrimitives.Norm(v);
        if (norm == 0) throw new InputError($"latent {latent} has no decoder vector in {src} (‖W_dec‖ = 0): it writes nothing there");
        System.Numerics.Tensors.TensorPrimitives.Multiply(v, unit ? 1f / norm : 1f / crosscoder.InputScales[source], v);
        var metadata = new Dictionary<string, string>
        {
            ["format"] = "loupe-crosscoder-latent",
            ["hook"] = src.Hook,
            [HookNames.SemanticsKey] = HookNames.Semantics,
            ["model"] = src.Model,
            ["latent"] = latent.ToString(CultureInfo.InvariantCulture),
            ["crosscoder"] = crosscoder.Origin,
            ["scaling"] = unit ? "unit length" : $"W_dec / input scale {crosscoder.InputScales[source].ToString("R", CultureInfo.InvariantCulture)} (model units)",
        };
        OutputFiles.EnsureReplaceable(Path.GetFullPath(path));
        SafeTensorsWriter.Write(path, [("direction", [v.Length], (ReadOnlyMemory<float>)v)], metadata);
    }

    // ---- sources and scales ----

    static CrosscoderSource[] Sources(CrosscoderSourceOptions options, int n, JsonObject? loupe, string where, string? configHook)
    {
        string[] models = Enumerable.Range(0, n).Select(DefaultLabel).ToArray();
        string[] hooks = Enumerable.Repeat(configHook ?? "", n).ToArray();
        if (loupe?["sources"] is JsonNode listed)
        {
            if (listed is not JsonArray arr || arr.Count != n || arr.Any(s => s is not JsonObject o || o["model"]?.GetValueKind() != JsonValueKind.String || o["hook"]?.GetValueKind() != JsonValueKind.String))
                throw InputError.Expected(where, "metadata 'loupe', field 'sources'", $"{n} objects with string fields 'model' and 'hook'", listed.ToJsonString());
            for (int i = 0; i < n; i++) (models[i], hooks[i]) = (arr[i]!["model"]!.GetValue<string>(), arr[i]!["hook"]!.GetValue<string>());
        }
        if (options.Models is { } m)
        {
            if (m.Count != n && m.Count != 1) throw new InputError($"argument: --models: {m.Count} labels for a crosscoder of {n} sources (give {n}, or one for a one-model crosscoder)");
            for (int i = 0; i < n; i++) models[i] = m.Count == 1 ? m[0] : m[i];
        }
        if (options.Hooks is { } h)
        {
            if (h.Count != n && h.Count != 1) throw new InputError($"argument: --hooks: {h.Count} hooks for a crosscoder of {n} sources (give {n}, or one shared by all)");
            for (int i = 0; i < n; i++) hooks[i] = h.Count == 1 ? h[0] : h[i];
        }
        foreach (var hook in hooks) SaeLensFormat.CheckHookName(hook, "hook", where);
        var sources = models.Zip(hooks, (model, hook) => new CrosscoderSource(model, hook)).ToArray();
        if (sources.Distinct().Count() != n)
            throw new InputError($"{where}: the crosscoder's {n} sources would repeat ({string.Join(", ", sources.Select(s => s.ToString()))}); " +
                                 "name a model per source (--models) or a hook per source (--hooks)");
        return sources;
    }

    /// <summary>The default label of source <paramref name="i"/>: A, B, … (Anthropic's and Kissane's names for the two models).</summary>
    public static string DefaultLabel(int i) => i < 26 ? ((char)('A' + i)).ToString() : "S" + i.ToString(CultureInfo.InvariantCulture);

    static float[] Scales(CrosscoderSourceOptions options, int n, JsonObject? loupe, string where)
    {
        if (options.InputScales is { } given)
        {
            if (given.Count != n) throw new InputError($"argument: --input-scales: {given.Count} values for a crosscoder of {n} sources");
            if (given.Any(c => !(c > 0) || !float.IsFinite(c))) throw new InputError($"argument: --input-scales: expected positive finite numbers, got {string.Join(",", given)}");
            return given.ToArray();
        }
        if (loupe?["input_scales"] is not JsonNode node) return Enumerable.Repeat(1f, n).ToArray();
        if (node is not JsonArray arr || arr.Count != n || arr.Any(v => v is null || v.GetValueKind() != JsonValueKind.Number || !(v.GetValue<double>() > 0) || !double.IsFinite(v.GetValue<double>()) || v.GetValue<double>() > float.MaxValue))
            throw InputError.Expected(where, "metadata 'loupe', field 'input_scales'", $"{n} positive finite numbers", node.ToJsonString());
        return arr.Select(v => (float)v!.GetValue<double>()).ToArray();
    }

    static string? HookFromConfig(JsonObject? settings, string where)
    {
        if (Str(settings, "submodule_name", where) is { } sub)
            return DictionaryLearningFormat.HookOf(sub) ?? throw InputError.Expected(where, "field 'submodule_name'", "a submodule Loupe maps to a hook (resid_post_layer_N, mlp_out_layer_N, …); or pass --hooks", sub);
        // dictionary_learning's crosscoder script reads layer_{layer}_out, the decoder layer's output
        return DictionaryLearningFormat.Int(settings, "layer", where) is { } layer && layer is >= 0 and < 100_000 ? HookNames.ResidPost((int)layer) : null;
    }

    // ---- small readers ----

    // The file's tensor names without torch.compile's prefix → the stored names.
    static Dictionary<string, string> Names(SafeTensorsFile file)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in file.Names)
        {
            string plain = name.StartsWith(CompiledPrefix, StringComparison.Ordinal) ? name[CompiledPrefix.Length..] : name;
            if (!map.TryAdd(plain, name)) throw new InputError($"{file.Path}: tensor '{plain}' is stored twice (with and without '{CompiledPrefix}')");
        }
        return map;
    }

    // What Load will allocate: W_enc and W_dec of S·d × F floats each, plus the biases and per-latent thresholds.
    static string Plan(int n, int d, int f)
    {
        long bytes = 4L * (2L * n * d * f + 2L * f + 2L * n * d);
        return $"crosscoder: {n} sources × d {d} × {f:N0} latents, {ByteSizes.Format(bytes)} in memory";
    }

    // Elements [offset, offset + into.Length) of a float tensor, checked (NaN, ±∞, magnitude) with their index in the tensor.
    static void ReadRange(SafeTensorsFile file, string path, string stored, long offset, Span<float> into)
    {
        file.ReadFloat32(file.GetInfo(stored), offset, into);
        CltFiles.CheckValues(into, path, stored, offset);
    }

    // The stored name of tensor `name` (with torch.compile's prefix, if the file has it); missing: refused naming it.
    static string Stored(SafeTensorsFile file, Dictionary<string, string> names, string path, string name) =>
        names.TryGetValue(name, out var stored) ? stored
            : throw new InputError($"{path}: tensor '{name}' is missing; the file holds {string.Join(", ", file.Names.Take(12))}");

    static SafeTensorInfo Info(SafeTensorsFile file, Dictionary<string, string> names, string path, string name, int rank)
    {
        if (!names.TryGetValue(name, out var stored))
            throw new InputError($"{path}: tensor '{name}' is missing; the file holds {string.Join(", ", file.Names.Take(12))}");
        var info = file.GetInfo(stored);
        if (rank >= 0 && info.Shape.Length != rank)
            throw InputError.Expected(path, $"tensor '{name}'", $"{rank} dimensions", CltFiles.Shape(info.Shape));
        return info;
    }

    static int Dim(long v, string path, string tensor, string what) =>
        v is >= 1 and <= int.MaxValue ? (int)v : throw InputError.Expected(path, $"tensor '{tensor}' ({what})", "between 1 and 2^31 − 1", v);

    static string? Str(JsonObject? o, string field, string path)
    {
        if (o is null || !o.TryGetPropertyValue(field, out var v) || v is null) return null;
        return v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw InputError.Expected(path, $"field '{field}'", "a string", v.ToJsonString());
    }

    static double? Num(JsonObject? o, string field, string path)
    {
        if (o is null || !o.TryGetPropertyValue(field, out var v) || v is null) return null;
        return v.GetValueKind() == JsonValueKind.Number && double.IsFinite(v.GetValue<double>()) ? v.GetValue<double>() : throw InputError.Expected(path, $"field '{field}'", "a number", v.ToJsonString());
    }

    static void ExpectInt(JsonObject? o, string field, long fromWeights, string cfgPath, string weights)
    {
        if (DictionaryLearningFormat.Int(o, field, cfgPath) is { } n && n != fromWeights)
            throw new InputError($"{cfgPath}: {field} is {n}, but {weights} holds {fromWeights}; the config and the weights disagree");
    }
}
