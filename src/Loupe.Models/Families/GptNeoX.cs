using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;

namespace Loupe.Models.Families;

// GPT-NeoX / Pythia (HF GPTNeoXForCausalLM). Shapes: embed_in [d_vocab, d_model];
// per block: input_layernorm, post_attention_layernorm, attention.query_key_value [3·d_model, d_model]
// (nn.Linear, output head-interleaved: per head q|k|v), attention.dense [d_model, d_model],
// mlp.dense_h_to_4h [d_mlp, d_model], mlp.dense_4h_to_h [d_model, d_mlp]; final_layer_norm;
// embed_out [d_vocab, d_model]. Partial rotary (rotary_pct of d_head), exact-erf gelu.

/// <summary>GPT-NeoX: parallel attention and MLP, partial rotary embeddings, LayerNorm.</summary>
public sealed class GptNeoXModel : HookedTransformer
{
    readonly Norm[] _ln1, _ln2;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer[] _mlp;
    readonly long _parameters;

    GptNeoXModel(ModelConfig cfg, WeightSource w, IComputeBackend? backend) : base(cfg, backend)
    {
        int D = cfg.DModel, M = cfg.DMlp, L = cfg.NLayers;
        WE = w.Get("gpt_neox.embed_in.weight", cfg.DVocab, D);
        var rotary = new RotaryTable(cfg.RotaryDim, cfg.RotaryBase, cfg.NCtx);
        _ln1 = new Norm[L]; _ln2 = new Norm[L]; _attn = new AttentionLayer[L]; _mlp = new MlpLayer[L];
        for (int l = 0; l < L; l++)
        {
            string b = $"gpt_neox.layers.{l}.";
            _ln1[l] = new Norm(NormKind.LayerNorm, w.Get(b + "input_layernorm.weight", D), w.Get(b + "input_layernorm.bias", D), cfg.NormEps, $"blocks.{l}.ln1");
            _ln2[l] = new Norm(NormKind.LayerNorm, w.Get(b + "post_attention_layernorm.weight", D), w.Get(b + "post_attention_layernorm.bias", D), cfg.NormEps, $"blocks.{l}.ln2");
            var qkv = new Linear(w.Get(b + "attention.query_key_value.weight", 3 * D, D), D, 3 * D, true, w.Get(b + "attention.query_key_value.bias", 3 * D));
            var o = new Linear(w.Get(b + "attention.dense.weight", D, D), D, D, true, w.Get(b + "attention.dense.bias", D));
            _attn[l] = new AttentionLayer(l, cfg, qkv, FusedQkvLayout.HeadInterleaved, o, rotary);
            _mlp[l] = new MlpLayer(l, cfg.ActFn!,
                new Linear(w.Get(b + "mlp.dense_h_to_4h.weight", M, D), D, M, true, w.Get(b + "mlp.dense_h_to_4h.bias", M)),
                new Linear(w.Get(b + "mlp.dense_4h_to_h.weight", D, M), M, D, true, w.Get(b + "mlp.dense_4h_to_h.bias", D)));
        }
        FinalNorm = new Norm(NormKind.LayerNorm, w.Get("gpt_neox.final_layer_norm.weight", D), w.Get("gpt_neox.final_layer_norm.bias", D), cfg.NormEps, "ln_final");
        Unembed = new Linear(w.Contains("embed_out.weight") ? w.Get("embed_out.weight", cfg.DVocab, D) : WE, D, cfg.DVocab, true);
        _parameters = w.ParameterCount;
    }

    public override long ParameterCount => _parameters;

    internal static GptNeoXModel Load(HfConfig c, WeightSource w, IComputeBackend? backend)
    {
        int d = c.Int("hidden_size", 1, HfConfig.MaxWidth), h = c.Int("num_attention_heads", 1, HfConfig.MaxWidth);
        int dh = c.Quotient("hidden_size", d, "num_attention_heads", h);
        int layers = c.Int("num_hidden_layers", 1, HfConfig.MaxLayers);
        int vocab = c.Int("vocab_size", 1, HfConfig.MaxVocab);
        // HF: rotary_ndims = int(head_size · rotary_pct), which must be a positive even number.
        string pctField = c.Has("rotary_pct") || !c.Has("partial_rotary_factor") ? "rotary_pct" : "partial_rotary_factor";
        double pct = c.Positive(pctField, 0.25, 1);
        int rotaryDim = (int)(dh * pct);
        if (rotaryDim < 2 || rotaryDim % 2 != 0)
            throw new InputError($"{c.Path}: {pctField} {HfConfig.Format(pct)} of a head dimension of {dh} gives {rotaryDim} rotary dimensions; expected a positive even number");
        var cfg = new ModelConfig
        {
            Architecture = "gpt_neox",
            NLayers = layers,
            DModel = d,
            NHeads = h,
            DHead = dh,
            DMlp = c.Int("intermediate_size", 1, HfConfig.MaxWidth),
            DVocab = vocab,
            NCtx = c.Int("max_position_embeddings", 1, HfConfig.MaxContext),
            ActFn = HfDecoderWeights.Activation(c, "hidden_act", c.String("hidden_act") ?? "gelu"),
            Normalization = NormKind.LayerNorm,
            NormEps = HfDecoderWeights.NormEps(c, "layer_norm_eps", 1e-5),
            RotaryDim = rotaryDim,
            RotaryBase = HfDecoderWeights.RopeBase(c, c.Has("rotary_emb_base") ? "rotary_emb_base" : "rope_theta"),
            ParallelAttnMlp = c.Bool("use_parallel_residual", true),
            AttnScale = 1f / MathF.Sqrt(dh),
            BosTokenId = HfDecoderWeights.TokenId(c, "bos_token_id", vocab),
            EosTokenId = HfDecoderWeights.TokenId(c, "eos_token_id", vocab),
            SourcePath = c.Path,
        };
        w.CheckNoLayerBeyond(l => $"gpt_neox.layers.{l}.", layers, c.Path, "num_hidden_layers");
        return new GptNeoXModel(cfg, w, backend);
    }

    public override BlockAnatomy Anatomy(int layer) => new(_ln1[layer], _attn[layer], null, _ln2[layer], _mlp[layer], null, Config.ParallelAttnMlp);

    protected override Tensor Block(int l, ForwardContext ctx, Tensor residPre)
    {
        if (!Config.ParallelAttnMlp) return SequentialBlock(l, ctx, residPre, _ln1[l], _attn[l], _ln2[l], _mlp[l]);
        // Parallel residual: both branches read resid_pre; there is no resid_mid.
        var names = _attn[l].Names;
        residPre = ctx.Hook(names.ResidPre, l, residPre);
        var attnOut = ctx.Hook(names.AttnOut, l, AttentionBranch(ctx, l, residPre, _ln1[l], _attn[l]));
        var mlpIn = MlpBranchInput(ctx, names, residPre);
        var mlpOut = ctx.Hook(names.MlpOut, l, SubLayer(ctx, mlpIn, _ln2[l].Forward(ctx, l, mlpIn), _mlp[l].Forward));
        return ctx.Hook(names.ResidPost, l, SumReleasing(ctx, residPre, attnOut, mlpOut));
    }

    protected override Tensor BlockBackward(int l, ForwardContext ctx, Tensor dResidPost)
    {
        if (!Config.ParallelAttnMlp) return SequentialBlockBackward(l, ctx, dResidPost, _ln1[l], _attn[l], _ln2[l], _mlp[l]);
        // Forward: resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(hook_mlp_in)), hook_mlp_in = resid_pre.
        var names = _attn[l].Names;
        dResidPost = ctx.GradHook(names.ResidPost, l, dResidPost);
        var dMlpOut = ctx.GradHook(names.MlpOut, l, dResidPost);
        var viaMlp = ctx.GradHook(names.HookMlpIn, l, SubLayerBackward(ctx, _mlp[l].Backward(ctx, dMlpOut), d => _ln2[l].Backward(ctx, l, d)));
        var dAttnOut = ctx.GradHook(names.AttnOut, l, dResidPost);
        var viaAttn = AttentionBranchBackward(ctx, l, dAttnOut, _ln1[l], _attn[l]);
        var dResidPre = SumGradients(ctx, dResidPost, viaMlp, viaAttn);
        ctx.Release(dMlpOut); // hooks' replacements of d resid_post; else the same tensor, released just above
        ctx.Release(dAttnOut);
        return ctx.GradHook(names.ResidPre, l, dResidPre);
    }
}
