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
// Buffers a HookedTransformer's state_dict also holds (blocks.{l}.attn.mask, .IGNORE) are not read.
// Config: HookedTransformerConfig's fields, or a NeelNanda toy model's (TransformerLens's convert_neel_model_config).
// Positions: standard (added to the stream) or shortformer (added to each layer's query and key inputs after ln1, never to
// the stream: ModelConfig.ShortformerPositions).

/// <summary>Models saved in TransformerLens's layout (e.g. the grokking and induction toy models).</summary>
public sealed class TransformerLensModel : HookedTransformer
{
    readonly Norm[] _ln1, _ln2;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer?[] _mlp;
    readonly long _parameters;

    TransformerLensModel(ModelConfig cfg, WeightSource w, IComputeBackend? backend, bool normsFolded, NormKind finalNorm) : base(cfg, backend)
    {
        int D = cfg.DModel, H = cfg.NHeads, dh = cfg.DHead, M = cfg.DMlp, L = cfg.NLayers;
        WE = w.Get("embed.W_E", cfg.DVocab, D);
        if (cfg.LearnedPositions) WPos = w.Get("pos_embed.W_pos", cfg.NCtx, D);
        _ln1 = new Norm[L]; _ln2 = new Norm[L]; _attn = new AttentionLayer[L]; _mlp = new MlpLayer?[L];
        for (int l = 0; l < L; l++)
        {
            string b = $"blocks.{l}.";
            _ln1[l] = LoadNorm(w, cfg, cfg.Normalization, normsFolded, b + "ln1", $"blocks.{l}.ln1");
            _ln2[l] = LoadNorm(w, cfg, cfg.HasMlp ? cfg.Normalization : NormKind.None, normsFolded, b + "ln2", $"blocks.{l}.ln2");
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
                    new Linear(w.Get(b + "mlp.W_out", M, D), M, D, false, w.Optional(b + "mlp.b_out", D)),
                    innerNorm: cfg.ActFn == MlpLayer.SoluLn ? SoluNorm(w, cfg, normsFolded, b + "mlp.ln", l) : null);
        }
        FinalNorm = LoadNorm(w, cfg, finalNorm, normsFolded, "ln_final", "ln_final");
        Unembed = new Linear(w.Get("unembed.W_U", D, cfg.VocabOut), D, cfg.VocabOut, false, w.Optional("unembed.b_U", cfg.VocabOut));
        _parameters = w.ParameterCount;
    }

    public override long ParameterCount => _parameters;

    /// <summary>
    /// The LayerNorm over d_mlp after SoLU: with its weights <c>mlp.ln.w</c>, <c>mlp.ln.b</c> when the model's normalization is LN,
    /// else weightless (TransformerLens builds LayerNormPre there).
    /// </summary>
    static Norm SoluNorm(WeightSource w, ModelConfig cfg, bool folded, string prefix, int layer)
    {
        int M = cfg.DMlp;
        if (cfg.Normalization == NormKind.LayerNorm && !folded)
            return new Norm(NormKind.LayerNorm, w.Get(prefix + ".w", M), w.Get(prefix + ".b", M), cfg.NormEps, $"blocks.{layer}.mlp.ln");
        var pre = new Norm(NormKind.LayerNorm, default, default, cfg.NormEps, $"blocks.{layer}.mlp.ln");
        pre.MarkFolded();
        return pre;
    }

    // LNPre / RMSPre (TransformerLens's folded norms) centre and scale only: no tensors, marked folded as processing leaves them.
    static Norm LoadNorm(WeightSource w, ModelConfig cfg, NormKind kind, bool folded, string tensorPrefix, string hookPrefix)
    {
        if (folded && kind != NormKind.None)
        {
            var pre = new Norm(kind, default, default, cfg.NormEps, hookPrefix);
            pre.MarkFolded();
            return pre;
        }
        return kind switch
        {
            NormKind.None => new Norm(NormKind.None, default, default, 0, hookPrefix),
            NormKind.LayerNorm => new Norm(NormKind.LayerNorm, w.Get(tensorPrefix + ".w", cfg.DModel), w.Get(tensorPrefix + ".b", cfg.DModel), cfg.NormEps, hookPrefix),
            _ => new Norm(NormKind.RmsNorm, w.Get(tensorPrefix + ".w", cfg.DModel), default, cfg.NormEps, hookPrefix),
        };
    }

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
        // NeelNanda's toy models (gelu-2l, attn-only-2l, …) name two fields as their training code did; TransformerLens's
        // convert_neel_model_config reads "normalization" before "normalization_type" and maps "shortformer_pos".
        string normField = c.Has("normalization") ? "normalization" : "normalization_type";
        string? norm = c.String(normField);
        var (kind, preFolded) = norm switch
        {
            null => (NormKind.None, false),
            "LN" => (NormKind.LayerNorm, false),
            "LNPre" => (NormKind.LayerNorm, true),
            "RMS" => (NormKind.RmsNorm, false),
            "RMSPre" => (NormKind.RmsNorm, true),
            _ => throw c.Invalid(normField, $"'{norm}' is not supported (null, LN, LNPre, RMS, RMSPre)"),
        };
        string pos = c.String("positional_embedding_type") ?? (c.Bool("shortformer_pos", false) ? "shortformer" : "standard");
        if (pos is not ("standard" or "shortformer"))
            throw c.Invalid("positional_embedding_type", $"'{pos}' is not supported for TransformerLens checkpoints (standard, shortformer)");
        string dir = c.String("attention_dir") ?? "causal";
        if (dir != "causal")
            throw c.Invalid("attention_dir", $"'{dir}' is not supported; only causal attention is");
        RefuseUnsupported(c);
        int heads = c.Int("n_heads", 1, HfConfig.MaxWidth), dh = c.Int("d_head", 1, HfConfig.MaxWidth);
        c.ProductWithin("n_heads × d_head", HfConfig.MaxWidth, heads, dh);
        bool attnOnly = c.Bool("attn_only", false);
        int layers = c.Int("n_layers", 1, HfConfig.MaxLayers);
        int vocab = c.Int("d_vocab", 1, HfConfig.MaxVocab);
        int dMlp = attnOnly ? 0 : c.Int("d_mlp", 1, HfConfig.MaxWidth);
        string? actFn = c.String("act_fn");
        // TransformerLens writes d_vocab_out −1 for "same as d_vocab".
        int vocabOut = c.Has("d_vocab_out") && c.Element("d_vocab_out") is { ValueKind: System.Text.Json.JsonValueKind.Number } o && o.TryGetInt32(out int v) && v == -1
            ? vocab : c.OptionalInt("d_vocab_out", 1, HfConfig.MaxVocab) ?? vocab;
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
            DVocabOut = vocabOut,
            NCtx = c.Int("n_ctx", 1, HfConfig.MaxContext),
            ActFn = dMlp == 0 || actFn == MlpLayer.SoluLn ? actFn
                : HfDecoderWeights.Activation(c, "act_fn", actFn ?? throw c.Missing("act_fn", "the MLP activation, e.g. \"gelu\" (or solu_ln)")),
            Normalization = kind,
            NormEps = HfDecoderWeights.NormEps(c, "eps", 1e-5),
            LearnedPositions = true,
            ShortformerPositions = pos == "shortformer",
            TokenizerName = c.String("tokenizer_name"),
            // TransformerLens divides scores by attn_scale (default √d_head).
            AttnScale = c.Bool("use_attn_scale", true) ? (float)(1 / c.Double("attn_scale", Math.Sqrt(dh), 1e-6, 1e6)) : 1f,
            SourcePath = c.Path,
        };
        w.CheckNoLayerBeyond(l => $"blocks.{l}.", layers, c.Path, "n_layers");
        // final_rms: an LN model whose last norm is an RMSNorm (TransformerLens keeps it for NeelNanda's SoLU runs).
        var finalKind = kind == NormKind.LayerNorm && !preFolded && c.Bool("final_rms", false) ? NormKind.RmsNorm : kind;
        return new TransformerLensModel(cfg, w, backend, preFolded, finalKind);
    }

    /// <summary>HookedTransformerConfig fields that change the computation in ways this family does not run: refused by name.</summary>
    static void RefuseUnsupported(HfConfig c)
    {
        foreach (var flag in new[] { "use_local_attn", "parallel_attn_mlp", "scale_attn_by_inverse_layer_idx", "gated_mlp", "use_qk_norm",
                     "use_normalization_before_and_after", "rotary_adjacent_pairs" })
            if (c.Bool(flag, false))
                throw c.Invalid(flag, "true is not supported for TransformerLens checkpoints (Loupe runs the plain pre-norm block)");
        if (c.Has("n_key_value_heads"))
            throw c.Invalid("n_key_value_heads", "grouped-query attention is not supported for TransformerLens checkpoints");
        foreach (var cap in new[] { "attn_scores_soft_cap", "output_logits_soft_cap" })
            if (c.OptionalDouble(cap) is double d && d > 0)
                throw c.Invalid(cap, "soft-capping is not supported for TransformerLens checkpoints");
        if (c.String("original_architecture") is { } arch && arch is "neel-solu-old" or "mingpt")
            throw c.Invalid("original_architecture", $"'{arch}' checkpoints store other tensor names (TransformerLens converts them on load); not supported");
    }

    /// <summary>
    /// The weights of a TransformerLens checkpoint folder: the usual safetensors (or pytorch_model.bin) when present; else a
    /// torch.save state dict as TransformerLens's own runs leave it — the one file ending in "final.pth" (how TransformerLens
    /// picks NeelNanda's model_final.pth), or the folder's only .pth file.
    /// </summary>
    /// <exception cref="InputError">Several .pth files and none ends in "final.pth" (the message lists them).</exception>
    public static string WeightsPath(string folder)
    {
        if (SafeTensorsCheckpoint.WeightsFileIn(folder) is not null) return folder;
        var pth = Directory.GetFiles(folder, "*.pth").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
        var final = pth.Where(n => n.EndsWith("final.pth", StringComparison.Ordinal)).ToList();
        if (final.Count == 1) return Path.Combine(folder, final[0]);
        if (pth.Count == 1) return Path.Combine(folder, pth[0]);
        if (pth.Count > 1)
            throw new InputError($"{folder}: {pth.Count} torch.save files ({string.Join(", ", pth.Take(6))}{(pth.Count > 6 ? ", …" : "")}) and " +
                                 $"{(final.Count == 0 ? "none" : $"{final.Count}")} ending in 'final.pth' (TransformerLens loads the one that does); " +
                                 "keep the checkpoint to load alone in the folder, or name it model_final.pth");
        return folder;   // SafeTensorsCheckpoint.Open names what is missing
    }

    public override BlockAnatomy Anatomy(int layer) => new(_ln1[layer], _attn[layer], null, _mlp[layer] is null ? null : _ln2[layer], _mlp[layer], null, false);
}
