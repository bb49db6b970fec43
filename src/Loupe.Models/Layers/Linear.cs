using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Layers;

/// <summary>
/// An affine map <c>y = x·W + b</c>. W is stored <c>[d_in, d_out]</c> (TransformerLens, GPT-2 Conv1D)
/// or <c>[d_out, d_in]</c> (nn.Linear). <see cref="Weight"/> and <see cref="Bias"/> are the host copies
/// (memory-mapped, never copied on the CPU); a GPU backend gets its own copy once, on first use.
/// </summary>
public sealed class Linear
{
    DeviceWeight _weight, _bias;

    public Linear(ReadOnlyMemory<float> weight, int dIn, int dOut, bool weightIsOutIn, ReadOnlyMemory<float> bias = default)
    {
        if (weight.Length != (long)dIn * dOut) throw new ArgumentException($"weight has {weight.Length} elements; [{dIn}, {dOut}] needs {(long)dIn * dOut}");
        if (!bias.IsEmpty && bias.Length != dOut) throw new ArgumentException($"bias has {bias.Length} elements; expected {dOut}");
        Weight = weight;
        DIn = dIn;
        DOut = dOut;
        WeightIsOutIn = weightIsOutIn;
        Bias = bias;
        _weight = new DeviceWeight(weight, weightIsOutIn ? [dOut, dIn] : [dIn, dOut], isMatrix: true);
        _bias = new DeviceWeight(bias, [dOut]);
    }

    public ReadOnlyMemory<float> Weight { get; private set; }
    public ReadOnlyMemory<float> Bias { get; private set; }
    public int DIn { get; }
    public int DOut { get; }
    public bool WeightIsOutIn { get; }

    /// <summary>
    /// Swaps in processed host weights (same shape and layout; an empty bias removes it). Only at load
    /// (weight processing), before any run: device copies made earlier are dropped.
    /// </summary>
    internal void Replace(ReadOnlyMemory<float> weight, ReadOnlyMemory<float> bias)
    {
        if (weight.Length != (long)DIn * DOut) throw new ArgumentException($"weight has {weight.Length} elements; [{DIn}, {DOut}] needs {(long)DIn * DOut}");
        if (!bias.IsEmpty && bias.Length != DOut) throw new ArgumentException($"bias has {bias.Length} elements; expected {DOut}");
        Weight = weight;
        Bias = bias;
        _weight = new DeviceWeight(weight, WeightIsOutIn ? [DOut, DIn] : [DIn, DOut], isMatrix: true);
        _bias = new DeviceWeight(bias, [DOut]);
    }

    /// <summary>
    /// The weight's TransformerLens name (<c>blocks.3.mlp.W_out</c>), set by the layer that owns it; a refusal to keep the weight on
    /// a device (fp16 cannot hold a value past ±65,504) names it, since the upload happens at first use, deep inside a forward.
    /// </summary>
    public string? Name { get; internal set; }

    /// <summary>The weight on <paramref name="backend"/>'s device (uploaded once).</summary>
    /// <exception cref="InputError">The device cannot keep the weight in its element type (the message names the weight).</exception>
    public Tensor WeightOn(IComputeBackend backend)
    {
        try { return _weight.On(backend)!; }
        catch (InputError e) when (Name is not null) { throw new InputError($"{Name}: {e.Message}", e); }
    }

    /// <summary>The bias on <paramref name="backend"/>'s device, or null without one.</summary>
    public Tensor? BiasOn(IComputeBackend backend) => _bias.On(backend);

    /// <summary><c>y[rows, d_out] = x[rows, d_in]·W + b</c>.</summary>
    public void Forward(IComputeBackend backend, Tensor x, int rows, Tensor y) =>
        backend.Linear(x, rows, DIn, WeightOn(backend), WeightIsOutIn, DOut, BiasOn(backend), y);

    /// <summary>
    /// Backward to the input: <c>dx[rows, d_in] = dy[rows, d_out]·Wᵀ</c> (added to dx when <paramref name="accumulate"/>).
    /// Forward: <c>y = x·W + b</c>.
    /// </summary>
    public void BackwardInput(IComputeBackend backend, Tensor dy, int rows, Tensor dx, bool accumulate = false)
    {
        float beta = accumulate ? 1f : 0f;
        var w = WeightOn(backend);
        if (WeightIsOutIn)
            backend.Gemm(false, false, rows, DIn, DOut, 1f, dy, 0, DOut, w, 0, DIn, beta, dx, 0, DIn);
        else
            backend.Gemm(false, true, rows, DIn, DOut, 1f, dy, 0, DOut, w, 0, DOut, beta, dx, 0, DIn);
    }

    /// <summary>
    /// Backward of <see cref="ForwardInputSlice"/>: <c>dx[:, start:start+count] = dy·W[start:start+count, :]ᵀ</c>,
    /// written with row stride <paramref name="ldx"/>; dy rows start at <paramref name="dyOffset"/> with stride <paramref name="ldy"/>.
    /// </summary>
    public void BackwardInputSlice(IComputeBackend backend, Tensor dy, long dyOffset, int ldy, int rows, Tensor dx, int ldx, int start, int count)
    {
        var w = WeightOn(backend);
        if (WeightIsOutIn)
            backend.Gemm(false, false, rows, count, DOut, 1f, dy, dyOffset, ldy, w, start, DIn, 0f, dx, start, ldx);
        else
            backend.Gemm(false, true, rows, count, DOut, 1f, dy, dyOffset, ldy, w, (long)start * DOut, DOut, 0f, dx, start, ldx);
    }

    /// <summary>
    /// Output columns <c>[start, start+count)</c> only, bias included: <c>y[rows, count] = x·W[:, start:start+count] + b[start:start+count]</c>,
    /// x rows read from <paramref name="xOffset"/> with stride <paramref name="ldx"/>, y rows written at <paramref name="yOffset"/>
    /// with stride <paramref name="ldy"/> (one head's query from that head's own input, TransformerLens's split inputs).
    /// </summary>
    public void ForwardOutputSlice(IComputeBackend backend, Tensor x, long xOffset, int ldx, int rows, int start, int count, Tensor y, long yOffset, int ldy)
    {
        var w = WeightOn(backend);
        float beta = 0f;
        if (BiasOn(backend) is { } bias)
        {
            backend.CopyRows(bias, start, 0, y, yOffset, ldy, rows, count); // the bias slice on every row, then y += x·W
            beta = 1f;
        }
        if (WeightIsOutIn) // W [d_out, d_in]: the slice is rows start… of W
            backend.Gemm(false, true, rows, count, DIn, 1f, x, xOffset, ldx, w, (long)start * DIn, DIn, beta, y, yOffset, ldy);
        else
            backend.Gemm(false, false, rows, count, DIn, 1f, x, xOffset, ldx, w, start, DOut, beta, y, yOffset, ldy);
    }

    /// <summary>
    /// Backward of <see cref="ForwardOutputSlice"/> to its input: <c>dx[rows, d_in] = dy[rows, count]·W[:, start:start+count]ᵀ</c>
    /// (added to dx when <paramref name="accumulate"/>), strides and offsets as there.
    /// </summary>
    public void BackwardOutputSlice(IComputeBackend backend, Tensor dy, long dyOffset, int ldy, int rows, int start, int count, Tensor dx, long dxOffset, int ldx, bool accumulate = false)
    {
        var w = WeightOn(backend);
        float beta = accumulate ? 1f : 0f;
        if (WeightIsOutIn)
            backend.Gemm(false, false, rows, DIn, count, 1f, dy, dyOffset, ldy, w, (long)start * DIn, DIn, beta, dx, dxOffset, ldx);
        else
            backend.Gemm(false, true, rows, DIn, count, 1f, dy, dyOffset, ldy, w, start, DOut, beta, dx, dxOffset, ldx);
    }

    /// <summary>
    /// The contribution of input columns <c>[start, start+count)</c> only, without bias:
    /// <c>y[rows, d_out] = x[:, start:start+count]·W[start:start+count, :]</c>; x rows have stride <paramref name="ldx"/>.
    /// </summary>
    public void ForwardInputSlice(IComputeBackend backend, Tensor x, int rows, int ldx, int start, int count, Tensor y)
    {
        var w = WeightOn(backend);
        if (WeightIsOutIn)
            backend.Gemm(false, true, rows, DOut, count, 1f, x, start, ldx, w, start, DIn, 0f, y, 0, DOut);
        else
            backend.Gemm(false, false, rows, DOut, count, 1f, x, start, ldx, w, (long)start * DOut, DOut, 0f, y, 0, DOut);
    }
}

/// <summary>
/// A weight's host memory and its copy on the backend that last asked for it: a zero-copy wrap on the
/// CPU, one upload per GPU backend (counted as <see cref="TransferKind.Weights"/>). Matrices are kept in
/// the backend's <see cref="IComputeBackend.WeightElementType"/>; vectors (norms, biases) and embedding
/// tables in fp32.
/// </summary>
public sealed class DeviceWeight(ReadOnlyMemory<float> host, int[] shape, bool isMatrix = false)
{
    sealed record Placed(IComputeBackend Backend, Tensor Tensor);
    readonly Lock _placing = new();
    Placed? _placed;

    public ReadOnlyMemory<float> Host { get; } = host;

    /// <summary>The weight on <paramref name="backend"/>'s device, or null when there is no weight (an absent bias).</summary>
    public Tensor? On(IComputeBackend backend)
    {
        if (Host.IsEmpty) return null;
        var placed = Volatile.Read(ref _placed);
        if (placed is not null && ReferenceEquals(placed.Backend, backend)) return placed.Tensor;
        lock (_placing)
        {
            if (_placed is { } p && ReferenceEquals(p.Backend, backend)) return p.Tensor;
            var tensor = backend.LoadWeight(Host, shape, isMatrix ? backend.WeightElementType : ElementType.F32);
            Volatile.Write(ref _placed, new Placed(backend, tensor));
            return tensor;
        }
    }
}
