using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Hooks;
using Loupe.Tensors.Backends;
using Xunit.Abstractions;
using static Loupe.Dictionaries.Tests.Splice.SpliceFixtures;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// SAE and transcoder evaluation with the model on the GPU backend's kernels (emulated on the CPU): every metric equals
/// the CPU's to 1e-4 (relative), and a batch copies in only the token ids and out only sums and counts.
/// </summary>
public sealed class DeviceSaeEvalTests(EmulatedModelFixture device, ITestOutputHelper output) : IClassFixture<EmulatedModelFixture>
{
    const int D = 64;
    static readonly string Resid = HookNames.ResidPost(1);

    static HarvestContexts Contexts(int count = 6, int seed = 5)
    {
        var batch = Tokens(rows: count, length: 10, seed: seed);
        return HarvestContexts.FromRows(Enumerable.Range(0, count).Select(b => batch.Row(b).ToArray()).ToArray(), "random ids");
    }

    static void Close(double expected, double actual, string what)
    {
        if (double.IsNaN(expected)) { Assert.True(double.IsNaN(actual), $"{what}: cpu NaN, device {actual}"); return; }
        Assert.True(Math.Abs(expected - actual) <= 1e-4 * Math.Abs(expected) + 1e-6, $"{what}: cpu {expected:G9}, device {actual:G9}");
    }

    static void AssertSame(SaeEvalResult cpu, SaeEvalResult gpu)
    {
        Assert.Equal(cpu.Positions, gpu.Positions);
        Assert.Equal(cpu.Predictions, gpu.Predictions);
        foreach (var (name, e, a) in new[]
        {
            ("L0", cpu.L0, gpu.L0), ("L1", cpu.L1, gpu.L1), ("MSE", cpu.Mse, gpu.Mse), ("FVU", cpu.Fvu, gpu.Fvu),
            ("explained variance", cpu.ExplainedVariance, gpu.ExplainedVariance), ("cosine", cpu.CosineSimilarity, gpu.CosineSimilarity),
            ("l2 ratio", cpu.L2Ratio, gpu.L2Ratio), ("CE clean", cpu.CeLossClean, gpu.CeLossClean), ("CE sae", cpu.CeLossWithSae, gpu.CeLossWithSae),
            ("CE zero", cpu.CeLossZeroAblated, gpu.CeLossZeroAblated), ("loss recovered", cpu.LossRecovered, gpu.LossRecovered),
            ("KL sae", cpu.KlWithSae, gpu.KlWithSae), ("KL zero", cpu.KlZeroAblated, gpu.KlZeroAblated), ("KL score", cpu.KlScore, gpu.KlScore),
        })
            Close(e, a, name);
        Assert.Equal(cpu.DeadFeatures, gpu.DeadFeatures);
        Assert.Equal(cpu.DenseFeatures, gpu.DenseFeatures);
        Assert.Equal(cpu.FeatureDensity, gpu.FeatureDensity);
        Assert.Equal(cpu.DensityHistogram.Counts, gpu.DensityHistogram.Counts);
        Assert.Equal(cpu.Levels.Select(l => l.Width), gpu.Levels.Select(l => l.Width));
        foreach (var (c, g) in cpu.Levels.Zip(gpu.Levels))
        {
            Close(c.Mse, g.Mse, $"level {c.Width} MSE");
            Close(c.Fvu, g.Fvu, $"level {c.Width} FVU");
            Close(c.CeLoss, g.CeLoss, $"level {c.Width} CE");
        }
    }

    public static TheoryData<string, bool> Cases => new() { { "relu", true }, { "topk", false }, { "jumprelu", true }, { "skip-transcoder", true } };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Evaluation_OnTheDevice_ReportsTheCpusMetrics(string kind, bool excludeBos)
    {
        using var cpu = Model();
        var contexts = Contexts();
        var options = new SaeEvalOptions { BatchSize = 4, ExcludeTokens = excludeBos ? null : [], Levels = [10, 40], LevelLosses = true };
        string hook = Resid;
        string? outputHook = null;
        SparseDictionary Make() => kind switch
        {
            "topk" => Random(SaeShape.Sae(D, 96), new TopKActivation(10), 3),
            "jumprelu" => WithThreshold(Random(SaeShape.Sae(D, 96), new JumpReluActivation(), 4)),
            "skip-transcoder" => Random(SaeShape.Transcoder(D, 80, D, skip: true), new ReluActivation(), 2),
            _ => Random(SaeShape.Sae(D, 96), new ReluActivation(), 1),
        };
        if (kind == "skip-transcoder") (hook, outputHook) = (HookNames.NormNormalized(1, "ln2"), HookNames.MlpOut(1));
        var expected = SaeEvaluator.Evaluate(cpu, Make(), hook, contexts, options, outputHook);
        var actual = SaeEvaluator.Evaluate(device.Model, Make(), hook, contexts, options, outputHook);
        output.WriteLine($"{kind}: CE sae cpu {expected.CeLossWithSae:G9} device {actual.CeLossWithSae:G9}; KL sae cpu {expected.KlWithSae:G9} device {actual.KlWithSae:G9}; FVU cpu {expected.Fvu:G9} device {actual.Fvu:G9}");
        AssertSame(expected, actual);
    }

    static SparseDictionary WithThreshold(SparseDictionary d)
    {
        Array.Fill(d.P.LogThreshold, MathF.Log(0.02f));
        return d;
    }

    [Fact]
    public void AnEvaluationBatch_CopiesInTheTokenIdsOnly_AndOutOnlySumsAndCounts()
    {
        var contexts = Contexts(count: 4);
        var sae = Random(SaeShape.Sae(D, 96), new TopKActivation(10), 3);
        var options = new SaeEvalOptions { BatchSize = 4 };
        SaeEvaluator.Evaluate(device.Model, sae, Resid, contexts, options); // compiles kernels
        var transfers = device.Backend.Transfers;
        long bytesOut = transfers.BytesToHost(TransferKind.Data);
        var before = transfers.Snapshot();
        SaeEvaluator.Evaluate(device.Model, sae, Resid, contexts, options); // one batch (and the splice's two-token check)
        var copies = transfers.Snapshot() - before;
        bytesOut = transfers.BytesToHost(TransferKind.Data) - bytesOut;
        output.WriteLine($"{copies}; {bytesOut} bytes of data out");
        Assert.Equal(0, copies.In(TransferKind.Data));
        Assert.True(copies.In(TransferKind.Inputs) > 0, "the token ids go in");
        // the dictionary's weights go up once per evaluation (a splice per evaluation), never per batch
        Assert.True(copies.In(TransferKind.Weights) <= 6, $"weights: {copies}");
        // one vector per batch: [d_sae] counts, [d_out] Σ x, [d_out] Σ x², never logits or activations
        Assert.Equal(1, copies.Out(TransferKind.Data));
        Assert.Equal((96 + 2 * D) * sizeof(float), bytesOut);
        Assert.True(copies.Out(TransferKind.Scalars) <= 24, $"scalars: {copies}");
    }
}
