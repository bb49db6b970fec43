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

    public static AttentionLayer Attention(int l, ModelConfig cfg, WeightSource w, RotaryTable rotary)
    {
        string b = Layer(l) + "self_attn.";
        int D = cfg.DModel, q = cfg.NHeads * cfg.DHead, kv = cfg.KvHeads * cfg.DHead;
        return new AttentionLayer(l, cfg,
            new Linear(w.Get(b + "q_proj.weight", q, D), D, q, true, w.Optional(b + "q_proj.bias", q)),
            new Linear(w.Get(b + "k_proj.weight", kv, D), D, kv, true, w.Optional(b + "k_proj.bias", kv)),
            new Linear(w.Get(b + "v_proj.weight", kv, D), D, kv, true, w.Optional(b + "v_proj.bias", kv)),
            new Linear(w.Get(b + "o_proj.weight", D, q), q, D, true, w.Optional(b + "o_proj.bias", D)),
            rotary);
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

    public static Norm RmsNorm(WeightSource w, string tensor, ModelConfig cfg, string hookPrefix, float weightOffset = 0f) =>
        new(NormKind.RmsNorm, w.Get(tensor, cfg.DModel), default, cfg.NormEps, hookPrefix, weightOffset);

    /// <summary>lm_head when stored, else the (tied) token embedding.</summary>
    public static Linear Unembed(ModelConfig cfg, WeightSource w, ReadOnlyMemory<float> embedding) =>
        new(w.Contains("lm_head.weight") ? w.Get("lm_head.weight", cfg.DVocab, cfg.DModel) : embedding, cfg.DModel, cfg.DVocab, true);

    /// <summary>RoPE settings; scaled variants are refused rather than run wrongly.</summary>
    public static double RopeTheta(HfConfig c)
    {
        if (c.Element("rope_scaling") is { } scaling && scaling.ValueKind == System.Text.Json.JsonValueKind.Object)
        {
            string type = scaling.TryGetProperty("rope_type", out var t) ? t.GetString() ?? "" : scaling.TryGetProperty("type", out var t2) ? t2.GetString() ?? "" : "";
            if (type is not ("" or "default"))
                throw new NotSupportedException($"{c.Path}: rope_scaling of type '{type}' is not supported yet");
        }
        return c.Double("rope_theta", 10000);
    }
}
