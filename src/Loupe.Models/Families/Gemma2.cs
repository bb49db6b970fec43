using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;

namespace Loupe.Models.Families;

// Gemma 2 (HF Gemma2ForCausalLM). Shapes as Llama, plus per block four RMSNorms [d_model]
// (input_layernorm, post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm),
// all applied as x̂·(1 + w). Embeddings are scaled by √d_model; attention scores are soft-capped
// (cap·tanh(s/cap)) before masking, final logits too; even layers attend within a sliding window;
// q·k is scaled by query_pre_attn_scalar^-½; GeGLU MLP with tanh-gelu; tied unembedding.

// Gemma 3 (text: Gemma3ForCausalLM, model_type gemma3_text) is the same block with per-head q/k RMSNorm (1 + w)
// before rotary, no soft-capping, every sliding_window_pattern-th layer global (the others local), and its own
// rotary base on local layers (rope_local_base_freq); rope_scaling (linear) applies to the global layers only.

/// <summary>Gemma 2 and Gemma 3: sandwich norms, local/global attention, logit soft-capping (Gemma 2), q/k norms (Gemma 3).</summary>
public sealed class Gemma2Model : HookedTransformer
{
    readonly Norm[] _ln1, _ln1Post, _ln2, _ln2Post;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer[] _mlp;
    readonly long _parameters;

    Gemma2Model(ModelConfig cfg, WeightSource w, IComputeBackend? backend) : base(cfg, backend)
    {
        int L = cfg.NLayers;
        WE = w.Get("model.embed_tokens.weight", cfg.DVocab, cfg.DModel);
        var inverse = RotaryTable.DefaultInverseFrequencies(cfg.RotaryDim, cfg.RotaryBase);
        var rotary = new RotaryTable(cfg.RotaryDim, cfg.RopeScaling?.Apply(inverse) ?? inverse, cfg.NCtx);
        var localRotary = cfg.RotaryLocalBase is double localBase ? new RotaryTable(cfg.RotaryDim, localBase, cfg.NCtx) : rotary;
        _ln1 = new Norm[L]; _ln1Post = new Norm[L]; _ln2 = new Norm[L]; _ln2Post = new Norm[L];
        _attn = new AttentionLayer[L]; _mlp = new MlpLayer[L];
        for (int l = 0; l < L; l++)
        {
            string b = HfDecoderWeights.Layer(l);
            _ln1[l] = HfDecoderWeights.RmsNorm(w, b + "input_layernorm.weight", cfg, $"blocks.{l}.ln1", 1f);
            _ln1Post[l] = HfDecoderWeights.RmsNorm(w, b + "post_attention_layernorm.weight", cfg, $"blocks.{l}.ln1_post", 1f);
            _ln2[l] = HfDecoderWeights.RmsNorm(w, b + "pre_feedforward_layernorm.weight", cfg, $"blocks.{l}.ln2", 1f);
            _ln2Post[l] = HfDecoderWeights.RmsNorm(w, b + "post_feedforward_layernorm.weight", cfg, $"blocks.{l}.ln2_post", 1f);
            _attn[l] = HfDecoderWeights.Attention(l, cfg, w, cfg.IsLocal(l) ? localRotary : rotary, qkNormOffset: 1f);
            _mlp[l] = HfDecoderWeights.GatedMlp(l, cfg, w);
        }
        FinalNorm = HfDecoderWeights.RmsNorm(w, "model.norm.weight", cfg, "ln_final", 1f);
        Unembed = HfDecoderWeights.Unembed(cfg, w, WE);
        _parameters = w.ParameterCount;
    }

    public override long ParameterCount => _parameters;

    internal static Gemma2Model Load(HfConfig c, WeightSource w, IComputeBackend? backend, bool gemma3 = false)
    {
        var (d, h, kv, dh, layers, dMlp, vocab, nCtx) = HfDecoderWeights.Sizes(c);
        string act = c.String("hidden_activation") ?? c.String("hidden_act") ?? "gelu_pytorch_tanh";
        var cfg = new ModelConfig
        {
            Architecture = gemma3 ? "gemma3" : "gemma2",
            NLayers = layers,
            DModel = d,
            NHeads = h,
            NKeyValueHeads = kv,
            DHead = dh,
            DMlp = dMlp,
            DVocab = vocab,
            NCtx = nCtx,
            ActFn = HfDecoderWeights.Activation(c, c.Has("hidden_activation") ? "hidden_activation" : "hidden_act", act),
            GatedMlp = true,
            Normalization = NormKind.RmsNorm,
            NormEps = HfDecoderWeights.NormEps(c, "rms_norm_eps", 1e-6),
            RotaryDim = dh,
            RotaryBase = HfDecoderWeights.RopeTheta(c, scalingHandled: gemma3),
            RopeScaling = gemma3 ? Gemma3Scaling(c) : null,
            RotaryLocalBase = gemma3 ? HfDecoderWeights.RopeBase(c, "rope_local_base_freq") : null,
            QkNorm = gemma3,
            AttnScale = (float)(1 / Math.Sqrt(c.Double("query_pre_attn_scalar", dh, 1e-6, 1e12))),
            AttnSoftCap = HfDecoderWeights.SoftCap(c, "attn_logit_softcapping"),
            FinalLogitSoftCap = HfDecoderWeights.SoftCap(c, "final_logit_softcapping"),
            SlidingWindow = c.OptionalInt("sliding_window", 0) ?? 0,
            // HF Gemma 2: layers with an even index attend locally. Gemma 3: every pattern-th layer is global.
            LocalLayers = gemma3
                ? Enumerable.Range(0, layers).Select(l => (l + 1) % c.Int("sliding_window_pattern", 1, HfConfig.MaxLayers) != 0).ToArray()
                : Enumerable.Range(0, layers).Select(l => l % 2 == 0).ToArray(),
            EmbedScale = (float)Math.Sqrt(d),
            BosTokenId = HfDecoderWeights.TokenId(c, "bos_token_id", vocab),
            EosTokenId = HfDecoderWeights.TokenId(c, "eos_token_id", vocab),
            SourcePath = c.Path,
        };
        w.CheckNoLayerBeyond(HfDecoderWeights.Layer, layers, c.Path, "num_hidden_layers");
        return new Gemma2Model(cfg, w, backend);
    }

    /// <summary>Gemma 3's rope_scaling: HF supports linear on the global layers (e.g. factor 8 for 4B+); anything else is refused.</summary>
    static RopeScaling? Gemma3Scaling(HfConfig c)
    {
        var scaling = HfDecoderWeights.RopeScalingOf(c);
        if (scaling is { Type: not "linear" }) throw c.Invalid("rope_scaling", $"type '{scaling.Type}' is not supported for Gemma 3 (linear only)");
        return scaling;
    }

    public override BlockAnatomy Anatomy(int layer) => new(_ln1[layer], _attn[layer], _ln1Post[layer], _ln2[layer], _mlp[layer], _ln2Post[layer], false);

    protected override Tensor Block(int l, ForwardContext ctx, Tensor residPre)
    {
        // Sandwich norms: each sub-layer's output is normalized again before it joins the residual
        // stream, so hook_attn_out / hook_mlp_out (what is added) come after ln1_post / ln2_post.
        var names = _attn[l].Names;
        residPre = ctx.Hook(names.ResidPre, l, residPre);
        var attn = AttentionBranch(ctx, l, residPre, _ln1[l], _attn[l]);
        var attnOut = ctx.Hook(names.AttnOut, l, ctx.Replacing(attn, _ln1Post[l].Forward(ctx, l, attn)));
        var residMid = ctx.Hook(names.ResidMid, l, SumReleasing(ctx, residPre, attnOut));
        var mlpIn = MlpBranchInput(ctx, names, residMid);
        var mlp = SubLayer(ctx, mlpIn, _ln2[l].Forward(ctx, l, mlpIn), _mlp[l].Forward);
        var mlpOut = ctx.Hook(names.MlpOut, l, ctx.Replacing(mlp, _ln2Post[l].Forward(ctx, l, mlp)));
        return ctx.Hook(names.ResidPost, l, SumReleasing(ctx, residMid, mlpOut));
    }

    /// <summary>
    /// Returns <paramref name="dInput"/> (a sub-layer's backward from <paramref name="dPostNorm"/>, the post-norm's backward
    /// from <paramref name="dOut"/>) after releasing <paramref name="dPostNorm"/> — unless the post-norm passed
    /// <paramref name="dOut"/> through unchanged (kind None): that is the residual gradient, still to be summed.
    /// </summary>
    static Tensor AfterPostNorm(ForwardContext ctx, Tensor dOut, Tensor dPostNorm, Tensor dInput)
    {
        if (!ReferenceEquals(dPostNorm, dOut)) ctx.Release(dPostNorm);
        return dInput;
    }

    protected override Tensor BlockBackward(int l, ForwardContext ctx, Tensor dResidPost)
    {
        var names = _attn[l].Names;
        dResidPost = ctx.GradHook(names.ResidPost, l, dResidPost);
        // Forward: resid_post = resid_mid + ln2_post(mlp(ln2(hook_mlp_in))), hook_mlp_in = resid_mid.
        var dMlpOut = ctx.GradHook(names.MlpOut, l, dResidPost);
        var dMlp = _ln2Post[l].Backward(ctx, l, dMlpOut);
        var viaMlp = ctx.GradHook(names.HookMlpIn, l,
            SubLayerBackward(ctx, AfterPostNorm(ctx, dMlpOut, dMlp, _mlp[l].Backward(ctx, dMlp)), d => _ln2[l].Backward(ctx, l, d)));
        var dResidMid = ctx.GradHook(names.ResidMid, l, SumGradients(ctx, dResidPost, viaMlp));
        ctx.Release(dMlpOut);
        // Forward: resid_mid = resid_pre + ln1_post(attn(ln1(resid_pre))).
        var dAttnOut = ctx.GradHook(names.AttnOut, l, dResidMid);
        var dAttn = _ln1Post[l].Backward(ctx, l, dAttnOut);
        var viaAttn = AfterPostNorm(ctx, dAttnOut, dAttn, AttentionBranchBackward(ctx, l, dAttn, _ln1[l], _attn[l]));
        var dResidPre = SumGradients(ctx, dResidMid, viaAttn);
        ctx.Release(dAttnOut);
        return ctx.GradHook(names.ResidPre, l, dResidPre);
    }
}
