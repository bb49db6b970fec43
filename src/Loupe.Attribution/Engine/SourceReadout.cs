using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Attribution.Engine;

/// <summary>
/// The sources that write one place of the residual stream (an MLP output, or the token embeddings).
/// A source's vector is a row of <see cref="_table"/> times a scale: a feature is its decoder row to this
/// layer times its activation (the table holds each decoder row once, however many positions the feature
/// is active at), an error or token node is its own vector with scale 1. A read-out contracts the gradient
/// rows of each position with that position's sources: gather their rows, one GEMM
/// (<c>R[n, j] = g[pos_j, n]·row_j</c>); the scatter to adjacency columns applies the scales. Memory: the
/// table, not one vector per (feature, position) — for a cross-layer transcoder on a long prompt that is
/// the difference between the decoder's size and many times it.
/// </summary>
internal sealed class SourceReadout
{
    readonly int[] _starts;    // [T + 1]: sources of position p are entries starts[p] … starts[p+1]−1
    readonly int[] _rows;      // table row of each entry
    readonly Tensor _table = null!;    // [rows, d] on the backend; gathered into source order: [Count, d]
    readonly Tensor _scratch = null!;  // [max sources at one position, d] (the table itself when gathered)

    /// <param name="backend">Where the table lives.</param>
    /// <param name="positions">T.</param>
    /// <param name="d">d_model.</param>
    /// <param name="table">The distinct vectors <c>[rows, d]</c> (host).</param>
    /// <param name="sources">(position, adjacency column, table row, scale) of every source.</param>
    public SourceReadout(IComputeBackend backend, int positions, int d, float[] table, IReadOnlyList<(int Position, int Column, int Row, float Scale)> sources)
        : this(backend, positions, d, sources)
    {
        int tableRows = Math.Max(1, table.Length / d);
        _table = backend.ToDevice(Tensor.FromArray(table.Length == 0 ? new float[d] : table, tableRows, d), TransferKind.Inputs);
        _scratch = backend.Empty(_widest, d);
        Bytes = 4L * (tableRows + _widest) * d;
    }

    /// <summary>
    /// A read-out whose table <paramref name="table"/> <c>[rows, d]</c> is already on the device: its rows are gathered
    /// once into source order (one contiguous block per position), so reading needs no gather and no index upload per batch.
    /// </summary>
    /// <param name="backend">Where the table lives.</param>
    /// <param name="positions">T.</param>
    /// <param name="d">d_model.</param>
    /// <param name="table">The distinct vectors <c>[rows, d]</c> on the backend.</param>
    /// <param name="sources">(position, adjacency column, table row, scale) of every source.</param>
    public SourceReadout(IComputeBackend backend, int positions, int d, Tensor table, IReadOnlyList<(int Position, int Column, int Row, float Scale)> sources)
        : this(backend, positions, d, sources)
    {
        _table = backend.Empty(Math.Max(1, Count), d);
        if (Count > 0) backend.Embedding(table, d, _rows, 1f, _table);
        _gathered = true;
        _scratch = _table;
        Bytes = 4L * Math.Max(1, Count) * d;
    }

    SourceReadout(IComputeBackend backend, int positions, int d, IReadOnlyList<(int Position, int Column, int Row, float Scale)> sources)
    {
        var ordered = sources.Select((s, i) => (s, i)).OrderBy(x => x.s.Position).ThenBy(x => x.i).Select(x => x.s).ToArray();
        Count = ordered.Length;
        Columns = [.. ordered.Select(s => s.Column)];
        Scales = [.. ordered.Select(s => s.Scale)];
        _rows = [.. ordered.Select(s => s.Row)];
        _starts = new int[positions + 1];
        foreach (var s in ordered) _starts[s.Position + 1]++;
        int widest = 1;
        for (int p = 0; p < positions; p++)
        {
            widest = Math.Max(widest, _starts[p + 1]);
            _starts[p + 1] += _starts[p];
        }
        _widest = widest;
        D = d;
    }

    readonly int _widest;
    readonly bool _gathered;

    public int Count { get; }
    public int D { get; }
    public int[] Columns { get; }
    public float[] Scales { get; }

    /// <summary>Bytes its table and scratch take on the backend.</summary>
    public long Bytes { get; private init; }

    /// <summary>
    /// <c>result[n, j] = g[pos_j, n]·row_j</c> (unscaled) for the <paramref name="rows"/> rows of a position-major
    /// gradient <paramref name="g"/> <c>[T·N, d]</c>, for the sources at the first <paramref name="positions"/>
    /// positions (the gradient is zero beyond them); <paramref name="result"/> is <c>[N, Count]</c>.
    /// </summary>
    public void Read(IComputeBackend be, Tensor g, int rows, Tensor result, int positions, long resultOffset = 0)
    {
        for (int p = 0; p < positions; p++)
        {
            int start = _starts[p], k = _starts[p + 1] - start;
            if (k == 0) continue;
            if (_gathered)
                be.Gemm(false, true, rows, k, D, 1f, g, (long)p * rows * D, D, _table, (long)start * D, D, 0f, result, resultOffset + start, Count);
            else
            {
                be.Embedding(_table, D, _rows.AsSpan(start, k), 1f, _scratch);
                be.Gemm(false, true, rows, k, D, 1f, g, (long)p * rows * D, D, _scratch, 0, D, 0f, result, resultOffset + start, Count);
            }
        }
    }

    /// <summary>
    /// Adds a read-out <c>[N, Count]</c> (host) times each source's scale into <paramref name="rowsOut"/> <c>[n, width]</c>
    /// at the sources' columns, for the sources at the first <paramref name="positions"/> positions (what <see cref="Read"/> wrote).
    /// </summary>
    public void Scatter(ReadOnlySpan<float> result, int rows, Span<float> rowsOut, int width, int positions)
    {
        int read = _starts[positions];
        for (int n = 0; n < rows; n++)
        {
            var r = result.Slice(n * Count, Count);
            var o = rowsOut.Slice(n * width, width);
            for (int j = 0; j < read; j++) o[Columns[j]] += r[j] * Scales[j];
        }
    }
}
