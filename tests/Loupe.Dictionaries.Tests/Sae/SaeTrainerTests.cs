using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Tests.Sae;

public class SaeTrainerTests
{
    static float[] Noise(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
    }

    [Fact]
    public void SameSeedGivesIdenticalWeightsAndMetrics()
    {
        var data = Noise(200 * 8, 1);
        SparseDictionary Run(out List<SaeStepMetrics> m)
        {
            var d = new SparseDictionary(SaeShape.Sae(8, 16), new TopKActivation(2));
            d.Initialize(seed: 3);
            m = new SaeTrainer(d, new SaeTrainingOptions { Steps = 50, BatchSize = 16, Seed = 9 }).Train(data);
            return d;
        }
        var a = Run(out var ma);
        var b = Run(out var mb);
        Assert.Equal(a.P.WEnc, b.P.WEnc);
        Assert.Equal(a.P.WDec, b.P.WDec);
        Assert.Equal(ma, mb);
    }

    [Fact]
    public void LearningRateWarmsUpThenDecaysLinearlyToZero()
    {
        var d = new SparseDictionary(SaeShape.Sae(4, 4), new ReluActivation());
        var t = new SaeTrainer(d, new SaeTrainingOptions { Steps = 100, LearningRate = 1f, LrWarmupSteps = 10, LrDecayFraction = 0.2f, SparsityCoefficient = 2f, SparsityWarmupSteps = 4 });
        Assert.Equal(0.1f, t.LearningRateAt(0), 1e-6);
        Assert.Equal(1f, t.LearningRateAt(10));
        Assert.Equal(1f, t.LearningRateAt(79));
        Assert.Equal(1f, t.LearningRateAt(80));
        Assert.Equal(0.05f, t.LearningRateAt(99), 1e-6);
        Assert.Equal(0.5f, t.SparsityCoefficientAt(0));
        Assert.Equal(2f, t.SparsityCoefficientAt(3));
        Assert.Equal(2f, t.SparsityCoefficientAt(50));
    }

    [Fact]
    public void GeometricMedianIgnoresAnOutlierThatMovesTheMean()
    {
        // Five points near (1, 1) and one far outlier: the median stays near (1, 1).
        float[] pts = [1, 1, 1.1f, 0.9f, 0.9f, 1.1f, 1, 1.05f, 1.05f, 1, 100, 100];
        var med = SaeTrainer.GeometricMedian(pts, 6, 2);
        Assert.InRange(med[0], 0.95f, 1.1f);
        Assert.InRange(med[1], 0.95f, 1.1f);
    }

    [Fact]
    public void UnitNormDecoderRowsStayUnitAndDeadFeaturesAreCounted()
    {
        var data = Noise(256 * 8, 2);
        var d = new SparseDictionary(SaeShape.Sae(8, 16), new TopKActivation(2));
        d.Initialize(seed: 1);
        // Make feature 0 unable to fire: its pre-activation is always hugely negative.
        d.P.BEnc[0] = -1e6f;
        var m = new SaeTrainer(d, new SaeTrainingOptions { Steps = 40, BatchSize = 32, DeadWindowTokens = 320, LearningRate = 1e-3f }).Train(data);
        for (int i = 0; i < 16; i++) Assert.Equal(1f, System.Numerics.Tensors.TensorPrimitives.Norm(d.P.WDec.AsSpan(i * 8, 8)), 1e-4);
        Assert.Equal(0f, m[5].DeadFraction);
        Assert.True(m[^1].DeadFraction >= 1f / 16, $"dead fraction {m[^1].DeadFraction}");
        Assert.All(m, s => Assert.True(float.IsFinite(s.Loss)));
    }

    [Fact]
    public void SkipTranscoderLearnsALinearMap()
    {
        // target = x·A with a dense A: the skip path alone can fit it.
        const int dIn = 8, dOut = 6, rows = 512;
        var x = Noise(rows * dIn, 3);
        var a = Noise(dIn * dOut, 4);
        var y = new float[rows * dOut];
        Loupe.Tensors.Kernels.Gemm.Sgemm(false, false, rows, dOut, dIn, 0.3f, x, dIn, a, dOut, 0f, y, dOut);
        var d = new SparseDictionary(SaeShape.Transcoder(dIn, 16, dOut, skip: true), new TopKActivation(2));
        d.Initialize(seed: 1);
        var m = new SaeTrainer(d, new SaeTrainingOptions { Steps = 600, BatchSize = 32, LearningRate = 1e-2f, BDecInit = BDecInit.Mean }).Train(x, y);
        Assert.True(m[^1].ExplainedVariance > 0.95, $"explained variance {m[^1].ExplainedVariance}");
    }

    [Fact]
    public void ExpectedAverageNormalisationIsScaleInvariantAfterFolding()
    {
        // Training on x and on 100·x with normalisation sees identical scaled data, so the folded
        // dictionaries give identical activations on their own raw inputs.
        var x = Noise(256 * 8, 6);
        var big = x.Select(v => 100 * v).ToArray();
        (SparseDictionary, SaeTrainer) Run(float[] data)
        {
            var d = new SparseDictionary(SaeShape.Sae(8, 16), new TopKActivation(2));
            d.Initialize(seed: 3);
            var t = new SaeTrainer(d, new SaeTrainingOptions { Steps = 30, BatchSize = 16, NormalizeExpectedAverage = true });
            t.Train(data);
            return (d, t);
        }
        var (a, ta) = Run(x);
        var (b, tb) = Run(big);
        Assert.Equal(ta.ScalingFactor / 100, tb.ScalingFactor, 1e-4f * ta.ScalingFactor);
        var actsA = a.Encode(x.AsSpan(0, 32 * 8), 32);
        var actsB = b.Encode(big.AsSpan(0, 32 * 8), 32);
        for (int i = 0; i < actsA.Length; i++) Assert.Equal(actsA[i], actsB[i], 1e-3f);
        var reconB = b.Forward(big.AsSpan(0, 8), 1);
        var reconA = a.Forward(x.AsSpan(0, 8), 1);
        for (int i = 0; i < 8; i++) Assert.Equal(100 * reconA[i], reconB[i], 0.1f);
    }

    [Fact]
    public void RejectsDataThatIsNotWholeRows()
    {
        var d = new SparseDictionary(SaeShape.Sae(4, 4), new ReluActivation());
        var t = new SaeTrainer(d, new SaeTrainingOptions { Steps = 1 });
        Assert.Throws<ArgumentException>(() => t.Train(new float[6]));
    }
}

public class SaeFoldScalingTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void FoldedDictionaryOnRawInputMatchesUnfoldedOnScaledInput(bool applyBDec)
    {
        var rng = new Random(5);
        var d = new SparseDictionary(SaeShape.Sae(6, 10, applyBDec), new JumpReluActivation());
        d.Initialize(seed: 2, decoderNorm: 1, initThreshold: 0.01f);
        for (int i = 0; i < 6; i++) d.P.BDec[i] = SparseDictionary.Gaussian(rng);
        var x = Enumerable.Range(0, 4 * 6).Select(_ => 3 * SparseDictionary.Gaussian(rng)).ToArray();
        const float c = 0.25f;
        var scaled = x.Select(v => v * c).ToArray();
        var acts = d.Encode(scaled, 4);
        var recon = d.Forward(scaled, 4);
        d.FoldInputScaling(c);
        var acts2 = d.Encode(x, 4);
        var recon2 = d.Forward(x, 4);
        for (int i = 0; i < acts.Length; i++) Assert.Equal(acts[i], acts2[i], 1e-4f);
        for (int i = 0; i < recon.Length; i++) Assert.Equal(recon[i] / c, recon2[i], 1e-3f);
        Assert.Throws<ArgumentOutOfRangeException>(() => d.FoldInputScaling(0));
    }
}
