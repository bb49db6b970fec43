using Loupe.Circuits.Toy;
using Loupe.Dictionaries.Sae;

namespace Loupe.Circuits.Tests.Toy;

/// <summary>
/// Feature absorption measured against a hierarchy known by construction: a BatchTopK SAE absorbs parents into their
/// children's latents, a Matryoshka SAE much less (Bussmann et al. 2025's toy result, reproduced with Loupe's trainer).
/// </summary>
public sealed class ToyAbsorptionTests
{
    [Fact]
    public void The_toy_has_orthonormal_directions_and_children_fire_only_with_their_parent()
    {
        var toy = new AbsorptionToy();
        var dirs = toy.Directions(seed: 3);
        int n = toy.Features, d = toy.DModel;
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
            {
                double dot = 0;
                for (int c = 0; c < d; c++) dot += dirs[i * d + c] * dirs[j * d + c];
                Assert.Equal(i == j ? 1.0 : 0.0, dot, 1e-12);
            }
        const int rows = 50_000;
        var f = toy.SampleFeatures(rows, new Random(1));
        int parentFires = 0, childFires = 0;
        double l0 = 0;
        for (int r = 0; r < rows; r++)
        {
            l0 += Enumerable.Range(0, n).Count(i => f[r * n + i] != 0);
            for (int p = 0; p < toy.Parents; p++)
            {
                int children = Enumerable.Range(0, toy.ChildrenPerParent).Count(c => f[r * n + toy.Child(p, c)] != 0);
                Assert.True(children <= 1, "children are mutually exclusive");
                if (children == 1) Assert.True(f[r * n + toy.Parent(p)] != 0, "a child fires only with its parent");
                if (f[r * n + toy.Parent(p)] != 0) parentFires++;
                childFires += children;
            }
        }
        Assert.Equal(toy.ParentProbability, parentFires / (double)(rows * toy.Parents), 0.01);
        Assert.Equal(toy.ParentProbability * toy.ChildProbability, childFires / (double)(rows * toy.Parents), 0.01);
        Assert.Equal(toy.MeanL0, l0 / rows, 0.03);
        // x is the features' sum along their directions: its projection on a direction gives the feature back
        var x = toy.Embed(f, 10, dirs);
        for (int r = 0; r < 10; r++)
            for (int i = 0; i < n; i++)
            {
                double proj = 0;
                for (int c = 0; c < d; c++) proj += x[r * d + c] * dirs[i * d + c];
                Assert.Equal(f[r * n + i], proj, 1e-5);
            }
    }

    [Fact]
    public void BatchTopK_absorbs_parents_into_their_children_and_Matryoshka_much_less()
    {
        var toy = new AbsorptionToy();
        int n = toy.Features, levelParents = toy.Parents, levelFamilies = toy.Parents * (1 + toy.ChildrenPerParent);
        var plain = ToyAbsorptionStudy.Run(toy, new BatchTopKActivation(2), n);
        var nested = ToyAbsorptionStudy.Run(toy, new MatryoshkaBatchTopKActivation(2, [levelParents, levelFamilies, n]), n);
        string Say(ToyAbsorptionResult r) => $"{r.Architecture}: absorption {r.MeanAbsorption:F3}, child-decoder·parent cosine {r.MeanChildDecoderParentCosine:F3}, EV {r.ExplainedVariance:F3}, MMCS {r.MeanMaxCosine:F3}";
        // both learn the toy (k = 2 against 2.3 true features a row)
        foreach (var r in new[] { plain, nested })
        {
            Assert.True(r.ExplainedVariance > 0.85, Say(r));
            Assert.True(r.MeanMaxCosine > 0.8, Say(r));
            Assert.Equal(2.0, r.L0, 0.1);
            Assert.All(r.Parents, p => Assert.True(p.RecallAlone > 0.7, $"parent {p.Parent} alone: {p.RecallAlone}; {Say(r)}"));
        }
        // BatchTopK: a parent's latent is often silent when a child fires, and the children's latents lean on the parent
        Assert.True(plain.MeanAbsorption > 0.2, Say(plain));
        Assert.True(plain.MeanChildDecoderParentCosine > 0.3, Say(plain));
        // Matryoshka: the children's latents hold much less of the parent
        Assert.True(nested.MeanChildDecoderParentCosine < plain.MeanChildDecoderParentCosine - 0.1, $"{Say(plain)}; {Say(nested)}");
        Assert.True(nested.MeanAbsorption < plain.MeanAbsorption, $"{Say(plain)}; {Say(nested)}");
    }
}
