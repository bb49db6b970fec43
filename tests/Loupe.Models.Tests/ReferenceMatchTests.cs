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

    static void CompareAll(HookedTransformer model, ReferenceFixture reference)
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
        ReferenceFixture.AssertClose(reference.Get("final_norm_out"), cache[HookNames.FinalNormalized].Span, Tol, "final_norm_out");
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
