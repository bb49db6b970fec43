using Loupe.Dictionaries.Sae;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>What the device trainers' tests (SAE and CLT) share: host-vs-device comparisons, the copy budget of a step and an activation with no device kernels.</summary>
static class DeviceTrainingChecks
{
    /// <summary>|expected − actual| ≤ absolute + relative·|expected|.</summary>
    public static void Close(float expected, float actual, double relative, double absolute, string what) =>
        Assert.True(Math.Abs(expected - actual) <= absolute + relative * Math.Abs(expected), $"{what}: host {expected:R}, device {actual:R}");

    /// <summary>Every element within <paramref name="relative"/> of the expected array's largest magnitude.</summary>
    public static void CloseArrays(float[] expected, float[] actual, double relative, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = expected.Length == 0 ? 0 : expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= relative * Math.Max(scale, 1e-12),
                $"{what}[{i}]: host {expected[i]:R}, device {actual[i]:R} (allowed {relative:G2} × {scale:G4})");
    }

    /// <summary>Over the measured steps: exactly <paramref name="uploads"/> batch uploads, <paramref name="reads"/> metric reads, nothing else.</summary>
    public static void OnlyBatchesInAndMetricsOut(TransferSnapshot moved, int uploads, int reads)
    {
        Assert.True(moved.In(TransferKind.Data) == uploads, $"batch uploads: {moved}");
        Assert.True(moved.Out(TransferKind.Data) == reads, $"one metric read per step: {moved}");
        Assert.True(moved.In(TransferKind.Weights) == 0 && moved.In(TransferKind.Inputs) == 0 && moved.Out(TransferKind.Scalars) == 0
            && moved.In(TransferKind.Scalars) == 0 && moved.Out(TransferKind.Weights) == 0 && moved.Out(TransferKind.Inputs) == 0,
            $"nothing else crosses during steps: {moved}");
    }

    /// <summary>An architecture outside the four built in: it has no device kernels.</summary>
    public sealed class SquareActivation : SaeActivation
    {
        public override string Architecture => "square";
        public override bool UnitNormDecoder => false;
        public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
        {
            for (int i = 0; i < batch * dSae; i++) acts[i] = pre[i] * pre[i];
        }
        public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
            Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g)
        {
            for (int i = 0; i < batch * dSae; i++) dPre[i] += 2 * pre[i] * dActs[i];
        }
    }
}
