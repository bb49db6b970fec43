using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Metrics;
using Loupe.Testing;
using Loupe.Tensors;
using Xunit.Abstractions;
using Loupe.Dictionaries.Tests.Splice;
using static Loupe.Dictionaries.Tests.Splice.SpliceFixtures;

namespace Loupe.Dictionaries.Tests.Evaluation;

/// <summary>
/// Evaluation metrics against independent computations: cross-entropy from logits of runs with plain
/// hooks (log-softmax from Loupe.Models.Metrics), variance and sparsity from the dictionary's own
/// Encode/Forward on cached activations, and an exact identity SAE whose loss recovered must be 1.
/// </summary>
public class SaeEvaluatorTests(ITestOutputHelper output)
{
    const int D = 64;
    static readonly string Resid = HookNames.ResidPost(1);

    /// <summary>Six contexts of 10 tokens, each starting with BOS (ids 3..511 elsewhere).</summary>
    static HarvestContexts Contexts(int seed = 5)
    {
        var batch = Tokens(rows: 6, length: 10, seed: seed);
        return HarvestContexts.FromRows(Enumerable.Range(0, 6).Select(b => batch.Row(b).ToArray()).ToArray(), "random ids");
    }

    static TokenBatch AsBatch(HarvestContexts contexts) => TokenBatch.FromRows(contexts.Contexts.ToArray());

    /// <summary>Mean next-token cross-entropy over every position but the last, from log-softmax.</summary>
    static double CrossEntropy(Tensor logits, TokenBatch tokens)
    {
        int B = tokens.Batch, T = tokens.Length, V = logits.Dim(-1);
        double sum = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T - 1; t++)
                sum -= Logits.LogSoftmax(logits.Span.Slice((b * T + t) * V, V))[tokens.Ids[b * T + t + 1]];
        return sum / (B * (T - 1));
    }

    [Fact]
    public void AnExactIdentitySaeRecoversAllOfTheLoss()
    {
        using var model = Model();
        var contexts = Contexts();
        var sae = Identity(D);
        var result = SaeEvaluator.Evaluate(model, sae, Resid, contexts, new SaeEvalOptions { BatchSize = 4 });
        output.WriteLine($"CE clean {result.CeLossClean:F6}, sae {result.CeLossWithSae:F6}, zero {result.CeLossZeroAblated:F6}");

        Assert.Equal(result.CeLossClean, result.CeLossWithSae);
        Assert.Equal(1.0, result.LossRecovered);
        Assert.Equal(0.0, result.KlWithSae, 1e-12);
        Assert.Equal(1.0, result.KlScore, 1e-12);
        // Zeroing a llama residual stream zeroes everything after it (RMSNorm of 0 is 0, no biases): uniform logits.
        Assert.Equal(Math.Log(512), result.CeLossZeroAblated, 1e-5);
        Assert.Equal(0.0, result.Fvu);
        Assert.Equal(1.0, result.ExplainedVariance);
        Assert.Equal(0.0, result.Mse);
        Assert.Equal(1.0, result.CosineSimilarity, 1e-12);
        Assert.Equal(1.0, result.L2Ratio, 1e-12);

        // Independent: feature j fires where x_j > 0, feature d + j where x_j < 0 (BOS positions left out).
        var tokens = AsBatch(contexts);
        var x = model.RunWithCache(tokens, Resid).Cache[Resid];
        var fires = new long[2 * D];
        long positions = 0, nonzero = 0;
        for (int r = 0; r < tokens.Ids.Length; r++)
        {
            if (tokens.Ids[r] == Bos) continue;
            positions++;
            for (int j = 0; j < D; j++)
            {
                float v = x.Span[r * D + j];
                if (v > 0) fires[j]++;
                if (v < 0) fires[D + j]++;
                if (v != 0) nonzero++;
            }
        }
        Assert.Equal(54, result.Positions);
        Assert.Equal(positions, result.Positions);
        Assert.Equal(54, result.Predictions);
        Assert.Equal((double)nonzero / positions, result.L0, 1e-12);
        Assert.Equal(fires.Select(f => (double)f / positions).ToArray(), result.FeatureDensity);
        Assert.Equal(fires.Count(f => f == 0), result.DeadFeatures);
        Assert.Equal(fires.Count(f => (double)f / positions > 0.1), result.DenseFeatures);
        Assert.Equal([Bos, 2], result.ExcludedTokens);
    }

    public static TheoryData<bool> TranscoderOrNot => new() { false, true };

    [Theory]
    [MemberData(nameof(TranscoderOrNot))]
    public void MetricsMatchIndependentComputations(bool transcoder)
    {
        using var model = Model();
        var contexts = Contexts(seed: 9);
        var tokens = AsBatch(contexts);
        string input = transcoder ? HookNames.NormNormalized(1, "ln2") : Resid, target = transcoder ? HookNames.MlpOut(1) : Resid;
        var dict = transcoder
            ? SpliceFixtures.Random(SaeShape.Transcoder(D, 80, D), new ReluActivation(), seed: 3)
            : SpliceFixtures.Random(SaeShape.Sae(D, 96), new ReluActivation(), seed: 4);
        int[] levels = [10, 40];
        var result = SaeEvaluator.Evaluate(model, dict, input, contexts, new SaeEvalOptions { BatchSize = 4, Levels = levels, LevelLosses = true }, transcoder ? target : null);

        // Clean, spliced (hooks replacing the target except at BOS) and zero-ablated logits, one run each.
        var cache = model.RunWithCache(tokens, $"{input},{target}");
        var x = cache.Cache[input];
        var y = cache.Cache[target];
        int n = tokens.Ids.Length;
        var recons = dict.Forward(x.Span, n);
        var acts = dict.Encode(x.Span, n);
        // The logits with the target replaced by `values` everywhere but at BOS (as the evaluation splices it).
        Tensor ReplacedLogits(float[] values) => model.Run(tokens, new RunOptions().AddHook(target, (a, _) =>
        {
            var replaced = Tensor.FromArray((float[])values.Clone(), a.Shape.ToArray());
            for (int r = 0; r < n; r++)
                if (tokens.Ids[r] == Bos) a.Span.Slice(r * D, D).CopyTo(replaced.Span.Slice(r * D, D));
            return replaced;
        })).Logits;
        var spliced = ReplacedLogits(recons);
        var zero = model.Run(tokens, new RunOptions().AddHook(target, (a, _) => Tensor.Zeros(a.Shape.ToArray()))).Logits;
        double ceClean = CrossEntropy(cache.Logits, tokens), ceSae = CrossEntropy(spliced, tokens), ceZero = CrossEntropy(zero, tokens);
        output.WriteLine($"CE clean {ceClean:F6} / {result.CeLossClean:F6}, sae {ceSae:F6} / {result.CeLossWithSae:F6}, zero {ceZero:F6} / {result.CeLossZeroAblated:F6}; recovered {result.LossRecovered:F4}");
        Assert.Equal(ceClean, result.CeLossClean, 1e-5);
        Assert.Equal(ceSae, result.CeLossWithSae, 1e-5);
        Assert.Equal(ceZero, result.CeLossZeroAblated, 1e-5);
        Assert.Equal((ceZero - ceSae) / (ceZero - ceClean), result.LossRecovered, 1e-4);

        // Activation metrics over non-BOS positions.
        var rows = Enumerable.Range(0, n).Where(r => tokens.Ids[r] != Bos).ToArray();
        int dSae = dict.Shape.DSae;
        double l0 = rows.Average(r => Enumerable.Range(0, dSae).Count(f => acts[r * dSae + f] > 0));
        var mean = Enumerable.Range(0, D).Select(j => rows.Average(r => (double)y.Span[r * D + j])).ToArray();
        double residual = rows.Sum(r => Enumerable.Range(0, D).Sum(j => Math.Pow(y.Span[r * D + j] - recons[r * D + j], 2)));
        double total = rows.Sum(r => Enumerable.Range(0, D).Sum(j => Math.Pow(y.Span[r * D + j] - mean[j], 2)));
        double cos = rows.Average(r =>
        {
            double dot = 0, yy = 0, rr = 0;
            for (int j = 0; j < D; j++) { dot += y.Span[r * D + j] * recons[r * D + j]; yy += Math.Pow(y.Span[r * D + j], 2); rr += Math.Pow(recons[r * D + j], 2); }
            return dot / Math.Sqrt(yy * rr);
        });
        var density = Enumerable.Range(0, dSae).Select(f => rows.Count(r => acts[r * dSae + f] > 0) / (double)rows.Length).ToArray();
        Assert.Equal(l0, result.L0, 1e-10);
        Assert.Equal(residual / total, result.Fvu, 1e-5);
        Assert.Equal(residual / rows.Length, result.Mse, 1e-4);
        Assert.Equal(cos, result.CosineSimilarity, 1e-5);
        Assert.Equal(density, result.FeatureDensity);
        Assert.Equal(density.Count(d => d == 0), result.DeadFeatures);
        Assert.Equal(density.Count(d => d > 0.1), result.DenseFeatures);
        Assert.Equal(dSae, result.DensityHistogram.Counts.Sum());

        // each level's reconstruction from its latents alone: b_dec + acts[:, :w]·W_dec[:w], in double
        Assert.Equal(levels, result.Levels.Select(l => l.Width));
        foreach (var level in result.Levels)
        {
            double levelResidual = rows.Sum(r => Enumerable.Range(0, D).Sum(j =>
            {
                double recon = dict.P.BDec[j];
                for (int f = 0; f < level.Width; f++) recon += (double)acts[r * dSae + f] * dict.P.WDec[f * D + j];
                return Math.Pow(y.Span[r * D + j] - recon, 2);
            }));
            Assert.True(Math.Abs(levelResidual - residual) > 1e-3 * residual, $"the first {level.Width} latents alone reconstruct otherwise than all {dSae}");
            Assert.Equal(levelResidual / rows.Length, level.Mse, 1e-4 * level.Mse);
            Assert.Equal(levelResidual / total, level.Fvu, 1e-5);
            Assert.Equal(1 - levelResidual / total, level.ExplainedVariance, 1e-5);

            // its CE: the target replaced by b_dec + acts[:, :w]·W_dec[:w] (except at BOS), a plain hook
            var prefix = new float[n * D];
            for (int r = 0; r < n; r++)
                for (int j = 0; j < D; j++)
                {
                    double v = dict.P.BDec[j];
                    for (int f = 0; f < level.Width; f++) v += (double)acts[r * dSae + f] * dict.P.WDec[f * D + j];
                    prefix[r * D + j] = (float)v;
                }
            double ceLevel = CrossEntropy(ReplacedLogits(prefix), tokens);
            Assert.Equal(ceLevel, level.CeLoss, 1e-5);
            Assert.Equal((ceZero - ceLevel) / (ceZero - ceClean), level.LossRecovered, 1e-4);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => SaeEvaluator.Evaluate(model, dict, input, contexts, new SaeEvalOptions { Levels = [40, 10] }, transcoder ? target : null));
        Assert.Throws<ArgumentOutOfRangeException>(() => SaeEvaluator.Evaluate(model, dict, input, contexts, new SaeEvalOptions { Levels = [dSae] }, transcoder ? target : null));
    }

    [Fact]
    public void TheDensityHistogramBinsLog10Densities()
    {
        var histogram = SaeEvaluator.Histogram([0, 1e-3, 1e-3, 0.05, 1], 0.5);
        Assert.Equal(21, histogram.Log10Edges.Length);
        Assert.Equal(-10, histogram.Log10Edges[0]);
        Assert.Equal(0, histogram.Log10Edges[^1]);
        Assert.Equal(1, histogram.Counts[0]);                 // dead: log10(1e-10) = −10
        Assert.Equal(2, histogram.Counts[14]);                // −3 ∈ [−3, −2.5)
        Assert.Equal(1, histogram.Counts[17]);                // log10 0.05 = −1.30 ∈ [−1.5, −1)
        Assert.Equal(1, histogram.Counts[19]);                // density 1 lands in the last bin
        Assert.Equal(5, histogram.Counts.Sum());
    }

    [Fact]
    public void BadInputFailsClearly()
    {
        using var model = Model();
        var contexts = Contexts();
        Assert.Throws<ArgumentOutOfRangeException>(() => SaeEvaluator.Evaluate(model, Identity(D), Resid, contexts, new SaeEvalOptions { BatchSize = 0 }));
        var width = Assert.Throws<InputError>(() => SaeEvaluator.Evaluate(model, Identity(32), Resid, contexts));
        Assert.Contains("d_in = 32", width.Message);
        var hook = Assert.Throws<InputError>(() => SaeEvaluator.Evaluate(model, Identity(D), "blocks.7.hook_resid_post", contexts));
        Assert.Contains("blocks.7.hook_resid_post", hook.Message);
        var bosOnly = HarvestContexts.FromRows([[Bos, Bos], [Bos, Bos]], "bos");
        Assert.Throws<InputError>(() => SaeEvaluator.Evaluate(model, Identity(D), Resid, bosOnly));
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void Stories260KOnBrownText()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var contexts = ContextBuilder.ForModel(model, new BrownCorpusSource(SharedData.Require("datasets/brown-corpus")), contextSize: 64, seed: 1, maxContexts: 8);
        string hook = HookNames.ResidPost(2);
        var identity = SaeEvaluator.Evaluate(model, Identity(model.Config.DModel), hook, contexts);
        Assert.Equal(1.0, identity.LossRecovered);
        var random = SaeEvaluator.Evaluate(model, SpliceFixtures.Random(SaeShape.Sae(model.Config.DModel, 256), new TopKActivation(16), seed: 1), hook, contexts);
        output.WriteLine($"identity: CE {identity.CeLossClean:F4}, zero-ablated {identity.CeLossZeroAblated:F4}; random TopK: CE {random.CeLossWithSae:F4}, recovered {random.LossRecovered:F3}, FVU {random.Fvu:F3}, L0 {random.L0:F1}");
        Assert.Equal(16, random.L0, 1e-6);
        Assert.True(random.LossRecovered < 1);
        Assert.True(random.CeLossZeroAblated > random.CeLossClean);
    }
}
