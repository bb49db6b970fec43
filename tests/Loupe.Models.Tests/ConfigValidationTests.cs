using System.Text.Json.Nodes;
using Loupe.Models.Hooks;
using Loupe.Testing;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>
/// Every config.json field a family reads is range-checked before anything is allocated or divided,
/// and a bad value is an <see cref="InputError"/> naming config.json and the field.
/// </summary>
public class ConfigValidationTests
{
    /// <summary>A config edit that sets <paramref name="field"/> to the raw JSON <paramref name="json"/> (null text removes it).</summary>
    static Func<string, string> Set(string field, string? json) => text =>
    {
        var root = JsonNode.Parse(text)!.AsObject();
        if (json is null) root.Remove(field);
        else root[field] = JsonNode.Parse(json);
        return root.ToJsonString();
    };

    static InputError LoadFails(string arch, string field, string json)
    {
        var dir = TestModels.Copy(arch, Set(field, json));
        try
        {
            var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir).Dispose());
            Assert.Contains("config.json", e.Message);
            Assert.DoesNotContain("\n", e.Message);
            return e;
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory]
    [InlineData("llama", "num_attention_heads", "0")]
    [InlineData("llama", "num_attention_heads", "-4")]
    [InlineData("qwen2", "num_attention_heads", "0")]
    [InlineData("gemma2", "num_attention_heads", "0")]
    [InlineData("gpt_neox", "num_attention_heads", "0")]
    [InlineData("gpt2", "n_head", "0")]
    [InlineData("llama", "num_hidden_layers", "-1")]
    [InlineData("llama", "num_hidden_layers", "2147483647")]
    [InlineData("gemma2", "num_hidden_layers", "2147483647")]
    [InlineData("gpt_neox", "num_hidden_layers", "-1")]
    [InlineData("gpt2", "n_layer", "2147483647")]
    [InlineData("llama", "max_position_embeddings", "2147483647")]
    [InlineData("gemma2", "max_position_embeddings", "0")]
    [InlineData("gpt_neox", "max_position_embeddings", "2147483647")]
    [InlineData("gpt2", "n_positions", "-1")]
    [InlineData("llama", "hidden_size", "0")]
    [InlineData("llama", "hidden_size", "9999999999")]
    [InlineData("llama", "vocab_size", "0")]
    [InlineData("llama", "intermediate_size", "-5")]
    [InlineData("llama", "head_dim", "0")]
    [InlineData("llama", "num_key_value_heads", "0")]
    [InlineData("llama", "rope_theta", "0")]
    [InlineData("llama", "rope_theta", "-10000")]
    [InlineData("llama", "rope_theta", "1e400")]
    [InlineData("llama", "rms_norm_eps", "-1e-5")]
    [InlineData("gemma2", "rms_norm_eps", "-1")]
    [InlineData("gpt_neox", "layer_norm_eps", "-1")]
    [InlineData("gpt2", "layer_norm_epsilon", "-0.5")]
    [InlineData("gemma2", "attn_logit_softcapping", "1e30")]
    [InlineData("gemma2", "attn_logit_softcapping", "0")]
    [InlineData("gemma2", "final_logit_softcapping", "-30")]
    [InlineData("gemma2", "final_logit_softcapping", "1e300")]
    [InlineData("gemma2", "query_pre_attn_scalar", "0")]
    [InlineData("gemma2", "sliding_window", "-4")]
    [InlineData("gpt_neox", "rotary_pct", "0")]
    [InlineData("gpt_neox", "rotary_pct", "2")]
    [InlineData("gpt_neox", "rotary_emb_base", "0")]
    [InlineData("llama", "bos_token_id", "512")]
    [InlineData("llama", "eos_token_id", "-2")]
    [InlineData("llama", "hidden_act", "\"tanhh\"")]
    [InlineData("gpt2", "activation_function", "\"swiglu\"")]
    [InlineData("llama", "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4}")]
    [InlineData("llama", "rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8}")]
    [InlineData("llama", "rope_scaling", "{\"rope_type\": \"linear\", \"factor\": -1}")]
    [InlineData("gemma2", "rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 2}")]
    [InlineData("gpt_neo", "attention_layers", "[\"global\", \"sparse\", \"global\", \"local\"]")]
    [InlineData("gpt_neo", "attention_layers", "[\"global\"]")]
    [InlineData("gpt_neo", "window_size", "0")]
    public void OutOfRangeFieldIsNamed(string arch, string field, string json)
    {
        var e = LoadFails(arch, field, json);
        Assert.Contains(field, e.Message);
    }

    [Theory]
    [InlineData("llama", "num_attention_heads", "\"4\"", "a string")]
    [InlineData("llama", "hidden_size", "64.5", "64.5")]
    [InlineData("gpt2", "n_embd", "[64]", "an array")]
    [InlineData("llama", "rms_norm_eps", "\"1e-5\"", "a string")]
    [InlineData("llama", "model_type", "5", "the number 5")]
    [InlineData("gpt_neox", "use_parallel_residual", "\"yes\"", "a string")]
    public void FieldOfTheWrongJsonTypeIsNamed(string arch, string field, string json, string found)
    {
        var e = LoadFails(arch, field, json);
        Assert.Contains(field, e.Message);
        Assert.Contains(found, e.Message);
    }

    [Fact]
    public void HiddenSizeNotDivisibleByHeadsSaysSo()
    {
        var e = LoadFails("qwen2", "num_attention_heads", "3");
        Assert.EndsWith("config.json: hidden_size 64 is not divisible by num_attention_heads 3", e.Message);
        e = LoadFails("gpt2", "n_head", "3");
        Assert.EndsWith("config.json: n_embd 64 is not divisible by n_head 3", e.Message);
        e = LoadFails("gpt_neox", "num_attention_heads", "3");
        Assert.EndsWith("config.json: hidden_size 64 is not divisible by num_attention_heads 3", e.Message);
    }

    [Fact]
    public void KeyValueHeadsMustDivideHeads()
    {
        var e = LoadFails("llama", "num_key_value_heads", "3");
        Assert.EndsWith("num_attention_heads 4 is not divisible by num_key_value_heads 3", e.Message);
    }

    [Fact]
    public void OddHeadDimensionIsRefusedForRotary()
    {
        var e = LoadFails("llama", "head_dim", "15");
        Assert.Contains("head_dim is 15", e.Message);
        e = LoadFails("gpt_neox", "rotary_pct", "0.1"); // 16 · 0.1 → 1 rotary dimension
        Assert.Contains("rotary_pct", e.Message);
        Assert.Contains("gives 1", e.Message);
    }

    [Fact]
    public void UnknownOrMissingModelTypeNamesTheField()
    {
        var e = LoadFails("llama", "model_type", "\"mamba\"");
        Assert.Contains("model_type", e.Message);
        Assert.Contains("\"mamba\"", e.Message);
        e = LoadFails("llama", "model_type", "null");
        Assert.Contains("model_type", e.Message);
        Assert.Contains("LlamaForCausalLM", e.Message); // architectures is quoted as a hint
    }

    [Fact]
    public void FewerLayersInConfigThanInWeightsIsRefused()
    {
        var e = LoadFails("llama", "num_hidden_layers", "2");
        Assert.Contains("num_hidden_layers", e.Message);
        Assert.Contains("model.layers.2.", e.Message);
        e = LoadFails("gpt2", "n_layer", "1");
        Assert.Contains("h.1.", e.Message);
    }

    [Fact]
    public void MoreLayersInConfigThanInWeightsNamesTheMissingTensor()
    {
        var dir = TestModels.Copy("gpt_neox", Set("num_hidden_layers", "4"));
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir).Dispose());
        Assert.Contains("gpt_neox.layers.3.", e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void VocabSizeDisagreeingWithTheEmbeddingNamesTensorAndBothShapes()
    {
        var dir = TestModels.Copy("llama", Set("vocab_size", "500"));
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir).Dispose());
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains("model.embed_tokens.weight", e.Message);
        Assert.Contains("[512, 64]", e.Message);
        Assert.Contains("[500, 64]", e.Message);
    }

    [Fact]
    public void HugeContextLoadsWithoutPrecomputingEveryRotaryPosition()
    {
        // 2^24 positions × 8 angle pairs would be a 1 GB table; rows are computed only as far as they are used.
        var dir = TestModels.Copy("llama", Set("max_position_embeddings", (1 << 24).ToString()));
        using var model = ModelLoader.LoadFolder(dir);
        Assert.Equal(1 << 24, model.Config.NCtx);
        var logits = model.Run([1, 2, 3]).Logits;
        Assert.True(logits.Span.ToArray().All(float.IsFinite));
    }

    [Fact]
    public void TokenIdListsAreAccepted()
    {
        var dir = TestModels.Copy("llama", Set("eos_token_id", "[2, 3]"));
        using var model = ModelLoader.LoadFolder(dir);
        Assert.Equal(2, model.Config.EosTokenId);
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void TransformerLensConfigFieldsAreChecked()
    {
        string src = SharedData.Require("models/induction-attn-only-2l");
        foreach (var (field, json) in new[] { ("n_heads", "0"), ("d_head", "-1"), ("n_layers", "2147483647"), ("n_ctx", "0"),
                     ("d_model", "\"48\""), ("attn_scale", "0"), ("eps", "-1"), ("normalization_type", "\"BatchNorm\""), ("d_vocab", "0") })
        {
            var dir = TestModels.CopyFolder(src, Set(field, json));
            var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir).Dispose());
            Assert.Contains("config.json", e.Message);
            Assert.Contains(field, e.Message);
        }
        var mlp = TestModels.CopyFolder(src, c => Set("attn_only", "false")(Set("d_mlp", "32")(c)));
        Assert.Contains("act_fn", Assert.Throws<InputError>(() => ModelLoader.LoadFolder(mlp).Dispose()).Message);
    }
}

/// <summary>NaN and ±∞ are refused in weights at load, and traced to the first hook point when a run produces them.</summary>
public class NonFiniteTests
{
    [Theory]
    [InlineData("llama", "model.layers.1.mlp.up_proj.weight", float.NaN, "NaN")]
    [InlineData("gpt2", "transformer.h.0.ln_1.bias", float.PositiveInfinity, "+∞")]
    [InlineData("gemma2", "model.norm.weight", float.NegativeInfinity, "−∞")]
    [InlineData("gpt_neox", "gpt_neox.embed_in.weight", float.NaN, "NaN")]
    public void NonFiniteWeightIsNamedAtLoad(string arch, string tensor, float value, string shown)
    {
        var dir = TestModels.Copy(arch, editTensor: (name, shape, data) =>
        {
            if (name == tensor) data[data.Length - 1] = value;
            return (shape, data);
        });
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir).Dispose());
        Assert.Contains($"'{tensor}'", e.Message);
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains(shown, e.Message);
    }

    [Fact]
    public void NaNPutInByAHookNamesThatHook()
    {
        using var model = TestModels.Load("gpt2");
        var options = new RunOptions().AddHook(HookNames.AttnOut(1), (x, _) =>
        {
            var y = x.Clone();
            y.Span[5] = float.NaN;
            return y;
        });
        var e = Assert.Throws<InputError>(() => model.Run([1, 2, 3], options));
        Assert.Contains("blocks.1.hook_attn_out", e.Message);
        Assert.Contains("made non-finite by a hook", e.Message);
        Assert.Contains("NaN", e.Message);
    }

    [Fact]
    public void OverflowInsideTheModelNamesTheFirstHookWhereItAppears()
    {
        // Finite but huge embeddings and positions: their sum overflows to +∞ in resid_pre of block 0.
        var dir = TestModels.Copy("gpt2", editTensor: (name, shape, data) =>
            name is "transformer.wte.weight" or "transformer.wpe.weight" ? (shape, Enumerable.Repeat(3e38f, data.Length).ToArray()) : (shape, data));
        using var model = ModelLoader.LoadFolder(dir);
        var e = Assert.Throws<InputError>(() => model.Run([1, 2, 3]));
        Assert.Contains("first at hook point blocks.0.hook_resid_pre", e.Message);
        Assert.DoesNotContain("made non-finite by a hook", e.Message);
    }

    [Fact]
    public void GradientsAndGenerationAreCheckedToo()
    {
        using var model = TestModels.Load("llama");
        var options = new RunOptions().AddHook(HookNames.ResidPost(0), (x, _) =>
        {
            var y = x.Clone();
            y.Span[0] = float.PositiveInfinity;
            return y;
        });
        var e = Assert.Throws<InputError>(() => model.RunWithGradients(TokenBatch.Single(1, 2, 3), new Metrics.LogProb(5), options: options));
        Assert.Contains("blocks.0.hook_resid_post", e.Message);
        e = Assert.Throws<InputError>(() => model.Generate([[1, 2, 3]], new Generation.GenerationOptions(MaxNewTokens: 2), options));
        Assert.Contains("blocks.0.hook_resid_post", e.Message);
    }

    [Fact]
    public void ScanFindsTheFirstBadElementInTheVectorBodyAndTheTail()
    {
        foreach (int length in new[] { 0, 1, 7, 8, 15, 16, 17, 33, 100, 1000 })
        {
            var x = Enumerable.Range(0, length).Select(i => (float)i - 50).ToArray();
            Assert.Equal(-1, NonFinite.IndexOf(x));
            for (int at = 0; at < length; at += Math.Max(1, length / 7))
                foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
                {
                    var y = (float[])x.Clone();
                    y[at] = bad;
                    if (at + 1 < length) y[length - 1] = float.NaN;
                    Assert.Equal(at, NonFinite.IndexOf(y));
                    y[length - 1] = x[length - 1];
                    y[at] = bad;
                    Assert.Equal(float.IsNegativeInfinity(bad) ? -1 : at, NonFinite.IndexOf(y, allowNegativeInfinity: true));
                }
        }
        Assert.Equal("[1, 0, 3]", NonFinite.Unravel(23, [2, 5, 4]));
    }

    [Fact]
    public void FiniteRunsAreUnchanged()
    {
        using var model = TestModels.Load("gemma2");
        var logits = model.Run([1, 2, 3, 4, 5, 6]).Logits;
        Assert.True(logits.Span.ToArray().All(float.IsFinite));
    }
}

/// <summary>The rotary table is filled lazily, so a config's n_ctx costs memory only for positions that are run.</summary>
public class LazyRotaryTableTests
{
    [Fact]
    public void RowsAreComputedOnDemandAndMatchTheFormula()
    {
        var table = new Tensors.Kernels.RotaryTable(8, 10000, 1 << 24);
        Assert.True(table.ComputedPositions <= 4096);
        foreach (int p in new[] { 0, 1, 2047, 2048, 5000, 100_000 })
        {
            // x = e₀ of one head: after rotation lo[0] = cos(p·θ₀), hi[0] = sin(p·θ₀) with θ₀ = 1.
            var x = new float[8];
            x[0] = 1;
            table.Apply(x, 1, 1, 8, [p]);
            Assert.Equal((float)Math.Cos(p * 1f), x[0], 1e-6f);
            Assert.Equal((float)Math.Sin(p * 1f), x[4], 1e-6f);
            Assert.True(table.ComputedPositions > p);
        }
        Assert.True(table.ComputedPositions < 1 << 20);
        Assert.Throws<ArgumentOutOfRangeException>(() => table.Apply(new float[8], 1, 1, 8, [1 << 24]));
    }
}
