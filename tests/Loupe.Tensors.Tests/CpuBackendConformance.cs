using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Tensors.Tests;

/// <summary>The CPU backend, every operation against the reference twins (the suite is in tests/Shared).</summary>
public sealed class CpuBackendConformance : BackendConformance
{
    protected override IComputeBackend Backend => CpuBackend.Instance;
}
