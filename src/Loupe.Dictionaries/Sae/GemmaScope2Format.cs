// Gemma Scope 2 (google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}, for Gemma 3): one folder per dictionary,
//   {site}[_all]/layer_{L}_width_{W}_l0_{small|medium|big}[_affine]/params.safetensors + config.json
// params.safetensors (JumpReLU, as in the release's tutorial):
//   w_enc [d_in, d_sae]   b_enc [d_sae]   threshold [d_sae] (θ itself)
//   w_dec [d_sae, d_out]  b_dec [d_out]   affine_skip_connection [d_in, d_out] (transcoders "…_affine" only)
//   pre = x·w_enc + b_enc;  acts = relu(pre)·1[pre > θ];  out = acts·w_dec + b_dec (+ x·affine_skip_connection)
// config.json: hf_hook_point_in / hf_hook_point_out (Hugging Face module names such as "model.layers.5.output" or
// "model.layers.5.pre_feedforward_layernorm.output"), width, l0, model_name, architecture "jump_relu", type.
// The module names are mapped to TransformerLens hooks here (HookFromModule); a name without an equivalent leaves the
// hook empty, for the caller to give. A cross-layer transcoder's layer file (w_dec with a layer axis) is refused here, not
// misread: its folder loads as one CLT (Transcoders/GemmaScope2Clt).
using System.Text.Json;
using System.Text.RegularExpressions;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Sae;

/// <summary>Loads Gemma Scope 2 SAEs and transcoders from their published <c>params.safetensors</c> (+ <c>config.json</c>).</summary>
public static partial class GemmaScope2Format
{
    /// <summary>The weights file of every Gemma Scope 2 folder.</summary>
    public const string ParamsFile = "params.safetensors";

    /// <summary>The settings file beside it.</summary>
    public const string ConfigFile = "config.json";

    /// <summary>True when <paramref name="path"/> (a file) holds Gemma Scope 2 tensor names (<c>w_enc</c>, <c>w_dec</c>, lower case).</summary>
    public static bool IsGemmaScope2File(string path)
    {
        if (!File.Exists(path) || !path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return false;
        using var f = CltFiles.Open(path);
        return f.Contains("w_enc") && f.Contains("w_dec");
    }

    /// <summary>Loads a Gemma Scope 2 dictionary from its folder or its <c>params.safetensors</c>.</summary>
    /// <param name="path">The folder (holding params.safetensors) or the weights file itself.</param>
    /// <param name="hookName">
    /// The hook the dictionary reads, overriding config.json's; needed when config.json is absent or names a module without a
    /// TransformerLens equivalent.
    /// </param>
    /// <returns>The dictionary (JumpReLU, <c>apply_b_dec_to_input</c> false) and its config in SAELens terms.</returns>
    /// <exception cref="FileNotFoundException">No params.safetensors at the path.</exception>
    /// <exception cref="InputError">
    /// A tensor is missing, of another shape or not finite; θ is negative; the file is a cross-layer transcoder; config.json
    /// is not valid JSON or its fields have the wrong type. Messages name the file and the tensor or field.
    /// </exception>
    public static (SparseDictionary Dictionary, SaeLensConfig Config) Load(string path, string? hookName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string file = Directory.Exists(path) ? Path.Combine(path, ParamsFile) : path;
        if (!File.Exists(file)) throw new FileNotFoundException($"Gemma Scope 2 parameters not found: {file}", file);
        file = Path.GetFullPath(file);
        var dict = LoadWeights(file);
        var cfg = ReadConfig(Path.Combine(Path.GetDirectoryName(file)!, ConfigFile), dict);
        if (hookName is not null)
            cfg = cfg with { HookName = hookName, HookLayer = SaeLensFormat.LayerOf(hookName) ?? cfg.HookLayer, ReshapeActivations = ReshapeFor(hookName) };
        return (dict, cfg);
    }

    /// <summary>Reads the weights of one Gemma Scope 2 <c>params.safetensors</c> (the hooks are not in it).</summary>
    /// <exception cref="InputError">As <see cref="Load"/>.</exception>
    public static SparseDictionary LoadWeights(string file)
    {
        using var f = CltFiles.Open(file);
        long[] Shape(string name) => f.TryGetInfo(name, out var i)
            ? i.Shape
            : throw new InputError($"{file}: tensor '{name}' is missing; a Gemma Scope 2 params.safetensors holds w_enc, w_dec, b_enc, b_dec, threshold (and affine_skip_connection for an affine transcoder); the file holds {string.Join(", ", f.Names.Take(12))}");
        long[] wEnc = Shape("w_enc"), wDec = Shape("w_dec");
        if (wDec.Length == 3 || wEnc.Length == 3)
            throw new InputError($"{file}: w_dec is {CltFiles.Shape(wDec)} and w_enc {CltFiles.Shape(wEnc)}: one layer of a Gemma Scope 2 cross-layer transcoder: load its folder (params_layer_0…L−1.safetensors) as transcoders (loupe attribute --transcoders FOLDER)");
        if (wEnc.Length != 2) throw InputError.Expected(file, "tensor 'w_enc'", "[d_in, d_sae]", CltFiles.Shape(wEnc));
        long dIn = wEnc[0], dSae = wEnc[1];
        if (wDec.Length != 2 || wDec[0] != dSae) throw InputError.Expected(file, "tensor 'w_dec'", $"[d_sae = {dSae}, d_out] (one row per column of w_enc {CltFiles.Shape(wEnc)})", CltFiles.Shape(wDec));
        long dOut = wDec[1];
        Check.Product(file, "w_enc [d_in, d_sae]", Check.MaxArrayElements, dIn, dSae);
        Check.Product(file, "w_dec [d_sae, d_out]", Check.MaxArrayElements, dSae, dOut);
        if (dIn <= 0 || dSae <= 0 || dOut <= 0) throw InputError.Expected(file, "w_enc and w_dec", "positive dimensions", $"{CltFiles.Shape(wEnc)} and {CltFiles.Shape(wDec)}");
        bool skip = f.Contains("affine_skip_connection");
        int i = (int)dIn, s = (int)dSae, o = (int)dOut;
        var dict = new SparseDictionary(new SaeShape(i, s, o, ApplyBDecToInput: false, Skip: skip), new JumpReluActivation());
        var p = dict.P;
        CltFiles.Read(f, file, "w_enc", [i, s], p.WEnc);
        CltFiles.Read(f, file, "w_dec", [s, o], p.WDec);
        CltFiles.Read(f, file, "b_enc", [s], p.BEnc);
        CltFiles.Read(f, file, "b_dec", [o], p.BDec);
        if (skip) CltFiles.Read(f, file, "affine_skip_connection", [i, o], p.WSkip);   // x·A, as the release's tutorial
        var theta = new float[s];
        CltFiles.Read(f, file, "threshold", [s], theta);
        for (int k = 0; k < s; k++)
        {
            if (theta[k] < 0) throw InputError.Expected(file, $"tensor 'threshold' element {k}", "a JumpReLU threshold ≥ 0", theta[k]);
            p.LogThreshold[k] = SaeLensFormat.LogThreshold(theta[k]);
        }
        return dict;
    }

    static SaeLensConfig ReadConfig(string path, SparseDictionary dict)
    {
        var shape = dict.Shape;
        bool transcoder = shape.DIn != shape.DOut || shape.Skip;
        var cfg = new SaeLensConfig
        {
            Architecture = transcoder ? (shape.Skip ? "jumprelu_skip_transcoder" : "jumprelu_transcoder") : "jumprelu",
            DIn = shape.DIn, DSae = shape.DSae, DOut = shape.DOut, ApplyBDecToInput = false, NormalizeActivations = "none",
            Dtype = "float32", ContextSize = 1024, PrependBos = true,
        };
        if (!File.Exists(path)) return cfg;
        var root = SaeLensFormat.ReadJsonObject(path);
        string? Text(string field)
        {
            if (!root.TryGetPropertyValue(field, out var v) || v is null) return null;
            return v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw InputError.Expected(path, $"field '{field}'", "a string", v.GetValueKind());
        }
        if (Text("model_name") is { } model) cfg = cfg with { ModelName = model };
        string? hookIn = Text("hf_hook_point_in"), hookOut = Text("hf_hook_point_out");
        if (hookIn is not null && HookFromModule(hookIn) is { } tlIn)
            cfg = cfg with { HookName = tlIn, HookLayer = SaeLensFormat.LayerOf(tlIn) ?? 0, ReshapeActivations = ReshapeFor(tlIn) };
        if (hookOut is not null && hookOut != hookIn && HookFromModule(hookOut) is { } tlOut) cfg = cfg with { HookNameOut = tlOut };
        if (hookIn is not null && cfg.HookName.Length == 0)
            cfg = cfg with { HookLayer = LayerOfModule(hookIn) ?? 0 };
        return cfg;
    }

    static string ReshapeFor(string hook) => hook.EndsWith(".attn.hook_z", StringComparison.Ordinal) ? "hook_z" : "none";

    /// <summary>
    /// The TransformerLens hook of a Hugging Face decoder-layer module point (<c>model.layers.5.output</c> →
    /// <c>blocks.5.hook_resid_post</c>; <c>…pre_feedforward_layernorm.output</c> → <c>blocks.5.mlp.hook_in</c> (the MLP's input, after the norm's weight);
    /// <c>…post_feedforward_layernorm.output</c> → <c>blocks.5.hook_mlp_out</c>; <c>…post_attention_layernorm.output</c> →
    /// <c>blocks.5.hook_attn_out</c>; <c>…self_attn.o_proj.input</c> → <c>blocks.5.attn.hook_z</c>; <c>model.layers.5.input</c> →
    /// <c>blocks.5.hook_resid_pre</c>), or null when there is none. Gemma 3's multimodal prefix
    /// (<c>model.language_model.layers</c>) is taken too.
    /// </summary>
    public static string? HookFromModule(string module)
    {
        var m = ModulePoint().Match(module);
        if (!m.Success || !int.TryParse(m.Groups["layer"].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int l)) return null;
        return (m.Groups["module"].Value, m.Groups["end"].Value) switch
        {
            ("", "output") => HookNames.ResidPost(l),
            ("", "input") => $"blocks.{l}.hook_resid_pre",
            ("pre_feedforward_layernorm", "output") => HookNames.MlpIn(l),
            ("pre_feedforward_layernorm", "input") => $"blocks.{l}.hook_resid_mid",
            ("post_feedforward_layernorm", "output") => HookNames.MlpOut(l),
            ("post_attention_layernorm", "output") => $"blocks.{l}.hook_attn_out",
            ("self_attn.o_proj", "input") => HookNames.Z(l),
            _ => null,
        };
    }

    static int? LayerOfModule(string module) =>
        ModulePoint().Match(module) is { Success: true } m && int.TryParse(m.Groups["layer"].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int l) ? l : null;

    [GeneratedRegex(@"^(?:model\.(?:language_model\.)?|language_model\.model\.)?layers\.(?<layer>[0-9]{1,6})(?:\.(?<module>[a-z_.]+?))?\.(?<end>output|input)$")]
    private static partial Regex ModulePoint();
}
