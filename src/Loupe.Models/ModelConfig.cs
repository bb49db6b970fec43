namespace Loupe.Models;

/// <summary>How the residual stream is normalized before each sub-layer.</summary>
public enum NormKind { None, LayerNorm, RmsNorm }

/// <summary>
/// A model's hyper-parameters in TransformerLens's vocabulary (<c>d_model, d_head, n_heads,
/// n_layers, d_mlp, d_vocab, n_ctx</c>). Families fill it from their config.json.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>The family that runs this model: gpt2, gpt_neox, llama, mistral, qwen2, gemma2, transformer_lens.</summary>
    public required string Architecture { get; init; }
    public required int NLayers { get; init; }
    public required int DModel { get; init; }
    public required int NHeads { get; init; }
    /// <summary>Key/value heads (grouped-query attention); equals <see cref="NHeads"/> for plain multi-head attention.</summary>
    public int NKeyValueHeads { get; init; }
    public required int DHead { get; init; }
    /// <summary>MLP hidden width; 0 for attention-only models.</summary>
    public int DMlp { get; init; }
    public required int DVocab { get; init; }
    /// <summary>Output vocabulary (columns of W_U); usually equal to <see cref="DVocab"/>.</summary>
    public int DVocabOut { get; init; }
    /// <summary>Longest context the model accepts (learned positions or max_position_embeddings).</summary>
    public required int NCtx { get; init; }
    /// <summary>MLP activation by its config name (gelu_new, gelu, silu, relu, gelu_pytorch_tanh).</summary>
    public string? ActFn { get; init; }
    public bool GatedMlp { get; init; }
    /// <summary>Per-head RMSNorm of q and k before rotary (Qwen3): hooks <c>attn.q_norm.*</c>, <c>attn.k_norm.*</c>.</summary>
    public bool QkNorm { get; init; }
    public bool AttnOnly { get; init; }
    public NormKind Normalization { get; init; }
    public float NormEps { get; init; } = 1e-5f;
    /// <summary>Rotary dimensions per head (0 when positions are learned or absent).</summary>
    public int RotaryDim { get; init; }
    public double RotaryBase { get; init; } = 10000;
    /// <summary>The rotary base of local (sliding-window) layers when it differs from <see cref="RotaryBase"/> (Gemma 3), else null.</summary>
    public double? RotaryLocalBase { get; init; }
    /// <summary>How the rotary frequencies are rescaled for long contexts (Llama 3's <c>rope_scaling</c>; Gemma 3: global layers only), or null.</summary>
    public RopeScaling? RopeScaling { get; init; }
    public bool LearnedPositions { get; init; }
    /// <summary>
    /// TransformerLens's "shortformer" positions (Press et al. 2021): hook_pos_embed is added to the query and key inputs of
    /// every attention layer, after ln1, and never to the residual stream (resid_pre of block 0 is hook_embed alone).
    /// </summary>
    public bool ShortformerPositions { get; init; }
    /// <summary>The hub repository whose tokenizer a TransformerLens config names (<c>tokenizer_name</c>), or null.</summary>
    public string? TokenizerName { get; init; }
    /// <summary>Attention and MLP both read resid_pre (GPT-NeoX / Pythia).</summary>
    public bool ParallelAttnMlp { get; init; }
    /// <summary>Multiplier on q·k (1/√d_head, or Gemma 2's query_pre_attn_scalar^-½).</summary>
    public float AttnScale { get; init; }
    public float AttnSoftCap { get; init; }
    public float FinalLogitSoftCap { get; init; }
    /// <summary>Sliding-window size for layers that use one; 0 for none.</summary>
    public int SlidingWindow { get; init; }
    /// <summary>Per layer, whether it attends locally through <see cref="SlidingWindow"/>.</summary>
    public bool[] LocalLayers { get; init; } = [];
    /// <summary>Scale applied to token embeddings (Gemma: √d_model); 1 otherwise.</summary>
    public float EmbedScale { get; init; } = 1f;
    /// <summary>Encoders: the logits come from a masked-LM head (BERT's <c>cls.predictions</c>); false: the logits are the final hidden states.</summary>
    public bool MlmHead { get; init; }
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    /// <summary>The config.json this came from (null when built in code).</summary>
    public string? SourcePath { get; init; }

    public int KvHeads => NKeyValueHeads == 0 ? NHeads : NKeyValueHeads;
    public int VocabOut => DVocabOut == 0 ? DVocab : DVocabOut;
    public bool HasMlp => !AttnOnly && DMlp > 0;
    public bool IsLocal(int layer) => SlidingWindow > 0 && (LocalLayers.Length == 0 || LocalLayers[layer]);
}

/// <summary>
/// A <c>rope_scaling</c> that rescales the rotary inverse frequencies, as Hugging Face computes them:
/// <c>linear</c> divides every frequency by <see cref="Factor"/>; <c>llama3</c> divides the low frequencies
/// (wavelength above <c>original / low_freq_factor</c>) by it, keeps the high ones (wavelength below
/// <c>original / high_freq_factor</c>) and blends between (Llama 3.1's long-context scaling); <c>longrope</c> (Phi-3's,
/// HF's <c>_compute_longrope_parameters</c>) divides frequency i by <see cref="ShortFactor"/>[i] for passes up to
/// <see cref="OriginalMaxPositions"/> positions and by <see cref="LongFactor"/>[i] beyond, and multiplies cos and sin by
/// <see cref="AttentionFactor"/>.
/// </summary>
/// <param name="Type">"linear" or "llama3".</param>
/// <param name="Factor">The scale factor.</param>
/// <param name="LowFreqFactor">llama3: low_freq_factor.</param>
/// <param name="HighFreqFactor">llama3: high_freq_factor.</param>
/// <param name="OriginalMaxPositions">llama3, longrope: original_max_position_embeddings.</param>
/// <param name="ShortFactor">longrope: the divisor of each frequency for passes within the original context.</param>
/// <param name="LongFactor">longrope: the divisor of each frequency for longer passes.</param>
/// <param name="AttentionFactor">longrope: the factor on cos and sin (1 otherwise).</param>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor = 1, double HighFreqFactor = 4, int OriginalMaxPositions = 8192,
    float[]? ShortFactor = null, float[]? LongFactor = null, double AttentionFactor = 1)
{
    /// <summary>
    /// LongRoPE for a pass over <paramref name="length"/> positions: beyond <see cref="OriginalMaxPositions"/>, the default
    /// frequencies divided by <see cref="LongFactor"/> (HF switches on max(position_ids) + 1); null otherwise (the table's own,
    /// divided by <see cref="ShortFactor"/>) and for other types.
    /// </summary>
    public float[]? LongRopeInverseFrequencies(float[] defaultInverse, int length) =>
        Type != "longrope" || length <= OriginalMaxPositions ? null : Divide(defaultInverse, LongFactor!);

    /// <summary>One line for <c>loupe info</c>.</summary>
    public string Describe() => Type switch
    {
        "linear" => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"linear rope scaling ×{Factor:G4}"),
        "dynamic" => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"dynamic NTK rope scaling ×{Factor:G4} beyond {OriginalMaxPositions} positions"),
        "llama3" => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"llama3 rope scaling ×{Factor:G4} (low {LowFreqFactor:G4}, high {HighFreqFactor:G4}, original {OriginalMaxPositions})"),
        "longrope" => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"LongRoPE (short factors up to {OriginalMaxPositions} positions, long beyond; attention factor {AttentionFactor:G4})"),
        _ => Type,
    };

    static float[] Divide(float[] inverse, float[] factors)
    {
        if (factors.Length != inverse.Length) throw new ArgumentException($"{factors.Length} LongRoPE factors for {inverse.Length} frequencies", nameof(factors));
        var scaled = new float[inverse.Length];
        for (int i = 0; i < inverse.Length; i++) scaled[i] = inverse[i] / factors[i];
        return scaled;
    }

    /// <summary>The scaled inverse frequencies, in HF's float32 arithmetic.</summary>
    /// <summary>
    /// Dynamic NTK scaling (Hugging Face's <c>dynamic</c>): for a pass over <paramref name="length"/> positions beyond
    /// <see cref="OriginalMaxPositions"/> the base grows to <c>θ·(factor·length/original − (factor − 1))^(d/(d−2))</c> and the
    /// default frequencies are recomputed from it; null for other types or for shorter passes (the default frequencies).
    /// </summary>
    public float[]? DynamicInverseFrequencies(int rotaryDim, double theta, int length)
    {
        if (Type != "dynamic" || length <= OriginalMaxPositions) return null;
        double scaled = theta * Math.Pow(Factor * length / OriginalMaxPositions - (Factor - 1), (double)rotaryDim / (rotaryDim - 2));
        return Loupe.Tensors.Kernels.RotaryTable.DefaultInverseFrequencies(rotaryDim, scaled);
    }

    public float[] Apply(float[] invFreq)
    {
        if (Type == "dynamic") return invFreq; // up to the original context the frequencies are the default ones
        if (Type == "longrope") return Divide(invFreq, ShortFactor!);
        var scaled = new float[invFreq.Length];
        float factor = (float)Factor;
        if (Type == "linear")
        {
            for (int i = 0; i < invFreq.Length; i++) scaled[i] = invFreq[i] / factor;
            return scaled;
        }
        float low = (float)LowFreqFactor, high = (float)HighFreqFactor, old = OriginalMaxPositions;
        float lowWavelen = old / low, highWavelen = old / high;
        for (int i = 0; i < invFreq.Length; i++)
        {
            float wavelen = 2 * MathF.PI / invFreq[i];
            float llama = wavelen > lowWavelen ? invFreq[i] / factor : invFreq[i];
            bool medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
            if (medium)
            {
                float smooth = (old / wavelen - low) / (high - low);
                llama = (1 - smooth) * llama / factor + smooth * llama;
            }
            scaled[i] = llama;
        }
        return scaled;
    }
}

