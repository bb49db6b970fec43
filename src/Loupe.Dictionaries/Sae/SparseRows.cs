// Sparse rows of feature activations (CSR) and the three products a sparse dictionary step needs.
//
// Shape legend: batch rows, d_sae features, d = the decoder's output width.
//   RowStart [batch + 1]   Col [nnz]   Val [nnz]     (row b holds entries RowStart[b] .. RowStart[b+1]−1,
//                                                     columns ascending)
//   W        [d_sae, d]    decoder rows
// With k active features per row the products cost batch·k·d instead of batch·d_sae·d.
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Loupe.Dictionaries.Sae;

/// <summary>A batch of sparse activation rows in compressed-row form, rebuilt in place each step.</summary>
sealed class SparseRows
{
    public int Batch;
    public int Width;
    public int[] RowStart = [];
    public int[] Col = [];
    public float[] Val = [];
    public int Nnz => RowStart[Batch];

    // transpose (per feature: which rows, which values), built on demand
    int[] _colStart = [];
    int[] _colRow = [];
    float[] _colVal = [];

    /// <summary>Number of nonzeros in each row of dense [batch, width] (vectorised) into <paramref name="counts"/>; returns the total.</summary>
    public static long CountNonzero(ReadOnlySpan<float> dense, int batch, int width, Span<int> counts)
    {
        long total = 0;
        for (int b = 0; b < batch; b++)
        {
            var row = dense.Slice(b * width, width);
            int zeros = 0, i = 0;
            if (Vector256.IsHardwareAccelerated)
                for (; i + Vector256<float>.Count <= width; i += Vector256<float>.Count)
                    zeros += System.Numerics.BitOperations.PopCount(Vector256.Equals(Vector256.Create(row.Slice(i, Vector256<float>.Count)), Vector256<float>.Zero).ExtractMostSignificantBits());
            for (; i < width; i++) if (row[i] == 0) zeros++;
            counts[b] = width - zeros;
            total += counts[b];
        }
        return total;
    }

    /// <summary>Builds the CSR form of dense [batch, width] whose per-row nonzero counts are known.</summary>
    public unsafe void Build(ReadOnlySpan<float> dense, int batch, int width, ReadOnlySpan<int> counts)
    {
        Batch = batch;
        Width = width;
        if (RowStart.Length < batch + 1) RowStart = new int[batch + 1];
        RowStart[0] = 0;
        for (int b = 0; b < batch; b++) RowStart[b + 1] = RowStart[b] + counts[b];
        int nnz = RowStart[batch];
        if (Col.Length < nnz) { Col = new int[nnz]; Val = new float[nnz]; }
        fixed (float* d = dense)
        {
            float* src = d;
            RowParallel.For(batch, width, b =>
            {
                var row = new ReadOnlySpan<float>(src + (long)b * width, width);
                int at = RowStart[b];
                for (int i = 0; i < width; i++)
                {
                    float v = row[i];
                    if (v != 0) { Col[at] = i; Val[at] = v; at++; }
                }
            });
        }
    }

    /// <summary>
    /// out[b] += alpha·Σ_j Val_j · W[Col_j] for every row (rows in parallel); with <paramref name="columns"/>, only the
    /// entries whose column lies in [From, To).
    /// </summary>
    public void MultiplyAdd(float[] w, int d, float[] output, float alpha = 1f, (int From, int To)? columns = null)
    {
        var (from, to) = columns ?? (0, Width);
        RowParallel.For(Batch, Math.Max(1, (RowStart[Batch] / Math.Max(1, Batch)) * d / 8), b =>
        {
            var o = output.AsSpan(b * d, d);
            for (int j = RowStart[b]; j < RowStart[b + 1]; j++)
                if (Col[j] >= from && Col[j] < to) TensorPrimitives.MultiplyAdd(w.AsSpan(Col[j] * d, d), alpha * Val[j], o, o);
        });
    }

    /// <summary>
    /// result_j = dot(g[row of j], W[Col_j]) for every entry j (rows in parallel); with <paramref name="columns"/>, only
    /// the entries whose column lies in [From, To) (the others are left as they are).
    /// </summary>
    public void DotWithRows(float[] w, int d, ReadOnlySpan<float> g, float[] result, (int From, int To)? columns = null)
    {
        var (from, to) = columns ?? (0, Width);
        unsafe
        {
            fixed (float* gp = g)
            {
                float* gs = gp;
                RowParallel.For(Batch, Math.Max(1, (RowStart[Batch] / Math.Max(1, Batch)) * d / 8), b =>
                {
                    var gb = new ReadOnlySpan<float>(gs + (long)b * d, d);
                    for (int j = RowStart[b]; j < RowStart[b + 1]; j++)
                        if (Col[j] >= from && Col[j] < to) result[j] = TensorPrimitives.Dot(w.AsSpan(Col[j] * d, d), gb);
                });
            }
        }
    }

    /// <summary>
    /// dW[i] += Σ_{entries j in column i} coef_j · g[row of j] (features in parallel; each feature sums
    /// its rows in ascending order, so the result is deterministic). coef defaults to Val. With
    /// <paramref name="columnSums"/>, also columnSums[i] += Σ_j coef_j. With <paramref name="columns"/>, only the
    /// features in [From, To).
    /// </summary>
    public void AccumulateOuter(ReadOnlySpan<float> g, int d, float[] dW, float[]? coef = null, float[]? columnSums = null,
        (int From, int To)? columns = null)
    {
        var (from, to) = columns ?? (0, Width);
        Transpose(coef ?? Val);
        unsafe
        {
            fixed (float* gp = g)
            {
                float* gs = gp;
                var colStart = _colStart;
                var colRow = _colRow;
                var colVal = _colVal;
                RowParallel.For(to - from, Math.Max(1, (RowStart[Batch] / Math.Max(1, Width)) * d / 4), f =>
                {
                    int i = from + f;
                    if (colStart[i] == colStart[i + 1]) return;
                    var dst = dW.AsSpan(i * d, d);
                    float sum = 0;
                    for (int j = colStart[i]; j < colStart[i + 1]; j++)
                    {
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(gs + (long)colRow[j] * d, d), colVal[j], dst, dst);
                        sum += colVal[j];
                    }
                    if (columnSums is not null) columnSums[i] += sum;
                });
            }
        }
    }

    // counting sort of the entries by column (rows stay ascending within a column)
    void Transpose(float[] values)
    {
        int nnz = Nnz;
        if (_colStart.Length < Width + 1) _colStart = new int[Width + 1];
        if (_colRow.Length < nnz) { _colRow = new int[nnz]; _colVal = new float[nnz]; }
        Array.Clear(_colStart, 0, Width + 1);
        for (int j = 0; j < nnz; j++) _colStart[Col[j] + 1]++;
        for (int i = 0; i < Width; i++) _colStart[i + 1] += _colStart[i];
        var next = new int[Width];
        Array.Copy(_colStart, next, Width);
        for (int b = 0; b < Batch; b++)
            for (int j = RowStart[b]; j < RowStart[b + 1]; j++)
            {
                int at = next[Col[j]]++;
                _colRow[at] = b;
                _colVal[at] = values[j];
            }
    }

    /// <summary>Per-feature fire counts: fires[i] += number of rows where feature i is nonzero.</summary>
    public void CountFires(Span<int> fires)
    {
        for (int j = 0; j < Nnz; j++) fires[Col[j]]++;
    }
}
