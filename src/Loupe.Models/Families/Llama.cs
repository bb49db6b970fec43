using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;

namespace Loupe.Models.Families;

// Llama, Mistral and Qwen2 (HF LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
// Shapes: embed_tokens [d_vocab, d_model]; per block: input_layernorm [d_model],
// self_attn.q_proj [n_heads·d_head, d_model], k_proj/v_proj [n_kv_heads·d_head, d_model] (Qwen2: with biases),
// o_proj [d_model, n_heads·d_head], post_attention_layernorm, mlp.gate_proj/up_proj [d_mlp, d_model],
// down_proj [d_model, d_mlp]; model.norm; lm_head [d_vocab, d_model] or tied.
// Block: pre-norm, sequential, RMSNorm, rotate-half RoPE over all of d_head, SwiGLU, grouped-query attention.
// Phi-3 / Phi-4 (HF Phi3ForCausalLM) is the same block with fused weights: self_attn.qkv_proj [(H + 2·KV)·d_head, d_model]
// (q, k, v rows in that order) and mlp.gate_up_proj [2·d_mlp, d_model] (gate rows first), read as row blocks of the mapped
// tensors; RoPE over the first partial_rotary_factor·d_head dims; LongRoPE scaling; a sliding window when set.

/// <summary>Llama-lineage decoders: Llama 1/2/3, Mistral (sliding window), Qwen2 (q/k/v biases), Qwen3 (q/k norms), Phi-3 (fused projections).</summary>
public sealed class LlamaModel : HookedTransformer
{
    readonly Norm[] _ln1, _ln2;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer[] _mlp;
    readonly long _parameters;

    LlamaModel(ModelConfig cfg, WeightSource w, IComputeBackend? backend) : base(cfg, backend)
    {
        int L = cfg.NLayers;
        WE = w.Get("model.embed_tokens.weight", cfg.DVocab, cfg.DModel);
        var inverse = RotaryTable.DefaultInverseFrequencies(cfg.RotaryDim, cfg.RotaryBase);
        var scaling = cfg.RopeScaling;
        var rotary = new RotaryTable(cfg.RotaryDim, scaling?.Apply(inverse) ?? inverse, cfg.NCtx, (float)(scaling?.AttentionFactor ?? 1))
        {
            LengthDependent = scaling?.Type switch
            {
                "dynamic" => length => scaling.DynamicInverseFrequencies(cfg.RotaryDim, cfg.RotaryBase, length),
                "longrope" => length => scaling.LongRopeInverseFrequencies(inverse, length),
                _ => null,
            },
        };
        bool fused = cfg.Architecture == "phi3";
        _ln1 = new Norm[L]; _ln2 = new Norm[L]; _attn = new AttentionLayer[L]; _mlp = new MlpLayer[L];
        for (int l = 0; l < L; l++)
        {
            _ln1[l] = HfDecoderWeights.RmsNorm(w, HfDecoderWeights.Layer(l) + "input_layernorm.weight", cfg, $"blocks.{l}.ln1");
            _ln2[l] = HfDecoderWeights.RmsNorm(w, HfDecoderWeights.Layer(l) + "post_attention_layernorm.weight", cfg, $"blocks.{l}.ln2");
            _attn[l] = fused ? HfDecoderWeights.FusedAttention(l, cfg, w, rotary) : HfDecoderWeights.Attention(l, cfg, w, rotary);
            _mlp[l] = fused ? HfDecoderWeights.FusedGatedMlp(l, cfg, w) : HfDecoderWeights.GatedMlp(l, cfg, w);
        }
        FinalNorm = HfDecoderWeights.RmsNorm(w, "model.norm.weight", cfg, "ln_final");
        Unembed = HfDecoderWeights.Unembed(cfg, w, WE);
        _parameters = w.ParameterCount;
    }

    public override long ParameterCount => _parameters;

    /// <summary>Reads a llama, mistral, qwen2, qwen3 or phi3 config (its model_type) and weights. Qwen3 adds per-head q/k RMSNorm; Phi-3 fuses q/k/v and gate/up.</summary>
    internal static LlamaModel Load(string modelType, HfConfig c, WeightSource w, IComputeBackend? backend)
    {
        var (d, h, kv, dh, layers, dMlp, vocab, nCtx) = HfDecoderWeights.Sizes(c);
        var scaling = HfDecoderWeights.RopeScalingOf(c);
        // Mistral always slides when sliding_window is set; Qwen2 only with use_sliding_window.
        int window = modelType switch
        {
            "mistral" or "phi3" => c.OptionalInt("sliding_window", 0) ?? 0,
            "qwen2" or "qwen3" when c.Bool("use_sliding_window", false) => c.OptionalInt("sliding_window", 0) ?? 0,
            _ => 0,
        };
        if (modelType is "qwen2" or "qwen3" && window > 0 && (c.OptionalInt("max_window_layers", 0) ?? layers) < layers)
            throw c.Invalid("max_window_layers", $"{modelType} with sliding windows on only some layers is not supported");
        // HF's rotary width: int(head_dim · partial_rotary_factor) (Phi-4-mini: 0.75); the other Llama-lineage families rotate all of it.
        int rotaryDim = dh;
        if (modelType == "phi3" && c.Has("partial_rotary_factor"))
        {
            double partial = c.Double("partial_rotary_factor", 1, 0, 1);
            rotaryDim = (int)(dh * partial);
            if (rotaryDim < 2 || rotaryDim % 2 != 0)
                throw c.Invalid("partial_rotary_factor", $"gives a rotary width of {rotaryDim} of head_dim {dh}; expected an even number of at least 2");
        }
        if (scaling is { Type: "longrope" } && scaling.ShortFactor!.Length != rotaryDim / 2)
            throw c.Invalid("rope_scaling", $"short_factor and long_factor have {scaling.ShortFactor.Length} values; the rotary width {rotaryDim} has {rotaryDim / 2} frequencies");
        var cfg = new ModelConfig
        {
            Architecture = modelType,
            NLayers = layers,
            DModel = d,
            NHeads = h,
            NKeyValueHeads = kv,
            DHead = dh,
            DMlp = dMlp,
            DVocab = vocab,
            // Dynamic NTK scaling exists to run past max_position_embeddings: Loupe accepts up to factor × that.
            NCtx = scaling is { Type: "dynamic" } ? (int)Math.Min(HfConfig.MaxContext, nCtx * scaling.Factor) : nCtx,
            ActFn = HfDecoderWeights.Activation(c, "hidden_act", c.String("hidden_act") ?? "silu"),
            GatedMlp = true,
            QkNorm = modelType == "qwen3",
            Normalization = NormKind.RmsNorm,
            NormEps = HfDecoderWeights.NormEps(c, "rms_norm_eps", 1e-6),
            RotaryDim = rotaryDim,
            RotaryBase = HfDecoderWeights.RopeTheta(c, scalingHandled: true),
            RopeScaling = scaling,
            AttnScale = 1f / MathF.Sqrt(dh),
            SlidingWindow = window,
            BosTokenId = HfDecoderWeights.TokenId(c, "bos_token_id", vocab),
            EosTokenId = HfDecoderWeights.TokenId(c, "eos_token_id", vocab),
            SourcePath = c.Path,
        };
        w.CheckNoLayerBeyond(HfDecoderWeights.Layer, layers, c.Path, "num_hidden_layers");
        return new LlamaModel(cfg, w, backend);
    }

    public override BlockAnatomy Anatomy(int layer) => new(_ln1[layer], _attn[layer], null, _ln2[layer], _mlp[layer], null, false);
}
