using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Families;

// BERT (HF BertForMaskedLM / BertModel; tensors with or without the "bert." prefix). Shapes:
// embeddings.{word [V, D], position [P, D], token_type [TV, D]}_embeddings, embeddings.LayerNorm;
// per layer attention.self.{query,key,value} [D, D] (nn.Linear, [out, in]), attention.output.dense,
// attention.output.LayerNorm, intermediate.dense [M, D], output.dense [D, M], output.LayerNorm;
// pooler.dense [D, D] (optional); cls.predictions.transform.{dense, LayerNorm}, cls.predictions.bias [V],
// decoder tied to the word embeddings (optional: the MLM head).
// Block (post-LayerNorm): x1 = LN1(x + attn(x)), out = LN2(x1 + mlp(x1)); exact-erf gelu; no causal mask,
// padded keys get probability exactly 0 (HF adds finfo.min to their scores).

/// <summary>
/// BERT encoders: bidirectional attention with a padding mask, post-LayerNorm blocks, token types, the masked-LM
/// head and the pooler. Hook names follow TransformerLens's HookedEncoder (see <see cref="HookPoints"/>).
/// </summary>
/// <remarks>
/// <see cref="HookedTransformer.Run(TokenBatch, RunOptions?)"/>'s logits are the MLM head's <c>[batch, pos, d_vocab]</c>
/// when the checkpoint has one (BertForMaskedLM); otherwise (BertModel, sentence encoders) the "logits" are the
/// final hidden states <c>[batch, pos, d_model]</c> (d_vocab_out = d_model, an identity unembedding), so metrics
/// and gradients can start from them. Padding comes from <see cref="TokenBatch.Valid"/>, segments from
/// <see cref="TokenBatch.TokenTypeIds"/>; positions are 0..pos−1 in every row, as HF's default position ids.
/// </remarks>
public sealed class BertModel : HookedTransformer
{
    readonly DeviceWeight _word, _position, _tokenType;
    readonly int _typeVocab;
    readonly Norm _embedLn;
    readonly Norm[] _ln1, _ln2;
    readonly AttentionLayer[] _attn;
    readonly MlpLayer[] _mlp;
    readonly Linear? _mlmDense;
    readonly Norm? _mlmLn;
    readonly Linear? _pooler;
    readonly long _parameters;

    BertModel(ModelConfig cfg, WeightSource w, string p, int typeVocab, IComputeBackend? backend) : base(cfg, backend)
    {
        int D = cfg.DModel, M = cfg.DMlp, L = cfg.NLayers, V = cfg.DVocab;
        _typeVocab = typeVocab;
        WE = w.Get(p + "embeddings.word_embeddings.weight", V, D);
        WPos = w.Get(p + "embeddings.position_embeddings.weight", cfg.NCtx, D);
        _word = new DeviceWeight(WE, [V, D]);
        _position = new DeviceWeight(WPos, [cfg.NCtx, D]);
        _tokenType = new DeviceWeight(w.Get(p + "embeddings.token_type_embeddings.weight", typeVocab, D), [typeVocab, D]);
        _embedLn = LayerNorm(w, p + "embeddings.LayerNorm", D, cfg.NormEps, "embed.ln");
        _ln1 = new Norm[L]; _ln2 = new Norm[L]; _attn = new AttentionLayer[L]; _mlp = new MlpLayer[L];
        for (int l = 0; l < L; l++)
        {
            string b = $"{p}encoder.layer.{l}.";
            Linear Dense(string name, int dIn, int dOut) => new(w.Get(b + name + ".weight", dOut, dIn), dIn, dOut, true, w.Get(b + name + ".bias", dOut));
            _attn[l] = new AttentionLayer(l, cfg, Dense("attention.self.query", D, D), Dense("attention.self.key", D, D),
                Dense("attention.self.value", D, D), Dense("attention.output.dense", D, D), rotary: null) { Bidirectional = true };
            _ln1[l] = LayerNorm(w, b + "attention.output.LayerNorm", D, cfg.NormEps, $"blocks.{l}.ln1");
            _mlp[l] = new MlpLayer(l, cfg.ActFn!, Dense("intermediate.dense", D, M), Dense("output.dense", M, D));
            _ln2[l] = LayerNorm(w, b + "output.LayerNorm", D, cfg.NormEps, $"blocks.{l}.ln2");
        }
        if (w.Contains(p + "pooler.dense.weight"))
            _pooler = new Linear(w.Get(p + "pooler.dense.weight", D, D), D, D, true, w.Get(p + "pooler.dense.bias", D));
        if (cfg.MlmHead)
        {
            _mlmDense = new Linear(w.Get("cls.predictions.transform.dense.weight", D, D), D, D, true, w.Get("cls.predictions.transform.dense.bias", D));
            _mlmLn = LayerNorm(w, "cls.predictions.transform.LayerNorm", D, cfg.NormEps, "mlm_head.ln");
            // The decoder is tied to the word embeddings unless the checkpoint stores its own.
            var decoder = w.Contains("cls.predictions.decoder.weight") ? w.Get("cls.predictions.decoder.weight", V, D) : WE;
            Unembed = new Linear(decoder, D, V, true, w.Get("cls.predictions.bias", V));
        }
        else
        {
            var identity = new float[D * D];
            for (int i = 0; i < D; i++) identity[i * D + i] = 1f;
            Unembed = new Linear(identity, D, D, true);
        }
        _parameters = w.ParameterCount;
    }

    static Norm LayerNorm(WeightSource w, string name, int d, float eps, string hooks) =>
        new(NormKind.LayerNorm, w.Get(name + ".weight", d), w.Get(name + ".bias", d), eps, hooks);

    public override long ParameterCount => _parameters;

    /// <summary>Whether the checkpoint has BERT's pooler (<c>tanh(dense(h_CLS))</c>).</summary>
    public bool HasPooler => _pooler is not null;

    /// <summary>Number of token types (segments) the model embeds.</summary>
    public int TypeVocabSize => _typeVocab;

    internal static BertModel Load(HfConfig c, WeightSource w, IComputeBackend? backend)
    {
        string positions = c.String("position_embedding_type") ?? "absolute";
        if (positions != "absolute")
            throw c.Invalid("position_embedding_type", $"'{positions}' is not supported (Loupe's BERT runs absolute learned positions only)");
        if (c.Bool("is_decoder", false))
            throw c.Invalid("is_decoder", "BERT used as a causal decoder is not supported (encoder only)");
        if (c.Bool("add_cross_attention", false))
            throw c.Invalid("add_cross_attention", "BERT with cross-attention (encoder-decoder) is not supported");
        int d = c.Int("hidden_size", 1, HfConfig.MaxWidth), h = c.Int("num_attention_heads", 1, HfConfig.MaxWidth);
        int dh = c.Quotient("hidden_size", d, "num_attention_heads", h);
        int vocab = c.Int("vocab_size", 1, HfConfig.MaxVocab);
        int layers = c.Int("num_hidden_layers", 1, HfConfig.MaxLayers);
        string p = w.Contains("bert.embeddings.word_embeddings.weight") ? "bert." : "";
        bool mlm = w.Contains("cls.predictions.bias");
        var cfg = new ModelConfig
        {
            Architecture = "bert",
            NLayers = layers,
            DModel = d,
            NHeads = h,
            DHead = dh,
            DMlp = c.Int("intermediate_size", 1, HfConfig.MaxWidth),
            DVocab = vocab,
            DVocabOut = mlm ? vocab : d,
            NCtx = c.Int("max_position_embeddings", 1, HfConfig.MaxContext),
            ActFn = HfDecoderWeights.Activation(c, "hidden_act", c.String("hidden_act") ?? "gelu"),
            Normalization = NormKind.LayerNorm,
            NormEps = HfDecoderWeights.NormEps(c, "layer_norm_eps", 1e-12),
            LearnedPositions = true,
            AttnScale = 1f / MathF.Sqrt(dh),
            MlmHead = mlm,
            SourcePath = c.Path,
        };
        w.CheckNoLayerBeyond(l => $"{p}encoder.layer.{l}.", layers, c.Path, "num_hidden_layers");
        return new BertModel(cfg, w, p, c.Int("type_vocab_size", 1, HfConfig.MaxVocab), backend);
    }

    public override bool ResidualIsSumOfComponents => false;

    /// <summary>BERT's blocks are post-LayerNorm (the norm follows the residual sum), which <see cref="BlockAnatomy"/> cannot describe.</summary>
    /// <exception cref="InputError">Always: analyses that walk pre-norm blocks (weight processing, attribution graphs, circuit discovery) do not apply.</exception>
    public override BlockAnatomy Anatomy(int layer) =>
        throw new InputError("BERT's post-LayerNorm blocks (x1 = LN(x + attn), out = LN(x1 + mlp)) are not described by BlockAnatomy; " +
                                        "weight processing and analyses that walk pre-norm blocks do not apply to encoders");

    /// <summary>The attention layer of block <paramref name="layer"/> (its W_Q, W_K, W_V, W_O).</summary>
    public AttentionLayer AttentionOf(int layer) => _attn[layer];

    protected override Tensor Embed(TokenBatch tokens, ForwardContext ctx)
    {
        var be = ctx.Backend;
        int B = tokens.Batch, T = tokens.Length, D = Config.DModel;
        var types = tokens.TokenTypeIds ?? new int[tokens.Ids.Length];
        foreach (int t in types)
            if (t >= _typeVocab) throw new InputError($"token type id {t} is outside the model's type vocabulary (type_vocab_size = {_typeVocab})");
        var positions = new int[B * T];
        for (int i = 0; i < positions.Length; i++) positions[i] = i % T;
        var word = be.Empty(B, T, D);
        be.Embedding(_word.On(be)!, D, tokens.Ids, 1f, word);
        word = ctx.Hook(HookNames.EncoderEmbed, -1, word);
        var pos = be.Empty(B, T, D);
        be.Embedding(_position.On(be)!, D, positions, 1f, pos);
        pos = ctx.Hook(HookNames.EncoderPosEmbed, -1, pos);
        var type = be.Empty(B, T, D);
        be.Embedding(_tokenType.On(be)!, D, types, 1f, type);
        type = ctx.Hook(HookNames.EncoderTokenTypeEmbed, -1, type);
        var sum = Sum(ctx, word, pos, type);
        return ctx.Hook(HookNames.FullEmbed, -1, _embedLn.Forward(ctx, -1, sum));
    }

    protected override void EmbedBackward(ForwardContext ctx, Tensor dResid)
    {
        // Forward: full = LN(word + pos + type); each embedding receives d(sum).
        dResid = ctx.GradHook(HookNames.FullEmbed, -1, dResid);
        var dSum = _embedLn.Backward(ctx, -1, dResid);
        ctx.GradHook(HookNames.EncoderTokenTypeEmbed, -1, dSum);
        ctx.GradHook(HookNames.EncoderPosEmbed, -1, dSum);
        ctx.GradHook(HookNames.EncoderEmbed, -1, dSum);
    }

    protected override Tensor Block(int l, ForwardContext ctx, Tensor residPre)
    {
        // TransformerLens's BertBlock: resid_mid and resid_post are the sums before each LayerNorm;
        // hook_normalized_resid_post (the block's output) is what the next block reads.
        var names = _attn[l].Names;
        residPre = ctx.Hook(names.ResidPre, l, residPre);
        var attnOut = ctx.Hook(names.AttnOut, l, _attn[l].Forward(ctx, residPre));
        var residMid = ctx.Hook(names.ResidMid, l, Sum(ctx, residPre, attnOut));
        var x1 = _ln1[l].Forward(ctx, l, residMid);
        var mlpOut = ctx.Hook(names.MlpOut, l, _mlp[l].Forward(ctx, x1));
        var residPost = ctx.Hook(names.ResidPost, l, Sum(ctx, x1, mlpOut));
        return ctx.Hook(HookNames.NormalizedResidPost(l), l, _ln2[l].Forward(ctx, l, residPost));
    }

    protected override Tensor BlockBackward(int l, ForwardContext ctx, Tensor dOut)
    {
        var names = _attn[l].Names;
        dOut = ctx.GradHook(HookNames.NormalizedResidPost(l), l, dOut);
        var dResidPost = ctx.GradHook(names.ResidPost, l, _ln2[l].Backward(ctx, l, dOut));
        // Forward: resid_post = x1 + mlp(x1).
        var dMlpOut = ctx.GradHook(names.MlpOut, l, dResidPost);
        var dX1 = Sum(ctx, dResidPost, _mlp[l].Backward(ctx, dMlpOut));
        var dResidMid = ctx.GradHook(names.ResidMid, l, _ln1[l].Backward(ctx, l, dX1));
        // Forward: resid_mid = resid_pre + attn(resid_pre).
        var dAttnOut = ctx.GradHook(names.AttnOut, l, dResidMid);
        return ctx.GradHook(names.ResidPre, l, Sum(ctx, dResidMid, _attn[l].Backward(ctx, dAttnOut)));
    }

    sealed record HeadSaved(Tensor Pre);

    protected override Tensor Head(ForwardContext ctx, Tensor resid)
    {
        if (_mlmDense is null) return resid;
        // The MLM transform: LN(gelu(dense(h))), then the tied decoder (the unembedding).
        var be = ctx.Backend;
        int B = resid.Dim(0), T = resid.Dim(1), D = Config.DModel;
        var pre = be.Empty(B, T, D);
        _mlmDense.Forward(be, resid, B * T, pre);
        var post = be.Empty(B, T, D);
        be.Activation(Config.ActFn!, pre, post);
        ctx.Save(_mlmDense, new HeadSaved(pre));
        return _mlmLn!.Forward(ctx, -1, post);
    }

    protected override Tensor HeadBackward(ForwardContext ctx, Tensor dNormed)
    {
        if (_mlmDense is null) return dNormed;
        var be = ctx.Backend;
        var dPost = _mlmLn!.Backward(ctx, -1, dNormed);
        var pre = ctx.Restore<HeadSaved>(_mlmDense).Pre;
        var dPre = be.Empty(pre.Shape.ToArray());
        be.ActivationBackward(Config.ActFn!, pre, dPost, dPre);
        var dResid = be.Empty(pre.Shape.ToArray());
        _mlmDense.BackwardInput(be, dPre, pre.Dim(0) * pre.Dim(1), dResid);
        return dResid;
    }

    /// <summary>The final hidden states <c>[batch, pos, d_model]</c> (HF's last_hidden_state), on the host.</summary>
    public Tensor LastHiddenState(TokenBatch tokens)
    {
        string hook = HookNames.NormalizedResidPost(Config.NLayers - 1);
        return RunWithCache(tokens, hook).Cache[hook].ToCpu();
    }

    /// <summary>BERT's pooled output <c>tanh(W·h_CLS + b)</c> <c>[batch, d_model]</c> from final hidden states <c>[batch, pos, d_model]</c>.</summary>
    /// <exception cref="InvalidOperationException">The checkpoint has no pooler.</exception>
    public float[][] Pool(Tensor lastHiddenState)
    {
        if (_pooler is null) throw new InvalidOperationException("this BERT checkpoint has no pooler (pooler.dense.*)");
        var h = lastHiddenState.ToCpu();
        int B = h.Dim(0), T = h.Dim(1), D = h.Dim(2);
        var w = _pooler.Weight.Span;
        var bias = _pooler.Bias.Span;
        var pooled = new float[B][];
        for (int b = 0; b < B; b++)
        {
            var cls = h.Span.Slice(b * T * D, D);
            pooled[b] = new float[D];
            for (int o = 0; o < D; o++)
            {
                double s = bias[o];
                for (int i = 0; i < D; i++) s += w[o * D + i] * cls[i];
                pooled[b][o] = (float)Math.Tanh(s);
            }
        }
        return pooled;
    }

    /// <summary>
    /// Sentence embeddings as sentence-transformers computes them: the mean of the final hidden states over the
    /// unpadded positions of each row, L2-normalised when <paramref name="normalize"/> (all-MiniLM-L6-v2's output).
    /// </summary>
    /// <param name="tokens">The batch (padding from <see cref="TokenBatch.Valid"/>).</param>
    /// <param name="normalize">Divide each embedding by its L2 norm.</param>
    public float[][] MeanPooledEmbeddings(TokenBatch tokens, bool normalize = true)
    {
        var h = LastHiddenState(tokens);
        int B = tokens.Batch, T = tokens.Length, D = Config.DModel;
        var result = new float[B][];
        for (int b = 0; b < B; b++)
        {
            var sum = new double[D];
            int count = 0;
            for (int t = 0; t < T; t++)
            {
                if (tokens.Valid is { } valid && !valid[b * T + t]) continue;
                count++;
                var row = h.Span.Slice((b * T + t) * D, D);
                for (int i = 0; i < D; i++) sum[i] += row[i];
            }
            double norm = 0;
            for (int i = 0; i < D; i++) { sum[i] /= Math.Max(count, 1); norm += sum[i] * sum[i]; }
            double divisor = normalize ? Math.Max(Math.Sqrt(norm), 1e-12) : 1;
            result[b] = sum.Select(v => (float)(v / divisor)).ToArray();
        }
        return result;
    }
}
