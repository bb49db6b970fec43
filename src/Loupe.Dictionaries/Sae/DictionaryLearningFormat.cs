// saprmarks/dictionary_learning's layout (the SAEs of Sparse Feature Circuits and of SAEBench's baselines): a trainer folder
// holding ae.pt — torch.save(ae.state_dict()), read without running its pickle — and config.json, whose "trainer" object
// names the class (dict_class), activation_dim, dict_size, k, layer, lm_name and submodule_name ("resid_post_layer_3").
// dictionary.py and trainers/{top_k,batch_top_k,matryoshka_batch_top_k}.py are the reference; per class (nn.Linear weights
// are out × in):
//   AutoEncoder             bias [d], encoder.weight [F, d], encoder.bias [F], decoder.weight [d, F]
//                           f = ReLU(encoder(x − bias)); x̂ = decoder(f) + bias                      → standard, b_dec on input
//   AutoEncoderNew          encoder.weight/bias, decoder.weight [d, F], decoder.bias [d]
//                           f = ReLU(encoder(x)); x̂ = decoder(f)                                    → standard, no b_dec on input
//   AutoEncoderTopK         encoder.*, decoder.weight, b_dec [d], k [] (int), threshold [] (unused by its default encode)
//                           f = top-k of ReLU(encoder(x − b_dec)); x̂ = decoder(f) + b_dec          → topk
//   BatchTopKSAE            as AutoEncoderTopK; its default encode is the inference one:
//                           post = ReLU(encoder(x − b_dec)); f = post · 1[post > threshold]          → batchtopk (threshold)
//   MatryoshkaBatchTopKSAE  W_enc [d, F], b_enc, W_dec [F, d], b_dec, k, threshold, group_sizes [G]
//                           as BatchTopKSAE; levels = cumulative group sizes                          → matryoshka_batchtopk
//   JumpReluAutoEncoder     W_enc [d, F], b_enc, W_dec [F, d], b_dec, threshold [F]
//                           pre = x·W_enc + b_enc; f = ReLU(pre · 1[pre > θ]) · ‖W_dec[i]‖; x̂ = (f / ‖W_dec[i]‖)·W_dec + b_dec
//                           → jumprelu with the decoder norms folded in: column i of W_enc, b_enc[i] and θ[i] times ‖W_dec[i]‖,
//                             row i of W_dec divided by it — the same latents and the same reconstruction.
//   GatedAutoEncoder        decoder_bias [d], encoder.weight [F, d], r_mag, gate_bias, mag_bias [F], decoder.weight [d, F]
//                           u = encoder(x − decoder_bias); f = 1[u + gate_bias > 0] · ReLU(exp(r_mag)·u + mag_bias);
//                           x̂ = decoder(f) + decoder_bias                                         → jumprelu (GatedSae.cs)
// Crosscoders are read by CrosscoderFiles (`loupe crosscoder`); here they are pointed there. Hooks come from submodule_name (resid_post/resid_out, mlp_out,
// attn_out, resid_pre, embed); without them, from the folder names: the Sparse Feature Circuits release has no config.json
// (resid_out_layer3/…), and SAELens's copies of it are named {layer}-{res|mlp|att}-sm.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Sae;

/// <summary>Loads SAEs saved by saprmarks/dictionary_learning (<c>ae.pt</c> + <c>config.json</c>).</summary>
public static partial class DictionaryLearningFormat
{
    /// <summary>The weights file of a dictionary_learning trainer folder.</summary>
    public const string WeightsFile = "ae.pt";

    /// <summary>The trainer's settings beside it.</summary>
    public const string ConfigFile = "config.json";

    /// <summary>The dictionary classes Loupe reads.</summary>
    public static readonly IReadOnlyList<string> Classes =
        ["AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder", "GatedAutoEncoder"];

    /// <summary>True when <paramref name="folder"/> holds a dictionary_learning <c>ae.pt</c>.</summary>
    public static bool IsDictionaryLearningFolder(string folder) => File.Exists(Path.Combine(folder, WeightsFile));

    /// <summary>Loads the dictionary in <paramref name="folder"/> (or the folder of an <c>ae.pt</c> path).</summary>
    /// <param name="folder">The trainer folder (ae.pt and, usually, config.json).</param>
    /// <param name="hookName">The hook it reads, overriding the one config.json or the folder's name gives (empty when neither does).</param>
    /// <exception cref="FileNotFoundException">ae.pt is missing.</exception>
    /// <exception cref="InputError">A class Loupe does not read, tensors that are missing, unexpected, misshapen or not finite,
    /// a config that disagrees with them; messages name the file and the field or tensor.</exception>
    public static (SparseDictionary Dictionary, SaeLensConfig Config) Load(string folder, string? hookName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        folder = Path.GetFullPath(folder);
        string weights = Path.Combine(folder, WeightsFile), cfgPath = Path.Combine(folder, ConfigFile);
        if (!File.Exists(weights)) throw new FileNotFoundException($"dictionary_learning weights not found: {weights}", weights);
        JsonObject? trainer = null;
        JsonObject? buffer = null;
        if (File.Exists(cfgPath))
        {
            var cfg = SaeLensFormat.ReadJsonObject(cfgPath);
            trainer = cfg["trainer"] as JsonObject ?? throw InputError.Expected(cfgPath, "field 'trainer'", "an object (dictionary_learning's trainer config)", cfg["trainer"]?.ToJsonString() ?? "nothing");
            buffer = cfg["buffer"] as JsonObject;
        }

        using var file = SaeLensFormat.OpenSafeTensors(weights);
        string dictClass = String(trainer, "dict_class", cfgPath) ?? Infer(file, weights);
        if (dictClass.Contains("CrossCoder", StringComparison.Ordinal)) throw Crosscoders.CrosscoderFiles.NotAnSae(folder);
        if (!Classes.Contains(dictClass))
            throw InputError.Expected(trainer is null ? weights : cfgPath, "dict_class",
                $"one of {string.Join(", ", Classes)}", dictClass);

        bool linear = dictClass is "AutoEncoder" or "AutoEncoderNew" or "AutoEncoderTopK" or "BatchTopKSAE" or "GatedAutoEncoder";
        long[] encoderShape = Shape(file, weights, linear ? "encoder.weight" : "W_enc");
        if (encoderShape.Length != 2) throw InputError.Expected(weights, $"tensor '{(linear ? "encoder.weight" : "W_enc")}'", "a matrix", CltFiles.Shape(encoderShape));
        int d = (int)Math.Min(linear ? encoderShape[1] : encoderShape[0], int.MaxValue), f = (int)Math.Min(linear ? encoderShape[0] : encoderShape[1], int.MaxValue);
        if (d < 1 || f < 1) throw InputError.Expected(weights, "the encoder", "at least one input and one latent", CltFiles.Shape(encoderShape));
        Check.Product(weights, "d_in × d_sae", Check.MaxArrayElements, d, f);
        ExpectInt(trainer, "activation_dim", d, cfgPath, weights);
        ExpectInt(trainer, "dict_size", f, cfgPath, weights);

        int k = 0;
        if (dictClass is "AutoEncoderTopK" or "BatchTopKSAE" or "MatryoshkaBatchTopKSAE")
        {
            k = file.Contains("k") ? ScalarInt(file, weights, "k") : (int)(Int(trainer, "k", cfgPath) ?? throw new InputError($"{weights}: tensor 'k' is missing (and {cfgPath} gives no k)"));
            if (k < 1 || k > f) throw InputError.Expected(weights, "k", $"between 1 and dict_size = {f}", k);
            ExpectInt(trainer, "k", k, cfgPath, weights);
        }
        int[] levels = [];
        if (dictClass == "MatryoshkaBatchTopKSAE") levels = Levels(file, weights, f);

        bool bDecOnInput = dictClass is not ("AutoEncoderNew" or "JumpReluAutoEncoder");
        SaeActivation activation = dictClass switch
        {
            "AutoEncoder" or "AutoEncoderNew" => new ReluActivation(),
            "AutoEncoderTopK" => new TopKActivation(k),
            "BatchTopKSAE" => new BatchTopKActivation(k),
            "MatryoshkaBatchTopKSAE" => new MatryoshkaBatchTopKActivation(k, levels),
            _ => new JumpReluActivation(),
        };
        var dict = new SparseDictionary(SaeShape.Sae(d, f, bDecOnInput), activation);
        ReadWeights(file, weights, dictClass, dict);

        // Empty when neither the config nor the folder names say (as for sparsify): the caller's --hook decides then.
        string hook = hookName ?? HookOf(String(trainer, "submodule_name", cfgPath), Path.GetFileName(folder), Path.GetFileName(Path.GetDirectoryName(folder))) ?? "";
        var config = new SaeLensConfig
        {
            Architecture = dictClass == "GatedAutoEncoder" ? "gated" : activation.Architecture, DIn = d, DSae = f, DOut = d, Dtype = "float32", ApplyBDecToInput = bDecOnInput,
            NormalizeActivations = "none", HookName = hook, HookLayer = SaeLensFormat.LayerOf(hook) ?? (int)(Int(trainer, "layer", cfgPath) ?? 0),
            ModelName = String(trainer, "lm_name", cfgPath) ?? "", ContextSize = (int)Math.Clamp(Int(buffer, "ctx_len", cfgPath) ?? 128, 1, int.MaxValue),
            PrependBos = true, K = k, MatryoshkaWidths = string.Join(",", levels),
        };
        return (dict, config);
    }

    // Only the tensors of the class, each of its shape; a class's other names (a training run's extras) are refused.
    static void ReadWeights(SafeTensorsFile file, string path, string dictClass, SparseDictionary dict)
    {
        var p = dict.P;
        int d = dict.Shape.DIn, f = dict.Shape.DSae;
        string[] names = dictClass switch
        {
            "AutoEncoder" => ["bias", "encoder.weight", "encoder.bias", "decoder.weight"],
            "AutoEncoderNew" => ["encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"],
            "AutoEncoderTopK" or "BatchTopKSAE" => ["encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"],
            "MatryoshkaBatchTopKSAE" => ["W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"],
            "GatedAutoEncoder" => ["decoder_bias", "encoder.weight", "r_mag", "gate_bias", "mag_bias", "decoder.weight"],
            _ => ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
        };
        if (file.Names.FirstOrDefault(n => !names.Contains(n)) is { } unknown)
            throw new InputError($"{path}: unexpected tensor '{unknown}' for a {dictClass}, which holds {string.Join(", ", names)}");

        if (names.Contains("W_enc"))
        {
            CltFiles.Read(file, path, "W_enc", [d, f], p.WEnc);
            CltFiles.Read(file, path, "b_enc", [f], p.BEnc);
            CltFiles.Read(file, path, "W_dec", [f, d], p.WDec);
            CltFiles.Read(file, path, "b_dec", [d], p.BDec);
        }
        else
        {
            var enc = new float[(long)f * d];
            CltFiles.Read(file, path, "encoder.weight", [f, d], enc);
            CltFiles.Transpose(enc, f, d).CopyTo(p.WEnc, 0);
            if (dictClass != "GatedAutoEncoder") CltFiles.Read(file, path, "encoder.bias", [f], p.BEnc);
            var dec = new float[(long)d * f];
            CltFiles.Read(file, path, "decoder.weight", [d, f], dec);
            CltFiles.Transpose(dec, d, f).CopyTo(p.WDec, 0);
            CltFiles.Read(file, path, dictClass switch { "AutoEncoder" => "bias", "AutoEncoderNew" => "decoder.bias", "GatedAutoEncoder" => "decoder_bias", _ => "b_dec" }, [d], p.BDec);
        }

        if (dictClass is "BatchTopKSAE" or "MatryoshkaBatchTopKSAE")
            p.Threshold[0] = ScalarFloat(file, path, "threshold");
        else if (dictClass == "GatedAutoEncoder")
        {
            float[] rMag = new float[f], gateBias = new float[f], magBias = new float[f];
            CltFiles.Read(file, path, "r_mag", [f], rMag);
            CltFiles.Read(file, path, "gate_bias", [f], gateBias);
            CltFiles.Read(file, path, "mag_bias", [f], magBias);
            GatedSae.FoldIntoJumpRelu(p, rMag, gateBias, magBias, path);
        }
        else if (dictClass == "JumpReluAutoEncoder")
        {
            var theta = new float[f];
            CltFiles.Read(file, path, "threshold", [f], theta);
            FoldDecoderNorms(p, theta, d, f);
            for (int i = 0; i < f; i++) p.LogThreshold[i] = SaeLensFormat.LogThreshold(theta[i]);
        }
    }

    /// <summary>
    /// JumpReluAutoEncoder scales latent i by n = ‖W_dec[i]‖ after the jump and divides by it before decoding; the same map
    /// with unscaled decoding multiplies column i of W_enc, b_enc[i] and θ[i] by n (the jump compares pre·n with θ·n) and
    /// divides row i of W_dec by n. A zero row (its latent decodes 0/0 there) becomes a latent that never fires.
    /// </summary>
    static void FoldDecoderNorms(SaeParameters p, float[] theta, int d, int f)
    {
        for (int i = 0; i < f; i++)
        {
            double sq = 0;
            for (int j = 0; j < d; j++) sq += (double)p.WDec[(long)i * d + j] * p.WDec[(long)i * d + j];
            float n = (float)Math.Sqrt(sq);
            if (n == 0)
            {
                for (int j = 0; j < d; j++) p.WEnc[(long)j * f + i] = 0;
                p.BEnc[i] = 0;
                theta[i] = 1;
                continue;
            }
            for (int j = 0; j < d; j++)
            {
                p.WEnc[(long)j * f + i] *= n;
                p.WDec[(long)i * d + j] /= n;
            }
            p.BEnc[i] *= n;
            theta[i] *= n;
        }
    }

    // The levels are the group sizes' running sums; they must end at dict_size (CheckWidths would append it), and the widths'
    // rules (positive, strictly increasing, an inner level) are the Matryoshka activation's own.
    static int[] Levels(SafeTensorsFile file, string path, int f)
    {
        if (!file.TryGetInfo("group_sizes", out var info) || info.Shape.Length != 1 || info.DType.IsFloatingPoint())
            throw new InputError($"{path}: tensor 'group_sizes' is missing or not a vector of integers (a MatryoshkaBatchTopKSAE has one)");
        var sizes = file.GetInt64("group_sizes");
        var widths = new long[sizes.Length];
        long total = 0;
        for (int i = 0; i < sizes.Length; i++)
        {
            if (sizes[i] < 1 || sizes[i] > f - total) break;
            widths[i] = total += sizes[i];
        }
        if (total != f || widths.Contains(0))
            throw InputError.Expected(path, "tensor 'group_sizes'", $"positive sizes summing to dict_size = {f}", $"[{string.Join(", ", sizes)}]");
        return MatryoshkaBatchTopKActivation.CheckWidths(widths, f, path, "tensor 'group_sizes' (as cumulative widths)");
    }

    // Which class a config-less ae.pt is, from its tensor names; TopK and BatchTopK hold the same ones.
    static string Infer(SafeTensorsFile file, string path)
    {
        if (file.Names.Any(n => n.EndsWith("encoder.weight", StringComparison.Ordinal) && file.GetInfo(n).Shape.Length == 3)) throw Crosscoders.CrosscoderFiles.NotAnSae(path);
        if (file.Contains("group_sizes")) return "MatryoshkaBatchTopKSAE";
        if (file.Contains("r_mag")) return "GatedAutoEncoder";
        if (file.Contains("W_enc") && file.Contains("threshold")) return "JumpReluAutoEncoder";
        if (file.Contains("decoder.bias")) return "AutoEncoderNew";
        if (file.Contains("bias") && file.Contains("encoder.weight")) return "AutoEncoder";
        if (file.Contains("k") && file.Contains("encoder.weight"))
            throw new InputError($"{path}: an AutoEncoderTopK or a BatchTopKSAE (they hold the same tensors, and encode differently); " +
                                 $"the {ConfigFile} beside it, whose trainer.dict_class says which, is missing");
        throw new InputError($"{path}: not a dictionary_learning state dict Loupe knows (tensors {string.Join(", ", file.Names.Take(8))}); " +
                             $"it reads {string.Join(", ", Classes)}");
    }

    /// <summary>The TransformerLens hook of a dictionary_learning submodule name (or of the folder names around ae.pt), or null.</summary>
    public static string? HookOf(params string?[] names)
    {
        foreach (var name in names)
        {
            if (name is null) continue;
            if (name is "embed" or "embed_layer" || name.StartsWith("e-res-", StringComparison.Ordinal)) return HookNames.Embed;
            var m = Submodule().Match(name);
            if (!m.Success) m = ReleaseFolder().Match(name);
            if (!m.Success || !int.TryParse(m.Groups["layer"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int l)) continue;
            return m.Groups["kind"].Value switch
            {
                "resid_post" or "resid_out" or "resid" or "res" => HookNames.ResidPost(l),
                "resid_pre" => HookNames.ResidPre(l),
                "mlp_out" or "mlp" => HookNames.MlpOut(l),
                _ => HookNames.AttnOut(l),
            };
        }
        return null;
    }

    [GeneratedRegex(@"^(?<kind>resid_post|resid_out|resid_pre|resid|mlp_out|mlp|attn_out|attn)_?layer_?(?<layer>[0-9]{1,6})$")]
    private static partial Regex Submodule();

    // The Sparse Feature Circuits dictionaries as SAELens's registry lists them (ctigges/pythia-70m-deduped__*-sm_processed):
    // {layer}-{res|mlp|att}-{size}, and e-res-{size} for the embedding.
    [GeneratedRegex(@"^(?<layer>[0-9]{1,6})-(?<kind>res|mlp|att)-[a-z0-9]+$")]
    private static partial Regex ReleaseFolder();

    static long[] Shape(SafeTensorsFile file, string path, string name) =>
        file.TryGetInfo(name, out var info) ? info.Shape
            : throw new InputError($"{path}: tensor '{name}' is missing; the file holds {string.Join(", ", file.Names.Take(12))}");

    internal static int ScalarInt(SafeTensorsFile file, string path, string name)
    {
        var info = file.GetInfo(name);
        if (info.ElementCount != 1 || info.DType.IsFloatingPoint() || info.DType is DType.F8_E4M3 or DType.F8_E5M2 or DType.U64)
            throw InputError.Expected(path, $"tensor '{name}'", "one integer", $"{info.DType} {info.ShapeString}");
        long v = file.GetInt64(name)[0];
        return v is >= int.MinValue and <= int.MaxValue ? (int)v : throw InputError.Expected(path, $"tensor '{name}'", "a 32-bit integer", v);
    }

    static float ScalarFloat(SafeTensorsFile file, string path, string name)
    {
        if (!file.TryGetInfo(name, out var info)) throw new InputError($"{path}: tensor '{name}' is missing");
        if (info.ElementCount != 1 || !info.DType.IsFloatingPoint())
            throw InputError.Expected(path, $"tensor '{name}'", "one float", $"{info.DType} {info.ShapeString}");
        float v = file.GetFloat32(name).Span[0];
        CltFiles.CheckValues([v], path, name, 0);
        return v;
    }

    static string? String(JsonObject? o, string field, string path)
    {
        if (o is null || !o.TryGetPropertyValue(field, out var v) || v is null) return null;
        return v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw InputError.Expected(path, $"field 'trainer.{field}'", "a string", v.ToJsonString());
    }

    // An integer, also when written as a float (Python configs hold k = 32.0 after arithmetic).
    internal static long? Int(JsonObject? o, string field, string path)
    {
        if (o is null || !o.TryGetPropertyValue(field, out var v) || v is null) return null;
        if (v.GetValueKind() == JsonValueKind.Number)
        {
            if (v.AsValue().TryGetValue(out long n)) return n;
            if (v.AsValue().TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < 1e15) return (long)d;
        }
        throw InputError.Expected(path, $"field '{field}'", "an integer", v.ToJsonString());
    }

    static void ExpectInt(JsonObject? trainer, string field, long fromWeights, string cfgPath, string weights)
    {
        if (Int(trainer, field, cfgPath) is { } n && n != fromWeights)
            throw new InputError($"{cfgPath}: trainer.{field} is {n}, but {weights} holds {fromWeights}; the config and the weights disagree");
    }
}
