using Loupe.Causal.Lens;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Causal.Tests;

/// <summary>
/// Residual decomposition, DLA and the logit lens, checked against the Hugging Face reference
/// tensors (tests/data/reference/{arch}/reference.safetensors), not against Loupe's own forward.
/// </summary>
public class LensTests(ITestOutputHelper output)
{
    const int Answer = 17, Wrong = 42; // the fixtures' metric tokens

    static SafeTensorsFile Reference(string arch) => SafeTensorsFile.Open(SharedData.TestData(Path.Combine("reference", arch, "reference.safetensors")));

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("gemma2")]
    public void ComponentsSumToTheFinalResidualStream(string arch)
    {
        using var model = TestInputs.Fixture(arch);
        using var reference = Reference(arch);
        var finalResid = reference.GetFloat32("final_norm_in").Span; // [2, 12, 64], HF's input of the final norm
        var tokens = TokenBatch.FromRows(TestInputs.ReferenceIds);
        var hooks = ResidualDecomposition.Hooks(model);
        var cache = model.Run(tokens, new Loupe.Models.Hooks.RunOptions { CacheFilter = hooks.Contains }).Cache;
        double worst = 0;
        for (int b = 0; b < 2; b++)
            for (int p = 0; p < 12; p++)
            {
                var decomposition = ResidualDecomposition.FromCache(model, cache, b, p);
                for (int d = 0; d < 64; d++)
                {
                    double sum = decomposition.Components.Sum(c => (double)c.Vector[d]);
                    worst = Math.Max(worst, Math.Abs(sum - finalResid[(b * 12 + p) * 64 + d]));
                }
                Assert.True(decomposition.MaxAbsError < 1e-4, $"{arch} row {b} pos {p}: Σ components − resid_post = {decomposition.MaxAbsError}");
            }
        output.WriteLine($"{arch}: max |Σ components − HF final_norm_in| = {worst:E2}");
        Assert.True(worst < 1e-4, $"{worst}");
        var names = ResidualDecomposition.FromCache(model, cache).Components.Select(c => c.Name).ToArray();
        output.WriteLine(string.Join(", ", names));
        Assert.Equal("embed", names[0]);
        Assert.Equal(arch == "gpt2", names.Contains("pos_embed"));
        Assert.Equal(arch != "gemma2", names.Contains("L0H3"));
        Assert.Equal(arch == "gemma2", names.Contains("L0 attn"));
        Assert.Contains($"L{model.Config.NLayers - 1} mlp", names);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void DlaSumsToTheLogitDifferenceLessTheBiases(string arch)
    {
        using var model = TestInputs.Fixture(arch);
        using var reference = Reference(arch);
        var logits = reference.GetFloat32("logits").Span; // [2, 12, 512]
        var tokens = TokenBatch.FromRows(TestInputs.ReferenceIds);
        foreach (int position in new[] { -1, 4 })
        {
            var dla = DirectLogitAttribution.Compute(model, tokens, LogitDirection.Difference(model, Answer, Wrong), position);
            int p = position < 0 ? 11 : position;
            for (int b = 0; b < 2; b++)
            {
                double actual = logits[(b * 12 + p) * 512 + Answer] - logits[(b * 12 + p) * 512 + Wrong];
                double explained = dla.Total[b] + dla.NormBias[b] + dla.UnembedBias[b];
                output.WriteLine($"{arch} row {b} pos {p}: HF logit diff {actual:F6}, Σ DLA {dla.Total[b]:F6} + ln_final.b·u {dla.NormBias[b]:F6} + b_U {dla.UnembedBias[b]:F6} = {explained:F6}");
                Assert.True(Math.Abs(actual - explained) < 1e-4, $"{arch} row {b}: {actual} vs {explained}");
                Assert.Equal(actual, dla.PreCapLogitDiff[b], 1e-4);
            }
        }
    }

    [Fact]
    public void GemmaDlaExplainsTheLogitsBeforeTheSoftCap()
    {
        using var model = TestInputs.Fixture("gemma2");
        using var reference = Reference("gemma2");
        var logits = reference.GetFloat32("logits").Span;
        var tokens = TokenBatch.FromRows(TestInputs.ReferenceIds);
        float cap = model.Config.FinalLogitSoftCap;
        Assert.Equal(30f, cap);
        foreach (int token in new[] { Answer, Wrong })
        {
            var dla = DirectLogitAttribution.Compute(model, tokens, LogitDirection.Token(model, token));
            for (int b = 0; b < 2; b++)
            {
                double preCap = dla.Total[b] + dla.NormBias[b] + dla.UnembedBias[b];
                Assert.Equal(preCap, dla.PreCapLogitDiff[b], 1e-4);
                Assert.Equal(logits[(b * 12 + 11) * 512 + token], cap * Math.Tanh(preCap / cap), 1e-4);
            }
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void LogitLensEndsAtTheModelsLogits(string arch)
    {
        using var model = TestInputs.Fixture(arch);
        using var reference = Reference(arch);
        var logits = reference.GetFloat32("logits").Span;
        var tokens = TokenBatch.FromRows(TestInputs.ReferenceIds);
        foreach (var scale in new[] { LensScale.Real, LensScale.Frozen })
        {
            var lens = LogitLens.Run(model, tokens, Answer, Wrong, row: 1, scale: scale);
            Assert.Equal(model.Config.NLayers + 1, lens.Stages.Length);
            var last = lens.Stages[^1];
            var row = logits.Slice((1 * 12 + 11) * 512, 512).ToArray();
            Assert.Equal(row[Answer], last.AnswerLogit, 1e-4);
            Assert.Equal(row[Answer] - row[Wrong], last.LogitDiff, 1e-4);
            Assert.Equal(row.Count(v => v > row[Answer]), last.AnswerRank);
            Assert.Equal(Array.IndexOf(row, row.Max()), last.TopToken);
            // The final stage's entropy is that of HF's distribution; its KL to itself is 0, and every KL is ≥ 0.
            double max = row.Max(), log = max + Math.Log(row.Sum(v => Math.Exp(v - max)));
            Assert.Equal(-row.Sum(v => Math.Exp(v - log) * (v - log)), last.Entropy, 1e-4);
            Assert.Equal(0, last.KlToFinal);
            Assert.All(lens.Stages, s => Assert.True(s.KlToFinal >= -1e-9 && s.Entropy >= 0, $"{s.Label}: KL {s.KlToFinal}, H {s.Entropy}"));
            foreach (var s in lens.Stages) output.WriteLine($"{arch} {scale} {s.Label}: logit {s.AnswerLogit:F3}, p {s.AnswerProb:E2}, rank {s.AnswerRank}, diff {s.LogitDiff:F3}, H {s.Entropy:F3}, KL {s.KlToFinal:F3}");
        }
        // Stage 0 with the real scale is ln_final applied to the embeddings (HF resid_pre.0), computed independently here.
        var resid0 = reference.GetFloat32("resid_pre.0").Span.Slice((1 * 12 + 11) * 64, 64).ToArray();
        var lens0 = LogitLens.Run(model, tokens, Answer, row: 1).Stages[0];
        Assert.Equal(NaiveLogit(model, resid0, Answer), lens0.AnswerLogit, 1e-3);
    }

    /// <summary>ln_final then W_U for one token, written out for LayerNorm / RMSNorm.</summary>
    static double NaiveLogit(HookedTransformer model, float[] x, int token)
    {
        var norm = model.FinalNormLayer!;
        int D = x.Length;
        double mean = norm.Kind == NormKind.LayerNorm ? x.Average(v => (double)v) : 0;
        double var = x.Sum(v => (v - mean) * (v - mean)) / D;
        var u = model.UnembedDirection(token);
        double logit = model.UnembedLayer.Bias.IsEmpty ? 0 : model.UnembedLayer.Bias.Span[token];
        for (int d = 0; d < D; d++)
        {
            double y = (x[d] - mean) / Math.Sqrt(var + norm.Eps) * (norm.Weight.Span[d] + norm.WeightOffset) + (norm.Bias.IsEmpty ? 0 : norm.Bias.Span[d]);
            logit += y * u[d];
        }
        float cap = model.Config.FinalLogitSoftCap;
        return cap > 0 ? cap * Math.Tanh(logit / cap) : logit;
    }

    [Fact]
    public void BadPositionsAndTokensAreClearErrors()
    {
        using var model = TestInputs.Fixture("gpt2");
        var tokens = TokenBatch.FromRows(TestInputs.ReferenceIds);
        Assert.Contains("position 12", Assert.Throws<InputError>(() => DirectLogitAttribution.Compute(model, tokens, LogitDirection.Token(model, 1), 12)).Message);
        Assert.Contains("wrong token", Assert.Throws<InputError>(() => LogitDirection.Difference(model, 1, 512)).Message);
        Assert.Contains("answer token", Assert.Throws<InputError>(() => LogitDirection.Token(model, -1)).Message);
        Assert.Contains("answer token 600", Assert.Throws<InputError>(() => LogitLens.Run(model, tokens, 600)).Message);
        Assert.Contains("row 2", Assert.Throws<InputError>(() => LogitLens.Run(model, tokens, 1, row: 2)).Message);
        Assert.Contains("row 5", Assert.Throws<InputError>(() => ResidualDecomposition.Compute(model, tokens, row: 5)).Message);
    }
}
