using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Causal.Patching;

/// <summary>
/// Copies the part of an activation that one cell covers: rows of the batch axis, with at most
/// two further axes (head, position) fixed to one index; every other axis is copied whole.
/// Source and destination share every axis but the batch axis. Every copy is a strided
/// <see cref="IComputeBackend.CopyRows"/> on the backend that owns the tensors, so a sweep on a
/// GPU never reads activations on the host.
/// </summary>
static class ActivationSlice
{
    /// <summary>
    /// <c>dst[dstRow + r, …] = src[srcRow + r, …]</c> for <c>r &lt; rows</c>, restricted to
    /// <c>index[headAxis] = head</c> and <c>index[positionAxis] = position</c> where those are given (≥ 0).
    /// </summary>
    public static void Copy(IComputeBackend backend, Tensor src, int srcRow, Tensor dst, int dstRow, int rows, int? headAxis, int head, int? positionAxis, int position)
    {
        var shape = dst.Shape;
        if (src.Rank != dst.Rank || !src.Shape[1..].SequenceEqual(shape[1..]))
            throw new InvalidOperationException($"cannot patch an activation of shape {dst.ShapeString} from one of shape {src.ShapeString}");
        int rowSize = dst.Length / shape[0];
        long srcBase = (long)srcRow * rowSize, dstBase = (long)dstRow * rowSize;
        // The fixed axes, outermost first (two at most; the same axis given twice is one).
        int a1 = -1, i1 = 0, a2 = -1, i2 = 0;
        void Fix(int axis, int index)
        {
            if (axis == a1 || axis == a2) return;
            if (a1 < 0) (a1, i1) = (axis, index);
            else if (axis > a1) (a2, i2) = (axis, index);
            else { (a2, i2) = (a1, i1); (a1, i1) = (axis, index); }
        }
        if (headAxis is int ha && head >= 0) Fix(ha, head);
        if (positionAxis is int pa && position >= 0) Fix(pa, position);
        if (a1 < 0)
        {
            // Whole rows are contiguous: one copy.
            backend.CopyRows(src, srcBase, 0, dst, dstBase, 0, 1, rows * rowSize);
            return;
        }
        // Row-major strides: stride[a] = Π shape[a+1..]. Fusing the batch axis with the axes before a1
        // gives `outer` runs of stride[a1 − 1]; within each, the fixed index starts at i1·stride[a1].
        static long Stride(ReadOnlySpan<int> shape, int axis)
        {
            long s = 1;
            for (int a = axis + 1; a < shape.Length; a++) s *= shape[a];
            return s;
        }
        int outer = rows;
        for (int a = 1; a < a1; a++) outer *= shape[a];
        int outerStride = checked((int)Stride(shape, a1 - 1));
        long offset1 = i1 * Stride(shape, a1);
        if (a2 < 0)
        {
            int cols = checked((int)Stride(shape, a1));
            backend.CopyRows(src, srcBase + offset1, outerStride, dst, dstBase + offset1, outerStride, outer, cols);
            return;
        }
        // Two fixed axes: the axes strictly between them (`middle` runs of stride[a2 − 1]) form a second
        // level; loop over whichever level is shorter and copy the other as strided rows.
        int middle = 1;
        for (int a = a1 + 1; a < a2; a++) middle *= shape[a];
        int middleStride = checked((int)Stride(shape, a2 - 1));
        int inner = checked((int)Stride(shape, a2));
        long offset = offset1 + i2 * Stride(shape, a2);
        if (middle <= outer)
        {
            for (int m = 0; m < middle; m++)
            {
                long o = offset + (long)m * middleStride;
                backend.CopyRows(src, srcBase + o, outerStride, dst, dstBase + o, outerStride, outer, inner);
            }
        }
        else
        {
            for (int q = 0; q < outer; q++)
            {
                long o = offset + (long)q * outerStride;
                backend.CopyRows(src, srcBase + o, middleStride, dst, dstBase + o, middleStride, middle, inner);
            }
        }
    }

    /// <summary>Rows <c>[row, row + rows)</c> of <paramref name="t"/> as a view (on any device).</summary>
    public static Tensor Rows(Tensor t, int row, int rows)
    {
        int rowSize = t.Length / t.Dim(0);
        var shape = t.Shape.ToArray();
        shape[0] = rows;
        return new Tensor(t.Storage.Slice((long)row * rowSize, (long)rows * rowSize), shape);
    }

    /// <summary><paramref name="t"/> <c>[rows, …]</c> repeated <paramref name="times"/> along the batch axis, on <paramref name="backend"/>.</summary>
    public static Tensor Tile(IComputeBackend backend, Tensor t, int times)
    {
        var shape = t.Shape.ToArray();
        shape[0] *= times;
        var y = backend.Empty(shape);
        backend.CopyRows(t, 0, 0, y, 0, t.Length, times, t.Length);
        return y;
    }
}
