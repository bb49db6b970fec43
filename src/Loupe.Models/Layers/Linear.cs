using Loupe.Tensors.Backends;

namespace Loupe.Models.Layers;

/// <summary>
/// An affine map <c>y = x·W + b</c> over weights that stay where they were loaded (memory-mapped).
/// W is stored <c>[d_in, d_out]</c> (TransformerLens, GPT-2 Conv1D) or <c>[d_out, d_in]</c> (nn.Linear).
/// </summary>
public sealed class Linear
{
    public Linear(ReadOnlyMemory<float> weight, int dIn, int dOut, bool weightIsOutIn, ReadOnlyMemory<float> bias = default)
    {
        if (weight.Length != (long)dIn * dOut) throw new ArgumentException($"weight has {weight.Length} elements; [{dIn}, {dOut}] needs {(long)dIn * dOut}");
        if (!bias.IsEmpty && bias.Length != dOut) throw new ArgumentException($"bias has {bias.Length} elements; expected {dOut}");
        Weight = weight;
        DIn = dIn;
        DOut = dOut;
        WeightIsOutIn = weightIsOutIn;
        Bias = bias;
    }

    public ReadOnlyMemory<float> Weight { get; }
    public ReadOnlyMemory<float> Bias { get; }
    public int DIn { get; }
    public int DOut { get; }
    public bool WeightIsOutIn { get; }

    /// <summary><c>y[rows, d_out] = x[rows, d_in]·W + b</c>.</summary>
    public void Forward(IComputeBackend backend, ReadOnlySpan<float> x, int rows, Span<float> y) =>
        backend.Linear(x, rows, DIn, Weight.Span, WeightIsOutIn, DOut, Bias.Span, y);

    /// <summary>
    /// Backward to the input: <c>dx[rows, d_in] = dy[rows, d_out]·Wᵀ</c> (added to dx when <paramref name="accumulate"/>).
    /// Forward: <c>y = x·W + b</c>.
    /// </summary>
    public void BackwardInput(IComputeBackend backend, ReadOnlySpan<float> dy, int rows, Span<float> dx, bool accumulate = false)
    {
        float beta = accumulate ? 1f : 0f;
        if (WeightIsOutIn)
            backend.Sgemm(false, false, rows, DIn, DOut, 1f, dy, DOut, Weight.Span, DIn, beta, dx, DIn);
        else
            backend.Sgemm(false, true, rows, DIn, DOut, 1f, dy, DOut, Weight.Span, DOut, beta, dx, DIn);
    }

    /// <summary>
    /// Backward of <see cref="ForwardInputSlice"/>: <c>dx[:, start:start+count] = dy·W[start:start+count, :]ᵀ</c>,
    /// written with row stride <paramref name="ldx"/>; dy rows have stride <paramref name="ldy"/>.
    /// </summary>
    public void BackwardInputSlice(IComputeBackend backend, ReadOnlySpan<float> dy, int ldy, int rows, Span<float> dx, int ldx, int start, int count)
    {
        var w = Weight.Span;
        if (WeightIsOutIn)
            backend.Sgemm(false, false, rows, count, DOut, 1f, dy, ldy, w.Slice(start), DIn, 0f, dx.Slice(start), ldx);
        else
            backend.Sgemm(false, true, rows, count, DOut, 1f, dy, ldy, w.Slice(start * DOut), DOut, 0f, dx.Slice(start), ldx);
    }

    /// <summary>
    /// The contribution of input columns <c>[start, start+count)</c> only, without bias:
    /// <c>y[rows, d_out] = x[:, start:start+count]·W[start:start+count, :]</c>; x rows have stride <paramref name="ldx"/>.
    /// </summary>
    public void ForwardInputSlice(IComputeBackend backend, ReadOnlySpan<float> x, int rows, int ldx, int start, int count, Span<float> y)
    {
        var w = Weight.Span;
        if (WeightIsOutIn)
            backend.Sgemm(false, true, rows, DOut, count, 1f, x.Slice(start), ldx, w.Slice(start), DIn, 0f, y, DOut);
        else
            backend.Sgemm(false, false, rows, DOut, count, 1f, x.Slice(start), ldx, w.Slice(start * DOut), DOut, 0f, y, DOut);
    }
}
