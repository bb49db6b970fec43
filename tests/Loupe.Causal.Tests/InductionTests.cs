using Loupe.Causal.Metrics;
using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Causal.Tests;

/// <summary>
/// The induction circuit of models/induction-attn-only-2l (README: layer 0 head 2 is a
/// previous-token head; layer 1 heads 1, 2, 3 are induction heads), recovered by intervening.
/// Inputs: <see cref="TestInputs.InductionPair"/> (the corrupt rows change the first occurrence
/// of the repeated span). Metric: the mean log-probability of the clean repeated tokens,
/// predicted at positions 48–62.
/// </summary>
public class InductionTests(ITestOutputHelper output)
{
    const string ModelPath = "models/induction-attn-only-2l";
    static readonly PatchCell[] Circuit = [new(0, 2, -1), new(1, 1, -1), new(1, 2, -1), new(1, 3, -1)];

    static HookedTransformer Load() => ModelLoader.LoadFolder(SharedData.Require(ModelPath));

    [RequiresSharedFact(ModelPath)]
    public void HeadOutputPatchingFindsThePreviousTokenAndInductionHeads()
    {
        using var model = Load();
        var (clean, corrupt) = TestInputs.InductionPair(sequences: 8, seed: 7);
        var metric = new TargetLogProb(clean, 48, 63);
        // Noising (corrupt activations into the clean run) asks which heads the clean behaviour needs:
        // the effect of a head is 1 − normalized, the share of the clean→corrupt drop it causes alone.
        var noising = ActivationPatching.HeadOut(model, clean, corrupt, metric, new PatchOptions { Noising = true });
        var denoising = ActivationPatching.HeadOut(model, clean, corrupt, metric);
        output.WriteLine($"metric {metric.Name} summed over 8 sequences: clean {noising.CleanValue:F3}, corrupt {noising.CorruptValue:F3}");
        output.WriteLine($"noising: {noising.ForwardPasses} forward passes ({noising.CellsPerPass} cells per pass), {noising.Seconds * 1000:F0} ms");
        var ranked = noising.Cells.Select((c, i) => (Cell: c, Effect: 1 - noising.Normalized[i], Denoise: denoising.Normalized[i]))
            .OrderByDescending(x => x.Effect).ToArray();
        output.WriteLine("rank  head   noising effect (1 − normalized)   denoising normalized");
        for (int i = 0; i < ranked.Length; i++) output.WriteLine($"{i + 1,4}  {ranked[i].Cell,-5}  {ranked[i].Effect,12:F3}   {ranked[i].Denoise,24:F3}");

        Assert.Equal(Circuit.OrderBy(c => c.ToString()), ranked.Take(4).Select(x => x.Cell).OrderBy(c => c.ToString()));
        double weakestInCircuit = ranked.Take(4).Min(x => x.Effect), strongestOutside = ranked.Skip(4).Max(x => x.Effect);
        Assert.True(weakestInCircuit > strongestOutside + 0.05, $"circuit {weakestInCircuit:F3} vs others {strongestOutside:F3}");
        // Denoising confirms the induction heads: each alone restores part of the clean behaviour.
        foreach (int h in new[] { 1, 2, 3 }) Assert.True(denoising.NormalizedValue(1, h) > 0.15, $"L1H{h}");
    }

    [RequiresSharedFact(ModelPath)]
    public void ByPositionSweepIsBatchedAndLocatesTheEffect()
    {
        using var model = Load();
        var (clean, corrupt) = TestInputs.InductionPair(sequences: 1, seed: 7);
        var metric = new TargetLogProb(clean, 48, 63);
        var result = ActivationPatching.HeadOutByPosition(model, clean, corrupt, metric);
        output.WriteLine($"layer × head × position: {result.Cells.Length} cells in {result.ForwardPasses} forward passes ({result.CellsPerPass} cells per pass), {result.Seconds * 1000:F0} ms");
        Assert.Equal(2 * 4 * 64, result.Cells.Length);
        Assert.Equal(2 + 2 * 4 * 64 / 64, result.ForwardPasses);
        // Induction heads act where the metric is read (48–62); nothing before the first corrupted token (16) can matter.
        foreach (int h in new[] { 1, 2, 3 })
        {
            double inside = Enumerable.Range(48, 15).Sum(p => result.NormalizedValue(1, h, p));
            output.WriteLine($"L1H{h}: Σ normalized over positions 48–62 = {inside:F3}");
            Assert.True(inside > 0.1);
        }
        foreach (var cell in result.Cells.Where(c => c.Position < 16))
            Assert.Equal(0, result.NormalizedValue(cell.Layer, cell.Head, cell.Position), 1e-6);
    }

    [RequiresSharedFact(ModelPath)]
    public void PathPatchingPreviousTokenHeadThroughInductionKeys()
    {
        using var model = Load();
        var (clean, corrupt) = TestInputs.InductionPair(sequences: 8, seed: 7);
        var metric = new TargetLogProb(clean, 48, 63);
        PathReceiver[] keys = [PathReceiver.Key(1, 1), PathReceiver.Key(1, 2), PathReceiver.Key(1, 3)];
        var result = PathPatching.SweepSenders(model, clean, corrupt, metric, keys);
        output.WriteLine($"path patching sender → keys of L1H1, L1H2, L1H3: clean {result.CleanValue:F3}, corrupt {result.CorruptValue:F3}, {result.ForwardPasses} forward passes, {result.Seconds * 1000:F0} ms");
        var effects = result.SenderSets.Select((s, i) => (Sender: s[0], Effect: result.Effect[i])).OrderByDescending(x => x.Effect).ToArray();
        foreach (var (sender, effect) in effects) output.WriteLine($"  {sender}: effect {effect:F3}");
        Assert.Equal(PathSender.AttnHead(0, 2), effects[0].Sender);
        Assert.True(effects[0].Effect > 0.5, $"L0H2 → induction keys carries {effects[0].Effect:F3} of the effect");
        Assert.True(effects[0].Effect > 3 * Math.Max(0.02, effects[1].Effect), $"next sender {effects[1].Sender} has {effects[1].Effect:F3}");
        // A layer-1 head cannot reach layer 1's keys.
        foreach (int h in Enumerable.Range(0, 4)) Assert.Equal(0, result.EffectOf(PathSender.AttnHead(1, h)), 1e-6);
        Assert.Equal(2 + 2, result.ForwardPasses); // 8 senders × 8 rows = 64 rows: one pass each for steps 2 and 3

        // The same path through the queries or values of the induction heads matters much less.
        var queries = PathPatching.Run(model, clean, corrupt, metric, [[PathSender.AttnHead(0, 2)]], [PathReceiver.Query(1, 1), PathReceiver.Query(1, 2), PathReceiver.Query(1, 3)]);
        var values = PathPatching.Run(model, clean, corrupt, metric, [[PathSender.AttnHead(0, 2)]], [PathReceiver.Value(1, 1), PathReceiver.Value(1, 2), PathReceiver.Value(1, 3)]);
        output.WriteLine($"  L0H2 → induction queries: effect {queries.Effect[0]:F3}; → values: {values.Effect[0]:F3}");
        Assert.True(effects[0].Effect > queries.Effect[0] && effects[0].Effect > values.Effect[0]);
    }

    [RequiresSharedFact(ModelPath)]
    public void PathToTheLogitsFromTheLastLayerIsActivationPatching()
    {
        // With no later layer, the direct path of a layer-1 head is all of its effect.
        using var model = Load();
        var (clean, corrupt) = TestInputs.InductionPair(sequences: 2, seed: 3);
        var metric = new TargetLogProb(clean, 48, 63);
        var path = PathPatching.SweepSenders(model, clean, corrupt, metric, [PathReceiver.FinalResidual]);
        var activation = ActivationPatching.HeadOut(model, clean, corrupt, metric, new PatchOptions { Noising = true });
        for (int h = 0; h < 4; h++)
            Assert.Equal(activation.NormalizedValue(1, h), 1 - path.EffectOf(PathSender.AttnHead(1, h)), 1e-4);
        // A layer-0 head's direct path leaves out what it does through layer 1.
        output.WriteLine($"L0H2: direct path effect {path.EffectOf(PathSender.AttnHead(0, 2)):F3}, total effect {1 - activation.NormalizedValue(0, 2):F3}");
        Assert.True(path.EffectOf(PathSender.AttnHead(0, 2)) < 1 - activation.NormalizedValue(0, 2));
    }

    [Fact]
    public void PathPatchingRejectsBadSendersAndReceivers()
    {
        using var model = TestInputs.Fixture("gpt2");
        var (clean, corrupt) = TestInputs.FixturePair(1);
        var metric = new Loupe.Models.Metrics.LogitDiff(17, 42);
        Assert.Contains("layer 3", Assert.Throws<InputError>(() =>
            PathPatching.SweepSenders(model, clean, corrupt, metric, [PathReceiver.Key(3, 0)])).Message);
        Assert.Contains("head 4", Assert.Throws<InputError>(() =>
            PathPatching.SweepSenders(model, clean, corrupt, metric, [PathReceiver.Key(1, 4)])).Message);
        var e = Assert.Throws<InputError>(() => PathPatching.Run(model, clean, corrupt, metric, [[PathSender.AttnHead(0, 9)]], [PathReceiver.FinalResidual]));
        Assert.Contains("sender", e.Message);
        Assert.Contains("L0H9", e.Message);
        Assert.Throws<InputError>(() => PathPatching.Run(model, clean, corrupt, metric, [[PathSender.Mlp(0)]], [PathReceiver.FinalResidual, PathReceiver.Key(1, 0)]));
        Assert.Contains("[1, 3]", Assert.Throws<InputError>(() =>
            PathPatching.SweepSenders(model, clean, TokenBatch.Single(1, 2, 3), metric, [PathReceiver.FinalResidual])).Message);
        // The last MLP's only path is the direct one, so path patching it to the logits is noising it.
        var mlp = PathPatching.Run(model, clean, corrupt, metric, [[PathSender.Mlp(2)]], [PathReceiver.FinalResidual], new PathPatchOptions { FreezeMlps = true });
        var whole = ActivationPatching.Sweep(model, clean, corrupt, metric, PatchTarget.MlpOut with { PositionAxis = null }, new PatchOptions { Noising = true });
        Assert.Equal(whole.Value(2), mlp.Values[0], 1e-4);
    }
}
