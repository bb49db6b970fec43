using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Xunit.Abstractions;

namespace Loupe.Models.Tests;

/// <summary>
/// The splice seam with a minimal splice (a random linear map y = x·W with one sub-hook), checked
/// against the same computation written as plain forward hooks.
/// </summary>
public class SpliceTests(ITestOutputHelper output)
{
    /// <summary>output = hook_linear(input·W); W is [d, d], row-major.</summary>
    sealed class LinearSplice(string input, string outputHook, float[] w, int d) : IHookSplice
    {
        public string InputHook => input;
        public string OutputHook => outputHook;
        public string SubHook => outputHook + ".hook_linear";
        public IReadOnlyList<string> SubHookNames => [SubHook];

        public SpliceOutput Forward(Tensor x, Tensor original, int layer, ForwardContext ctx)
        {
            var y = ctx.Hook(SubHook, layer, Apply(x, w, d, transpose: false));
            return new SpliceOutput(y, null);
        }

        public SpliceGradient Backward(object? saved, Tensor dOutput, int layer, ForwardContext ctx)
        {
            var dy = ctx.GradHook(SubHook, layer, dOutput);
            return new SpliceGradient(Apply(dy, w, d, transpose: true), null);
        }
    }

    /// <summary>x·W (or x·Wᵀ) over the last axis, written out.</summary>
    static Tensor Apply(Tensor x, float[] w, int d, bool transpose)
    {
        var y = Tensor.Zeros(x.Shape.ToArray());
        for (int r = 0; r < x.Length / d; r++)
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++)
                    y.Span[r * d + j] += x.Span[r * d + i] * (transpose ? w[j * d + i] : w[i * d + j]);
        return y;
    }

    static float[] RandomMatrix(int d, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, d * d).Select(_ => (float)((random.NextDouble() * 2 - 1) / Math.Sqrt(d))).ToArray();
    }

    static readonly TokenBatch Tokens = new([82, 87, 74, 39, 184, 175, 214, 409, 84, 200, 158, 186, 380, 257, 94, 24], 2, 8);

    [Fact]
    public void SpliceReplacesTheHookAndItsSubHookCanBeCached()
    {
        using var model = TestModels.Load("llama");
        int d = model.Config.DModel;
        var w = RandomMatrix(d, 1);
        string hook = HookNames.ResidPost(1);
        var splice = new LinearSplice(hook, hook, w, d);

        // Independent: the same map as a replacing forward hook.
        var expected = model.Run(Tokens, new RunOptions().AddHook(hook, (x, _) => Apply(x, w, d, false))).Logits;
        var options = new RunOptions().AddSplice(splice);
        var names = model.HookPointNamesWith(options);
        Assert.Equal(names.ToList().IndexOf(hook) + 1, names.ToList().IndexOf(splice.SubHook));
        var result = model.RunWithCache(Tokens, "*.hook_linear," + hook, options);
        Assert.Equal(expected.Span.ToArray(), result.Logits.Span.ToArray());
        // The parent hook still records the model's own activation; the sub-hook what the splice made of it.
        var clean = model.RunWithCache(Tokens, hook).Cache[hook];
        Assert.Equal(clean.Span.ToArray(), result.Cache[hook].Span.ToArray());
        Assert.Equal(Apply(clean, w, d, false).Span.ToArray(), result.Cache[splice.SubHook].Span.ToArray());
        // Without the splice the sub-hook does not exist.
        Assert.Throws<InputError>(() => model.RunWithCache(Tokens, "*.hook_linear"));
    }

    [Fact]
    public void ModelLevelSpliceJoinsHookPointNamesUntilDisposed()
    {
        using var model = TestModels.Load("llama");
        int d = model.Config.DModel;
        var w = RandomMatrix(d, 2);
        string hook = HookNames.ResidPre(2);
        var splice = new LinearSplice(hook, hook, w, d);
        var plain = model.Run(Tokens).Logits.Span.ToArray();
        var expected = model.Run(Tokens, new RunOptions().AddHook(hook, (x, _) => Apply(x, w, d, false))).Logits.Span.ToArray();
        using (model.AddSplice(splice))
        {
            Assert.Contains(splice.SubHook, model.HookPointNames);
            Assert.Equal(expected, model.Run(Tokens).Logits.Span.ToArray());
            Assert.Throws<ArgumentException>(() => model.AddSplice(new LinearSplice(hook, hook, w, d)));
        }
        Assert.DoesNotContain(splice.SubHook, model.HookPointNames);
        Assert.Equal(plain, model.Run(Tokens).Logits.Span.ToArray());
    }

    [Fact]
    public void TranscoderStyleSpliceReadsOneHookAndReplacesAnother()
    {
        using var model = TestModels.Load("llama");
        int d = model.Config.DModel;
        var w = RandomMatrix(d, 3);
        string input = HookNames.NormNormalized(1, "ln2"), outputHook = HookNames.MlpOut(1);
        var splice = new LinearSplice(input, outputHook, w, d);
        // Independent: capture the MLP input with one hook, replace the MLP output with another.
        Tensor? captured = null;
        var manual = new RunOptions()
            .AddHook(input, (x, _) => { captured = x; return null; })
            .AddHook(outputHook, (_, _) => Apply(captured!, w, d, false));
        var expected = model.Run(Tokens, manual).Logits.Span.ToArray();
        Assert.Equal(expected, model.Run(Tokens, new RunOptions().AddSplice(splice)).Logits.Span.ToArray());
    }

    public static TheoryData<string, string> SpliceGradientCases() => new()
    {
        { "blocks.1.hook_resid_post", "blocks.1.hook_resid_post" },
        { "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out" },
    };

    /// <summary>
    /// d metric / d resid_pre.0 and d metric / d sub-hook through a spliced model against five-point finite
    /// differences of the same model written with forward hooks.
    /// </summary>
    [Theory]
    [MemberData(nameof(SpliceGradientCases))]
    public void GradientsFlowThroughTheSplice(string input, string outputHook)
    {
        using var model = TestModels.Load("llama");
        int d = model.Config.DModel;
        var w = RandomMatrix(d, 4);
        var splice = new LinearSplice(input, outputHook, w, d);
        var metric = new LogProb(17);
        string upstream = HookNames.ResidPre(0);
        var result = model.RunWithGradients(Tokens, metric, $"{upstream},{splice.SubHook}",
            new RunOptions { CacheFilter = n => n == upstream || n == splice.SubHook }.AddSplice(splice));

        foreach (var hook in new[] { upstream, splice.SubHook })
        {
            var activation = result.Activations[hook];
            var gradient = result.Gradients[hook];
            var random = new Random(hook.Length);
            var direction = Enumerable.Range(0, activation.Length).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
            double analytic = 0;
            for (int i = 0; i < direction.Length; i++) analytic += (double)gradient.Span[i] * direction[i];
            double Perturbed(float epsilon)
            {
                var options = new RunOptions().AddSplice(splice).AddHook(hook, (x, _) =>
                {
                    var y = x.Clone();
                    for (int i = 0; i < y.Length; i++) y.Span[i] += epsilon * direction[i];
                    return y;
                });
                return metric.Value(model.Run(Tokens, options).Logits);
            }
            // Five-point stencil with a step scaled to the activation, as in GradientTests.
            float eps = 3e-2f * MathF.Max(1e-2f, MathF.Sqrt(activation.Span.ToArray().Select(v => v * v).Average()));
            double numeric = (8 * (Perturbed(eps) - Perturbed(-eps)) - (Perturbed(2 * eps) - Perturbed(-2 * eps))) / (12 * eps);
            output.WriteLine($"{input} → {outputHook}, {hook}: analytic {analytic:G6}, numeric {numeric:G6}");
            Assert.True(Math.Abs(analytic - numeric) <= 2e-2 * Math.Max(1e-2, Math.Abs(numeric)) + 1e-3,
                $"{hook}: analytic {analytic:G6} vs finite difference {numeric:G6}");
        }
    }

    [Fact]
    public void TranscoderOutputHookGetsNoGradientThroughTheSplice()
    {
        using var model = TestModels.Load("llama");
        int d = model.Config.DModel;
        var splice = new LinearSplice(HookNames.NormNormalized(1, "ln2"), HookNames.MlpOut(1), RandomMatrix(d, 5), d);
        var result = model.RunWithGradients(Tokens, new LogProb(17), "blocks.1.mlp.hook_post", new RunOptions().AddSplice(splice));
        // The MLP's own neurons no longer reach the output.
        Assert.All(result.Gradients["blocks.1.mlp.hook_post"].Span.ToArray(), g => Assert.Equal(0f, g));
    }

    [Fact]
    public void BadSplicesFailClearly()
    {
        using var model = TestModels.Load("llama");
        int d = model.Config.DModel;
        var w = RandomMatrix(d, 6);
        var missing = Assert.Throws<ArgumentException>(() => model.Run(Tokens, new RunOptions().AddSplice(new LinearSplice("blocks.1.hook_resid_pots", "blocks.1.hook_resid_pots", w, d))));
        Assert.Contains("blocks.1.hook_resid_pots", missing.Message);
        Assert.Contains("blocks.1.hook_resid_post", missing.Message); // closest name offered
        Assert.Throws<ArgumentException>(() => model.AddSplice(new LinearSplice("blocks.9.hook_resid_post", "blocks.9.hook_resid_post", w, d)));
        Assert.Empty(model.Splices);

        // Input hook after the output hook: the pass never reaches it in time.
        var backwards = new LinearSplice(HookNames.ResidPost(2), HookNames.ResidPost(1), w, d);
        var late = Assert.Throws<InvalidOperationException>(() => model.Run(Tokens, new RunOptions().AddSplice(backwards)));
        Assert.Contains("blocks.2.hook_resid_post", late.Message);
        Assert.Throws<InvalidOperationException>(() => model.AddSplice(backwards));
        Assert.Empty(model.Splices);

        var twice = new RunOptions().AddSplice(new LinearSplice(HookNames.ResidPost(1), HookNames.ResidPost(1), w, d))
            .AddSplice(new LinearSplice(HookNames.ResidPost(1), HookNames.ResidPost(1), w, d));
        Assert.Throws<ArgumentException>(() => model.Run(Tokens, twice));
    }

    [Fact]
    public void SplicesStayActiveDuringGeneration()
    {
        using var model = TestModels.Load("llama");
        int d = model.Config.DModel;
        var w = RandomMatrix(d, 7);
        string hook = HookNames.ResidPost(0);
        var prompt = new[] { 82, 87, 74 };
        var generation = new Generation.GenerationOptions(MaxNewTokens: 4, StopAtEos: false);
        var viaHook = model.Generate([prompt], generation, new RunOptions().AddHook(hook, (x, _) => Apply(x, w, d, false)));
        var viaSplice = model.Generate([prompt], generation, new RunOptions().AddSplice(new LinearSplice(hook, hook, w, d)));
        Assert.Equal(viaHook[0], viaSplice[0]);
    }
}
