using Loupe.Probes.Classifiers;
using Loupe.Probes.Experiment;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;

namespace Loupe.Probes.Tests;

/// <summary>
/// The probes' products on a backend: the logistic objective against its double-precision reference twin
/// (<see cref="LogisticProbe.LossAndGradient"/>) on the CPU backend and on the GPU backend's kernels (emulated), and whole
/// probe runs on the device against the CPU's, with only parameters, gradients and predicted classes crossing.
/// </summary>
public sealed class ProbeBackendTests(ProbeBackendTests.Emulated device) : IClassFixture<ProbeBackendTests.Emulated>
{
    public sealed class Emulated : IDisposable
    {
        public GpuBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));
        public void Dispose() => Backend.Dispose();
    }

    static double Normal(Random r) => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());

    IComputeBackend Backend(string name) => name == "cpu" ? CpuBackend.Instance : device.Backend;

    /// <summary>
    /// n = 1,100 rows of width 2,048 make three CPU blocks (512, 512 and a short 76: the last block's stale losses must not
    /// count); 30 × 5 is one block.
    /// </summary>
    [Theory]
    [InlineData("cpu", 30, 5, 4)]
    [InlineData("cpu", 1100, 2048, 3)]
    [InlineData("emulated", 30, 5, 4)]
    [InlineData("emulated", 300, 64, 3)]
    public void ObjectiveMatchesItsDoublePrecisionTwin(string backend, int n, int d, int K)
    {
        var r = new Random(7);
        var x = Enumerable.Range(0, n * d).Select(_ => (float)(3 + 2 * Normal(r))).ToArray();
        var y = Enumerable.Range(0, n).Select(_ => r.Next(K)).ToArray();
        var standardizer = Standardizer.Fit(x, d);
        var rows = ProbeRows.Upload(Backend(backend), standardizer, x);
        var objective = new LogisticObjective(rows, y, K, 0.1);
        Assert.Equal(K * d + K, objective.Parameters);
        var theta = Enumerable.Range(0, objective.Parameters).Select(_ => 0.3 * Normal(r) / Math.Sqrt(d)).ToArray();

        var expected = new double[theta.Length];
        double expectedLoss = LogisticProbe.LossAndGradient(standardizer.Transform(x), y, d, K, theta, 0.1, expected);
        var actual = new double[theta.Length];
        double loss = objective.Evaluate(theta, actual);
        Assert.True(Math.Abs(loss - expectedLoss) <= 1e-6 * expectedLoss, $"loss {loss:G9}, reference {expectedLoss:G9}");
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < theta.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 2e-6 * scale, $"∂θ[{i}]: {actual[i]:G9}, reference {expected[i]:G9}");

        // A second evaluation at the same point gives the same numbers (no state carried between evaluations).
        var again = new double[theta.Length];
        Assert.Equal(loss, objective.Evaluate(theta, again));
        Assert.Equal(actual, again);
        Assert.Throws<ArgumentException>(() => objective.Evaluate(theta[1..], again));
    }

    [Fact]
    public void ProbesTrainOnTheDeviceAsOnTheCpuAndOnlySmallThingsComeBack()
    {
        var data = ProbeTrainerTests.Synthetic();
        var cpu = ProbeTrainer.Run(data, new ProbeOptions(Seed: 1));
        var be = device.Backend;
        var before = be.Transfers.Snapshot();
        long bytesIn = be.Transfers.BytesToDevice(TransferKind.Data), bytesOut = be.Transfers.BytesToHost(TransferKind.Data);
        var gpu = ProbeTrainer.Run(data, new ProbeOptions(Seed: 1), backend: be);
        var moved = be.Transfers.Snapshot() - before;

        for (int h = 0; h < cpu.Hooks.Count; h++)
        {
            Assert.Equal(cpu.Hooks[h].Logistic!.HeldOutAccuracy, gpu.Hooks[h].Logistic!.HeldOutAccuracy, 0.002);
            Assert.Equal(cpu.Hooks[h].Logistic!.TrainAccuracy, gpu.Hooks[h].Logistic!.TrainAccuracy, 0.002);
            Assert.Equal(cpu.Hooks[h].DiffMeans!.HeldOutAccuracy, gpu.Hooks[h].DiffMeans!.HeldOutAccuracy);
        }
        Assert.Equal("signal", gpu.Best.Hook);

        // In: each hook's standardized rows once, then per evaluation or prediction W [K, d] and b [K]. Out: per
        // evaluation ∂W and ∂b (nothing row-sized), and the predicted classes.
        const int d = 4, K = 3;
        long rowBytes = 2L * data.Count * d * sizeof(float);
        long parameterBytes = (K * d + K) * sizeof(float);
        long extraIn = be.Transfers.BytesToDevice(TransferKind.Data) - bytesIn - rowBytes;
        Assert.True(extraIn > 0 && extraIn % parameterBytes == 0, $"{extraIn} bytes beyond the rows went in; expected whole W and b uploads of {parameterBytes}");
        long evaluationsOut = moved.Out(TransferKind.Data);
        Assert.True(evaluationsOut > 0);
        Assert.True(be.Transfers.BytesToHost(TransferKind.Data) - bytesOut <= evaluationsOut * K * d * sizeof(float), moved.ToString());
    }

    [Fact]
    public void ARunThatWouldNotFitOnTheDeviceIsRefusedBeforeAnythingIsPlaced()
    {
        var data = ProbeTrainerTests.Synthetic();
        long needed = ProbeTrainer.DeviceBytesPerHook(data);
        Assert.Equal((long)data.Count * (4 + 3 * 3 + 1) * sizeof(float), needed);
        var before = device.Backend.Transfers.Snapshot();
        var e = Assert.Throws<InputError>(() => ProbeTrainer.Run(data, new ProbeOptions(Seed: 1), backend: device.Backend, deviceFreeBytes: needed - 1));
        Assert.Contains("--max-sentences", e.Message);
        Assert.Contains($"{data.Count} labelled tokens × width 4", e.Message);
        Assert.Equal(0, (device.Backend.Transfers.Snapshot() - before).In(TransferKind.Data));
        // Exactly enough runs; the CPU ignores the device's memory.
        ProbeTrainer.Run(data, new ProbeOptions(Seed: 1), backend: device.Backend, deviceFreeBytes: needed);
        ProbeTrainer.Run(data, new ProbeOptions(Seed: 1), deviceFreeBytes: 1);
    }

    [Fact]
    public void DiffMeansFromRawRowsEqualsTheMeansOfStandardizedRows()
    {
        var r = new Random(5);
        const int n = 200, d = 6, K = 4;
        var x = Enumerable.Range(0, n * d).Select(_ => (float)(10 + 3 * Normal(r))).ToArray();
        var y = Enumerable.Range(0, n).Select(i => i % (K - 1)).ToArray(); // class 3 has no examples
        var probe = DiffMeansProbe.Train(x, y, d, K);
        var z = probe.Standardizer.Transform(x);
        for (int k = 0; k < K - 1; k++)
            for (int j = 0; j < d; j++)
            {
                double mean = Enumerable.Range(0, n).Where(i => y[i] == k).Average(i => z[i * d + j]);
                Assert.Equal(mean, probe.Means[k * d + j], 1e-12);
            }
        Assert.All(probe.Means.AsSpan((K - 1) * d).ToArray(), v => Assert.Equal(0, v));
        // Device predictions are the host's nearest mean, and never the class without examples.
        var rows = ProbeRows.Upload(device.Backend, probe.Standardizer, x);
        var predicted = probe.Predict(rows);
        Assert.DoesNotContain(K - 1, predicted);
        for (int i = 0; i < n; i++) Assert.Equal(probe.Predict(x.AsSpan(i * d, d)), predicted[i]);
    }

    [Fact]
    public void NonFiniteHeldOutRowsAreBadInputNamingTheRow()
    {
        var standardizer = Standardizer.Fit([1, 2, 3, 4], 2);
        var e = Assert.Throws<InputError>(() => ProbeRows.Upload(CpuBackend.Instance, standardizer, [1, 2, 3, float.PositiveInfinity]));
        Assert.Contains("feature 1 of row 1", e.Message);
        Assert.Throws<ArgumentException>(() => ProbeRows.Upload(CpuBackend.Instance, standardizer, [1, 2, 3]));
    }
}
