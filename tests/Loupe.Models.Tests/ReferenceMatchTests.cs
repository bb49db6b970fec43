using Loupe.Models.Hooks;
using Loupe.Testing;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Models.Tests;

/// <summary>Loupe's forward pass against Hugging Face transformers, tensor by tensor, to 1e-4.</summary>
public class ReferenceMatchTests
{
    const float Tol = 1e-4f;

    public static TheoryData<string> Families => new() { "gpt2", "gpt_neox", "llama", "llama3", "qwen2", "qwen3", "gemma2", "gemma3", "gpt_neo" };

    [Theory]
    [MemberData(nameof(Families))]
    public void TinyRandomModelsMatchHuggingFace(string arch)
    {
        using var reference = new ReferenceFixture(arch);
        using var model = ModelLoader.LoadFolder(reference.Folder);
        CompareAll(model, reference);
    }

    [RequiresSharedFact("models/stories260K")]
    public void Stories260KMatchesHuggingFace()
    {
        using var reference = new ReferenceFixture("stories260K");
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        CompareAll(model, reference);
    }

    /// <summary>
    /// The gemma3 fixture re-packed as a Gemma3ForConditionalGeneration checkpoint (model_type gemma3, the text model's
    /// settings under text_config with the fields equal to Gemma3TextConfig's defaults left out, decoder tensors under
    /// the multimodal prefix, a vision tower beside them): its language model must compute what HF's Gemma3ForCausalLM does.
    /// </summary>
    [Theory]
    [InlineData("language_model.model.")]
    [InlineData("model.language_model.")]
    public void Gemma3ConditionalGenerationLanguageModelMatchesHuggingFace(string prefix)
    {
        using var reference = new ReferenceFixture("gemma3");
        string folder = Directory.CreateTempSubdirectory("loupe-gemma3-mm").FullName;
        try
        {
            var text = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(reference.Folder, "config.json")))!.AsObject();
            foreach (var field in new[] { "rms_norm_eps", "rope_theta", "rope_local_base_freq", "hidden_activation", "sliding_window_pattern",
                                          "final_logit_softcapping", "attn_logit_softcapping", "architectures", "torch_dtype" })
                text.Remove(field);
            var config = new System.Text.Json.Nodes.JsonObject
            {
                ["architectures"] = new System.Text.Json.Nodes.JsonArray("Gemma3ForConditionalGeneration"),
                ["model_type"] = "gemma3",
                ["text_config"] = text,
                ["vision_config"] = new System.Text.Json.Nodes.JsonObject { ["model_type"] = "siglip_vision_model", ["hidden_size"] = 8 },
                ["mm_tokens_per_image"] = 4,
            };
            File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
            using (var source = global::Loupe.Models.Loading.SafeTensorsFile.Open(Path.Combine(reference.Folder, "model.safetensors")))
            {
                var tensors = source.Names.Select(n => (prefix + n["model.".Length..], source.GetInfo(n).Shape.Select(d => (int)d).ToArray(), source.GetFloat32(n)))
                    .Append(("vision_tower.vision_model.embeddings.patch_embedding.weight", new[] { 8, 3, 2, 2 }, (ReadOnlyMemory<float>)new float[96]))
                    .Append(("multi_modal_projector.mm_input_projection_weight", new[] { 8, 64 }, (ReadOnlyMemory<float>)new float[512]))
                    .ToList();
                Assert.All(source.Names, n => Assert.StartsWith("model.", n));
                global::Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors);
            }
            using var model = ModelLoader.LoadFolder(folder);
            Assert.Equal("gemma3", model.Config.Architecture);
            CompareAll(model, reference);
        }
        finally { Directory.Delete(folder, true); }
    }

    [Fact]
    public void Gemma3CheckpointWithoutItsTextConfigIsRefused()
    {
        string folder = Directory.CreateTempSubdirectory("loupe-gemma3-bad").FullName;
        try
        {
            File.WriteAllText(Path.Combine(folder, "config.json"), "{\"model_type\": \"gemma3\", \"vision_config\": {}}");
            global::Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"),
                [("vision_tower.x", new[] { 2 }, (ReadOnlyMemory<float>)new float[2])]);
            var error = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(folder));
            Assert.Contains("text_config", error.Message);
        }
        finally { Directory.Delete(folder, true); }
    }

    internal static void CompareAll(HookedTransformer model, ReferenceFixture reference)
    {
        var result = model.RunWithCache(reference.Tokens);
        var cache = result.Cache;
        int L = model.Config.NLayers;
        ReferenceFixture.AssertClose(reference.Get("logits"), result.Logits.Span, Tol, "logits");
        for (int l = 0; l < L; l++)
        {
            ReferenceFixture.AssertClose(reference.Get($"resid_pre.{l}"), cache[HookNames.ResidPre(l)].Span, Tol, $"resid_pre.{l}");
            ReferenceFixture.AssertClose(reference.Get($"resid_post.{l}"), cache[HookNames.ResidPost(l)].Span, Tol, $"resid_post.{l}");
            ReferenceFixture.AssertClose(reference.Get($"attn_probs.{l}"), cache[HookNames.Pattern(l)].Span, Tol, $"attn_probs.{l}");
            var attnOut = reference.Get($"attn_out.{l}");
            var mlpOut = reference.Get($"mlp_out.{l}");
            if (model.Config.Architecture is "gemma2" or "gemma3")
            {
                // HF's attn_out/mlp_out are taken before Gemma's post-norms; TransformerLens's hooks
                // after them (what joins the residual stream). Apply the post-norm with the scalar reference.
                attnOut = PostNorm(reference.Folder, $"model.layers.{l}.post_attention_layernorm.weight", attnOut, model.Config);
                mlpOut = PostNorm(reference.Folder, $"model.layers.{l}.post_feedforward_layernorm.weight", mlpOut, model.Config);
            }
            ReferenceFixture.AssertClose(attnOut, cache[HookNames.AttnOut(l)].Span, Tol, $"attn_out.{l}");
            ReferenceFixture.AssertClose(mlpOut, cache[HookNames.MlpOut(l)].Span, Tol, $"mlp_out.{l}");
        }
        ReferenceFixture.AssertClose(reference.Get("final_norm_in"), cache[HookNames.ResidPost(L - 1)].Span, Tol, "final_norm_in");
        // TransformerLens's ln_final.hook_normalized: the norm's output for a LayerNorm, x/σ before the weight for an RMSNorm.
        var finalNorm = model.FinalNormLayer!;
        var normalized = cache[HookNames.FinalNormalized];
        ReferenceFixture.AssertClose(reference.Get("final_norm_out"), finalNorm.OutputFromNormalized(model.Backend, normalized).ToCpu().Span, Tol, "final_norm_out");
        if (finalNorm.Kind == NormKind.RmsNorm)
            ReferenceFixture.AssertClose(RmsNormalized(reference.Get("final_norm_in"), model.Config.DModel, finalNorm.Eps), normalized.ToCpu().Span, Tol, "final_norm_in / rms");
        else
            ReferenceFixture.AssertClose(reference.Get("final_norm_out"), normalized.ToCpu().Span, Tol, "final_norm_out (LayerNorm's hook_normalized is its output)");
    }

    /// <summary><c>x / sqrt(mean(x²) + eps)</c> per row of width d, in double: TransformerLens's RMSNorm hook_normalized.</summary>
    static float[] RmsNormalized(float[] x, int d, float eps)
    {
        var y = new float[x.Length];
        for (int r = 0; r < x.Length / d; r++)
        {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)x[r * d + i] * x[r * d + i];
            double sigma = Math.Sqrt(ss / d + eps);
            for (int i = 0; i < d; i++) y[r * d + i] = (float)(x[r * d + i] / sigma);
        }
        return y;
    }

    static float[] PostNorm(string folder, string weightName, float[] x, ModelConfig cfg)
    {
        using var weights = global::Loupe.Models.Loading.SafeTensorsFile.Open(Path.Combine(folder, "model.safetensors"));
        var w = weights.GetFloat32(weightName).Span;
        var y = new float[x.Length];
        ReferenceKernels.RmsNorm(x, x.Length / cfg.DModel, cfg.DModel, w, 1f, cfg.NormEps, y);
        return y;
    }
}
