using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Families;

// GPT-Neo (HF GPTNeoForCausalLM; the TinyStories models). Shapes: W_E [d_vocab, d_model], W_pos [n_ctx, d_model];
// per block: ln_1, attn.attention.{q,k,v}_proj [d_model, d_model] (nn.Linear, no bias), out_proj (bias), ln_2,
// mlp.c_fc [d_mlp, d_model], mlp.c_proj [d_model, d_mlp] (nn.Linear); ln_f; tied unembedding.
// Block: pre-norm, sequential, LayerNorm, gelu_new. Attention: NO 1/√d_head scaling; layers alternate
// "global" (causal) and "local" (causal within window_size: query q sees keys k with q − k < window_size).

/// <summary>GPT-Neo: learned positions, LayerNorm, unscaled attention, global and local (windowed) layers.</summary>
public sealed class GptNeoModel : HookedTransformer
{
    readonly Norm[] _ln1, _ln2;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer[] _mlp;
    readonly long _parameters;

    GptNeoModel(ModelConfig cfg, WeightSource w, IComputeBackend? backend) : base(cfg, backend)
    {
        int D = cfg.DModel, M = cfg.DMlp, L = cfg.NLayers;
        WE = w.Get("transformer.wte.weight", cfg.DVocab, D);
        WPos = w.Get("transformer.wpe.weight", cfg.NCtx, D);
        _ln1 = new Norm[L]; _ln2 = new Norm[L]; _attn = new AttentionLayer[L]; _mlp = new MlpLayer[L];
        for (int l = 0; l < L; l++)
        {
            string b = $"transformer.h.{l}.", a = b + "attn.attention.";
            _ln1[l] = new Norm(NormKind.LayerNorm, w.Get(b + "ln_1.weight", D), w.Get(b + "ln_1.bias", D), cfg.NormEps, $"blocks.{l}.ln1");
            _ln2[l] = new Norm(NormKind.LayerNorm, w.Get(b + "ln_2.weight", D), w.Get(b + "ln_2.bias", D), cfg.NormEps, $"blocks.{l}.ln2");
            _attn[l] = new AttentionLayer(l, cfg,
                new Linear(w.Get(a + "q_proj.weight", D, D), D, D, true),
                new Linear(w.Get(a + "k_proj.weight", D, D), D, D, true),
                new Linear(w.Get(a + "v_proj.weight", D, D), D, D, true),
                new Linear(w.Get(a + "out_proj.weight", D, D), D, D, true, w.Get(a + "out_proj.bias", D)),
                rotary: null);
            _mlp[l] = new MlpLayer(l, cfg.ActFn!,
                new Linear(w.Get(b + "mlp.c_fc.weight", M, D), D, M, true, w.Get(b + "mlp.c_fc.bias", M)),
                new Linear(w.Get(b + "mlp.c_proj.weight", D, M), M, D, true, w.Get(b + "mlp.c_proj.bias", D)));
        }
        FinalNorm = new Norm(NormKind.LayerNorm, w.Get("transformer.ln_f.weight", D), w.Get("transformer.ln_f.bias", D), cfg.NormEps, "ln_final");
        Unembed = w.Contains("lm_head.weight") ? new Linear(w.Get("lm_head.weight", cfg.DVocab, D), D, cfg.DVocab, true) : new Linear(WE, D, cfg.DVocab, true);
        _parameters = w.ParameterCount;
    }

    public override long ParameterCount => _parameters;

    internal static ModelConfig ReadConfig(HfConfig c)
    {
        int d = c.Int("hidden_size", 1, HfConfig.MaxWidth), h = c.Int("num_heads", 1, HfConfig.MaxWidth);
        int dh = c.Quotient("hidden_size", d, "num_heads", h);
        int layers = c.Int("num_layers", 1, HfConfig.MaxLayers), vocab = c.Int("vocab_size", 1, HfConfig.MaxVocab);
        // attention_layers: one "global" or "local" per layer (HF expands attention_types into it).
        var kinds = c.Element("attention_layers") is { ValueKind: System.Text.Json.JsonValueKind.Array } list
            ? list.EnumerateArray().Select(e => e.ValueKind == System.Text.Json.JsonValueKind.String ? e.GetString()! : throw c.Wrong("attention_layers", "an array of \"global\" / \"local\"", e)).ToArray()
            : throw c.Invalid("attention_layers", "is required: one \"global\" or \"local\" per layer");
        if (kinds.Length != layers) throw c.Invalid("attention_layers", $"has {kinds.Length} entries; num_layers is {layers}");
        foreach (var k in kinds)
            if (k is not ("global" or "local")) throw c.Invalid("attention_layers", $"'{k}' is neither \"global\" nor \"local\"");
        int window = kinds.Contains("local") ? c.Int("window_size", 1, HfConfig.MaxContext) : 0;
        return new ModelConfig
        {
            Architecture = "gpt_neo",
            NLayers = layers,
            DModel = d,
            NHeads = h,
            DHead = dh,
            DMlp = c.OptionalInt("intermediate_size", 1, HfConfig.MaxWidth) ?? c.ProductWithin("4 × hidden_size", HfConfig.MaxWidth, 4, d),
            DVocab = vocab,
            NCtx = c.Int("max_position_embeddings", 1, HfConfig.MaxContext),
            ActFn = HfDecoderWeights.Activation(c, "activation_function", c.String("activation_function") ?? "gelu_new"),
            Normalization = NormKind.LayerNorm,
            NormEps = HfDecoderWeights.NormEps(c, "layer_norm_epsilon", 1e-5),
            LearnedPositions = true,
            AttnScale = 1f, // GPT-Neo does not scale q·k by 1/√d_head
            SlidingWindow = window,
            LocalLayers = [.. kinds.Select(k => k == "local")],
            BosTokenId = HfDecoderWeights.TokenId(c, "bos_token_id", vocab),
            EosTokenId = HfDecoderWeights.TokenId(c, "eos_token_id", vocab),
            SourcePath = c.Path,
        };
    }

    internal static GptNeoModel Load(HfConfig c, WeightSource w, IComputeBackend? backend)
    {
        var cfg = ReadConfig(c);
        w.CheckNoLayerBeyond(l => $"transformer.h.{l}.", cfg.NLayers, c.Path, "num_layers");
        return new(cfg, w, backend);
    }

    public override BlockAnatomy Anatomy(int layer) => new(_ln1[layer], _attn[layer], null, _ln2[layer], _mlp[layer], null, false);
}
