using Loupe.Models.Layers;

namespace Loupe.Models.Processing;

// TransformerLens's weight processing (HookedTransformer.load_and_process_state_dict and the methods
// it calls: fold_layer_norm, center_writing_weights, center_unembed, fold_value_biases,
// refactor_factored_attn_matrices), written against Loupe's layers rather than TL's state dict:
// a Linear is y = x·W + b with W [d_in, d_out] or [d_out, d_in], so "reading" weights are indexed by
// their input (d_model) and "writing" weights by their output (d_model). Fused q|k|v projections need
// no special case for folding, which works column by column. Every processed tensor becomes a new host
// array; everything else stays memory-mapped.

/// <summary>Applies <see cref="WeightProcessing"/> to a freshly loaded model, refusing any option that would not be exact for it.</summary>
public static class WeightProcessor
{
    /// <summary>
    /// Processes the weights of <paramref name="model"/> in place (before any run) and records the
    /// processing in <see cref="HookedTransformer.Processing"/>.
    /// </summary>
    /// <param name="model">A model just loaded, never run or processed.</param>
    /// <param name="processing">The options to apply.</param>
    /// <exception cref="InputError">An option is not exact for this model (the message names the option and why).</exception>
    internal static void Apply(HookedTransformer model, WeightProcessing processing)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(processing);
        if (processing.IsNone) return;
        if (!model.Processing.IsNone) throw new InvalidOperationException($"the model's weights were already processed ({model.Processing.Describe()})");
        foreach (var option in WeightProcessing.OptionNames)
            if (processing.ToDictionary()[option] && WhyNotExact(model, option) is string why)
                throw new InputError($"{Name(model)}: weight processing: {option} is not exact for this model: {why}");
        if (processing.FoldLn) FoldLayerNorms(model);
        if (processing.CenterWritingWeights) CenterWritingWeights(model);
        if (processing.CenterUnembed) CenterOutputs(model.UnembedLayer);
        if (processing.FoldValueBiases) FoldValueBiases(model);
        if (processing.RefactorFactoredAttn) FactoredAttention.Refactor(model);
        model.Processing = processing;
    }

    /// <summary>Why <paramref name="option"/> (a name from <see cref="WeightProcessing.OptionNames"/>) would change the model's outputs, or null when it is exact.</summary>
    /// <param name="model">The model, unprocessed.</param>
    /// <param name="option">The option's TransformerLens name.</param>
    public static string? WhyNotExact(HookedTransformer model, string option)
    {
        var cfg = model.Config;
        var blocks = Enumerable.Range(0, cfg.NLayers).Select(model.Anatomy).ToArray();
        bool postNorms = blocks.Any(b => b.AttentionPostNorm is not null || b.MlpPostNorm is not null);
        var readers = ReadingNorms(model, blocks).ToArray();
        switch (option)
        {
            case "fold_ln":
                if (postNorms) return "its blocks normalise the attention and MLP outputs after the layer (sandwich norms); no linear layer reads those norms alone, so they cannot be folded";
                if (cfg.ShortformerPositions)
                    return "its queries and keys read ln1's output plus the shortformer positions, so ln1's weight and bias cannot move into W_Q and W_K alone (TransformerLens turns fold_ln off for shortformer models too)";
                if (readers.FirstOrDefault(r => r.Norm is null || r.Norm.Kind == NormKind.None) is { Name: { } bare })
                    return $"{bare} is not normalised (normalization {cfg.Normalization}); there is no norm to fold";
                return null;
            case "center_writing_weights":
                if (postNorms) return "its blocks normalise the attention and MLP outputs before they join the residual stream (sandwich norms)";
                if (readers.FirstOrDefault(r => r.Norm is not { Kind: NormKind.LayerNorm }) is { Name: { } reader })
                    return $"{reader} reads the residual stream {(cfg.Normalization == NormKind.RmsNorm ? "through an RMSNorm, which does not subtract the mean" : "without a LayerNorm")}; " +
                           "only when every reader centres the stream is its mean irrelevant (TransformerLens skips it too)";
                return null;
            case "center_unembed":
                return cfg.FinalLogitSoftCap > 0
                    ? $"its logits are soft-capped ({cfg.FinalLogitSoftCap}), and the cap is not invariant to adding a constant to every logit (TransformerLens skips it too)"
                    : null;
            case "fold_value_biases":
                // Attention patterns sum to 1 over the keys, so the value bias always adds b_V·W_O to a head's output.
                return null;
            case "refactor_factored_attn_matrices":
                return FactoredAttention.WhyNot(model);
            default:
                throw new ArgumentException($"'{option}' is not a weight-processing option ({string.Join(", ", WeightProcessing.OptionNames)})", nameof(option));
        }
    }

    static string Name(HookedTransformer model) => model.Source ?? model.Config.SourcePath ?? model.Config.Architecture;

    /// <summary>Every norm that reads the residual stream, with its TransformerLens name.</summary>
    static IEnumerable<(string Name, Norm? Norm)> ReadingNorms(HookedTransformer model, BlockAnatomy[] blocks)
    {
        for (int l = 0; l < blocks.Length; l++)
        {
            yield return ($"blocks.{l}.ln1", blocks[l].Ln1);
            if (blocks[l].Mlp is not null) yield return ($"blocks.{l}.ln2", blocks[l].Ln2);
        }
        yield return ("ln_final", model.FinalNormLayer);
    }

    // ---- fold_ln ----

    static void FoldLayerNorms(HookedTransformer model)
    {
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var block = model.Anatomy(l);
            var attn = block.Attention;
            Fold(block.Ln1, attn.Qkv is { } qkv ? [qkv] : [attn.Q!, attn.K!, attn.V!]);
            if (block.Mlp is { } mlp) Fold(block.Ln2!, mlp.Gate is { } gate ? [mlp.In, gate] : [mlp.In]);
        }
        Fold(model.FinalNormLayer!, [model.UnembedLayer]);
    }

    /// <summary>
    /// Folds <c>y = ĉ·w + b</c> (ĉ the centred or RMS-scaled input) into each reader <c>ĉ·w·W + (b·W + b_W)</c>
    /// (TL folds the bias with the unscaled W first). After a LayerNorm, ĉ sums to zero over d_model, so
    /// the mean over d_model of each column of the folded W is removed as well (TL's center_weights).
    /// </summary>
    static void Fold(Norm norm, Linear[] readers)
    {
        int D = readers[0].DIn;
        var w = norm.Weight.Span;
        var gain = new double[D];
        for (int d = 0; d < D; d++) gain[d] = (w.IsEmpty ? 1.0 : w[d]) + norm.WeightOffset;
        var shift = norm.Bias.ToArray();
        bool center = norm.Kind == NormKind.LayerNorm;
        foreach (var lin in readers)
        {
            var src = lin.Weight.Span;
            int O = lin.DOut;
            var folded = new float[src.Length];
            var mean = new double[O];
            var biasShift = new double[O];
            for (int d = 0; d < D; d++)
                for (int o = 0; o < O; o++)
                {
                    int at = Index(lin, d, o);
                    double v = src[at];
                    if (shift.Length > 0) biasShift[o] += v * shift[d];
                    float f = (float)(v * gain[d]);
                    folded[at] = f;
                    mean[o] += f;
                }
            if (center)
                for (int d = 0; d < D; d++)
                    for (int o = 0; o < O; o++)
                        folded[Index(lin, d, o)] -= (float)(mean[o] / D);
            ReadOnlyMemory<float> bias = lin.Bias;
            if (shift.Length > 0)
            {
                var b = lin.Bias.Span;
                var newBias = new float[O];
                for (int o = 0; o < O; o++) newBias[o] = (float)((b.IsEmpty ? 0.0 : b[o]) + biasShift[o]);
                bias = newBias;
            }
            lin.Replace(folded, bias);
        }
        norm.MarkFolded();
    }

    /// <summary>Flat index of <c>W[i, o]</c> (input i, output o) in the linear's own layout.</summary>
    internal static int Index(Linear lin, int i, int o) => lin.WeightIsOutIn ? o * lin.DIn + i : i * lin.DOut + o;

    // ---- center_writing_weights, center_unembed ----

    static void CenterWritingWeights(HookedTransformer model)
    {
        int D = model.Config.DModel;
        // Shortformer positions never join the stream (they are added after ln1 to queries and keys): centring them would change
        // the model, so they are left as they are (TransformerLens centres them anyway).
        model.ReplaceEmbeddings(CenterRows(model.EmbeddingWeights.Span, D),
            model.Config.ShortformerPositions ? model.PositionWeights.ToArray() : CenterRows(model.PositionWeights.Span, D));
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var block = model.Anatomy(l);
            CenterOutputs(block.Attention.O);
            if (block.Mlp is { } mlp) CenterOutputs(mlp.Out);
        }
    }

    /// <summary>Each row of a row-major <c>[rows, width]</c> table minus its mean.</summary>
    static float[] CenterRows(ReadOnlySpan<float> table, int width)
    {
        var result = new float[table.Length];
        for (int r = 0; r < table.Length / width; r++)
        {
            var row = table.Slice(r * width, width);
            double mean = 0;
            foreach (float v in row) mean += v;
            mean /= width;
            for (int i = 0; i < width; i++) result[r * width + i] = (float)(row[i] - mean);
        }
        return result;
    }

    /// <summary>W[i, :] minus its mean over the outputs for every input i, and b minus its mean: the layer's output is centred.</summary>
    static void CenterOutputs(Linear lin)
    {
        var src = lin.Weight.Span;
        int I = lin.DIn, O = lin.DOut;
        var centered = new float[src.Length];
        for (int i = 0; i < I; i++)
        {
            double mean = 0;
            for (int o = 0; o < O; o++) mean += src[Index(lin, i, o)];
            mean /= O;
            for (int o = 0; o < O; o++) centered[Index(lin, i, o)] = (float)(src[Index(lin, i, o)] - mean);
        }
        ReadOnlyMemory<float> bias = lin.Bias.IsEmpty ? default : CenterRows(lin.Bias.Span, O);
        lin.Replace(centered, bias);
    }

    // ---- fold_value_biases ----

    static void FoldValueBiases(HookedTransformer model)
    {
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var attn = model.Anatomy(l).Attention;
            var values = attn.V ?? attn.Qkv!;
            if (values.Bias.IsEmpty) continue;
            int H = attn.NHeads, dh = attn.DHead, D = attn.O.DOut, group = H / attn.NKvHeads;
            var vBias = values.Bias.ToArray();
            var o = attn.O;
            var wo = o.Weight.Span;
            var outBias = new double[D];
            if (!o.Bias.IsEmpty) for (int d = 0; d < D; d++) outBias[d] = o.Bias.Span[d];
            // As TL's repeat_interleave: query head h reads key/value head h / group.
            for (int h = 0; h < H; h++)
                for (int j = 0; j < dh; j++)
                {
                    double b = vBias[ValueColumn(attn, h / group, j)];
                    if (b == 0) continue;
                    for (int d = 0; d < D; d++) outBias[d] += b * wo[Index(o, h * dh + j, d)];
                }
            for (int g = 0; g < attn.NKvHeads; g++)
                for (int j = 0; j < dh; j++) vBias[ValueColumn(attn, g, j)] = 0f;
            values.Replace(values.Weight, vBias);
            o.Replace(o.Weight, outBias.Select(v => (float)v).ToArray());
        }
    }

    /// <summary>The output column of value dimension <paramref name="j"/> of key/value head <paramref name="g"/> in the layer's value (or fused) projection.</summary>
    internal static int ValueColumn(AttentionLayer attn, int g, int j) => ProjectionColumn(attn, 2, g, j);

    /// <summary>The output column of dimension j of head h of q (part 0), k (1) or v (2) in its projection (fused or not).</summary>
    internal static int ProjectionColumn(AttentionLayer attn, int part, int h, int j)
    {
        int dh = attn.DHead;
        if (attn.Qkv is null) return h * dh + j;
        if (attn.Layout == FusedQkvLayout.HeadInterleaved) return h * 3 * dh + part * dh + j;
        int qWidth = attn.NHeads * dh, kvWidth = attn.NKvHeads * dh;
        return (part == 0 ? 0 : part == 1 ? qWidth : qWidth + kvWidth) + h * dh + j;
    }
}
