using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Gpu.Tests;

/// <summary>Device storage: explicit, counted copies; views without copies; 16-bit weights; refusing what cannot run.</summary>
[Collection(EmulatedCollection.Name)]
public sealed class StorageTests(EmulatedBackendFixture fixture) : DeviceTest(fixture)
{
    [Fact]
    public void DeviceTensorsRefuseHostReadsAndCountEveryCopy()
    {
        var t = Gpu.ToDevice(Tensor.FromArray([1f, 2f, 3f, 4f, 5f, 6f], 2, 3), TransferKind.Inputs);
        Assert.Equal(Gpu.Device, t.Device);
        Assert.False(t.IsHost);
        Assert.Throws<InvalidOperationException>(() => t.Span.Length);
        var before = Gpu.Transfers.Snapshot();
        var host = t.ToCpu();
        var copies = Gpu.Transfers.Snapshot() - before;
        Assert.Equal(1, copies.Out(TransferKind.Data));
        Assert.Equal([1f, 2f, 3f, 4f, 5f, 6f], host.Span.ToArray());
        Assert.Same(t, Gpu.ToDevice(t)); // already here: no copy
        Assert.Equal(0, (Gpu.Transfers.Snapshot() - before).In(TransferKind.Data));
    }

    [Fact]
    public void SlicesAreViewsAndClonesAreCopies()
    {
        var t = Dev([1f, 2f, 3f, 4f, 5f, 6f], 2, 3);
        var row = t[1];
        Gpu.Scale(row, 10f, row); // writes through the view
        Assert.Equal([1f, 2f, 3f, 40f, 50f, 60f], Read(t));
        var clone = t.Clone();
        Gpu.Fill(clone, 0f);
        Assert.Equal([1f, 2f, 3f, 40f, 50f, 60f], Read(t));
        Assert.Equal(new float[6], Read(clone));
        Assert.Equal(new float[4], Read(Gpu.Zeros(2, 2)));
    }

    [Fact]
    public void Bf16WeightsRoundToNearestEvenAndCountAsWeights()
    {
        // 1 + 2⁻⁸ is halfway between two bf16 values: even mantissa (1.0) wins; 1 + 3·2⁻⁸ rounds up to 1 + 2⁻⁶.
        float[] values = [1f + 1f / 256, 1f + 3f / 256, -2.5f, float.PositiveInfinity, 0f, 3.1415927f];
        var before = Gpu.Transfers.Snapshot();
        var w = Gpu.LoadWeight(values, [2, 3], ElementType.BF16);
        Assert.Equal(1, (Gpu.Transfers.Snapshot() - before).In(TransferKind.Weights));
        Assert.Equal(ElementType.BF16, w.Storage.ElementType);
        Assert.Equal([1f, 1f + 4f / 256, -2.5f, float.PositiveInfinity, 0f, 3.140625f], Read(w));
        var h = Gpu.LoadWeight(values, [6], ElementType.F16);
        Assert.Equal([1f + 1f / 256, 1f + 3f / 256, -2.5f, float.PositiveInfinity, 0f, 3.140625f], Read(h)); // both exact in fp16
        // Read by an op other than GEMM, a 16-bit weight is widened on the device.
        var y = Gpu.Empty(6);
        Gpu.Scale(w.Reshape(6), 2f, y);
        Assert.Equal([2f, 2f + 8f / 256, -5f, float.PositiveInfinity, 0f, 6.28125f], Read(y));
        Assert.Throws<ArgumentException>(() => Gpu.Fill(w, 0f));
    }

    [Fact]
    public void TheCpuBackendsRoundedWeightsAreTheDevicesBf16Weights()
    {
        // CpuBackend.WithRoundedWeights is the bench's reference for a bf16 device run: it must round exactly as the upload does.
        var rng = new Random(5);
        var values = Enumerable.Range(0, 4096).Select(i => i < 8 ? new[] { 0f, -0f, 1e-40f, -1e-40f, float.MaxValue, float.Epsilon, 1f + 1f / 256, -3f - 3f / 256 }[i]
            : (float)((rng.NextDouble() * 2 - 1) * Math.Pow(10, rng.Next(-30, 30)))).ToArray();
        var device = Read(Gpu.LoadWeight(values, [64, 64], ElementType.BF16));
        var cpu = CpuBackend.WithRoundedWeights(ElementType.BF16).LoadWeight(values, [64, 64], ElementType.BF16).Span.ToArray();
        Assert.Equal(device, cpu);
    }

    [Fact]
    public void ABf16BackendSaysSoAndKeepsWeightsAsAskedFor()
    {
        using var bf16 = ComputeBackends.Create(new Device(DeviceKind.Emulated), ElementType.BF16);
        Assert.Equal(ElementType.BF16, bf16.WeightElementType);
        Assert.Equal(ElementType.BF16, bf16.LoadWeight(new float[6], [2, 3], bf16.WeightElementType).Storage.ElementType);
        Assert.Equal(ElementType.F32, bf16.LoadWeight(new float[6], [2, 3]).Storage.ElementType); // e.g. an embedding table
        Assert.Equal(ElementType.F32, bf16.LoadWeight(new float[3], [3]).Storage.ElementType);
        Assert.Equal(ElementType.F16, bf16.LoadWeight(new float[6], [2, 3], ElementType.F16).Storage.ElementType);
    }

    [Fact]
    public void MemoryOfCollectedTensorsIsReused()
    {
        static void Churn(GpuBackend gpu)
        {
            for (int i = 0; i < 20; i++) gpu.Fill(gpu.Empty(4096), 1f);
            // Nothing queued may still hold a tensor when the GC looks (a loaded CI machine once kept 6 of 20 a round, and
            // the pool grew by them).
            gpu.Synchronize();
        }
        static void Collect()
        {
            for (int i = 0; i < 3; i++) { GC.Collect(); GC.WaitForPendingFinalizers(); }
        }
        // A backend of its own: the shared one's pool also grows by whatever tests running beside this one allocate (a loaded
        // machine once measured 329,240 bytes held after the round against 214,552 before it).
        using var gpu = ComputeBackends.Create(new Device(DeviceKind.Emulated));
        // Two rounds first: the first allocations and their finalization happen here, not during the measurement.
        Churn(gpu);
        Collect();
        Churn(gpu);
        Collect();
        long held = gpu.PooledBytes;
        Churn(gpu);
        Collect();
        Assert.Equal(held, gpu.PooledBytes);
    }

    [Fact]
    public void InputsAreCountedAsInputs()
    {
        var table = Gpu.LoadWeight(new float[4 * 3], [4, 3]);
        var before = Gpu.Transfers.Snapshot();
        Gpu.Embedding(table, 3, [1, 2, 3], 1f, Gpu.Empty(3, 3));
        var copies = Gpu.Transfers.Snapshot() - before;
        Assert.Equal(1, copies.In(TransferKind.Inputs));
        Assert.Equal(0, copies.In(TransferKind.Data));
    }

    [Fact]
    public void HostTensorsAreRefusedWithAHint()
    {
        var e = Assert.Throws<ArgumentException>(() => Gpu.Add(Tensor.Zeros(3), Gpu.Zeros(3), Gpu.Empty(3)));
        Assert.Contains("ToDevice", e.Message);
    }

    [Fact]
    public void NameAndInfoDescribeTheDevice()
    {
        Assert.Equal("emulated (ILGPU CPU accelerator)", Gpu.Name);
        var info = ComputeBackends.Describe(Gpu);
        Assert.Equal("emulated", info.Device);
        Assert.Same(CpuBackend.Instance, ComputeBackends.Shared(Device.Cpu));
    }

    [Fact]
    public void SharedBackendsAreOnePerDeviceAndWeightType()
    {
        var emulated = new Device(DeviceKind.Emulated);
        var bf16 = ComputeBackends.Shared(emulated, ElementType.BF16);
        Assert.Equal(ElementType.BF16, bf16.WeightElementType);
        Assert.Same(bf16, ComputeBackends.Shared(emulated, ElementType.BF16));
        var fp32 = ComputeBackends.Shared(emulated);
        Assert.Equal(ElementType.F32, fp32.WeightElementType);
        Assert.NotSame(bf16, fp32);
        // the CPU backend computes with fp32 weights: a 16-bit CPU backend is CpuBackend.WithRoundedWeights, never shared
        Assert.Throws<ArgumentException>(() => ComputeBackends.Shared(Device.Cpu, ElementType.F16));
    }

    [Fact]
    public void CudaWithoutADriverIsAnInputErrorThatSaysWhatIsMissing()
    {
        if (File.Exists("/usr/lib/x86_64-linux-gnu/libcuda.so.1") || Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") is { Length: > 0 } p && p.Split(':').Any(d => File.Exists(Path.Combine(d, "libcuda.so.1"))))
            return; // a machine with a driver: nothing to refuse
        var e = Assert.Throws<InputError>(() => GpuBackend.Create(new Device(DeviceKind.Cuda, 0)));
        Assert.Contains("cuda:0", e.Message);
        Assert.Contains("libcuda.so.1", e.Message);
        Assert.Contains("/usr/lib/x86_64-linux-gnu", e.Message);
        Assert.DoesNotContain("\n", e.Message);
        Assert.Throws<InputError>(() => ComputeBackends.Shared(new Device(DeviceKind.Cuda, 1)));
    }
}
