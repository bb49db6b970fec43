using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Families;

// TransformerLens's own checkpoint layout (config.json with "format": "transformer_lens").
// Shapes: embed.W_E [d_vocab, d_model], pos_embed.W_pos [n_ctx, d_model];
// blocks.{l}.attn.W_Q/W_K/W_V [n_heads, d_model, d_head], b_Q/b_K/b_V [n_heads, d_head],
// W_O [n_heads, d_head, d_model], b_O [d_model]; blocks.{l}.mlp.W_in [d_model, d_mlp], b_in,
// W_out [d_mlp, d_model], b_out; optional ln1/ln2/ln_final .w/.b; unembed.W_U [d_model, d_vocab_out], b_U.

/// <summary>Models saved in TransformerLens's layout (e.g. the grokking and induction toy models).</summary>
public sealed class TransformerLensModel : HookedTransformer
{
    readonly Norm[] _ln1, _ln2;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer?[] _mlp;
    readonly long _parameters;

    TransformerLensModel(ModelConfig cfg, WeightSource w, IComputeBackend? backend) : base(cfg, backend)
    {
        int D = cfg.DModel, H = cfg.NHeads, dh = cfg.DHead, M = cfg.DMlp, L = cfg.NLayers;
        WE = w.Get("embed.W_E", cfg.DVocab, D);
        if (cfg.LearnedPositions) WPos = w.Get("pos_embed.W_pos", cfg.NCtx, D);
        _ln1 = new Norm[L]; _ln2 = new Norm[L]; _attn = new AttentionLayer[L]; _mlp = new MlpLayer?[L];
        for (int l = 0; l < L; l++)
        {
            string b = $"blocks.{l}.";
            _ln1[l] = LoadNorm(w, cfg, b + "ln1", $"blocks.{l}.ln1");
            _ln2[l] = LoadNorm(w, cfg, b + "ln2", $"blocks.{l}.ln2");
            _attn[l] = new AttentionLayer(l, cfg,
                HeadsToLinear(w, b + "attn.W_Q", b + "attn.b_Q", H, D, dh),
                HeadsToLinear(w, b + "attn.W_K", b + "attn.b_K", H, D, dh),
                HeadsToLinear(w, b + "attn.W_V", b + "attn.b_V", H, D, dh),
                // W_O [n_heads, d_head, d_model] is already [n_heads·d_head, d_model] in memory.
                new Linear(w.Get(b + "attn.W_O", H, dh, D), H * dh, D, false, w.Optional(b + "attn.b_O", D)),
                rotary: null);
            if (cfg.HasMlp)
                _mlp[l] = new MlpLayer(l, cfg.ActFn!,
                    new Linear(w.Get(b + "mlp.W_in", D, M), D, M, false, w.Optional(b + "mlp.b_in", M)),
                    new Linear(w.Get(b + "mlp.W_out", M, D), M, D, false, w.Optional(b + "mlp.b_out", D)));
        }
        FinalNorm = LoadNorm(w, cfg, "ln_final", "ln_final");
        Unembed = new Linear(w.Get("unembed.W_U", D, cfg.VocabOut), D, cfg.VocabOut, false, w.Optional("unembed.b_U", cfg.VocabOut));
        _parameters = w.ParameterCount;
    }

    public override long ParameterCount => _parameters;

    static Norm LoadNorm(WeightSource w, ModelConfig cfg, string tensorPrefix, string hookPrefix) => cfg.Normalization switch
    {
        NormKind.None => new Norm(NormKind.None, default, default, 0, hookPrefix),
        NormKind.LayerNorm => new Norm(NormKind.LayerNorm, w.Get(tensorPrefix + ".w", cfg.DModel), w.Get(tensorPrefix + ".b", cfg.DModel), cfg.NormEps, hookPrefix),
        _ => new Norm(NormKind.RmsNorm, w.Get(tensorPrefix + ".w", cfg.DModel), default, cfg.NormEps, hookPrefix),
    };

    /// <summary>W [n_heads, d_model, d_head] re-laid out as one [d_model, n_heads·d_head] matrix (a copy; TL checkpoints are small).</summary>
    static Linear HeadsToLinear(WeightSource w, string weight, string bias, int H, int D, int dh)
    {
        var src = w.Get(weight, H, D, dh).Span;
        var dst = new float[D * H * dh];
        for (int h = 0; h < H; h++)
            for (int d = 0; d < D; d++)
                src.Slice((h * D + d) * dh, dh).CopyTo(dst.AsSpan(d * H * dh + h * dh, dh));
        return new Linear(dst, D, H * dh, false, w.Optional(bias, H, dh));
    }

    internal static TransformerLensModel Load(HfConfig c, WeightSource w, IComputeBackend? backend)
    {
        string? norm = c.String("normalization_type");
        var kind = norm switch
        {
            null => NormKind.None,
            "LN" => NormKind.LayerNorm,
            "RMS" => NormKind.RmsNorm,
            _ => throw c.Invalid("normalization_type", $"'{norm}' is not supported (null, LN, RMS); fold LNPre/RMSPre weights first"),
        };
        string pos = c.String("positional_embedding_type") ?? "standard";
        if (pos != "standard")
            throw c.Invalid("positional_embedding_type", $"'{pos}' is not supported for TransformerLens checkpoints (standard)");
        string dir = c.String("attention_dir") ?? "causal";
        if (dir != "causal")
            throw c.Invalid("attention_dir", $"'{dir}' is not supported; only causal attention is");
        int heads = c.Int("n_heads", 1, HfConfig.MaxWidth), dh = c.Int("d_head", 1, HfConfig.MaxWidth);
        c.ProductWithin("n_heads × d_head", HfConfig.MaxWidth, heads, dh);
        bool attnOnly = c.Bool("attn_only", false);
        int layers = c.Int("n_layers", 1, HfConfig.MaxLayers);
        int vocab = c.Int("d_vocab", 1, HfConfig.MaxVocab);
        int dMlp = attnOnly ? 0 : c.Int("d_mlp", 1, HfConfig.MaxWidth);
        var cfg = new ModelConfig
        {
            Architecture = "transformer_lens",
            NLayers = layers,
            DModel = c.Int("d_model", 1, HfConfig.MaxWidth),
            NHeads = heads,
            DHead = dh,
            DMlp = dMlp,
            AttnOnly = attnOnly,
            DVocab = vocab,
            DVocabOut = c.OptionalInt("d_vocab_out", 1, HfConfig.MaxVocab) ?? vocab,
            NCtx = c.Int("n_ctx", 1, HfConfig.MaxContext),
            ActFn = dMlp > 0 ? HfDecoderWeights.Activation(c, "act_fn", c.String("act_fn") ?? throw c.Missing("act_fn", "the MLP activation, e.g. \"gelu\"")) : c.String("act_fn"),
            Normalization = kind,
            NormEps = HfDecoderWeights.NormEps(c, "eps", 1e-5),
            LearnedPositions = true,
            // TransformerLens divides scores by attn_scale (default √d_head).
            AttnScale = c.Bool("use_attn_scale", true) ? (float)(1 / c.Double("attn_scale", Math.Sqrt(dh), 1e-6, 1e6)) : 1f,
            SourcePath = c.Path,
        };
        w.CheckNoLayerBeyond(l => $"blocks.{l}.", layers, c.Path, "n_layers");
        return new TransformerLensModel(cfg, w, backend);
    }

    public override BlockAnatomy Anatomy(int layer) => new(_ln1[layer], _attn[layer], null, _mlp[layer] is null ? null : _ln2[layer], _mlp[layer], null, false);
}
