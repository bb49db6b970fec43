using Loupe.Causal.Patchscopes;
using Loupe.Models;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Causal.Tests.Devices;

/// <summary>
/// Patchscopes where the model runs on the GPU backend's kernels (emulated on the CPU): the read activation, the typical
/// norm and the patched readings (tokens, top next-token probabilities) are the CPU's; the vector is patched on the device
/// and only the asked row, the per-position norms and the last position's logits come back.
/// </summary>
public sealed class DevicePatchscopeTests : IDisposable
{
    static readonly int[] Prompt = [82, 87, 74, 39, 184, 175, 214, 409, 305, 33, 71, 171];
    readonly GpuBackend _backend = ComputeBackends.Create(new Device(DeviceKind.Emulated));
    readonly HookedTransformer _cpu = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
    readonly HookedTransformer _device;

    public DevicePatchscopeTests() => _device = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"), _backend);

    public void Dispose()
    {
        _device.Dispose();
        _cpu.Dispose();
        _backend.Dispose();
    }

    [Fact]
    public void APatchscopeOnTheDeviceReadsWhatTheCpuReads()
    {
        int L = _cpu.Config.NLayers, D = _cpu.Config.DModel;
        for (int layer = 0; layer <= L; layer++)
        {
            var expected = Patchscope.Read(_cpu, Prompt, layer, 5);
            var before = _backend.Transfers.Snapshot();
            var actual = Patchscope.Read(_device, Prompt, layer, 5);
            var copies = _backend.Transfers.Snapshot() - before;
            Assert.True(copies.Out(TransferKind.Data) == 1 && copies.In(TransferKind.Data) == 0, $"one row out: {copies}");
            for (int i = 0; i < D; i++) Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4 * (1 + Math.Abs(expected[i])), $"layer {layer} [{i}]: cpu {expected[i]}, device {actual[i]}");
            double norm = Patchscope.TypicalNorm(_cpu, Prompt, Math.Min(layer, L - 1)), onDevice = Patchscope.TypicalNorm(_device, Prompt, Math.Min(layer, L - 1));
            Assert.InRange(onDevice, norm - 1e-4 * norm, norm + 1e-4 * norm);
        }

        var vector = Patchscope.Read(_cpu, Prompt, 1, 7);
        var cpuReadings = Patchscope.Run(_cpu, Prompt, -1, vector, [0, 1, 2, 1], newTokens: 5);
        var start = _backend.Transfers.Snapshot();
        var deviceReadings = Patchscope.Run(_device, Prompt, -1, vector, [0, 1, 2, 1], newTokens: 5);
        var runCopies = _backend.Transfers.Snapshot() - start;
        Assert.True(runCopies.In(TransferKind.Data) == 0 && runCopies.In(TransferKind.Weights) == 1, $"the vector goes in once: {runCopies}");
        Assert.True(runCopies.Out(TransferKind.Data) == 1, $"one table of last-position logits comes out: {runCopies}");
        for (int r = 0; r < cpuReadings.Count; r++)
        {
            Assert.Equal(cpuReadings[r].TargetLayer, deviceReadings[r].TargetLayer);
            Assert.Equal(cpuReadings[r].Tokens, deviceReadings[r].Tokens);
            Assert.Equal(cpuReadings[r].TopNext.Select(t => t.Token), deviceReadings[r].TopNext.Select(t => t.Token));
            foreach (var (e, a) in cpuReadings[r].TopNext.Zip(deviceReadings[r].TopNext))
                Assert.InRange(a.Probability, e.Probability - 1e-4, e.Probability + 1e-4);
        }
    }
}
