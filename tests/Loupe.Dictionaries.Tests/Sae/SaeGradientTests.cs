using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>Analytic gradients against central finite differences, d_in=6, d_sae=10, batch 5.</summary>
public class SaeGradientTests
{
    const int DIn = 6, DSae = 10, Batch = 5;

    public static TheoryData<string> Architectures => new() { "standard", "topk", "batchtopk", "jumprelu", "transcoder", "skip_transcoder", "matryoshka", "matryoshka_skip_transcoder" };

    static SparseDictionary Make(string arch)
    {
        var d = arch switch
        {
            "standard" => new SparseDictionary(SaeShape.Sae(DIn, DSae), new ReluActivation()),
            "topk" => new SparseDictionary(SaeShape.Sae(DIn, DSae), new TopKActivation(3)),
            "batchtopk" => new SparseDictionary(SaeShape.Sae(DIn, DSae), new BatchTopKActivation(3)),
            "jumprelu" => new SparseDictionary(SaeShape.Sae(DIn, DSae), new JumpReluActivation(0.05f)),
            "transcoder" => new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 4), new ReluActivation()),
            "matryoshka" => new SparseDictionary(SaeShape.Sae(DIn, DSae), new MatryoshkaBatchTopKActivation(3, [2, 5, DSae])),
            "matryoshka_skip_transcoder" => new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 4, skip: true), new MatryoshkaBatchTopKActivation(4, [3, DSae])),
            _ => new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 4, skip: true), new ReluActivation()),
        };
        d.Initialize(seed: 1, decoderNorm: 0.7f, initThreshold: 0.05f);
        var rng = new Random(2);
        foreach (var (_, data) in d.P.Trainable(d.Activation))
            if (data != d.P.LogThreshold)
                for (int i = 0; i < data.Length; i++) data[i] += 0.3f * SparseDictionary.Gaussian(rng);
        return d;
    }

    static float[] Random(int n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = SparseDictionary.Gaussian(rng);
        return a;
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void AnalyticGradientMatchesFiniteDifferences(string arch)
    {
        var d = Make(arch);
        var x = Random(Batch * DIn, 3);
        var target = d.Shape.DOut == DIn ? x : Random(Batch * d.Shape.DOut, 4);
        const float lambda = 0.3f;
        var g = new SaeParameters(d.Shape);
        d.ForwardBackward(x, target, Batch, lambda, g);
        var gTensors = g.Trainable(d.Activation).ToDictionary(t => t.Name, t => t.Data);
        int checkedCount = 0;
        foreach (var (name, data) in d.P.Trainable(d.Activation))
        {
            if (name == "log_threshold") continue; // straight-through estimate, not a true derivative: tested below
            for (int i = 0; i < data.Length; i++)
            {
                float keep = data[i];
                const float h = 1e-3f;
                data[i] = keep + h;
                double up = d.ForwardBackward(x, target, Batch, lambda, null).Loss;
                data[i] = keep - h;
                double down = d.ForwardBackward(x, target, Batch, lambda, null).Loss;
                data[i] = keep;
                double fd = (up - down) / (2 * h);
                double an = gTensors[name][i];
                Assert.True(Math.Abs(fd - an) <= 2e-2 + 2e-2 * Math.Abs(fd), $"{arch} {name}[{i}] analytic {an} vs finite difference {fd}");
                checkedCount++;
            }
        }
        Assert.True(checkedCount > 100);
    }

    [Fact]
    public void JumpReluThresholdGradientIsTheRectangleKernelEstimate()
    {
        var d = Make("jumprelu");
        var act = (JumpReluActivation)d.Activation;
        var x = Random(Batch * DIn, 3);
        // Put each θ_i within the kernel window of one pre-activation so the estimate is exercised.
        var xIn = new float[Batch * DIn];
        var p0 = new float[Batch * DSae];
        d.EncodePre(x, Batch, xIn, p0);
        for (int i = 0; i < DSae; i++) d.P.LogThreshold[i] = MathF.Log(MathF.Abs(p0[(i % Batch) * DSae + i]) + 0.01f);
        const float lambda = 0.3f;
        var g = new SaeParameters(d.Shape);
        d.ForwardBackward(x, x, Batch, lambda, g);

        // Independent evaluation: pre and err in double, then the Gemma Scope pseudo-derivative.
        double[,] pre = new double[Batch, DSae], err = new double[Batch, DIn];
        for (int b = 0; b < Batch; b++)
            for (int i = 0; i < DSae; i++)
            {
                double s = d.P.BEnc[i];
                for (int j = 0; j < DIn; j++) s += (x[b * DIn + j] - d.P.BDec[j]) * d.P.WEnc[j * DSae + i];
                pre[b, i] = s;
            }
        for (int b = 0; b < Batch; b++)
            for (int j = 0; j < DIn; j++)
            {
                double s = d.P.BDec[j] - x[b * DIn + j];
                for (int i = 0; i < DSae; i++)
                    if (pre[b, i] > Math.Exp(d.P.LogThreshold[i])) s += pre[b, i] * d.P.WDec[i * DIn + j];
                err[b, j] = s;
            }
        int inWindow = 0;
        for (int i = 0; i < DSae; i++)
        {
            double theta = Math.Exp(d.P.LogThreshold[i]), eps = act.Bandwidth, dTheta = 0;
            for (int b = 0; b < Batch; b++)
            {
                if (Math.Abs((pre[b, i] - theta) / eps) >= 0.5) continue;
                inWindow++;
                double dAct = 0;
                for (int j = 0; j < DIn; j++) dAct += 2 * err[b, j] / Batch * d.P.WDec[i * DIn + j];
                dTheta += dAct * (-theta / eps) - lambda / Batch / eps;
            }
            Assert.Equal(dTheta * theta, g.LogThreshold[i], 1e-3 * Math.Max(1, Math.Abs(dTheta * theta)));
        }
        Assert.True(inWindow > 0, "no pre-activation fell inside the kernel window: the test checks nothing");
    }
}

/// <summary>TopK auxiliary loss: finite differences on parameters that only the auxiliary path sees.</summary>
public class SaeAuxKTests
{
    [Fact]
    public void AuxKGradientMatchesFiniteDifferencesOnDeadFeatureParameters()
    {
        const int dIn = 6, dSae = 10, batch = 5, k = 2;
        var d = new SparseDictionary(SaeShape.Sae(dIn, dSae), new TopKActivation(k));
        d.Initialize(seed: 1, decoderNorm: 0.7f);
        var rng = new Random(2);
        foreach (var (_, data) in d.P.Trainable(d.Activation)) for (int i = 0; i < data.Length; i++) data[i] += 0.3f * SparseDictionary.Gaussian(rng);
        // Features 0 and 1 always win the main top-k; features 2..9 are "dead" and positive enough to feed the aux path.
        d.P.BEnc[0] = d.P.BEnc[1] = 20f;
        for (int j = 0; j < 2 * dIn; j++) d.P.WDec[j] *= 0.05f; // keep their large activations from dominating the loss (float precision)
        for (int i = k; i < dSae; i++) d.P.BEnc[i] += 1.5f;
        var dead = Enumerable.Range(0, dSae).Select(i => i >= k).ToArray();
        var x = Enumerable.Range(0, batch * dIn).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
        const float coef = 0.5f;
        var g = new SaeParameters(d.Shape);
        var l = d.ForwardBackward(x, x, batch, 0, g, deadFeatures: dead, auxKCoefficient: coef);
        Assert.True(l.AuxK > 0);

        void Check(float[] p, float[] gp, int i)
        {
            float keep = p[i];
            const float h = 1e-3f;
            p[i] = keep + h;
            double up = d.ForwardBackward(x, x, batch, 0, null, deadFeatures: dead, auxKCoefficient: coef).Loss;
            p[i] = keep - h;
            double down = d.ForwardBackward(x, x, batch, 0, null, deadFeatures: dead, auxKCoefficient: coef).Loss;
            p[i] = keep;
            double fd = (up - down) / (2 * h);
            Assert.True(Math.Abs(fd - gp[i]) <= 2e-2 + 2e-2 * Math.Abs(fd), $"[{i}] analytic {gp[i]} vs finite difference {fd}");
        }
        int n = 0;
        for (int i = k; i < dSae; i++)
        {
            Check(d.P.BEnc, g.BEnc, i); n++;
            for (int j = 0; j < dIn; j++) { Check(d.P.WEnc, g.WEnc, j * dSae + i); Check(d.P.WDec, g.WDec, i * dIn + j); n += 2; }
        }
        Assert.True(g.BEnc.Skip(k).Any(v => v != 0), "aux path produced no gradient");
        Assert.Equal(8 * 13, n);
    }
}
