using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Tests.Devices;
using Loupe.Dictionaries.Tests.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// CltTrainer on a device (the GPU kernels on ILGPU's CPU accelerator) against the same trainer on the host: every
/// activation (standard with the tanh and the L1 penalty, TopK, BatchTopK, JumpReLU) with warm-up, decay, clipping and
/// dead features; resume from a device checkpoint; and what a step copies.
/// </summary>
public sealed class DeviceCltTrainingTests(EmulatedSaeBackendFixture fixture) : IClassFixture<EmulatedSaeBackendFixture>, IDisposable
{
    static readonly CltShape Shape = new(Layers: 3, DIn: 8, DSae: 24, DOut: 6);
    const int Batch = 16, Rows = 128, Steps = 8;
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-device-clt-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    static (SaeActivation Act, CltPenalty Penalty, float Lambda) Parse(string kind) => kind switch
    {
        "relu-tanh" => (new ReluActivation(), CltPenalty.Tanh, 0.3f),
        "relu-l1" => (new ReluActivation(), CltPenalty.L1, 0.3f),
        "topk" => (new TopKActivation(3), CltPenalty.Tanh, 0f),
        "batchtopk" => (new BatchTopKActivation(3, momentum: 0.2f), CltPenalty.Tanh, 0f),
        // a bandwidth at the scale of the pre-activations, so that the straight-through window holds entries
        "jumprelu" => (new JumpReluActivation(bandwidth: 0.2f), CltPenalty.Tanh, 0.05f),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    static CrossLayerTranscoder NewClt(string kind)
    {
        var clt = new CrossLayerTranscoder(Shape, Parse(kind).Act);
        clt.Initialize(seed: 3, decoderNorm: 1f, initThreshold: 0.1f);
        return clt;
    }

    // Dead features within two batches; a schedule with warm-up and decay; a clip that binds.
    static CltTrainingOptions Options(string kind) => new()
    {
        Base = new SaeTrainingOptions
        {
            Steps = Steps, BatchSize = Batch, LearningRate = 3e-3f, LrWarmupSteps = 2, LrDecayFraction = 0.25f,
            SparsityCoefficient = Parse(kind).Lambda, SparsityWarmupSteps = 3, DeadWindowTokens = 2 * Batch,
            GradClipNorm = 0.5f, BDecInit = BDecInit.Mean, Seed = 9,
        },
        Penalty = Parse(kind).Penalty,
        TanhScale = 2f,
    };

    static IRowWindows Data()
    {
        var x = CrossLayerTranscoderTests.Gaussian(Rows * Shape.RowIn, 1, 0.7f);
        var y = CrossLayerTranscoderTests.Gaussian(Rows * Shape.RowOut, 2, 0.5f);
        for (int i = 0; i < y.Length; i++) y[i] += 0.1f * x[i % x.Length];
        return new InMemoryRows(x, Shape.RowIn, y, Shape.RowOut);
    }

    [Theory]
    [InlineData("relu-tanh")]
    [InlineData("relu-l1")]
    [InlineData("topk")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    public void DeviceTrainingMatchesHostTrainingStepByStep(string kind)
    {
        var host = new CltTrainer(NewClt(kind), Options(kind));
        var device = new CltTrainer(NewClt(kind), Options(kind), fixture.Backend);
        Assert.Equal(DeviceKind.Emulated, device.Device.Kind);
        host.Begin(Data());
        device.Begin(Data());
        bool sawDead = false;
        for (int t = 0; t < Steps; t++)
        {
            var h = host.Step();
            var d = device.Step();
            DeviceTrainingChecks.Close(h.Loss, d.Loss, 2e-3, 1e-6, $"step {t} loss");
            DeviceTrainingChecks.Close(h.Mse, d.Mse, 2e-3, 1e-6, $"step {t} mse");
            DeviceTrainingChecks.Close(h.Sparsity, d.Sparsity, 2e-3, 1e-6, $"step {t} sparsity");
            DeviceTrainingChecks.Close(h.L0, d.L0, 0, 1e-6, $"step {t} L0");
            for (int l = 0; l < Shape.Layers; l++) DeviceTrainingChecks.Close(h.ExplainedVariance[l], d.ExplainedVariance[l], 1e-3, 1e-4, $"step {t} explained variance {l}");
            DeviceTrainingChecks.Close(h.DeadFraction, d.DeadFraction, 0, 0, $"step {t} dead fraction");
            Assert.Equal(h.LearningRate, d.LearningRate);
            sawDead |= h.DeadFraction > 0;
        }
        if (kind.Contains("topk", StringComparison.Ordinal)) Assert.True(sawDead, "the run should have dead features");
        var (hp, dp) = (host.Transcoder.P, device.Transcoder.P);
        for (int l = 0; l < Shape.Layers; l++)
        {
            DeviceTrainingChecks.CloseArrays(hp.WEnc[l], dp.WEnc[l], 1e-3, $"W_enc.{l}");
            DeviceTrainingChecks.CloseArrays(hp.BEnc[l], dp.BEnc[l], 1e-3, $"b_enc.{l}");
            DeviceTrainingChecks.CloseArrays(hp.WDec[l], dp.WDec[l], 1e-3, $"W_dec.{l}");
            DeviceTrainingChecks.CloseArrays(hp.BDec[l], dp.BDec[l], 1e-3, $"b_dec.{l}");
            if (kind == "jumprelu") DeviceTrainingChecks.CloseArrays(hp.Act[l].LogThreshold, dp.Act[l].LogThreshold, 1e-3, $"log_threshold.{l}");
            if (kind == "batchtopk")
            {
                Assert.True(hp.Act[l].Threshold[0] > 0, "the inference threshold was learned");
                DeviceTrainingChecks.Close(hp.Act[l].Threshold[0], dp.Act[l].Threshold[0], 1e-3, 1e-6, $"threshold.{l}");
            }
        }
        if (kind == "jumprelu")
            Assert.NotEqual(0.1f, hp.Act[0].LogThreshold.Select(MathF.Exp).Max(), 1e-4f); // the threshold was trained
    }

    [Fact]
    public void TheCpuBackendKeepsTheHostPathBitExact()
    {
        var a = new CltTrainer(NewClt("topk"), Options("topk"));
        var b = new CltTrainer(NewClt("topk"), Options("topk"), CpuBackend.Instance);
        Assert.Equal(DeviceKind.Cpu, b.Device.Kind);
        var data = (InMemoryRows)Data();
        var (x, y) = data.Load(0, 0);
        var ma = a.Train(x, y!);
        var mb = b.Train(x, y!);
        for (int t = 0; t < ma.Count; t++)
        {
            Assert.Equal(ma[t].Loss, mb[t].Loss);
            Assert.Equal(ma[t].ExplainedVariance, mb[t].ExplainedVariance);
        }
        for (int l = 0; l < Shape.Layers; l++) Assert.Equal(a.Transcoder.P.WDec[l], b.Transcoder.P.WDec[l]);
    }

    [Theory]
    [InlineData("relu-tanh")]
    [InlineData("topk")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    public void ADeviceCheckpointResumesToTheSameWeights(string kind)
    {
        var data = Data();
        var straight = new CltTrainer(NewClt(kind), Options(kind), fixture.Backend);
        straight.Begin(data);
        var straightMetrics = new List<CltStepMetrics>();
        while (!straight.IsComplete) straightMetrics.Add(straight.Step());

        Directory.CreateDirectory(_dir);
        string checkpoint = Path.Combine(_dir, kind + ".safetensors");
        var first = new CltTrainer(NewClt(kind), Options(kind), fixture.Backend);
        first.Begin(data);
        for (int t = 0; t < 5; t++) first.Step();
        first.SaveCheckpoint(checkpoint);
        first.Step(); // steps after the checkpoint are lost with the process

        var resumed = new CltTrainer(NewClt(kind), Options(kind), fixture.Backend);
        resumed.LoadCheckpoint(checkpoint, data);
        Assert.Equal(5, resumed.StepsDone);
        var resumedMetrics = new List<CltStepMetrics>();
        while (!resumed.IsComplete) resumedMetrics.Add(resumed.Step());

        Assert.Equal(straightMetrics.Count - 5, resumedMetrics.Count);
        foreach (var (s, r) in straightMetrics.Skip(5).Zip(resumedMetrics))
        {
            Assert.Equal(s.Loss, r.Loss);
            Assert.Equal(s.ExplainedVariance, r.ExplainedVariance);
            Assert.Equal(s.DeadFraction, r.DeadFraction);
        }
        foreach (var ((name, a), (_, b)) in straight.Transcoder.P.All().Zip(resumed.Transcoder.P.All()))
            Assert.True(a.AsSpan().SequenceEqual(b), $"{name} differs after resume");
    }

    [Theory]
    [InlineData("relu-tanh")]
    [InlineData("topk")]
    [InlineData("jumprelu")]
    public void AStepCopiesItsBatchInAndItsMetricsOut(string kind)
    {
        var backend = fixture.Backend;
        var trainer = new CltTrainer(NewClt(kind), Options(kind), backend);
        trainer.Begin(Data());
        trainer.Step(); // buffers allocated

        var before = backend.Transfers.Snapshot();
        trainer.Step();
        var m = trainer.Step();
        var moved = backend.Transfers.Snapshot() - before;
        DeviceTrainingChecks.OnlyBatchesInAndMetricsOut(moved, uploads: 2 * 2, reads: 2); // inputs and targets each step
        Assert.True(float.IsFinite(m.Loss));
    }

    [Fact]
    public void ArchitecturesWithoutDeviceKernelsAreRefusedNamingTheOption()
    {
        var custom = new CrossLayerTranscoder(Shape, new DeviceTrainingChecks.SquareActivation());
        var e = Assert.Throws<InputError>(() => new CltTrainer(custom, Options("topk"), fixture.Backend));
        Assert.Contains("--device", e.Message);
        Assert.Contains("square", e.Message);
    }
}
