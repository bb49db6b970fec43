using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;

namespace Loupe.Causal.Tests;

public class AblationTests
{
    [Fact]
    public void ZeroAblationOfEachHeadMatchesZeroingItByHand()
    {
        using var model = TestInputs.Fixture("gpt2");
        var (tokens, _) = TestInputs.FixturePair();
        var metric = new LogitDiff(17, 42);
        var result = AblationSweep.Sweep(model, tokens, metric, PatchTarget.HeadOut, Ablation.Zero, new PatchOptions { MaxRows = 8 });
        Assert.Equal(metric.Value(model.Run(tokens).Logits), result.BaselineValue, 1e-5);
        foreach (var cell in result.Cells)
        {
            var options = new RunOptions().AddHook(HookNames.Z(cell.Layer), (z, _) =>
            {
                int H = z.Dim(2), dh = z.Dim(3);
                for (int row = 0; row < z.Dim(0) * z.Dim(1); row++) z.Span.Slice((row * H + cell.Head) * dh, dh).Clear();
                return z;
            });
            Assert.Equal(metric.Value(model.Run(tokens, options).Logits), result.Value(cell.Layer, cell.Head), 1e-4);
        }
        Assert.Equal(1 + 12 / 4, result.ForwardPasses);
        Assert.Equal(result.Values.Select(v => v - result.BaselineValue), result.Change);
    }

    [Fact]
    public void MeanAndResampleOfTheInputItselfChangeNothing()
    {
        using var model = TestInputs.Fixture("llama");
        var (tokens, other) = TestInputs.FixturePair(1);
        var metric = new LogitDiff(17, 42);
        var twice = TokenBatch.FromRows([tokens.Ids, tokens.Ids]);
        foreach (var ablation in new[] { Ablation.Mean([twice]), Ablation.Resample(twice, seed: 3) })
        {
            var result = AblationSweep.Sweep(model, tokens, metric, PatchTarget.AttnOut, ablation);
            foreach (var change in result.Change) Assert.Equal(0, change, 1e-4);
        }
        // A different input does change things, and the same seed draws the same rows.
        var three = TokenBatch.FromRows([other.Ids, tokens.Ids, other.Ids]);
        var a = AblationSweep.Sweep(model, tokens, metric, PatchTarget.MlpOut, Ablation.Resample(three, seed: 1));
        var b = AblationSweep.Sweep(model, tokens, metric, PatchTarget.MlpOut, Ablation.Resample(three, seed: 1));
        Assert.Equal(a.Values, b.Values);
        int drawn = new Random(1).Next(3);
        var single = AblationSweep.Sweep(model, tokens, metric, PatchTarget.MlpOut, Ablation.Resample(TokenBatch.Single(three.Row(drawn).ToArray())));
        for (int i = 0; i < a.Values.Length; i++) Assert.Equal(single.Values[i], a.Values[i], 1e-5);
    }

    [Fact]
    public void MeanOverPositionsAveragesRowsAndPositions()
    {
        using var model = TestInputs.Fixture("gpt2");
        var (tokens, reference) = TestInputs.FixturePair();
        var patch = Ablation.Mean([reference], perPosition: false).Patches(model, tokens, PatchTarget.ResidPre, new PatchCell(1, -1, 4)).Single();
        var cached = model.RunWithCache(reference, "blocks.1.hook_resid_pre").Cache["blocks.1.hook_resid_pre"]; // [2, 12, 64]
        for (int d = 0; d < 64; d += 7)
        {
            double expected = 0;
            for (int i = 0; i < 24; i++) expected += cached.Span[i * 64 + d];
            expected /= 24;
            Assert.Equal(expected, patch.Source.At(1, 9, d), 1e-5);
        }
        Assert.Equal(4, patch.Position);
        Assert.Equal("blocks.1.hook_resid_pre", patch.Hook);

        var e = Assert.Throws<InputError>(() => AblationSweep.Sweep(model, tokens, new LogitDiff(17, 42), PatchTarget.ResidPre,
            Ablation.Mean([TokenBatch.Single(1, 2, 3)])));
        Assert.Contains("reference activation", e.Message);
        Assert.Throws<InputError>(() => AblationSweep.Sweep(model, tokens, new LogitDiff(17, 42), PatchTarget.HeadPattern,
            Ablation.Mean([reference], perPosition: false)));
    }
}
