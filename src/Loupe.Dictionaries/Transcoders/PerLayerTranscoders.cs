using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Loupe.Dictionaries.Sae;

using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>
/// One transcoder per layer, each reading that layer's MLP input and writing its MLP output — the
/// replacement model of circuit-tracer's per-layer transcoders (e.g. Gemma Scope or SAELens transcoders).
/// </summary>
public sealed partial class PerLayerTranscoders : IMlpReplacement
{
    readonly SparseDictionary[] _layers;
    readonly string[] _inputHooks, _outputHooks;

    /// <param name="layers">The transcoder of each layer 0…L−1, in order.</param>
    /// <param name="inputHooks">The hook each reads (the MLP input of its layer).</param>
    /// <param name="outputHooks">The hook each replaces (the MLP output of its layer).</param>
    /// <param name="source">Where they came from.</param>
    /// <exception cref="ArgumentException">The lists differ in length, are empty, or the widths differ between layers.</exception>
    public PerLayerTranscoders(IReadOnlyList<SparseDictionary> layers, IReadOnlyList<string> inputHooks, IReadOnlyList<string> outputHooks, string source)
    {
        if (layers.Count == 0) throw new ArgumentException("no transcoders given", nameof(layers));
        if (inputHooks.Count != layers.Count || outputHooks.Count != layers.Count)
            throw new ArgumentException($"{layers.Count} transcoders but {inputHooks.Count} input and {outputHooks.Count} output hooks", nameof(inputHooks));
        for (int l = 1; l < layers.Count; l++)
            if (layers[l].Shape.DIn != layers[0].Shape.DIn || layers[l].Shape.DOut != layers[0].Shape.DOut)
                throw new ArgumentException($"the transcoder of layer {l} maps {layers[l].Shape.DIn} → {layers[l].Shape.DOut}, layer 0's {layers[0].Shape.DIn} → {layers[0].Shape.DOut}", nameof(layers));
        _layers = [.. layers];
        _inputHooks = [.. inputHooks];
        _outputHooks = [.. outputHooks];
        Source = source;
        Fingerprint = ComputeFingerprint(_layers);
    }

    /// <summary>
    /// Loads SAELens or EleutherAI sparsify transcoder folders (or SAEs on <c>blocks.ℓ.hook_resid_pre/mid/post</c>, which read and rewrite the residual stream), one per layer: either <paramref name="path"/> holds sub-folders
    /// <c>layer_0</c>, <c>layer_1</c>, … (or any names ending in the layer number, or sparsify's hookpoints <c>layers.ℓ.mlp</c>), each a SAELens
    /// or sparsify folder, or <paramref name="path"/> lists folders separated by commas, in layer order.
    /// Each must read the MLP's input <c>blocks.ℓ.mlp.hook_in</c>, <c>blocks.ℓ.ln2.hook_normalized</c> (before an RMSNorm's
    /// weight, as in TransformerLens) or the stream before ln2 (<c>blocks.ℓ.hook_resid_mid</c>, or TransformerLens's
    /// <c>blocks.ℓ.hook_mlp_in</c>, a copy of it), and write <c>blocks.ℓ.hook_mlp_out</c> of its own layer ℓ, for ℓ = 0…<paramref name="layers"/>−1.
    /// </summary>
    /// <exception cref="InputError">A folder is missing, a layer has no transcoder, a transcoder reads or writes another hook, or the files are malformed.</exception>
    public static PerLayerTranscoders LoadSaeLens(string path, int layers)
    {
        var folders = FoldersByLayer(path, layers);
        var dicts = new SparseDictionary[layers];
        var inputs = new string[layers];
        var outputs = new string[layers];
        for (int l = 0; l < layers; l++)
        {
            var (dict, cfg) = SparsifyFormat.IsSparsifyFolder(folders[l]) ? SparsifyFormat.Load(folders[l]) : SaeLensFormat.Load(folders[l]);
            string residual = $"blocks.{l}.hook_resid_post";
            bool onStream = cfg.HookName == $"blocks.{l}.hook_resid_pre" || cfg.HookName == $"blocks.{l}.hook_resid_mid" || cfg.HookName == residual;
            if (onStream && cfg.HookNameOut.Length == 0 && dict.Shape.DIn == dict.Shape.DOut && !dict.Shape.Skip)
            {
                // An SAE on the residual stream: it reads and rewrites the same point.
                dicts[l] = dict;
                inputs[l] = outputs[l] = cfg.HookName;
                continue;
            }
            string expectIn = HookNames.MlpIn(l), expectOut = $"blocks.{l}.hook_mlp_out";
            string hookIn = cfg.HookName.Length > 0 ? cfg.HookName : expectIn;
            string hookOut = cfg.HookNameOut.Length > 0 ? cfg.HookNameOut : expectOut;
            // TransformerLens's hook_mlp_in is the stream before ln2 (its block hooks resid_mid.clone() there; so does Loupe's).
            if (hookIn != expectIn && hookIn != $"blocks.{l}.ln2.hook_normalized" && hookIn != HookNames.ResidMid(l) && hookIn != HookNames.HookMlpIn(l))
                throw new InputError($"{folders[l]}: the dictionary for layer {l} reads '{hookIn}'; a replacement model needs a transcoder that reads the MLP input '{expectIn}', 'blocks.{l}.ln2.hook_normalized', '{HookNames.ResidMid(l)}' or '{HookNames.HookMlpIn(l)}' (or an SAE on '{residual}')");
            if (hookOut != expectOut)
                throw new InputError($"{folders[l]}: the transcoder for layer {l} writes '{hookOut}'; a replacement model needs one that writes '{expectOut}'");
            if (dict.Shape.ApplyBDecToInput)
                throw new InputError($"{folders[l]}: apply_b_dec_to_input is true; a transcoder's input and output differ, so it must be false");
            dicts[l] = dict;
            inputs[l] = hookIn;
            outputs[l] = expectOut;
        }
        return new PerLayerTranscoders(dicts, inputs, outputs, Path.GetFullPath(path.Split(',')[0].Trim()));
    }

    static string[] FoldersByLayer(string path, int layers)
    {
        if (path.Contains(','))
        {
            var list = path.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            if (list.Length != layers) throw new InputError($"--transcoders lists {list.Length} folders; the model has {layers} layers, one transcoder each");
            foreach (var f in list)
                if (!Directory.Exists(f)) throw new InputError($"transcoder folder not found: {Path.GetFullPath(f)}");
            return list;
        }
        if (!Directory.Exists(path)) throw new InputError($"transcoder folder not found: {Path.GetFullPath(path)}");
        var byLayer = new string?[layers];
        foreach (var dir in Directory.GetDirectories(path))
        {
            if (!File.Exists(Path.Combine(dir, SaeLensFormat.ConfigFile))) continue;
            // sparsify names a folder by its hookpoint (layers.ℓ.mlp); the others end in the layer number
            var m = TrailingNumber().Match(Path.GetFileName(dir));
            int? found = SparsifyFormat.IsSparsifyFolder(dir) && SparsifyFormat.LayerOfHookpoint(Path.GetFileName(dir)) is int hookpointLayer ? hookpointLayer
                : m.Success && int.TryParse(m.Groups[1].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int trailing) ? trailing : null;
            if (found is not int l) continue;
            if (l >= layers) throw new InputError($"{dir}: a transcoder for layer {l}, but the model has {layers} layers (0…{layers - 1})");
            if (byLayer[l] is not null) throw new InputError($"{path}: two transcoder folders for layer {l}: {byLayer[l]} and {dir}");
            byLayer[l] = dir;
        }
        var missing = Enumerable.Range(0, layers).Where(l => byLayer[l] is null).ToArray();
        if (missing.Length > 0)
            throw new InputError($"{Path.GetFullPath(path)}: no transcoder for layer{(missing.Length > 1 ? "s" : "")} {string.Join(", ", missing)} (expected sub-folders such as layer_{missing[0]} holding cfg.json and sae_weights.safetensors)");
        return byLayer!;
    }

    [GeneratedRegex(@"(\d+)$")]
    private static partial Regex TrailingNumber();

    static string ComputeFingerprint(SparseDictionary[] layers)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var d in layers)
        {
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{d.Architecture}:{d.Shape}\n"));
            foreach (var a in new[] { d.P.WEnc, d.P.BEnc, d.P.WDec, d.P.BDec, d.P.WSkip, d.P.LogThreshold })
                sha.AppendData(MemoryMarshal.AsBytes(a.AsSpan()));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }

    /// <summary>The transcoder of <paramref name="layer"/>.</summary>
    public SparseDictionary this[int layer] => _layers[layer];

    public int Layers => _layers.Length;
    public int DIn => _layers[0].Shape.DIn;
    public int DOut => _layers[0].Shape.DOut;
    public bool HasSkip => _layers.Any(d => d.Shape.Skip);

    /// <summary>Where the decoders go when the transcoders run on a device (<see cref="DeviceMlpReplacement.Upload"/>).</summary>
    public DeviceDecoders DecodersOnDevice { get; set; }
    public float[]? SkipWeights(int layer) => _layers[layer].Shape.Skip ? _layers[layer].P.WSkip : null;
    public string Fingerprint { get; }
    public string Source { get; }
    public int Features(int layer) => _layers[layer].Shape.DSae;
    public string InputHook(int layer) => _inputHooks[layer];
    public string OutputHook(int layer) => _outputHooks[layer];
    public int LastTarget(int layer) => layer;

    public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts)
    {
        var d = _layers[layer];
        var xIn = new float[rows * d.Shape.DIn];
        d.EncodePre(x, rows, xIn, pre);
        d.Activation.Forward(pre[..(rows * d.Shape.DSae)], acts, rows, d.Shape.DSae, training: false, d.P);
    }

    public void EncoderDirection(int layer, int feature, Span<float> into)
    {
        var d = _layers[layer];
        int dIn = d.Shape.DIn, dSae = d.Shape.DSae;
        for (int i = 0; i < dIn; i++) into[i] = d.P.WEnc[i * dSae + feature];
    }

    public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into)
    {
        if (targetLayer != layer) throw new ArgumentOutOfRangeException(nameof(targetLayer), $"a per-layer transcoder of layer {layer} writes only layer {layer}, not {targetLayer}");
        var d = _layers[layer];
        d.P.WDec.AsSpan(feature * d.Shape.DOut, d.Shape.DOut).CopyTo(into);
    }

    public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon) =>
        _layers[targetLayer].Decode(acts[targetLayer], inputs.Count > targetLayer ? inputs[targetLayer] : [], rows, recon);
}
