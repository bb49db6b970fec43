using Loupe.Dictionaries.Crosscoders;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Tests.Devices;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>One emulated GPU backend for the class: ILGPU contexts and compiled kernels are costly.</summary>
public sealed class EmulatedSaeBackendFixture : IDisposable
{
    public IComputeBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));
    public void Dispose() => (Backend as IDisposable)?.Dispose();
}

/// <summary>
/// SaeTrainer on a device (the GPU kernels on ILGPU's CPU accelerator) against the same trainer on the host: every
/// supported architecture with its real features (aux-k on dead features, unit-norm decoder, warm-up and decay,
/// clipping, input normalisation), resume from a device checkpoint, and what a step copies.
/// </summary>
public sealed class DeviceSaeTrainingTests(EmulatedSaeBackendFixture fixture) : IClassFixture<EmulatedSaeBackendFixture>, IDisposable
{
    const int DIn = 16, DSae = 64, Batch = 32, Rows = 256, Steps = 8;
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-device-sae-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    static float[] RandomRows(int seed, int d, float shift = 0.1f)
    {
        var rng = new Random(seed);
        var x = new float[Rows * d];
        for (int i = 0; i < x.Length; i++) x[i] = SparseDictionary.Gaussian(rng) * 0.5f + shift;
        return x;
    }

    static SparseDictionary NewDictionary(string kind) => kind switch
    {
        "topk" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae), new TopKActivation(4))),
        "standard" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae), new ReluActivation())),
        "topk-skip-transcoder" => Init(new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 12, skip: true), new TopKActivation(4))),
        "standard-transcoder" => Init(new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 12), new ReluActivation())),
        "batchtopk" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae), new BatchTopKActivation(4, momentum: 0.2f))),
        "batchtopk-transcoder" => Init(new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 12), new BatchTopKActivation(3))),
        "matryoshka" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae), new MatryoshkaBatchTopKActivation(4, [8, 24, DSae]))),
        "matryoshka-skip-transcoder" => Init(new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 12, skip: true), new MatryoshkaBatchTopKActivation(3, [5, DSae]))),
        // a bandwidth and threshold at the scale of the pre-activations, so that the straight-through window holds entries
        "jumprelu" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae), new JumpReluActivation(bandwidth: 0.2f)), threshold: 0.1f),
        "jumprelu-skip-transcoder" => Init(new SparseDictionary(SaeShape.Transcoder(DIn, DSae, 12, skip: true), new JumpReluActivation(bandwidth: 0.2f)), threshold: 0.1f),
        // crosscoders: 2 sources of 8 and 4 sources of 4 (decoder rows of S segments), no b_dec on the input, free decoder norms
        "crosscoder" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae, applyBDecToInput: false), new CrosscoderReluActivation(2))),
        "crosscoder-4" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae, applyBDecToInput: false), new CrosscoderReluActivation(4))),
        "crosscoder-batchtopk" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae, applyBDecToInput: false), new CrosscoderBatchTopKActivation(4, 2, momentum: 0.2f))),
        "crosscoder-batchtopk-4" => Init(new SparseDictionary(SaeShape.Sae(DIn, DSae, applyBDecToInput: false), new CrosscoderBatchTopKActivation(3, 4))),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    static SparseDictionary Init(SparseDictionary d, float threshold = 0.001f)
    {
        d.Initialize(seed: 3, initThreshold: threshold);
        return d;
    }

    // Dead features within two batches, so aux-k runs from the third step; a schedule with warm-up and decay.
    static SaeTrainingOptions Options(string kind) => new()
    {
        Steps = Steps, BatchSize = Batch, LearningRate = 3e-3f, LrWarmupSteps = 2, LrDecayFraction = 0.25f,
        SparsityCoefficient = kind.StartsWith("standard", StringComparison.Ordinal) || kind is "crosscoder" or "crosscoder-4" ? 0.5f : kind.StartsWith("jumprelu", StringComparison.Ordinal) ? 0.05f : 0f,
        SparsityWarmupSteps = 3,
        DeadWindowTokens = 2 * Batch, AuxKCoefficient = 0.25f, GradClipNorm = 0.5f, NormalizeExpectedAverage = true, Seed = 9,
    };

    static IRowWindows Data(SparseDictionary d) =>
        new InMemoryRows(RandomRows(1, DIn), DIn, d.Shape.DOut == DIn && !d.Shape.Skip ? null : RandomRows(2, d.Shape.DOut, -0.2f), d.Shape.DOut);

    [Theory]
    [InlineData("topk")]
    [InlineData("standard")]
    [InlineData("topk-skip-transcoder")]
    [InlineData("standard-transcoder")]
    [InlineData("batchtopk")]
    [InlineData("batchtopk-transcoder")]
    [InlineData("jumprelu")]
    [InlineData("jumprelu-skip-transcoder")]
    [InlineData("matryoshka")]
    [InlineData("matryoshka-skip-transcoder")]
    [InlineData("crosscoder")]
    [InlineData("crosscoder-4")]
    [InlineData("crosscoder-batchtopk")]
    [InlineData("crosscoder-batchtopk-4")]
    public void DeviceTrainingMatchesHostTrainingStepByStep(string kind)
    {
        var hostDict = NewDictionary(kind);
        var host = new SaeTrainer(hostDict, Options(kind));
        var device = new SaeTrainer(NewDictionary(kind), Options(kind), fixture.Backend);
        Assert.Equal(DeviceKind.Emulated, device.Device.Kind);
        host.Begin(Data(hostDict));
        device.Begin(Data(hostDict));
        bool sawDead = false;
        for (int t = 0; t < Steps; t++)
        {
            var h = host.Step();
            var d = device.Step();
            DeviceTrainingChecks.Close(h.Loss, d.Loss, 2e-3, 1e-6, $"step {t} loss");
            DeviceTrainingChecks.Close(h.Mse, d.Mse, 2e-3, 1e-6, $"step {t} mse");
            DeviceTrainingChecks.Close(h.Sparsity, d.Sparsity, 2e-3, 1e-6, $"step {t} sparsity");
            DeviceTrainingChecks.Close(h.L0, d.L0, 0, 1e-6, $"step {t} L0");
            DeviceTrainingChecks.Close(h.ExplainedVariance, d.ExplainedVariance, 1e-3, 1e-4, $"step {t} explained variance");
            DeviceTrainingChecks.Close(h.DeadFraction, d.DeadFraction, 0, 0, $"step {t} dead fraction");
            Assert.Equal(h.LearningRate, d.LearningRate);
            sawDead |= h.DeadFraction > 0;
        }
        if (kind.Contains("topk", StringComparison.Ordinal) || kind.StartsWith("matryoshka", StringComparison.Ordinal)) Assert.True(sawDead, "the run should have dead features, so aux-k is exercised");
        host.Finish();
        device.Finish();
        var (hp, dp) = (host.Dictionary.P, device.Dictionary.P);
        DeviceTrainingChecks.CloseArrays(hp.WEnc, dp.WEnc, 1e-3, "W_enc");
        DeviceTrainingChecks.CloseArrays(hp.BEnc, dp.BEnc, 1e-3, "b_enc");
        DeviceTrainingChecks.CloseArrays(hp.WDec, dp.WDec, 1e-3, "W_dec");
        DeviceTrainingChecks.CloseArrays(hp.BDec, dp.BDec, 1e-3, "b_dec");
        DeviceTrainingChecks.CloseArrays(hp.WSkip, dp.WSkip, 1e-3, "W_skip");
        if (kind.StartsWith("jumprelu", StringComparison.Ordinal))
        {
            Assert.NotEqual(0.1f, hp.LogThreshold.Select(MathF.Exp).Max(), 1e-4f); // the threshold was trained
            DeviceTrainingChecks.CloseArrays(hp.LogThreshold, dp.LogThreshold, 1e-3, "log_threshold");
        }
        if (kind.Contains("batchtopk", StringComparison.Ordinal) || kind.StartsWith("matryoshka", StringComparison.Ordinal))
        {
            Assert.True(hp.Threshold[0] > 0, "the inference threshold was learned");
            DeviceTrainingChecks.Close(hp.Threshold[0], dp.Threshold[0], 1e-3, 1e-6, "BatchTopK threshold");
        }
    }

    [Fact]
    public void TheCpuBackendKeepsTheHostPathBitExact()
    {
        var a = new SaeTrainer(NewDictionary("topk"), Options("topk"));
        var b = new SaeTrainer(NewDictionary("topk"), Options("topk"), CpuBackend.Instance);
        var data = RandomRows(1, DIn);
        var ma = a.Train(data);
        var mb = b.Train(data);
        Assert.Equal(ma, mb);
        Assert.Equal(a.Dictionary.P.WDec, b.Dictionary.P.WDec);
    }

    [Theory]
    [InlineData("topk")]
    [InlineData("standard")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    [InlineData("matryoshka")]
    [InlineData("crosscoder")]
    [InlineData("crosscoder-batchtopk")]
    public void ADeviceCheckpointResumesToTheSameWeights(string kind)
    {
        var data = Data(NewDictionary(kind));
        var straight = new SaeTrainer(NewDictionary(kind), Options(kind), fixture.Backend);
        straight.Begin(data);
        var straightMetrics = new List<SaeStepMetrics>();
        while (!straight.IsComplete) straightMetrics.Add(straight.Step());
        straight.Finish();

        Directory.CreateDirectory(_dir);
        string checkpoint = Path.Combine(_dir, kind + ".safetensors");
        var first = new SaeTrainer(NewDictionary(kind), Options(kind), fixture.Backend);
        first.Begin(data);
        for (int t = 0; t < 5; t++) first.Step();
        first.SaveCheckpoint(checkpoint);
        first.Step(); // steps after the checkpoint are lost with the process

        var resumed = new SaeTrainer(NewDictionary(kind), Options(kind), fixture.Backend);
        resumed.LoadCheckpoint(checkpoint, data);
        Assert.Equal(5, resumed.StepsDone);
        var resumedMetrics = new List<SaeStepMetrics>();
        while (!resumed.IsComplete) resumedMetrics.Add(resumed.Step());
        resumed.Finish();

        Assert.Equal(straightMetrics.Skip(5), resumedMetrics);
        Assert.Equal(straight.Dictionary.P.WEnc, resumed.Dictionary.P.WEnc);
        Assert.Equal(straight.Dictionary.P.WDec, resumed.Dictionary.P.WDec);
        Assert.Equal(straight.Dictionary.P.BDec, resumed.Dictionary.P.BDec);
        Assert.Equal(straight.Dictionary.P.LogThreshold, resumed.Dictionary.P.LogThreshold);
        Assert.Equal(straight.Dictionary.P.Threshold, resumed.Dictionary.P.Threshold);
    }

    [Theory]
    [InlineData("topk")]
    [InlineData("topk-skip-transcoder")]
    [InlineData("standard")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    [InlineData("matryoshka")]
    [InlineData("crosscoder")]
    [InlineData("crosscoder-batchtopk")]
    public void AStepCopiesItsBatchInAndItsMetricsOut(string kind)
    {
        var backend = fixture.Backend;
        var dict = NewDictionary(kind);
        var trainer = new SaeTrainer(dict, Options(kind), backend);
        trainer.Begin(Data(dict));
        // buffers allocated, and (TopK, BatchTopK) steps until there are dead features, so that aux-k runs in the steps measured
        bool auxK = kind.Contains("topk", StringComparison.Ordinal) || kind.StartsWith("matryoshka", StringComparison.Ordinal);
        var last = trainer.Step();
        for (int taken = 1; taken < 3 || (auxK && last.DeadFraction == 0 && taken < Steps - 2); taken++) last = trainer.Step();

        var before = backend.Transfers.Snapshot();
        trainer.Step();
        var m2 = trainer.Step();
        var moved = backend.Transfers.Snapshot() - before;
        if (auxK) Assert.True(last.DeadFraction > 0, "aux-k should run in the measured steps");
        int uploadsPerStep = dict.Shape.DOut == dict.Shape.DIn && !dict.Shape.Skip ? 1 : 2; // inputs, and targets for a transcoder
        DeviceTrainingChecks.OnlyBatchesInAndMetricsOut(moved, uploads: 2 * uploadsPerStep, reads: 2);
        Assert.True(float.IsFinite(m2.Loss));
    }

    [Fact]
    public void ArchitecturesNotYetOnADeviceAreRefusedNamingTheOption()
    {
        var custom = new SparseDictionary(SaeShape.Sae(DIn, DSae), new DeviceTrainingChecks.SquareActivation());
        var e = Assert.Throws<InputError>(() => new SaeTrainer(custom, Options("topk"), fixture.Backend));
        Assert.Contains("--device", e.Message);
        Assert.Contains("square", e.Message);
    }
}
