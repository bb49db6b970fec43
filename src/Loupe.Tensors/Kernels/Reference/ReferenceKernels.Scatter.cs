namespace Loupe.Tensors.Kernels.Reference;

public static partial class ReferenceKernels
{
    /// <summary>
    /// <see cref="Backends.IComputeBackend.ScatterRows"/>: a zero <c>[rows, n]</c> with <c>dense[r, indices[r, j]] = values[r, j]</c>,
    /// the columns given as integers (what <see cref="TopKRows"/> writes).
    /// </summary>
    public static float[] ScatterRows(ReadOnlySpan<float> values, ReadOnlySpan<int> indices, int rows, int k, int n)
    {
        var dense = new float[rows * n];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < k; j++) dense[r * n + indices[r * k + j]] = values[r * k + j];
        return dense;
    }
}
