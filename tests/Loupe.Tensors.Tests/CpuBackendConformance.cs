using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Tensors.Tests;

/// <summary>The CPU backend, every operation against the reference twins (the suite is in tests/Shared).</summary>
public sealed class CpuBackendConformance : BackendConformance
{
    protected override IComputeBackend Backend => CpuBackend.Instance;
}

/// <summary>
/// The same suite with the managed GEMM forced (what runs where OpenBLAS is missing); attention and its
/// backward call the GEMM from parallel workers on that path.
/// </summary>
[Collection(GemmPathCollection.Name)]
public sealed class CpuBackendConformanceManagedGemm : BackendConformance, IDisposable
{
    readonly GemmPath _path = GemmPath.Use(GemmPath.Managed);

    protected override IComputeBackend Backend => CpuBackend.Instance;

    public void Dispose() => _path.Dispose();
}
