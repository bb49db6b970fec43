// Files of cross-layer transcoders: Loupe's own layout and circuit-tracer's.
//
// Loupe (a folder):
//   cfg.json                 {"format": "loupe-clt", "format_version": 1, architecture, n_layers, d_in, d_sae, d_out,
//                            k (topk/batchtopk), input_hook, output_hook ("{layer}" patterns), fingerprint, provenance{…}}
//   clt_weights.safetensors  W_enc.{ℓ} [d_in, d_sae]  b_enc.{ℓ} [d_sae]  W_dec.{ℓ} [d_sae, L−ℓ, d_out]  b_dec.{ℓ} [d_out]
//                            log_threshold.{ℓ} [d_sae] (jumprelu)  threshold.{ℓ} [1] (batchtopk)
// circuit-tracer (a folder; circuit_tracer/transcoder/cross_layer_transcoder.py, load_clt / to_safetensors):
//   W_enc_{ℓ}.safetensors    W_enc_{ℓ} [d_sae, d_model]  b_enc_{ℓ} [d_sae]  b_dec_{ℓ} [d_model]  threshold_{ℓ} [d_sae] (JumpReLU θ)
//   W_dec_{ℓ}.safetensors    W_dec_{ℓ} [d_sae, L−ℓ, d_model]
//   config.yaml              model_kind: cross_layer_transcoder, feature_input_hook, feature_output_hook (names inside
//                            blocks.ℓ, e.g. "ln2.hook_normalized", "hook_mlp_out")
// circuit-tracer's CLT knows ReLU and JumpReLU only: a BatchTopK CLT is written as JumpReLU with θ = max(threshold, 0)
// (its inference rule exactly); a TopK CLT cannot be written there.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>Reads and writes cross-layer transcoders (see the file header).</summary>
public static class CltFiles
{
    public const string ConfigFile = "cfg.json";
    public const string WeightsFile = "clt_weights.safetensors";
    public const string CircuitTracerConfig = "config.yaml";
    const string Format = "loupe-clt";
    // 2: hooks mean what TransformerLens's do (an RMSNorm's ln2.hook_normalized is before its weight; mlp.hook_in is the MLP input).
    const int FormatVersion = 2;

    /// <summary>The Loupe version that writes files (the assembly's informational version).</summary>
    public static string LoupeVersion =>
        typeof(CltFiles).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion ?? "unknown";

    // ---- Loupe's layout ----

    /// <summary>Writes <paramref name="clt"/> in Loupe's layout; <paramref name="provenance"/> (model, data, training…) goes into cfg.json.</summary>
    /// <exception cref="ArgumentException">A weight is NaN or infinite.</exception>
    public static void Save(string folder, CrossLayerTranscoder clt, IReadOnlyDictionary<string, string>? provenance = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        ArgumentNullException.ThrowIfNull(clt);
        var s = clt.Shape;
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>();
        for (int l = 0; l < s.Layers; l++)
        {
            tensors.Add(($"W_enc.{l}", [s.DIn, s.DSae], clt.P.WEnc[l]));
            tensors.Add(($"b_enc.{l}", [s.DSae], clt.P.BEnc[l]));
            tensors.Add(($"W_dec.{l}", [s.DSae, s.Targets(l), s.DOut], clt.P.WDec[l]));
            tensors.Add(($"b_dec.{l}", [s.DOut], clt.P.BDec[l]));
            if (clt.Activation is JumpReluActivation) tensors.Add(($"log_threshold.{l}", [s.DSae], clt.P.Act[l].LogThreshold));
            if (clt.Activation is BatchTopKActivation) tensors.Add(($"threshold.{l}", [1], clt.P.Act[l].Threshold));
        }
        foreach (var (name, _, data) in tensors) ThrowIfCannotSave(name, data.Span, name.StartsWith("log_threshold", StringComparison.Ordinal));
        var prov = new JsonObject { ["loupe_version"] = LoupeVersion };
        if (provenance is not null) foreach (var (k, v) in provenance) prov[k] = v;
        var cfg = new JsonObject
        {
            ["format"] = Format,
            ["format_version"] = FormatVersion,
            ["architecture"] = clt.Architecture,
            ["n_layers"] = s.Layers,
            ["d_in"] = s.DIn,
            ["d_sae"] = s.DSae,
            ["d_out"] = s.DOut,
            ["k"] = KOf(clt.Activation),
            ["input_hook"] = clt.InputHookPattern,
            ["output_hook"] = clt.OutputHookPattern,
            ["fingerprint"] = clt.Fingerprint,
            ["provenance"] = prov,
        };
        OutputFiles.EnsureFolder(folder);
        OutputFiles.EnsureReplaceable(Path.Combine(folder, WeightsFile));
        OutputFiles.EnsureReplaceable(Path.Combine(folder, ConfigFile));
        SafeTensorsWriter.Write(Path.Combine(folder, WeightsFile), tensors);
        File.WriteAllText(Path.Combine(folder, ConfigFile) + ".tmp", cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
        File.Move(Path.Combine(folder, ConfigFile) + ".tmp", Path.Combine(folder, ConfigFile), overwrite: true);
    }

    static int KOf(SaeActivation a) => a switch { TopKActivation t => t.K, BatchTopKActivation b => b.K, _ => 0 };

    static void ThrowIfCannotSave(string name, ReadOnlySpan<float> data, bool minusInfinityAllowed)
    {
        for (int i = 0; i < data.Length; i++)
            if (float.IsNaN(data[i]) || float.IsPositiveInfinity(data[i]) || (float.IsNegativeInfinity(data[i]) && !minusInfinityAllowed))
                throw new ArgumentException($"cannot save: tensor '{name}'[{i}] is {data[i]}");
    }

    /// <summary>Loads a CLT folder in either layout: Loupe's (cfg.json) or circuit-tracer's (W_enc_0.safetensors).</summary>
    /// <exception cref="InputError">Neither layout is there, or the files are bad (see <see cref="LoadLoupe(string)"/>, <see cref="LoadCircuitTracer(string, string?, string?)"/>).</exception>
    public static CrossLayerTranscoder Load(string folder) => Load(folder, mapDecoders: false).Clt;

    /// <summary>
    /// Loads a CLT folder in either layout with its decoders left in their files, read row by row when a feature is decoded
    /// (circuit-tracer's <c>lazy_decoder</c>): encoders, biases and thresholds are read and checked now; a decoder row is
    /// checked when first read. Dispose it to unmap the files.
    /// </summary>
    /// <exception cref="InputError">As <see cref="Load(string)"/>, from the headers for the decoders.</exception>
    public static MappedCrossLayerTranscoder LoadMapped(string folder)
    {
        var (clt, decoders) = Load(folder, mapDecoders: true);
        return new MappedCrossLayerTranscoder(clt, decoders!);
    }

    static (CrossLayerTranscoder Clt, MappedCltDecoders? Decoders) Load(string folder, bool mapDecoders)
    {
        if (File.Exists(Path.Combine(folder, ConfigFile))) return LoadLoupe(folder, mapDecoders);
        if (File.Exists(Path.Combine(folder, "W_enc_0.safetensors"))) return LoadCircuitTracer(folder, null, null, mapDecoders);
        throw new InputError($"{folder}: not a cross-layer transcoder folder: expected {ConfigFile} + {WeightsFile} (Loupe) or W_enc_0.safetensors (circuit-tracer)");
    }

    /// <summary>True for the decoder tensors of a CLT layout (<c>W_dec.ℓ</c>, <c>W_dec_ℓ</c>, Gemma Scope 2's <c>w_dec</c>).</summary>
    public static bool IsDecoderTensor(string name) => name.StartsWith("W_dec.", StringComparison.Ordinal) || name.StartsWith("W_dec_", StringComparison.Ordinal) || name == "w_dec";

    /// <summary>Loads Loupe's layout.</summary>
    /// <exception cref="InputError">cfg.json is missing, not JSON, or a field is missing or out of range; a tensor is missing, mis-shaped or not finite (file, tensor, expected and found named).</exception>
    public static CrossLayerTranscoder LoadLoupe(string folder) => LoadLoupe(folder, mapDecoders: false).Clt;

    static (CrossLayerTranscoder Clt, MappedCltDecoders? Decoders) LoadLoupe(string folder, bool mapDecoders)
    {
        string cfgPath = Path.Combine(folder, ConfigFile), weights = Path.Combine(folder, WeightsFile);
        if (!File.Exists(cfgPath)) throw new InputError($"{cfgPath}: file is missing");
        JsonObject cfg = SaeLensFormat.ReadJsonObject(cfgPath);
        int Int(string key, int min)
        {
            if (cfg[key] is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue(out int value))
                throw InputError.Expected(cfgPath, $"field '{key}'", "an integer", cfg[key]?.ToJsonString());
            return Check.InRange(value, min, int.MaxValue, cfgPath, $"field '{key}'");
        }
        string Str(string key, string? fallback = null) =>
            cfg[key] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>()
            : fallback ?? throw InputError.Expected(cfgPath, $"field '{key}'", "a string", cfg[key]?.ToJsonString());
        if (Str("format") != Format) throw InputError.Expected(cfgPath, "field 'format'", $"\"{Format}\"", Str("format"));
        int version = Int("format_version", 0);
        if (version is < 1 or > FormatVersion) throw InputError.Expected(cfgPath, "field 'format_version'", $"1 to {FormatVersion}", version);
        var shape = new CltShape(Int("n_layers", 1), Int("d_in", 1), Int("d_sae", 1), Int("d_out", 1));
        string arch = Str("architecture");
        int k = arch is "topk" or "batchtopk" ? Int("k", 1) : 0;
        var activation = ActivationOf(arch, k, shape.DSae, cfgPath);
        string input = Str("input_hook", CrossLayerTranscoder.DefaultInputHook), output = Str("output_hook", CrossLayerTranscoder.DefaultOutputHook);
        // Version 1 was written while ln2.hook_normalized meant the norm's output (after an RMSNorm's weight).
        if (version == 1) input = LegacyInputHook(input);
        foreach (var (key, value) in new[] { ("input_hook", input), ("output_hook", output) })
            if (!value.Contains("{layer}", StringComparison.Ordinal)) throw InputError.Expected(cfgPath, $"field '{key}'", "a hook pattern containing {layer}", value);
        using var file = Open(weights);
        // Every tensor's shape is checked in the header before anything is allocated: cfg.json's sizes alone
        // (n_layers 100,000 with a small d_model passes the per-tensor bounds) could ask for terabytes.
        for (int l = 0; l < shape.Layers; l++)
        {
            CheckShape(file, weights, $"W_enc.{l}", [shape.DIn, shape.DSae]);
            CheckShape(file, weights, $"W_dec.{l}", [shape.DSae, shape.Targets(l), shape.DOut]);
        }
        if (!mapDecoders) RequireDecodersFitArrays(folder, shape);
        var clt = new CrossLayerTranscoder(shape, activation, input, output, folder, decoders: !mapDecoders);
        for (int l = 0; l < shape.Layers; l++)
        {
            Read(file, weights, $"W_enc.{l}", [shape.DIn, shape.DSae], clt.P.WEnc[l]);
            Read(file, weights, $"b_enc.{l}", [shape.DSae], clt.P.BEnc[l]);
            if (!mapDecoders) Read(file, weights, $"W_dec.{l}", [shape.DSae, shape.Targets(l), shape.DOut], clt.P.WDec[l]);
            Read(file, weights, $"b_dec.{l}", [shape.DOut], clt.P.BDec[l]);
            if (activation is JumpReluActivation) Read(file, weights, $"log_threshold.{l}", [shape.DSae], clt.P.Act[l].LogThreshold, minusInfinityAllowed: true);
            if (activation is BatchTopKActivation) Read(file, weights, $"threshold.{l}", [1], clt.P.Act[l].Threshold);
        }
        return (clt, mapDecoders ? MappedCltDecoders.Open(shape, [.. Enumerable.Range(0, shape.Layers).Select(l => (weights, $"W_dec.{l}"))]) : null);
    }

    // Layer 0's decoders [d_sae, L, d_out] are one array when read into memory.
    static void RequireDecodersFitArrays(string folder, CltShape s)
    {
        long n = (long)s.DSae * s.Layers * s.DOut;
        if (n > Check.MaxArrayElements)
            throw new InputError($"{folder}: layer 0's decoders hold {n:N0} elements (d_sae {s.DSae} × {s.Layers} targets × d_out {s.DOut}), " +
                $"more than one array holds ({Check.MaxArrayElements:N0}); leave them mapped in their files (CltFiles.LoadMapped; --decoders mapped)");
    }

    internal static SaeActivation ActivationOf(string architecture, int k, int dSae, string where) => architecture switch
    {
        "standard" or "relu" => new ReluActivation(),
        "jumprelu" or "jump_relu" => new JumpReluActivation(),
        "topk" => new TopKActivation(Check.InRange(k, 1, dSae, where, $"k (at most d_sae = {dSae})")),
        "batchtopk" => new BatchTopKActivation(Check.InRange(k, 1, dSae, where, $"k (at most d_sae = {dSae})")),
        _ => throw InputError.Expected(where, "architecture", "standard, relu, jumprelu, topk or batchtopk", architecture),
    };

    internal static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new InputError($"{path}: file is missing");
        return SaeLensFormat.OpenSafeTensors(path);
    }

    /// <summary>
    /// Reads tensor <paramref name="name"/> of exactly <paramref name="shape"/> into <paramref name="into"/>, refusing a
    /// missing tensor, another shape, NaN / ±∞ (−∞ allowed for log thresholds) or a magnitude past
    /// <see cref="SaeLensFormat.MaxWeightMagnitude"/>; messages name file, tensor, expected and found.
    /// </summary>
    internal static void Read(SafeTensorsFile file, string path, string name, int[] shape, float[] into, bool minusInfinityAllowed = false)
    {
        CheckShape(file, path, name, shape);
        var data = file.GetFloat32(name).Span;
        CheckValues(data, path, name, 0, minusInfinityAllowed);
        // −∞ is allowed only for log thresholds, and a log threshold must give a finite θ.
        if (minusInfinityAllowed) SaeLensFormat.ThrowIfLogThresholdTooLarge(data, $"{path}: tensor '{name}'");
        data.CopyTo(into);
    }

    /// <summary>
    /// Refuses NaN, ±∞ (−∞ allowed when <paramref name="minusInfinityAllowed"/>) and magnitudes past
    /// <see cref="SaeLensFormat.MaxWeightMagnitude"/> in elements <paramref name="first"/>… of tensor <paramref name="name"/>.
    /// </summary>
    internal static void CheckValues(ReadOnlySpan<float> data, string path, string name, long first, bool minusInfinityAllowed = false)
    {
        for (int i = 0; i < data.Length; i++)
        {
            float v = data[i];
            if (float.IsNegativeInfinity(v) && minusInfinityAllowed) continue;
            if (!float.IsFinite(v)) throw InputError.Expected(path, $"tensor '{name}' element {first + i}", "a finite number", v);
            if (MathF.Abs(v) > SaeLensFormat.MaxWeightMagnitude) // a value near float's limit overflows the products to ∞
                throw InputError.Expected(path, $"tensor '{name}' element {first + i}", $"a weight of magnitude at most {SaeLensFormat.MaxWeightMagnitude:0e0} (the file is corrupt)", v);
        }
    }

    /// <summary>Tensor <paramref name="name"/> is in the file, a float tensor of exactly <paramref name="shape"/> (from the header alone); its info.</summary>
    internal static SafeTensorInfo CheckShape(SafeTensorsFile file, string path, string name, int[] shape)
    {
        if (!file.TryGetInfo(name, out var info))
            throw new InputError($"{path}: tensor '{name}' is missing; expected {Shape(shape)}; the file holds {string.Join(", ", file.Names.Take(12))}");
        if (!info.DType.IsFloatingPoint() || !info.Shape.SequenceEqual(shape.Select(d => (long)d)))
            throw InputError.Expected(path, $"tensor '{name}'", $"a float tensor of shape {Shape(shape)}", $"{info.DType} {Shape(info.Shape)}");
        return info;
    }

    internal static string Shape(IEnumerable<int> shape) => "[" + string.Join(", ", shape) + "]";
    internal static string Shape(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";

    // ---- circuit-tracer's layout ----

    /// <summary>
    /// Writes <paramref name="clt"/> in circuit-tracer's CLT layout (file per layer, W_enc as [d_sae, d_model]) with a
    /// config.yaml naming the hooks relative to the block.
    /// </summary>
    /// <exception cref="InputError">The CLT is TopK (circuit-tracer's CLT has no TopK) or d_in ≠ d_out (its CLT has one d_model).</exception>
    public static void SaveCircuitTracer(string folder, CrossLayerTranscoder clt, string? modelName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        ArgumentNullException.ThrowIfNull(clt);
        var s = clt.Shape;
        if (clt.Activation is TopKActivation)
            throw new InputError($"{folder}: circuit-tracer's cross-layer transcoders know ReLU and JumpReLU only; a TopK CLT cannot be written in its layout (use Loupe's)");
        if (s.DIn != s.DOut) throw InputError.Expected(folder, "d_in and d_out", "equal (circuit-tracer's CLT has one d_model)", $"{s.DIn} and {s.DOut}");
        OutputFiles.EnsureFolder(folder);
        for (int l = 0; l < s.Layers; l++)
        {
            var enc = new List<(string, int[], ReadOnlyMemory<float>)>
            {
                ($"W_enc_{l}", [s.DSae, s.DIn], Transpose(clt.P.WEnc[l], s.DIn, s.DSae)),
                ($"b_enc_{l}", [s.DSae], clt.P.BEnc[l]),
                ($"b_dec_{l}", [s.DOut], clt.P.BDec[l]),
            };
            if (clt.Activation is JumpReluActivation) enc.Add(($"threshold_{l}", [s.DSae], clt.P.Act[l].LogThreshold.Select(MathF.Exp).ToArray()));
            if (clt.Activation is BatchTopKActivation) enc.Add(($"threshold_{l}", [s.DSae], Enumerable.Repeat(Math.Max(clt.P.Act[l].Threshold[0], 0f), s.DSae).ToArray()));
            foreach (var (name, _, data) in enc) ThrowIfCannotSave(name, data.Span, false);
            ThrowIfCannotSave($"W_dec_{l}", clt.P.WDec[l], false);
            SafeTensorsWriter.Write(Path.Combine(folder, $"W_enc_{l}.safetensors"), enc);
            SafeTensorsWriter.Write(Path.Combine(folder, $"W_dec_{l}.safetensors"),
                [($"W_dec_{l}", new[] { s.DSae, s.Targets(l), s.DOut }, (ReadOnlyMemory<float>)clt.P.WDec[l])]);
        }
        WriteYaml(Path.Combine(folder, CircuitTracerConfig), new List<(string, string)>
        {
            ("model_kind", "cross_layer_transcoder"),
            ("model_name", modelName ?? ""),
            ("feature_input_hook", RelativeHook(clt.InputHookPattern)),
            ("feature_output_hook", RelativeHook(clt.OutputHookPattern)),
            ("loupe_fingerprint", clt.Fingerprint),
            ("loupe_version", LoupeVersion),
            (HookSemanticsKey, HookSemantics),
        });
    }

    /// <summary>
    /// Written beside loupe_version in circuit-tracer configs: the hooks mean TransformerLens's (an RMSNorm's
    /// <c>ln2.hook_normalized</c> before its weight). A Loupe config without it is older (<see cref="LegacyLoupeExport"/>).
    /// </summary>
    internal const string HookSemanticsKey = HookNames.SemanticsKey, HookSemantics = HookNames.Semantics;

    /// <summary>
    /// A config.yaml Loupe wrote while its <c>ln2.hook_normalized</c> was the norm's output (loupe_version, no loupe_hooks).
    /// One whose loupe_hooks names meanings this Loupe does not know is refused.
    /// </summary>
    /// <exception cref="InputError">loupe_hooks is there and is not <see cref="HookSemantics"/>.</exception>
    internal static bool LegacyLoupeExport(IReadOnlyDictionary<string, string> yaml, string file)
    {
        HookNames.RequireKnownSemantics(yaml.GetValueOrDefault(HookSemanticsKey), file);
        return yaml.ContainsKey("loupe_version") && !yaml.ContainsKey(HookSemanticsKey);
    }

    /// <summary>
    /// Loads circuit-tracer's CLT layout. Hooks come from config.yaml when present (names inside the block,
    /// e.g. <c>ln2.hook_normalized</c>, become <c>blocks.{layer}.ln2.hook_normalized</c>), else the given patterns.
    /// JumpReLU when the files hold <c>threshold_ℓ</c> (θ ≥ 0), ReLU otherwise.
    /// </summary>
    /// <exception cref="InputError">A layer's file or tensor is missing, has another shape or dtype, or holds NaN/±∞; a threshold is negative; layers are not 0…L−1.</exception>
    public static CrossLayerTranscoder LoadCircuitTracer(string folder, string? inputHookPattern = null, string? outputHookPattern = null) =>
        LoadCircuitTracer(folder, inputHookPattern, outputHookPattern, mapDecoders: false).Clt;

    static (CrossLayerTranscoder Clt, MappedCltDecoders? Decoders) LoadCircuitTracer(string folder, string? inputHookPattern, string? outputHookPattern, bool mapDecoders)
    {
        int layers = 0;
        while (File.Exists(Path.Combine(folder, $"W_enc_{layers}.safetensors"))) layers++;
        if (layers == 0) throw new InputError($"{folder}: W_enc_0.safetensors is missing (circuit-tracer's CLT layout has W_enc_ℓ / W_dec_ℓ.safetensors per layer)");
        int extra = Directory.GetFiles(folder, "W_enc_*.safetensors").Length;
        if (extra != layers) throw new InputError($"{folder}: holds {extra} W_enc_*.safetensors files but layers 0…{layers - 1} are consecutive; expected one per layer from 0");
        string yamlPath = Path.Combine(folder, CircuitTracerConfig);
        var yaml = ReadYaml(yamlPath);
        // Loupe's own exports carry loupe_version; before mlp.hook_in existed they named the MLP input ln2.hook_normalized.
        bool legacy = LegacyLoupeExport(yaml, yamlPath);
        string input = inputHookPattern ?? (yaml.TryGetValue("feature_input_hook", out var fi) ? AbsoluteHook(fi, legacy) : CrossLayerTranscoder.DefaultInputHook);
        string output = outputHookPattern ?? (yaml.TryGetValue("feature_output_hook", out var fo) ? AbsoluteHook(fo) : CrossLayerTranscoder.DefaultOutputHook);

        string enc0 = Path.Combine(folder, "W_enc_0.safetensors");
        int dSae, dIn, dOut;
        bool jump;
        using (var f = Open(enc0))
        {
            if (!f.TryGetInfo("W_enc_0", out var w) || w.Shape.Length != 2)
                throw InputError.Expected(enc0, "tensor 'W_enc_0'", "[d_sae, d_model]", w is null ? "missing" : Shape(w.Shape));
            (dSae, dIn) = ((int)w.Shape[0], (int)w.Shape[1]);
            dOut = f.TryGetInfo("b_dec_0", out var bd) && bd.Shape.Length == 1 ? (int)bd.Shape[0] : dIn;
            jump = f.Contains("threshold_0");
        }
        if (!mapDecoders) RequireDecodersFitArrays(folder, new CltShape(layers, dIn, dSae, dOut));
        var clt = new CrossLayerTranscoder(new CltShape(layers, dIn, dSae, dOut), jump ? new JumpReluActivation() : new ReluActivation(), input, output, folder, decoders: !mapDecoders);
        var s = clt.Shape;
        var wEncT = new float[dSae * dIn];
        var theta = new float[dSae];
        for (int l = 0; l < layers; l++)
        {
            string encPath = Path.Combine(folder, $"W_enc_{l}.safetensors"), decPath = Path.Combine(folder, $"W_dec_{l}.safetensors");
            using (var f = Open(encPath))
            {
                Read(f, encPath, $"W_enc_{l}", [dSae, dIn], wEncT);
                Transpose(wEncT, dSae, dIn).CopyTo(clt.P.WEnc[l], 0);
                Read(f, encPath, $"b_enc_{l}", [dSae], clt.P.BEnc[l]);
                Read(f, encPath, $"b_dec_{l}", [dOut], clt.P.BDec[l]);
                if (jump)
                {
                    // circuit-tracer stores θ as [d_sae] (to_safetensors squeezes [1, d_sae])
                    string name = $"threshold_{l}";
                    if (f.TryGetInfo(name, out var ti) && ti.Shape.Length == 2 && ti.Shape[0] == 1) Read(f, encPath, name, [1, dSae], theta);
                    else Read(f, encPath, name, [dSae], theta);
                    for (int i = 0; i < dSae; i++)
                    {
                        if (theta[i] < 0) throw InputError.Expected(encPath, $"tensor '{name}' element {i}", "a JumpReLU threshold ≥ 0", theta[i]);
                        clt.P.Act[l].LogThreshold[i] = MathF.Log(theta[i]);   // θ = 0 → −∞: fires on pre > 0, like circuit-tracer
                    }
                }
            }
            if (!mapDecoders)
                using (var f = Open(decPath)) Read(f, decPath, $"W_dec_{l}", [dSae, s.Targets(l), dOut], clt.P.WDec[l]);
        }
        return (clt, mapDecoders ? MappedCltDecoders.Open(s, [.. Enumerable.Range(0, layers).Select(l => (Path.Combine(folder, $"W_dec_{l}.safetensors"), $"W_dec_{l}"))]) : null);
    }

    internal static float[] Transpose(float[] m, int rows, int cols)
    {
        var t = new float[m.Length];
        for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) t[c * rows + r] = m[r * cols + c];
        return t;
    }

    /// <summary>
    /// "blocks.{layer}.hook_mlp_out" → "hook_mlp_out" (circuit-tracer names hooks inside the block, as TransformerLens
    /// does; Loupe's hooks mean what TransformerLens's do, <c>mlp.hook_in</c> being circuit-tracer's MLP input).
    /// </summary>
    internal static string RelativeHook(string pattern) =>
        pattern.StartsWith("blocks.{layer}.", StringComparison.Ordinal) ? pattern["blocks.{layer}.".Length..] : pattern;

    /// <summary>
    /// The inverse of <see cref="RelativeHook"/>; circuit-tracer's "mlp.hook_out" (the output of its replacement MLP) is
    /// <c>hook_mlp_out</c>. <paramref name="legacyLoupe"/>: a config Loupe wrote before its RMSNorm hooks followed
    /// TransformerLens, where "ln2.hook_normalized" meant the MLP's input (after the weight): read as <c>mlp.hook_in</c>.
    /// </summary>
    internal static string AbsoluteHook(string hook, bool legacyLoupe = false)
    {
        if (hook.Contains("{layer}", StringComparison.Ordinal)) return legacyLoupe ? LegacyInputHook(hook) : hook;
        if (hook == "mlp.hook_out") hook = "hook_mlp_out";
        if (legacyLoupe && hook == "ln2.hook_normalized") hook = "mlp.hook_in";
        return "blocks.{layer}." + hook;
    }

    /// <summary>
    /// An input hook pattern from a file Loupe wrote while its <c>ln2.hook_normalized</c> was the norm's output (after an
    /// RMSNorm's weight): that value is <c>mlp.hook_in</c> now. Other patterns are unchanged.
    /// </summary>
    internal static string LegacyInputHook(string pattern) =>
        pattern == "blocks.{layer}.ln2.hook_normalized" ? "blocks.{layer}.mlp.hook_in" : pattern;

    // config.yaml: top-level "key: value" scalars only (what circuit-tracer's configs hold besides lists).
    internal static void WriteYaml(string path, IEnumerable<(string Key, string Value)> entries)
    {
        var sb = new StringBuilder();
        foreach (var (k, v) in entries) sb.Append(k).Append(": ").Append(JsonSerializer.Serialize(v, new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })).Append('\n');
        OutputFiles.EnsureReplaceable(path);
        File.WriteAllText(path + ".tmp", sb.ToString());
        File.Move(path + ".tmp", path, overwrite: true);
    }

    internal static IReadOnlyDictionary<string, string> ReadYaml(string path) => CircuitTracerYaml.Read(path).Scalars;
}
