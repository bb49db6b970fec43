using Loupe.Circuits.Toy;
using Loupe.Dictionaries.Sae;

namespace Loupe.Circuits.Tests.Toy;

/// <summary>The toy models of superposition reproduce the paper's known results, and Loupe's SAEs find their features.</summary>
public sealed class ToyModelTests
{
    [Fact]
    public void Dense_features_keep_the_important_one_and_sparse_features_share_the_dimension()
    {
        var cells = ToyStudies.PhaseDiagram([1.0, 0.02], [0.5, 1.0], steps: 6000);
        var dense = cells.Single(c => c.Density == 1.0 && c.RelativeImportance == 0.5);
        var sparse = cells.Single(c => c.Density == 0.02 && c.RelativeImportance == 1.0);
        Assert.Equal(ToyPhase.NotRepresented, dense.Phase);
        Assert.True(dense.Norm1 > 0.7, $"‖W1‖ = {dense.Norm1}");
        Assert.Equal(ToyPhase.Superposition, sparse.Phase);
        Assert.True(sparse.Cosine < -0.9, $"cos = {sparse.Cosine} (antipodal expected)");
    }

    [Fact]
    public void Five_sparse_features_in_two_dimensions_form_a_pentagon()
    {
        var toy = ToyModel.Train(new ToySettings(5, 2, 0.03, Steps: 6000, Seed: 2));
        for (int i = 0; i < 5; i++) Assert.True(toy.Norm(i) > 0.6, $"‖W{i}‖ = {toy.Norm(i)}");
        var angles = Enumerable.Range(0, 5).Select(i => Math.Atan2(toy.W[5 + i], toy.W[i])).Order().ToArray();
        for (int i = 0; i < 5; i++)
        {
            double gap = (i < 4 ? angles[i + 1] - angles[i] : angles[0] + 2 * Math.PI - angles[4]) * 180 / Math.PI;
            Assert.InRange(gap, 72 - 15, 72 + 15);
        }
        Assert.InRange(toy.DimensionsPerFeature, 0.3, 0.55);
    }

    [Fact]
    public void An_sae_recovers_the_true_directions_of_features_in_superposition()
    {
        var toy = ToyModel.Train(new ToySettings(10, 5, 0.05, Steps: 4000, Seed: 3));
        Assert.True(Enumerable.Range(0, 10).Count(i => toy.Norm(i) > 0.5) > 5, "more features represented than dimensions");
        var recovery = ToyStudies.SaeRecovery(toy, new TopKActivation(2), dSae: 20, steps: 1500);
        Assert.True(recovery.MeanMaxCosine > 0.9, $"MMCS {recovery.MeanMaxCosine:0.###}, per feature {string.Join(", ", recovery.MaxCosine.Select(c => c.ToString("0.##")))}");
    }
}
