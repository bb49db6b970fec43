using System.Text.Json.Nodes;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Verification;
using Loupe.Testing;

namespace Loupe.Models.Tests;

/// <summary>
/// Phi-3 (HF Phi3ForCausalLM): the llama fixture re-packed with Phi-3's fused projections must compute what Hugging Face's
/// LlamaForCausalLM computed for it (Phi-3's block is Llama's with q/k/v and gate/up fused); partial rotary and LongRoPE
/// against the rotation recomputed in the test from HF's definitions; the model certified by `loupe verify`'s checks.
/// </summary>
public sealed class Phi3Tests(Devices.EmulatedBackendFixture device) : IClassFixture<Devices.EmulatedBackendFixture>, IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("loupe-phi3").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    // The llama fixture as a Phi-3 checkpoint: config model_type phi3, qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows.
    string Repacked(Action<JsonObject>? editConfig = null)
    {
        string from = SharedData.TestData("reference/llama"), to = Path.Combine(_root, "phi3-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(to);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(from, "config.json")))!.AsObject();
        config["model_type"] = "phi3";
        config["architectures"] = new JsonArray("Phi3ForCausalLM");
        foreach (var field in new[] { "mlp_bias", "pretraining_tp", "head_dim" }) config.Remove(field);
        config["sliding_window"] = null;
        editConfig?.Invoke(config);
        File.WriteAllText(Path.Combine(to, "config.json"), config.ToJsonString());
        using var source = SafeTensorsFile.Open(Path.Combine(from, "model.safetensors"));
        var entries = new List<SafeTensorEntry>();
        var layers = new HashSet<string>();
        foreach (var name in source.Names)
        {
            if (name.Contains(".self_attn.q_proj.") || name.Contains(".self_attn.k_proj.") || name.Contains(".self_attn.v_proj.")
                || name.Contains(".mlp.gate_proj.") || name.Contains(".mlp.up_proj."))
            {
                int cut = name.IndexOf(".self_attn", StringComparison.Ordinal);
                layers.Add(name[..(cut > 0 ? cut : name.IndexOf(".mlp", StringComparison.Ordinal))]);
                continue;
            }
            entries.Add(SafeTensorEntry.F32(name, [.. source.GetInfo(name).Shape.Select(d => (int)d)], source.GetFloat32(name).ToArray()));
        }
        SafeTensorEntry Fused(string name, params string[] parts)
        {
            var data = parts.SelectMany(p => source.GetFloat32(p).ToArray()).ToArray();
            int cols = (int)source.GetInfo(parts[0]).Shape[1];
            return SafeTensorEntry.F32(name, [data.Length / cols, cols], data);
        }
        foreach (var layer in layers)
        {
            entries.Add(Fused(layer + ".self_attn.qkv_proj.weight", layer + ".self_attn.q_proj.weight", layer + ".self_attn.k_proj.weight", layer + ".self_attn.v_proj.weight"));
            entries.Add(Fused(layer + ".mlp.gate_up_proj.weight", layer + ".mlp.gate_proj.weight", layer + ".mlp.up_proj.weight"));
        }
        SafeTensorsWriter.Write(Path.Combine(to, "model.safetensors"), entries);
        return to;
    }

    [Fact]
    public void The_llama_fixture_as_phi3_matches_hugging_faces_forward_and_gradients()
    {
        using var reference = new ReferenceFixture("llama");
        using var model = ModelLoader.LoadFolder(Repacked());
        Assert.Equal("phi3", model.Config.Architecture);
        Assert.Equal(model.Config.DHead, model.Config.RotaryDim);
        ReferenceMatchTests.CompareAll(model, reference);

        var result = model.RunWithGradients(reference.Tokens, new Metrics.LogitDiff(reference.MetricTokens[0], reference.MetricTokens[1]), "blocks.*.hook_resid_pre");
        Assert.Equal(reference.Get("metric")[0], result.Metric, 1e-3);
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var expected = reference.Get($"grad.resid_pre.{l}");
            var actual = result.Gradients[HookNames.ResidPre(l)].Span;
            float scale = expected.Max(MathF.Abs);
            for (int i = 0; i < expected.Length; i++)
                Assert.True(MathF.Abs(expected[i] - actual[i]) <= 1e-4f * scale, $"grad.resid_pre.{l}[{i}]: {actual[i]} vs {expected[i]}");
        }
    }

    // Random weights at the llama fixture's shapes with partial rotary (half of d_head) and LongRoPE over an original context of 8.
    static readonly float[] Short = [1f, 1.5f, 2f, 3f], Long = [1.2f, 2.5f, 4f, 9f];

    string LongRope() => Repacked(c =>
    {
        c["partial_rotary_factor"] = 0.5;
        c["max_position_embeddings"] = 32;
        c["original_max_position_embeddings"] = 8;
        c["rope_scaling"] = new JsonObject { ["type"] = "longrope", ["short_factor"] = new JsonArray([.. Short.Select(v => (JsonNode)v)]), ["long_factor"] = new JsonArray([.. Long.Select(v => (JsonNode)v)]) };
    });

    [Theory]
    [InlineData(6)]   // within the original context: short factors
    [InlineData(12)]  // beyond it: long factors
    public void Partial_longrope_rotates_as_hugging_face_defines_it(int length)
    {
        using var model = ModelLoader.LoadFolder(LongRope());
        int dh = model.Config.DHead, rd = model.Config.RotaryDim, H = model.Config.NHeads, half = rd / 2;
        Assert.Equal(8, rd);
        var ids = Enumerable.Range(0, length).Select(t => 3 + (t * 37) % 500).ToArray();
        var run = model.RunWithCache(new TokenBatch(ids, 1, length), "blocks.1.attn.hook_q,blocks.1.attn.hook_rot_q");
        var q = run.Cache["blocks.1.attn.hook_q"].ToCpu().Span.ToArray();
        var rot = run.Cache["blocks.1.attn.hook_rot_q"].ToCpu().Span.ToArray();
        // HF: factor = max_position_embeddings / original = 4, attention factor √(1 + ln 4 / ln 8); inv_freq_i = 1 / (f_i·θ^(2i/rd))
        double magnitude = Math.Sqrt(1 + Math.Log(4) / Math.Log(8));
        var factors = length > 8 ? Long : Short;
        for (int t = 0; t < length; t++)
            for (int h = 0; h < H; h++)
            {
                int o = (t * H + h) * dh;
                for (int i = 0; i < half; i++)
                {
                    double inv = 1.0 / (factors[i] * Math.Pow(10000.0, 2.0 * i / rd)), angle = t * inv;
                    double x1 = q[o + i], x2 = q[o + i + half];
                    double want1 = magnitude * (x1 * Math.Cos(angle) - x2 * Math.Sin(angle)), want2 = magnitude * (x2 * Math.Cos(angle) + x1 * Math.Sin(angle));
                    Assert.True(Math.Abs(rot[o + i] - want1) <= 1e-4 * (1 + Math.Abs(want1)), $"t {t} head {h} dim {i}: {rot[o + i]} vs {want1}");
                    Assert.True(Math.Abs(rot[o + i + half] - want2) <= 1e-4 * (1 + Math.Abs(want2)), $"t {t} head {h} dim {i + half}");
                }
                for (int i = rd; i < dh; i++) Assert.Equal(q[o + i], rot[o + i]); // past the rotary width: untouched
            }
    }

    [Fact]
    public void A_longrope_model_passes_the_verify_certificate()
    {
        using var model = ModelLoader.LoadFolder(LongRope());
        // past the original context, so the long factors are used; gradients by finite differences through the scaled rotation
        var report = ModelVerifier.Run(model, new VerifyOptions { Length = 12, Prompts = 2, Seed = 3 });
        Assert.True(report.Passed, string.Join("\n", report.Checks.Where(c => !c.Passed).Select(c => $"{c.Group}/{c.Name}: {c.Error:G3} > {c.Tolerance:G3}")));
    }

    [Theory]
    [InlineData(6)]
    [InlineData(12)]
    public void On_the_emulated_gpu_a_longrope_phi3_computes_what_the_cpu_does(int length)
    {
        string folder = LongRope();
        using var cpu = ModelLoader.LoadFolder(folder);
        using var gpu = ModelLoader.LoadFolder(folder, device.Backend);
        var tokens = new TokenBatch([.. Enumerable.Range(0, 2 * length).Select(t => 5 + (t * 53) % 500)], 2, length);
        const string hooks = "blocks.2.attn.hook_rot_k,blocks.2.hook_resid_post";
        var a = cpu.RunWithCache(tokens, hooks);
        var b = gpu.RunWithCache(tokens, hooks);
        foreach (var (name, x, y) in new[] { ("logits", a.Logits, b.Logits), ("rot_k", a.Cache["blocks.2.attn.hook_rot_k"], b.Cache["blocks.2.attn.hook_rot_k"]) })
        {
            var (e, g) = (x.ToCpu().Span.ToArray(), y.ToCpu().Span.ToArray());
            float scale = e.Max(MathF.Abs);
            for (int i = 0; i < e.Length; i++) Assert.True(MathF.Abs(e[i] - g[i]) <= 1e-4f * scale, $"{name}[{i}]: {g[i]} vs {e[i]}");
        }
    }

    [Fact]
    public void Bad_phi3_configs_are_refused_by_field()
    {
        InputError Refused(Action<JsonObject> edit) => Assert.Throws<InputError>(() => ModelLoader.LoadFolder(Repacked(edit)).Dispose());
        Assert.Contains("partial_rotary_factor", Refused(c => c["partial_rotary_factor"] = 0.01).Message);
        Assert.Contains("short_factor", Refused(c => c["rope_scaling"] = new JsonObject { ["type"] = "longrope", ["long_factor"] = new JsonArray(1, 1) }).Message);
        Assert.Contains("rotary width", Refused(c => c["rope_scaling"] = new JsonObject { ["type"] = "longrope", ["short_factor"] = new JsonArray(1, 1), ["long_factor"] = new JsonArray(1, 1) }).Message);
        Assert.Contains("short_factor[1]", Refused(c => c["rope_scaling"] = new JsonObject { ["type"] = "su", ["short_factor"] = new JsonArray(1, -2, 1, 1, 1, 1, 1, 1), ["long_factor"] = new JsonArray(1, 1, 1, 1, 1, 1, 1, 1) }).Message);
        Assert.Contains("yarn", Refused(c => c["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 4 }).Message);
        // a fused tensor of the wrong height names the tensor
        string folder = Repacked();
        var entries = new List<SafeTensorEntry>();
        using (var file = SafeTensorsFile.Open(Path.Combine(folder, "model.safetensors")))
            foreach (var name in file.Names)
            {
                var data = file.GetFloat32(name).ToArray();
                int[] shape = [.. file.GetInfo(name).Shape.Select(d => (int)d)];
                if (name == "model.layers.1.self_attn.qkv_proj.weight") (data, shape) = (data[..(data.Length - 16 * 64)], [shape[0] - 16, shape[1]]);
                entries.Add(SafeTensorEntry.F32(name, shape, data));
            }
        SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), entries);
        Assert.Contains("model.layers.1.self_attn.qkv_proj.weight", Assert.Throws<InputError>(() => ModelLoader.LoadFolder(folder).Dispose()).Message);
    }
}
