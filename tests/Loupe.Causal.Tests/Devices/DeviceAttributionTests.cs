using Loupe.Causal.Attribution;
using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Causal.Tests.Devices;

/// <summary>
/// Attribution patching where the model runs on the GPU backend's kernels (emulated on the CPU): the
/// same estimates as on the CPU backend, with the per-cell sums reduced on the device so that only
/// the sums come back.
/// </summary>
public sealed class DeviceAttributionTests
{
    [Theory]
    [InlineData("gpt2", "head_out")]
    [InlineData("llama", "head_out")]
    [InlineData("gpt2", "resid_pre")]
    [InlineData("gemma2", "attn_scores")]
    [InlineData("gpt_neox", "head_pattern")]
    [InlineData("llama", "k_input")]
    public void TheSweepMatchesTheCpuBackendAndCopiesOnlyItsResult(string arch, string targetName)
    {
        var target = targetName switch
        {
            "head_out" => PatchTarget.HeadOutByPosition,
            // Masked scores are −∞ in both runs: the device must skip them as the CPU does.
            "attn_scores" => PatchTarget.Custom("blocks.{layer}.attn.hook_attn_scores", headAxis: 1),
            _ => PatchTarget.Parse(targetName),
        };
        using var backend = ComputeBackends.Create(new Device(DeviceKind.Emulated));
        string folder = SharedData.TestData(Path.Combine("reference", arch));
        using var cpu = ModelLoader.LoadFolder(folder);
        using var device = ModelLoader.LoadFolder(folder, backend);
        var (clean, corrupt) = TestInputs.FixturePair();
        var metric = new LogitDiff(17, 42);
        var expected = AttributionPatching.Sweep(cpu, clean, corrupt, metric, target);
        device.Run(clean); // places the weights
        var before = backend.Transfers.Snapshot();
        var actual = AttributionPatching.Sweep(device, clean, corrupt, metric, target);
        var copies = backend.Transfers.Snapshot() - before;

        Assert.Equal(expected.Cells, actual.Cells);
        double scale = expected.Values.Max(v => Math.Abs(v - expected.CorruptValue)) + 1e-6;
        for (int i = 0; i < expected.Values.Length; i++)
            Assert.True(Math.Abs(expected.Values[i] - actual.Values[i]) <= 1e-4 * scale + 1e-5,
                $"cell {expected.Cells[i]}: cpu {expected.Values[i]}, device {actual.Values[i]}");
        Assert.Equal(expected.CleanValue, actual.CleanValue, 1e-4);
        Assert.Equal(0, copies.In(TransferKind.Data));
        // Out: one small [head, position] table per swept layer — the result.
        Assert.Equal(actual.Layers.Length, copies.Out(TransferKind.Data));
    }
}
