using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Loupe.Tensors.Kernels;

/// <summary>
/// Row-wise normalizations over the last axis of x <c>[rows, d]</c>. <c>scale</c> receives
/// TransformerLens's <c>hook_scale</c> per row (the divisor), when not empty.
/// </summary>
public static class Normalization
{
    /// <summary>
    /// LayerNorm: <c>y = (x - mean) / sqrt(var + eps) · w + b</c>, biased variance.
    /// <paramref name="weight"/> and <paramref name="bias"/> may be empty (identity / zero).
    /// </summary>
    public static void LayerNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias,
        float eps, Span<float> y, Span<float> scale = default)
    {
        Check(x, rows, d, weight, y, scale);
        if (!bias.IsEmpty && bias.Length != d) throw new ArgumentException($"bias has {bias.Length} elements; expected {d}", nameof(bias));
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * d, d);
            var yr = y.Slice(r * d, d);
            float mean = TensorPrimitives.Sum(xr) / d;
            TensorPrimitives.Subtract(xr, mean, yr);
            float variance = TensorPrimitives.SumOfSquares(yr) / d;
            float s = MathF.Sqrt(variance + eps);
            if (!scale.IsEmpty) scale[r] = s;
            TensorPrimitives.Multiply(yr, 1f / s, yr);
            if (!weight.IsEmpty) TensorPrimitives.Multiply(yr, weight, yr);
            if (!bias.IsEmpty) TensorPrimitives.Add(yr, bias, yr);
        }
    }

    /// <summary>
    /// RMSNorm: <c>y = x / sqrt(mean(x²) + eps) · (w + weightOffset)</c>. Gemma uses
    /// <paramref name="weightOffset"/> = 1 (its weights are stored as <c>w - 1</c>).
    /// </summary>
    public static void RmsNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> weight, float weightOffset,
        float eps, Span<float> y, Span<float> scale = default)
    {
        Check(x, rows, d, weight, y, scale);
        // An absent weight means w = 1 (so the factor is 1 + weightOffset).
        Span<float> w = weightOffset == 0f ? default : new float[d];
        if (!w.IsEmpty)
        {
            if (weight.IsEmpty) w.Fill(1f + weightOffset);
            else TensorPrimitives.Add(weight, weightOffset, w);
        }
        ReadOnlySpan<float> effective = w.IsEmpty ? weight : w;
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * d, d);
            var yr = y.Slice(r * d, d);
            float s = MathF.Sqrt(TensorPrimitives.SumOfSquares(xr) / d + eps);
            if (!scale.IsEmpty) scale[r] = s;
            TensorPrimitives.Multiply(xr, 1f / s, yr);
            if (!effective.IsEmpty) TensorPrimitives.Multiply(yr, effective, yr);
        }
    }

    static void Check(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> weight, Span<float> y, Span<float> scale)
    {
        long n = (long)rows * d;
        if (x.Length < n) throw new ArgumentException($"x has {x.Length} elements; [{rows}, {d}] needs {n}", nameof(x));
        if (y.Length < n) throw new ArgumentException($"y has {y.Length} elements; [{rows}, {d}] needs {n}", nameof(y));
        if (!weight.IsEmpty && weight.Length != d) throw new ArgumentException($"weight has {weight.Length} elements; expected {d}", nameof(weight));
        if (!scale.IsEmpty && scale.Length < rows) throw new ArgumentException($"scale has {scale.Length} elements; expected {rows}", nameof(scale));
    }
}

/// <summary>Softmax over the last axis.</summary>
public static class Softmax
{
    /// <summary>
    /// Row-wise softmax of x <c>[rows, n]</c> into y (may alias x). Entries of −∞ get probability 0;
    /// a row that is entirely −∞ (a fully masked query) becomes all zeros rather than NaN.
    /// </summary>
    public static void Rows(ReadOnlySpan<float> x, int rows, int n, Span<float> y)
    {
        if (x.Length < (long)rows * n || y.Length < (long)rows * n)
            throw new ArgumentException($"softmax over [{rows}, {n}] needs {(long)rows * n} elements; x has {x.Length}, y has {y.Length}");
        for (int r = 0; r < rows; r++) Row(x.Slice(r * n, n), y.Slice(r * n, n));
    }

    /// <summary>Softmax of one row.</summary>
    public static void Row(ReadOnlySpan<float> x, Span<float> y)
    {
        if (x.IsEmpty) return;
        float max = TensorPrimitives.Max(x);
        if (float.IsNegativeInfinity(max)) { y.Clear(); return; }
        TensorPrimitives.Subtract(x, max, y);
        TensorPrimitives.Exp(y, y);
        // Without SIMD, TensorPrimitives sums sequentially in float; long rows then lose ~n·ε, so sum in double.
        float sum = Vector128.IsHardwareAccelerated && y.Length < 1 << 16 ? TensorPrimitives.Sum(y) : SumDouble(y);
        TensorPrimitives.Multiply(y, 1f / sum, y);
    }

    static float SumDouble(ReadOnlySpan<float> y)
    {
        double sum = 0;
        foreach (var v in y) sum += v;
        return (float)sum;
    }
}

/// <summary>
/// Rotary position embeddings, "rotate-half" convention (GPT-NeoX, Llama, HF):
/// for the first <c>rotaryDim</c> dims of each head, with <c>h = rotaryDim/2</c>,
/// <c>x'[i] = x[i]·cos θᵢ − x[i+h]·sin θᵢ</c>, <c>x'[i+h] = x[i+h]·cos θᵢ + x[i]·sin θᵢ</c>,
/// <c>θᵢ = pos · base^(−2i/rotaryDim)</c>. Dims past <c>rotaryDim</c> are unchanged (partial rotary).
/// </summary>
public sealed class RotaryTable
{
    /// <summary>Positions computed up front; the table grows (doubling) only as later positions are used.</summary>
    const int InitialPositions = 2048;

    /// <summary>cos and sin of θ for positions [0, Count), each row <c>rotaryDim/2</c> wide. Immutable once published.</summary>
    sealed record Rows(float[] Cos, float[] Sin, int Count);

    readonly float[] _invFreq;
    readonly object _growing = new();
    Rows _rows;

    /// <param name="rotaryDim">Rotated dimensions per head: positive and even.</param>
    /// <param name="theta">RoPE base: finite and positive.</param>
    /// <param name="maxPositions">Positions the model accepts (n_ctx). Rows are computed lazily, so a
    /// context of millions costs memory only for the positions actually run.</param>
    /// <exception cref="ArgumentException">An argument is out of range (configs are checked before this).</exception>
    public RotaryTable(int rotaryDim, double theta, int maxPositions)
        : this(rotaryDim, DefaultInverseFrequencies(rotaryDim, theta), maxPositions) { }

    /// <param name="rotaryDim">Rotated dimensions per head: positive and even.</param>
    /// <param name="inverseFrequencies">The rotation speed of each dimension pair (<c>rotaryDim/2</c> finite values), e.g. scaled as Llama 3 does.</param>
    /// <param name="maxPositions">Positions the model accepts (n_ctx).</param>
    /// <param name="magnitude">A factor on cos and sin (LongRoPE's attention factor: it scales q and k, so the scores by its
    /// square); 1 for a plain rotation.</param>
    /// <exception cref="ArgumentException">An argument is out of range.</exception>
    public RotaryTable(int rotaryDim, float[] inverseFrequencies, int maxPositions, float magnitude = 1f)
    {
        if (rotaryDim <= 0 || rotaryDim % 2 != 0) throw new ArgumentException($"rotary dimension must be a positive even number, got {rotaryDim}", nameof(rotaryDim));
        if (inverseFrequencies.Length != rotaryDim / 2 || inverseFrequencies.Any(f => !float.IsFinite(f)))
            throw new ArgumentException($"expected {rotaryDim / 2} finite inverse frequencies, got {inverseFrequencies.Length}", nameof(inverseFrequencies));
        if (maxPositions <= 0) throw new ArgumentOutOfRangeException(nameof(maxPositions), maxPositions, "the rotary table needs at least one position");
        if (!(magnitude > 0) || !float.IsFinite(magnitude)) throw new ArgumentOutOfRangeException(nameof(magnitude), magnitude, "the rotary magnitude must be finite and positive");
        Magnitude = magnitude;
        RotaryDim = rotaryDim;
        MaxPositions = maxPositions;
        _invFreq = (float[])inverseFrequencies.Clone();
        _rows = Build(Math.Min(maxPositions, InitialPositions));
    }

    /// <summary>The rotation speed of each dimension pair (<c>rotaryDim/2</c> values), as used for the angles.</summary>
    public ReadOnlySpan<float> InverseFrequencies => _invFreq;

    /// <summary>
    /// The factor on cos and sin (1 for a rotation). Hugging Face's LongRoPE multiplies both by its attention factor, so a
    /// rotated q or k is that much longer; <see cref="ApplyInverse"/> stays the transpose (what a backward pass needs).
    /// </summary>
    public float Magnitude { get; }

    /// <summary>
    /// For rotary embeddings whose frequencies depend on the sequence length (Hugging Face's dynamic NTK scaling): the
    /// inverse frequencies for a pass over positions [0, length), or null when this table's own apply. Null: fixed.
    /// </summary>
    public Func<int, float[]?>? LengthDependent { get; init; }

    RotaryTable? _forLength;
    int _forLengthKey;

    /// <summary>
    /// The table for a pass whose positions end below <paramref name="length"/>: this one, or — with
    /// <see cref="LengthDependent"/> frequencies — one built for that length (the last one is kept).
    /// </summary>
    public RotaryTable ForLength(int length)
    {
        if (LengthDependent is null) return this;
        lock (_growing)
        {
            if (_forLength is not null && _forLengthKey == length) return _forLength;
            var inverse = LengthDependent(length);
            var table = inverse is null ? this : new RotaryTable(RotaryDim, inverse, MaxPositions, Magnitude);
            (_forLength, _forLengthKey) = (table, length);
            return table;
        }
    }

    /// <summary>
    /// HF's default <c>inv_freq = 1 / base^(2i/rotaryDim)</c>, in the same float32 arithmetic (angles are then
    /// <c>float(pos) · inv_freq</c> in float32).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The base is not finite and positive.</exception>
    public static float[] DefaultInverseFrequencies(int rotaryDim, double theta)
    {
        if (!double.IsFinite(theta) || theta <= 0) throw new ArgumentOutOfRangeException(nameof(theta), theta, "the rotary base must be finite and positive");
        var inv = new float[Math.Max(0, rotaryDim / 2)];
        for (int i = 0; i < inv.Length; i++) inv[i] = (float)(1.0 / Math.Pow(theta, (float)(2 * i) / rotaryDim));
        return inv;
    }

    Rows Build(int count)
    {
        int half = _invFreq.Length;
        long size = (long)count * half;
        if (size > Array.MaxLength) throw new ArgumentOutOfRangeException(nameof(count), count, $"a rotary table of {count} positions × {half} does not fit in one array");
        var cos = new float[size];
        var sin = new float[size];
        for (int p = 0; p < count; p++)
            for (int i = 0; i < half; i++)
            {
                float angle = p * _invFreq[i];
                cos[p * half + i] = (float)Math.Cos(angle) * Magnitude;
                sin[p * half + i] = (float)Math.Sin(angle) * Magnitude;
            }
        return new Rows(cos, sin, count);
    }

    /// <summary>The table covering positions [0, <paramref name="needed"/>), grown under a lock when it is shorter.</summary>
    Rows Covering(int needed)
    {
        var rows = Volatile.Read(ref _rows);
        if (needed <= rows.Count) return rows;
        lock (_growing)
        {
            rows = _rows;
            if (needed <= rows.Count) return rows;
            int count = (int)Math.Min(MaxPositions, Math.Max(needed, 2L * rows.Count));
            rows = Build(count);
            Volatile.Write(ref _rows, rows);
            return rows;
        }
    }

    /// <summary>
    /// The cos and sin rows (row-major by position, each <c>rotaryDim/2</c> wide) covering at least
    /// positions [0, <paramref name="positions"/>): for a backend that keeps the table on its device.
    /// The arrays are never written after they are returned.
    /// </summary>
    public (float[] Cos, float[] Sin, int Count) AnglesCovering(int positions)
    {
        var rows = Covering(Math.Clamp(positions, 1, MaxPositions));
        return (rows.Cos, rows.Sin, rows.Count);
    }

    /// <summary>Positions whose angles are computed so far (grows on demand up to <see cref="MaxPositions"/>).</summary>
    public int ComputedPositions => Volatile.Read(ref _rows).Count;

    public int RotaryDim { get; }
    public int MaxPositions { get; }

    /// <summary>
    /// Rotates x <c>[rows, heads, headDim]</c> in place; row r sits at position <c>positions[r]</c>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A position is negative or beyond the table.</exception>
    public void Apply(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions) =>
        Rotate(x, rows, heads, headDim, positions, 1f);

    /// <summary>
    /// The inverse (and transpose) rotation, by −θ: the backward of <see cref="Apply"/> maps the
    /// gradient of the rotated vector to the gradient of the unrotated one.
    /// </summary>
    public void ApplyInverse(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions) =>
        Rotate(x, rows, heads, headDim, positions, -1f);

    void Rotate(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions, float direction)
    {
        if (headDim < RotaryDim) throw new ArgumentException($"head dimension {headDim} is smaller than the rotary dimension {RotaryDim}");
        if (positions.Length < rows) throw new ArgumentException($"{positions.Length} positions for {rows} rows", nameof(positions));
        if (x.Length < (long)rows * heads * headDim) throw new ArgumentException($"x has {x.Length} elements; [{rows}, {heads}, {headDim}] needs {(long)rows * heads * headDim}", nameof(x));
        int half = RotaryDim / 2;
        int highest = -1;
        for (int r = 0; r < rows; r++)
        {
            int p = positions[r];
            if ((uint)p >= (uint)MaxPositions) throw new ArgumentOutOfRangeException(nameof(positions), $"position {p} is outside the rotary table (0..{MaxPositions - 1})");
            highest = Math.Max(highest, p);
        }
        var table = Covering(highest + 1);
        var sin = new float[half];
        for (int r = 0; r < rows; r++)
        {
            int p = positions[r];
            var cos = new ReadOnlySpan<float>(table.Cos, p * half, half);
            var sinTable = new ReadOnlySpan<float>(table.Sin, p * half, half);
            for (int i = 0; i < half; i++) sin[i] = direction * sinTable[i];
            for (int h = 0; h < heads; h++)
            {
                var lo = x.Slice((r * heads + h) * headDim, half);
                var hi = x.Slice((r * heads + h) * headDim + half, half);
                for (int i = 0; i < half; i++)
                {
                    float a = lo[i], b = hi[i];
                    lo[i] = a * cos[i] - b * sin[i];
                    hi[i] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}
