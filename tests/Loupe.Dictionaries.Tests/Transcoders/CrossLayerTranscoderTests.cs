using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// The CLT's maths on a tiny transcoder: gradients against central finite differences, the forward against a
/// plain loop over (source, target) pairs, joint training against a teacher CLT, and bit-exact resume.
/// </summary>
public class CrossLayerTranscoderTests(ITestOutputHelper output)
{
    internal static float[] Gaussian(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => SparseDictionary.Gaussian(rng) * scale).ToArray();
    }

    internal static CrossLayerTranscoder Random(CltShape shape, SaeActivation activation, int seed)
    {
        var clt = new CrossLayerTranscoder(shape, activation);
        clt.Initialize(seed, decoderNorm: 1f, initThreshold: 0.05f);
        var rng = new Random(seed + 1);
        for (int l = 0; l < shape.Layers; l++)
        {
            for (int i = 0; i < shape.DSae; i++) clt.P.BEnc[l][i] = SparseDictionary.Gaussian(rng) * 0.1f;
            for (int j = 0; j < shape.DOut; j++) clt.P.BDec[l][j] = SparseDictionary.Gaussian(rng) * 0.1f;
            for (int i = 0; i < clt.P.WEnc[l].Length; i++) clt.P.WEnc[l][i] *= 3f;
        }
        return clt;
    }

    public static TheoryData<string> Activations => new() { "relu-tanh", "relu-l1", "topk", "batchtopk", "jumprelu" };

    static (SaeActivation Act, CltPenalty Penalty) Parse(string name) => name switch
    {
        "relu-tanh" => (new ReluActivation(), CltPenalty.Tanh),
        "relu-l1" => (new ReluActivation(), CltPenalty.L1),
        "topk" => (new TopKActivation(2), CltPenalty.Tanh),
        "batchtopk" => (new BatchTopKActivation(2), CltPenalty.Tanh),
        _ => (new JumpReluActivation(), CltPenalty.Tanh),
    };

    [Theory]
    [MemberData(nameof(Activations))]
    public void GradientsMatchFiniteDifferences(string activation)
    {
        var (act, penalty) = Parse(activation);
        var shape = new CltShape(Layers: 3, DIn: 4, DSae: 5, DOut: 3);
        var clt = Random(shape, act, seed: 7);
        const int batch = 6;
        var x = Gaussian(batch * shape.RowIn, 11);
        var y = Gaussian(batch * shape.RowOut, 12);
        const float lambda = 0.3f, c = 2f;
        var grad = new CltParameters(shape);
        clt.ForwardBackward(x, y, batch, lambda, penalty, c, grad, training: true);
        double Loss() => clt.ForwardBackward(x, y, batch, lambda, penalty, c, null, training: true).Loss;

        int checkedCount = 0, worst = 0;
        double worstError = 0;
        foreach (var ((name, p), (_, g)) in clt.P.Trainable(act).Zip(grad.Trainable(act)))
        {
            if (name.StartsWith("log_threshold", StringComparison.Ordinal)) continue; // a straight-through estimate, not a derivative
            for (int i = 0; i < p.Length; i++)
            {
                float keep = p[i];
                const float eps = 1e-2f;
                p[i] = keep + eps; double plus = Loss();
                p[i] = keep - eps; double minus = Loss();
                p[i] = keep;
                double numeric = (plus - minus) / (2 * eps);
                double error = Math.Abs(numeric - g[i]) / Math.Max(1, Math.Abs(numeric));
                if (error > worstError) { worstError = error; worst = checkedCount; }
                Assert.True(error < 5e-3, $"{activation} {name}[{i}]: analytic {g[i]:G6}, numeric {numeric:G6}");
                checkedCount++;
            }
        }
        output.WriteLine($"{activation}: {checkedCount} gradients, worst relative error {worstError:G3} (#{worst})");
    }

    [Fact]
    public void ReconstructionIsTheSumOverSourceLayersOfTheirDecoders()
    {
        var shape = new CltShape(3, 4, 5, 3);
        var clt = Random(shape, new ReluActivation(), seed: 3);
        const int rows = 4;
        var x = Gaussian(rows * shape.RowIn, 5);
        var acts = new float[shape.Layers][];
        for (int l = 0; l < shape.Layers; l++)
        {
            var xl = new float[rows * shape.DIn];
            for (int r = 0; r < rows; r++) x.AsSpan(r * shape.RowIn + l * shape.DIn, shape.DIn).CopyTo(xl.AsSpan(r * shape.DIn));
            acts[l] = new float[rows * shape.DSae];
            clt.Encode(l, xl, rows, new float[rows * shape.DSae], acts[l]);
            // acts = relu(x·W_enc + b_enc), from the encoder directions
            var dir = new float[shape.DIn];
            for (int f = 0; f < shape.DSae; f++)
            {
                clt.EncoderDirection(l, f, dir);
                for (int r = 0; r < rows; r++)
                {
                    double pre = clt.P.BEnc[l][f];
                    for (int j = 0; j < shape.DIn; j++) pre += xl[r * shape.DIn + j] * dir[j];
                    Assert.InRange(acts[l][r * shape.DSae + f], Math.Max(pre, 0) - 1e-5, Math.Max(pre, 0) + 1e-5);
                }
            }
        }
        var dec = new float[shape.DOut];
        for (int t = 0; t < shape.Layers; t++)
        {
            var recon = new float[rows * shape.DOut];
            clt.Reconstruct(t, acts, [], rows, recon);
            for (int r = 0; r < rows; r++)
            {
                var expected = clt.P.BDec[t].Select(v => (double)v).ToArray();
                for (int l = 0; l <= t; l++)
                    for (int f = 0; f < shape.DSae; f++)
                    {
                        clt.DecoderDirection(l, f, t, dec);
                        for (int j = 0; j < shape.DOut; j++) expected[j] += acts[l][r * shape.DSae + f] * dec[j];
                    }
                for (int j = 0; j < shape.DOut; j++) Assert.InRange(recon[r * shape.DOut + j], expected[j] - 1e-5, expected[j] + 1e-5);
            }
        }
        Assert.Equal(shape.Layers - 1, clt.LastTarget(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => clt.DecoderDirection(2, 0, 1, dec));
    }

    /// <summary>Rows whose targets a teacher CLT wrote: a student of the same size can fit them.</summary>
    internal static (float[] X, float[] Y) TeacherRows(CltShape shape, int rows, int seed)
    {
        var teacher = Random(shape, new ReluActivation(), seed);
        var x = Gaussian(rows * shape.RowIn, seed + 100);
        var y = new float[rows * shape.RowOut];
        var acts = new float[shape.Layers][];
        for (int l = 0; l < shape.Layers; l++)
        {
            var xl = new float[rows * shape.DIn];
            for (int r = 0; r < rows; r++) x.AsSpan(r * shape.RowIn + l * shape.DIn, shape.DIn).CopyTo(xl.AsSpan(r * shape.DIn));
            acts[l] = new float[rows * shape.DSae];
            teacher.Encode(l, xl, rows, new float[rows * shape.DSae], acts[l]);
        }
        for (int t = 0; t < shape.Layers; t++)
        {
            var recon = new float[rows * shape.DOut];
            teacher.Reconstruct(t, acts, [], rows, recon);
            for (int r = 0; r < rows; r++) recon.AsSpan(r * shape.DOut, shape.DOut).CopyTo(y.AsSpan(r * shape.RowOut + t * shape.DOut));
        }
        return (x, y);
    }

    [Theory]
    [MemberData(nameof(Activations))]
    public void JointTrainingFitsATeacherClt(string activation)
    {
        var (act, penalty) = Parse(activation);
        var shape = new CltShape(3, 8, 16, 6);
        var (x, y) = TeacherRows(shape, 1024, seed: 21);
        if (act is TopKActivation or BatchTopKActivation) act = act is TopKActivation ? new TopKActivation(6) : new BatchTopKActivation(6);
        var clt = new CrossLayerTranscoder(shape, act);
        clt.Initialize(seed: 1);
        var trainer = new CltTrainer(clt, new CltTrainingOptions
        {
            Base = new SaeTrainingOptions { Steps = 300, BatchSize = 64, LearningRate = 1e-2f, SparsityCoefficient = 1e-4f, BDecInit = BDecInit.Mean, Seed = 2 },
            Penalty = penalty,
        });
        var metrics = trainer.Train(x, y);
        float first = metrics.Take(5).Average(m => m.Mse), last = metrics.TakeLast(5).Average(m => m.Mse);
        output.WriteLine($"{activation}: MSE {first:F4} → {last:F4}; EV per layer {string.Join(", ", metrics[^1].ExplainedVariance.Select(e => e.ToString("F3")))}; L0 {metrics[^1].L0:F1}");
        Assert.True(last < 0.5f * first, $"MSE {first} → {last}");
        Assert.All(metrics[^1].ExplainedVariance, ev => Assert.True(ev > 0.5f, $"explained variance {ev}"));
    }

    [Theory]
    [InlineData("relu-tanh")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    public void ResumingFromACheckpointIsBitIdentical(string activation)
    {
        var (act, penalty) = Parse(activation);
        var shape = new CltShape(3, 8, 16, 6);
        var (x, y) = TeacherRows(shape, 200, seed: 4);   // 200 rows, batch 48: windows carry rows across epochs
        var options = new CltTrainingOptions
        {
            Base = new SaeTrainingOptions { Steps = 20, BatchSize = 48, LearningRate = 5e-3f, SparsityCoefficient = 1e-3f, LrWarmupSteps = 3, Seed = 9 },
            Penalty = penalty,
        };
        CltTrainer Fresh()
        {
            var c = new CrossLayerTranscoder(shape, act is BatchTopKActivation ? new BatchTopKActivation(4) : act);
            c.Initialize(seed: 5);
            return new CltTrainer(c, options);
        }
        var rows = () => new InMemoryRows(x, shape.RowIn, y, shape.RowOut);

        var straight = Fresh();
        straight.Begin(rows());
        while (!straight.IsComplete) straight.Step();

        string dir = Directory.CreateTempSubdirectory("loupe-clt-resume").FullName;
        try
        {
            string checkpoint = Path.Combine(dir, "checkpoint.safetensors");
            var first = Fresh();
            first.Begin(rows());
            for (int i = 0; i < 7; i++) first.Step();
            first.SaveCheckpoint(checkpoint);

            var resumed = Fresh();
            resumed.Transcoder.Initialize(seed: 99); // overwritten by the checkpoint
            resumed.LoadCheckpoint(checkpoint, rows());
            Assert.Equal(7, resumed.StepsDone);
            while (!resumed.IsComplete) resumed.Step();

            foreach (var ((name, a), (_, b)) in straight.Transcoder.P.All().Zip(resumed.Transcoder.P.All()))
                Assert.True(a.AsSpan().SequenceEqual(b), $"{name} differs after resume");
            Assert.Equal(straight.Transcoder.Fingerprint, resumed.Transcoder.Fingerprint);

            // another run's settings are refused, naming the difference
            var other = new CltTrainer(new CrossLayerTranscoder(shape, new TopKActivation(3)), options);
            var e = Assert.Throws<InputError>(() => other.LoadCheckpoint(checkpoint, rows()));
            Assert.Contains("architecture", e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}

/// <summary>The folder-level run: cancelled part-way and resumed, it ends with the weights of an uninterrupted run.</summary>
public class CltTrainingRunTests
{
    [Fact]
    public void ACancelledRunResumedInItsFolderEndsBitIdenticalAndSavesTheClt()
    {
        var shape = new CltShape(3, 8, 16, 8);
        var (x, y) = CrossLayerTranscoderTests.TeacherRows(shape, 300, seed: 8);
        var options = new CltTrainingOptions { Base = new SaeTrainingOptions { Steps = 30, BatchSize = 40, LearningRate = 5e-3f, SparsityCoefficient = 1e-3f, Seed = 1 } };
        CltTrainer Fresh()
        {
            var c = new CrossLayerTranscoder(shape, new ReluActivation());
            c.Initialize(seed: 2);
            return new CltTrainer(c, options);
        }
        var rows = () => new InMemoryRows(x, shape.RowIn, y, shape.RowOut);
        string root = Directory.CreateTempSubdirectory("loupe-clt-run").FullName;
        try
        {
            string straight = Path.Combine(root, "straight"), killed = Path.Combine(root, "killed");
            CltTrainingRun.Run(Fresh(), rows(), straight, checkpointEvery: 7, resume: false, circuitTracer: true);

            using var cancel = new CancellationTokenSource();
            var progress = new SyncProgress(m => { if (m.Step == 15) cancel.Cancel(); });
            Assert.Throws<OperationCanceledException>(() => CltTrainingRun.Run(Fresh(), rows(), killed, 7, false, progress: progress, cancellationToken: cancel.Token));
            Assert.Throws<InputError>(() => CltTrainingRun.Run(Fresh(), rows(), killed, 7, resume: false));
            CltTrainingRun.Run(Fresh(), rows(), killed, 7, resume: true);

            var a = CltFiles.Load(straight);
            var b = CltFiles.Load(killed);
            foreach (var ((name, pa), (_, pb)) in a.P.All().Zip(b.P.All())) Assert.True(pa.AsSpan().SequenceEqual(pb), $"{name} differs");
            Assert.Equal(30, File.ReadAllLines(Path.Combine(killed, CltTrainingRun.LogFile)).Length);
            Assert.Equal(a.Fingerprint, CltFiles.Load(Path.Combine(straight, CltTrainingRun.CircuitTracerFolder)).Fingerprint);
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    sealed class SyncProgress(Action<CltStepMetrics> report) : IProgress<CltStepMetrics>
    {
        public void Report(CltStepMetrics value) => report(value);
    }
}
