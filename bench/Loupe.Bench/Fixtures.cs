using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Models.Loading;

namespace Loupe.Bench;

/// <summary>
/// Writes benchmark models as real Hugging Face folders (config.json + model.safetensors) so that
/// loading goes through <see cref="Loupe.Models.ModelLoader.LoadFolder"/> exactly as a user's
/// download does (memory-mapped). Weights are seeded N(0, 0.02); norm weights 1; biases 0.
/// <para>
/// A folder is reused when its config.json is byte-for-byte what this code would write (the config
/// carries a fixture version and the seed) and model.safetensors exists. model.safetensors is
/// written first (atomically, by <see cref="SafeTensorsWriter"/>) and config.json last, so a folder
/// with a matching config is complete.
/// </para>
/// </summary>
public static class Fixtures
{
    /// <summary>Bump when the weights or layout written here change, so old caches are rewritten.</summary>
    const string Version = "loupe-bench-fixture-v1";
    const int Seed = 20240611;
    const float InitStd = 0.02f;

    /// <summary>How a tensor is filled. <c>Unembed</c>: N(0, (3/√d_model)²), Llama only (see <see cref="UnembedStd"/>).</summary>
    enum Init { Normal, Ones, Zeros, Unembed }

    /// <summary>
    /// Llama's lm_head std. Behind RMSNorm the final residual has per-dimension scale ≈ 1, so N(0, 0.02) would give
    /// logits of std 0.02·√d ≈ 0.55 and a near-uniform softmax over 32000 tokens (top probability ≈ 3·10⁻⁴); 3/√d gives
    /// logits of std ≈ 3, a peaked but spread distribution (top-1 ≈ 0.05–0.2), like a trained model's.
    /// </summary>
    static float UnembedStd(BenchModel m) => 3f / MathF.Sqrt(m.DModel);

    /// <summary>The cache folder: <c>$LOUPE_BENCH_CACHE</c> or <c>/tmp/loupe-bench-models</c>.</summary>
    public static string DefaultCacheRoot =>
        Environment.GetEnvironmentVariable("LOUPE_BENCH_CACHE") is { Length: > 0 } dir ? dir
        : OperatingSystem.IsWindows() ? Path.Combine(Path.GetTempPath(), "loupe-bench-models") : "/tmp/loupe-bench-models";

    public static string FolderOf(string root, BenchModel model) => Path.Combine(root, model.Name);

    public static bool IsReady(string root, BenchModel model)
    {
        string folder = FolderOf(root, model);
        string config = Path.Combine(folder, "config.json");
        return File.Exists(Path.Combine(folder, SafeTensorsCheckpoint.SingleFileName))
            && File.Exists(config)
            && File.ReadAllText(config) == ConfigJson(model);
    }

    /// <summary>
    /// Makes sure every model's folder exists. Missing ones are written by a child process
    /// (<c>Loupe.Bench fixtures</c>) so that the gigabyte of random weights it generates never
    /// counts towards this process's RSS in the loading measurements.
    /// </summary>
    public static void Ensure(string root, IReadOnlyList<BenchModel> models, TextWriter log)
    {
        var missing = models.Where(m => !IsReady(root, m)).ToList();
        if (missing.Count == 0) return;
        log.WriteLine($"writing fixtures to {root}: {string.Join(", ", missing.Select(m => m.Name))} (once; later runs reuse them)");
        var sw = Stopwatch.StartNew();
        if (!TryWriteInChild(root, missing, log)) WriteAll(root, missing, log);
        var still = models.Where(m => !IsReady(root, m)).Select(m => m.Name).ToList();
        if (still.Count > 0) throw new InvalidOperationException($"fixtures were not written: {string.Join(", ", still)} (see messages above)");
        log.WriteLine($"fixtures written in {sw.Elapsed.TotalSeconds:F1} s");
    }

    static bool TryWriteInChild(string root, IReadOnlyList<BenchModel> models, TextWriter log)
    {
        string? host = Environment.ProcessPath;
        string? dll = typeof(Fixtures).Assembly.Location;
        if (host is null || string.IsNullOrEmpty(dll)) return false;
        var psi = new ProcessStartInfo(host) { UseShellExecute = false };
        // Under `dotnet Loupe.Bench.dll` the host is dotnet and needs the dll; an apphost needs nothing.
        if (Path.GetFileNameWithoutExtension(host).Equals("dotnet", StringComparison.OrdinalIgnoreCase)) psi.ArgumentList.Add(dll);
        psi.ArgumentList.Add("fixtures");
        psi.ArgumentList.Add("--cache");
        psi.ArgumentList.Add(root);
        psi.ArgumentList.Add("--models");
        psi.ArgumentList.Add(string.Join(",", models.Select(m => m.Name)));
        try
        {
            using var child = Process.Start(psi);
            if (child is null) return false;
            child.WaitForExit();
            if (child.ExitCode != 0) log.WriteLine($"fixture writer exited with {child.ExitCode}; writing in this process instead");
            return child.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            log.WriteLine($"could not start the fixture writer ({e.Message}); writing in this process instead");
            return false;
        }
    }

    /// <summary>Writes every model in <paramref name="models"/> that is not already in the cache.</summary>
    public static void WriteAll(string root, IEnumerable<BenchModel> models, TextWriter log)
    {
        foreach (var model in models)
        {
            if (IsReady(root, model)) continue;
            var sw = Stopwatch.StartNew();
            Write(FolderOf(root, model), model);
            log.WriteLine($"  {model.Name}: {new FileInfo(Path.Combine(FolderOf(root, model), SafeTensorsCheckpoint.SingleFileName)).Length / 1e6:F0} MB in {sw.Elapsed.TotalSeconds:F1} s");
        }
    }

    static void Write(string folder, BenchModel model)
    {
        Directory.CreateDirectory(folder);
        var specs = TensorSpecs(model);
        var data = new float[specs.Count][];
        // Each tensor has its own seed (base seed + index), so filling them in parallel is deterministic.
        Parallel.For(0, specs.Count, i => data[i] = Fill(specs[i].Shape, specs[i].Init, Seed + 7919 * i, specs[i].Init == Init.Unembed ? UnembedStd(model) : InitStd));
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["loupe_bench"] = $"{Version} seed={Seed}" };
        SafeTensorsWriter.Write(Path.Combine(folder, SafeTensorsCheckpoint.SingleFileName),
            specs.Select((s, i) => (s.Name, s.Shape, (ReadOnlyMemory<float>)data[i])), metadata);
        string config = Path.Combine(folder, "config.json");
        string tmp = config + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, ConfigJson(model));
        File.Move(tmp, config, overwrite: true);
    }

    static float[] Fill(int[] shape, Init init, int seed, float std)
    {
        long n = 1;
        foreach (int d in shape) n *= d;
        var a = new float[n];
        switch (init)
        {
            case Init.Ones: a.AsSpan().Fill(1f); break;
            case Init.Zeros: break;
            default:
                // Box–Muller: two uniforms give two independent N(0, 1) samples.
                var rng = new Random(seed);
                for (long i = 0; i < n; i += 2)
                {
                    double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                    double r = Math.Sqrt(-2.0 * Math.Log(u1)), t = 2.0 * Math.PI * u2;
                    a[i] = (float)(std * r * Math.Cos(t));
                    if (i + 1 < n) a[i + 1] = (float)(std * r * Math.Sin(t));
                }
                break;
        }
        return a;
    }

    /// <summary>The Hugging Face tensor names and shapes of a model (see src/Loupe.Models/Families).</summary>
    static List<(string Name, int[] Shape, Init Init)> TensorSpecs(BenchModel m)
    {
        int D = m.DModel, M = m.DMlp, V = m.DVocab;
        var t = new List<(string, int[], Init)>();
        void Norm(string prefix) { t.Add((prefix + ".weight", [D], Init.Ones)); t.Add((prefix + ".bias", [D], Init.Zeros)); }
        void Affine(string prefix, int[] weightShape, int biasLength) { t.Add((prefix + ".weight", weightShape, Init.Normal)); t.Add((prefix + ".bias", [biasLength], Init.Zeros)); }

        if (m.ModelType == "gpt2")
        {
            // Conv1D weights are [in, out]; the unembedding is tied to wte.
            t.Add(("transformer.wte.weight", [V, D], Init.Normal));
            t.Add(("transformer.wpe.weight", [m.NCtx, D], Init.Normal));
            for (int l = 0; l < m.NLayers; l++)
            {
                string b = $"transformer.h.{l}.";
                Norm(b + "ln_1");
                Affine(b + "attn.c_attn", [D, 3 * D], 3 * D);
                Affine(b + "attn.c_proj", [D, D], D);
                Norm(b + "ln_2");
                Affine(b + "mlp.c_fc", [D, M], M);
                Affine(b + "mlp.c_proj", [M, D], D);
            }
            Norm("transformer.ln_f");
        }
        else if (m.ModelType == "gpt_neox")
        {
            // nn.Linear weights are [out, in]; embed_out is a separate (untied) unembedding.
            t.Add(("gpt_neox.embed_in.weight", [V, D], Init.Normal));
            for (int l = 0; l < m.NLayers; l++)
            {
                string b = $"gpt_neox.layers.{l}.";
                Norm(b + "input_layernorm");
                Norm(b + "post_attention_layernorm");
                Affine(b + "attention.query_key_value", [3 * D, D], 3 * D);
                Affine(b + "attention.dense", [D, D], D);
                Affine(b + "mlp.dense_h_to_4h", [M, D], M);
                Affine(b + "mlp.dense_4h_to_h", [D, M], D);
            }
            Norm("gpt_neox.final_layer_norm");
            t.Add(("embed_out.weight", [V, D], Init.Normal));
        }
        else if (m.ModelType == "llama")
        {
            // nn.Linear [out, in], no biases, RMSNorm weights only; lm_head untied (see UnembedStd).
            int Q = m.NHeads * m.DHead, KV = m.KvHeads * m.DHead;
            t.Add(("model.embed_tokens.weight", [V, D], Init.Normal));
            for (int l = 0; l < m.NLayers; l++)
            {
                string b = $"model.layers.{l}.";
                t.Add((b + "input_layernorm.weight", [D], Init.Ones));
                t.Add((b + "self_attn.q_proj.weight", [Q, D], Init.Normal));
                t.Add((b + "self_attn.k_proj.weight", [KV, D], Init.Normal));
                t.Add((b + "self_attn.v_proj.weight", [KV, D], Init.Normal));
                t.Add((b + "self_attn.o_proj.weight", [D, Q], Init.Normal));
                t.Add((b + "post_attention_layernorm.weight", [D], Init.Ones));
                t.Add((b + "mlp.gate_proj.weight", [M, D], Init.Normal));
                t.Add((b + "mlp.up_proj.weight", [M, D], Init.Normal));
                t.Add((b + "mlp.down_proj.weight", [D, M], Init.Normal));
            }
            t.Add(("model.norm.weight", [D], Init.Ones));
            t.Add(("lm_head.weight", [V, D], Init.Unembed));
        }
        else throw new NotSupportedException($"no fixture writer for model_type '{m.ModelType}'");
        return t;
    }

    /// <summary>config.json as the hub has it for the real model, plus a fixture marker.</summary>
    public static string ConfigJson(BenchModel m)
    {
        var c = new JsonObject();
        if (m.ModelType == "gpt2")
        {
            c["architectures"] = new JsonArray("GPT2LMHeadModel");
            c["model_type"] = "gpt2";
            c["n_layer"] = m.NLayers;
            c["n_embd"] = m.DModel;
            c["n_head"] = m.NHeads;
            c["n_inner"] = m.DMlp;
            c["n_positions"] = m.NCtx;
            c["n_ctx"] = m.NCtx;
            c["vocab_size"] = m.DVocab;
            c["activation_function"] = m.Activation;
            c["layer_norm_epsilon"] = 1e-5;
            c["bos_token_id"] = m.DVocab - 1;
            c["eos_token_id"] = m.DVocab - 1;
        }
        else if (m.ModelType == "llama")
        {
            c["architectures"] = new JsonArray("LlamaForCausalLM");
            c["model_type"] = "llama";
            c["hidden_size"] = m.DModel;
            c["num_hidden_layers"] = m.NLayers;
            c["num_attention_heads"] = m.NHeads;
            c["num_key_value_heads"] = m.KvHeads;
            c["intermediate_size"] = m.DMlp;
            c["vocab_size"] = m.DVocab;
            c["max_position_embeddings"] = m.NCtx;
            c["hidden_act"] = m.Activation;
            c["rms_norm_eps"] = 1e-5;
            c["rope_theta"] = 10000.0;
            c["tie_word_embeddings"] = false;
            c["bos_token_id"] = 0;
            c["eos_token_id"] = 1;
        }
        else
        {
            c["architectures"] = new JsonArray("GPTNeoXForCausalLM");
            c["model_type"] = "gpt_neox";
            c["hidden_size"] = m.DModel;
            c["num_hidden_layers"] = m.NLayers;
            c["num_attention_heads"] = m.NHeads;
            c["intermediate_size"] = m.DMlp;
            c["vocab_size"] = m.DVocab;
            c["max_position_embeddings"] = m.NCtx;
            c["rotary_pct"] = m.RotaryPct;
            c["rotary_emb_base"] = 10000;
            c["use_parallel_residual"] = true;
            c["hidden_act"] = m.Activation;
            c["layer_norm_eps"] = 1e-5;
            c["tie_word_embeddings"] = false;
            c["bos_token_id"] = 0;
            c["eos_token_id"] = 0;
        }
        c["torch_dtype"] = "float32";
        c["loupe_bench_fixture"] = $"{Version} seed={Seed} init=N(0,{InitStd})"
            + (m.ModelType == "llama" ? $" lm_head=N(0,{UnembedStd(m).ToString("R", System.Globalization.CultureInfo.InvariantCulture)})" : "");
        return c.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }
}
