using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>The sparse decoder path and the selection kernels against dense / sorting references.</summary>
public class SparseStepTests
{
    static float[] Gaussian(int n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = SparseDictionary.Gaussian(rng);
        return a;
    }

    [Theory]
    [InlineData("standard")]
    [InlineData("topk")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    [InlineData("skip_transcoder")]
    [InlineData("matryoshka")]
    [InlineData("matryoshka_skip_transcoder")]
    public void SparseAndDenseDecoderPathsGiveTheSameLossAndGradients(string arch)
    {
        const int dIn = 24, dSae = 96, batch = 40;
        SparseDictionary Make()
        {
            var d = arch switch
            {
                "standard" => new SparseDictionary(SaeShape.Sae(dIn, dSae), new ReluActivation()),
                "topk" => new SparseDictionary(SaeShape.Sae(dIn, dSae), new TopKActivation(4)),
                "batchtopk" => new SparseDictionary(SaeShape.Sae(dIn, dSae), new BatchTopKActivation(4)),
                "jumprelu" => new SparseDictionary(SaeShape.Sae(dIn, dSae), new JumpReluActivation(0.05f)),
                "matryoshka" => new SparseDictionary(SaeShape.Sae(dIn, dSae), new MatryoshkaBatchTopKActivation(4, [dSae / 8, dSae / 3, dSae])),
                "matryoshka_skip_transcoder" => new SparseDictionary(SaeShape.Transcoder(dIn, dSae, 16, skip: true), new MatryoshkaBatchTopKActivation(5, [3, dSae / 2, dSae])),
                _ => new SparseDictionary(SaeShape.Transcoder(dIn, dSae, 16, skip: true), new TopKActivation(5)),
            };
            d.Initialize(seed: 5, decoderNorm: 0.5f, initThreshold: 0.3f);
            return d;
        }
        var x = Gaussian(batch * dIn, 1);
        var dense = Make();
        var target = dense.Shape.DOut == dIn ? x : Gaussian(batch * dense.Shape.DOut, 2);
        var dead = new bool[dSae];
        for (int i = 0; i < dSae; i += 3) dead[i] = true; // aux-k on a third of the features
        dense.SparseDensity = 0;
        var sparse = Make();
        sparse.SparseDensity = 1;
        var gDense = new SaeParameters(dense.Shape);
        var gSparse = new SaeParameters(sparse.Shape);
        var firesDense = new int[dSae];
        var firesSparse = new int[dSae];
        var a = dense.ForwardBackward(x, target, batch, 0.2f, gDense, deadFeatures: dead, auxKCoefficient: 0.5f, firesOut: firesDense);
        var b = sparse.ForwardBackward(x, target, batch, 0.2f, gSparse, deadFeatures: dead, auxKCoefficient: 0.5f, firesOut: firesSparse);
        Assert.Equal(a.L0, b.L0);
        Assert.Equal(a.Loss, b.Loss, 1e-4);
        Assert.Equal(firesDense, firesSparse);
        Assert.True(firesDense.Sum() > 0);
        var bTensors = gSparse.Trainable(sparse.Activation).ToDictionary(t => t.Name, t => t.Data);
        foreach (var (name, want) in gDense.Trainable(dense.Activation))
        {
            var got = bTensors[name];
            float scale = Math.Max(1e-6f, want.Max(MathF.Abs));
            for (int i = 0; i < want.Length; i++)
                Assert.True(MathF.Abs(want[i] - got[i]) <= 1e-5f * scale + 1e-7f, $"{arch} {name}[{i}]: dense {want[i]} sparse {got[i]}");
        }
    }

    [Fact]
    public void LargestMatchesASortWithTiesToTheLowerIndex()
    {
        var rng = new Random(3);
        for (int trial = 0; trial < 200; trial++)
        {
            int n = rng.Next(1, 300), k = rng.Next(1, 40);
            var v = new float[n];
            for (int i = 0; i < n; i++) v[i] = rng.Next(0, 20) / 4f; // many ties
            if (trial % 7 == 0) v[rng.Next(n)] = float.NaN;
            var idx = new int[Math.Min(k, n)];
            int got = TopKSelection.Largest(v, k, idx);
            var expected = Enumerable.Range(0, n).OrderByDescending(i => float.IsNaN(v[i]) ? float.NegativeInfinity : v[i]).ThenBy(i => i).Take(k).OrderBy(i => i);
            Assert.Equal(Math.Min(k, n), got);
            Assert.Equal(expected, idx.Take(got).OrderBy(i => i));
        }
    }

    [Fact]
    public void KthLargestMatchesASort()
    {
        var rng = new Random(4);
        for (int trial = 0; trial < 200; trial++)
        {
            int n = rng.Next(1, 500);
            var v = new float[n];
            for (int i = 0; i < n; i++) v[i] = trial % 2 == 0 ? rng.Next(0, 10) : SparseDictionary.Gaussian(rng);
            int k = rng.Next(1, n + 1);
            var sorted = v.OrderByDescending(f => f).ToArray();
            Assert.Equal(sorted[k - 1], TopKSelection.KthLargest(v, k, new float[n]));
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => TopKSelection.KthLargest([1f, 2f], 3, new float[2]));
    }

    [Fact]
    public void BatchTopKKeepsExactlyKTimesBatchEvenWithTies()
    {
        float[] pre = [1, 1, 1, 1, /* row 2 */ 1, 1, 0.5f, 0.5f];
        var acts = new float[8];
        new BatchTopKActivation(1).Forward(pre, acts, 2, 4, training: true, new SaeParameters(SaeShape.Sae(1, 4)));
        Assert.Equal([1f, 1f, 0, 0, 0, 0, 0, 0], acts); // 2 kept: ties at 1 go to the lowest indices
    }
}
