using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;
using R = Loupe.Tensors.Kernels.Reference.ReferenceKernels;

namespace Loupe.Tensors.Tests;

/// <summary>
/// Every backward reference twin against central finite differences of its forward twin, all in double:
/// for a random cotangent g, the gradient of <c>L = Σ g ⊙ forward(x)</c> is what the backward twin returns for dy = g.
/// The backends are tested against these twins, so the twins themselves are checked against the calculus.
/// </summary>
public class ReferenceTwinGradientTests
{
    const double Step = 1e-5, Atol = 1e-7, Rtol = 1e-6;

    static double[] Random(Random rng, int n, double lo = -1, double hi = 1)
    {
        var a = new double[n];
        for (int i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.NextDouble();
        return a;
    }

    static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>Central differences of <paramref name="loss"/> in each element of <paramref name="x"/> (restored afterwards).</summary>
    static double[] NumericGradient(Func<double> loss, double[] x)
    {
        var grad = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double keep = x[i];
            x[i] = keep + Step;
            double up = loss();
            x[i] = keep - Step;
            double down = loss();
            x[i] = keep;
            grad[i] = (up - down) / (2 * Step);
        }
        return grad;
    }

    static void AssertClose(double[] expected, double[] actual, string what, double atol = Atol, double rtol = Rtol)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double allowed = atol + rtol * Math.Abs(expected[i]);
            Assert.True(Math.Abs(actual[i] - expected[i]) <= allowed,
                $"{what}[{i}]: finite differences give {expected[i]:R}, the backward twin {actual[i]:R} (allowed ±{allowed:E1})");
        }
    }

    public static TheoryData<string> ActivationNames => new(R.ActivationNames);

    [Theory]
    [MemberData(nameof(ActivationNames))]
    public void ActivationBackward(string name)
    {
        var rng = new Random(name.GetHashCode(StringComparison.Ordinal) & 0xffff);
        var x = Random(rng, 24, -5, 5);
        for (int i = 0; i < x.Length; i++) if (Math.Abs(x[i]) < 1e-3) x[i] = 0.5; // relu's kink
        var g = Random(rng, x.Length);
        var y = new double[x.Length];
        double Loss() { R.Activation(name, x, y); return Dot(g, y); }
        var dx = new double[x.Length];
        R.ActivationBackward(name, x, g, dx);
        AssertClose(NumericGradient(Loss, x), dx, $"{name} backward");
    }

    [Fact]
    public void SoftCapBackward()
    {
        var rng = new Random(71);
        const double cap = 3;
        var a = Random(rng, 17, -10, 10);
        var g = Random(rng, a.Length);
        var y = new double[a.Length];
        double Loss() { R.SoftCap(a, cap, y); return Dot(g, y); }
        var capped = new double[a.Length];
        R.SoftCap(a, cap, capped);
        var dx = new double[a.Length];
        R.SoftCapBackward(capped, g, cap, dx);
        AssertClose(NumericGradient(Loss, a), dx, "soft-cap backward");

        R.SoftCapBackward([double.NegativeInfinity], [1.0], cap, dx.AsSpan(0, 1));
        Assert.Equal(0, dx[0]);
    }

    [Theory]
    [InlineData(true, false, 0.0, false)]
    [InlineData(true, true, 0.0, true)]
    [InlineData(true, true, 1.0, true)]
    [InlineData(false, false, 0.0, false)]
    [InlineData(false, true, 1.0, false)]
    [InlineData(false, true, 0.5, true)]
    public void NormBackward(bool center, bool hasWeight, double weightOffset, bool hasBias)
    {
        var rng = new Random(72 + (center ? 1 : 0) + (hasWeight ? 2 : 0) + (hasBias ? 4 : 0) + (int)(weightOffset * 8));
        const int rows = 3, d = 7;
        const double eps = 1e-3;
        var x = Random(rng, rows * d, -2, 2);
        var w = hasWeight ? Random(rng, d, 0.5, 1.5) : [];
        var b = hasBias ? Random(rng, d) : [];
        var g = Random(rng, rows * d);
        var u = Random(rng, rows); // a hook's gradient on hook_scale, added to the one from y
        var y = new double[rows * d];
        var sigma = new double[rows];
        double Loss() { R.Norm(center, x, rows, d, w, weightOffset, b, eps, y, sigma); return Dot(g, y) + Dot(u, sigma); }

        R.Norm(center, x, rows, d, w, weightOffset, b, eps, y, sigma);
        var dScale = new double[rows];
        R.NormBackwardScale(center, x, sigma, g, rows, d, w, weightOffset, dScale);
        for (int r = 0; r < rows; r++) dScale[r] += u[r];
        var dx = new double[rows * d];
        R.NormBackwardInput(center, x, sigma, g, dScale, rows, d, w, weightOffset, dx);
        AssertClose(NumericGradient(Loss, x), dx, "norm backward to x");

        // The scale half alone: d/dσ of NormWithScale's output.
        var fixedScale = (double[])sigma.Clone();
        double ScaleLoss() { R.NormWithScale(center, x, rows, d, w, weightOffset, b, fixedScale, y); return Dot(g, y); }
        var dScaleOnly = new double[rows];
        R.NormBackwardScale(center, x, fixedScale, g, rows, d, w, weightOffset, dScaleOnly);
        AssertClose(NumericGradient(ScaleLoss, fixedScale), dScaleOnly, "norm backward to the scale");
    }

    [Fact]
    public void NormWithItsOwnScaleIsNorm()
    {
        var rng = new Random(73);
        var x = Random(rng, 2 * 9);
        var w = Random(rng, 9);
        var b = Random(rng, 9);
        var y = new double[x.Length];
        var again = new double[x.Length];
        var sigma = new double[2];
        R.Norm(true, x, 2, 9, w, 1, b, 1e-5, y, sigma);
        R.NormWithScale(true, x, 2, 9, w, 1, b, sigma, again);
        AssertClose(y, again, "NormWithScale(σ)", 1e-15, 1e-14);
    }

    [Fact]
    public void SoftmaxBackward()
    {
        var rng = new Random(74);
        const int rows = 3, n = 6;
        var x = Random(rng, rows * n, -3, 3);
        var g = Random(rng, x.Length);
        var p = new double[x.Length];
        double Loss() { R.SoftmaxRows(x, rows, n, p); return Dot(g, p); }
        R.SoftmaxRows(x, rows, n, p);
        var dx = new double[x.Length];
        R.SoftmaxBackwardRows(p, g, rows, n, dx);
        AssertClose(NumericGradient(Loss, x), dx, "softmax backward");
    }

    [Fact]
    public void LogSoftmaxIsTheLogOfSoftmax()
    {
        var rng = new Random(75);
        var x = Random(rng, 2 * 5, -30, 30);
        var p = new double[x.Length];
        var logP = new double[x.Length];
        R.SoftmaxRows(x, 2, 5, p);
        R.LogSoftmaxRows(x, 2, 5, logP);
        AssertClose(p.Select(v => Math.Log(v)).ToArray(), logP, "log-softmax", 1e-12, 1e-12);
    }

    [Fact]
    public void CrossEntropyGradient()
    {
        var rng = new Random(76);
        const int rows = 4, n = 5;
        const double weight = 0.25;
        var x = Random(rng, rows * n, -2, 2);
        int[] targets = [3, -1, 0, 4];
        var loss = new double[rows];
        double Loss() { R.CrossEntropyRows(x, rows, n, targets, loss, default, weight); return weight * loss.Sum(); }
        var dLogits = new double[x.Length];
        R.CrossEntropyRows(x, rows, n, targets, loss, dLogits, weight);
        Assert.Equal(0, loss[1]);
        Assert.All(dLogits.AsSpan(n, n).ToArray(), v => Assert.Equal(0, v));
        var logP = new double[x.Length];
        R.LogSoftmaxRows(x, rows, n, logP);
        Assert.InRange(loss[0] + logP[3], -1e-12, 1e-12);
        AssertClose(NumericGradient(Loss, x), dLogits, "cross-entropy gradient");
    }

    [Fact]
    public void RotaryInverseIsTheBackward()
    {
        var rng = new Random(77);
        const int rows = 3, heads = 2, headDim = 10, rotaryDim = 6;
        int[] positions = [0, 5, 17];
        var x = Random(rng, rows * heads * headDim);
        var g = Random(rng, x.Length);
        var rotated = new double[x.Length];
        double Loss() { x.CopyTo(rotated, 0); R.Rotary(rotated, rows, heads, headDim, rotaryDim, 1e4, positions, inverse: false); return Dot(g, rotated); }
        var dx = (double[])g.Clone();
        R.Rotary(dx, rows, heads, headDim, rotaryDim, 1e4, positions, inverse: true);
        AssertClose(NumericGradient(Loss, x), dx, "rotary backward");

        var roundTrip = (double[])x.Clone();
        R.Rotary(roundTrip, rows, heads, headDim, rotaryDim, 1e4, positions, inverse: false);
        R.Rotary(roundTrip, rows, heads, headDim, rotaryDim, 1e4, positions, inverse: true);
        AssertClose(x, roundTrip, "inverse ∘ rotary", 1e-14, 1e-13);
    }

    static readonly AttentionShape Gqa = new(Batch: 2, QueryLen: 3, KeyLen: 4, Heads: 4, KvHeads: 2, DHead: 5);

    [Fact]
    public void AttentionApplyBackward()
    {
        var rng = new Random(78);
        var s = Gqa;
        var pattern = Random(rng, s.Batch * s.Heads * s.QueryLen * s.KeyLen, 0, 1);
        var v = Random(rng, s.Batch * s.KeyRows * s.KvHeads * s.DHead);
        var g = Random(rng, s.Batch * s.QueryLen * s.Heads * s.DHead);
        var z = new double[g.Length];
        double Loss() { R.AttentionApply(pattern, v, s, z); return Dot(g, z); }
        var dPattern = new double[pattern.Length];
        var dv = new double[v.Length];
        Array.Fill(dv, double.NaN); // written, not accumulated
        R.AttentionApplyBackward(g, pattern, v, s, dPattern, dv);
        AssertClose(NumericGradient(Loss, pattern), dPattern, "dPattern");
        AssertClose(NumericGradient(Loss, v), dv, "dv");
    }

    [Fact]
    public void AttentionScoresBackward()
    {
        var rng = new Random(79);
        var s = Gqa;
        const double scale = 0.4;
        // Query 0 at position KeyLen − 1 sees every key, so the scores are the raw product everywhere.
        var mask = new AttentionMask(QueryOffset: s.KeyLen - 1);
        var q = Random(rng, s.Batch * s.QueryLen * s.Heads * s.DHead);
        var k = Random(rng, s.Batch * s.KeyRows * s.KvHeads * s.DHead);
        var g = Random(rng, s.Batch * s.Heads * s.QueryLen * s.KeyLen);
        var scores = new double[g.Length];
        double Loss() { R.AttentionScores(q, k, s, scale, mask, scores); return Dot(g, scores); }
        var dq = new double[q.Length];
        var dk = new double[k.Length];
        Array.Fill(dk, double.NaN);
        R.AttentionScoresBackward(g, q, k, s, scale, dq, dk);
        AssertClose(NumericGradient(Loss, q), dq, "dq");
        AssertClose(NumericGradient(Loss, k), dk, "dk");
    }

    [Fact]
    public void AttentionTwinsComposeToTheOneLoopAttention()
    {
        var rng = new Random(80);
        var s = new AttentionShape(Batch: 2, QueryLen: 5, KeyLen: 5, Heads: 4, KvHeads: 2, DHead: 3);
        var mask = new AttentionMask(SlidingWindow: 3, SoftCap: 2f, KeyValid: [true, true, false, true, true, false, true, true, true, true]);
        var q = TestRandom.Uniform(rng, s.Batch * s.QueryLen * s.Heads * s.DHead);
        var k = TestRandom.Uniform(rng, s.Batch * s.KeyLen * s.KvHeads * s.DHead);
        var v = TestRandom.Uniform(rng, k.Length);
        var pattern = new float[s.Batch * s.Heads * s.QueryLen * s.KeyLen];
        var z = new float[q.Length];
        R.Attention(q, k, v, s.Batch, s.QueryLen, s.KeyLen, s.Heads, s.KvHeads, s.DHead, 0.7f, mask, pattern, z);

        var scores = new double[pattern.Length];
        var p = new double[pattern.Length];
        var zz = new double[z.Length];
        R.AttentionScores(ToDouble(q), ToDouble(k), s, 0.7, mask, scores);
        R.SoftmaxRows(scores, s.Batch * s.Heads * s.QueryLen, s.KeyLen, p);
        R.AttentionApply(p, ToDouble(v), s, zz);
        Close.All(pattern, p.Select(e => (float)e).ToArray(), 1e-7, 1e-6, "pattern");
        Close.All(z, zz.Select(e => (float)e).ToArray(), 1e-7, 1e-6, "z");
    }

    [Fact]
    public void EmbeddingBackward()
    {
        var rng = new Random(81);
        const int vocab = 5, d = 3;
        const double scale = 1.5;
        int[] ids = [2, 0, 2, 4, 2];
        var table = Random(rng, vocab * d);
        var g = Random(rng, ids.Length * d);
        var y = new double[g.Length];
        double Loss() { R.Embedding(table, d, ids, scale, y); return Dot(g, y); }
        var dTable = new double[table.Length];
        R.EmbeddingBackward(g, d, ids, scale, dTable);
        AssertClose(NumericGradient(Loss, table), dTable, "dTable");
    }

    [Fact]
    public void BatchedGemmIsEachProductOfTheFloatTwin()
    {
        var rng = new Random(82);
        const int m = 3, n = 4, k = 5, batch = 3;
        var a = TestRandom.Uniform(rng, 2 + batch * m * k);
        var b = TestRandom.Uniform(rng, k * n); // stride 0: one B for every product
        var c = new double[1 + batch * m * n];
        R.GemmBatched(true, false, m, n, k, 2, ToDouble(a), 2, m, m * k, ToDouble(b), 0, n, 0, 0, c, 1, n, m * n, batch);
        for (int i = 0; i < batch; i++)
        {
            var expected = new float[m * n];
            R.Sgemm(true, false, m, n, k, 2f, a.AsSpan(2 + i * m * k), m, b, n, 0f, expected, n);
            Close.All(expected, c.Skip(1 + i * m * n).Take(m * n).Select(e => (float)e).ToArray(), 1e-6, 1e-6, $"product {i}");
        }
    }

    [Fact]
    public void AdamFirstStepMovesEachParameterByTheLearningRate()
    {
        // At step 1, m̂ = g and v̂ = g², so the update is lr·g/(|g| + eps) ≈ lr·sign(g).
        double[] p = [1, 1, 1], g = [0.5, -2, 1e-3], m = new double[3], v = new double[3];
        R.AdamStep(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 1);
        for (int i = 0; i < 3; i++) Assert.InRange(p[i], 1 - 0.1 * Math.Sign(g[i]) - 1e-5, 1 - 0.1 * Math.Sign(g[i]) + 1e-5);
    }

    [Fact]
    public void TopKBreaksTiesTowardsTheLowerIndex()
    {
        float[] x = [1, 3, 3, float.NaN, 2, 3];
        var values = new float[4];
        var indices = new int[4];
        R.TopKRows(x, 1, 6, 4, values, indices);
        Assert.Equal([1, 2, 5, 4], indices);
        Assert.Equal([3f, 3f, 3f, 2f], values);
        Assert.Equal([1], R.ArgMaxRows(x.AsSpan(0, 3), 1, 3));
        Assert.Equal(3, R.IndexOfNonFinite(x));
    }

    static double[] ToDouble(float[] a) => a.Select(v => (double)v).ToArray();
}
