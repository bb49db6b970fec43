using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Tensors.Kernels;

namespace Loupe.Models.Families;

/// <summary>
/// The weight naming shared by HF's Llama-lineage decoders (Llama, Mistral, Qwen2, Gemma 2):
/// <c>model.layers.{l}.self_attn.{q,k,v,o}_proj</c> and <c>mlp.{gate,up,down}_proj</c>, all nn.Linear <c>[out, in]</c>.
/// </summary>
static class HfDecoderWeights
{
    public static string Layer(int l) => $"model.layers.{l}.";

    public static AttentionLayer Attention(int l, ModelConfig cfg, WeightSource w, RotaryTable rotary, float qkNormOffset = 0f)
    {
        string b = Layer(l) + "self_attn.";
        int D = cfg.DModel, q = cfg.NHeads * cfg.DHead, kv = cfg.KvHeads * cfg.DHead;
        return new AttentionLayer(l, cfg,
            new Linear(w.Get(b + "q_proj.weight", q, D), D, q, true, w.Optional(b + "q_proj.bias", q)),
            new Linear(w.Get(b + "k_proj.weight", kv, D), D, kv, true, w.Optional(b + "k_proj.bias", kv)),
            new Linear(w.Get(b + "v_proj.weight", kv, D), D, kv, true, w.Optional(b + "v_proj.bias", kv)),
            new Linear(w.Get(b + "o_proj.weight", D, q), q, D, true, w.Optional(b + "o_proj.bias", D)),
            rotary)
        {
            // Qwen3 and Gemma 3: per-head RMSNorm of q and k (weights [head_dim]; Gemma's as 1 + w) before rotary.
            QNorm = cfg.QkNorm ? RmsNorm(w, b + "q_norm.weight", cfg, $"blocks.{l}.attn.q_norm", qkNormOffset, width: cfg.DHead) : null,
            KNorm = cfg.QkNorm ? RmsNorm(w, b + "k_norm.weight", cfg, $"blocks.{l}.attn.k_norm", qkNormOffset, width: cfg.DHead) : null,
        };
    }

    /// <summary>
    /// Phi-3's attention: one fused <c>self_attn.qkv_proj</c> <c>[(n_heads + 2·n_kv_heads)·d_head, d_model]</c> whose output
    /// rows are q, then k, then v (HF slices them in that order), read as three row blocks of the mapped tensor; no biases.
    /// </summary>
    public static AttentionLayer FusedAttention(int l, ModelConfig cfg, WeightSource w, RotaryTable rotary)
    {
        string b = Layer(l) + "self_attn.";
        int D = cfg.DModel, q = cfg.NHeads * cfg.DHead, kv = cfg.KvHeads * cfg.DHead;
        var qkv = w.Get(b + "qkv_proj.weight", q + 2 * kv, D);
        return new AttentionLayer(l, cfg,
            new Linear(qkv.Slice(0, q * D), D, q, true),
            new Linear(qkv.Slice(q * D, kv * D), D, kv, true),
            new Linear(qkv.Slice((q + kv) * D, kv * D), D, kv, true),
            new Linear(w.Get(b + "o_proj.weight", D, q), q, D, true),
            rotary);
    }

    /// <summary>Phi-3's MLP: one fused <c>mlp.gate_up_proj</c> <c>[2·d_mlp, d_model]</c>, gate rows first (HF's chunk(2)), then <c>down_proj</c>.</summary>
    public static MlpLayer FusedGatedMlp(int l, ModelConfig cfg, WeightSource w)
    {
        string b = Layer(l) + "mlp.";
        int D = cfg.DModel, M = cfg.DMlp;
        var gateUp = w.Get(b + "gate_up_proj.weight", 2 * M, D);
        return new MlpLayer(l, cfg.ActFn!,
            input: new Linear(gateUp.Slice(M * D, M * D), D, M, true),
            output: new Linear(w.Get(b + "down_proj.weight", D, M), M, D, true),
            gate: new Linear(gateUp.Slice(0, M * D), D, M, true));
    }

    /// <summary>Gated MLP: <c>down(act(gate(x)) ⊙ up(x))</c>.</summary>
    public static MlpLayer GatedMlp(int l, ModelConfig cfg, WeightSource w)
    {
        string b = Layer(l) + "mlp.";
        int D = cfg.DModel, M = cfg.DMlp;
        return new MlpLayer(l, cfg.ActFn!,
            input: new Linear(w.Get(b + "up_proj.weight", M, D), D, M, true),
            output: new Linear(w.Get(b + "down_proj.weight", D, M), M, D, true),
            gate: new Linear(w.Get(b + "gate_proj.weight", M, D), D, M, true));
    }

    public static Norm RmsNorm(WeightSource w, string tensor, ModelConfig cfg, string hookPrefix, float weightOffset = 0f, int? width = null) =>
        new(NormKind.RmsNorm, w.Get(tensor, width ?? cfg.DModel), default, cfg.NormEps, hookPrefix, weightOffset);

    /// <summary>lm_head when stored, else the (tied) token embedding.</summary>
    public static Linear Unembed(ModelConfig cfg, WeightSource w, ReadOnlyMemory<float> embedding) =>
        new(w.Contains("lm_head.weight") ? w.Get("lm_head.weight", cfg.DVocab, cfg.DModel) : embedding, cfg.DModel, cfg.DVocab, true);

    /// <summary>RoPE base; a family that has no scaled variant refuses any rope_scaling rather than run it wrongly.</summary>
    /// <exception cref="InputError">rope_scaling is set (unless <paramref name="scalingHandled"/>), or rope_theta is not a finite number ≥ 1.</exception>
    public static double RopeTheta(HfConfig c, bool scalingHandled = false)
    {
        if (!scalingHandled && RopeScalingType(c) is { } type)
            throw c.Invalid("rope_scaling", $"type '{type}' is not supported for {c.String("model_type") ?? "this family"} (only unscaled RoPE)");
        return RopeBase(c, "rope_theta");
    }

    /// <summary>
    /// A RoPE base (rope_theta, rotary_emb_base): at least 1. Below 1 the frequencies θ^(−2i/d) exceed one radian per position and,
    /// for a base near zero, overflow float32; no model uses one.
    /// </summary>
    public static double RopeBase(HfConfig c, string field)
    {
        double theta = c.Positive(field, 10000);
        return theta >= 1 ? theta : throw InputError.Expected(c.Path, field, "a RoPE base ≥ 1", theta);
    }

    /// <summary>rope_scaling's type, or null when there is no scaling (absent, null, "default").</summary>
    static string? RopeScalingType(HfConfig c)
    {
        if (c.Element("rope_scaling") is not { } scaling || scaling.ValueKind == System.Text.Json.JsonValueKind.Null) return null;
        if (scaling.ValueKind != System.Text.Json.JsonValueKind.Object) throw c.Wrong("rope_scaling", "an object or null", scaling);
        foreach (var key in new[] { "rope_type", "type" })
            if (scaling.TryGetProperty(key, out var t) && t.ValueKind != System.Text.Json.JsonValueKind.Null)
            {
                if (t.ValueKind != System.Text.Json.JsonValueKind.String) throw c.Wrong($"rope_scaling.{key}", "a string", t);
                string type = t.GetString() ?? "";
                return type is "" or "default" ? null : type;
            }
        return null;
    }

    /// <summary>
    /// Llama-lineage rope_scaling: <c>linear</c> (factor), <c>dynamic</c> (factor; NTK-aware, by sequence length) and
    /// <c>llama3</c> (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings), as Hugging Face
    /// computes them; null when unscaled.
    /// </summary>
    /// <exception cref="InputError">Another type (yarn, longrope… are refused, not approximated), or a field missing or out of range.</exception>
    public static RopeScaling? RopeScalingOf(HfConfig c)
    {
        if (RopeScalingType(c) is not { } type) return null;
        var scaling = c.Element("rope_scaling")!.Value;
        double Number(string key, double min, bool required = true, double fallback = double.NaN)
        {
            if (!scaling.TryGetProperty(key, out var v) || v.ValueKind == System.Text.Json.JsonValueKind.Null)
                return required ? throw c.Invalid($"rope_scaling.{key}", $"is required for rope_type '{type}'") : fallback;
            if (v.ValueKind != System.Text.Json.JsonValueKind.Number || !v.TryGetDouble(out double d) || !double.IsFinite(d) || d < min)
                throw c.Wrong($"rope_scaling.{key}", $"a finite number ≥ {min}", v);
            return d;
        }
        switch (type)
        {
            case "linear":
                return new RopeScaling("linear", Number("factor", 1));
            case "dynamic":
                // HF's dynamic NTK: the original context is max_position_embeddings; beyond it the base grows with the length.
                return new RopeScaling("dynamic", Number("factor", 1), OriginalMaxPositions: c.Int("max_position_embeddings", 1, HfConfig.MaxContext));
            case "llama3":
                double factor = Number("factor", 1), low = Number("low_freq_factor", 0), high = Number("high_freq_factor", 0);
                double original = Number("original_max_position_embeddings", 1);
                if (!(high > low)) throw c.Invalid("rope_scaling", $"high_freq_factor ({high}) must exceed low_freq_factor ({low})");
                if (original > int.MaxValue || original != Math.Floor(original)) throw c.Invalid("rope_scaling.original_max_position_embeddings", $"expected a whole number, found {original}");
                return new RopeScaling("llama3", factor, low, high, (int)original);
            case "longrope" or "su": // "su" is the name Phi-3's first configs used for the same scaling
                return LongRope(c, scaling);
            default:
                throw c.Invalid("rope_scaling", $"type '{type}' is not supported yet (Loupe implements linear, dynamic, llama3 and longrope)");
        }
    }

    // LongRoPE as HF's _compute_longrope_parameters reads it: the original context is the top-level
    // original_max_position_embeddings when the config has one (Phi-3), and then factor = max_position_embeddings / it; else
    // rope_scaling's own original_max_position_embeddings, else max_position_embeddings, with rope_scaling.factor. The
    // attention factor is rope_scaling.attention_factor, or √(1 + ln factor / ln original) (1 when factor ≤ 1).
    // The factor lists' lengths (rotary_dim / 2) are checked by the family, which knows the rotary width.
    static RopeScaling LongRope(HfConfig c, System.Text.Json.JsonElement scaling)
    {
        float[] Factors(string key)
        {
            if (!scaling.TryGetProperty(key, out var v) || v.ValueKind != System.Text.Json.JsonValueKind.Array)
                throw c.Invalid($"rope_scaling.{key}", "is required for rope_type 'longrope' (a list of positive numbers, one per rotary frequency)");
            var values = new float[v.GetArrayLength()];
            int i = 0;
            foreach (var e in v.EnumerateArray())
            {
                if (e.ValueKind != System.Text.Json.JsonValueKind.Number || !e.TryGetDouble(out double d) || !(d > 0) || !double.IsFinite(d) || d > float.MaxValue)
                    throw c.Wrong($"rope_scaling.{key}[{i}]", "a positive finite number", e);
                values[i++] = (float)d;
            }
            return values;
        }
        double? Optional(string key)
        {
            if (!scaling.TryGetProperty(key, out var v) || v.ValueKind == System.Text.Json.JsonValueKind.Null) return null;
            if (v.ValueKind != System.Text.Json.JsonValueKind.Number || !v.TryGetDouble(out double d) || !(d > 0) || !double.IsFinite(d))
                throw c.Wrong($"rope_scaling.{key}", "a positive finite number", v);
            return d;
        }
        var (shortFactor, longFactor) = (Factors("short_factor"), Factors("long_factor"));
        if (shortFactor.Length != longFactor.Length)
            throw c.Invalid("rope_scaling", $"short_factor has {shortFactor.Length} values and long_factor {longFactor.Length}; they must match");
        int maxPositions = c.Int("max_position_embeddings", 1, HfConfig.MaxContext);
        int original;
        double factor;
        if (c.OptionalInt("original_max_position_embeddings", 1, HfConfig.MaxContext) is int top)
            (original, factor) = (top, (double)maxPositions / top);
        else
        {
            double? own = Optional("original_max_position_embeddings");
            if (own is double o && (o != Math.Floor(o) || o > HfConfig.MaxContext)) throw c.Invalid("rope_scaling.original_max_position_embeddings", $"expected a whole number, found {o}");
            original = own is double oo ? (int)oo : maxPositions;
            factor = Optional("factor") ?? 1;
        }
        if (factor > 1 && original < 2) throw c.Invalid("original_max_position_embeddings", $"is {original}; LongRoPE's attention factor needs an original context of at least 2 positions");
        double attention = Optional("attention_factor") ?? (factor <= 1 ? 1 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(original)));
        return new RopeScaling("longrope", factor, OriginalMaxPositions: original, ShortFactor: shortFactor, LongFactor: longFactor, AttentionFactor: attention);
    }

    /// <summary>The sizes every Llama-lineage config shares, each range-checked and cross-checked.</summary>
    public static (int DModel, int Heads, int KvHeads, int DHead, int Layers, int DMlp, int Vocab, int Ctx) Sizes(HfConfig c)
    {
        int d = c.Int("hidden_size", 1, HfConfig.MaxWidth), h = c.Int("num_attention_heads", 1, HfConfig.MaxWidth);
        int dh = c.OptionalInt("head_dim", 1, HfConfig.MaxWidth) ?? c.Quotient("hidden_size", d, "num_attention_heads", h);
        c.ProductWithin("num_attention_heads × head_dim", HfConfig.MaxWidth, h, dh);
        RequireEvenHeadDim(c, dh, c.Has("head_dim") ? "head_dim" : "hidden_size / num_attention_heads");
        int kv = c.OptionalInt("num_key_value_heads", 1, HfConfig.MaxWidth) ?? h;
        c.Quotient("num_attention_heads", h, "num_key_value_heads", kv);
        return (d, h, kv, dh,
            c.Int("num_hidden_layers", 1, HfConfig.MaxLayers),
            c.Int("intermediate_size", 1, HfConfig.MaxWidth),
            c.Int("vocab_size", 1, HfConfig.MaxVocab),
            c.Int("max_position_embeddings", 1, HfConfig.MaxContext));
    }

    /// <summary>Rotary embeddings turn pairs of dimensions, so d_head must be even.</summary>
    public static void RequireEvenHeadDim(HfConfig c, int dh, string field)
    {
        if (dh % 2 != 0) throw new InputError($"{c.Path}: {field} is {dh}; rotary embeddings need an even head dimension");
    }

    /// <summary>An activation name Loupe's kernels implement.</summary>
    public static string Activation(HfConfig c, string field, string? value)
    {
        if (!Tensors.Kernels.Activations.IsKnown(value))
            throw new InputError($"{c.Path}: {field}: expected one of relu, silu, gelu, gelu_new, gelu_pytorch_tanh, found {InputError.Show(value)}");
        return value!;
    }

    /// <summary>bos/eos token ids, which must lie inside the vocabulary.</summary>
    public static int? TokenId(HfConfig c, string field, int vocab)
    {
        int? id = c.OptionalTokenId(field);
        if (id is int i && i >= vocab) throw InputError.Expected(c.Path, field, $"a token id below vocab_size {vocab}", i);
        return id;
    }

    /// <summary>LayerNorm/RMSNorm ε: finite, in [0, 1].</summary>
    public static float NormEps(HfConfig c, string field, double fallback) => (float)c.Double(field, fallback, 0, 1);

    /// <summary>A tanh soft-cap: absent/null means none; otherwise finite, &gt; 0 and at most 10^6 (beyond that it is the identity in float32 and overflows its own arithmetic).</summary>
    public static float SoftCap(HfConfig c, string field) => (float)(c.Has(field) ? c.Positive(field, 0, 1e6) : 0);
}
