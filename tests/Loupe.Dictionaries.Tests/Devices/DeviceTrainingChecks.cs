using Loupe.Dictionaries.Sae;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>What the device trainers' tests (SAE and CLT) share: the copy budget of a step and an activation with no device kernels.</summary>
static class DeviceTrainingChecks
{
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
