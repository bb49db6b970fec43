using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Attribution.Engine;

/// <summary>
/// The sources that write one place of the residual stream (an MLP output, or the token embeddings),
/// grouped by position: row j of its vectors is what source j adds at its position
/// (a feature's activation × its decoder row to this layer, an error vector, a token's embedding), and
/// <see cref="Columns"/>[j] is its adjacency column. A read-out contracts the gradient rows at each
/// position with that position's sources in one GEMM: <c>R[n, j] = g[pos_j, n]·v_j</c>.
/// </summary>
internal sealed class SourceReadout
{
    readonly int[] _starts;   // [T + 1]: sources of position p are rows starts[p] … starts[p+1]−1
    readonly Tensor _vectors; // [count, d] on the backend

    /// <param name="backend">Where the vectors live.</param>
    /// <param name="positions">T.</param>
    /// <param name="d">d_model.</param>
    /// <param name="sources">(position, column, vector) of every source.</param>
    public SourceReadout(IComputeBackend backend, int positions, int d, IReadOnlyList<(int Position, int Column, float[] Vector)> sources)
    {
        var ordered = sources.Select((s, i) => (s, i)).OrderBy(x => x.s.Position).ThenBy(x => x.i).Select(x => x.s).ToArray();
        Count = ordered.Length;
        Columns = ordered.Select(s => s.Column).ToArray();
        _starts = new int[positions + 1];
        foreach (var s in ordered) _starts[s.Position + 1]++;
        for (int p = 0; p < positions; p++) _starts[p + 1] += _starts[p];
        var host = new float[Math.Max(1, Count) * d];
        for (int j = 0; j < Count; j++) ordered[j].Vector.AsSpan(0, d).CopyTo(host.AsSpan(j * d, d));
        _vectors = backend.ToDevice(Tensor.FromArray(host, Math.Max(1, Count), d), TransferKind.Inputs);
        D = d;
    }

    public int Count { get; }
    public int D { get; }
    public int[] Columns { get; }

    /// <summary>Bytes its vectors take.</summary>
    public long Bytes => 4L * Count * D;

    /// <summary>
    /// <c>result[n, j] = g[pos_j, n]·v_j</c> for the <paramref name="rows"/> rows of a position-major gradient
    /// <paramref name="g"/> <c>[T·N, d]</c> (N = <paramref name="rows"/>); <paramref name="result"/> is <c>[N, Count]</c>.
    /// </summary>
    public void Read(IComputeBackend be, Tensor g, int rows, Tensor result)
    {
        for (int p = 0; p + 1 < _starts.Length; p++)
        {
            int k = _starts[p + 1] - _starts[p];
            if (k == 0) continue;
            be.Gemm(false, true, rows, k, D, 1f, g, (long)p * rows * D, D, _vectors, (long)_starts[p] * D, D, 0f, result, _starts[p], Count);
        }
    }

    /// <summary>Adds a read-out <c>[N, Count]</c> (host) into <paramref name="rowsOut"/> <c>[N, width]</c> at the sources' columns.</summary>
    public void Scatter(ReadOnlySpan<float> result, int rows, Span<float> rowsOut, int width)
    {
        for (int n = 0; n < rows; n++)
        {
            var r = result.Slice(n * Count, Count);
            var o = rowsOut.Slice(n * width, width);
            for (int j = 0; j < Count; j++) o[Columns[j]] += r[j];
        }
    }
}
