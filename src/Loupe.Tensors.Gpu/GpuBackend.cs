using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;

namespace Loupe.Tensors.Gpu;

/// <summary>What <c>loupe info</c> reports about a backend's device.</summary>
/// <param name="Device">The device (<c>cuda:0</c>, <c>emulated</c>, <c>cpu</c>).</param>
/// <param name="Name">The processor's name.</param>
/// <param name="Backend">The backend's <see cref="IComputeBackend.Name"/>.</param>
/// <param name="TotalMemoryBytes">Device memory, when known.</param>
/// <param name="FreeMemoryBytes">Free device memory now, when known.</param>
/// <param name="ComputeCapability">CUDA compute capability (<c>9.0</c>), when a CUDA device.</param>
/// <param name="Libraries">Native libraries in use (cuBLAS path), when any.</param>
public sealed record DeviceInfo(string Device, string Name, string Backend, long? TotalMemoryBytes, long? FreeMemoryBytes, string? ComputeCapability, string? Libraries);

/// <summary>
/// The GPU backend: tensors in device memory, element-wise, row, attention and training ops as ILGPU
/// kernels (<see cref="Kernels"/>), products through cuBLAS on CUDA. On <see cref="DeviceKind.Emulated"/>
/// the same kernels run on ILGPU's CPU accelerator and products run as a kernel too, so every kernel is
/// testable without a GPU. All work goes to one stream; reads back to the host wait for it.
/// </summary>
public sealed class GpuBackend : IComputeBackend, IDisposable
{
    readonly Context _context;
    readonly Accelerator _accelerator;
    readonly BufferPool _pool;
    readonly Cublas? _cublas;
    readonly int _group;
    readonly DeviceBlock _dummy;
    readonly ConditionalWeakTable<RotaryTable, RotaryOnDevice> _rotary = new();
    bool _disposed;

    sealed class RotaryOnDevice
    {
        public GpuStorage? Cos, Sin;
        public int Count;
    }

    GpuBackend(Device device, ElementType weightType, Context context, Accelerator accelerator, Cublas? cublas)
    {
        Device = device;
        WeightElementType = weightType;
        _context = context;
        _accelerator = accelerator;
        _cublas = cublas;
        _group = (int)Math.Min(Kernels.MaxGroup, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)accelerator.MaxNumThreadsPerGroup + 1) / 2);
        long budget = accelerator is CudaAccelerator ? accelerator.MemorySize / 10 * 9 : 1L << 40;
        _pool = new BufferPool(accelerator, budget);
        _dummy = _pool.Rent(16);
        string blas = cublas is null ? "" : $" + cuBLAS {cublas.Version / 10000}.{cublas.Version / 100 % 100}";
        Name = device.Kind == DeviceKind.Cuda
            ? $"{device} {accelerator.Name} (ILGPU {typeof(Context).Assembly.GetName().Version?.ToString(3)}{blas})"
            : "emulated (ILGPU CPU accelerator)";
    }

    /// <summary>
    /// A backend on <paramref name="device"/>: <see cref="DeviceKind.Cuda"/> on that GPU (kernels by ILGPU, GEMMs by
    /// cuBLAS), <see cref="DeviceKind.Emulated"/> on ILGPU's CPU accelerator. <paramref name="weightType"/> is how
    /// matrices are kept when a caller loads them as fp32 (bf16/fp16: half the memory, products accumulate in fp32).
    /// </summary>
    /// <exception cref="InputError">CUDA is not usable here: no driver, no such device, or no cuBLAS (the message says which and where it looked).</exception>
    /// <exception cref="ArgumentException">The device is the CPU (use <see cref="CpuBackend"/>).</exception>
    public static GpuBackend Create(Device device, ElementType weightType = ElementType.F32)
    {
        switch (device.Kind)
        {
            case DeviceKind.Emulated:
                return CreateEmulated(device, weightType, DefaultEmulatedThreadsPerGroup);
            case DeviceKind.Cuda:
                return CreateCuda(device, weightType);
            default:
                throw new ArgumentException($"the GPU backend does not run on {device}; use CpuBackend.Instance", nameof(device));
        }
    }

    /// <summary>
    /// Threads per group on the emulated device by default. ILGPU's CPU accelerator runs every thread of a group as an
    /// OS thread that spin-waits at each barrier; with its default 16 (and even 4) a 2-core CI machine spent most of a
    /// device test in barrier hand-offs (a 60-token generation of stories260K: 8.0 s with 4 threads, 3.0 s with 2; the
    /// persona sweep of the CLI suite 45 s → 15 s). Two threads still run every reduction and barrier with more than one
    /// thread; the kernel conformance suite runs with more (<see cref="CreateEmulated(ElementType, int)"/>'s argument).
    /// </summary>
    public const int DefaultEmulatedThreadsPerGroup = 2;

    /// <summary>A backend on the emulated device (ILGPU's CPU accelerator) with <paramref name="threadsPerGroup"/> threads per group.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threadsPerGroup"/> is not a power of two in [2, <see cref="Kernels.MaxGroup"/>].</exception>
    public static GpuBackend CreateEmulated(ElementType weightType = ElementType.F32, int threadsPerGroup = DefaultEmulatedThreadsPerGroup) =>
        CreateEmulated(new Device(DeviceKind.Emulated), weightType, threadsPerGroup);

    static GpuBackend CreateEmulated(Device device, ElementType weightType, int threadsPerGroup)
    {
        if (threadsPerGroup < 2 || threadsPerGroup > Kernels.MaxGroup || !System.Numerics.BitOperations.IsPow2(threadsPerGroup))
            throw new ArgumentOutOfRangeException(nameof(threadsPerGroup), threadsPerGroup, $"a power of two from 2 to {Kernels.MaxGroup}");
        // One multiprocessor (groups run one after another), warps of two threads.
        var cpu = new ILGPU.Runtime.CPU.CPUDevice(2, threadsPerGroup / 2, 1);
        var context = Context.Create(b => b.CPU(cpu).EnableAlgorithms());
        try { return new GpuBackend(device, weightType, context, context.CreateCPUAccelerator(0), null); }
        catch { context.Dispose(); throw; }
    }

    static GpuBackend CreateCuda(Device device, ElementType weightType)
    {
        CudaLibraries.LoadDriver(device);
        Context context;
        try { context = Context.Create(b => b.Cuda().EnableAlgorithms()); }
        catch (Exception e) when (e is not InputError)
        {
            throw new InputError($"device {device}: the CUDA driver is present but does not start ({e.GetType().Name}: {OneLine(e.Message)}); check `nvidia-smi` or use --device cpu");
        }
        Accelerator? accelerator = null;
        try
        {
            var devices = new List<CudaDevice>();
            foreach (var found in context.GetCudaDevices()) devices.Add(found);
            if (devices.Count == 0)
            {
                var (status, count, path) = CudaLibraries.ProbeDevices();
                string visible = $"CUDA_VISIBLE_DEVICES={Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") ?? "unset"}";
                throw new InputError(count > 0
                    ? $"device {device}: the CUDA driver at {path} reports {count} GPU(s) but ILGPU {typeof(Context).Assembly.GetName().Version?.ToString(3)} could not use them (an unsupported GPU or driver version?); use --device cpu"
                    : $"device {device}: the CUDA driver at {path} sees no GPU (cuInit/cuDeviceGetCount status {status}; {visible}); check `nvidia-smi` or use --device cpu");
            }
            if (device.Index >= devices.Count)
                throw new InputError($"device {device}: no such GPU; {devices.Count} CUDA device(s) found ({string.Join(", ", devices.Select((d, i) => $"cuda:{i} {d.Name}").ToArray())})");
            accelerator = devices[device.Index].CreateAccelerator(context);
            var stream = ((CudaStream)accelerator.DefaultStream).StreamPtr;
            var cublas = new Cublas(device, stream);
            return new GpuBackend(device, weightType, context, accelerator, cublas);
        }
        catch
        {
            accelerator?.Dispose();
            context.Dispose();
            throw;
        }
    }

    static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();

    public string Name { get; }
    public Device Device { get; }
    public TransferCounter Transfers { get; } = new();

    /// <summary>How matrices (rank ≥ 2) given to <see cref="LoadWeight"/> as fp32 are kept on the device.</summary>
    public ElementType WeightElementType { get; }

    /// <summary>
    /// How a product with 16-bit weights takes its fp32 activation operand (<see cref="HalfActivations.Split"/> unless set):
    /// read at every product, so set it before a run, not during one.
    /// </summary>
    public HalfActivations HalfActivations { get; set; } = HalfActivations.Split;

    /// <summary>The device's name, memory and compute capability.</summary>
    public DeviceInfo Info
    {
        get
        {
            if (_accelerator is CudaAccelerator cuda)
                return new DeviceInfo(Device.ToString(), cuda.Name, Name, cuda.MemorySize, TryFree(cuda),
                    cuda.Architecture is { } arch ? $"{arch.Major}.{arch.Minor}" : null, _cublas?.LibraryPath);
            return new DeviceInfo(Device.ToString(), "ILGPU CPU accelerator", Name, null, null, null, null);
        }
    }

    /// <inheritdoc/>
    public long? FreeMemoryBytes => _accelerator is CudaAccelerator cuda ? TryFree(cuda) : null;

    static long? TryFree(CudaAccelerator cuda)
    {
        try { return cuda.GetFreeMemory(); }
        catch (Exception) { return null; }
    }

    /// <summary>Threads per group of the row kernels (at most <see cref="Kernels.MaxGroup"/>).</summary>
    internal int GroupSize => _group;

    /// <summary>Device memory held by this backend's pool (in use or idle).</summary>
    public long PooledBytes => _pool.AllocatedBytes;

    /// <summary>Waits for all queued work.</summary>
    public void Synchronize() => _accelerator.Synchronize();

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try { _accelerator.Synchronize(); } catch (Exception) { /* a failed device still gets its handles closed */ }
        _cublas?.Dispose();
        _pool.Dispose();
        _accelerator.Dispose();
        _context.Dispose();
    }

    // ---- kernels, loaded on first use ------------------------------------------------------------

    readonly Dictionary<string, Delegate> _kernels = new();

    T Kernel<T>(string name, Func<Accelerator, T> load) where T : Delegate
    {
        lock (_kernels)
        {
            if (_kernels.TryGetValue(name, out var k)) return (T)k;
            var loaded = load(_accelerator);
            _kernels[name] = loaded;
            return loaded;
        }
    }

    Action<Index1D, ArrayView<float>, float> KFill => Kernel("fill", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(Kernels.Fill));
    Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int, int> KCopyRows => Kernel("copyRows", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, int, int>(Kernels.CopyRows));
    Action<Index1D, ArrayView<float>, ArrayView<ushort>> KToBf16 => Kernel("toBf16", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<ushort>>(Kernels.ToBf16));
    Action<Index1D, ArrayView<float>, ArrayView<ushort>> KToF16 => Kernel("toF16", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<ushort>>(Kernels.ToF16));
    Action<Index1D, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, int> KSplitToHalf => Kernel("splitToHalf", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, int>(Kernels.SplitToHalf));
    Action<Index1D, ArrayView<ushort>, ArrayView<float>, int> KHalfToFloat => Kernel("halfToFloat", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ushort>, ArrayView<float>, int>(Kernels.HalfToFloat));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> KBinary => Kernel("binary", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(Kernels.Binary));
    Action<Index1D, ArrayView<float>, ArrayView<float>, float> KScale => Kernel("scale", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, float>(Kernels.Scale));
    Action<Index1D, ArrayView<float>, ArrayView<float>, float> KSoftCap => Kernel("softCap", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, float>(Kernels.SoftCap));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, float> KSoftCapBackward => Kernel("softCapBackward", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, float>(Kernels.SoftCapBackward));
    Action<Index1D, ArrayView<float>, ArrayView<float>, int> KAddRowVector => Kernel("addRowVector", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(Kernels.AddRowVector));
    Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int> KSumMiddle => Kernel("sumMiddle", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, int>(Kernels.SumMiddleAxis));
    Action<Index1D, ArrayView<float>, ArrayView<float>, int> KActivation => Kernel("activation", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(Kernels.Activation));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> KActivationBackward => Kernel("activationBackward", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(Kernels.ActivationBackward));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamArgs> KAdam => Kernel("adam", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamArgs>(Kernels.Adam));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs> KGemm => Kernel("gemm", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Kernels.Gemm));
    Action<Index1D, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, GemmArgs> KGemm16 => Kernel("gemm16", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, GemmArgs>(Kernels.Gemm16));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int> KFp16RowScales => Kernel("fp16RowScales", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(Kernels.Fp16RowScales));
    Action<Index1D, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, int, int, int, int> KScaledToF16 => Kernel("scaledToF16", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, int, int, int, int>(Kernels.ScaledToF16));
    Action<Index1D, ArrayView<float>, ArrayView<float>, int, int> KScaleGemmRows => Kernel("scaleGemmRows", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int>(Kernels.ScaleGemmRows));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, NormArgs> KNorm => Kernel("norm", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, NormArgs>(Kernels.Norm));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, NormArgs> KNormBackwardScale => Kernel("normBackwardScale", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, NormArgs>(Kernels.NormBackwardScale));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, NormArgs> KNormBackwardInput => Kernel("normBackwardInput", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, NormArgs>(Kernels.NormBackwardInput));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, int> KSoftmax => Kernel("softmax", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(Kernels.Softmax));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> KSoftmaxBackward => Kernel("softmaxBackward", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(Kernels.SoftmaxBackward));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, int> KLogSoftmax => Kernel("logSoftmax", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(Kernels.LogSoftmax));
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, float> KCrossEntropy => Kernel("crossEntropy", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, float>(Kernels.CrossEntropy));
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, int> KArgMax => Kernel("argMax", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, int>(Kernels.ArgMax));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> KTopK => Kernel("topK", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(Kernels.TopK));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> KTopKRadix => Kernel("topKRadix", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(Kernels.TopKRadix));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> KTopKRadixLarge => Kernel("topKRadixLarge", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(Kernels.TopKRadixLarge));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> KScatterRows => Kernel("scatterRows", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(Kernels.ScatterRows));
    Action<KernelConfig, ArrayView<float>, ArrayView<double>, int> KSum => Kernel("sum", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<double>, int>(Kernels.SumPartials));
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, int, int> KNonFinite => Kernel("nonFinite", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, int, int>(Kernels.NonFinitePartials));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int, float> KRotary => Kernel("rotary", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int, float>(Kernels.Rotary));
    Action<Index1D, ArrayView<float>, ArrayView<int>, MaskArgs> KMask => Kernel("mask", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, MaskArgs>(Kernels.MaskScores));
    Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, float> KEmbedding => Kernel("embedding", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, float>(Kernels.Embedding));
    Action<Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int, float, int> KEmbeddingHalf => Kernel("embeddingHalf", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int, float, int>(Kernels.EmbeddingHalf));
    Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int> KGatherColumns => Kernel("gatherColumns", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>(Kernels.GatherColumns));
    Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, float> KEmbeddingBackward => Kernel("embeddingBackward", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, float>(Kernels.EmbeddingBackward));

    /// <summary>One group per row, as wide as the row needs (a power of two up to the device's group size).</summary>
    KernelConfig Rows(int rows, int n) =>
        new(Math.Max(rows, 1), (int)Math.Min(_group, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(n, 1))));

    // ---- storage -----------------------------------------------------------------------------

    [ThreadStatic] static Accelerator? t_bound;

    /// <summary>Makes this backend's CUDA context current on the calling thread (ILGPU binds it only on the creating thread).</summary>
    void Bind()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!ReferenceEquals(t_bound, _accelerator))
        {
            _accelerator.Bind();
            t_bound = _accelerator;
        }
    }

    static int Bytes(ElementType type) => type == ElementType.F32 ? 4 : 2;

    GpuStorage Allocate(long length, ElementType type = ElementType.F32, bool exact = false)
    {
        Bind();
        var block = _pool.Rent(Math.Max(1, length) * Bytes(type), exact);
        return new GpuStorage(this, block, 0, length, type);
    }

    GpuStorage Storage(Tensor t, string name)
    {
        Bind(); // every op passes its operands through here
        if (t.Storage is GpuStorage g && ReferenceEquals(g.Backend, this)) return g;
        throw new ArgumentException($"{name}: a tensor on {t.Device}{(t.Storage is GpuStorage ? " (another backend)" : "")} given to the {Device} backend; move it with ToDevice first", name);
    }

    /// <summary>An fp32 view for reading (a 16-bit weight is widened once).</summary>
    ArrayView<float> In(Tensor t, [CallerArgumentExpression(nameof(t))] string name = "") => Storage(t, name).AsF32().F32;

    ArrayView<float> In(Tensor t, long offset, [CallerArgumentExpression(nameof(t))] string name = "")
    {
        var v = In(t, name);
        if (offset < 0 || offset > v.Length) throw new ArgumentOutOfRangeException(name, $"{name}: offset {offset} is outside {v.Length} elements");
        return v.SubView(offset);
    }

    /// <summary>An fp32 view for writing.</summary>
    ArrayView<float> Out(Tensor t, [CallerArgumentExpression(nameof(t))] string name = "")
    {
        var s = Storage(t, name);
        if (s.ElementType != ElementType.F32) throw new ArgumentException($"{name}: a {s.ElementType} tensor cannot be written; outputs are fp32", name);
        return s.F32;
    }

    ArrayView<float> Dummy => _dummy.View<float>(0, 4);

    static void Need(ArrayView<float> v, long count, string name)
    {
        if (v.Length < count) throw new ArgumentException($"{name} has {v.Length} elements; {count} are needed", name);
    }

    internal GpuStorage Widen(GpuStorage half)
    {
        var wide = Allocate(half.Length);
        if (half.Length > 0) KHalfToFloat((int)half.Length, half.U16, wide.F32, half.ElementType == ElementType.BF16 ? 1 : 2);
        return wide;
    }

    internal GpuStorage CloneStorage(GpuStorage source)
    {
        var copy = Allocate(source.Length, source.ElementType);
        if (source.Length > 0)
        {
            if (source.ElementType == ElementType.F32) source.F32.CopyTo(copy.F32);
            else source.U16.CopyTo(copy.U16);
        }
        return copy;
    }

    internal void Download(GpuStorage source, Span<float> destination, TransferKind kind)
    {
        Bind();
        if (source.Length == 0) return;
        if (source.ElementType == ElementType.F32)
        {
            ((ArrayView1D<float, Stride1D.Dense>)source.F32).CopyToCPU(_accelerator.DefaultStream, destination);
        }
        else
        {
            var bits = new ushort[source.Length];
            ((ArrayView1D<ushort, Stride1D.Dense>)source.U16).CopyToCPU(_accelerator.DefaultStream, bits.AsSpan());
            bool bf16 = source.ElementType == ElementType.BF16;
            for (int i = 0; i < bits.Length; i++) destination[i] = bf16 ? Kernels.Bf16ToFloat(bits[i]) : Kernels.F16ToFloat(bits[i]);
        }
        _accelerator.DefaultStream.Synchronize();
        Transfers.CountToHost(kind, source.Length * Bytes(source.ElementType));
    }

    GpuStorage Upload(ReadOnlySpan<float> values, TransferKind kind)
    {
        var s = Allocate(values.Length);
        if (values.Length > 0)
        {
            ((ArrayView1D<float, Stride1D.Dense>)s.F32).CopyFromCPU(_accelerator.DefaultStream, values);
            Transfers.CountToDevice(kind, values.Length * 4L);
        }
        return s;
    }

    /// <summary>Small integer inputs (ids, positions, masks) for one launch: a pooled block, given back after the launch is queued.</summary>
    DeviceBlock UploadInts(ReadOnlySpan<int> values)
    {
        Bind();
        var block = _pool.Rent(Math.Max(1, values.Length) * 4L);
        if (values.Length > 0)
        {
            ((ArrayView1D<int, Stride1D.Dense>)block.View<int>(0, values.Length)).CopyFromCPU(_accelerator.DefaultStream, values);
            Transfers.CountToDevice(TransferKind.Inputs, values.Length * 4L);
        }
        return block;
    }

    // ---- memory ------------------------------------------------------------------------------

    public Tensor Empty(params int[] shape) => new(Allocate(ShapeUtil.Product(shape)), shape);

    public Tensor Zeros(params int[] shape)
    {
        var t = Empty(shape);
        if (t.Length > 0) ((GpuStorage)t.Storage).F32.MemSetToZero(_accelerator.DefaultStream);
        return t;
    }

    public Tensor ToDevice(Tensor tensor, TransferKind kind = TransferKind.Data)
    {
        if (tensor.Storage is GpuStorage g && ReferenceEquals(g.Backend, this)) return tensor;
        var host = tensor.ToCpu(); // a tensor of another device comes through the host (counted there)
        return new Tensor(Upload(host.Span, kind), tensor.Shape.ToArray());
    }

    /// <summary>
    /// Weights, once at load, counted as <see cref="TransferKind.Weights"/>, kept as <paramref name="keepAs"/> (callers ask for
    /// <see cref="WeightElementType"/> for matrices, fp32 for vectors and tables). 16-bit weights are rounded to nearest even on the host.
    /// </summary>
    public Tensor LoadWeight(ReadOnlyMemory<float> values, int[] shape, ElementType keepAs = ElementType.F32)
    {
        if (ShapeUtil.Product(shape) != values.Length)
            throw new ArgumentException($"shape {ShapeUtil.Format(shape)} holds {ShapeUtil.Product(shape)} elements but the weight has {values.Length}", nameof(shape));
        var type = keepAs;
        if (type == ElementType.F32)
        {
            var s = Allocate(values.Length, exact: true);
            if (values.Length > 0)
            {
                ((ArrayView1D<float, Stride1D.Dense>)s.F32).CopyFromCPU(_accelerator.DefaultStream, values.Span);
                Transfers.CountToDevice(TransferKind.Weights, values.Length * 4L);
            }
            return new Tensor(s, shape);
        }
        var half = Allocate(values.Length, type, exact: true);
        const int chunk = 1 << 20;
        var bits = new ushort[Math.Min(chunk, Math.Max(1, values.Length))];
        for (int start = 0; start < values.Length; start += chunk)
        {
            int len = Math.Min(chunk, values.Length - start);
            var src = values.Span.Slice(start, len);
            for (int i = 0; i < len; i++)
            {
                bits[i] = type == ElementType.BF16 ? Kernels.FloatToBf16(src[i]) : Kernels.FloatToF16(src[i]);
                if (type == ElementType.F16 && float.IsFinite(src[i]) && (bits[i] & 0x7C00) == 0x7C00)
                    throw new InputError($"a weight matrix of shape {ShapeUtil.Format(shape)} holds {src[i]:R} at element {start + i}, beyond fp16's ±65,504, so fp16 cannot keep it on {Device}: use --dtype bf16 (fp32's range) or fp32");
            }
            ((ArrayView1D<ushort, Stride1D.Dense>)half.U16.SubView(start, len)).CopyFromCPU(_accelerator.DefaultStream, bits.AsSpan(0, len));
        }
        _accelerator.DefaultStream.Synchronize(); // the staging array is reused
        Transfers.CountToDevice(TransferKind.Weights, values.Length * 2L);
        return new Tensor(half, shape);
    }

    public void CopyRows(Tensor src, long srcOffset, int srcStride, Tensor dst, long dstOffset, int dstStride, int rows, int cols, bool accumulate = false)
    {
        if (rows <= 0 || cols <= 0) return;
        var s = In(src, srcOffset);
        var d = Out(dst).SubView(dstOffset);
        Need(s, (long)(rows - 1) * srcStride + cols, nameof(src));
        Need(d, (long)(rows - 1) * dstStride + cols, nameof(dst));
        KCopyRows(rows * cols, s, d, srcStride, dstStride, cols, accumulate ? 1 : 0);
    }

    public void Fill(Tensor dst, float value)
    {
        var d = Out(dst);
        if (d.Length > 0) KFill((int)d.Length, d, value);
    }

    // ---- products ----------------------------------------------------------------------------

    public void Gemm(bool transA, bool transB, int m, int n, int k, float alpha, Tensor a, long aOffset, int lda,
        Tensor b, long bOffset, int ldb, float beta, Tensor c, long cOffset, int ldc) =>
        GemmBatched(transA, transB, m, n, k, alpha, a, aOffset, lda, 0, b, bOffset, ldb, 0, beta, c, cOffset, ldc, 0, 1);

    public void GemmBatched(bool transA, bool transB, int m, int n, int k, float alpha, Tensor a, long aOffset, int lda, long strideA,
        Tensor b, long bOffset, int ldb, long strideB, float beta, Tensor c, long cOffset, int ldc, long strideC, int batch)
    {
        if (m <= 0 || n <= 0 || batch <= 0) return;
        var cView = Out(c).SubView(cOffset);
        Need(cView, (batch - 1) * strideC + (long)(m - 1) * ldc + n, nameof(c));
        if (k <= 0)
        {
            // An empty sum: C = beta·C (0 when beta is 0, whatever C held).
            for (int i = 0; i < batch; i++)
                CopyScaled(cView.SubView(i * strideC), m, n, ldc, beta);
            return;
        }
        var bStorage = Storage(b, nameof(b));
        bool half = bStorage.ElementType != ElementType.F32;
        var aView = In(a, aOffset);
        long aExtent = (batch - 1) * strideA + (transA ? (long)(k - 1) * lda + m : (long)(m - 1) * lda + k);
        long bExtent = (batch - 1) * strideB + (transB ? (long)(n - 1) * ldb + k : (long)(k - 1) * ldb + n);
        Need(aView, aExtent, nameof(a));
        if (bOffset < 0 || bOffset + bExtent > bStorage.Length) throw new ArgumentException($"b has {bStorage.Length} elements; {bOffset + bExtent} are needed", nameof(b));
        var args = new GemmArgs
        {
            TransA = transA ? 1 : 0, TransB = transB ? 1 : 0, M = m, N = n, K = k, Lda = lda, Ldb = ldb, Ldc = ldc,
            StrideA = strideA, StrideB = strideB, StrideC = strideC, Alpha = alpha, Beta = beta,
        };
        if (!half)
        {
            if (_cublas is null && EmulatedProductsOnHostBlas) HostGemm(transA, transB, m, n, k, alpha, aView, aExtent, lda, strideA, bStorage.F32.SubView(bOffset), bExtent, ldb, strideB, beta, cView, ldc, strideC, batch);
            else if (_cublas is null) KGemm(checked(batch * m * n), aView, bStorage.F32.SubView(bOffset), cView, args);
            else _cublas.Gemm(transA, transB, m, n, k, alpha, aView.LoadEffectiveAddressAsPtr(), Cublas.R32F, lda, strideA,
                bStorage.F32.SubView(bOffset).LoadEffectiveAddressAsPtr(), Cublas.R32F, ldb, strideB, beta, cView.LoadEffectiveAddressAsPtr(), ldc, strideC, batch);
            return;
        }
        // Tensor cores (cuBLAS's mixed GEMM) want both operands 16-bit: the activation operand is converted on the device
        // (rounded, or split into hi + lo for a second product into the same C), and the products accumulate in fp32.
        // The emulated device runs the same conversions and Gemm16 for cuBLAS's part.
        int halfKind = bStorage.ElementType == ElementType.BF16 ? 1 : 2;
        var bHalf = bStorage.U16.SubView(bOffset);
        // fp16 ends at ±65,504 and its normal numbers at 6.1e-5, where fp32 activations need not: in a single fp16 product
        // each row of op(A) enters times the power of two that puts its largest entry in [2^14, 2^15), and C's row is divided
        // by it after (exact in binary). An MLP's large hidden units then stay finite and a backward pass's small gradients
        // keep their bits. (Batched products — none takes a 16-bit weight today — are not scaled.)
        bool scaleRows = halfKind == 2 && batch == 1;
        using var rowScales = scaleRows ? _pool.Rent(2L * m * sizeof(float)) : null;
        var scale = rowScales is null ? Dummy : rowScales.View<float>(0, m);
        var inverse = rowScales is null ? Dummy : rowScales.View<float>(m, m);
        if (scaleRows)
        {
            KFp16RowScales(Rows(m, k), aView, scale, inverse, k, lda, transA ? 1 : 0);
            if (beta != 0f) KScaleGemmRows(checked(m * n), cView, scale, n, ldc); // beta·C is divided with the product after
        }
        if (HalfActivations == HalfActivations.Rounded)
        {
            using var aHalf = _pool.Rent(Math.Max(1, aExtent) * 2);
            var aBits = aHalf.View<ushort>(0, aExtent);
            if (halfKind == 1) KToBf16((int)aExtent, aView.SubView(0, aExtent), aBits);
            else if (scaleRows) KScaledToF16((int)aExtent, aView.SubView(0, aExtent), aBits, aBits, scale, lda, m, transA ? 1 : 0, 0);
            else KToF16((int)aExtent, aView.SubView(0, aExtent), aBits);
            Product16(aBits, beta);
        }
        else
        {
            long loAt = (aExtent + 63) / 64 * 64; // lo starts 128-byte aligned, as tensor-core kernels like their operands
            using var parts = _pool.Rent((loAt + Math.Max(1, aExtent)) * 2);
            var hi = parts.View<ushort>(0, aExtent);
            var lo = parts.View<ushort>(loAt, aExtent);
            if (scaleRows) KScaledToF16((int)aExtent, aView.SubView(0, aExtent), hi, lo, scale, lda, m, transA ? 1 : 0, 1);
            else KSplitToHalf((int)aExtent, aView.SubView(0, aExtent), hi, lo, halfKind);
            Product16(hi, beta);
            Product16(lo, 1f);
        }
        if (scaleRows) KScaleGemmRows(checked(m * n), cView, inverse, n, ldc);

        void Product16(ArrayView<ushort> a16, float productBeta)
        {
            if (_cublas is null)
            {
                KGemm16(checked(batch * m * n), a16, bHalf, cView, args with { Beta = productBeta, Half = halfKind });
                return;
            }
            int type = halfKind == 1 ? Cublas.R16BF : Cublas.R16F;
            _cublas.Gemm(transA, transB, m, n, k, alpha, a16.LoadEffectiveAddressAsPtr(), type, lda, strideA,
                bHalf.LoadEffectiveAddressAsPtr(), type, ldb, strideB, productBeta, cView.LoadEffectiveAddressAsPtr(), ldc, strideC, batch);
        }
    }

    /// <summary>
    /// On the emulated device, fp32 products go to the host's sgemm (the device's memory is host memory there), as on a GPU they
    /// go to cuBLAS rather than to a kernel of Loupe's: the arguments (transposes, leading dimensions, batch strides, offsets)
    /// are what is being tested, and the naive <see cref="Kernels.Gemm"/> made products most of an emulated test's time. False:
    /// the kernel, which the kernel conformance suite checks against the reference twin.
    /// </summary>
    public bool EmulatedProductsOnHostBlas { get; set; } = true;

    unsafe void HostGemm(bool transA, bool transB, int m, int n, int k, float alpha, ArrayView<float> a, long aExtent, int lda, long strideA,
        ArrayView<float> b, long bExtent, int ldb, long strideB, float beta, ArrayView<float> c, int ldc, long strideC, int batch)
    {
        _accelerator.DefaultStream.Synchronize(); // kernels that wrote A or B have finished
        long cExtent = (batch - 1) * strideC + (long)(m - 1) * ldc + n;
        float* pa = (float*)a.LoadEffectiveAddressAsPtr(), pb = (float*)b.LoadEffectiveAddressAsPtr(), pc = (float*)c.LoadEffectiveAddressAsPtr();
        for (int i = 0; i < batch; i++)
        {
            long ai = i * strideA, bi = i * strideB, ci = i * strideC;
            Loupe.Tensors.Kernels.Gemm.Sgemm(transA, transB, m, n, k, alpha,
                new ReadOnlySpan<float>(pa + ai, checked((int)(aExtent - ai))), lda, new ReadOnlySpan<float>(pb + bi, checked((int)(bExtent - bi))), ldb,
                beta, new Span<float>(pc + ci, checked((int)(cExtent - ci))), ldc);
        }
    }

    void CopyScaled(ArrayView<float> c, int m, int n, int ldc, float beta)
    {
        if (beta == 0f) { KCopyRowsFill(c, m, n, ldc); return; }
        var tmp = Allocate((long)m * n);
        KCopyRows(m * n, c, tmp.F32, ldc, n, n, 0);
        KScale(m * n, tmp.F32, tmp.F32, beta);
        KCopyRows(m * n, tmp.F32, c, n, ldc, n, 0);
    }

    void KCopyRowsFill(ArrayView<float> c, int m, int n, int ldc)
    {
        var zeros = Allocate((long)m * n);
        zeros.F32.MemSetToZero(_accelerator.DefaultStream);
        KCopyRows(m * n, zeros.F32, c, n, ldc, n, 0);
    }

    public void Linear(Tensor x, int rows, int k, Tensor weight, bool weightIsOutIn, int n, Tensor? bias, Tensor y)
    {
        Gemm(false, weightIsOutIn, rows, n, k, 1f, x, 0, k, weight, 0, weightIsOutIn ? k : n, 0f, y, 0, n);
        if (bias is not null) AddRowVector(y, rows, bias);
    }

    // ---- element-wise ------------------------------------------------------------------------

    void Binary(Tensor a, Tensor b, Tensor? g, Tensor y, int op)
    {
        var yv = Out(y);
        var av = In(a);
        var bv = In(b);
        var gv = g is null ? Dummy : In(g);
        int n = (int)yv.Length;
        Need(av, n, nameof(a));
        Need(bv, n, nameof(b));
        if (g is not null) Need(gv, n, nameof(g));
        if (n > 0) KBinary(n, av, bv, gv, yv, op);
    }

    public void Add(Tensor a, Tensor b, Tensor y) => Binary(a, b, null, y, 0);
    public void Multiply(Tensor a, Tensor b, Tensor y) => Binary(a, b, null, y, 1);
    public void DifferenceProduct(Tensor a, Tensor b, Tensor g, Tensor y) => Binary(a, b, g, y, 2);

    public void Scale(Tensor a, float s, Tensor y)
    {
        var yv = Out(y);
        var av = In(a);
        Need(av, yv.Length, nameof(a));
        if (yv.Length > 0) KScale((int)yv.Length, av, yv, s);
    }

    public void AddRowVector(Tensor y, int rows, Tensor v)
    {
        var vv = In(v);
        int n = (int)vv.Length;
        var yv = Out(y);
        Need(yv, (long)rows * n, nameof(y));
        if (rows * n > 0) KAddRowVector(rows * n, yv, vv, n);
    }

    public void SumMiddleAxis(Tensor x, int outer, int middle, int inner, Tensor y, bool accumulate = false)
    {
        var xv = In(x);
        var yv = Out(y);
        Need(xv, (long)outer * middle * inner, nameof(x));
        Need(yv, (long)outer * inner, nameof(y));
        if (outer * inner > 0) KSumMiddle(outer * inner, xv, yv, middle, inner, accumulate ? 1 : 0);
    }

    static int ActivationKind(string name) => name switch
    {
        "relu" => 0,
        "silu" or "swish" => 1,
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_tanh" => 2,
        "gelu" or "gelu_exact" => 3,
        _ => throw new NotSupportedException($"activation function '{name}' is not supported (relu, silu, gelu, gelu_new, gelu_pytorch_tanh)"),
    };

    public void Activation(string name, Tensor x, Tensor y)
    {
        int kind = ActivationKind(name);
        var xv = In(x);
        var yv = Out(y);
        if (xv.Length != yv.Length) throw new ArgumentException($"activation needs equal lengths; x {xv.Length}, y {yv.Length}");
        if (yv.Length > 0) KActivation((int)yv.Length, xv, yv, kind);
    }

    public void ActivationBackward(string name, Tensor x, Tensor dy, Tensor dx)
    {
        int kind = ActivationKind(name);
        var xv = In(x);
        var dyv = In(dy);
        var dxv = Out(dx);
        if (xv.Length != dyv.Length || dxv.Length != dyv.Length)
            throw new ArgumentException($"activation backward needs equal lengths; x {xv.Length}, dy {dyv.Length}, dx {dxv.Length}");
        if (dxv.Length > 0) KActivationBackward((int)dxv.Length, xv, dyv, dxv, kind);
    }

    public void SoftCap(Tensor a, float cap, Tensor y)
    {
        var yv = Out(y);
        var av = In(a);
        Need(av, yv.Length, nameof(a));
        if (yv.Length > 0) KSoftCap((int)yv.Length, av, yv, cap);
    }

    public void SoftCapBackward(Tensor capped, Tensor dy, float cap, Tensor dx)
    {
        var o = Out(dx);
        var c = In(capped);
        var d = In(dy);
        Need(c, o.Length, nameof(capped));
        Need(d, o.Length, nameof(dy));
        if (o.Length > 0) KSoftCapBackward((int)o.Length, c, d, o, cap);
    }

    // ---- normalization -----------------------------------------------------------------------

    NormArgs NormArgsFor(bool center, int d, Tensor? weight, float weightOffset, Tensor? bias, float eps, bool givenScale) => new()
    {
        Center = center ? 1 : 0, D = d, HasWeight = weight is null ? 0 : 1, HasBias = bias is null ? 0 : 1,
        GivenScale = givenScale ? 1 : 0, WeightOffset = weightOffset, Eps = eps,
    };

    ArrayView<float> Optional(Tensor? t, int d, string name)
    {
        if (t is null) return Dummy;
        var v = In(t, name);
        Need(v, d, name);
        return v;
    }

    public void Norm(bool center, Tensor x, int rows, int d, Tensor? weight, float weightOffset, Tensor? bias, float eps, Tensor y, Tensor scale)
    {
        if (rows <= 0) return;
        var xv = In(x);
        Need(xv, (long)rows * d, nameof(x));
        var yv = Out(y);
        Need(yv, (long)rows * d, nameof(y));
        var sv = Out(scale);
        Need(sv, rows, nameof(scale));
        KNorm(Rows(rows, d), xv, Optional(weight, d, nameof(weight)), Optional(bias, d, nameof(bias)), yv, sv,
            NormArgsFor(center, d, weight, weightOffset, bias, eps, false));
    }

    public void NormWithScale(bool center, Tensor x, int rows, int d, Tensor? weight, float weightOffset, Tensor? bias, Tensor scale, Tensor y)
    {
        if (rows <= 0) return;
        var xv = In(x);
        Need(xv, (long)rows * d, nameof(x));
        var yv = Out(y);
        Need(yv, (long)rows * d, nameof(y));
        var sv = In(scale);
        Need(sv, rows, nameof(scale));
        KNorm(Rows(rows, d), xv, Optional(weight, d, nameof(weight)), Optional(bias, d, nameof(bias)), yv, sv,
            NormArgsFor(center, d, weight, weightOffset, bias, 0f, true));
    }

    public void NormBackwardScale(bool center, Tensor x, Tensor scale, Tensor dy, int rows, int d, Tensor? weight, float weightOffset, Tensor dScale)
    {
        if (rows <= 0) return;
        var xv = In(x);
        var dyv = In(dy);
        Need(xv, (long)rows * d, nameof(x));
        Need(dyv, (long)rows * d, nameof(dy));
        var sv = In(scale);
        Need(sv, rows, nameof(scale));
        var o = Out(dScale);
        Need(o, rows, nameof(dScale));
        KNormBackwardScale(Rows(rows, d), xv, sv, dyv, Optional(weight, d, nameof(weight)), o, NormArgsFor(center, d, weight, weightOffset, null, 0f, true));
    }

    public void NormBackwardInput(bool center, Tensor x, Tensor scale, Tensor dy, Tensor dScale, int rows, int d, Tensor? weight, float weightOffset, Tensor dx)
    {
        if (rows <= 0) return;
        var xv = In(x);
        var dyv = In(dy);
        Need(xv, (long)rows * d, nameof(x));
        Need(dyv, (long)rows * d, nameof(dy));
        var sv = In(scale);
        var dsv = In(dScale);
        Need(sv, rows, nameof(scale));
        Need(dsv, rows, nameof(dScale));
        var o = Out(dx);
        Need(o, (long)rows * d, nameof(dx));
        KNormBackwardInput(Rows(rows, d), xv, sv, dyv, dsv, Optional(weight, d, nameof(weight)), o, NormArgsFor(center, d, weight, weightOffset, null, 0f, true));
    }

    // ---- softmax and reductions --------------------------------------------------------------

    (ArrayView<float> X, ArrayView<float> Y) RowPair(Tensor x, Tensor y, int rows, int n, string xName, string yName)
    {
        var xv = In(x, xName);
        var yv = Out(y, yName);
        Need(xv, (long)rows * n, xName);
        Need(yv, (long)rows * n, yName);
        return (xv, yv);
    }

    public void SoftmaxRows(Tensor x, int rows, int n, Tensor y)
    {
        if (rows <= 0 || n <= 0) return;
        var (xv, yv) = RowPair(x, y, rows, n, nameof(x), nameof(y));
        KSoftmax(Rows(rows, n), xv, yv, n);
    }

    public void SoftmaxBackwardRows(Tensor p, Tensor dp, int rows, int n, Tensor dx)
    {
        if (rows <= 0 || n <= 0) return;
        var (pv, o) = RowPair(p, dx, rows, n, nameof(p), nameof(dx));
        var dpv = In(dp);
        Need(dpv, (long)rows * n, nameof(dp));
        KSoftmaxBackward(Rows(rows, n), pv, dpv, o, n);
    }

    public void LogSoftmaxRows(Tensor x, int rows, int n, Tensor y)
    {
        if (rows <= 0 || n <= 0) return;
        var (xv, yv) = RowPair(x, y, rows, n, nameof(x), nameof(y));
        KLogSoftmax(Rows(rows, n), xv, yv, n);
    }

    public void CrossEntropyRows(Tensor logits, int rows, int n, ReadOnlySpan<int> targets, Tensor loss, Tensor? dLogits, float weight)
    {
        if (targets.Length < rows) throw new ArgumentException($"{targets.Length} targets for {rows} rows", nameof(targets));
        for (int r = 0; r < rows; r++)
            if (targets[r] >= n) throw new ArgumentOutOfRangeException(nameof(targets), $"target {targets[r]} of row {r} is outside {n} classes");
        if (rows <= 0) return;
        var xv = In(logits);
        Need(xv, (long)rows * n, nameof(logits));
        var lv = Out(loss);
        Need(lv, rows, nameof(loss));
        var dv = dLogits is null ? Dummy : Out(dLogits);
        if (dLogits is not null) Need(dv, (long)rows * n, nameof(dLogits));
        using var t = UploadInts(targets[..rows]);
        KCrossEntropy(Rows(rows, n), xv, t.View<int>(0, rows), lv, dv, n, dLogits is null ? 0 : 1, weight);
    }

    int Partials(long n) => (int)Math.Clamp((n + _group - 1) / _group, 1, 1024);

    public double Sum(Tensor x)
    {
        var xv = In(x);
        if (xv.Length == 0) return 0;
        int groups = Partials(xv.Length);
        using var partials = _pool.Rent(groups * 8L);
        var pv = partials.View<double>(0, groups);
        KSum(new KernelConfig(groups, _group), xv, pv, (int)xv.Length);
        var host = new double[groups];
        ((ArrayView1D<double, Stride1D.Dense>)pv).CopyToCPU(_accelerator.DefaultStream, host.AsSpan());
        _accelerator.DefaultStream.Synchronize();
        Transfers.CountToHost(TransferKind.Scalars, groups * 8L);
        double sum = 0;
        foreach (var p in host) sum += p;
        return sum;
    }

    public int[] ArgMaxRows(Tensor x, int rows, int n)
    {
        var result = new int[Math.Max(rows, 0)];
        if (rows <= 0 || n <= 0) return result;
        var xv = In(x);
        Need(xv, (long)rows * n, nameof(x));
        using var block = _pool.Rent(rows * 4L);
        var rv = block.View<int>(0, rows);
        KArgMax(Rows(rows, n), xv, rv, n);
        ((ArrayView1D<int, Stride1D.Dense>)rv).CopyToCPU(_accelerator.DefaultStream, result.AsSpan());
        _accelerator.DefaultStream.Synchronize();
        Transfers.CountToHost(TransferKind.Scalars, rows * 4L);
        return result;
    }

    public long IndexOfNonFinite(Tensor x, bool allowNegativeInfinity = false)
    {
        var xv = In(x);
        if (xv.Length == 0) return -1;
        int groups = Partials(xv.Length);
        using var partials = _pool.Rent(groups * 4L);
        var pv = partials.View<int>(0, groups);
        KNonFinite(new KernelConfig(groups, _group), xv, pv, (int)xv.Length, allowNegativeInfinity ? 1 : 0);
        var host = new int[groups];
        ((ArrayView1D<int, Stride1D.Dense>)pv).CopyToCPU(_accelerator.DefaultStream, host.AsSpan());
        _accelerator.DefaultStream.Synchronize();
        Transfers.CountToHost(TransferKind.Scalars, groups * 4L);
        int first = host.Min();
        return first == int.MaxValue ? -1 : first;
    }

    public void TopKRows(Tensor x, int rows, int n, int k, Tensor values, Tensor indices)
    {
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), $"top-k needs 1 ≤ k ≤ {n}, got {k}");
        if (rows <= 0) return;
        var xv = In(x);
        Need(xv, (long)rows * n, nameof(x));
        var vv = Out(values);
        var iv = Out(indices);
        Need(vv, (long)rows * k, nameof(values));
        Need(iv, (long)rows * k, nameof(indices));
        if (k <= Kernels.MaxRadixK) KTopKRadix(Rows(rows, n), xv, vv, iv, n, k);
        else if (k <= Kernels.MaxRadixKLarge) KTopKRadixLarge(Rows(rows, n), xv, vv, iv, n, k);
        else KTopK(Rows(rows, n), xv, vv, iv, n, k);
    }

    public void ScatterRows(Tensor values, Tensor indices, int rows, int k, int n, Tensor dense)
    {
        var vv = In(values);
        var iv = In(indices);
        var dv = Out(dense);
        Need(vv, (long)rows * k, nameof(values));
        Need(iv, (long)rows * k, nameof(indices));
        Need(dv, (long)rows * n, nameof(dense));
        if ((long)rows * n == 0) return;
        var target = dv.SubView(0, (long)rows * n);
        KFill((int)target.Length, target, 0f);
        if (k > 0) KScatterRows(rows * k, vv, iv, target, k, n);
    }

    // ---- positions and attention -------------------------------------------------------------

    /// <summary>The table's cos/sin rows on the device, uploaded once and again only when the table has grown.</summary>
    (ArrayView<float> Cos, ArrayView<float> Sin) RotaryRows(RotaryTable table, int needed)
    {
        var entry = _rotary.GetOrCreateValue(table);
        lock (entry)
        {
            if (entry.Cos is null || entry.Count < needed)
            {
                var (cos, sin, count) = table.AnglesCovering(needed);
                entry.Cos = Upload(cos, TransferKind.Weights);
                entry.Sin = Upload(sin, TransferKind.Weights);
                entry.Count = count;
            }
            return (entry.Cos.F32, entry.Sin!.F32);
        }
    }

    public void Rotary(RotaryTable table, Tensor x, int rows, int heads, int headDim, ReadOnlySpan<int> positions, bool inverse = false)
    {
        if (headDim < table.RotaryDim) throw new ArgumentException($"head dimension {headDim} is smaller than the rotary dimension {table.RotaryDim}");
        if (positions.Length < rows) throw new ArgumentException($"{positions.Length} positions for {rows} rows", nameof(positions));
        var xv = Out(x);
        Need(xv, (long)rows * heads * headDim, nameof(x));
        int highest = -1;
        for (int r = 0; r < rows; r++)
        {
            int p = positions[r];
            if ((uint)p >= (uint)table.MaxPositions) throw new ArgumentOutOfRangeException(nameof(positions), $"position {p} is outside the rotary table (0..{table.MaxPositions - 1})");
            highest = Math.Max(highest, p);
        }
        int half = table.RotaryDim / 2;
        if (rows <= 0 || heads <= 0 || half == 0) return;
        var (cos, sin) = RotaryRows(table, highest + 1);
        using var pos = UploadInts(positions[..rows]);
        KRotary(rows * heads * half, xv, cos, sin, pos.View<int>(0, rows), heads, headDim, half, inverse ? -1f : 1f);
    }

    static void CheckHeads(AttentionShape s)
    {
        if (s.KvHeads <= 0 || s.Heads % s.KvHeads != 0)
            throw new ArgumentException($"{s.Heads} query heads cannot be grouped over {s.KvHeads} key/value heads");
    }

    public void AttentionScores(Tensor q, Tensor k, AttentionShape s, float scale, AttentionMask mask, Tensor scores)
    {
        CheckHeads(s);
        int T = s.QueryLen, K = s.KeyLen, D = s.DHead, H = s.Heads, KvH = s.KvHeads, group = s.Group;
        long kvStride = (long)s.KeyRows * KvH * D;
        if (mask.KeyValid is { } kvm && kvm.Length < s.Batch * K)
            throw new ArgumentException($"key mask has {kvm.Length} entries; expected {s.Batch * K}");
        var sv = Out(scores);
        Need(sv, (long)s.Batch * H * T * K, nameof(scores));
        if (s.Batch == 0 || T == 0 || K == 0 || H == 0) return;
        // Per batch row and group index the heads sharing nothing have uniform strides: one batched product each.
        for (int b = 0; b < s.Batch; b++)
            for (int g = 0; g < group; g++)
                GemmBatched(false, true, T, K, D, scale,
                    q, ((long)b * T * H + g) * D, H * D, (long)group * D,
                    k, b * kvStride, KvH * D, D,
                    0f, scores, ((long)b * H + g) * T * K, K, (long)group * T * K, KvH);
        var args = new MaskArgs
        {
            Heads = H, QueryLen = T, KeyLen = K, QueryOffset = mask.QueryOffset, SlidingWindow = mask.SlidingWindow,
            SoftCap = mask.SoftCap, HasKeyValid = mask.KeyValid is null ? 0 : 1,
        };
        int[] valid = mask.KeyValid is { } kv ? kv.AsSpan(0, s.Batch * K).ToArray().Select(v => v ? 1 : 0).ToArray() : [];
        using var validBlock = UploadInts(valid);
        KMask(s.Batch * H * T * K, sv, validBlock.View<int>(0, Math.Max(1, valid.Length)), args);
    }

    public void AttentionApply(Tensor pattern, Tensor v, AttentionShape s, Tensor z)
    {
        CheckHeads(s);
        int T = s.QueryLen, K = s.KeyLen, D = s.DHead, H = s.Heads, KvH = s.KvHeads, group = s.Group;
        long kvStride = (long)s.KeyRows * KvH * D;
        if (s.Batch == 0 || T == 0 || H == 0) return;
        for (int b = 0; b < s.Batch; b++)
            for (int g = 0; g < group; g++)
                GemmBatched(false, false, T, D, K, 1f,
                    pattern, ((long)b * H + g) * T * K, K, (long)group * T * K,
                    v, b * kvStride, KvH * D, D,
                    0f, z, ((long)b * T * H + g) * D, H * D, (long)group * D, KvH);
    }

    public void AttentionApplyBackward(Tensor dz, Tensor pattern, Tensor v, AttentionShape s, Tensor dPattern, Tensor dv)
    {
        CheckHeads(s);
        int T = s.QueryLen, K = s.KeyLen, D = s.DHead, H = s.Heads, KvH = s.KvHeads, group = s.Group;
        long kvStride = (long)K * KvH * D;
        Fill(dv, 0f);
        if (s.Batch == 0 || T == 0 || K == 0 || H == 0) return;
        for (int b = 0; b < s.Batch; b++)
            for (int g = 0; g < group; g++)
            {
                GemmBatched(false, true, T, K, D, 1f,
                    dz, ((long)b * T * H + g) * D, H * D, (long)group * D,
                    v, b * kvStride, KvH * D, D,
                    0f, dPattern, ((long)b * H + g) * T * K, K, (long)group * T * K, KvH);
                GemmBatched(true, false, K, D, T, 1f,
                    pattern, ((long)b * H + g) * T * K, K, (long)group * T * K,
                    dz, ((long)b * T * H + g) * D, H * D, (long)group * D,
                    1f, dv, b * kvStride, KvH * D, D, KvH);
            }
    }

    public void AttentionScoresBackward(Tensor dRaw, Tensor q, Tensor k, AttentionShape s, float scale, Tensor dq, Tensor dk)
    {
        CheckHeads(s);
        int T = s.QueryLen, K = s.KeyLen, D = s.DHead, H = s.Heads, KvH = s.KvHeads, group = s.Group;
        long kvStride = (long)K * KvH * D;
        Fill(dk, 0f);
        if (s.Batch == 0 || T == 0 || H == 0) return;
        for (int b = 0; b < s.Batch; b++)
            for (int g = 0; g < group; g++)
            {
                GemmBatched(false, false, T, D, K, scale,
                    dRaw, ((long)b * H + g) * T * K, K, (long)group * T * K,
                    k, b * kvStride, KvH * D, D,
                    0f, dq, ((long)b * T * H + g) * D, H * D, (long)group * D, KvH);
                if (K == 0) continue;
                GemmBatched(true, false, K, D, T, scale,
                    dRaw, ((long)b * H + g) * T * K, K, (long)group * T * K,
                    q, ((long)b * T * H + g) * D, H * D, (long)group * D,
                    1f, dk, b * kvStride, KvH * D, D, KvH);
            }
    }

    // ---- embeddings --------------------------------------------------------------------------

    static void CheckIds(ReadOnlySpan<int> ids, long vocab)
    {
        for (int i = 0; i < ids.Length; i++)
            if ((uint)ids[i] >= (ulong)vocab) throw new ArgumentOutOfRangeException(nameof(ids), $"id {ids[i]} at {i} is outside the table of {vocab} rows");
    }

    public void Embedding(Tensor table, int d, ReadOnlySpan<int> ids, float scale, Tensor y)
    {
        var t = Storage(table, nameof(table));
        CheckIds(ids, t.Length / d);
        var yv = Out(y);
        Need(yv, (long)ids.Length * d, nameof(y));
        if (ids.Length == 0 || d == 0) return;
        using var idBlock = UploadInts(ids);
        var idView = idBlock.View<int>(0, ids.Length);
        if (t.ElementType == ElementType.F32) KEmbedding(ids.Length * d, t.F32, idView, yv, d, scale);
        else KEmbeddingHalf(ids.Length * d, t.U16, idView, yv, d, scale, t.ElementType == ElementType.BF16 ? 1 : 2);
    }

    public void GatherColumns(Tensor x, int rows, int n, ReadOnlySpan<int> columns, Tensor y)
    {
        var xv = In(x);
        Need(xv, (long)rows * n, nameof(x));
        CheckIds(columns, n);
        var yv = Out(y);
        Need(yv, (long)rows * columns.Length, nameof(y));
        if (rows == 0 || columns.Length == 0) return;
        using var columnBlock = UploadInts(columns);
        KGatherColumns(rows * columns.Length, xv, columnBlock.View<int>(0, columns.Length), yv, n, columns.Length);
    }

    public void EmbeddingBackward(Tensor dy, int d, ReadOnlySpan<int> ids, float scale, Tensor dTable)
    {
        var o = Out(dTable);
        CheckIds(ids, o.Length / d);
        var dyv = In(dy);
        Need(dyv, (long)ids.Length * d, nameof(dy));
        if (ids.Length == 0 || d == 0) return;
        using var idBlock = UploadInts(ids);
        KEmbeddingBackward(ids.Length * d, dyv, idBlock.View<int>(0, ids.Length), o, d, scale);
    }

    // ---- training ----------------------------------------------------------------------------

    public void AdamStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps, int step)
    {
        var p = Out(param);
        var g = In(grad);
        var mv = Out(m);
        var vv = Out(v);
        Need(g, p.Length, nameof(grad));
        Need(mv, p.Length, nameof(m));
        Need(vv, p.Length, nameof(v));
        if (p.Length == 0) return;
        var args = new AdamArgs
        {
            Lr = lr, Beta1 = beta1, Beta2 = beta2, Eps = eps,
            Correction1 = 1 - MathF.Pow(beta1, step), Correction2 = 1 - MathF.Pow(beta2, step),
        };
        KAdam((int)p.Length, p, g, mv, vv, args);
    }

    // ---- dictionary training -------------------------------------------------------------------

    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> KRowDots => Kernel("rowDots", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(Kernels.RowDots));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> KScaleRows => Kernel("scaleRows", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(Kernels.ScaleRows));
    Action<Index1D, ArrayView<float>, ArrayView<float>, float, int> KNormScale => Kernel("normScale", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, float, int>(Kernels.NormScale));
    Action<KernelConfig, ArrayView<float>, ArrayView<double>, int, float> KCountAbove => Kernel("countAbove", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<double>, int, float>(Kernels.CountAbovePartials));
    Action<KernelConfig, ArrayView<double>, ArrayView<float>, int> KSumDoublePartials => Kernel("sumDoublePartials", a => a.LoadStreamKernel<ArrayView<double>, ArrayView<float>, int>(Kernels.SumDoublePartials));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, float> KUpdateSinceFired => Kernel("updateSinceFired", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, float>(Kernels.UpdateSinceFired));

    public void RowDots(Tensor a, Tensor b, int rows, int cols, Tensor y, bool accumulate = false)
    {
        var av = In(a);
        var bv = In(b);
        var yv = Out(y);
        Need(av, (long)rows * cols, nameof(a));
        Need(bv, (long)rows * cols, nameof(b));
        Need(yv, rows, nameof(y));
        if (rows > 0) KRowDots(Rows(rows, cols), av, bv, yv, cols, accumulate ? 1 : 0);
    }

    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> KSparseRowsTimes => Kernel("sparseRowsTimes",
        a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(Kernels.SparseRowsTimes));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int> KRowDotsAt => Kernel("rowDotsAt",
        a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(Kernels.RowDotsAt));

    public void SparseRowsTimes(Tensor values, Tensor indices, int rows, int k, Tensor w, int n, int d, Tensor? bias, Tensor y)
    {
        var vv = In(values);
        var iv = In(indices);
        var wv = In(w);
        var bv = bias is null ? Dummy : In(bias);
        var yv = Out(y);
        Need(vv, (long)rows * k, nameof(values));
        Need(iv, (long)rows * k, nameof(indices));
        Need(wv, (long)n * d, nameof(w));
        if (bias is not null) Need(bv, d, nameof(bias));
        Need(yv, (long)rows * d, nameof(y));
        if ((long)rows * d > 0) KSparseRowsTimes(Rows(rows, d), vv, iv, wv, bv, yv, k, n, d, bias is null ? 0 : 1);
    }

    public void RowDotsAt(Tensor a, int rows, int d, Tensor w, int n, Tensor indices, int k, Tensor y)
    {
        var av = In(a);
        var wv = In(w);
        var iv = In(indices);
        var yv = Out(y);
        Need(av, (long)rows * d, nameof(a));
        Need(wv, (long)n * d, nameof(w));
        Need(iv, (long)rows * k, nameof(indices));
        Need(yv, (long)rows * k, nameof(y));
        if ((long)rows * k > 0) KRowDotsAt(Rows(rows, d), av, wv, iv, yv, d, n, k);
    }

    Action<KernelConfig, ArrayView<float>, ArrayView<int>, int, int, int, int, int> KSparseTransposeCount => Kernel("sparseTransposeCount",
        a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, int, int, int, int, int>(Kernels.SparseTransposeCount));
    Action<Index1D, ArrayView<int>, ArrayView<int>, int, int> KSparseTransposeChunkOffsets => Kernel("sparseTransposeChunkOffsets",
        a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<int>, int, int>(Kernels.SparseTransposeChunkOffsets));
    Action<KernelConfig, ArrayView<int>, ArrayView<int>, int> KExclusiveScan => Kernel("exclusiveScan",
        a => a.LoadStreamKernel<ArrayView<int>, ArrayView<int>, int>(Kernels.ExclusiveScan));
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, int, int, int> KSparseTransposePlace => Kernel("sparseTransposePlace",
        a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, int, int, int>(Kernels.SparseTransposePlace));
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, int, int> KSparseTransposeTimes => Kernel("sparseTransposeTimes",
        a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, int, int>(Kernels.SparseTransposeTimes));

    /// <summary>Row chunks of <see cref="SparseRowsTransposeTimes"/>'s transpose: each is one group walking its rows in order; more chunks, more counters (chunks·n).</summary>
    const int TransposeChunks = 64;

    public void SparseRowsTransposeTimes(Tensor values, Tensor indices, int rows, int k, Tensor a, int n, int d, Tensor y, bool accumulate = false, bool distinctPerRow = false)
    {
        var vv = In(values);
        var iv = In(indices);
        var av = In(a);
        var yv = Out(y);
        long entries = (long)rows * k;
        Need(vv, entries, nameof(values));
        Need(iv, entries, nameof(indices));
        Need(av, (long)rows * d, nameof(a));
        Need(yv, (long)n * d, nameof(y));
        if (entries > int.MaxValue) throw new ArgumentException($"SparseRowsTransposeTimes on {entries} entries: at most {int.MaxValue}", nameof(values));
        if ((long)n * d == 0) return;
        if (entries == 0)
        {
            if (!accumulate) KFill((int)((long)n * d), yv.SubView(0, (long)n * d), 0f);
            return;
        }
        int chunk = (rows + TransposeChunks - 1) / TransposeChunks, groups = (rows + chunk - 1) / chunk;
        using var ints = _pool.Rent(((long)groups * n + n + n + 1 + entries) * 4);
        var cnt = ints.View<int>(0, (long)groups * n);
        var total = ints.View<int>((long)groups * n, n);
        var start = ints.View<int>((long)groups * n + n, n + 1);
        var order = ints.View<int>((long)groups * n + 2L * n + 1, entries);
        var chunks = new KernelConfig(groups, _group); // the whole group zeroes the chunk's n counters
        KSparseTransposeCount(chunks, iv, cnt, rows, k, n, chunk, distinctPerRow ? 1 : 0);
        KSparseTransposeChunkOffsets(n, cnt, total, n, groups);
        KExclusiveScan(new KernelConfig(1, _group), total, start, n);
        KSparseTransposePlace(chunks, iv, cnt, start, order, rows, k, n, chunk, distinctPerRow ? 1 : 0);
        KSparseTransposeTimes(Rows(n, d), vv, order, start, av, yv, k, d, accumulate ? 1 : 0, (int)entries);
    }

    public void ScaleRows(Tensor x, int rows, int cols, Tensor scale, Tensor y)
    {
        var xv = In(x);
        var sv = In(scale);
        var yv = Out(y);
        long n = (long)rows * cols;
        Need(xv, n, nameof(x));
        Need(sv, rows, nameof(scale));
        Need(yv, n, nameof(y));
        if (n > int.MaxValue) throw new ArgumentException($"ScaleRows on {n} elements: at most {int.MaxValue} per launch", nameof(x));
        if (n > 0) KScaleRows((int)n, xv, sv, yv, cols);
    }

    public void NormScale(Tensor sumSquares, float target, bool onlyAbove, Tensor y)
    {
        var sv = In(sumSquares);
        var yv = Out(y);
        Need(yv, sv.Length, nameof(y));
        if (sv.Length > 0) KNormScale((int)sv.Length, sv, yv, target, onlyAbove ? 1 : 0);
    }

    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float> KReconstructionRowStats => Kernel("reconstructionRowStats",
        a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float>(Kernels.ReconstructionRowStats));

    public void ReconstructionRowStats(Tensor xx, Tensor rr, Tensor dot, float minNorm, Tensor cosine, Tensor ratio)
    {
        var xv = In(xx);
        var rv = In(rr);
        var dv = In(dot);
        var cv = Out(cosine);
        var qv = Out(ratio);
        long n = xv.Length;
        Need(rv, n, nameof(rr));
        Need(dv, n, nameof(dot));
        Need(cv, n, nameof(cosine));
        Need(qv, n, nameof(ratio));
        if (n > 0) KReconstructionRowStats((int)n, xv, rv, dv, cv, qv, minNorm);
    }

    public void CountAbove(Tensor x, float threshold, Tensor y)
    {
        var xv = In(x);
        var yv = Out(y);
        Need(yv, 1, nameof(y));
        if (xv.Length == 0)
        {
            KFill(1, yv.SubView(0, 1), 0f);
            return;
        }
        int groups = Partials(xv.Length);
        // Released at once: the pool hands it out again only to work queued after these two kernels on the same stream.
        using var partials = _pool.Rent(groups * 8L);
        var pv = partials.View<double>(0, groups);
        KCountAbove(new KernelConfig(groups, _group), xv, pv, (int)xv.Length, threshold);
        KSumDoublePartials(new KernelConfig(1, _group), pv, yv, groups);
    }

    public void UpdateSinceFired(Tensor fired, Tensor since, float tokens, float window, Tensor sinceOut, Tensor deadBias)
    {
        var fv = In(fired);
        var sv = In(since);
        var ov = Out(sinceOut);
        var dv = Out(deadBias);
        Need(sv, fv.Length, nameof(since));
        Need(ov, fv.Length, nameof(sinceOut));
        Need(dv, fv.Length, nameof(deadBias));
        if (fv.Length > 0) KUpdateSinceFired((int)fv.Length, fv, sv, ov, dv, tokens, window);
    }

    Action<Index1D, ArrayView<int>, ArrayView<int>, int> KBatchTopKStart => Kernel("batchTopKStart", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<int>, int>(Kernels.BatchTopKStart));
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int, int> KBatchTopKHistogram => Kernel("batchTopKHistogram", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int, int>(Kernels.BatchTopKHistogram));
    Action<Index1D, ArrayView<int>, ArrayView<int>, int> KBatchTopKSelectBin => Kernel("batchTopKSelectBin", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<int>, int>(Kernels.BatchTopKSelectBin));
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int> KBatchTopKTies => Kernel("batchTopKTies", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int>(Kernels.BatchTopKTies));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int, int> KBatchTopKWrite => Kernel("batchTopKWrite", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int, int>(Kernels.BatchTopKWrite));
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, int> KBatchTopKMin => Kernel("batchTopKMin", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(Kernels.BatchTopKMin));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> KJumpRelu => Kernel("jumpRelu", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(Kernels.JumpRelu));
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float, float> KJumpReluThresholdGrad => Kernel("jumpReluThresholdGrad", a => a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float, float>(Kernels.JumpReluThresholdGrad));

    public void BatchTopK(Tensor x, int count, int keep, Tensor y, Tensor minKept)
    {
        if (keep < 1 || keep > count) throw new ArgumentOutOfRangeException(nameof(keep), $"batch top-k needs 1 ≤ keep ≤ {count}, got {keep}");
        var xv = In(x);
        var yv = Out(y);
        var mv = Out(minKept);
        Need(xv, count, nameof(x));
        Need(yv, count, nameof(y));
        Need(mv, 1, nameof(minKept));
        // A radix select spread over groups (four 8-bit passes, the state on the device), then each group writes a
        // contiguous chunk, counting the ties of the chunks before it so that ties are kept in index order.
        int groups = Partials(count), chunk = (int)((count + (long)groups - 1) / groups);
        using var ints = _pool.Rent((258L + groups) * 4);
        using var floats = _pool.Rent(groups * 4L);
        var hist = ints.View<int>(0, 256);
        var state = ints.View<int>(256, 2);
        var ties = ints.View<int>(258, groups);
        var mins = floats.View<float>(0, groups);
        var config = new KernelConfig(groups, _group);
        KBatchTopKStart(256, hist, state, keep);
        uint mask = 0;
        for (int shift = 24; shift >= 0; shift -= 8)
        {
            KBatchTopKHistogram(config, xv, hist, state, count, shift, (int)mask);
            KBatchTopKSelectBin(1, hist, state, shift);
            mask |= 0xFFu << shift;
        }
        KBatchTopKTies(config, xv, state, ties, count, chunk);
        KBatchTopKWrite(config, xv, yv, state, ties, mins, count, chunk, groups);
        KBatchTopKMin(new KernelConfig(1, _group), mins, mv, groups);
    }

    public void JumpRelu(Tensor x, int rows, int cols, Tensor logThreshold, Tensor y)
    {
        var xv = In(x);
        var tv = In(logThreshold);
        var yv = Out(y);
        long n = (long)rows * cols;
        Need(xv, n, nameof(x));
        Need(tv, cols, nameof(logThreshold));
        Need(yv, n, nameof(y));
        if (n > int.MaxValue) throw new ArgumentException($"JumpRelu on {n} elements: at most {int.MaxValue} per launch", nameof(x));
        if (n > 0) KJumpRelu((int)n, xv, tv, yv, cols);
    }

    public void JumpReluThresholdGrad(Tensor x, Tensor dY, int rows, int cols, Tensor logThreshold, float bandwidth, float sparsityScale, Tensor grad)
    {
        var xv = In(x);
        var dv = In(dY);
        var tv = In(logThreshold);
        var gv = Out(grad);
        Need(xv, (long)rows * cols, nameof(x));
        Need(dv, (long)rows * cols, nameof(dY));
        Need(tv, cols, nameof(logThreshold));
        Need(gv, cols, nameof(grad));
        if (cols > 0) KJumpReluThresholdGrad(cols, xv, dv, tv, gv, rows, cols, bandwidth, -sparsityScale / bandwidth);
    }
}

/// <summary>
/// How a product with 16-bit (bf16/fp16) weights takes its fp32 activation operand. Tensor cores want both operands in
/// 16 bits; the weights already are, the activations are not.
/// </summary>
public enum HalfActivations
{
    /// <summary>
    /// As two 16-bit parts, hi = round(x) and lo = round(x − hi), in two products added in fp32: about 16 mantissa bits
    /// (bf16) per activation, so the weights' own rounding is the only one that shows — the same bf16 weights give the
    /// fp32 CPU run's numbers to ~1e-5. Twice the tensor-core work; still far less than an fp32 product.
    /// </summary>
    Split,

    /// <summary>
    /// Rounded to 16 bits (8 mantissa bits for bf16), one product: torch's bf16 arithmetic, about half the product time of
    /// <see cref="Split"/>, and ~1e-2 (max |Δ| / max |logit|) from an fp32 run with the same weights.
    /// </summary>
    Rounded,
}
