using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Steering.Tests;

/// <summary>CAA against a by-hand mean difference, and the errors a user meets first.</summary>
public class ContrastTests
{
    static HookedTransformer Model => TestModels.Llama;

    /// <summary>The reduction done by hand, one sequence at a time (no batching, no padding).</summary>
    static float[] Manual(IReadOnlyList<int[]> set, string hook, TokenReduction reduction)
    {
        var sum = new double[Model.Config.DModel];
        foreach (var seq in set)
        {
            var act = Model.RunWithCache(TokenBatch.Single(seq), hook).Cache[hook]; // [1, pos, d_model]
            int d = act.Dim(2);
            int first = reduction == TokenReduction.LastToken ? seq.Length - 1 : 1; // every test sequence starts with BOS
            for (int t = first; t < seq.Length; t++)
                for (int j = 0; j < d; j++) sum[j] += act.Span[t * d + j] / (double)(seq.Length - first) / set.Count;
        }
        return sum.Select(x => (float)x).ToArray();
    }

    [Theory]
    [InlineData(TokenReduction.LastToken)]
    [InlineData(TokenReduction.MeanOverTokens)]
    public void CaaVectorEqualsTheManualMeanDifference(TokenReduction reduction)
    {
        // Different lengths, and more than one batch of texts, so padding and batching are exercised.
        var a = Enumerable.Range(0, 18).Select(i => TestModels.Tokens(4 + i % 5, 100 + i)).ToArray();
        var b = Enumerable.Range(0, 5).Select(i => TestModels.Tokens(3 + i, 200 + i)).ToArray();
        string hook = HookNames.ResidPost(1);
        var caa = ContrastiveActivationAddition.Compute(Model, hook, a, b, reduction);
        float[] meanA = Manual(a, hook, reduction), meanB = Manual(b, hook, reduction);
        for (int j = 0; j < meanA.Length; j++)
        {
            Assert.Equal(meanA[j], caa.MeanA[j], 1e-5f);
            Assert.Equal(meanB[j], caa.MeanB[j], 1e-5f);
            Assert.Equal(meanA[j] - meanB[j], caa.Vector[j], 1e-5f);
        }
        var unit = ContrastiveActivationAddition.Compute(Model, hook, a, b, reduction, normalize: true);
        Assert.Equal(1f, MathF.Sqrt(unit.Vector.Sum(x => x * x)), 1e-5f);
        Assert.Equal(caa.RawNorm, unit.RawNorm, 1e-6f);
        Assert.Equal(hook, caa.ToSteering(2f).HookName);
    }

    [Fact]
    public void AVectorOfTheWrongLengthNamesTheHookAndBothSizes()
    {
        var bad = new SteeringVector(HookNames.ResidPost(1), new float[10], 1f);
        var e = Assert.Throws<InputError>(() => ActivationEdits.Options(Model, bad));
        Assert.Contains("blocks.1.hook_resid_post", e.Message);
        Assert.Contains("10 entries", e.Message);
        Assert.Contains("d_model = 64", e.Message);

        var mlp = Assert.Throws<InputError>(() => ActivationEdits.Options(Model, new SteeringVector(HookNames.MlpPost(0), new float[64])));
        Assert.Contains("d_mlp = 176", mlp.Message);

        // Attached without the model, the same mistake is caught when the hook first fires.
        var late = Assert.Throws<InputError>(() => Model.Run(TestModels.Tokens(4, 1), new RunOptions().AddEdit(bad)));
        Assert.Contains("blocks.1.hook_resid_post", late.Message);
        Assert.Contains("10 entries", late.Message);
        Assert.Contains("64", late.Message);
    }

    [Fact]
    public void AnUnknownHookListsTheModelsHookPoints()
    {
        var e = Assert.Throws<InputError>(() => ActivationEdits.Options(Model, new SteeringVector("blocks.1.hook_resid_postt", new float[64])));
        Assert.Contains("unknown hook 'blocks.1.hook_resid_postt'", e.Message);
        Assert.Contains("blocks.{0..2}.hook_resid_post", e.Message);
        Assert.Contains("blocks.{0..2}.mlp.hook_post", e.Message);
        Assert.Throws<InputError>(() => ContrastiveActivationAddition.Compute(Model, "blocks.9.hook_resid_post", [[1, 2]], [[1, 3]]));
    }

    [Fact]
    public void EmptyOrMalformedInputsAreClearErrors()
    {
        string hook = HookNames.ResidPost(0);
        var empty = Assert.Throws<InputError>(() => ContrastiveActivationAddition.Compute(Model, hook, [], [[1, 5, 6]]));
        Assert.Contains("set A has 0", empty.Message);
        Assert.Throws<InputError>(() => ContrastiveActivationAddition.Compute(Model, hook, [[1, 5]], []));
        Assert.Throws<InputError>(() => ContrastiveActivationAddition.Compute(Model, hook, [[1, 5], []], [[1, 6]]));
        var noTokenizer = Assert.Throws<InputError>(() => ContrastiveActivationAddition.Compute(Model, hook, ["happy"], ["sad"]));
        Assert.Contains("no tokenizer", noTokenizer.Message);
        var same = Assert.Throws<InputError>(() => ContrastiveActivationAddition.Compute(Model, hook, [[1, 5]], [[1, 5]], normalize: true));
        Assert.Contains("same mean", same.Message);

        Assert.Throws<InputError>(() => new SteeringVector(hook, []));
        Assert.Throws<InputError>(() => new SteeringVector(hook, [float.NaN, 1f]));
        Assert.Throws<InputError>(() => new ProjectOut(hook, new float[64]));
        var pattern = Assert.Throws<InputError>(() => new SteeringVector(HookNames.Pattern(0), new float[4]));
        Assert.Contains("query_pos", pattern.Message);
        Assert.Throws<InputError>(() => SteeringPositions.Parse("later"));
        Assert.Contains("--positions", Assert.Throws<InputError>(() => SteeringPositions.Parse("from:99999999999", "--positions")).Message);
        Assert.Throws<InputError>(() => SteeringPositions.Parse("from:-1"));
        Assert.Equal(SteeringPositions.From(3), SteeringPositions.Parse("from:3"));
        Assert.Equal(SteeringPositions.NewTokens, SteeringPositions.Parse("new"));
    }

    [Fact]
    public void ASavedVectorLoadsWithItsHook()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-steer").FullName, "v.safetensors");
        var v = TestModels.RandomVector(64, 3);
        Loupe.Models.Loading.SafeTensorsWriter.Write(path, [("direction", [64], v), ("other", [64], new float[64])],
            new Dictionary<string, string> { ["hook"] = "blocks.2.hook_resid_pre" });
        var loaded = SteeringVector.Load(path, coefficient: 3f);
        Assert.Equal("blocks.2.hook_resid_pre", loaded.HookName);
        Assert.Equal(v, loaded.Direction.ToArray());
        Assert.Equal(3f, loaded.Coefficient);
        Assert.Equal("blocks.0.hook_resid_post", SteeringVector.Load(path, "other", "blocks.0.hook_resid_post").HookName);
        var missing = Assert.Throws<InputError>(() => SteeringVector.Load(path, "nope"));
        Assert.Contains("direction", missing.Message);
    }
}
