using Loupe.Reports;
using Loupe.Causal.Attribution;
using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Causal.Tests.Attribution;

public class AttributionPatchingTests(ITestOutputHelper output)
{
    /// <summary>
    /// A random sequence whose positions 48–63 repeat 16–31 (clean), and the same with fresh tokens at
    /// 48–63 (corrupt; <paramref name="corruptFirstOccurrence"/>: at 16–31 instead).
    /// </summary>
    static (TokenBatch Clean, TokenBatch Corrupt) InductionPair(int sequences, int seed, bool corruptFirstOccurrence = false)
    {
        var random = new Random(seed);
        var clean = new List<int[]>();
        var corrupt = new List<int[]>();
        for (int s = 0; s < sequences; s++)
        {
            var c = Enumerable.Range(0, 64).Select(_ => random.Next(128)).ToArray();
            Array.Copy(c, 16, c, 48, 16);
            var x = (int[])c.Clone();
            for (int i = corruptFirstOccurrence ? 16 : 48; i < (corruptFirstOccurrence ? 32 : 64); i++) x[i] = random.Next(128);
            clean.Add(c);
            corrupt.Add(x);
        }
        return (TokenBatch.FromRows(clean), TokenBatch.FromRows(corrupt));
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void ExactWhereTheMetricIsLinearInTheActivation()
    {
        // Attention-only, no final norm: the logits are linear in layer 1's hook_z, so the estimate is exact there.
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/induction-attn-only-2l"));
        var (clean, corrupt) = InductionPair(2, 5);
        var metric = new LogitDiff(clean.Ids[63], corrupt.Ids[63], position: 62);
        var target = PatchTarget.HeadOut with { Layers = [1] };
        var estimated = AttributionPatching.Sweep(model, clean, corrupt, metric, target);
        var measured = ActivationPatching.Sweep(model, clean, corrupt, metric, target);
        for (int i = 0; i < measured.Values.Length; i++)
            Assert.Equal(measured.Values[i], estimated.Values[i], 1e-3);
        Assert.Equal(2, estimated.ForwardPasses);
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void AgreesWithActivationPatchingOnInductionHeads()
    {
        // The issue's design: a fresh second half. Restoring any induction head's clean output helps;
        // layer 0 is shared by both runs on the first half, so the previous-token head cannot show here.
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/induction-attn-only-2l"));
        var (clean, corrupt) = InductionPair(8, 11);
        var (measured, estimated, rho) = BothSweeps(model, clean, corrupt, noising: false);
        foreach (var result in new[] { measured, estimated })
            Assert.Equal(["L1H1", "L1H2", "L1H3"], Top(result, 3));
        Assert.True(rho > 0.6, $"rank correlation {rho:F3}");
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void PreviousTokenHeadShowsWhenTheFirstOccurrenceIsCorrupted()
    {
        // Corrupting the first occurrence changes what the previous-token head writes at the keys the
        // induction heads look up; noising (corrupt values into the clean run) then ranks it with them.
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/induction-attn-only-2l"));
        var (clean, corrupt) = InductionPair(8, 11, corruptFirstOccurrence: true);
        var (measured, estimated, rho) = BothSweeps(model, clean, corrupt, noising: true);
        foreach (var result in new[] { measured, estimated })
            Assert.Equal(["L0H2", "L1H1", "L1H2", "L1H3"], Top(result, 4));
        Assert.True(rho > 0.6, $"rank correlation {rho:F3}");
    }

    (PatchingResult Measured, PatchingResult Estimated, double Rho) BothSweeps(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, bool noising)
    {
        // Loss on the clean repeated tokens 48..63, predicted from positions 47..62 (lower is better).
        var metric = new SpanLoss(clean, 47, 63);
        var measured = ActivationPatching.Sweep(model, clean, corrupt, metric, PatchTarget.HeadOut, new PatchOptions { Noising = noising });
        var estimated = AttributionPatching.Sweep(model, clean, corrupt, metric, PatchTarget.HeadOut, noising);
        double rho = RankCorrelation.Spearman(Effect(estimated), Effect(measured));
        foreach (var (cell, i) in measured.Cells.Select((c, i) => (c, i)))
            output.WriteLine($"{cell}: activation {Effect(measured)[i]:F3}, attribution {Effect(estimated)[i]:F3}");
        output.WriteLine($"{(noising ? "noising" : "denoising")}: Spearman ρ (attribution vs activation, {measured.Cells.Length} heads) = {rho:F3}; " +
                         $"activation patching used {measured.ForwardPasses} forward passes, attribution {estimated.ForwardPasses} + 1 backward");
        return (measured, estimated, rho);
    }

    /// <summary>How much a cell matters: restored fraction when denoising, destroyed fraction when noising.</summary>
    static double[] Effect(PatchingResult r) => r.Noising ? r.Normalized.Select(v => 1 - v).ToArray() : r.Normalized;

    static string[] Top(PatchingResult r, int n) =>
        r.Cells.Zip(Effect(r)).OrderByDescending(x => x.Second).Take(n).Select(x => x.First.ToString()).Order(StringComparer.Ordinal).ToArray();

    [Fact]
    public void SpearmanHandlesTiesAndPerfectOrder()
    {
        Assert.Equal(1.0, RankCorrelation.Spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1e-12);
        Assert.Equal(-1.0, RankCorrelation.Spearman([1, 2, 3, 4], [4, 3, 2, 1]), 1e-12);
        Assert.Equal(0.9486832980505138, RankCorrelation.Spearman([1, 2, 2, 3], [1, 2, 3, 4]), 1e-12);
        Assert.True(double.IsNaN(RankCorrelation.Spearman([1, 1, 1], [1, 2, 3])));
        Assert.Throws<ArgumentException>(() => RankCorrelation.Spearman([1, 2], [1]));
    }

    [Fact]
    public void MismatchedLengthsAreRejected()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var e = Assert.Throws<InputError>(() => AttributionPatching.Sweep(model, TokenBatch.Single(1, 2, 3), TokenBatch.Single(1, 2), new LogitDiff(1, 2), PatchTarget.ResidPre));
        Assert.Contains("[1, 3]", e.Message);
    }
}
