using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// The real-model check, small enough for CI: a TopK SAE trained on stories260K's block-2 residual
/// stream straight from the model (no disk), evaluated spliced into the model on held-out contexts.
/// </summary>
public class Stories260KSaeTests(ITestOutputHelper output)
{
    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void TopKSaeOnBlock2ResidPostExplainsTheStreamAndRecoversTheLoss()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var all = ContextBuilder.ForModel(model, new BrownCorpusSource(SharedData.Require("datasets/brown-corpus")), contextSize: 64, seed: 1, maxContexts: 160);
        var train = HarvestContexts.FromRows(all.Contexts.Take(128).ToList(), "brown train");
        var heldOut = HarvestContexts.FromRows(all.Contexts.Skip(128).ToList(), "brown held out");
        string hook = HookNames.ResidPost(2);

        var dict = new SparseDictionary(SaeShape.Sae(model.Config.DModel, 256), new TopKActivation(32));
        dict.Initialize(seed: 0);
        var trainer = new SaeTrainer(dict, new SaeTrainingOptions
        {
            Steps = 300, BatchSize = 512, LearningRate = 1e-3f, LrWarmupSteps = 20, NormalizeExpectedAverage = true, Seed = 0,
        });
        trainer.Begin(new ModelRows(model, train, hook, contextsPerWindow: 32));
        SaeStepMetrics last = null!;
        while (!trainer.IsComplete) last = trainer.Step();
        trainer.Finish();

        var eval = SaeEvaluator.Evaluate(model, dict, hook, heldOut);
        output.WriteLine($"last step EV {last.ExplainedVariance:F3}; held out: L0 {eval.L0:F1}, EV {eval.ExplainedVariance:F3}, " +
            $"CE clean {eval.CeLossClean:F3} / SAE {eval.CeLossWithSae:F3} / zero {eval.CeLossZeroAblated:F3}, loss recovered {eval.LossRecovered:F3}, dead {eval.DeadFeatures}");
        Assert.True(eval.L0 <= 32.0001, $"L0 {eval.L0}");
        Assert.True(eval.ExplainedVariance >= 0.8, $"explained variance {eval.ExplainedVariance:F3} < 0.8");
        Assert.True(eval.LossRecovered >= 0.8, $"loss recovered {eval.LossRecovered:F3} < 0.8");
    }
}
