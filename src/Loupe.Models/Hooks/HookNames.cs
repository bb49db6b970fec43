namespace Loupe.Models.Hooks;

/// <summary>
/// The one place hook point names are built. Names are TransformerLens's exactly, so researchers'
/// habits (and their code's strings) carry over.
/// </summary>
public static class HookNames
{
    /// <summary>Token embeddings, before positions are added: <c>[batch, pos, d_model]</c>.</summary>
    public const string Embed = "hook_embed";
    /// <summary>Learned positional embeddings: <c>[batch, pos, d_model]</c>.</summary>
    public const string PosEmbed = "hook_pos_embed";
    /// <summary>
    /// Written by Loupe into the files it makes that name hooks (SAELens <c>cfg.json</c> metadata, circuit-tracer
    /// <c>config.yaml</c>, persona vectors and monitors): what the names mean. <c>transformer_lens</c>: TransformerLens's
    /// values (an RMSNorm's <c>hook_normalized</c> before its weight). Should a meaning ever change again, files then say which
    /// they were made with, and a reader refuses one it does not know (<see cref="RequireKnownSemantics"/>).
    /// </summary>
    public const string SemanticsKey = "loupe_hooks", Semantics = "transformer_lens";

    /// <summary>Throws when a file's <see cref="SemanticsKey"/> (null when it has none) names hook meanings this Loupe does not read.</summary>
    /// <exception cref="InputError">The value is not <see cref="Semantics"/>; the message names the file and the field.</exception>
    public static void RequireKnownSemantics(string? value, string file)
    {
        if (value is null || value == Semantics) return;
        throw new InputError($"{file}: '{SemanticsKey}' is '{value}': its hook names mean what a newer Loupe gives them; " +
            $"this one reads '{Semantics}' hooks. Use that Loupe, or a file made for TransformerLens's hook values");
    }

    public const string FinalScale = "ln_final.hook_scale";
    public const string FinalNormalized = "ln_final.hook_normalized";

    /// <summary>Encoders (TransformerLens's HookedEncoder): the word embedding.</summary>
    public const string EncoderEmbed = "embed.hook_embed";
    /// <summary>Encoders: the learned position embedding.</summary>
    public const string EncoderPosEmbed = "embed.hook_pos_embed";
    /// <summary>Encoders: the token-type (segment) embedding.</summary>
    public const string EncoderTokenTypeEmbed = "embed.hook_token_type_embed";
    /// <summary>Encoders: the embedding LayerNorm's output, block 0's resid_pre.</summary>
    public const string FullEmbed = "hook_full_embed";
    /// <summary>Post-LayerNorm blocks (BERT): the block's output, ln2 of hook_resid_post.</summary>
    public static string NormalizedResidPost(int l) => $"blocks.{l}.hook_normalized_resid_post";
    public static string ResidPre(int l) => $"blocks.{l}.hook_resid_pre";
    public static string ResidMid(int l) => $"blocks.{l}.hook_resid_mid";
    public static string ResidPost(int l) => $"blocks.{l}.hook_resid_post";
    public static string AttnOut(int l) => $"blocks.{l}.hook_attn_out";
    public static string MlpOut(int l) => $"blocks.{l}.hook_mlp_out";
    public static string Q(int l) => $"blocks.{l}.attn.hook_q";
    public static string K(int l) => $"blocks.{l}.attn.hook_k";
    public static string V(int l) => $"blocks.{l}.attn.hook_v";
    public static string RotQ(int l) => $"blocks.{l}.attn.hook_rot_q";
    public static string RotK(int l) => $"blocks.{l}.attn.hook_rot_k";
    public static string AttnScores(int l) => $"blocks.{l}.attn.hook_attn_scores";
    public static string Pattern(int l) => $"blocks.{l}.attn.hook_pattern";
    public static string Z(int l) => $"blocks.{l}.attn.hook_z";
    public static string Result(int l) => $"blocks.{l}.attn.hook_result";
    /// <summary>
    /// The MLP's input, after ln2 and its weight (circuit-tracer's <c>mlp.hook_in</c>): on a LayerNorm model the same
    /// values as <c>ln2.hook_normalized</c>, on an RMSNorm model <c>ln2.hook_normalized ⊙ w</c>. <c>[batch, pos, d_model]</c>.
    /// </summary>
    public static string MlpIn(int l) => $"blocks.{l}.mlp.hook_in";
    /// <summary>
    /// TransformerLens's <c>hook_mlp_in</c> (its <c>use_hook_mlp_in</c>): a copy of the stream the MLP branch reads, before ln2
    /// (resid_mid; resid_pre in a parallel block). It holds the same values as that stream, but what a hook does there reaches
    /// the MLP only, not the skip path, and its gradient is the MLP branch's alone. <c>[batch, pos, d_model]</c>.
    /// </summary>
    public static string HookMlpIn(int l) => $"blocks.{l}.hook_mlp_in";
    /// <summary>
    /// TransformerLens's <c>hook_attn_in</c> (its <c>use_attn_in</c>): the stream attention reads, one copy per head, before ln1:
    /// <c>[batch, pos, head_index, d_model]</c>. What a hook does to head h's copy reaches head h's queries, keys and values
    /// only. Declared where every head has its own key/value head (TransformerLens refuses it with grouped-query attention).
    /// </summary>
    public static string AttnIn(int l) => $"blocks.{l}.hook_attn_in";
    /// <summary>
    /// TransformerLens's <c>hook_q_input</c> (its <c>use_split_qkv_input</c>): the stream head h's query reads, before ln1:
    /// <c>[batch, pos, head_index, d_model]</c>; <see cref="KInput"/> and <see cref="VInput"/> likewise for the keys and values
    /// (one copy per key/value head). Editing one head's copy patches that head's query alone (path patching to a head's
    /// query, key or value). With split inputs ln1 normalises each copy apart, as in TransformerLens.
    /// </summary>
    public static string QInput(int l) => $"blocks.{l}.hook_q_input";
    /// <summary>TransformerLens's <c>hook_k_input</c>: see <see cref="QInput"/>; <c>[batch, pos, head_index, d_model]</c> over key/value heads.</summary>
    public static string KInput(int l) => $"blocks.{l}.hook_k_input";
    /// <summary>TransformerLens's <c>hook_v_input</c>: see <see cref="QInput"/>; <c>[batch, pos, head_index, d_model]</c> over key/value heads.</summary>
    public static string VInput(int l) => $"blocks.{l}.hook_v_input";

    /// <summary>
    /// True for the per-head copies of the stream (<see cref="AttnIn"/>, <see cref="QInput"/>, <see cref="KInput"/>,
    /// <see cref="VInput"/>): n_heads copies of hook_resid_pre each, so "everything" (a cache or gradients of every hook) leaves
    /// them out and a glob reaches them only when it spells their last part (see <see cref="HookPattern"/>).
    /// </summary>
    public static bool IsPerHeadInput(string name) => PerHeadInputSuffix(name) is not null;

    /// <summary>The last part (<c>hook_q_input</c>, …) of a per-head input hook of a block, or null for any other name.</summary>
    internal static string? PerHeadInputSuffix(string name)
    {
        if (!name.StartsWith("blocks.", StringComparison.Ordinal)) return null;
        int dot = name.LastIndexOf('.');
        if (dot < 7 || name.IndexOf('.', 7) != dot) return null; // blocks.{l}.hook_…: no deeper part
        string last = name[(dot + 1)..];
        return last is "hook_attn_in" or "hook_q_input" or "hook_k_input" or "hook_v_input" ? last : null;
    }

    public static string MlpPre(int l) => $"blocks.{l}.mlp.hook_pre";
    public static string MlpPreLinear(int l) => $"blocks.{l}.mlp.hook_pre_linear";
    public static string MlpPost(int l) => $"blocks.{l}.mlp.hook_post";
    /// <summary>SoLU's output before the MLP's own LayerNorm (TransformerLens <c>act_fn: solu_ln</c>).</summary>
    public static string MlpMid(int l) => $"blocks.{l}.mlp.hook_mid";
    public static string NormScale(int l, string norm) => $"blocks.{l}.{norm}.hook_scale";
    public static string NormNormalized(int l, string norm) => $"blocks.{l}.{norm}.hook_normalized";

    // Sub-hooks of an SAE or transcoder spliced in at hook point `hook` (SAELens's HookedSAETransformer
    // names, in forward order). For a transcoder `hook` is the output hook it replaces (e.g. hook_mlp_out).
    /// <summary>What the dictionary reads: <c>[batch, pos, d_in]</c>.</summary>
    public static string SaeInput(string hook) => hook + ".hook_sae_input";
    /// <summary>Encoder pre-activations: <c>[batch, pos, d_sae]</c>.</summary>
    public static string SaeActsPre(string hook) => hook + ".hook_sae_acts_pre";
    /// <summary>Feature activations (the place to read, patch, ablate or steer features): <c>[batch, pos, d_sae]</c>.</summary>
    public static string SaeActsPost(string hook) => hook + ".hook_sae_acts_post";
    /// <summary>The decoder's reconstruction: <c>[batch, pos, d_out]</c>.</summary>
    public static string SaeRecons(string hook) => hook + ".hook_sae_recons";
    /// <summary>original − clean reconstruction (with the error term only): <c>[batch, pos, d_out]</c>.</summary>
    public static string SaeError(string hook) => hook + ".hook_sae_error";
    /// <summary>What flows on in place of the hook's activation: <c>[batch, pos, d_out]</c>.</summary>
    public static string SaeOutput(string hook) => hook + ".hook_sae_output";

    /// <summary>
    /// The names of <paramref name="known"/> closest to <paramref name="name"/> (edit distance), for
    /// "did you mean" lists in error messages.
    /// </summary>
    public static IReadOnlyList<string> Closest(string name, IEnumerable<string> known, int count = 5) =>
        known.Select(k => (Name: k, Distance: EditDistance(name, k))).OrderBy(x => x.Distance).ThenBy(x => x.Name, StringComparer.Ordinal)
            .Take(count).Select(x => x.Name).ToArray();

    static int EditDistance(string a, string b)
    {
        var row = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) row[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            int diagonal = row[0];
            row[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int above = row[j];
                row[j] = Math.Min(Math.Min(row[j] + 1, row[j - 1] + 1), diagonal + (a[i - 1] == b[j - 1] ? 0 : 1));
                diagonal = above;
            }
        }
        return row[b.Length];
    }
}

/// <summary>Every hook name of one block, built once so the forward pass allocates no strings.</summary>
public sealed class BlockHookNames
{
    public BlockHookNames(int layer)
    {
        Layer = layer;
        ResidPre = HookNames.ResidPre(layer);
        ResidMid = HookNames.ResidMid(layer);
        ResidPost = HookNames.ResidPost(layer);
        AttnOut = HookNames.AttnOut(layer);
        MlpOut = HookNames.MlpOut(layer);
        Q = HookNames.Q(layer);
        K = HookNames.K(layer);
        V = HookNames.V(layer);
        RotQ = HookNames.RotQ(layer);
        RotK = HookNames.RotK(layer);
        AttnScores = HookNames.AttnScores(layer);
        Pattern = HookNames.Pattern(layer);
        Z = HookNames.Z(layer);
        Result = HookNames.Result(layer);
        MlpIn = HookNames.MlpIn(layer);
        HookMlpIn = HookNames.HookMlpIn(layer);
        AttnIn = HookNames.AttnIn(layer);
        QInput = HookNames.QInput(layer);
        KInput = HookNames.KInput(layer);
        VInput = HookNames.VInput(layer);
        MlpPre = HookNames.MlpPre(layer);
        MlpPreLinear = HookNames.MlpPreLinear(layer);
        MlpPost = HookNames.MlpPost(layer);
        MlpMid = HookNames.MlpMid(layer);
    }

    public int Layer { get; }
    public string ResidPre { get; }
    public string ResidMid { get; }
    public string ResidPost { get; }
    public string AttnOut { get; }
    public string MlpOut { get; }
    public string MlpIn { get; }
    /// <summary>TransformerLens's <c>blocks.L.hook_mlp_in</c> (see <see cref="HookNames.HookMlpIn"/>), not circuit-tracer's <see cref="MlpIn"/>.</summary>
    public string HookMlpIn { get; }
    /// <summary>TransformerLens's per-head attention inputs (see <see cref="HookNames.AttnIn"/>, <see cref="HookNames.QInput"/>).</summary>
    public string AttnIn { get; }
    public string QInput { get; }
    public string KInput { get; }
    public string VInput { get; }
    public string Q { get; }
    public string K { get; }
    public string V { get; }
    public string RotQ { get; }
    public string RotK { get; }
    public string AttnScores { get; }
    public string Pattern { get; }
    public string Z { get; }
    public string Result { get; }
    public string MlpPre { get; }
    public string MlpPreLinear { get; }
    public string MlpPost { get; }
    public string MlpMid { get; }
}
