using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// The real-model smoke run: a CLT over all 5 layers of stories260K and per-layer transcoders, trained on the
/// model's own activations, evaluated with every MLP replaced at once on held-out contexts.
/// </summary>
public class Stories260KCltTests(ITestOutputHelper output)
{
    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void CltAndPerLayerTranscodersRecoverMostOfTheLossWithEveryMlpReplaced()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var all = ContextBuilder.ForModel(model, new BrownCorpusSource(SharedData.Require("datasets/brown-corpus")), contextSize: 64, seed: 1, maxContexts: 144);
        var train = HarvestContexts.FromRows(all.Contexts.Take(128).ToList(), "brown train");
        var heldOut = HarvestContexts.FromRows(all.Contexts.Skip(128).ToList(), "brown held out");
        int L = model.Config.NLayers, d = model.Config.DModel;

        var clt = new CrossLayerTranscoder(new CltShape(L, d, 256, d), new TopKActivation(16));
        clt.Initialize(seed: 0);
        var trainer = new CltTrainer(clt, new CltTrainingOptions
        {
            Base = new SaeTrainingOptions { Steps = 100, BatchSize = 128, LearningRate = 4e-3f, LrWarmupSteps = 20, Seed = 0 },
        });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        trainer.Begin(LayerPairRows.For(model, train, clt, contextsPerWindow: 64));
        CltStepMetrics last = null!;
        while (!trainer.IsComplete) last = trainer.Step();
        double trainSeconds = clock.Elapsed.TotalSeconds;
        var cltEval = ReplacementEvaluator.Evaluate(model, clt, heldOut);

        var perLayer = new SparseDictionary[L];
        for (int l = 0; l < L; l++)
        {
            perLayer[l] = new SparseDictionary(SaeShape.Transcoder(d, 256, d), new TopKActivation(16));
            perLayer[l].Initialize(seed: l);
            new SaeTrainer(perLayer[l], new SaeTrainingOptions { Steps = 100, BatchSize = 128, LearningRate = 4e-3f, LrWarmupSteps = 20, Seed = 0 })
                .Train(new ModelRows(model, train, HookNames.NormNormalized(l, "ln2"), HookNames.MlpOut(l), contextsPerWindow: 128).Load(0, 0).Inputs,
                       new ModelRows(model, train, HookNames.NormNormalized(l, "ln2"), HookNames.MlpOut(l), contextsPerWindow: 128).Load(0, 0).Targets);
        }
        var pltEval = ReplacementEvaluator.Evaluate(model, new CircuitTracerTranscoders(perLayer), heldOut);

        output.WriteLine($"CLT ({trainSeconds:F1} s, last step MSE {last.Mse:F4}): loss recovered {cltEval.LossRecovered:F3} " +
            $"(CE clean {cltEval.CeLossClean:F3}, replaced {cltEval.CeLossReplaced:F3}, zero {cltEval.CeLossZeroAblated:F3}); " +
            $"EV {string.Join("/", cltEval.ExplainedVariance.Select(e => e.ToString("F3")))}; L0 {string.Join("/", cltEval.L0.Select(e => e.ToString("F1")))}");
        output.WriteLine($"per-layer: loss recovered {pltEval.LossRecovered:F3} (CE replaced {pltEval.CeLossReplaced:F3}); " +
            $"EV {string.Join("/", pltEval.ExplainedVariance.Select(e => e.ToString("F3")))}");
        Assert.True(cltEval.LossRecovered > 0.5, $"CLT loss recovered {cltEval.LossRecovered:F3}");
        Assert.True(pltEval.LossRecovered > 0.3, $"per-layer loss recovered {pltEval.LossRecovered:F3}");
        Assert.All(cltEval.L0, l0 => Assert.True(l0 <= 16.0001));
    }
}
