using Loupe.Causal.Attribution;
using Loupe.Causal.Patching;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Splice;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using static Loupe.Dictionaries.Tests.Splice.SpliceFixtures;

namespace Loupe.Dictionaries.Tests.Splice;

/// <summary>Loupe.Causal's patching sweeps over feature activations of an SAE attached to the model.</summary>
public class SplicePatchingTests
{
    const int D = 64, F = 96, Layer = 1;
    static readonly string Resid = HookNames.ResidPost(Layer);
    static readonly PatchTarget Features = PatchTarget.Custom("blocks.{layer}.hook_resid_post.hook_sae_acts_post", positionAxis: 1) with { Layers = [Layer] };

    static (TokenBatch Clean, TokenBatch Corrupt) Pair()
    {
        var clean = Tokens(rows: 2, length: 8);
        var ids = (int[])clean.Ids.Clone();
        ids[3] = 300; ids[8 + 3] = 12; ids[6] = 99;
        return (clean, new TokenBatch(ids, 2, 8));
    }

    [Fact]
    public void ActivationPatchingSweepsFeaturePositions()
    {
        using var model = Model();
        var sae = SpliceFixtures.Random(SaeShape.Sae(D, F), new ReluActivation(), seed: 1);
        var (clean, corrupt) = Pair();
        var metric = new LogitDiff(17, 42);
        var cleanActs = sae.Encode(model.RunWithCache(clean, Resid).Cache[Resid].Span, 16);
        var splice = SaeSplice.ForModel(model, sae, Resid, new SaeSpliceOptions { UseErrorTerm = true });
        using var attached = model.AddSplice(splice);

        var result = ActivationPatching.Sweep(model, clean, corrupt, metric, Features);
        Assert.Equal(8, result.Values.Length);
        // Independent: copy the clean features at position p into the corrupt run with a plain hook.
        for (int p = 0; p < 8; p++)
        {
            int position = p;
            var options = new RunOptions().AddHook(splice.ActsPostHook, (a, _) =>
            {
                for (int b = 0; b < 2; b++) cleanActs.AsSpan((b * 8 + position) * F, F).CopyTo(a.Span.Slice((b * 8 + position) * F, F));
                return a;
            });
            // Batched sweeps run k·B rows at once: float rounding differs from a single run in the 7th digit.
            double expected = metric.Value(model.Run(corrupt, options).Logits);
            Assert.True(Math.Abs(expected - result.Values[p]) <= 1e-5 * Math.Max(1, Math.Abs(expected)), $"position {p}: {result.Values[p]} vs {expected}");
        }
        // Positions before the first corrupted token hold the same features in both runs.
        Assert.True(Math.Abs(result.CorruptValue - result.Values[0]) <= 1e-5);
    }

    /// <summary>
    /// Attribution patching over features: Σ_f (a_clean − a_corrupt)·∂m/∂a per position, with ∂m/∂a computed
    /// independently as the unspliced model's gradient at the hook times W_decᵀ (the error term keeps the run clean).
    /// </summary>
    [Fact]
    public void AttributionPatchingUsesFeatureGradients()
    {
        using var model = Model();
        var sae = SpliceFixtures.Random(SaeShape.Sae(D, F), new ReluActivation(), seed: 2);
        var (clean, corrupt) = Pair();
        var metric = new LogitDiff(17, 42);
        var cleanActs = sae.Encode(model.RunWithCache(clean, Resid).Cache[Resid].Span, 16);
        var corruptRun = model.RunWithGradients(corrupt, metric, Resid, new RunOptions { CacheFilter = n => n == Resid });
        var corruptActs = sae.Encode(corruptRun.Activations[Resid].Span, 16);
        var g = corruptRun.Gradients[Resid];

        using var attached = model.AddSplice(SaeSplice.ForModel(model, sae, Resid, new SaeSpliceOptions { UseErrorTerm = true }));
        var result = AttributionPatching.Sweep(model, clean, corrupt, metric, Features);
        for (int p = 0; p < 8; p++)
        {
            double estimate = corruptRun.Metric;
            for (int b = 0; b < 2; b++)
                for (int f = 0; f < F; f++)
                {
                    int row = b * 8 + p;
                    double grad = 0;
                    for (int j = 0; j < D; j++) grad += (double)g.Span[row * D + j] * sae.P.WDec[f * D + j];
                    estimate += (cleanActs[row * F + f] - corruptActs[row * F + f]) * grad;
                }
            Assert.True(Math.Abs(estimate - result.Values[p]) <= 1e-4 * Math.Max(1, Math.Abs(estimate)), $"position {p}: {result.Values[p]} vs {estimate}");
        }
    }
}
