using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Testing;
using Loupe.Tensors;
using Xunit.Abstractions;

namespace Loupe.Models.Tests;

/// <summary>The backward pass against HF autograd, and against finite differences at every kind of hook point.</summary>
public class GradientTests(ITestOutputHelper output)
{
    public static TheoryData<string> Families => new() { "gpt2", "gpt_neox", "llama", "llama3", "qwen2", "qwen3", "gemma2", "gemma3", "gpt_neo" };

    [Theory]
    [MemberData(nameof(Families))]
    public void GradientsMatchHuggingFaceAutograd(string arch)
    {
        using var reference = new ReferenceFixture(arch);
        using var model = ModelLoader.LoadFolder(reference.Folder);
        Compare(model, reference);
    }

    [RequiresSharedFact("models/stories260K")]
    public void Stories260KGradientsMatchHuggingFaceAutograd()
    {
        using var reference = new ReferenceFixture("stories260K");
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        Compare(model, reference);
    }

    void Compare(HookedTransformer model, ReferenceFixture reference)
    {
        var metric = new LogitDiff(reference.MetricTokens[0], reference.MetricTokens[1]);
        var result = model.RunWithGradients(reference.Tokens, metric, "blocks.*.hook_resid_pre,blocks.*.hook_resid_post");
        Assert.Equal(reference.Get("metric")[0], result.Metric, 1e-3);
        int L = model.Config.NLayers;
        for (int l = 0; l < L; l++)
            AssertRelative(reference.Get($"grad.resid_pre.{l}"), result.Gradients[HookNames.ResidPre(l)].Span, $"grad.resid_pre.{l}");
        AssertRelative(reference.Get("grad.final_norm_in"), result.Gradients[HookNames.ResidPost(L - 1)].Span, "grad.final_norm_in");
    }

    void AssertRelative(float[] expected, ReadOnlySpan<float> actual, string what)
    {
        float scale = expected.Max(MathF.Abs);
        float worst = 0;
        for (int i = 0; i < expected.Length; i++) worst = MathF.Max(worst, MathF.Abs(expected[i] - actual[i]));
        output.WriteLine($"{what}: max |Δ| / max |g| = {worst / scale:E2}");
        Assert.True(worst <= 1e-4f * scale, $"{what}: max abs difference {worst:G4} exceeds 1e-4 × {scale:G4}");
    }

    /// <summary>Hook points covering every layer kind: embeddings, norms, q/k/v (and rotary), scores, pattern, z, result, MLP, residuals.</summary>
    public static TheoryData<string, string> HookPoints()
    {
        var data = new TheoryData<string, string>();
        foreach (var hook in new[] { "hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized", "blocks.0.ln1.hook_scale",
                     "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.1.attn.hook_attn_scores",
                     "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.attn.hook_result", "blocks.1.hook_attn_out",
                     "blocks.1.hook_mlp_in", "blocks.1.mlp.hook_in", "blocks.1.ln2.hook_normalized", "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out",
                     "blocks.2.hook_resid_post", "ln_final.hook_normalized" })
            foreach (var arch in new[] { "gpt2", "gpt_neox", "llama", "gemma2" })
                data.Add(arch, hook);
        data.Add("llama", "blocks.1.attn.hook_rot_q");
        data.Add("llama", "blocks.1.attn.hook_rot_k");
        data.Add("llama", "blocks.1.mlp.hook_pre_linear");
        data.Add("gemma2", "blocks.0.ln1_post.hook_normalized");
        data.Add("gemma2", "blocks.0.ln2_post.hook_scale");
        data.Add("gpt_neox", "blocks.2.attn.hook_rot_k");
        data.Add("qwen3", "blocks.1.attn.q_norm.hook_normalized"); // a per-head RMSNorm: its hook before the weight too
        data.Add("qwen3", "blocks.1.attn.k_norm.hook_normalized");
        return data;
    }

    [Theory]
    [MemberData(nameof(HookPoints))]
    public void DirectionalDerivativesMatchFiniteDifferences(string arch, string hook)
    {
        using var model = TestModels.Load(arch);
        var tokens = new TokenBatch([82, 87, 74, 39, 184, 175, 214, 409, 84, 200, 158, 186, 380, 257, 94, 24], 2, 8);
        var metric = new LogProb(17);
        var result = model.RunWithGradients(tokens, metric, hook, new RunOptions { CacheFilter = n => n == hook });
        var activation = result.Activations[hook];
        var gradient = result.Gradients[hook];
        Assert.True(activation.SameShape(gradient));

        var random = new Random(hook.GetHashCode(StringComparison.Ordinal) ^ arch.Length);
        var direction = new float[activation.Length];
        for (int i = 0; i < direction.Length; i++)
            direction[i] = float.IsFinite(activation.Span[i]) ? (float)(random.NextDouble() * 2 - 1) : 0f; // masked scores stay −∞
        double analytic = 0;
        for (int i = 0; i < direction.Length; i++) analytic += (double)gradient.Span[i] * direction[i];

        double Perturbed(float epsilon)
        {
            var options = new RunOptions().AddHook(hook, (x, _) =>
            {
                var y = x.Clone();
                for (int i = 0; i < y.Length; i++) y.Span[i] += epsilon * direction[i];
                return y;
            });
            return metric.Value(model.Run(tokens, options).Logits);
        }
        // Five-point stencil (error O(h⁴)): a step large enough that float32 round-off in the metric stays small.
        float eps = 3e-2f * MathF.Max(1e-2f, RootMeanSquare(activation));
        double numeric = (8 * (Perturbed(eps) - Perturbed(-eps)) - (Perturbed(2 * eps) - Perturbed(-2 * eps))) / (12 * eps);
        output.WriteLine($"{arch} {hook}: analytic {analytic:G6}, numeric {numeric:G6}");
        Assert.True(Math.Abs(analytic - numeric) <= 2e-2 * Math.Max(1e-2, Math.Abs(numeric)) + 1e-3,
            $"{arch} {hook}: analytic directional derivative {analytic:G6} vs finite difference {numeric:G6}");
    }

    static float RootMeanSquare(Tensor t)
    {
        double sum = 0;
        int n = 0;
        foreach (var v in t.Span) if (float.IsFinite(v)) { sum += (double)v * v; n++; }
        return (float)Math.Sqrt(sum / Math.Max(1, n));
    }

    [Fact]
    public void GradientHooksCanEditGradients()
    {
        using var model = TestModels.Load("gpt2");
        var tokens = TokenBatch.Single(82, 87, 74, 39, 184);
        var metric = new LogitDiff(17, 42);
        var plain = model.RunWithGradients(tokens, metric, "hook_embed");
        // Zeroing the gradient at resid_pre.1 cuts every path through it: only the direct path from the embedding survives,
        // which in a sequential model does not exist — so the embedding's gradient becomes zero.
        var options = new RunOptions().AddGradientHook(HookNames.ResidPre(1), (g, _) => Tensor.Zeros(g.Shape.ToArray()));
        var cut = model.RunWithGradients(tokens, metric, "hook_embed", options);
        Assert.Contains(plain.Gradients["hook_embed"].Span.ToArray(), v => v != 0);
        Assert.All(cut.Gradients["hook_embed"].Span.ToArray(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void MetricsHaveCorrectGradients()
    {
        var random = new Random(3);
        var logits = new Tensor(Enumerable.Range(0, 2 * 3 * 7).Select(_ => (float)random.NextDouble() * 4 - 2).ToArray(), 2, 3, 7);
        var tokens = new TokenBatch([1, 2, 3, 4, 5, 6], 2, 3);
        foreach (IMetric metric in new IMetric[] { new LogitDiff(1, 4), new LogProb(3, 1), new SpanLoss(tokens, 0, 2) })
        {
            var g = metric.Gradient(logits);
            for (int i = 0; i < logits.Length; i++)
            {
                var plus = logits.Clone(); plus.Span[i] += 1e-2f;
                var minus = logits.Clone(); minus.Span[i] -= 1e-2f;
                double numeric = (metric.Value(plus) - metric.Value(minus)) / 2e-2;
                Assert.True(Math.Abs(numeric - g.Span[i]) < 1e-3, $"{metric.Name} at {i}: {g.Span[i]} vs {numeric}");
            }
        }
    }
}
