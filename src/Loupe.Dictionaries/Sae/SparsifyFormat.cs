// EleutherAI's sparsify (formerly "sae") layout: one folder per hookpoint, named by the Hugging Face module it reads
// ("layers.10", "layers.10.mlp", "embed_tokens", …), holding cfg.json + sae.safetensors; the repository root may hold
// the run's config.json (its "model"). sparsify/sparse_coder.py and sparsify/fused_encoder.py are the reference.
//
// cfg.json: d_in, num_latents (0: d_in × expansion_factor), k, activation ("topk"; "groupmax" is refused), transcode,
// skip_connection, normalize_decoder and multi_topk (training only), signed / embed_skip / gram_lookup (refused when
// true: Loupe has no such encoder). Missing fields take sparsify's defaults (expansion_factor 32, k 32).
// sae.safetensors (any float dtype):
//   encoder.weight [d_sae, d_in]   encoder.bias [d_sae]     (nn.Linear: out × in)
//   W_dec          [d_sae, d_in]   b_dec        [d_in]
//   W_skip         [d_in, d_in]    skip_connection only; applied as x·W_skipᵀ (out × in)
// Encoding (sparsify's): x_in = x − b_dec unless transcode; pre = ReLU(x_in·encoder.weightᵀ + encoder.bias); the k largest
// of pre kept — Loupe's TopK exactly (its ReLU after the selection gives the same values). Decoding: Σ acts·W_dec + b_dec
// (+ x·W_skipᵀ). A transcoder's output has the input's width. Hooks, from the folder name: layers.N → blocks.N.hook_resid_post
// (the block's output), layers.N.mlp → blocks.N.hook_mlp_out (a transcoder: blocks.N.mlp.hook_in → blocks.N.hook_mlp_out),
// layers.N.self_attn → blocks.N.hook_attn_out, embed_tokens → hook_embed; the usual model prefixes (model., gpt_neox.,
// transformer.h) are taken. Another name leaves the hook for the caller (--hook).
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Sae;

/// <summary>Loads SAEs and transcoders saved by EleutherAI's sparsify (<c>cfg.json</c> + <c>sae.safetensors</c>).</summary>
public static partial class SparsifyFormat
{
    /// <summary>The weights file of a sparsify folder.</summary>
    public const string WeightsFile = "sae.safetensors";

    /// <summary>The settings file beside it (the same name as SAELens's, hence the weights file decides).</summary>
    public const string ConfigFile = "cfg.json";

    /// <summary>True when <paramref name="folder"/> holds a sparsify dictionary: <c>sae.safetensors</c> and no SAELens weights.</summary>
    public static bool IsSparsifyFolder(string folder) =>
        File.Exists(Path.Combine(folder, WeightsFile)) && !File.Exists(Path.Combine(folder, SaeLensFormat.WeightsFile));

    /// <summary>Loads the sparsify dictionary in <paramref name="folder"/>.</summary>
    /// <param name="folder">The hookpoint's folder (cfg.json + sae.safetensors).</param>
    /// <param name="hookName">The hook it reads, overriding the one the folder's name gives (needed when it gives none).</param>
    /// <returns>The dictionary (TopK) and its config in SAELens terms.</returns>
    /// <exception cref="FileNotFoundException">cfg.json or sae.safetensors is missing.</exception>
    /// <exception cref="InputError">
    /// A field is missing, mistyped or out of range, or names an encoder Loupe does not have (groupmax, signed, embed_skip,
    /// gram_lookup); a tensor is missing, unexpected, of another shape or not finite. Messages name the file and field or tensor.
    /// </exception>
    public static (SparseDictionary Dictionary, SaeLensConfig Config) Load(string folder, string? hookName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        folder = Path.GetFullPath(folder);
        string cfgPath = Path.Combine(folder, ConfigFile), weights = Path.Combine(folder, WeightsFile);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"sparsify config not found: {cfgPath}", cfgPath);
        if (!File.Exists(weights)) throw new FileNotFoundException($"sparsify weights not found: {weights}", weights);
        var cfg = SaeLensFormat.ReadJsonObject(cfgPath);

        long Int(string field, long fallback, long min)
        {
            if (!cfg.TryGetPropertyValue(field, out var v) || v is null) return fallback;
            if (v.GetValueKind() != JsonValueKind.Number || !v.AsValue().TryGetValue(out long n) || n < min)
                throw InputError.Expected(cfgPath, $"field '{field}'", $"an integer ≥ {min}", v.ToJsonString());
            return n;
        }
        bool Flag(string field)
        {
            if (!cfg.TryGetPropertyValue(field, out var v) || v is null) return false;
            return v.GetValueKind() switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw InputError.Expected(cfgPath, $"field '{field}'", "true or false", v.ToJsonString()),
            };
        }

        if (cfg["d_in"] is null) throw new InputError($"{cfgPath}: required field 'd_in' is missing or null (sparsify writes it beside its SparseCoderConfig)");
        long dIn = Int("d_in", 0, 1), latents = Int("num_latents", 0, 0), expansion = Int("expansion_factor", 32, 1);
        long dSae = latents > 0 ? latents : dIn * expansion;
        Check.Product(cfgPath, "d_in × d_sae", Check.MaxArrayElements, dIn, dSae);
        long k = Int("k", 32, 1);
        if (k > dSae) throw InputError.Expected(cfgPath, "field 'k'", $"at most d_sae = {dSae}", k);
        string activation = cfg["activation"] is JsonNode a
            ? (a.GetValueKind() == JsonValueKind.String ? a.GetValue<string>() : throw InputError.Expected(cfgPath, "field 'activation'", "a string", a.ToJsonString()))
            : "topk";
        if (activation != "topk")
            throw InputError.Expected(cfgPath, "field 'activation'", "topk (sparsify's groupmax keeps the largest latent of each of k groups, an encoder Loupe does not have)", activation);
        foreach (var (field, what) in new[] { ("signed", "signed latents"), ("embed_skip", "a skip connection from the embeddings"), ("gram_lookup", "an n-gram lookup table subtracted from the target") })
            if (Flag(field)) throw new InputError($"{cfgPath}: field '{field}' is true: {what} is not supported");
        bool transcode = Flag("transcode"), skip = Flag("skip_connection");
        if (skip && !transcode)
            throw new InputError($"{cfgPath}: skip_connection is true on an autoencoder (transcode false); Loupe's skip connections belong to transcoders");

        int i = (int)dIn, s = (int)dSae;
        var shape = transcode ? SaeShape.Transcoder(i, s, i, skip) : SaeShape.Sae(i, s);
        var dict = new SparseDictionary(shape, new TopKActivation((int)k));
        ReadWeights(weights, dict, skip);

        string name = Path.GetFileName(folder);
        var (hookIn, hookOut) = HooksOf(name, transcode);
        if (hookName is not null) (hookIn, hookOut) = (hookName, transcode ? hookOut : null);
        string hook = hookIn ?? "";
        var config = new SaeLensConfig
        {
            Architecture = transcode ? (skip ? "topk_skip_transcoder" : "topk_transcoder") : "topk",
            DIn = i, DSae = s, DOut = i, Dtype = "float32", ApplyBDecToInput = !transcode, NormalizeActivations = "none",
            HookName = hook, HookLayer = SaeLensFormat.LayerOf(hook) ?? LayerOfHookpoint(name) ?? 0, HookNameOut = transcode ? hookOut ?? "" : "",
            ModelName = ModelOf(Path.GetDirectoryName(folder)), ContextSize = 2048, PrependBos = true, K = (int)k,
        };
        return (dict, config);
    }

    // Every tensor by name and shape, either of sparsify's spellings; nothing unknown.
    static void ReadWeights(string path, SparseDictionary dict, bool skip)
    {
        var (dIn, dSae) = (dict.Shape.DIn, dict.Shape.DSae);
        var p = dict.P;
        using var f = CltFiles.Open(path);
        var known = new HashSet<string>(StringComparer.Ordinal) { "encoder.weight", "W_enc", "encoder.bias", "b_enc", "W_dec", "decoder.weight", "b_dec", "decoder.bias", "W_skip" };
        if (f.Names.FirstOrDefault(n => !known.Contains(n)) is { } unknown)
            throw new InputError($"{path}: unexpected tensor '{unknown}'; a sparsify sae.safetensors holds encoder.weight, encoder.bias, W_dec, b_dec (and W_skip)");
        string Either(string a, string b) => f.Contains(a) ? a : f.Contains(b) ? b
            : throw new InputError($"{path}: tensor '{a}' is missing; the file holds {string.Join(", ", f.Names.Take(12))}");

        // encoder.weight is nn.Linear's [d_sae, d_in]; Loupe keeps W_enc [d_in, d_sae]
        if (Either("encoder.weight", "W_enc") == "W_enc") CltFiles.Read(f, path, "W_enc", [dIn, dSae], p.WEnc);
        else ReadTransposed(f, path, "encoder.weight", dSae, dIn, p.WEnc);
        if (f.Contains("encoder.bias")) CltFiles.Read(f, path, "encoder.bias", [dSae], p.BEnc);
        else if (f.Contains("b_enc")) CltFiles.Read(f, path, "b_enc", [dSae], p.BEnc);       // absent: zeros, as sparsify initialises it
        // W_dec is [d_sae, d_in]; an nn.Linear decoder's weight is [d_in, d_sae]
        if (Either("W_dec", "decoder.weight") == "W_dec") CltFiles.Read(f, path, "W_dec", [dSae, dIn], p.WDec);
        else ReadTransposed(f, path, "decoder.weight", dIn, dSae, p.WDec);
        CltFiles.Read(f, path, Either("b_dec", "decoder.bias"), [dIn], p.BDec);
        if (skip) ReadTransposed(f, path, "W_skip", dIn, dIn, p.WSkip);                          // x·W_skipᵀ: stored out × in
        else if (f.Contains("W_skip")) throw new InputError($"{path}: tensor 'W_skip' is present but cfg.json's skip_connection is false");
    }

    // tensor [rows, cols] → into [cols, rows]
    static void ReadTransposed(Loupe.Models.Loading.SafeTensorsFile f, string path, string name, int rows, int cols, float[] into)
    {
        var stored = new float[(long)rows * cols];
        CltFiles.Read(f, path, name, [rows, cols], stored);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) into[(long)c * rows + r] = stored[(long)r * cols + c];
    }

    /// <summary>
    /// The TransformerLens hooks of a sparsify hookpoint (its folder's name): the input, and for a transcoder the output;
    /// nulls when the name has no equivalent.
    /// </summary>
    public static (string? In, string? Out) HooksOf(string hookpoint, bool transcoder)
    {
        ArgumentNullException.ThrowIfNull(hookpoint);
        if (hookpoint is "embed_tokens" or "model.embed_tokens" or "embed_in" or "gpt_neox.embed_in" or "wte" or "transformer.wte")
            return (HookNames.Embed, null);
        var m = Hookpoint().Match(hookpoint);
        if (!m.Success || !int.TryParse(m.Groups["layer"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int l)) return (null, null);
        return (m.Groups["module"].Value, transcoder) switch
        {
            ("", false) => (HookNames.ResidPost(l), null),
            ("mlp", false) => (HookNames.MlpOut(l), null),
            ("mlp", true) => (HookNames.MlpIn(l), HookNames.MlpOut(l)),
            ("self_attn" or "attention" or "attn", false) => (HookNames.AttnOut(l), null),
            _ => (null, null),
        };
    }

    /// <summary>The layer a sparsify hookpoint names (<c>layers.5.mlp</c> → 5), or null.</summary>
    public static int? LayerOfHookpoint(string hookpoint) =>
        Hookpoint().Match(hookpoint) is { Success: true } m && int.TryParse(m.Groups["layer"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int l) ? l : null;

    // The run's config.json one folder up names the model (sparsify's TrainConfig has "model"); empty when absent or unreadable.
    static string ModelOf(string? runFolder)
    {
        if (runFolder is null) return "";
        string path = Path.Combine(runFolder, "config.json");
        if (!File.Exists(path)) return "";
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) is JsonObject o && o["model"] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : "";
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException) { return ""; }
    }

    [GeneratedRegex(@"^(?:model\.|gpt_neox\.|transformer\.)?(?:layers|h)\.(?<layer>[0-9]{1,6})(?:\.(?<module>mlp|self_attn|attention|attn))?$")]
    private static partial Regex Hookpoint();
}
