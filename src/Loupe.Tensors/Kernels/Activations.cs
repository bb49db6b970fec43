using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loupe.Tensors.Kernels;

/// <summary>
/// Element-wise activation functions, in place or from x into y (same length).
/// NaN in, NaN out. Large buffers are split across cores.
/// </summary>
public static class Activations
{
    const float SqrtTwoOverPi = 0.7978845608028654f;
    const float GeluCubic = 0.044715f;
    const int Chunk = 1 << 14;

    /// <summary>ReLU: <c>max(x, 0)</c>.</summary>
    public static void Relu(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckSameLength(x, y);
        TensorPrimitives.Max(x, 0f, y);
    }

    /// <summary>SiLU (swish): <c>x·σ(x)</c>.</summary>
    public static void Silu(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckSameLength(x, y);
        Chunked(x, y, static (xs, ys) =>
        {
            // x·σ(x) = x / (1 + e^-x)
            TensorPrimitives.Negate(xs, ys);
            TensorPrimitives.Exp(ys, ys);
            TensorPrimitives.Add(ys, 1f, ys);
            TensorPrimitives.Divide(xs, ys, ys);
        });
    }

    /// <summary>GELU, tanh approximation (GPT-2's <c>gelu_new</c>): <c>½x(1 + tanh(√(2/π)(x + 0.044715x³)))</c>.</summary>
    public static void GeluTanh(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckSameLength(x, y);
        Chunked(x, y, static (xs, ys) =>
        {
            TensorPrimitives.Multiply(xs, xs, ys);
            TensorPrimitives.Multiply(ys, GeluCubic, ys);
            TensorPrimitives.Add(ys, 1f, ys);                         // 1 + c·x²
            TensorPrimitives.Multiply(ys, xs, ys);                    // x + c·x³
            TensorPrimitives.Multiply(ys, SqrtTwoOverPi, ys);
            TensorPrimitives.Tanh(ys, ys);
            TensorPrimitives.Add(ys, 1f, ys);
            TensorPrimitives.Multiply(ys, xs, ys);
            TensorPrimitives.Multiply(ys, 0.5f, ys);
        });
    }

    /// <summary>
    /// GELU, exact: <c>½x(1 + erf(x/√2))</c> (PyTorch's default <c>gelu</c>), written as <c>x·Φ(x)</c>
    /// with Φ from a Chebyshev fit of erfc (relative error below 1.2e-7 everywhere), evaluated in one fused
    /// pass: sixteen float lanes where AVX-512 is there (relative error ≲ 5e-7), else four double lanes. Using erfc keeps full relative accuracy in the negative tail,
    /// where <c>1 + erf</c> would cancel.
    /// </summary>
    public static void GeluErf(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckSameLength(x, y);
        // One fused pass, four doubles at a time: the erfc fit, exp and the product stay in registers
        // (the multi-pass version streamed three double buffers through memory ~15 times: 16 % of a
        // Pythia forward). Same operations in the same order, so the same values.
        Chunked(x, y, static (xs, ys) =>
        {
            int i = 0;
            if (Vector512.IsHardwareAccelerated)
                for (; i + 16 <= xs.Length; i += 16)
                {
                    var v = Vector512.Create(xs.Slice(i, 16));
                    var half = HalfErfcOfAbsOverSqrt2(v, out _);
                    Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(v, Vector512<float>.Zero), v - v * half, v * half).CopyTo(ys.Slice(i, 16));
                }
            if (Vector256.IsHardwareAccelerated)
                for (; i + 4 <= xs.Length; i += 4)
                {
                    var v = Widen(xs.Slice(i, 4));
                    var erfc = ErfcOfAbsOverSqrt2(v);
                    var half = erfc * 0.5;
                    var r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(v, Vector256<double>.Zero), v * (Vector256<double>.One - half), v * half);
                    Narrow(r, ys.Slice(i, 4));
                }
            for (; i < xs.Length; i++)
            {
                double v = xs[i], half = 0.5 * Erfc(Math.Abs(v) * 0.7071067811865476);
                ys[i] = (float)(v >= 0 ? v * (1 - half) : v * half);                      // NaN stays NaN
            }
        });
    }

    /// <summary>
    /// ½·erfc(|x|/√2) from the same fit (<see cref="ErfcCoefficients"/>), sixteen float lanes at a time, and
    /// <paramref name="gaussian"/> = exp(−x²/2). Float32 throughout except that x² is carried exactly as hi + lo
    /// (an FMA gives the rounding error) and exp(P(t) − x²/2) is taken as exp(P(t))·exp(−hi/2)·(1 − lo/2): one
    /// float subtraction of a large x²/2 would cost up to 4e-6 relative in the tail. Relative error ≲ 5e-7.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> HalfErfcOfAbsOverSqrt2(Vector512<float> x, out Vector512<float> gaussian)
    {
        var ax = Vector512.Abs(x);
        var t = Vector512<float>.One / Vector512.FusedMultiplyAdd(ax, Vector512.Create(0.35355339f), Vector512<float>.One);
        var acc = Vector512.Create(0.17087277f);
        foreach (double c in ErfcCoefficients) acc = Vector512.FusedMultiplyAdd(acc, t, Vector512.Create((float)c));
        var hi = ax * ax;
        var lo = Vector512.FusedMultiplyAdd(ax, ax, -hi);
        gaussian = Vector512.Exp(hi * -0.5f) * Vector512.FusedMultiplyAdd(lo, Vector512.Create(-0.5f), Vector512<float>.One);
        return Vector512.Exp(acc) * gaussian * (t * 0.5f);
    }

    /// <summary>erfc(|x|/√2) from the Chebyshev fit (<see cref="ErfcCoefficients"/>), four lanes at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<double> ErfcOfAbsOverSqrt2(Vector256<double> v)
    {
        var z = Vector256.Abs(v) * 0.7071067811865476;
        var t = Vector256<double>.One / (z * 0.5 + Vector256<double>.One);
        var acc = Vector256.Create(0.17087277);
        foreach (double c in ErfcCoefficients) acc = acc * t + Vector256.Create(c);
        return Vector256.Exp(acc - z * z) * t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<double> Widen(ReadOnlySpan<float> four)
    {
        var f = Vector128.Create(four);
        return Vector256.Create(Vector128.WidenLower(f), Vector128.WidenUpper(f));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Narrow(Vector256<double> v, Span<float> four) =>
        Vector128.Narrow(v.GetLower(), v.GetUpper()).CopyTo(four);

    /// <summary>Numerical Recipes' erfcc: erfc(z) = t·exp(−z² + P(t)), Horner order after the leading 0.17087277.</summary>
    static readonly double[] ErfcCoefficients =
        [-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223];

    /// <summary>The error function to about 1e-15 (Taylor series, then a continued fraction for erfc).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return x;
        double ax = Math.Abs(x);
        if (ax < 2.5)
        {
            // Taylor series around 0; for |x| < 2.5 the largest term is ~1e2, so double keeps ~1e-14.
            double x2 = x * x, term = x, sum = x;
            for (int n = 1; n < 80; n++)
            {
                term *= -x2 / n;
                double add = term / (2 * n + 1);
                sum += add;
                if (Math.Abs(add) < 1e-17 * Math.Abs(sum)) break;
            }
            return 1.1283791670955126 * sum;
        }
        if (ax > 6) return Math.Sign(x);
        // erfc via continued fraction (Lentz), fast for |x| ≥ 2.5.
        double erfc = ErfcContinuedFraction(ax);
        return x > 0 ? 1 - erfc : erfc - 1;
    }

    static double ErfcContinuedFraction(double x)
    {
        // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + …)))))
        const double tiny = 1e-300;
        double f = x, c = x, d = 0;
        for (int n = 1; n < 200; n++)
        {
            double an = n * 0.5;
            d = x + an * d;
            d = Math.Abs(d) < tiny ? tiny : d;
            c = x + an / c;
            c = Math.Abs(c) < tiny ? tiny : c;
            d = 1 / d;
            double delta = c * d;
            f *= delta;
            if (Math.Abs(delta - 1) < 1e-16) break;
        }
        return Math.Exp(-x * x) / (f * 1.7724538509055159);
    }

    /// <summary>
    /// Backward of an activation: <c>dx = dy ⊙ f′(x)</c> for the named function (dx may alias dy).
    /// f′: relu <c>[x &gt; 0]</c>; silu <c>σ(x)(1 + x(1 − σ(x)))</c>; gelu_tanh
    /// <c>½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)</c> with <c>t = tanh(√(2/π)(x + 0.044715x³))</c>;
    /// gelu (erf) <c>Φ(x) + x·φ(x)</c>. Computed in double.
    /// </summary>
    /// <exception cref="NotSupportedException">The name is not a known activation.</exception>
    public static void Backward(string name, ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx)
    {
        if (x.Length != dy.Length || dx.Length != dy.Length)
            throw new ArgumentException($"activation backward needs equal lengths; x {x.Length}, dy {dy.Length}, dx {dx.Length}");
        switch (name)
        {
            case "relu":
                for (int i = 0; i < x.Length; i++) dx[i] = x[i] > 0 ? dy[i] : 0f;
                break;
            case "silu" or "swish":
                ChunkedBackward(x, dy, dx, static (xs, ds, ys, t) =>
                {
                    TensorPrimitives.Sigmoid(xs, t);                       // σ
                    TensorPrimitives.Subtract(1f, t, ys);                  // 1 − σ
                    TensorPrimitives.MultiplyAdd(ys, xs, 1f, ys);          // 1 + x(1 − σ)
                    TensorPrimitives.Multiply(ys, t, ys);
                    TensorPrimitives.Multiply(ys, ds, ys);
                });
                break;
            case "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_tanh":
                ChunkedBackward(x, dy, dx, static (xs, ds, ys, t) =>
                {
                    TensorPrimitives.Multiply(xs, xs, ys);                 // x²
                    TensorPrimitives.Multiply(ys, GeluCubic, t);
                    TensorPrimitives.Add(t, 1f, t);
                    TensorPrimitives.Multiply(t, xs, t);
                    TensorPrimitives.Multiply(t, SqrtTwoOverPi, t);
                    TensorPrimitives.Tanh(t, t);                           // t = tanh(u)
                    TensorPrimitives.Multiply(ys, 3 * GeluCubic, ys);
                    TensorPrimitives.Add(ys, 1f, ys);
                    TensorPrimitives.Multiply(ys, SqrtTwoOverPi * 0.5f, ys); // ½·√(2/π)(1 + 3c·x²)
                    TensorPrimitives.Multiply(ys, xs, ys);
                    for (int i = 0; i < ys.Length; i++) ys[i] = (0.5f * (1 + t[i]) + ys[i] * (1 - t[i] * t[i])) * ds[i];
                });
                break;
            case "gelu" or "gelu_exact":
                GeluErfBackward(x, dy, dx);
                break;
            default:
                throw new NotSupportedException($"activation function '{name}' is not supported (relu, silu, gelu, gelu_new, gelu_pytorch_tanh)");
        }
    }

    /// <summary>d gelu: <c>dy · (Φ(x) + x·φ(x))</c>, Φ from the erfc fit, in double; fused and four lanes at a time like the forward.</summary>
    static unsafe void GeluErfBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx)
    {
        if (x.Length <= Chunk * 2) { GeluErfBackwardBlock(x, dy, dx); return; }
        int chunks = (x.Length + Chunk - 1) / Chunk, n = x.Length;
        fixed (float* px = x) fixed (float* pd = dy) fixed (float* po = dx)
        {
            float* ppx = px, ppd = pd, ppo = po;
            Parallel.For(0, chunks, c =>
            {
                int start = c * Chunk, len = Math.Min(Chunk, n - start);
                GeluErfBackwardBlock(new ReadOnlySpan<float>(ppx + start, len), new ReadOnlySpan<float>(ppd + start, len), new Span<float>(ppo + start, len));
            });
        }
    }

    static void GeluErfBackwardBlock(ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 16 <= x.Length; i += 16)
            {
                var v = Vector512.Create(x.Slice(i, 16));
                var half = HalfErfcOfAbsOverSqrt2(v, out var gaussian);
                var cdf = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(v, Vector512<float>.Zero), Vector512<float>.One - half, half);
                (Vector512.Create(dy.Slice(i, 16)) * Vector512.FusedMultiplyAdd(v * 0.3989422804014327f, gaussian, cdf)).CopyTo(dx.Slice(i, 16));
            }
        if (Vector256.IsHardwareAccelerated)
            for (; i + 4 <= x.Length; i += 4)
            {
                var v = Widen(x.Slice(i, 4));
                var d = Widen(dy.Slice(i, 4));
                var phi = Vector256.Exp(v * v * -0.5) * 0.3989422804014327;
                var half = ErfcOfAbsOverSqrt2(v) * 0.5;
                var cdf = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(v, Vector256<double>.Zero), Vector256<double>.One - half, half);
                Narrow(d * (cdf + v * phi), dx.Slice(i, 4));
            }
        for (; i < x.Length; i++)
        {
            double v = x[i], phi = Math.Exp(-0.5 * v * v) * 0.3989422804014327;
            double half = 0.5 * Erfc(Math.Abs(v) * 0.7071067811865476);
            dx[i] = (float)(dy[i] * ((v >= 0 ? 1 - half : half) + v * phi));
        }
    }

    delegate void BackwardOp(ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx, Span<float> scratch);

    /// <summary>Runs a backward op chunk by chunk with a scratch buffer; dx is written only after dy and x of the chunk are read.</summary>
    static void ChunkedBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx, BackwardOp op)
    {
        var pool = System.Buffers.ArrayPool<float>.Shared;
        float[] scratch = pool.Rent(Math.Min(Chunk, x.Length)), output = pool.Rent(Math.Min(Chunk, x.Length));
        try
        {
            for (int start = 0; start < x.Length; start += Chunk)
            {
                int len = Math.Min(Chunk, x.Length - start);
                var o = output.AsSpan(0, len);
                op(x.Slice(start, len), dy.Slice(start, len), o, scratch.AsSpan(0, len));
                o.CopyTo(dx.Slice(start, len));
            }
        }
        finally
        {
            pool.Return(scratch);
            pool.Return(output);
        }
    }

    /// <summary>erfc(z) for z ≥ 0 from the same Chebyshev fit the exact GELU uses (relative error &lt; 1.2e-7).</summary>
    static double Erfc(double z)
    {
        double t = 1 / (1 + 0.5 * z), acc = 0.17087277;
        foreach (double c in ErfcCoefficients) acc = acc * t + c;
        return t * Math.Exp(acc - z * z);
    }

    /// <summary>True for the activation names <see cref="Apply"/> and <see cref="Backward"/> accept (so a config can be checked when it is read).</summary>
    public static bool IsKnown(string? name) =>
        name is "relu" or "silu" or "swish" or "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_tanh" or "gelu" or "gelu_exact";

    /// <summary>Applies an activation named as in HF / TransformerLens configs.</summary>
    /// <exception cref="NotSupportedException">The name is not a known activation.</exception>
    public static void Apply(string name, ReadOnlySpan<float> x, Span<float> y)
    {
        switch (name)
        {
            case "relu": Relu(x, y); break;
            case "silu" or "swish": Silu(x, y); break;
            case "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_tanh": GeluTanh(x, y); break;
            case "gelu" or "gelu_exact": GeluErf(x, y); break;
            default: throw new NotSupportedException($"activation function '{name}' is not supported (relu, silu, gelu, gelu_new, gelu_pytorch_tanh)");
        }
    }

    delegate void SpanOp(ReadOnlySpan<float> x, Span<float> y);

    /// <summary>
    /// Runs <paramref name="op"/> chunk by chunk (in parallel for long buffers). Each chunk is computed
    /// into a scratch buffer and then copied, so the multi-pass ops may be given y aliasing x.
    /// </summary>
    static unsafe void Chunked(ReadOnlySpan<float> x, Span<float> y, SpanOp op)
    {
        if (x.Length <= Chunk * 2) { ViaScratch(x, y, op); return; }
        int chunks = (x.Length + Chunk - 1) / Chunk;
        fixed (float* px = x) fixed (float* py = y)
        {
            float* ppx = px, ppy = py;
            int n = x.Length;
            Parallel.For(0, chunks, c =>
            {
                int start = c * Chunk, len = Math.Min(Chunk, n - start);
                ViaScratch(new ReadOnlySpan<float>(ppx + start, len), new Span<float>(ppy + start, len), op);
            });
        }
    }

    static void ViaScratch(ReadOnlySpan<float> x, Span<float> y, SpanOp op)
    {
        if (!x.Overlaps(y)) { op(x, y); return; }
        var scratch = System.Buffers.ArrayPool<float>.Shared.Rent(x.Length);
        try
        {
            var s = scratch.AsSpan(0, x.Length);
            op(x, s);
            s.CopyTo(y);
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(scratch);
        }
    }

    static void CheckSameLength(ReadOnlySpan<float> x, Span<float> y)
    {
        if (x.Length != y.Length) throw new ArgumentException($"input has {x.Length} elements but output has {y.Length}");
    }
}
