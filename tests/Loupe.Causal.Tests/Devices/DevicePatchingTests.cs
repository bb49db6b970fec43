using Loupe.Causal.Metrics;
using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Causal.Tests.Devices;

/// <summary>
/// Activation patching, ablations and path patching where the model runs on the GPU backend's kernels
/// (emulated on the CPU): the same values as on the CPU backend, with every slice copied on the device,
/// every metric value and finiteness check kept there, and one result table coming back per sweep. The emulated kernels are slow (a forward costs
/// about a second per row), so the sweeps cover a few cells of one fixture row on the small gpt2 fixture,
/// sharing one backend (its kernels compile once).
/// </summary>
public sealed class DevicePatchingTests(DevicePatchingTests.Pair pair) : IClassFixture<DevicePatchingTests.Pair>
{
    /// <summary>The gpt2 fixture on the CPU and on the emulated device, the weights already placed.</summary>
    public sealed class Pair : IDisposable
    {
        public GpuBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));
        public HookedTransformer Cpu { get; }
        public HookedTransformer Device { get; }

        public Pair()
        {
            string folder = SharedData.TestData(Path.Combine("reference", "gpt2"));
            Cpu = ModelLoader.LoadFolder(folder);
            Device = ModelLoader.LoadFolder(folder, Backend);
            Device.Run(Inputs().Clean); // places the weights
        }

        public TransferSnapshot Snapshot() => Backend.Transfers.Snapshot();

        public void Dispose()
        {
            Device.Dispose();
            Cpu.Dispose();
            Backend.Dispose();
        }
    }

    static readonly LogitDiff Metric = new(17, 42);

    static (TokenBatch Clean, TokenBatch Corrupt) Inputs() => TestInputs.FixturePair(rows: 1);

    static void AssertClose(IReadOnlyList<double> expected, IReadOnlyList<double> actual, params double[] references)
    {
        Assert.Equal(expected.Count, actual.Count);
        double scale = expected.Concat(references).Max(Math.Abs) + 1e-6;
        for (int i = 0; i < expected.Count; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4 * scale, $"value {i}: cpu {expected[i]}, device {actual[i]}");
    }

    /// <summary>
    /// Nothing goes in but token ids, and nothing comes out but one table: every metric value and every pass's
    /// finiteness flag, read back together at the end of the sweep.
    /// </summary>
    static void AssertOnlyTheTableOut(TransferSnapshot copies)
    {
        foreach (var kind in Enum.GetValues<TransferKind>())
        {
            if (kind != TransferKind.Inputs) Assert.True(copies.In(kind) == 0, $"copied in: {copies}");
            Assert.True(copies.Out(kind) == (kind == TransferKind.Data ? 1 : 0), $"copied out: {copies}");
        }
        Assert.True(copies.In(TransferKind.Inputs) > 0, "the token ids go in");
    }

    [Theory]
    [InlineData("resid_pre")]
    [InlineData("head_out_by_pos")]
    [InlineData("head_pattern")]
    public void ActivationPatchingMatchesTheCpuAndReadsBackOnlyTheResultTable(string targetName)
    {
        var target = targetName switch
        {
            "resid_pre" => PatchTarget.ResidPre with { Layers = [1], Positions = [3, 7] },
            "head_out_by_pos" => PatchTarget.HeadOutByPosition with { Layers = [1], Heads = [0, 3], Positions = [7] },
            _ => PatchTarget.HeadPattern with { Layers = [2], Heads = [1, 2] },
        };
        var (clean, corrupt) = Inputs();
        // head_out_by_pos: one cell per pass, so two passes; the others take one, with logits at the last position only.
        var options = targetName == "head_out_by_pos" ? new PatchOptions { MaxRows = 1 } : new PatchOptions { LastPositionLogitsOnly = true };
        var expected = ActivationPatching.Sweep(pair.Cpu, clean, corrupt, Metric, target, options);
        var before = pair.Snapshot();
        var actual = ActivationPatching.Sweep(pair.Device, clean, corrupt, Metric, target, options);
        var copies = pair.Snapshot() - before;

        Assert.Equal(expected.Cells, actual.Cells);
        Assert.Equal(expected.ForwardPasses, actual.ForwardPasses);
        AssertClose([expected.CleanValue, expected.CorruptValue, .. expected.Values], [actual.CleanValue, actual.CorruptValue, .. actual.Values]);
        AssertOnlyTheTableOut(copies);
    }

    [Theory]
    [InlineData("zero")]
    [InlineData("mean")]
    [InlineData("resample")]
    public void AblationSweepMatchesTheCpuAndReadsBackOnlyTheResultTable(string kind)
    {
        var (clean, corrupt) = Inputs();
        var ablation = kind switch { "zero" => Ablation.Zero, "mean" => Ablation.Mean([corrupt]), _ => Ablation.Resample(corrupt, seed: 3) };
        var target = PatchTarget.HeadOut with { Layers = [0, 2], Heads = [1] };
        var expected = AblationSweep.Sweep(pair.Cpu, clean, Metric, target, ablation);
        var before = pair.Snapshot();
        var actual = AblationSweep.Sweep(pair.Device, clean, Metric, target, ablation);
        var copies = pair.Snapshot() - before;

        Assert.Equal(expected.Cells, actual.Cells);
        Assert.Equal(expected.ForwardPasses, actual.ForwardPasses);
        AssertClose([expected.BaselineValue, .. expected.Values], [actual.BaselineValue, .. actual.Values]);
        // The mean's reference runs read nothing back either: their finiteness is in the table.
        AssertOnlyTheTableOut(copies);

        if (kind != "mean") return;
        // Several heads ablated at once through Run: the replacement is already on the device.
        PatchCell[] cells = [new(0, 1, -1), new(2, 3, -1)];
        double expectedRun = ActivationPatching.Run(pair.Cpu, clean, Metric, ablation.Patches(pair.Cpu, clean, target, cells));
        var patches = ablation.Patches(pair.Device, clean, target, cells);
        before = pair.Snapshot();
        double actualRun = ActivationPatching.Run(pair.Device, clean, Metric, patches);
        AssertClose([expectedRun], [actualRun], expected.BaselineValue);
        AssertOnlyTheTableOut(pair.Snapshot() - before);
    }

    [Fact]
    public void PathPatchingMatchesTheCpuAndReadsBackOnlyTheResultTable()
    {
        var (clean, corrupt) = Inputs();
        IReadOnlyList<PathSender>[] senders =
        [
            [PathSender.AttnHead(0, 1)],
            [PathSender.AttnHead(1, 2), PathSender.Mlp(0)],
        ];
        // Step 3 patches the receivers' q and v from step 2; MLPs frozen, so the frozen-MLP copies run too.
        PathReceiver[] receivers = [PathReceiver.Query(2, 0), PathReceiver.Value(2, 3)];
        var options = new PathPatchOptions { FreezeMlps = true };
        var expected = PathPatching.Run(pair.Cpu, clean, corrupt, Metric, senders, receivers, options);
        var before = pair.Snapshot();
        var actual = PathPatching.Run(pair.Device, clean, corrupt, Metric, senders, receivers, options);
        var copies = pair.Snapshot() - before;

        Assert.Equal(expected.ForwardPasses, actual.ForwardPasses);
        AssertClose([expected.CleanValue, expected.CorruptValue, .. expected.Values], [actual.CleanValue, actual.CorruptValue, .. actual.Values]);
        AssertOnlyTheTableOut(copies);
    }

    [Fact]
    public void CausalMetricsEvaluateOnTheDevice()
    {
        const int B = 2, T = 6, V = 40;
        var random = new Random(5);
        var host = Tensor.FromArray(Enumerable.Range(0, B * T * V).Select(_ => (float)(random.NextDouble() * 6 - 3)).ToArray(), B, T, V);
        var logits = pair.Backend.ToDevice(host);
        IDeviceMetric[] metrics =
        [
            new TargetLogProb(TokenBatch.FromRows([[1, 7, 3, 9, 22, 4], [5, 5, 38, 0, 17, 2]]), 1, 4),
            new AnswerLogProb([3, 29], position: -2, vocabLimit: 30),
        ];
        foreach (var metric in metrics)
        {
            var before = pair.Snapshot();
            var (value, gradient) = metric.Evaluate(logits, pair.Backend);
            var copies = pair.Snapshot() - before;
            Assert.Equal(0, copies.In(TransferKind.Data));
            Assert.Equal(0, copies.Out(TransferKind.Data));
            Assert.Equal(1, copies.Out(TransferKind.Scalars));
            Assert.Equal(metric.Value(host), value, 1e-5);
            var expected = metric.Gradient(host).Span;
            var actual = gradient.ToCpu().Span;
            for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], 1e-6);
        }

        // A metric with no device form reads the logits on the host once, counted.
        var accuracy = new ArgmaxAccuracy([3, 29], vocabLimit: 30);
        var start = pair.Snapshot();
        Assert.Equal(accuracy.Value(host), MetricValue.Of(accuracy, logits, pair.Backend));
        Assert.Equal(1, (pair.Snapshot() - start).Out(TransferKind.Data));
    }

    /// <summary>
    /// A grouped-query model (llama: 4 query heads over 2 kv heads) and a log-probability metric: per-head patching and
    /// path patching into a key input equal the CPU, and each reads back one table.
    /// </summary>
    [Fact]
    public void GroupedQueryPatchingMatchesTheCpuAndReadsBackOnlyTheResultTable()
    {
        string folder = SharedData.TestData(Path.Combine("reference", "llama"));
        using var cpu = ModelLoader.LoadFolder(folder);
        using var device = ModelLoader.LoadFolder(folder, pair.Backend);
        var (clean, corrupt) = Inputs();
        device.Run(clean); // places the weights
        var metric = new LogProb(17);
        var target = PatchTarget.HeadOut with { Layers = [1], Heads = [0, 3] };
        var options = new PatchOptions { LastPositionLogitsOnly = true };
        var expected = ActivationPatching.Sweep(cpu, clean, corrupt, metric, target, options);
        var before = pair.Snapshot();
        var actual = ActivationPatching.Sweep(device, clean, corrupt, metric, target, options);
        AssertOnlyTheTableOut(pair.Snapshot() - before);
        Assert.Equal(expected.Cells, actual.Cells);
        AssertClose([expected.CleanValue, expected.CorruptValue, .. expected.Values], [actual.CleanValue, actual.CorruptValue, .. actual.Values]);

        IReadOnlyList<PathSender>[] senders = [[PathSender.AttnHead(0, 2)], [PathSender.Mlp(1)]];
        PathReceiver[] receivers = [PathReceiver.Key(2, 3)];
        var expectedPaths = PathPatching.Run(cpu, clean, corrupt, metric, senders, receivers);
        before = pair.Snapshot();
        var actualPaths = PathPatching.Run(device, clean, corrupt, metric, senders, receivers);
        AssertOnlyTheTableOut(pair.Snapshot() - before);
        AssertClose([expectedPaths.CleanValue, expectedPaths.CorruptValue, .. expectedPaths.Values], [actualPaths.CleanValue, actualPaths.CorruptValue, .. actualPaths.Values]);
    }

    /// <summary>Every metric's value written into a device slot equals its host value, and nothing crosses.</summary>
    [Fact]
    public void MetricValuesAreWrittenOnTheDeviceWithoutACopy()
    {
        const int B = 2, T = 6, V = 40;
        var random = new Random(11);
        var host = Tensor.FromArray(Enumerable.Range(0, B * T * V).Select(_ => (float)(random.NextDouble() * 8 - 4)).ToArray(), B, T, V);
        var logits = pair.Backend.ToDevice(host);
        var tokens = TokenBatch.FromRows([[1, 7, 3, 9, 22, 4], [5, 5, 38, 0, 17, 2]]);
        IDeviceMetric[] metrics =
        [
            new LogitDiff(17, 42 % V),
            new LogitDiff([3, 9], [30, 1], position: -2),
            new LogProb(11, position: 2),
            new SpanLoss(tokens, 1, 4),
            new TargetLogProb(tokens, 0, 5),
            new AnswerLogProb([3, 29], position: -2, vocabLimit: 30),
        ];
        foreach (var metric in metrics)
        {
            var slot = pair.Backend.Empty(1);
            var before = pair.Snapshot();
            metric.WriteValue(logits, pair.Backend, slot);
            var copies = pair.Snapshot() - before;
            foreach (var kind in Enum.GetValues<TransferKind>())
            {
                Assert.True(copies.Out(kind) == 0, $"{metric.Name} copied out: {copies}");
                if (kind != TransferKind.Inputs) Assert.True(copies.In(kind) == 0, $"{metric.Name} copied in: {copies}");
            }
            double expected = metric.Value(host), actual = slot.ToCpu().Span[0];
            Assert.True(Math.Abs(expected - actual) <= 1e-5 * (Math.Abs(expected) + 1), $"{metric.Name}: host {expected}, device {actual}");
        }
    }

    /// <summary>
    /// A pass whose logits go non-finite is found when the table is read, and re-run with the model's own check: the
    /// error names the hook point, as on the CPU.
    /// </summary>
    [Fact]
    public void NonFiniteLogitsStillNameTheHookPoint()
    {
        var (clean, _) = Inputs();
        const string hook = "blocks.1.hook_resid_pre";
        var poisoned = Tensor.Zeros(1, clean.Length, pair.Cpu.Config.DModel);
        poisoned.Span[5] = float.NaN;
        var patch = new Patch(hook, poisoned, PositionAxis: 1, Position: 0);
        var onCpu = Assert.Throws<InputError>(() => ActivationPatching.Run(pair.Cpu, clean, Metric, patch));
        var onDevice = Assert.Throws<InputError>(() => ActivationPatching.Run(pair.Device, clean, Metric, patch));
        Assert.Contains(hook, onCpu.Message);
        Assert.Contains(hook, onDevice.Message);
    }
}
