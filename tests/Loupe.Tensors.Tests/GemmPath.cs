using Loupe.Tensors.Kernels;

namespace Loupe.Tensors.Tests;

/// <summary>
/// Tests that toggle the static <see cref="Gemm.ForceManaged"/> live in this collection, which xunit runs
/// on its own after every parallel collection has finished, so no other test sees the switch mid-flight.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GemmPathCollection
{
    public const string Name = "Gemm path (Gemm.ForceManaged is static)";
}

/// <summary>Selects the GEMM path for a scope: <c>using var _ = GemmPath.Use("managed");</c>.</summary>
sealed class GemmPath : IDisposable
{
    public const string Blas = "blas", Managed = "managed";

    readonly bool _previous;

    GemmPath(bool forceManaged)
    {
        _previous = Gemm.ForceManaged;
        Gemm.ForceManaged = forceManaged;
    }

    /// <summary>"blas" (BLAS when the library loaded, else managed anyway) or "managed".</summary>
    public static GemmPath Use(string path) => path switch
    {
        Blas => new GemmPath(false),
        Managed => new GemmPath(true),
        _ => throw new ArgumentException($"unknown GEMM path '{path}'", nameof(path)),
    };

    public static readonly string[] Both = [Blas, Managed];

    public void Dispose() => Gemm.ForceManaged = _previous;
}
