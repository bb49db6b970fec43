// Whether a dictionary meets the weight processing it was trained under. TransformerLens's processing leaves the model's
// function unchanged but not every activation: a dictionary trained on a processed model reads other values at some hooks
// than an unprocessed model gives there (and the other way round). SAELens records the processing its training model was
// loaded with in cfg.json's model_from_pretrained_kwargs; options it sets explicitly are compared here with the processing of
// the model in hand (HookedTransformer.Processing), and a difference is reported only where that option changes the values at
// the dictionary's hook for this model:
//   center_writing_weights (LayerNorm models)  hook_embed, hook_pos_embed, hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out,
//                                              hook_mlp_in, hook_attn_in, hook_q/k/v_input, attn.hook_result
//   fold_ln (LayerNorm models)                 *.hook_normalized, mlp.hook_in (the norm's output loses its weight and bias)
//   fold_value_biases (value biases ≠ 0)       attn.hook_v, attn.hook_z, attn.hook_result
//   refactor_factored_attn_matrices            attn.hook_q, hook_k, hook_v, hook_rot_q, hook_rot_k, hook_z
//   center_unembed                             none (the logits shift by a constant per position)
// Options cfg.json leaves out are not guessed: their default depends on the SAELens version that trained the dictionary.
using System.Text.RegularExpressions;
using Loupe.Models;
using Loupe.Models.Processing;

namespace Loupe.Dictionaries.Sae;

/// <summary>Compares the processing a dictionary was trained under with the model it is used on (see the file header).</summary>
public static partial class ProcessingAgreement
{
    /// <summary>
    /// What differs between <paramref name="config"/>'s training processing and <paramref name="model"/>'s, where it changes the
    /// values at <paramref name="hook"/>, as one sentence naming the options and the <c>--process</c> that matches; null when nothing does.
    /// </summary>
    public static string? Mismatch(HookedTransformer model, string hook, SaeLensConfig config)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(hook);
        ArgumentNullException.ThrowIfNull(config);
        var loaded = model.Processing.ToDictionary();
        var trained = config.TrainingProcessingOptions();
        var differing = trained
            .Where(p => loaded.TryGetValue(p.Key, out bool on) && on != p.Value && Changes(p.Key, model, hook))
            .ToList();
        if (differing.Count == 0) return null;
        var wanted = new Dictionary<string, bool>(loaded);
        foreach (var (option, on) in trained) wanted[option] = on;
        string process = string.Join(',', WeightProcessing.OptionNames.Where(o => wanted.GetValueOrDefault(o)));
        string each = string.Join("; ", differing.Select(p => $"{p.Key} {(p.Value ? "on" : "off")} in training, {(p.Value ? "off" : "on")} here"));
        return $"the dictionary on '{hook}' was trained on a model loaded with other weight processing ({each}; model_from_pretrained_kwargs), " +
            $"which changes the values at that hook: its activations here are not the ones it was trained on. " +
            $"Load the model with --process {(process.Length == 0 ? "none" : process)}";
    }

    /// <summary>Whether TransformerLens processing option <paramref name="option"/> changes the values at <paramref name="hook"/> of <paramref name="model"/>.</summary>
    public static bool Changes(string option, HookedTransformer model, string hook)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(hook);
        var m = BlockHook().Match(hook);
        string local = m.Success ? m.Groups[2].Value : hook;
        int layer = m.Success && int.TryParse(m.Groups[1].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int l) ? l : -1;
        bool layerNorm = model.Config.Normalization == NormKind.LayerNorm;
        return option switch
        {
            "center_writing_weights" => layerNorm && local is "hook_embed" or "hook_pos_embed" or "hook_resid_pre" or "hook_resid_mid"
                or "hook_resid_post" or "hook_attn_out" or "hook_mlp_out" or "hook_mlp_in" or "hook_attn_in" or "hook_q_input"
                or "hook_k_input" or "hook_v_input" or "attn.hook_result",
            "fold_ln" => layerNorm && (local.EndsWith(".hook_normalized", StringComparison.Ordinal) || local == "mlp.hook_in"),
            "fold_value_biases" => local is "attn.hook_v" or "attn.hook_z" or "attn.hook_result" && HasValueBias(model, layer),
            "refactor_factored_attn_matrices" => local is "attn.hook_q" or "attn.hook_k" or "attn.hook_v" or "attn.hook_rot_q" or "attn.hook_rot_k" or "attn.hook_z",
            _ => false,
        };
    }

    /// <summary>Whether layer <paramref name="layer"/>'s value projection has a nonzero bias (a fused projection: any nonzero bias).</summary>
    static bool HasValueBias(HookedTransformer model, int layer)
    {
        if (layer < 0 || layer >= model.Config.NLayers) return false;
        var attention = model.Anatomy(layer).Attention;
        var bias = (attention.V ?? attention.Qkv)?.Bias ?? ReadOnlyMemory<float>.Empty;
        foreach (float b in bias.Span) if (b != 0) return true;
        return false;
    }

    [GeneratedRegex(@"^blocks\.([0-9]{1,9})\.(.+)$")]
    private static partial Regex BlockHook();
}
