using Loupe.Tensors;
using Loupe.Tensors.Gpu;

namespace Loupe.Testing;

/// <summary>
/// One GPU backend on the emulated device (ILGPU's CPU accelerator) for a test class: its kernels compile once, and the
/// class's device tests share it (<c>IClassFixture&lt;EmulatedDevice&gt;</c>).
/// </summary>
public sealed class EmulatedDevice : IDisposable
{
    public GpuBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));

    public void Dispose() => Backend.Dispose();
}
