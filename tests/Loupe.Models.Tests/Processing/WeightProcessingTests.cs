using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Processing;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Models.Tests.Processing;

/// <summary>
/// TransformerLens's weight processing: log-probs (and logits up to centering) unchanged on every family
/// where an option is exact, folded weights equal to TransformerLens's on the GPT-2 fixture, and a clear
/// refusal where an option would not be exact.
/// </summary>
public class WeightProcessingTests(ITestOutputHelper output)
{
    const double Tol = 1e-4;

    /// <summary>The options that are exact per family (the rest must be refused).</summary>
    public static TheoryData<string, string> Families => new()
    {
        { "gpt2", "fold_ln,center_writing_weights,center_unembed,fold_value_biases,refactor_factored_attn_matrices" },
        { "gpt_neo", "fold_ln,center_writing_weights,center_unembed,fold_value_biases,refactor_factored_attn_matrices" },
        { "gpt_neox", "fold_ln,center_writing_weights,center_unembed,fold_value_biases" },
        { "llama", "fold_ln,center_unembed,fold_value_biases" },
        { "llama3", "fold_ln,center_unembed,fold_value_biases" },
        { "qwen2", "fold_ln,center_unembed,fold_value_biases" },
        { "qwen3", "fold_ln,center_unembed,fold_value_biases" },
        { "gemma2", "fold_value_biases" },
        { "gemma3", "center_unembed,fold_value_biases" },
    };

    [Theory]
    [MemberData(nameof(Families))]
    public void EveryExactOptionLeavesTheOutputsUnchanged(string arch, string exact)
    {
        using var plain = TestModels.Load(arch);
        var applicable = WeightProcessing.OptionNames.Where(o => WeightProcessor.WhyNotExact(plain, o) is null).ToArray();
        Assert.Equal(exact, string.Join(',', applicable));
        var processing = WeightProcessing.Parse(exact);
        using var processed = ModelLoader.LoadFolder(TestModels.Fixture(arch), processing: processing);
        Assert.Equal(exact, processed.Processing.Describe());
        using var reference = new ReferenceFixture(arch);
        var (logits, logProbs, hooks) = AssertSameOutputs(plain, processed, reference.Tokens);
        output.WriteLine($"{arch} [{exact}]: max |Δ| / max |logit|: logits {logits:G2}, log-probs {logProbs:G2}; hooks (relative to their max) {hooks:G2}");
    }

    /// <summary>Each option alone, on GPT-2 (LayerNorm) and Qwen2 (RMSNorm, GQA, q/k/v biases).</summary>
    [Theory]
    [InlineData("gpt2", "fold_ln")]
    [InlineData("gpt2", "center_writing_weights")]
    [InlineData("gpt2", "center_unembed")]
    [InlineData("gpt2", "fold_value_biases")]
    [InlineData("qwen2", "fold_ln")]
    [InlineData("qwen2", "fold_value_biases")]
    [InlineData("gpt_neox", "fold_ln,fold_value_biases")]
    public void EachOptionAloneIsExact(string arch, string options)
    {
        using var plain = TestModels.Load(arch);
        using var processed = ModelLoader.LoadFolder(TestModels.Fixture(arch), processing: WeightProcessing.Parse(options));
        using var reference = new ReferenceFixture(arch);
        AssertSameOutputs(plain, processed, reference.Tokens);
    }

    /// <summary>
    /// refactor_factored_attn_matrices (alone and after everything else): outputs, attention scores and
    /// patterns unchanged, and the factors "even": [W_Q; b_Q] and [W_K; b_K] have orthogonal columns of
    /// equal norms (√S each), W_O's rows are orthonormal, b_V is zero.
    /// </summary>
    [Theory]
    [InlineData("gpt2", "refactor_factored_attn_matrices")]
    [InlineData("gpt2", "tl,refactor_factored_attn_matrices")]
    [InlineData("gpt_neo", "tl,refactor_factored_attn_matrices")]
    public void RefactoredAttentionIsExactAndEven(string arch, string options)
    {
        using var plain = TestModels.Load(arch);
        using var processed = ModelLoader.LoadFolder(TestModels.Fixture(arch), processing: WeightProcessing.Parse(options));
        Assert.True(processed.Processing.RefactorFactoredAttn);
        using var reference = new ReferenceFixture(arch);
        var (logits, _, _) = AssertSameOutputs(plain, processed, reference.Tokens);
        string attention = string.Join(',', plain.HookPointNames.Where(n => n.EndsWith("hook_attn_scores", StringComparison.Ordinal) || n.EndsWith("hook_pattern", StringComparison.Ordinal)));
        var a = plain.RunWithCache(reference.Tokens, attention).Cache;
        var b = processed.RunWithCache(reference.Tokens, attention).Cache;
        foreach (var name in a.Names)
        {
            var x = a[name].ToCpu().Span.ToArray();
            var y = b[name].ToCpu().Span.ToArray();
            double s = x.Where(float.IsFinite).Max(v => Math.Abs((double)v));
            for (int i = 0; i < x.Length; i++)
                if (float.IsFinite(x[i])) Assert.True(Math.Abs(x[i] - y[i]) <= Tol * s, $"{name}[{i}]: {x[i]} vs {y[i]}");
        }
        var tl = TlLayout.Weights(processed);
        int D = processed.Config.DModel, H = processed.Config.NHeads, dh = processed.Config.DHead;
        double worstEven = 0;
        for (int l = 0; l < processed.Config.NLayers; l++)
            for (int h = 0; h < H; h++)
            {
                var q = Head(tl[$"blocks.{l}.attn.W_Q"].Data, tl[$"blocks.{l}.attn.b_Q"].Data, h, D, dh);
                var k = Head(tl[$"blocks.{l}.attn.W_K"].Data, tl[$"blocks.{l}.attn.b_K"].Data, h, D, dh);
                var wo = tl[$"blocks.{l}.attn.W_O"].Data;
                double norm = Enumerable.Range(0, dh).Max(j => Gram(q, q, j, j, D + 1, dh));
                for (int i = 0; i < dh; i++)
                    for (int j = 0; j < dh; j++)
                    {
                        double qq = Gram(q, q, i, j, D + 1, dh), kk = Gram(k, k, i, j, D + 1, dh);
                        worstEven = Math.Max(worstEven, Math.Abs(qq - kk) / norm);
                        if (i != j) worstEven = Math.Max(worstEven, Math.Abs(qq) / norm);
                        double oo = 0;
                        for (int d = 0; d < D; d++) oo += (double)wo[(h * dh + i) * D + d] * wo[(h * dh + j) * D + d];
                        worstEven = Math.Max(worstEven, Math.Abs(oo - (i == j ? 1 : 0)));
                    }
                Assert.All(tl[$"blocks.{l}.attn.b_V"].Data, v => Assert.Equal(0f, v));
            }
        Assert.True(worstEven < 1e-4, $"factors not even: {worstEven:G3}");
        output.WriteLine($"{arch} [{options}]: logits max |Δ| / max |logit| {logits:G2}; evenness error {worstEven:G2}");
    }

    /// <summary>[W[h]; b[h]] as a row-major [d_model + 1, d_head] matrix.</summary>
    static double[] Head(float[] w, float[] b, int h, int D, int dh)
    {
        var m = new double[(D + 1) * dh];
        for (int d = 0; d < D; d++)
            for (int j = 0; j < dh; j++) m[d * dh + j] = w[(h * D + d) * dh + j];
        for (int j = 0; j < dh; j++) m[D * dh + j] = b[h * dh + j];
        return m;
    }

    static double Gram(double[] x, double[] y, int i, int j, int rows, int cols)
    {
        double s = 0;
        for (int r = 0; r < rows; r++) s += x[r * cols + i] * y[r * cols + j];
        return s;
    }

    [Fact]
    public void FoldedNormsKeepNoWeights()
    {
        using var m = ModelLoader.LoadFolder(TestModels.Fixture("gpt2"), processing: new WeightProcessing { FoldLn = true });
        for (int l = 0; l < m.Config.NLayers; l++)
        {
            var a = m.Anatomy(l);
            foreach (var norm in new[] { a.Ln1, a.Ln2! })
                Assert.True(norm.Folded && norm.Weight.IsEmpty && norm.Bias.IsEmpty, $"block {l}: {norm.ScaleHook}");
        }
        Assert.True(m.FinalNormLayer!.Folded);
        // The value biases are untouched by fold_ln alone; the unembedding gained ln_final's bias.
        Assert.False(m.UnembedLayer.Bias.IsEmpty);
    }

    /// <summary>
    /// tests/data/reference/gpt2-processed/tl_processed.safetensors was written by tools/tl_process_reference.py,
    /// a plain-Python transcription of TransformerLens's convert_gpt2_weights + fold_layer_norm +
    /// center_writing_weights + center_unembed + fold_value_biases (not TransformerLens itself).
    /// </summary>
    [Fact]
    public void Gpt2ProcessedWeightsEqualTransformerLens()
    {
        using var m = ModelLoader.LoadFolder(TestModels.Fixture("gpt2"), processing: WeightProcessing.TransformerLensDefaults);
        double worst = AssertMatchesTransformerLens(TlLayout.Weights(m));
        output.WriteLine($"gpt2 processed weights vs the TransformerLens transcription: max relative |Δ| {worst:G2}");
    }

    /// <summary>The same weights through a TransformerLens-native checkpoint (LayerNorm, separate W_Q/W_K/W_V): the same processed weights and outputs.</summary>
    [Fact]
    public void TransformerLensCheckpointWithLayerNormProcessesLikeTransformerLens()
    {
        string folder;
        using (var gpt2 = TestModels.Load("gpt2")) folder = TlLayout.SaveAsTransformerLens(gpt2, "gelu_new");
        try
        {
            using var plain = ModelLoader.LoadFolder(folder);
            using var processed = ModelLoader.LoadFolder(folder, processing: WeightProcessing.TransformerLensDefaults);
            AssertMatchesTransformerLens(TlLayout.Weights(processed));
            using var reference = new ReferenceFixture("gpt2");
            AssertSameOutputs(plain, processed, reference.Tokens);
        }
        finally { Directory.Delete(folder, true); }
    }

    /// <summary>A TransformerLens checkpoint with RMSNorm (ln weights only): fold_ln folds the weights and centres nothing; centering the writing weights is refused.</summary>
    [Fact]
    public void TransformerLensCheckpointWithRmsNormFoldsScaleOnly()
    {
        string folder;
        using (var gpt2 = TestModels.Load("gpt2"))
            folder = TlLayout.SaveAsTransformerLens(gpt2, "gelu_new");
        try
        {
            File.WriteAllText(Path.Combine(folder, "config.json"), File.ReadAllText(Path.Combine(folder, "config.json")).Replace("\"LN\"", "\"RMS\""));
            using var plain = ModelLoader.LoadFolder(folder);
            using var processed = ModelLoader.LoadFolder(folder, processing: WeightProcessing.Parse("fold_ln,center_unembed,fold_value_biases"));
            using var reference = new ReferenceFixture("gpt2");
            AssertSameOutputs(plain, processed, reference.Tokens);
            var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(folder, processing: new WeightProcessing { CenterWritingWeights = true }));
            Assert.Contains("center_writing_weights", e.Message);
            Assert.Contains("RMSNorm", e.Message);
        }
        finally { Directory.Delete(folder, true); }
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void InductionModelWithoutNormsTakesTheOptionsThatApply()
    {
        string path = SharedData.Require("models/induction-attn-only-2l");
        using var plain = ModelLoader.LoadFolder(path);
        using var processed = ModelLoader.LoadFolder(path, processing: WeightProcessing.Parse("center_unembed,fold_value_biases,refactor_factored_attn_matrices"));
        var rng = new Random(3);
        var tokens = new TokenBatch([.. Enumerable.Range(0, 2 * 40).Select(_ => rng.Next(plain.Config.DVocab))], 2, 40);
        AssertSameOutputs(plain, processed, tokens);
        foreach (var option in new[] { "fold_ln", "center_writing_weights" })
        {
            var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(path, processing: WeightProcessing.Parse(option)));
            Assert.Contains(option, e.Message);
            Assert.Contains("induction-attn-only-2l", e.Message);
        }
    }

    [Theory]
    [InlineData("gemma2", "fold_ln", "sandwich norms")]
    [InlineData("gemma3", "fold_ln", "sandwich norms")]
    [InlineData("gemma2", "center_unembed", "soft-capped")]
    [InlineData("llama", "center_writing_weights", "RMSNorm")]
    [InlineData("qwen3", "center_writing_weights", "RMSNorm")]
    [InlineData("gemma2", "center_writing_weights", "sandwich norms")]
    [InlineData("llama", "refactor_factored_attn_matrices", "rotary")]
    public void OptionsThatAreNotExactAreRefused(string arch, string option, string reason)
    {
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(TestModels.Fixture(arch), processing: WeightProcessing.Parse(option)));
        Assert.Contains(option, e.Message);
        Assert.Contains(reason, e.Message);
        Assert.Contains(TestModels.Fixture(arch), e.Message);
    }

    [Fact]
    public void UnknownOptionNamesAreRefused()
    {
        var e = Assert.Throws<InputError>(() => WeightProcessing.Parse("fold_ln,fold_layernorm", "argument", "--process"));
        Assert.Contains("--process", e.Message);
        Assert.Contains("fold_layernorm", e.Message);
        Assert.Equal(WeightProcessing.TransformerLensDefaults, WeightProcessing.Parse("tl"));
        Assert.Equal(WeightProcessing.None, WeightProcessing.Parse("none"));
        Assert.Equal("none", WeightProcessing.None.Describe());
        Assert.Equal("fold_ln,center_unembed", WeightProcessing.Parse(" center-unembed, fold_ln ").Describe());
    }

    [Fact]
    public void DefaultLoadIsUnprocessedAndBitIdentical()
    {
        using var before = ModelLoader.LoadFolder(TestModels.Fixture("gpt2"));
        using var none = ModelLoader.LoadFolder(TestModels.Fixture("gpt2"), processing: WeightProcessing.None);
        Assert.True(before.Processing.IsNone && none.Processing.IsNone);
        Assert.False(before.Anatomy(0).Ln1.Folded);
        using var reference = new ReferenceFixture("gpt2");
        var a = before.Run(reference.Tokens).Logits.ToCpu().Span.ToArray();
        var b = none.Run(reference.Tokens).Logits.ToCpu().Span.ToArray();
        Assert.Equal(a, b);
        // And still HF's logits to 1e-4 (the reference-match tests check every hook).
        ReferenceFixture.AssertClose(reference.Get("logits"), a, 1e-4f, "logits");
    }

    // ---- helpers ----

    /// <summary>Returns the largest difference relative to its tensor's largest |value| (at least 1).</summary>
    static double AssertMatchesTransformerLens(Dictionary<string, (int[] Shape, float[] Data)> loupe)
    {
        double worstOverall = 0;
        using var tl = SafeTensorsFile.Open(Path.Combine(SharedData.TestData(Path.Combine("reference", "gpt2-processed")), "tl_processed.safetensors"));
        Assert.Equal(tl.Names.OrderBy(n => n, StringComparer.Ordinal), loupe.Keys.OrderBy(n => n, StringComparer.Ordinal));
        foreach (var name in tl.Names)
        {
            var expected = tl.GetFloat32(name).ToArray();
            var (shape, actual) = loupe[name];
            Assert.Equal(tl.GetInfo(name).Shape.Select(d => (int)d), shape);
            double scale = Math.Max(1.0, expected.Max(v => Math.Abs((double)v)));
            double worst = expected.Zip(actual, (e, a) => Math.Abs((double)e - a)).Max();
            Assert.True(worst <= 1e-5 * scale, $"{name}: max |TL − Loupe| = {worst:G3} (scale {scale:G3})");
            worstOverall = Math.Max(worstOverall, worst / scale);
        }
        return worstOverall;
    }

    /// <summary>
    /// Log-probs equal; logits equal up to the per-position shift center_unembed makes (compared after
    /// centering over the vocabulary); hook_scale of every norm equal; resid_pre equal up to the mean over
    /// d_model that center_writing_weights removes.
    /// </summary>
    /// <returns>The largest differences relative to their scales: logits, log-probs, hooks.</returns>
    internal static (double Logits, double LogProbs, double Hooks) AssertSameOutputs(HookedTransformer plain, HookedTransformer processed, TokenBatch tokens)
    {
        string hooks = string.Join(',', plain.HookPointNames.Where(n => n.EndsWith("hook_scale", StringComparison.Ordinal) || n.Contains("hook_resid_", StringComparison.Ordinal)));
        var a = plain.RunWithCache(tokens, hooks);
        var b = processed.RunWithCache(tokens, hooks);
        int V = plain.Config.VocabOut;
        var la = a.Logits.ToCpu().Span.ToArray();
        var lb = b.Logits.ToCpu().Span.ToArray();
        double scale = la.Max(v => Math.Abs((double)v));
        bool centered = processed.Processing.CenterUnembed;
        double logits = AssertClose(centered ? CenterRows(la, V) : Array.ConvertAll(la, v => (double)v), centered ? CenterRows(lb, V) : Array.ConvertAll(lb, v => (double)v), Tol * scale, "logits") / scale;
        double logProbs = AssertClose(LogSoftmax(la, V), LogSoftmax(lb, V), Tol * Math.Max(1, scale), "log-probs") / Math.Max(1, scale);
        double hookWorst = 0;
        int D = plain.Config.DModel;
        bool centeredStream = processed.Processing.CenterWritingWeights;
        foreach (var name in a.Cache.Names)
        {
            var x = a.Cache[name].ToCpu().Span.ToArray();
            var y = b.Cache[name].ToCpu().Span.ToArray();
            double s = Math.Max(1e-6, x.Max(v => Math.Abs((double)v)));
            bool stream = name.Contains("hook_resid", StringComparison.Ordinal);
            hookWorst = Math.Max(hookWorst, AssertClose(stream && centeredStream ? CenterRows(x, D) : Array.ConvertAll(x, v => (double)v), Array.ConvertAll(y, v => (double)v), Tol * s, name) / s);
        }
        Assert.Equal(a.Cache.Names, b.Cache.Names);
        return (logits, logProbs, hookWorst);
    }

    static double AssertClose(double[] expected, double[] actual, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double worst = 0;
        int at = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs(expected[i] - actual[i]);
            if (double.IsNaN(d) || d > worst) { worst = double.IsNaN(d) ? double.PositiveInfinity : d; at = i; }
        }
        Assert.True(worst <= tol, $"{what}: max |difference| {worst:G3} at {at}; tolerance {tol:G3}");
        return worst;
    }

    static double[] CenterRows(float[] x, int width)
    {
        var y = new double[x.Length];
        for (int r = 0; r < x.Length / width; r++)
        {
            double mean = 0;
            for (int i = 0; i < width; i++) mean += x[r * width + i];
            mean /= width;
            for (int i = 0; i < width; i++) y[r * width + i] = x[r * width + i] - mean;
        }
        return y;
    }

    static double[] LogSoftmax(float[] x, int width)
    {
        var y = new double[x.Length];
        for (int r = 0; r < x.Length / width; r++)
        {
            double max = double.NegativeInfinity;
            for (int i = 0; i < width; i++) max = Math.Max(max, x[r * width + i]);
            double sum = 0;
            for (int i = 0; i < width; i++) sum += Math.Exp(x[r * width + i] - max);
            double log = max + Math.Log(sum);
            for (int i = 0; i < width; i++) y[r * width + i] = x[r * width + i] - log;
        }
        return y;
    }
}
