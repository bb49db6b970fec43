using System.Text.Json;
using Loupe.Models.Loading;

namespace Loupe.GpuBench;

/// <summary>A model shape to time: real hyper-parameters, random weights.</summary>
public sealed record ModelShape(string Name, string ModelType, int Layers, int DModel, int Heads, int KvHeads, int DMlp, int Vocab, int Context)
{
    public int DHead => DModel / Heads;

    public static ModelShape Gpt2Small { get; } = new("gpt2-small", "gpt2", 12, 768, 12, 12, 3072, 50257, 1024);

    /// <summary>Llama-3.2-1B: 16 layers, d_model 2048, 32 heads over 8 kv heads, SwiGLU 8192, vocab 128,256, tied.</summary>
    public static ModelShape Llama1B { get; } = new("llama-3.2-1b", "llama", 16, 2048, 32, 8, 8192, 128256, 131072);

    public static ModelShape Gpt2Tiny { get; } = new("gpt2-tiny", "gpt2", 2, 128, 4, 4, 512, 1024, 1024);
    public static ModelShape LlamaTiny { get; } = new("llama-tiny", "llama", 2, 128, 8, 2, 352, 1024, 4096);

    public static ModelShape Parse(string name) => name switch
    {
        "gpt2-small" => Gpt2Small,
        "llama-3.2-1b" or "llama-1b" => Llama1B,
        "gpt2-tiny" => Gpt2Tiny,
        "llama-tiny" => LlamaTiny,
        _ => throw new ArgumentException($"unknown model '{name}' (gpt2-small, llama-3.2-1b, gpt2-tiny, llama-tiny)"),
    };
}

/// <summary>Writes a Hugging Face folder (config.json + model.safetensors, fp32) with N(0, 0.02)-like weights.</summary>
static class RandomModels
{
    public static string Ensure(string root, ModelShape m, TextWriter log)
    {
        string folder = Path.Combine(root, m.Name);
        string config = Path.Combine(folder, "config.json");
        if (File.Exists(config) && File.Exists(Path.Combine(folder, "model.safetensors"))) return folder;
        Directory.CreateDirectory(folder);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var tensors = Tensors(m).ToList();
        SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors.Select(t => (t.Name, t.Shape, (ReadOnlyMemory<float>)Fill(t.Shape, t.Kind))));
        File.WriteAllText(config, Config(m));
        log.WriteLine($"  wrote {m.Name} ({tensors.Sum(t => t.Shape.Aggregate(1L, (a, d) => a * d)) / 1e6:F0}M parameters) in {sw.Elapsed.TotalSeconds:F1} s");
        return folder;
    }

    // One block of pseudo-normal values, reused: timing does not depend on the values, only on them being finite and small.
    static readonly float[] s_block = MakeBlock();

    static float[] MakeBlock()
    {
        var rng = new Random(5);
        var a = new float[1 << 20];
        for (int i = 0; i < a.Length; i++) a[i] = (float)((rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5) * 0.04);
        return a;
    }

    static float[] Fill(int[] shape, char kind)
    {
        long n = shape.Aggregate(1L, (a, d) => a * d);
        var data = new float[n];
        if (kind == '1') { data.AsSpan().Fill(1f); return data; }
        if (kind == '0') return data;
        for (long i = 0; i < n; i += s_block.Length)
            s_block.AsSpan(0, (int)Math.Min(s_block.Length, n - i)).CopyTo(data.AsSpan((int)i));
        return data;
    }

    static IEnumerable<(string Name, int[] Shape, char Kind)> Tensors(ModelShape m)
    {
        int D = m.DModel, M = m.DMlp, q = m.Heads * m.DHead, kv = m.KvHeads * m.DHead;
        if (m.ModelType == "gpt2")
        {
            yield return ("transformer.wte.weight", [m.Vocab, D], 'r');
            yield return ("transformer.wpe.weight", [m.Context, D], 'r');
            for (int l = 0; l < m.Layers; l++)
            {
                string b = $"transformer.h.{l}.";
                yield return (b + "ln_1.weight", [D], '1'); yield return (b + "ln_1.bias", [D], '0');
                yield return (b + "attn.c_attn.weight", [D, 3 * D], 'r'); yield return (b + "attn.c_attn.bias", [3 * D], '0');
                yield return (b + "attn.c_proj.weight", [D, D], 'r'); yield return (b + "attn.c_proj.bias", [D], '0');
                yield return (b + "ln_2.weight", [D], '1'); yield return (b + "ln_2.bias", [D], '0');
                yield return (b + "mlp.c_fc.weight", [D, M], 'r'); yield return (b + "mlp.c_fc.bias", [M], '0');
                yield return (b + "mlp.c_proj.weight", [M, D], 'r'); yield return (b + "mlp.c_proj.bias", [D], '0');
            }
            yield return ("transformer.ln_f.weight", [D], '1'); yield return ("transformer.ln_f.bias", [D], '0');
            yield break;
        }
        yield return ("model.embed_tokens.weight", [m.Vocab, D], 'r');
        for (int l = 0; l < m.Layers; l++)
        {
            string b = $"model.layers.{l}.";
            yield return (b + "input_layernorm.weight", [D], '1');
            yield return (b + "self_attn.q_proj.weight", [q, D], 'r');
            yield return (b + "self_attn.k_proj.weight", [kv, D], 'r');
            yield return (b + "self_attn.v_proj.weight", [kv, D], 'r');
            yield return (b + "self_attn.o_proj.weight", [D, q], 'r');
            yield return (b + "post_attention_layernorm.weight", [D], '1');
            yield return (b + "mlp.gate_proj.weight", [M, D], 'r');
            yield return (b + "mlp.up_proj.weight", [M, D], 'r');
            yield return (b + "mlp.down_proj.weight", [D, M], 'r');
        }
        yield return ("model.norm.weight", [D], '1');
    }

    public static string Config(ModelShape m) => m.ModelType == "gpt2"
        ? JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["model_type"] = "gpt2", ["n_layer"] = m.Layers, ["n_embd"] = m.DModel, ["n_head"] = m.Heads, ["n_inner"] = m.DMlp,
            ["vocab_size"] = m.Vocab, ["n_positions"] = m.Context, ["activation_function"] = "gelu_new", ["layer_norm_epsilon"] = 1e-5,
        })
        : JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["model_type"] = "llama", ["num_hidden_layers"] = m.Layers, ["hidden_size"] = m.DModel, ["num_attention_heads"] = m.Heads,
            ["num_key_value_heads"] = m.KvHeads, ["intermediate_size"] = m.DMlp, ["vocab_size"] = m.Vocab,
            ["max_position_embeddings"] = m.Context, ["hidden_act"] = "silu", ["rms_norm_eps"] = 1e-5, ["rope_theta"] = 500000.0,
            ["tie_word_embeddings"] = true,
        });
}
