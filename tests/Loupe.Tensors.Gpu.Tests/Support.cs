using System.Globalization;
using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Gpu.Tests;

/// <summary>One emulated backend for every test class: an ILGPU context and its compiled kernels are costly.</summary>
public sealed class EmulatedBackendFixture : IDisposable
{
    // Kernel conformance runs with 4 threads per group (the emulated default is 2, for speed elsewhere): reductions and
    // scans get two levels.
    public GpuBackend Backend { get; } = GpuBackend.CreateEmulated(threadsPerGroup: 4);
    public void Dispose() => Backend.Dispose();
}

[CollectionDefinition(Name)]
public sealed class EmulatedCollection : ICollectionFixture<EmulatedBackendFixture>
{
    public const string Name = "emulated device";
}

/// <summary>Moving test data between the host, the CPU backend and the emulated device.</summary>
public abstract class DeviceTest(EmulatedBackendFixture fixture)
{
    protected GpuBackend Gpu => fixture.Backend;
    protected static CpuBackend Cpu => CpuBackend.Instance;

    protected static float[] Uniform(Random rng, int n, float lo = -1f, float hi = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.NextSingle();
        return a;
    }

    protected static Tensor Host(float[] data, params int[] shape) => new((float[])data.Clone(), shape.Length == 0 ? [data.Length] : shape);
    protected Tensor Dev(float[] data, params int[] shape) => Gpu.ToDevice(Host(data, shape));
    protected static float[] Read(Tensor t) => t.ToCpu().Span.ToArray();

    /// <summary>
    /// Runs <paramref name="op"/> on the CPU backend and on the device with the same inputs (outputs start as
    /// copies of the given arrays) and compares every output.
    /// </summary>
    protected void Same(string what, float[][] inputs, float[][] outputs, Action<IComputeBackend, Tensor[], Tensor[]> op, double atol = 1e-6, double rtol = 1e-5)
    {
        var cpuIn = inputs.Select(a => Host(a)).ToArray();
        var cpuOut = outputs.Select(a => Host(a)).ToArray();
        op(Cpu, cpuIn, cpuOut);
        var devIn = inputs.Select(a => Dev(a)).ToArray();
        var devOut = outputs.Select(a => Dev(a)).ToArray();
        op(Gpu, devIn, devOut);
        for (int i = 0; i < outputs.Length; i++) Close.All(cpuOut[i].Span, Read(devOut[i]), atol, rtol, $"{what} output {i}");
    }
}

/// <summary>
/// Element-wise closeness, <c>|actual − expected| ≤ atol + rtol·|expected|</c>; NaN must meet NaN and
/// infinities must match exactly. A failure names the worst element.
/// </summary>
static class Close
{
    public static void All(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: expected {expected.Length} elements, got {actual.Length}");
        int bad = 0, worst = -1;
        double worstExcess = double.NegativeInfinity;
        for (int i = 0; i < expected.Length; i++)
        {
            float e = expected[i], a = actual[i];
            double excess = float.IsNaN(e) || float.IsNaN(a) || float.IsInfinity(e) || float.IsInfinity(a)
                ? (e.Equals(a) ? double.NegativeInfinity : double.PositiveInfinity)
                : Math.Abs((double)a - e) - (atol + rtol * Math.Abs((double)e));
            if (excess > 0) bad++;
            if (excess > worstExcess) { worstExcess = excess; worst = i; }
        }
        if (bad == 0) return;
        Assert.Fail(string.Create(CultureInfo.InvariantCulture,
            $"{what}: {bad} of {expected.Length} elements differ; worst at [{worst}]: expected {expected[worst]:R}, got {actual[worst]:R}"));
    }
}
