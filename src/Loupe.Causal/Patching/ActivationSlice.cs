using Loupe.Tensors;

namespace Loupe.Causal.Patching;

/// <summary>
/// Copies the part of an activation that one cell covers: rows of the batch axis, with at most
/// two further axes (head, position) fixed to one index; every other axis is copied whole.
/// Source and destination share every axis but the batch axis.
/// </summary>
static class ActivationSlice
{
    /// <summary>
    /// <c>dst[dstRow + r, …] = src[srcRow + r, …]</c> for <c>r &lt; rows</c>, restricted to
    /// <c>index[headAxis] = head</c> and <c>index[positionAxis] = position</c> where those are given (≥ 0).
    /// </summary>
    public static void Copy(Tensor src, int srcRow, Tensor dst, int dstRow, int rows, int? headAxis, int head, int? positionAxis, int position)
    {
        var shape = dst.Shape;
        if (src.Rank != dst.Rank || !src.Shape[1..].SequenceEqual(shape[1..]))
            throw new InvalidOperationException($"cannot patch an activation of shape {dst.ShapeString} from one of shape {src.ShapeString}");
        int rank = shape.Length;
        var fixedIndex = new int[rank];
        Array.Fill(fixedIndex, -1);
        if (headAxis is int ha && head >= 0) fixedIndex[ha] = head;
        if (positionAxis is int pa && position >= 0) fixedIndex[pa] = position;
        int last = 0;
        for (int a = 1; a < rank; a++) if (fixedIndex[a] >= 0) last = a;
        int inner = 1;
        for (int a = last + 1; a < rank; a++) inner *= shape[a];
        int rowSize = dst.Length / shape[0];
        var s = src.Span;
        var d = dst.Span;
        var index = new int[rank];
        for (int r = 0; r < rows; r++)
        {
            int srcBase = (srcRow + r) * rowSize, dstBase = (dstRow + r) * rowSize;
            if (last == 0)
            {
                s.Slice(srcBase, rowSize).CopyTo(d.Slice(dstBase, rowSize));
                continue;
            }
            // Odometer over axes 1..last; fixed axes take their one index.
            for (int a = 1; a <= last; a++) index[a] = Math.Max(fixedIndex[a], 0);
            while (true)
            {
                int offset = 0;
                for (int a = 1; a <= last; a++) offset = offset * shape[a] + index[a];
                offset *= inner;
                s.Slice(srcBase + offset, inner).CopyTo(d.Slice(dstBase + offset, inner));
                int axis = last;
                while (axis >= 1)
                {
                    if (fixedIndex[axis] < 0 && ++index[axis] < shape[axis]) break;
                    if (fixedIndex[axis] < 0) index[axis] = 0;
                    axis--;
                }
                if (axis < 1) break;
            }
        }
    }

    /// <summary>Rows <c>[row, row + rows)</c> of <paramref name="t"/> as a view.</summary>
    public static Tensor Rows(Tensor t, int row, int rows)
    {
        int rowSize = t.Length / t.Dim(0);
        var shape = t.Shape.ToArray();
        shape[0] = rows;
        return new Tensor(t.Data.Slice(row * rowSize, rows * rowSize), shape);
    }

    /// <summary><paramref name="t"/> <c>[rows, …]</c> repeated <paramref name="times"/> along the batch axis.</summary>
    public static Tensor Tile(Tensor t, int times)
    {
        var shape = t.Shape.ToArray();
        shape[0] *= times;
        var y = Tensor.Uninitialized(shape);
        for (int k = 0; k < times; k++) t.Span.CopyTo(y.Span.Slice(k * t.Length, t.Length));
        return y;
    }
}
