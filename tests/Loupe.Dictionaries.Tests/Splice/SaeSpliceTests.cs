using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Splice;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Xunit.Abstractions;
using static Loupe.Dictionaries.Tests.Splice.SpliceFixtures;

namespace Loupe.Dictionaries.Tests.Splice;

/// <summary>
/// An SAE or transcoder spliced into the model, checked against independent computations: the dictionary's
/// own Encode/Forward on cached clean activations, plain forward hooks doing the same replacement, and
/// finite differences.
/// </summary>
public class SaeSpliceTests(ITestOutputHelper output)
{
    const int D = 64;
    static readonly string Resid = HookNames.ResidPost(1);
    static readonly string MlpIn = HookNames.NormNormalized(1, "ln2");
    static readonly string MlpOut = HookNames.MlpOut(1);

    static SparseDictionary Sae(int seed = 1) => SpliceFixtures.Random(SaeShape.Sae(D, 96), new ReluActivation(), seed);
    static SparseDictionary Transcoder(bool skip, int seed = 2) => SpliceFixtures.Random(SaeShape.Transcoder(D, 80, D, skip), new ReluActivation(), seed);

    /// <summary>The dictionary's reconstruction of every row of <paramref name="x"/>, shaped like <paramref name="like"/>.</summary>
    static Tensor Reconstruct(SparseDictionary d, Tensor x, Tensor like) =>
        Tensor.FromArray(d.Forward(x.Span, x.Length / d.Shape.DIn), like.Shape.ToArray());

    [Fact]
    public void CachedFeatureActivationsAreTheEncodingOfTheCleanActivation()
    {
        using var model = Model();
        var tokens = Tokens();
        var sae = Sae();
        var splice = SaeSplice.ForModel(model, sae, Resid, new SaeSpliceOptions { UseErrorTerm = true });
        var clean = model.RunWithCache(tokens, Resid).Cache[Resid];
        var run = model.RunWithCache(tokens, Resid + ".*", new RunOptions().AddSplice(splice));

        var acts = run.Cache[HookNames.SaeActsPost(Resid)];
        Assert.Equal([2, 10, 96], acts.Shape.ToArray());
        Assert.Equal(sae.Encode(clean.Span, 20), acts.Span.ToArray());
        Assert.Contains(acts.Span.ToArray(), a => a > 0);
        Assert.Contains(acts.Span.ToArray(), a => a == 0);
        // Every SAELens sub-hook is there, in forward order, with its width.
        string[] subHooks = ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error", "hook_sae_output"];
        Assert.Equal(subHooks.Select(s => $"{Resid}.{s}"), run.Cache.Names.Where(n => n.StartsWith(Resid + ".", StringComparison.Ordinal)));
        Assert.Equal([2, 10, 96], run.Cache[HookNames.SaeActsPre(Resid)].Shape.ToArray());
        Assert.Equal(clean.Span.ToArray(), run.Cache[HookNames.SaeInput(Resid)].Span.ToArray());
        Assert.Equal(sae.Forward(clean.Span, 20), run.Cache[HookNames.SaeRecons(Resid)].Span.ToArray());
    }

    public static TheoryData<bool> TranscoderOrNot => new() { false, true };

    [Theory]
    [MemberData(nameof(TranscoderOrNot))]
    public void WithTheErrorTermTheLogitsAreTheCleanOnes(bool transcoder)
    {
        using var model = Model();
        var tokens = Tokens();
        var splice = transcoder
            ? SaeSplice.ForModel(model, Transcoder(skip: true), MlpIn, new SaeSpliceOptions { UseErrorTerm = true, OutputHook = MlpOut })
            : SaeSplice.ForModel(model, Sae(), Resid, new SaeSpliceOptions { UseErrorTerm = true });
        var clean = model.Run(tokens).Logits;
        var spliced = model.Run(tokens, new RunOptions().AddSplice(splice)).Logits;
        float diff = MaxAbsDifference(clean, spliced);
        output.WriteLine($"max |Δ logits| = {diff:E2}");
        Assert.True(diff <= 1e-5f, $"logits differ by {diff} with the error term");
        // … and the reconstruction alone does change them.
        var without = model.Run(tokens, new RunOptions().AddSplice(new SaeSplice(splice.Dictionary, splice.InputHook, splice.Options with { UseErrorTerm = false }))).Logits;
        Assert.True(MaxAbsDifference(clean, without) > 1e-3f);
    }

    public static TheoryData<string> Architectures => new() { "standard", "topk", "batchtopk", "jumprelu" };

    [Theory]
    [MemberData(nameof(Architectures))]
    public void WithoutTheErrorTermTheHookIsReplacedByTheReconstruction(string architecture)
    {
        using var model = Model();
        var tokens = Tokens();
        SaeActivation activation = architecture switch
        {
            "topk" => new TopKActivation(8),
            "batchtopk" => new BatchTopKActivation(8),
            "jumprelu" => new JumpReluActivation(),
            _ => new ReluActivation(),
        };
        var sae = SpliceFixtures.Random(SaeShape.Sae(D, 96), activation, seed: 6);
        sae.P.Threshold[0] = 0.01f;
        Array.Fill(sae.P.LogThreshold, MathF.Log(0.01f));
        var expected = model.Run(tokens, new RunOptions().AddHook(Resid, (x, _) => Reconstruct(sae, x, x))).Logits;
        var spliced = model.Run(tokens, new RunOptions().AddSplice(SaeSplice.ForModel(model, sae, Resid))).Logits;
        Assert.Equal(expected.Span.ToArray(), spliced.Span.ToArray());
    }

    [Theory]
    [MemberData(nameof(TranscoderOrNot))]
    public void TranscoderReplacesTheMlpOutputWithItsReconstructionOfTheMlpInput(bool skip)
    {
        using var model = Model();
        var tokens = Tokens();
        var tc = Transcoder(skip);
        Tensor? captured = null;
        var manual = new RunOptions()
            .AddHook(MlpIn, (x, _) => { captured = x; return null; })
            .AddHook(MlpOut, (y, _) => Reconstruct(tc, captured!, y));
        var expected = model.Run(tokens, manual).Logits;
        var splice = SaeSplice.ForModel(model, tc, MlpIn, new SaeSpliceOptions { OutputHook = MlpOut });
        Assert.True(splice.IsTranscoder);
        var run = model.RunWithCache(tokens, $"{MlpOut}.hook_sae_acts_post", new RunOptions().AddSplice(splice));
        Assert.Equal(expected.Span.ToArray(), run.Logits.Span.ToArray());
        Assert.Equal([2, 10, 80], run.Cache[HookNames.SaeActsPost(MlpOut)].Shape.ToArray());
    }

    [Fact]
    public void AnSaeOnTransformerLensHookMlpInReplacesTheMlpsInputOnly()
    {
        // SAELens splices an SAE on blocks.L.hook_mlp_in into the MLP branch; the skip path keeps resid_mid.
        using var model = Model();
        var tokens = Tokens();
        var sae = Sae(seed: 4);
        string hook = HookNames.HookMlpIn(1), mid = HookNames.ResidMid(1);
        var expected = model.Run(tokens, new RunOptions().AddHook(hook, (x, _) => Reconstruct(sae, x, x))).Logits;
        var run = model.RunWithCache(tokens, $"{mid},{HookNames.MlpOut(1)},{HookNames.ResidPost(1)}", new RunOptions().AddSplice(SaeSplice.ForModel(model, sae, hook)));
        Assert.Equal(expected.Span.ToArray(), run.Logits.Span.ToArray());
        var atMid = model.Run(tokens, new RunOptions().AddHook(mid, (x, _) => Reconstruct(sae, x, x))).Logits;
        Assert.NotEqual(atMid.Span.ToArray(), run.Logits.Span.ToArray());
        var post = run.Cache[HookNames.ResidPost(1)].Span;
        var residMid = run.Cache[mid].Span;
        var mlpOut = run.Cache[HookNames.MlpOut(1)].Span;
        for (int i = 0; i < post.Length; i++) Assert.True(MathF.Abs(residMid[i] + mlpOut[i] - post[i]) <= 1e-5f * (1 + MathF.Abs(post[i])), $"resid_post[{i}] is not resid_mid + mlp_out");
    }

    public static TheoryData<string, float> Edits => new() { { "ablate", 0f }, { "steer", 3f } };

    /// <summary>
    /// Setting feature f to c at hook_sae_acts_post, with the error term, is the same as adding
    /// (c − a_f)·W_dec[f] at the hook point — computed here without the splice.
    /// </summary>
    [Theory]
    [MemberData(nameof(Edits))]
    public void EditingAFeatureMovesTheHookAlongItsDecoderDirection(string edit, float value)
    {
        using var model = Model();
        var tokens = Tokens();
        var sae = Sae();
        var clean = model.RunWithCache(tokens, Resid).Cache[Resid];
        var acts = sae.Encode(clean.Span, 20);
        // The feature active at the most positions.
        int f = Enumerable.Range(0, 96).MaxBy(i => Enumerable.Range(0, 20).Count(r => acts[r * 96 + i] > 0));
        Assert.True(Enumerable.Range(0, 20).Count(r => acts[r * 96 + f] > 0) >= 5);

        var splice = SaeSplice.ForModel(model, sae, Resid, new SaeSpliceOptions { UseErrorTerm = true });
        var viaFeature = model.Run(tokens, new RunOptions().AddSplice(splice).AddHook(splice.ActsPostHook, (a, _) =>
        {
            for (int r = 0; r < 20; r++) a.Span[r * 96 + f] = value;
            return a;
        })).Logits;
        var viaDirection = model.Run(tokens, new RunOptions().AddHook(Resid, (x, _) =>
        {
            var y = x.Clone();
            for (int r = 0; r < 20; r++)
                for (int j = 0; j < D; j++) y.Span[r * D + j] += (value - acts[r * 96 + f]) * sae.P.WDec[f * D + j];
            return y;
        })).Logits;
        float diff = MaxAbsDifference(viaFeature, viaDirection);
        output.WriteLine($"{edit} feature {f}: max |Δ logits| = {diff:E2}; change from clean {MaxAbsDifference(viaFeature, model.Run(tokens).Logits):E2}");
        Assert.True(diff <= 1e-4f, $"{edit}: logits differ by {diff}");
    }

    /// <summary>d metric / d acts_post = d metric / d (hook output) · W_decᵀ; with the error term the output gradient is the clean model's.</summary>
    [Fact]
    public void FeatureGradientIsTheHookGradientThroughTheDecoder()
    {
        using var model = Model();
        var tokens = Tokens();
        var sae = Sae();
        var metric = new LogProb(17);
        var clean = model.RunWithGradients(tokens, metric, Resid);
        var g = clean.Gradients[Resid];                     // [2, 10, 64]
        var splice = SaeSplice.ForModel(model, sae, Resid, new SaeSpliceOptions { UseErrorTerm = true });
        var spliced = model.RunWithGradients(tokens, metric, "*.hook_sae_acts_post,*.hook_sae_error", new RunOptions().AddSplice(splice));
        Assert.Equal(clean.Metric, spliced.Metric, 1e-5);
        var expected = new float[20 * 96];
        for (int r = 0; r < 20; r++)
            for (int i = 0; i < 96; i++)
            {
                double s = 0;
                for (int j = 0; j < D; j++) s += (double)g.Span[r * D + j] * sae.P.WDec[i * D + j];
                expected[r * 96 + i] = (float)s;
            }
        var actual = spliced.Gradients[splice.ActsPostHook];
        Assert.Equal([2, 10, 96], actual.Shape.ToArray());
        float scale = expected.Max(MathF.Abs);
        Assert.True(MaxAbsDifference(Tensor.FromArray(expected, 2, 10, 96), actual) <= 1e-4f * scale);
        Assert.True(MaxAbsDifference(g, spliced.Gradients[HookNames.SaeError(Resid)]) <= 1e-4f * g.Span.ToArray().Max(MathF.Abs));
    }

    public static TheoryData<string, bool> GradientCases => new()
    {
        { "sae", false }, { "sae", true }, { "skip-transcoder", false }, { "skip-transcoder", true },
    };

    /// <summary>
    /// Directional derivatives at the splice's sub-hooks (and, without the error term, upstream of it) against
    /// five-point finite differences of the spliced model. ReLU only: JumpReLU and TopK jump where a feature
    /// switches on, which finite differences straddle.
    /// </summary>
    [Theory]
    [MemberData(nameof(GradientCases))]
    public void GradientsMatchFiniteDifferences(string kind, bool errorTerm)
    {
        using var model = Model();
        var tokens = Tokens(rows: 1, length: 8);
        var splice = kind switch
        {
            "sae" => SaeSplice.ForModel(model, Sae(), Resid, new SaeSpliceOptions { UseErrorTerm = errorTerm }),
            _ => SaeSplice.ForModel(model, Transcoder(skip: true), MlpIn, new SaeSpliceOptions { UseErrorTerm = errorTerm, OutputHook = MlpOut }),
        };
        string o = splice.OutputHook;
        // With the error term, d input only reaches upstream through the dictionary (SAELens detaches the error),
        // which finite differences of the full model do not see; the sub-hooks are exact either way.
        var hooks = new List<string> { HookNames.SaeActsPost(o), HookNames.SaeActsPre(o), HookNames.SaeInput(o) };
        if (!errorTerm) hooks.Add(HookNames.ResidPre(0));
        var metric = new LogProb(17);
        var set = hooks.ToHashSet();
        var result = model.RunWithGradients(tokens, metric, string.Join(",", hooks), new RunOptions { CacheFilter = set.Contains }.AddSplice(splice));
        foreach (var hook in hooks)
        {
            var activation = result.Activations[hook];
            var gradient = result.Gradients[hook];
            var random = new Random(hook.Length);
            var direction = Enumerable.Range(0, activation.Length).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
            double analytic = 0;
            for (int i = 0; i < direction.Length; i++) analytic += (double)gradient.Span[i] * direction[i];
            double Perturbed(float eps) => metric.Value(model.Run(tokens, new RunOptions().AddSplice(splice).AddHook(hook, (x, _) =>
            {
                var y = x.Clone();
                for (int i = 0; i < y.Length; i++) y.Span[i] += eps * direction[i];
                return y;
            })).Logits);
            float rms = MathF.Sqrt(activation.Span.ToArray().Select(v => v * v).Average());
            float step = 5e-3f * MathF.Max(1e-2f, rms);
            double numeric = (8 * (Perturbed(step) - Perturbed(-step)) - (Perturbed(2 * step) - Perturbed(-2 * step))) / (12 * step);
            output.WriteLine($"{kind} (error term {errorTerm}) {hook}: analytic {analytic:G6}, numeric {numeric:G6}");
            Assert.True(Math.Abs(analytic - numeric) <= 2e-2 * Math.Max(1e-2, Math.Abs(numeric)) + 1e-3,
                $"{hook}: analytic {analytic:G6} vs finite difference {numeric:G6}");
        }
    }

    [Fact]
    public void ExcludedTokensKeepTheOriginalActivation()
    {
        using var model = Model();
        var tokens = Tokens();
        var sae = Sae();
        var expected = model.Run(tokens, new RunOptions().AddHook(Resid, (x, _) =>
        {
            var y = Reconstruct(sae, x, x);
            for (int r = 0; r < 20; r++)
                if (tokens.Ids[r] == Bos) x.Span.Slice(r * D, D).CopyTo(y.Span.Slice(r * D, D));
            return y;
        })).Logits;
        var splice = SaeSplice.ForModel(model, sae, Resid, new SaeSpliceOptions { ExcludeTokens = [Bos] });
        Assert.Equal(expected.Span.ToArray(), model.Run(tokens, new RunOptions().AddSplice(splice)).Logits.Span.ToArray());
    }

    [Fact]
    public void AnSaeOnHookZReadsAllHeadsOfAPosition()
    {
        using var model = Model();
        var tokens = Tokens();
        string z = HookNames.Z(1);                          // [batch, pos, 4 heads, 16]
        var sae = SpliceFixtures.Random(SaeShape.Sae(64, 48), new TopKActivation(8), seed: 4);
        var expected = model.Run(tokens, new RunOptions().AddHook(z, (x, _) => Reconstruct(sae, x, x))).Logits;
        var run = model.RunWithCache(tokens, $"{z}.hook_sae_acts_post", new RunOptions().AddSplice(SaeSplice.ForModel(model, sae, z)));
        Assert.Equal(expected.Span.ToArray(), run.Logits.Span.ToArray());
        var acts = run.Cache[HookNames.SaeActsPost(z)];
        Assert.Equal([2, 10, 48], acts.Shape.ToArray());
        for (int r = 0; r < 20; r++) Assert.Equal(8, acts.Span.Slice(r * 48, 48).ToArray().Count(a => a > 0));
    }

    [Fact]
    public void BadInputFailsWithClearMessages()
    {
        using var model = Model();
        var narrow = SpliceFixtures.Random(SaeShape.Sae(32, 64), new ReluActivation(), seed: 5);
        var width = Assert.Throws<InputError>(() => SaeSplice.ForModel(model, narrow, Resid));
        Assert.Contains(Resid, width.Message);
        Assert.Contains("d_in = 32", width.Message);
        Assert.Contains("width 64", width.Message);
        // Unchecked, the same mistake fails on the first run (and is not attached).
        Assert.Throws<InputError>(() => model.AddSplice(new SaeSplice(narrow, Resid)));
        Assert.Empty(model.Splices);

        var missing = Assert.Throws<InputError>(() => SaeSplice.ForModel(model, Sae(), "blocks.1.hook_resid_pots"));
        Assert.Contains("blocks.1.hook_resid_pots", missing.Message);
        Assert.Contains("blocks.1.hook_resid_post", missing.Message);
        var missingOut = Assert.Throws<InputError>(() => SaeSplice.ForModel(model, Transcoder(false), MlpIn, new SaeSpliceOptions { OutputHook = "blocks.1.hook_mlp_ou" }));
        Assert.Contains("blocks.1.hook_mlp_out", missingOut.Message);
    }

    [Fact]
    public void LoadTakesTheHookFromCfgAndFindsATranscodersOutputHook()
    {
        using var model = Model();
        string dir = Directory.CreateTempSubdirectory("loupe-splice-").FullName;
        try
        {
            string saeDir = Path.Combine(dir, "sae"), tcDir = Path.Combine(dir, "tc"), badDir = Path.Combine(dir, "bad");
            SaeLensFormat.Save(saeDir, Sae(), new SaeLensConfig { HookName = Resid });
            var (splice, cfg) = SaeSplice.Load(model, saeDir);
            Assert.Equal(Resid, splice.InputHook);
            Assert.Equal(Resid, splice.OutputHook);
            Assert.Equal(Resid, cfg.HookName);
            Assert.Equal(HookNames.ResidPost(2), SaeSplice.Load(model, saeDir, HookNames.ResidPost(2)).Splice.InputHook);

            // A skip-transcoder reading ln2.hook_normalized replaces that block's hook_mlp_out.
            SaeLensFormat.Save(tcDir, Transcoder(skip: true), new SaeLensConfig { HookName = MlpIn });
            var (tc, _) = SaeSplice.Load(model, tcDir);
            Assert.Equal(MlpOut, tc.OutputHook);

            // cfg.json's hook_name_out wins.
            string cfgPath = Path.Combine(tcDir, SaeLensFormat.ConfigFile);
            var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
            json["hook_name_out"] = HookNames.ResidPost(1);
            File.WriteAllText(cfgPath, json.ToJsonString());
            Assert.Equal(HookNames.ResidPost(1), SaeSplice.Load(model, tcDir).Splice.OutputHook);
            // … and one that comes before the input cannot be reached in time.
            json["hook_name_out"] = HookNames.ResidMid(1);
            File.WriteAllText(cfgPath, json.ToJsonString());
            Assert.Throws<InvalidOperationException>(() => SaeSplice.Load(model, tcDir));

            // A skip-transcoder on the residual stream with no output hook anywhere cannot be placed.
            SaeLensFormat.Save(badDir, Transcoder(skip: true), new SaeLensConfig { HookName = Resid });
            var error = Assert.Throws<InputError>(() => SaeSplice.Load(model, badDir));
            Assert.Contains("--hook-out", error.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
