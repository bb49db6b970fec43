using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Tensors.Gpu.Tests;

/// <summary>The GPU backend's kernels (on ILGPU's CPU accelerator), every operation against the reference twins (the suite is in tests/Shared).</summary>
[Collection(EmulatedCollection.Name)]
public sealed class EmulatedBackendConformance(EmulatedBackendFixture fixture) : BackendConformance
{
    protected override IComputeBackend Backend => fixture.Backend;
}

/// <summary>The same suite on a backend that keeps matrix weights in bf16 (products convert the other operand, accumulate in fp32).</summary>
[Collection(EmulatedCollection.Name)]
public sealed class EmulatedBf16BackendConformance : BackendConformance, IDisposable
{
    readonly GpuBackend _backend = GpuBackend.CreateEmulated(ElementType.BF16, threadsPerGroup: 4);
    protected override IComputeBackend Backend => _backend;
    public void Dispose() => _backend.Dispose();
}
