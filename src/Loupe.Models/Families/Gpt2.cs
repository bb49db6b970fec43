using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Families;

// GPT-2 (HF GPT2LMHeadModel). Shapes: W_E [d_vocab, d_model], W_pos [n_ctx, d_model];
// per block: ln_1, attn.c_attn [d_model, 3·d_model] (Conv1D, [in, out], columns q|k|v),
// attn.c_proj [d_model, d_model], ln_2, mlp.c_fc [d_model, d_mlp], mlp.c_proj [d_mlp, d_model];
// ln_f; the unembedding is tied to W_E. Block: pre-norm, sequential, LayerNorm, gelu_new.

/// <summary>GPT-2: learned positions, LayerNorm, fused Conv1D attention, tied unembedding.</summary>
public sealed class Gpt2Model : HookedTransformer
{
    readonly Norm[] _ln1, _ln2;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer[] _mlp;
    readonly long _parameters;

    Gpt2Model(ModelConfig cfg, WeightSource w, IComputeBackend? backend) : base(cfg, backend)
    {
        // The original OpenAI checkpoints on the hub have no "transformer." prefix; save_pretrained adds it.
        string p = w.Contains("transformer.wte.weight") ? "transformer." : "";
        int D = cfg.DModel, M = cfg.DMlp, L = cfg.NLayers;
        WE = w.Get(p + "wte.weight", cfg.DVocab, D);
        WPos = w.Get(p + "wpe.weight", cfg.NCtx, D);
        _ln1 = new Norm[L]; _ln2 = new Norm[L]; _attn = new AttentionLayer[L]; _mlp = new MlpLayer[L];
        for (int l = 0; l < L; l++)
        {
            string b = $"{p}h.{l}.";
            _ln1[l] = new Norm(NormKind.LayerNorm, w.Get(b + "ln_1.weight", D), w.Get(b + "ln_1.bias", D), cfg.NormEps, $"blocks.{l}.ln1");
            _ln2[l] = new Norm(NormKind.LayerNorm, w.Get(b + "ln_2.weight", D), w.Get(b + "ln_2.bias", D), cfg.NormEps, $"blocks.{l}.ln2");
            var qkv = new Linear(w.Get(b + "attn.c_attn.weight", D, 3 * D), D, 3 * D, false, w.Get(b + "attn.c_attn.bias", 3 * D));
            var o = new Linear(w.Get(b + "attn.c_proj.weight", D, D), D, D, false, w.Get(b + "attn.c_proj.bias", D));
            _attn[l] = new AttentionLayer(l, cfg, qkv, FusedQkvLayout.Concatenated, o, rotary: null);
            _mlp[l] = new MlpLayer(l, cfg.ActFn!,
                new Linear(w.Get(b + "mlp.c_fc.weight", D, M), D, M, false, w.Get(b + "mlp.c_fc.bias", M)),
                new Linear(w.Get(b + "mlp.c_proj.weight", M, D), M, D, false, w.Get(b + "mlp.c_proj.bias", D)));
        }
        FinalNorm = new Norm(NormKind.LayerNorm, w.Get(p + "ln_f.weight", D), w.Get(p + "ln_f.bias", D), cfg.NormEps, "ln_final");
        Unembed = w.Contains("lm_head.weight")
            ? new Linear(w.Get("lm_head.weight", cfg.DVocab, D), D, cfg.DVocab, true)
            : new Linear(WE, D, cfg.DVocab, true);
        _parameters = w.ParameterCount;
    }

    public override long ParameterCount => _parameters;

    internal static ModelConfig ReadConfig(HfConfig c)
    {
        int d = c.Int("n_embd", 1, HfConfig.MaxWidth), h = c.Int("n_head", 1, HfConfig.MaxWidth);
        int dh = c.Quotient("n_embd", d, "n_head", h);
        if (c.Bool("scale_attn_by_inverse_layer_idx", false))
            throw c.Invalid("scale_attn_by_inverse_layer_idx", "GPT-2 variants that scale attention by the inverse layer index are not supported");
        if (c.Bool("reorder_and_upcast_attn", false))
            throw c.Invalid("reorder_and_upcast_attn", "GPT-2 variants with reordered, upcast attention are not supported");
        int vocab = c.Int("vocab_size", 1, HfConfig.MaxVocab);
        return new ModelConfig
        {
            Architecture = "gpt2",
            NLayers = c.Int("n_layer", 1, HfConfig.MaxLayers),
            DModel = d,
            NHeads = h,
            DHead = dh,
            DMlp = c.OptionalInt("n_inner", 1, HfConfig.MaxWidth) ?? c.ProductWithin("4 × n_embd", HfConfig.MaxWidth, 4, d),
            DVocab = vocab,
            NCtx = c.OptionalInt("n_positions", 1, HfConfig.MaxContext) ?? c.Int("n_ctx", 1, HfConfig.MaxContext),
            ActFn = HfDecoderWeights.Activation(c, "activation_function", c.String("activation_function") ?? "gelu_new"),
            Normalization = NormKind.LayerNorm,
            NormEps = HfDecoderWeights.NormEps(c, "layer_norm_epsilon", 1e-5),
            LearnedPositions = true,
            AttnScale = c.Bool("scale_attn_weights", true) ? 1f / MathF.Sqrt(dh) : 1f,
            BosTokenId = HfDecoderWeights.TokenId(c, "bos_token_id", vocab),
            EosTokenId = HfDecoderWeights.TokenId(c, "eos_token_id", vocab),
            SourcePath = c.Path,
        };
    }

    internal static Gpt2Model Load(HfConfig c, WeightSource w, IComputeBackend? backend)
    {
        var cfg = ReadConfig(c);
        string p = w.Contains("transformer.wte.weight") ? "transformer." : "";
        w.CheckNoLayerBeyond(l => $"{p}h.{l}.", cfg.NLayers, c.Path, "n_layer");
        return new(cfg, w, backend);
    }

    public override BlockAnatomy Anatomy(int layer) => new(_ln1[layer], _attn[layer], null, _ln2[layer], _mlp[layer], null, false);
}
