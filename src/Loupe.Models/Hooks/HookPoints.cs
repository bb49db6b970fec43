namespace Loupe.Models.Hooks;

/// <summary>
/// Every hook point a model has, declared from its config in the order a forward pass reaches them,
/// so hook names, axes and sizes are known before (and without) running it.
/// </summary>
/// <remarks>
/// The order, per family (what <see cref="HookedTransformer"/> and the family files run):
/// 1. <c>hook_embed</c>, then <c>hook_pos_embed</c> where positions are learned (GPT-2, TransformerLens);
/// 2. per block: <c>hook_resid_pre</c>; TransformerLens's per-head inputs <c>hook_attn_in</c> (when every head has its own
///    key/value head), <c>hook_q_input, hook_k_input, hook_v_input</c>; <c>ln1</c>; attention (<c>hook_q, hook_k, hook_v</c>, then
///    <c>hook_rot_q, hook_rot_k</c> with rotary embeddings, <c>hook_attn_scores, hook_pattern, hook_z,
///    hook_result</c>); Gemma 2's <c>ln1_post</c>; <c>hook_attn_out</c>; then
///    - parallel attention+MLP (GPT-NeoX): <c>hook_mlp_in</c>, <c>ln2</c>, MLP, <c>hook_mlp_out</c>, <c>hook_resid_post</c>;
///    - sequential: <c>hook_resid_mid</c>, <c>hook_mlp_in</c>, <c>ln2</c>, MLP, Gemma 2's <c>ln2_post</c>, <c>hook_mlp_out</c>, <c>hook_resid_post</c>;
///    - attention-only: <c>hook_resid_post</c>;
///    the MLP being <c>hook_in</c> (circuit-tracer's: the MLP's input), <c>hook_pre</c>, <c>hook_pre_linear</c> (gated MLPs only), <c>hook_post</c>;
///    each norm being <c>hook_scale</c>, <c>hook_normalized</c> (none when the model has no norms; an RMSNorm's
///    <c>hook_normalized</c> is before its weight, as in TransformerLens);
/// 3. <c>ln_final.hook_scale</c>, <c>ln_final.hook_normalized</c>.
/// <c>hook_result</c> is listed although it is computed only when something reads it, and so is <c>hook_mlp_in</c>
/// (TransformerLens's, with <c>use_hook_mlp_in</c>: the stream the MLP branch reads, copied only when something reads it), and
/// the per-head inputs (copied only when something reads them; a cache or gradients of "everything" leave them out).
/// Splices add their sub-hooks after the hook they replace (<see cref="HookedTransformer.HookPointNamesWith"/>);
/// they are not part of the declaration.
/// </remarks>
public static class HookPoints
{
    /// <summary>Every hook point of a model with config <paramref name="cfg"/>, in forward order.</summary>
    /// <exception cref="ArgumentException">The config's sizes are not positive.</exception>
    public static IReadOnlyList<HookPoint> Declare(ModelConfig cfg)
    {
        ArgumentNullException.ThrowIfNull(cfg);
        if (cfg.NLayers < 0 || cfg.DModel < 1 || cfg.NHeads < 1 || cfg.KvHeads < 1 || cfg.DHead < 1 || (cfg.HasMlp && cfg.DMlp < 1))
            throw new ArgumentException($"config of {cfg.Architecture} has non-positive sizes (n_layers {cfg.NLayers}, d_model {cfg.DModel}, n_heads {cfg.NHeads}, kv heads {cfg.KvHeads}, d_head {cfg.DHead}, d_mlp {cfg.DMlp})", nameof(cfg));
        if (cfg.Architecture == "bert") return DeclareEncoder(cfg);
        var points = new List<HookPoint>();
        var shapes = new Shapes(cfg);
        bool norms = cfg.Normalization != NormKind.None;
        // Gemma 2 normalizes each sub-layer's output again before it joins the residual stream.
        bool sandwichNorms = cfg.Architecture is "gemma2" or "gemma3";

        points.Add(shapes.Residual(HookNames.Embed, -1));
        if (cfg.LearnedPositions) points.Add(shapes.Residual(HookNames.PosEmbed, -1));
        for (int l = 0; l < cfg.NLayers; l++)
        {
            var names = new BlockHookNames(l);
            points.Add(shapes.Residual(names.ResidPre, l));
            PerHeadInputs(points, shapes, names);
            if (norms) Norm(points, shapes, $"blocks.{l}.ln1", l);
            Attention(points, shapes, names, cfg.RotaryDim > 0, cfg.QkNorm);
            if (norms && sandwichNorms) Norm(points, shapes, $"blocks.{l}.ln1_post", l);
            points.Add(shapes.Residual(names.AttnOut, l));
            if (cfg.HasMlp)
            {
                if (!cfg.ParallelAttnMlp) points.Add(shapes.Residual(names.ResidMid, l));
                points.Add(shapes.Residual(names.HookMlpIn, l));
                if (norms) Norm(points, shapes, $"blocks.{l}.ln2", l);
                Mlp(points, shapes, names, cfg.GatedMlp, cfg.ActFn == Layers.MlpLayer.SoluLn);
                if (norms && sandwichNorms) Norm(points, shapes, $"blocks.{l}.ln2_post", l);
                points.Add(shapes.Residual(names.MlpOut, l));
            }
            points.Add(shapes.Residual(names.ResidPost, l));
        }
        if (norms) Norm(points, shapes, "ln_final", -1);
        return points;
    }

    /// <summary>
    /// BERT (TransformerLens's HookedEncoder names): <c>embed.hook_embed, embed.hook_pos_embed,
    /// embed.hook_token_type_embed, embed.ln.*, hook_full_embed</c>; per post-LayerNorm block <c>hook_resid_pre</c>,
    /// attention, <c>hook_attn_out</c>, <c>hook_resid_mid</c> (= resid_pre + attn_out), <c>ln1.*</c>, MLP,
    /// <c>hook_mlp_out</c>, <c>hook_resid_post</c> (= ln1 output + mlp_out), <c>ln2.*</c>,
    /// <c>hook_normalized_resid_post</c> (the block's output); then <c>mlm_head.ln.*</c> when the model has an MLM head.
    /// </summary>
    static IReadOnlyList<HookPoint> DeclareEncoder(ModelConfig cfg)
    {
        var points = new List<HookPoint>();
        var shapes = new Shapes(cfg);
        foreach (var name in new[] { HookNames.EncoderEmbed, HookNames.EncoderPosEmbed, HookNames.EncoderTokenTypeEmbed })
            points.Add(shapes.Residual(name, -1));
        Norm(points, shapes, "embed.ln", -1);
        points.Add(shapes.Residual(HookNames.FullEmbed, -1));
        for (int l = 0; l < cfg.NLayers; l++)
        {
            var names = new BlockHookNames(l);
            points.Add(shapes.Residual(names.ResidPre, l));
            Attention(points, shapes, names, rotary: false, qkNorm: false);
            points.Add(shapes.Residual(names.AttnOut, l));
            points.Add(shapes.Residual(names.ResidMid, l));
            Norm(points, shapes, $"blocks.{l}.ln1", l);
            Mlp(points, shapes, names, gated: false, soluLn: false);
            points.Add(shapes.Residual(names.MlpOut, l));
            points.Add(shapes.Residual(names.ResidPost, l));
            Norm(points, shapes, $"blocks.{l}.ln2", l);
            points.Add(shapes.Residual(HookNames.NormalizedResidPost(l), l));
        }
        if (cfg.MlmHead) Norm(points, shapes, "mlm_head.ln", -1);
        return points;
    }

    static void Norm(List<HookPoint> points, Shapes shapes, string prefix, int layer)
    {
        // hook_scale is the divisor (std or RMS), one per position.
        points.Add(new HookPoint(prefix + ".hook_scale", layer, [HookAxis.Batch, HookAxis.Pos, HookAxis.One], [null, null, 1]));
        points.Add(shapes.Residual(prefix + ".hook_normalized", layer));
    }

    /// <summary>
    /// TransformerLens's per-head copies of the stream attention reads (before ln1): <c>hook_attn_in</c> where every head has its own
    /// key/value head, then <c>hook_q_input</c> over heads and <c>hook_k_input</c>, <c>hook_v_input</c> over key/value heads.
    /// </summary>
    static void PerHeadInputs(List<HookPoint> points, Shapes shapes, BlockHookNames names)
    {
        int l = names.Layer;
        if (shapes.Heads == shapes.KvHeads) points.Add(shapes.PerHeadStream(names.AttnIn, l, shapes.Heads));
        points.Add(shapes.PerHeadStream(names.QInput, l, shapes.Heads));
        points.Add(shapes.PerHeadStream(names.KInput, l, shapes.KvHeads));
        points.Add(shapes.PerHeadStream(names.VInput, l, shapes.KvHeads));
    }

    static void Attention(List<HookPoint> points, Shapes shapes, BlockHookNames names, bool rotary, bool qkNorm)
    {
        int l = names.Layer;
        points.Add(shapes.PerHead(names.Q, l, shapes.Heads));
        points.Add(shapes.PerHead(names.K, l, shapes.KvHeads));
        points.Add(shapes.PerHead(names.V, l, shapes.KvHeads));
        if (qkNorm)
            foreach (var (norm, heads) in new[] { ("q_norm", shapes.Heads), ("k_norm", shapes.KvHeads) })
            {
                // Per-head RMSNorm (Qwen3): one scale per head, then the normalised q or k.
                string prefix = $"blocks.{l}.attn.{norm}";
                points.Add(new HookPoint(prefix + ".hook_scale", l, [HookAxis.Batch, HookAxis.Pos, HookAxis.HeadIndex, HookAxis.One], [null, null, heads, 1]));
                points.Add(shapes.PerHead(prefix + ".hook_normalized", l, heads));
            }
        if (rotary)
        {
            // hook_q/hook_k see the projections; hook_rot_q/hook_rot_k what enters the dot product.
            points.Add(shapes.PerHead(names.RotQ, l, shapes.Heads));
            points.Add(shapes.PerHead(names.RotK, l, shapes.KvHeads));
        }
        points.Add(shapes.Pattern(names.AttnScores, l));
        points.Add(shapes.Pattern(names.Pattern, l));
        points.Add(shapes.PerHead(names.Z, l, shapes.Heads));
        points.Add(new HookPoint(names.Result, l, [HookAxis.Batch, HookAxis.Pos, HookAxis.HeadIndex, HookAxis.DModel], [null, null, shapes.Heads, shapes.DModel]));
    }

    static void Mlp(List<HookPoint> points, Shapes shapes, BlockHookNames names, bool gated, bool soluLn)
    {
        int l = names.Layer;
        // hook_in: the MLP's input (circuit-tracer's name; after ln2's weight on RMSNorm models, unlike ln2.hook_normalized).
        points.Add(shapes.Residual(names.MlpIn, l));
        // Gated: hook_pre is the gate (before the activation), hook_pre_linear the linear branch it multiplies.
        points.Add(shapes.Hidden(names.MlpPre, l));
        if (gated) points.Add(shapes.Hidden(names.MlpPreLinear, l));
        if (soluLn)
        {
            // SoLU, then the MLP's own LayerNorm over d_mlp (TransformerLens's solu_ln): hook_mid before it, hook_post after.
            points.Add(shapes.Hidden(names.MlpMid, l));
            points.Add(new HookPoint($"blocks.{l}.mlp.ln.hook_scale", l, [HookAxis.Batch, HookAxis.Pos, HookAxis.One], [null, null, 1]));
            points.Add(shapes.Hidden($"blocks.{l}.mlp.ln.hook_normalized", l));
        }
        points.Add(shapes.Hidden(names.MlpPost, l));
    }

    sealed class Shapes(ModelConfig cfg)
    {
        public int Heads { get; } = cfg.NHeads;
        public int KvHeads { get; } = cfg.KvHeads;
        public int DModel { get; } = cfg.DModel;

        /// <summary><c>[batch, pos, d_model]</c></summary>
        public HookPoint Residual(string name, int layer) =>
            new(name, layer, [HookAxis.Batch, HookAxis.Pos, HookAxis.DModel], [null, null, cfg.DModel]);

        /// <summary><c>[batch, pos, head_index, d_head]</c>; head_index counts key/value heads at k and v.</summary>
        public HookPoint PerHead(string name, int layer, int heads) =>
            new(name, layer, [HookAxis.Batch, HookAxis.Pos, HookAxis.HeadIndex, HookAxis.DHead], [null, null, heads, cfg.DHead]);

        /// <summary><c>[batch, pos, head_index, d_model]</c>: one copy of the stream per head.</summary>
        public HookPoint PerHeadStream(string name, int layer, int heads) =>
            new(name, layer, [HookAxis.Batch, HookAxis.Pos, HookAxis.HeadIndex, HookAxis.DModel], [null, null, heads, cfg.DModel]);

        /// <summary><c>[batch, head_index, query_pos, key_pos]</c></summary>
        public HookPoint Pattern(string name, int layer) =>
            new(name, layer, [HookAxis.Batch, HookAxis.HeadIndex, HookAxis.QueryPos, HookAxis.KeyPos], [null, cfg.NHeads, null, null]);

        /// <summary><c>[batch, pos, d_mlp]</c></summary>
        public HookPoint Hidden(string name, int layer) =>
            new(name, layer, [HookAxis.Batch, HookAxis.Pos, HookAxis.DMlp], [null, null, cfg.DMlp]);
    }
}
