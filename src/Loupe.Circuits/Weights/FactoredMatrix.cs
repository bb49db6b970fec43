using System.Numerics;

namespace Loupe.Circuits.Weights;

/// <summary>
/// A matrix kept as the product of two factors, <c>A·B</c> with <c>A [rows, inner]</c> and
/// <c>B [inner, cols]</c> (row-major, fp64), as TransformerLens's <c>FactoredMatrix</c>: e.g.
/// <c>W_QK = W_Q·W_Kᵀ</c> and <c>W_OV = W_V·W_O</c> per head (inner = d_head). Norms, products,
/// singular values and eigenvalues are computed from inner×inner problems; the rows×cols matrix is
/// formed only by <see cref="ToDense"/>.
/// </summary>
public sealed class FactoredMatrix
{
    readonly double[] _left, _right;

    /// <summary>Wraps <c>A [rows, inner]</c> and <c>B [inner, cols]</c> (taken, not copied).</summary>
    /// <param name="left">A, row-major <c>[rows, inner]</c>.</param>
    /// <param name="right">B, row-major <c>[inner, cols]</c>.</param>
    /// <param name="rows">Rows of A (and of the product).</param>
    /// <param name="inner">Columns of A = rows of B.</param>
    /// <param name="cols">Columns of B (and of the product).</param>
    /// <exception cref="ArgumentException">A size is not positive or a factor has the wrong length.</exception>
    public FactoredMatrix(double[] left, double[] right, int rows, int inner, int cols)
    {
        if (rows <= 0 || inner <= 0 || cols <= 0) throw new ArgumentException($"factored matrix sizes must be positive: rows={rows}, inner={inner}, cols={cols}");
        if (left.Length != (long)rows * inner) throw new ArgumentException($"left factor: expected {rows}×{inner} = {(long)rows * inner} values, found {left.Length}");
        if (right.Length != (long)inner * cols) throw new ArgumentException($"right factor: expected {inner}×{cols} = {(long)inner * cols} values, found {right.Length}");
        _left = left; _right = right;
        Rows = rows; Inner = inner; Cols = cols;
    }

    public int Rows { get; }
    public int Inner { get; }
    public int Cols { get; }
    /// <summary>A, row-major <c>[rows, inner]</c>.</summary>
    public ReadOnlySpan<double> Left => _left;
    /// <summary>B, row-major <c>[inner, cols]</c>.</summary>
    public ReadOnlySpan<double> Right => _right;

    /// <summary><c>(A·B)ᵀ = Bᵀ·Aᵀ</c>, still factored.</summary>
    public FactoredMatrix Transpose() =>
        new(SmallLinearAlgebra.Transpose(_right, Inner, Cols), SmallLinearAlgebra.Transpose(_left, Rows, Inner), Cols, Inner, Rows);

    /// <summary>
    /// <c>(A·B)·(C·D) = A·(B·C)·D</c>: the small middle product <c>B·C [r1, r2]</c> is folded into the
    /// side whose inner size is larger, so the result keeps inner = min(r1, r2).
    /// </summary>
    /// <exception cref="ArgumentException">The inner sizes do not match (x.Cols ≠ y.Rows).</exception>
    public static FactoredMatrix operator *(FactoredMatrix x, FactoredMatrix y)
    {
        if (x.Cols != y.Rows) throw new ArgumentException($"factored product: left has {x.Cols} columns, right has {y.Rows} rows");
        var middle = SmallLinearAlgebra.Multiply(x._right, y._left, x.Inner, x.Cols, y.Inner); // [r1, r2]
        return x.Inner <= y.Inner
            ? new FactoredMatrix(x._left, SmallLinearAlgebra.Multiply(middle, y._right, x.Inner, y.Inner, y.Cols), x.Rows, x.Inner, y.Cols)
            : new FactoredMatrix(SmallLinearAlgebra.Multiply(x._left, middle, x.Rows, x.Inner, y.Inner), y._right, x.Rows, y.Inner, y.Cols);
    }

    /// <summary>Row <paramref name="row"/> of <c>A·B</c> (<c>[cols]</c>), without forming the matrix.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The row is outside the matrix.</exception>
    public double[] Row(int row)
    {
        if ((uint)row >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(row), $"row {row} is outside a matrix of {Rows} rows");
        var result = new double[Cols];
        for (int i = 0; i < Inner; i++)
        {
            double a = _left[(long)row * Inner + i];
            if (a == 0) continue;
            var b = _right.AsSpan((int)((long)i * Cols), Cols);
            for (int c = 0; c < Cols; c++) result[c] += a * b[c];
        }
        return result;
    }

    /// <summary>Gram matrix of the left factor, <c>AᵀA [inner, inner]</c>.</summary>
    internal double[] LeftGram() => SmallLinearAlgebra.Multiply(_left, _left, Inner, Rows, Inner, transA: true);

    /// <summary>Gram matrix of the right factor, <c>B·Bᵀ [inner, inner]</c>.</summary>
    internal double[] RightGram() => SmallLinearAlgebra.Multiply(_right, _right, Inner, Cols, Inner, transB: true);

    /// <summary>
    /// Frobenius norm <c>‖A·B‖_F = √tr((AᵀA)(BBᵀ))</c>: two inner×inner Gram matrices and their
    /// elementwise dot product (both symmetric).
    /// </summary>
    public double FrobeniusNorm()
    {
        var ga = LeftGram();
        var gb = RightGram();
        double sum = 0;
        for (int i = 0; i < ga.Length; i++) sum += ga[i] * gb[i];
        return Math.Sqrt(Math.Max(sum, 0));
    }

    /// <summary>
    /// Singular values, largest first: min(rows, inner, cols) of them. With thin QRs <c>A = Q_A·R_A</c>
    /// and <c>Bᵀ = Q_B·R_B</c>, <c>A·B = Q_A·(R_A·R_Bᵀ)·Q_Bᵀ</c>, so they are those of the small
    /// <c>R_A·R_Bᵀ</c> (one-sided Jacobi). Unlike the Gram route this does not square the condition number.
    /// </summary>
    public double[] SingularValues()
    {
        var ra = SmallLinearAlgebra.HouseholderR(_left, Rows, Inner); // [ka, inner]
        var rb = SmallLinearAlgebra.HouseholderR(SmallLinearAlgebra.Transpose(_right, Inner, Cols), Cols, Inner); // [kb, inner]
        int ka = Math.Min(Rows, Inner), kb = Math.Min(Cols, Inner);
        var core = SmallLinearAlgebra.Multiply(ra, rb, ka, Inner, kb, transB: true); // [ka, kb]
        return SmallLinearAlgebra.SingularValues(core, ka, kb);
    }

    /// <summary>
    /// Eigenvalues of a square <c>A·B</c>: its nonzero eigenvalues are those of <c>B·A [inner, inner]</c>,
    /// the rest are zero. Returns the inner (= rank bound) eigenvalues of B·A, largest modulus first;
    /// when inner &gt; rows the extra ones are zeros of B·A.
    /// </summary>
    /// <exception cref="InvalidOperationException">The matrix is not square.</exception>
    public Complex[] Eigenvalues()
    {
        if (Rows != Cols) throw new InvalidOperationException($"eigenvalues need a square matrix; this one is {Rows}×{Cols}");
        var small = SmallLinearAlgebra.Multiply(_right, _left, Inner, Cols, Inner); // B·A
        return SmallLinearAlgebra.Eigenvalues(small, Inner);
    }

    /// <summary>The full <c>[rows, cols]</c> product (the one operation that forms it).</summary>
    public double[] ToDense() => SmallLinearAlgebra.Multiply(_left, _right, Rows, Inner, Cols);

    public override string ToString() => $"FactoredMatrix [{Rows}, {Inner}]·[{Inner}, {Cols}]";
}
