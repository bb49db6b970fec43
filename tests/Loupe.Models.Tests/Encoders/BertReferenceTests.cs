using Loupe.Models.Families;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Metrics;
using Loupe.Testing;
using Loupe.Tensors;

namespace Loupe.Models.Tests.Encoders;

/// <summary>The tiny random BertForMaskedLM fixture (tests/data/reference/bert, HF transformers 4.45.2).</summary>
public sealed class BertReferenceTests : IDisposable
{
    const float Tol = 1e-4f;
    readonly SafeTensorsFile _ref;
    readonly string _folder;

    public BertReferenceTests()
    {
        _folder = SharedData.TestData(Path.Combine("reference", "bert"));
        _ref = SafeTensorsFile.Open(Path.Combine(_folder, "reference.safetensors"));
    }

    public void Dispose() => _ref.Dispose();

    int[] Ints(string name) => _ref.GetInt64(name).Select(v => (int)v).ToArray();
    float[] Floats(string name) => _ref.GetFloat32(name).ToArray();

    /// <summary>The fixture's inputs: a sentence pair (token types 0/1) and a right-padded row.</summary>
    internal static TokenBatch Inputs(SafeTensorsFile reference)
    {
        var info = reference.GetInfo("input_ids");
        int B = (int)info.Shape[0], T = (int)info.Shape[1];
        var ids = reference.GetInt64("input_ids").Select(v => (int)v).ToArray();
        var mask = reference.GetInt64("attention_mask").Select(v => v == 1).ToArray();
        var types = reference.GetInt64("token_type_ids").Select(v => (int)v).ToArray();
        return new TokenBatch(ids, B, T, mask.All(v => v) ? null : mask) { TokenTypeIds = types };
    }

    static float[] Host(Tensor t) => t.ToCpu().Span.ToArray();

    [Fact]
    public void Every_tensor_matches_hugging_face()
    {
        using var model = ModelLoader.LoadFolder(_folder);
        Assert.IsType<BertModel>(model);
        Assert.True(model.Config.MlmHead);
        var tokens = Inputs(_ref);
        var result = model.RunWithCache(tokens);
        var cache = result.Cache;
        ReferenceFixture.AssertClose(Floats("mlm_logits"), Host(result.Logits), Tol, "mlm_logits");
        ReferenceFixture.AssertClose(Floats("mlm_transform_out"), Host(cache["mlm_head.ln.hook_normalized"]), Tol, "mlm_transform_out");
        var preLn = Sum(Host(cache[HookNames.EncoderEmbed]), Host(cache[HookNames.EncoderPosEmbed]), Host(cache[HookNames.EncoderTokenTypeEmbed]));
        ReferenceFixture.AssertClose(Floats("embeddings_pre_ln"), preLn, Tol, "embeddings_pre_ln");
        ReferenceFixture.AssertClose(Floats("hidden_states.0"), Host(cache[HookNames.FullEmbed]), Tol, "hidden_states.0");
        int L = model.Config.NLayers;
        for (int l = 0; l < L; l++)
        {
            ReferenceFixture.AssertClose(Floats($"hidden_states.{l}"), Host(cache[HookNames.ResidPre(l)]), Tol, $"hidden_states.{l} (resid_pre)");
            ReferenceFixture.AssertClose(Floats($"hidden_states.{l + 1}"), Host(cache[HookNames.NormalizedResidPost(l)]), Tol, $"hidden_states.{l + 1}");
            ReferenceFixture.AssertClose(Floats($"attn_probs.{l}"), Host(cache[HookNames.Pattern(l)]), Tol, $"attn_probs.{l}");
            ReferenceFixture.AssertClose(Floats($"attn_out.{l}"), Host(cache[HookNames.AttnOut(l)]), Tol, $"attn_out.{l}");
            ReferenceFixture.AssertClose(Floats($"attn_block_out.{l}"), Host(cache[HookNames.NormNormalized(l, "ln1")]), Tol, $"attn_block_out.{l}");
            ReferenceFixture.AssertClose(Floats($"mlp_out.{l}"), Host(cache[HookNames.MlpOut(l)]), Tol, $"mlp_out.{l}");
        }
    }

    static float[] Sum(float[] a, float[] b, float[] c) => a.Select((v, i) => v + b[i] + c[i]).ToArray();

    [Fact]
    public void Padded_keys_get_exactly_zero_probability_and_patterns_are_bidirectional()
    {
        using var model = ModelLoader.LoadFolder(_folder);
        var tokens = Inputs(_ref);
        var cache = model.RunWithCache(tokens, "blocks.*.attn.hook_pattern").Cache;
        int T = tokens.Length, H = model.Config.NHeads;
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var p = Host(cache[HookNames.Pattern(l)]);
            for (int h = 0; h < H; h++)
                for (int q = 0; q < T; q++)
                {
                    double rowSum = 0;
                    for (int k = 0; k < T; k++)
                    {
                        float v0 = p[((0 * H + h) * T + q) * T + k], v1 = p[((1 * H + h) * T + q) * T + k];
                        rowSum += v1;
                        if (!tokens.Valid![T + k]) Assert.Equal(0f, v1);
                        else Assert.True(v1 > 0f, $"layer {l} head {h}: unpadded key {k} of query {q} has probability 0");
                        Assert.True(v0 > 0f, "row 0 has no padding: every key is seen, later ones too");
                    }
                    Assert.InRange(rowSum, 1 - 1e-5, 1 + 1e-5);
                }
        }
    }

    [Fact]
    public void Gradients_of_the_masked_token_metric_match_hugging_face()
    {
        using var model = ModelLoader.LoadFolder(_folder);
        var tokens = Inputs(_ref);
        var metric = new MaskedLogitDiff(Ints("metric_positions"), Ints("metric_tokens")[0], Ints("metric_tokens")[1]);
        Assert.Equal(17, Ints("metric_tokens")[0]);
        int L = model.Config.NLayers;
        var result = model.RunWithGradients(tokens, metric, $"hook_full_embed,blocks.*.hook_normalized_resid_post");
        Assert.InRange(result.Metric, Floats("metric")[0] - 1e-3, Floats("metric")[0] + 1e-3);
        CheckGradient(Floats("grad.hidden_states.0"), Host(result.Gradients[HookNames.FullEmbed]), "grad.hidden_states.0");
        for (int l = 0; l < L; l++)
            CheckGradient(Floats($"grad.hidden_states.{l + 1}"), Host(result.Gradients[HookNames.NormalizedResidPost(l)]), $"grad.hidden_states.{l + 1}");
        // Padded positions influence nothing: their gradient is exactly 0.
        var g0 = Host(result.Gradients[HookNames.FullEmbed]);
        int T = tokens.Length, D = model.Config.DModel;
        for (int t = 0; t < T; t++)
            if (!tokens.Valid![T + t])
                for (int d = 0; d < D; d++) Assert.Equal(0f, g0[(T + t) * D + d]);
    }

    /// <summary>1e-4 relative to the gradient's largest magnitude, as the issue asks.</summary>
    static void CheckGradient(float[] expected, float[] actual, string what)
    {
        float scale = Math.Max(expected.Max(MathF.Abs), 1e-6f);
        ReferenceFixture.AssertClose(expected, actual, 1e-4f * scale + 1e-6f, what);
    }

    /// <summary>Σ_b logits[b, position_b, answer] − logits[b, position_b, wrong] (the fixture's metric).</summary>
    sealed class MaskedLogitDiff(int[] positions, int answer, int wrong) : IMetric
    {
        public string Name => "masked_logit_diff";

        public double Value(Tensor logits)
        {
            var l = logits.ToCpu();
            int T = l.Dim(1), V = l.Dim(2);
            double s = 0;
            for (int b = 0; b < positions.Length; b++)
                s += l.Span[(b * T + positions[b]) * V + answer] - l.Span[(b * T + positions[b]) * V + wrong];
            return s;
        }

        public Tensor Gradient(Tensor logits)
        {
            int T = logits.Dim(1), V = logits.Dim(2);
            var g = Tensor.Zeros(logits.Shape.ToArray());
            for (int b = 0; b < positions.Length; b++)
            {
                g.Span[(b * T + positions[b]) * V + answer] = 1f;
                g.Span[(b * T + positions[b]) * V + wrong] = -1f;
            }
            return g;
        }
    }

    [Fact]
    public void Hook_points_follow_transformer_lens_hooked_encoder_names()
    {
        using var model = ModelLoader.LoadFolder(_folder);
        var names = model.HookPointNames;
        foreach (var n in new[] { "embed.hook_embed", "embed.hook_pos_embed", "embed.hook_token_type_embed", "hook_full_embed",
                     "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_z",
                     "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid",
                     "blocks.0.ln1.hook_normalized", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out",
                     "blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_post", "blocks.2.hook_normalized_resid_post", "mlm_head.ln.hook_normalized" })
            Assert.Contains(n, names);
        // Every declared hook is reached by a run (and nothing undeclared is).
        var cache = model.RunWithCache(Inputs(_ref)).Cache;
        Assert.Equal(names.Where(n => !n.EndsWith(".hook_result", StringComparison.Ordinal)).OrderBy(n => n), cache.Names.Where(n => !n.EndsWith(".hook_result", StringComparison.Ordinal)).OrderBy(n => n));
        Assert.DoesNotContain("ln_final.hook_normalized", names);
        // Residual bookkeeping: resid_mid = resid_pre + attn_out, resid_post = ln1 + mlp_out.
        var pre = Host(cache[HookNames.ResidPre(1)]);
        var attn = Host(cache[HookNames.AttnOut(1)]);
        var mid = Host(cache[HookNames.ResidMid(1)]);
        ReferenceFixture.AssertClose(mid, pre.Select((v, i) => v + attn[i]).ToArray(), 1e-5f, "resid_mid");
    }

    [Fact]
    public void Without_the_mlm_head_the_logits_are_the_final_hidden_states()
    {
        string folder = Directory.CreateTempSubdirectory("loupe-bertmodel").FullName;
        try
        {
            using (var src = SafeTensorsFile.Open(Path.Combine(_folder, "model.safetensors")))
            {
                var entries = src.Names.Where(n => n.StartsWith("bert.", StringComparison.Ordinal))
                    .Select(n => SafeTensorEntry.F32(n["bert.".Length..], src.GetInfo(n).Shape.Select(d => (int)d).ToArray(), src.GetFloat32(n).ToArray()))
                    .ToList();
                SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), entries);
            }
            File.Copy(Path.Combine(_folder, "config.json"), Path.Combine(folder, "config.json"));
            using var model = (BertModel)ModelLoader.LoadFolder(folder);
            Assert.False(model.Config.MlmHead);
            Assert.Equal(model.Config.DModel, model.Config.VocabOut);
            var logits = Host(model.Run(Inputs(_ref)).Logits);
            ReferenceFixture.AssertClose(Floats($"hidden_states.{model.Config.NLayers}"), logits, Tol, "last hidden state as logits");
            Assert.DoesNotContain("mlm_head.ln.hook_normalized", model.HookPointNames);
            Assert.False(model.HasPooler);
        }
        finally { Directory.Delete(folder, true); }
    }

    [Theory]
    [InlineData("position_embedding_type", "\"relative_key\"")]
    [InlineData("is_decoder", "true")]
    [InlineData("add_cross_attention", "true")]
    public void Unsupported_config_switches_are_refused_naming_the_field(string field, string value)
    {
        string folder = Directory.CreateTempSubdirectory("loupe-bert-bad").FullName;
        try
        {
            File.Copy(Path.Combine(_folder, "model.safetensors"), Path.Combine(folder, "model.safetensors"));
            var config = File.ReadAllText(Path.Combine(_folder, "config.json")).Replace("\"vocab_size\"", $"\"{field}\": {value},\n  \"vocab_size\"");
            if (field == "position_embedding_type") config = File.ReadAllText(Path.Combine(_folder, "config.json")).Replace("\"absolute\"", value);
            File.WriteAllText(Path.Combine(folder, "config.json"), config);
            var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(folder));
            Assert.Contains(field, e.Message);
        }
        finally { Directory.Delete(folder, true); }
    }
}
