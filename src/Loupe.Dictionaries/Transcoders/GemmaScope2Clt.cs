// Gemma Scope 2 cross-layer transcoders (google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}, for Gemma 3):
//   clt/width_{W}_l0_{small|medium|big}[_affine]/params_layer_{ℓ}.safetensors, one file per source layer ℓ:
//     w_enc [d_in, d_sae]   b_enc [d_sae]   threshold [d_sae] (θ itself, JumpReLU)
//     w_dec [d_sae, L, d_out]   slot t: what a feature of ℓ writes to layer t (slots t < ℓ are not used)
//     b_dec [d_out]             the bias of layer ℓ's output
//     affine_skip_connection [d_in, d_out]   (…_affine) x[ℓ]·A added to layer ℓ's output
// circuit-tracer (load_gemma_scope_2_clt) reads them as a CLT with W_dec[ℓ] = w_dec[:, ℓ:, :], JumpReLU and the hooks
// hook_resid_mid → hook_mlp_out, and so does Loupe — with the decoders left mapped in the files (they are L times a
// per-layer transcoder's and, unlike circuit-tracer's own CLT files, include the unused slots).
using System.Text.Json;
using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>Loads Gemma Scope 2 cross-layer transcoders (see the file header) as a <see cref="MappedCrossLayerTranscoder"/>.</summary>
public static class GemmaScope2Clt
{
    /// <summary>The hook each layer's features read unless a config says otherwise (circuit-tracer's default for these files).</summary>
    public const string DefaultInputHook = "blocks.{layer}.hook_resid_mid";

    /// <summary>The hook each layer's reconstruction replaces.</summary>
    public const string DefaultOutputHook = "blocks.{layer}.hook_mlp_out";

    /// <summary>The file of source layer <paramref name="layer"/>.</summary>
    public static string LayerFile(int layer) => $"params_layer_{layer}.safetensors";

    /// <summary>True when <paramref name="folder"/> holds <c>params_layer_0.safetensors</c>.</summary>
    public static bool IsFolder(string folder) => File.Exists(Path.Combine(folder, LayerFile(0)));

    /// <summary>The layer files of a folder, <c>params_layer_0…L−1.safetensors</c>.</summary>
    /// <exception cref="InputError">The files are not numbered 0…L−1 without gaps, or the folder is a crosscoder's.</exception>
    public static string[] LayerFiles(string folder)
    {
        int count = Directory.GetFiles(folder, "params_layer_*.safetensors").Length, layers = 0;
        while (File.Exists(Path.Combine(folder, LayerFile(layers)))) layers++;
        if (layers == 0 || layers != count)
            throw new InputError($"{folder}: holds {count} params_layer_*.safetensors files but layers 0…{layers - 1} are consecutive; expected one per layer from 0");
        RefuseCrosscoder(folder);
        return [.. Enumerable.Range(0, layers).Select(l => Path.Combine(folder, LayerFile(l)))];
    }

    // Gemma Scope 2's crosscoders share the file naming (params_layer_ℓ.safetensors) but not the meaning.
    static void RefuseCrosscoder(string folder)
    {
        string config = Path.Combine(folder, GemmaScope2Format.ConfigFile);
        bool crosscoder = Path.GetFullPath(folder).Split(Path.DirectorySeparatorChar).Any(p => p.StartsWith("crosscoder", StringComparison.OrdinalIgnoreCase));
        if (!crosscoder && File.Exists(config))
        {
            var root = SaeLensFormat.ReadJsonObject(config);
            crosscoder = root["type"] is { } type && type.GetValueKind() == JsonValueKind.String && type.GetValue<string>().Contains("crosscoder", StringComparison.OrdinalIgnoreCase);
        }
        if (crosscoder)
            throw new InputError($"{folder}: a Gemma Scope 2 crosscoder (its params_layer_ℓ files share one decoder over a few layers); Loupe reads Gemma Scope 2 cross-layer transcoders (clt/…), not crosscoders");
    }

    /// <summary>
    /// Loads a circuit-tracer <c>config.yaml</c> whose <c>model_kind</c> is <c>cross_layer_transcoder</c> and whose
    /// <c>transcoders:</c> list names one Gemma Scope 2 layer file per layer (local, or <c>hf://</c> resolved by
    /// <paramref name="resolveHub"/>); its <c>feature_input_hook</c> / <c>feature_output_hook</c> name the hooks.
    /// </summary>
    /// <exception cref="InputError">As <see cref="Load"/>, and as the per-layer lists (an entry missing, not cached, outside the folder).</exception>
    public static MappedCrossLayerTranscoder LoadListed(string configPath, Func<(string Repo, string Path, string Revision), string>? resolveHub = null,
        bool entriesMayLeaveFolder = true)
    {
        if (!File.Exists(configPath)) throw new InputError($"transcoder config not found: {Path.GetFullPath(configPath)}");
        var yaml = CircuitTracerYaml.Read(configPath);
        if (yaml.Transcoders is null) throw new InputError($"{configPath}: has no 'transcoders:' list (one file per layer)");
        var (input, output) = ListedHooks(yaml);
        return Load(CircuitTracerTranscoders.ResolveListed(yaml, resolveHub, entriesMayLeaveFolder), Path.GetFullPath(configPath), input, output);
    }

    /// <summary>A config's <c>feature_input_hook</c> / <c>feature_output_hook</c> as Loupe hook patterns, these files' defaults where absent.</summary>
    internal static (string Input, string Output) ListedHooks(CircuitTracerYaml yaml)
    {
        var (input, output, _, _) = CircuitTracerTranscoders.Settings(yaml, null, null);
        return (yaml["feature_input_hook"] is null ? DefaultInputHook : input, yaml["feature_output_hook"] is null ? DefaultOutputHook : output);
    }

    /// <summary>
    /// Loads the layer files (layer ℓ = <paramref name="files"/>[ℓ]): encoders, biases, thresholds and skip paths read and
    /// checked, decoders mapped (checked when first read). <paramref name="source"/> names it in messages and artifacts.
    /// </summary>
    /// <exception cref="InputError">A tensor is missing, of another shape or not finite; θ is negative; the files disagree on
    /// d_in, d_sae or d_out, on the layer count (w_dec's second axis) or on having a skip path. Messages name file and tensor.</exception>
    public static MappedCrossLayerTranscoder Load(IReadOnlyList<string> files, string source, string? inputHookPattern = null, string? outputHookPattern = null)
    {
        ArgumentNullException.ThrowIfNull(files);
        if (files.Count == 0) throw new InputError($"{source}: no params_layer_ℓ.safetensors files");
        int L = files.Count;
        CltShape shape;
        bool skip;
        using (var f0 = CltFiles.Open(files[0]))
        {
            long[] Dims(string name) => f0.TryGetInfo(name, out var i) ? i.Shape
                : throw new InputError($"{files[0]}: tensor '{name}' is missing; a Gemma Scope 2 CLT layer file holds w_enc, w_dec, b_enc, b_dec, threshold (and affine_skip_connection); the file holds {string.Join(", ", f0.Names.Take(12))}");
            long[] wEnc = Dims("w_enc"), wDec = Dims("w_dec");
            if (wEnc.Length != 2) throw InputError.Expected(files[0], "tensor 'w_enc'", "[d_in, d_sae]", CltFiles.Shape(wEnc));
            if (wDec.Length != 3 || wDec[0] != wEnc[1])
                throw InputError.Expected(files[0], "tensor 'w_dec'", $"[d_sae = {wEnc[1]}, n_layers, d_out] (a cross-layer transcoder's decoder)", CltFiles.Shape(wDec));
            if (wDec[1] != L)
                throw InputError.Expected(files[0], "tensor 'w_dec'", $"one decoder slot per layer: [{wDec[0]}, {L}, {wDec[2]}] for the {L} layer files", CltFiles.Shape(wDec));
            Check.Product(files[0], "w_enc [d_in, d_sae]", Check.MaxArrayElements, wEnc[0], wEnc[1]);
            if (wEnc[0] <= 0 || wEnc[1] <= 0 || wDec[2] <= 0 || wEnc[0] > int.MaxValue || wDec[2] > int.MaxValue)
                throw InputError.Expected(files[0], "w_enc and w_dec", "positive dimensions", $"{CltFiles.Shape(wEnc)} and {CltFiles.Shape(wDec)}");
            shape = new CltShape(L, (int)wEnc[0], (int)wEnc[1], (int)wDec[2]);
            skip = f0.Contains("affine_skip_connection");
        }
        if (skip) Check.Product(files[0], "affine_skip_connection [d_in, d_out]", Check.MaxArrayElements, shape.DIn, shape.DOut);
        var clt = new CrossLayerTranscoder(shape, new JumpReluActivation(), inputHookPattern ?? DefaultInputHook, outputHookPattern ?? DefaultOutputHook, source, decoders: false);
        var skips = skip ? new float[L][] : null;
        var theta = new float[shape.DSae];
        for (int l = 0; l < L; l++)
        {
            string file = files[l];
            using var f = CltFiles.Open(file);
            CltFiles.Read(f, file, "w_enc", [shape.DIn, shape.DSae], clt.P.WEnc[l]);   // x·w_enc: Loupe's orientation
            CltFiles.Read(f, file, "b_enc", [shape.DSae], clt.P.BEnc[l]);
            CltFiles.Read(f, file, "b_dec", [shape.DOut], clt.P.BDec[l]);
            CltFiles.Read(f, file, "threshold", [shape.DSae], theta);
            for (int i = 0; i < theta.Length; i++)
            {
                if (theta[i] < 0) throw InputError.Expected(file, $"tensor 'threshold' element {i}", "a JumpReLU threshold ≥ 0", theta[i]);
                clt.P.Act[l].LogThreshold[i] = SaeLensFormat.LogThreshold(theta[i]);
            }
            if (f.Contains("affine_skip_connection") != skip)
                throw new InputError($"{file}: {(skip ? "has no" : "has an")} affine_skip_connection where {files[0]} {(skip ? "has one" : "has none")}; every layer of a CLT has a skip path or none does");
            if (skip) CltFiles.Read(f, file, "affine_skip_connection", [shape.DIn, shape.DOut], skips![l] = new float[shape.DIn * shape.DOut]);
        }
        var decoders = MappedCltDecoders.Open(shape, [.. files.Select(file => (file, "w_dec"))], allTargets: true);
        return new MappedCrossLayerTranscoder(clt, decoders, skips);
    }
}
