using Loupe.Reports;
using System.Numerics.Tensors;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Steering.Tests;

/// <summary>Persona extraction plumbing on the fixture, and the statistics it rests on.</summary>
public class PersonaTests
{
    static HookedTransformer Model => TestModels.Llama;

    [Fact]
    public void ThePersonaVectorIsTheTrainingMeanDifferenceAndRoundTrips()
    {
        // Trait texts share token 7 throughout; opposite texts share token 9: an easy, known separation.
        var trait = Enumerable.Range(0, 8).Select(i => TestModels.Tokens(6, 300 + i).Select((t, j) => j % 2 == 1 ? 7 : t).ToArray()).ToArray();
        var opposite = Enumerable.Range(0, 8).Select(i => TestModels.Tokens(6, 400 + i).Select((t, j) => j % 2 == 1 ? 9 : t).ToArray()).ToArray();
        var persona = PersonaVectors.Extract(Model, trait, opposite, new PersonaOptions { Layer = 1, HeldOutFraction = 0.25 });
        Assert.Equal(1, persona.Layer);
        Assert.Equal(HookNames.ResidPost(1), persona.HookName);
        Assert.Equal(Model.Config.NLayers, persona.Layers.Count);

        // Texts 3 and 7 of each set are held out (i mod 4 = 3); the vector is the mean difference of the rest.
        int[] train = [0, 1, 2, 4, 5, 6];
        var caa = ContrastiveActivationAddition.Compute(Model, persona.HookName, train.Select(i => trait[i]).ToArray(),
            train.Select(i => opposite[i]).ToArray(), TokenReduction.MeanOverTokens);
        for (int j = 0; j < caa.Vector.Length; j++) Assert.Equal(caa.Vector[j], persona.Vector[j], 1e-5f);
        Assert.Equal(2, persona.HeldOutPositive.Length);
        Assert.Equal(6, persona.TrainNegative.Length);
        Assert.Equal(1.0, persona.TrainAccuracy);
        Assert.Equal(1.0, persona.HeldOutAccuracy);

        // Monitoring: a trait text reads above the threshold, an opposite one below.
        Assert.True(persona.Monitor(Model, trait[3]).ExpressesTrait);
        Assert.False(persona.Monitor(Model, opposite[3]).ExpressesTrait);
        var reading = persona.Monitor(Model, trait[3]);
        Assert.Equal(trait[3].Length, reading.Projections.Length);
        Assert.Equal(reading.Projections.Skip(1).Average(), reading.Mean, 1e-9);

        // Steering adds coeff × the raw vector at the persona's hook.
        var steer = persona.Steer(-2f);
        Assert.Equal(persona.HookName, steer.HookName);
        Assert.Equal(persona.Norm, steer.Norm, 1e-5f);

        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-persona").FullName, "persona.safetensors");
        persona.Save(path);
        var loaded = PersonaVector.Load(path);
        Assert.Equal(persona.Vector, loaded.Vector);
        Assert.Equal(persona.HookName, loaded.HookName);
        Assert.Equal(persona.Layer, loaded.Layer);
        Assert.Equal(persona.Threshold, loaded.Threshold);
        Assert.Equal(persona.HookName, SteeringVector.Load(path).HookName); // the file also works as a plain steering vector

        // The file says what its hook name means; one naming meanings this Loupe does not know is refused (or, as a steering
        // vector, taken only with the hook named by the caller).
        using (var file = Loupe.Models.Loading.SafeTensorsFile.Open(path))
            Assert.Equal(HookNames.Semantics, file.Metadata[HookNames.SemanticsKey]);
        string future = Path.Combine(Path.GetDirectoryName(path)!, "future.safetensors");
        persona.Save(future, new Dictionary<string, string> { [HookNames.SemanticsKey] = "loupe_v3" });
        using (var file = Loupe.Models.Loading.SafeTensorsFile.Open(future))
            Assert.Equal(HookNames.Semantics, file.Metadata[HookNames.SemanticsKey]); // Save's own value wins over extras
    }

    [Fact]
    public void AVectorFileNamingUnknownHookMeaningsIsRefused()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-persona").FullName, "future.safetensors");
        Loupe.Models.Loading.SafeTensorsWriter.Write(path, [("persona", [4], new float[] { 1, 2, 3, 4 })],
            new Dictionary<string, string> { ["hook"] = "blocks.1.ln2.hook_normalized", ["layer"] = "1", ["threshold"] = "0", [HookNames.SemanticsKey] = "loupe_v3" });
        Assert.Contains("'loupe_hooks' is 'loupe_v3'", Assert.Throws<InputError>(() => PersonaVector.Load(path)).Message);
        Assert.Contains(path, Assert.Throws<InputError>(() => SteeringVector.Load(path)).Message);
        Assert.Equal("blocks.1.hook_resid_post", SteeringVector.Load(path, hookName: "blocks.1.hook_resid_post").HookName);
    }

    [Fact]
    public void AutoLayerPicksTheBestCrossValidatedSeparation()
    {
        var trait = Enumerable.Range(0, 8).Select(i => TestModels.Tokens(6, 500 + i).Select((t, j) => j == 3 ? 7 : t).ToArray()).ToArray();
        var opposite = Enumerable.Range(0, 8).Select(i => TestModels.Tokens(6, 600 + i).Select((t, j) => j == 3 ? 9 : t).ToArray()).ToArray();
        var persona = PersonaVectors.Extract(Model, trait, opposite);
        var best = persona.Layers.OrderByDescending(s => s.HeldOutAuroc).ThenByDescending(s => s.HeldOutEffectSize).First();
        Assert.Equal(best.Layer, persona.Layer);
        Assert.All(persona.Layers, s => Assert.InRange(s.HeldOutAuroc, 0, 1));
    }

    [Fact]
    public void BadPersonaInputsAreClearErrors()
    {
        int[][] two = [TestModels.Tokens(4, 1), TestModels.Tokens(4, 2)];
        var few = Assert.Throws<InputError>(() => PersonaVectors.Extract(Model, [TestModels.Tokens(4, 3)], two));
        Assert.Contains("at least two texts", few.Message);
        var layer = Assert.Throws<InputError>(() => PersonaVectors.Extract(Model, two, two, new PersonaOptions { Layer = 3 }));
        Assert.Contains("n_layers = 3", layer.Message);
        Assert.Throws<InputError>(() => PersonaVectors.Extract(Model, two, two, new PersonaOptions { HeldOutFraction = 1 }));
        Assert.Throws<InputError>(() => PersonaVectors.Extract(Model, two, two, new PersonaOptions { HeldOutFraction = double.NaN }));
    }

    [Fact]
    public void SeparationStatisticsMatchHandComputedValues()
    {
        double[] pos = [3, 4, 5], neg = [1, 2, 3.5];
        // Pairs with pos > neg: 3>1, 3>2, 4>all, 5>all = 8 of 9; 3 vs 3.5 is a loss.
        Assert.Equal(8.0 / 9, Separation.Auroc(pos, neg), 1e-12);
        Assert.Equal(0.5, Separation.Auroc([1.0], [1.0]));
        var (threshold, accuracy) = Separation.BestThreshold(pos, neg);
        Assert.Equal(5.0 / 6, accuracy, 1e-12);
        Assert.Equal(5.0 / 6, Separation.Accuracy(pos, neg, threshold), 1e-12);
        var (clean, perfect) = Separation.BestThreshold([10.0, 11], [0.0, 1]);
        Assert.Equal(1.0, perfect);
        Assert.Equal(5.5, clean); // the middle of the gap, nearest the class-mean midpoint
        // Cohen's d: gap 2.1667, pooled sd sqrt((2·1 + 2·1.5833)/4).
        Assert.Equal((4 - 6.5 / 3) / Math.Sqrt((2 * 1 + 2 * Separation.Variance(neg)) / 4), Separation.EffectSize(pos, neg), 1e-12);
        Assert.Throws<ArgumentException>(() => Separation.Auroc([], neg));
        Assert.Equal((2.0, Math.Sqrt(2.0 / 2)), Separation.MeanSd([1.0, 2, 3]));
    }

    [Fact]
    public void WordScoreCountsWholeWordsCaseInsensitively()
    {
        var score = new WordScore(["happy", "smiled"], ["sad", "cried"]);
        Assert.Equal((2, 1), score.Count("Happy Lily smiled. Her sad friend... unhappy? sadness."));
        Assert.Equal(1, score.Score("Happy Lily smiled. Her sad friend."));
        Assert.Throws<InputError>(() => new WordScore(["happy"], ["Happy"]));
        Assert.Throws<InputError>(() => new WordScore([], ["sad"]));
        var demo = DemoData.HappySadScore;
        Assert.Equal(32, DemoData.HappyStories.Count);
        Assert.Equal(32, DemoData.SadStories.Count);
        Assert.True(demo.Score(string.Join(" ", DemoData.HappyStories)) > 50);
        Assert.True(demo.Score(string.Join(" ", DemoData.SadStories)) < -50);
    }

    [Fact]
    public void TrendIsTheRankCorrelationOfMeansWithCoefficients()
    {
        static SweepPoint P(float c, params double[] scores) => new(c, scores.Select(s => new SweepSample(0, [], "", s, 0)).ToArray());
        Assert.Equal(1.0, CoefficientSweep.Trend([P(-1, 0, 1), P(0, 2), P(1, 5, 6)]), 1e-12);
        Assert.Equal(-1.0, CoefficientSweep.Trend([P(-1, 3), P(0, 2), P(1, 1)]), 1e-12);
        Assert.True(double.IsNaN(CoefficientSweep.Trend([P(0, 1)])));
    }
}
