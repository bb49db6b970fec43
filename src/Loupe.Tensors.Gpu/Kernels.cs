using ILGPU;
using ILGPU.Algorithms;

namespace Loupe.Tensors.Gpu;

/// <summary>Scalars of a GEMM launch (row-major, offsets already applied to the views).</summary>
struct GemmArgs
{
    public int TransA, TransB, M, N, K, Lda, Ldb, Ldc;
    public long StrideA, StrideB, StrideC;
    public float Alpha, Beta;
    /// <summary>For <see cref="Kernels.Gemm16"/>: 1 when A and B are bf16, 2 when fp16.</summary>
    public int Half;
}

/// <summary>Scalars of a norm launch.</summary>
struct NormArgs
{
    public int Center, D, HasWeight, HasBias, GivenScale;
    public float WeightOffset, Eps;
}

/// <summary>Scalars of an attention-mask launch over scores <c>[batch, heads, queryLen, keyLen]</c>.</summary>
struct MaskArgs
{
    public int Heads, QueryLen, KeyLen, QueryOffset, SlidingWindow, HasKeyValid;
    public float SoftCap;
}

struct AdamArgs
{
    public float Lr, Beta1, Beta2, Eps, Correction1, Correction2;
}

/// <summary>
/// The device kernels (ILGPU C#): the same methods run on CUDA and on ILGPU's CPU accelerator.
/// Row kernels use one group per row and a shared-memory tree reduction; group sizes are powers of two
/// up to <see cref="MaxGroup"/>.
/// </summary>
static class Kernels
{
    public const int MaxGroup = 256;

    // ---- numbers -----------------------------------------------------------------------------

    public static bool IsFinite(float v) => (Interop.FloatAsInt(v) & 0x7F800000u) != 0x7F800000u;
    public static bool IsNaN(float v) => (Interop.FloatAsInt(v) & 0x7FFFFFFFu) > 0x7F800000u;

    public static float Bf16ToFloat(ushort bits) => Interop.IntAsFloat((uint)bits << 16);

    /// <summary>fp32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN.</summary>
    public static ushort FloatToBf16(float f)
    {
        uint x = Interop.FloatAsInt(f);
        if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (ushort)((x >> 16) | 0x40u);
        return (ushort)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
    }

    public static float F16ToFloat(ushort h)
    {
        uint sign = ((uint)h & 0x8000u) << 16;
        int exp = (h >> 10) & 0x1F;
        uint mant = (uint)h & 0x3FFu;
        if (exp == 0)
        {
            float v = mant * (1f / 16777216f);
            return sign != 0 ? -v : v;
        }
        if (exp == 31) return Interop.IntAsFloat(sign | 0x7F800000u | (mant << 13));
        return Interop.IntAsFloat(sign | ((uint)(exp - 15 + 127) << 23) | (mant << 13));
    }

    /// <summary>fp32 → fp16 bits, round to nearest even, overflow to ±∞, subnormals kept.</summary>
    public static ushort FloatToF16(float f)
    {
        uint x = Interop.FloatAsInt(f);
        uint sign = (x >> 16) & 0x8000u;
        int exp = (int)((x >> 23) & 0xFFu);
        uint mant = x & 0x7FFFFFu;
        if (exp == 255) return (ushort)(sign | 0x7C00u | (mant != 0 ? 0x200u : 0u));
        int e = exp - 127 + 15;
        if (e >= 31) return (ushort)(sign | 0x7C00u);
        if (e <= 0)
        {
            if (e < -10) return (ushort)sign;
            mant |= 0x800000u;
            int shift = 14 - e;
            uint half = mant >> shift;
            uint rem = mant & ((1u << shift) - 1u);
            uint mid = 1u << (shift - 1);
            if (rem > mid || (rem == mid && (half & 1u) != 0)) half++;
            return (ushort)(sign | half);
        }
        uint h = ((uint)e << 10) | (mant >> 13);
        uint r = mant & 0x1FFFu;
        if (r > 0x1000u || (r == 0x1000u && (h & 1u) != 0)) h++;
        return (ushort)(sign | h);
    }

    static float FromHalf(ushort bits, int kind) => kind == 1 ? Bf16ToFloat(bits) : F16ToFloat(bits);

    /// <summary>erfc(z), z ≥ 0, from the Chebyshev fit the CPU's exact GELU uses (Numerical Recipes' erfcc).</summary>
    static double Erfc(double z)
    {
        double t = 1.0 / (1.0 + 0.5 * z);
        double acc = 0.17087277;
        acc = acc * t - 0.82215223;
        acc = acc * t + 1.48851587;
        acc = acc * t - 1.13520398;
        acc = acc * t + 0.27886807;
        acc = acc * t - 0.18628806;
        acc = acc * t + 0.09678418;
        acc = acc * t + 0.37409196;
        acc = acc * t + 1.00002368;
        acc = acc * t - 1.26551223;
        return t * XMath.Exp(acc - z * z);
    }

    // ---- memory ------------------------------------------------------------------------------

    public static void Fill(Index1D i, ArrayView<float> y, float value) => y[i] = value;

    public static void CopyRows(Index1D i, ArrayView<float> src, ArrayView<float> dst, int srcStride, int dstStride, int cols, int accumulate)
    {
        int r = i / cols, c = i % cols;
        long s = (long)r * srcStride + c, d = (long)r * dstStride + c;
        dst[d] = accumulate != 0 ? dst[d] + src[s] : src[s];
    }

    public static void ToBf16(Index1D i, ArrayView<float> src, ArrayView<ushort> dst) => dst[i] = FloatToBf16(src[i]);
    public static void ToF16(Index1D i, ArrayView<float> src, ArrayView<ushort> dst) => dst[i] = FloatToF16(src[i]);
    /// <summary>x ≈ hi + lo in 16 bits each: hi = round(x), lo = round(x − hi) (the residual is exact in fp32).</summary>
    public static void SplitToHalf(Index1D i, ArrayView<float> x, ArrayView<ushort> hi, ArrayView<ushort> lo, int kind)
    {
        float v = x[i];
        ushort h = kind == 1 ? FloatToBf16(v) : FloatToF16(v);
        hi[i] = h;
        float r = v - FromHalf(h, kind);
        if (!IsFinite(r)) r = 0f; // beyond fp16's range hi is ±∞: a lo of ∓∞ would turn the product into NaN
        lo[i] = kind == 1 ? FloatToBf16(r) : FloatToF16(r);
    }

    public static void HalfToFloat(Index1D i, ArrayView<ushort> src, ArrayView<float> dst, int kind) => dst[i] = FromHalf(src[i], kind);

    // ---- fp16 activations: each row of op(A) enters a product times a power of two that fp16's range holds -----------

    /// <summary>
    /// One group per row i of op(A) (A stored with leading dimension lda, transposed or not): <c>scale[i] = 2^e</c> with
    /// <c>max_p |op(A)[i, p]|·2^e</c> in [2^14, 2^15) (|e| ≤ 60), and <c>inverse[i] = 2^−e</c>; both 1 for a row that is all zero or
    /// holds a value that is not finite (which then reaches C as it would unscaled).
    /// </summary>
    public static void Fp16RowScales(ArrayView<float> a, ArrayView<float> scale, ArrayView<float> inverse, int k, int lda, int transA)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        int i = Grid.IdxX;
        float largest = 0f;
        for (int p = Group.IdxX; p < k; p += Group.DimX)
        {
            float v = XMath.Abs(transA != 0 ? a[(long)p * lda + i] : a[(long)i * lda + p]);
            largest = IsFinite(v) ? XMath.Max(largest, v) : float.PositiveInfinity;
        }
        largest = GroupMax(largest, shared);
        if (Group.IdxX != 0) return;
        int e = 0;
        if (IsFinite(largest) && largest > 0f)
        {
            int exponent = (int)((Interop.FloatAsInt(largest) >> 23) & 0xFFu) - 127; // ⌊log2⌋ of a normal float; −127 for a subnormal one
            // At most 2^±60: with beta ≠ 0, C's row is multiplied by the scale before the product, and 2^60 leaves it
            // fp32's range up to |C| ~ 3e20 (a row whose largest entry is below 2^-46 is scaled only that far).
            e = XMath.Min(60, XMath.Max(-60, 14 - exponent));
        }
        scale[i] = PowerOfTwo(e);
        inverse[i] = PowerOfTwo(-e);
    }

    static float PowerOfTwo(int e) => Interop.IntAsFloat((uint)(e + 127) << 23);

    /// <summary>
    /// x times its row's scale (<see cref="Fp16RowScales"/>) in fp16: split into hi + lo as <see cref="SplitToHalf"/> does
    /// (split ≠ 0), or rounded (split = 0; lo is not written). Element e of A lies in row e % lda of op(A) when A is
    /// transposed, e / lda when not; an element between rows (i ≥ m) is read by no product and keeps scale 1.
    /// </summary>
    public static void ScaledToF16(Index1D e, ArrayView<float> x, ArrayView<ushort> hi, ArrayView<ushort> lo, ArrayView<float> scale,
        int lda, int m, int transA, int split)
    {
        int row = transA != 0 ? e % lda : e / lda;
        float v = x[e] * (row < m ? scale[row] : 1f);
        ushort h = FloatToF16(v);
        hi[e] = h;
        if (split == 0) return;
        float r = v - F16ToFloat(h);
        lo[e] = FloatToF16(IsFinite(r) ? r : 0f);
    }

    /// <summary><c>C[i, j] *= scale[i]</c> over the m × n entries of C (leading dimension ldc).</summary>
    public static void ScaleGemmRows(Index1D idx, ArrayView<float> c, ArrayView<float> scale, int n, int ldc)
    {
        int i = idx / n, j = idx % n;
        c[(long)i * ldc + j] *= scale[i];
    }

    // ---- element-wise ------------------------------------------------------------------------

    /// <summary>op 0: a + b; 1: a ⊙ b; 2: (a − b) ⊙ g with 0 where a − b is not finite.</summary>
    public static void Binary(Index1D i, ArrayView<float> a, ArrayView<float> b, ArrayView<float> g, ArrayView<float> y, int op)
    {
        float av = a[i], bv = b[i];
        if (op == 0) y[i] = av + bv;
        else if (op == 1) y[i] = av * bv;
        else
        {
            float diff = av - bv;
            y[i] = IsFinite(diff) ? diff * g[i] : 0f;
        }
    }

    public static void Scale(Index1D i, ArrayView<float> a, ArrayView<float> y, float s) => y[i] = a[i] * s;

    public static void SoftCap(Index1D i, ArrayView<float> a, ArrayView<float> y, float cap) => y[i] = XMath.Tanh(a[i] * (1f / cap)) * cap;

    public static void SoftCapBackward(Index1D i, ArrayView<float> capped, ArrayView<float> dy, ArrayView<float> dx, float cap)
    {
        float v = capped[i];
        dx[i] = IsFinite(v) ? dy[i] * (1 - (v / cap) * (v / cap)) : 0f;
    }

    public static void AddRowVector(Index1D i, ArrayView<float> y, ArrayView<float> v, int n) => y[i] += v[i % n];

    public static void SumMiddleAxis(Index1D i, ArrayView<float> x, ArrayView<float> y, int middle, int inner, int accumulate)
    {
        int o = i / inner, c = i % inner;
        float sum = accumulate != 0 ? y[i] : 0f;
        for (int m = 0; m < middle; m++) sum += x[((long)o * middle + m) * inner + c];
        y[i] = sum;
    }

    /// <summary>kind 0 relu, 1 silu, 2 gelu (tanh), 3 gelu (exact erf).</summary>
    public static void Activation(Index1D i, ArrayView<float> x, ArrayView<float> y, int kind)
    {
        float v = x[i];
        if (kind == 0) y[i] = v > 0 ? v : (IsNaN(v) ? v : 0f);
        else if (kind == 1) y[i] = v / (1f + XMath.Exp(-v));
        else if (kind == 2)
        {
            float u = (v * v * 0.044715f + 1f) * v * 0.7978845608028654f;
            y[i] = (XMath.Tanh(u) + 1f) * v * 0.5f;
        }
        else
        {
            double d = v;
            double half = 0.5 * Erfc(XMath.Abs(d) * 0.7071067811865476);
            y[i] = (float)(d >= 0 ? d * (1 - half) : d * half);
        }
    }

    public static void ActivationBackward(Index1D i, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dx, int kind)
    {
        float v = x[i], g = dy[i];
        if (kind == 0) dx[i] = v > 0 ? g : 0f;
        else if (kind == 1)
        {
            float s = 1f / (1f + XMath.Exp(-v));
            dx[i] = ((1f - s) * v + 1f) * s * g;
        }
        else if (kind == 2)
        {
            float x2 = v * v;
            float t = XMath.Tanh((x2 * 0.044715f + 1f) * v * 0.7978845608028654f);
            float slope = (x2 * (3 * 0.044715f) + 1f) * (0.7978845608028654f * 0.5f) * v;
            dx[i] = (0.5f * (1 + t) + slope * (1 - t * t)) * g;
        }
        else
        {
            double d = v;
            double phi = XMath.Exp(-0.5 * d * d) * 0.3989422804014327;
            double half = 0.5 * Erfc(XMath.Abs(d) * 0.7071067811865476);
            dx[i] = (float)(g * ((d >= 0 ? 1 - half : half) + d * phi));
        }
    }

    public static void Adam(Index1D i, ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v, AdamArgs a)
    {
        float gi = g[i];
        float mi = a.Beta1 * m[i] + (1 - a.Beta1) * gi;
        float vi = a.Beta2 * v[i] + (1 - a.Beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= a.Lr * (mi / a.Correction1) / (XMath.Sqrt(vi / a.Correction2) + a.Eps);
    }

    // ---- products ----------------------------------------------------------------------------

    /// <summary>One element of C per thread, over <c>[batch, m, n]</c>; fp32 B (the emulated device's GEMM).</summary>
    public static void Gemm(Index1D i, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, GemmArgs g)
    {
        int mn = g.M * g.N;
        int batch = i / mn, rest = i % mn, row = rest / g.N, col = rest % g.N;
        long ao = batch * g.StrideA, bo = batch * g.StrideB, co = batch * g.StrideC + (long)row * g.Ldc + col;
        float sum = 0;
        for (int p = 0; p < g.K; p++)
        {
            float av = g.TransA != 0 ? a[ao + (long)p * g.Lda + row] : a[ao + (long)row * g.Lda + p];
            float bv = g.TransB != 0 ? b[bo + (long)col * g.Ldb + p] : b[bo + (long)p * g.Ldb + col];
            sum += av * bv;
        }
        c[co] = g.Beta == 0f ? g.Alpha * sum : g.Alpha * sum + g.Beta * c[co];
    }

    /// <summary>As <see cref="Gemm"/> with a 16-bit B; A is rounded to the same 16-bit type, as cuBLAS's mixed GEMM sees it.</summary>
    /// <summary>
    /// What cuBLAS's mixed GEMM computes, for the emulated device: <c>C = alpha·op(A)·op(B) + beta·C</c> with A and B in 16
    /// bits (<c>g.Half</c>: 1 bf16, 2 fp16) and the sum in fp32; beta = 0 ignores C. The backend converts the activation
    /// operand with the same kernels before either, so only the product itself differs between the two devices.
    /// </summary>
    public static void Gemm16(Index1D i, ArrayView<ushort> a, ArrayView<ushort> b, ArrayView<float> c, GemmArgs g)
    {
        int mn = g.M * g.N;
        int batch = i / mn, rest = i % mn, row = rest / g.N, col = rest % g.N;
        long ao = batch * g.StrideA, bo = batch * g.StrideB, co = batch * g.StrideC + (long)row * g.Ldc + col;
        float sum = 0;
        for (int p = 0; p < g.K; p++)
        {
            ushort av = g.TransA != 0 ? a[ao + (long)p * g.Lda + row] : a[ao + (long)row * g.Lda + p];
            ushort bv = g.TransB != 0 ? b[bo + (long)col * g.Ldb + p] : b[bo + (long)p * g.Ldb + col];
            sum += FromHalf(av, g.Half) * FromHalf(bv, g.Half);
        }
        c[co] = g.Beta == 0f ? g.Alpha * sum : g.Alpha * sum + g.Beta * c[co];
    }

    // ---- group reductions (every thread of the group must call them) ------------------------------

    static float GroupSum(float v, ArrayView<float> shared)
    {
        int t = Group.IdxX;
        shared[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) shared[t] += shared[t + s];
            Group.Barrier();
        }
        float r = shared[0];
        Group.Barrier();
        return r;
    }

    static double GroupSumDouble(double v, ArrayView<double> shared)
    {
        int t = Group.IdxX;
        shared[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) shared[t] += shared[t + s];
            Group.Barrier();
        }
        double r = shared[0];
        Group.Barrier();
        return r;
    }

    static float GroupMax(float v, ArrayView<float> shared)
    {
        int t = Group.IdxX;
        shared[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) shared[t] = XMath.Max(shared[t], shared[t + s]);
            Group.Barrier();
        }
        float r = shared[0];
        Group.Barrier();
        return r;
    }

    /// <summary>Top-k order: non-NaN before NaN, larger first, then the lower index.</summary>
    static bool Before(float a, int ia, float b, int ib)
    {
        bool an = IsNaN(a), bn = IsNaN(b);
        if (an != bn) return bn;
        if (!an && a != b) return a > b;
        return ia < ib;
    }

    /// <summary>Arg-max order (as TensorPrimitives.IndexOfMax): the first NaN wins, else the largest, first on ties.</summary>
    static bool Better(float a, int ia, float b, int ib)
    {
        if (ib < 0) return ia >= 0;
        if (ia < 0) return false;
        bool an = IsNaN(a), bn = IsNaN(b);
        if (an != bn) return an;
        if (!an && a != b) return a > b;
        return ia < ib;
    }

    // ---- row kernels (one group per row) --------------------------------------------------------

    public static void Norm(ArrayView<float> x, ArrayView<float> w, ArrayView<float> b, ArrayView<float> y, ArrayView<float> scale, NormArgs a)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX, d = a.D;
        long o = (long)r * d;
        float mean = 0;
        if (a.Center != 0)
        {
            float s = 0;
            for (int i = t; i < d; i += step) s += x[o + i];
            mean = GroupSum(s, shared) / d;
        }
        float sigma;
        if (a.GivenScale != 0) sigma = scale[r];
        else
        {
            float sq = 0;
            for (int i = t; i < d; i += step)
            {
                float c = x[o + i] - mean;
                sq += c * c;
            }
            sigma = XMath.Sqrt(GroupSum(sq, shared) / d + a.Eps);
            if (t == 0) scale[r] = sigma;
        }
        float inv = 1f / sigma;
        for (int i = t; i < d; i += step)
        {
            float wv = (a.HasWeight != 0 ? w[i] : 1f) + a.WeightOffset;
            float bv = a.HasBias != 0 ? b[i] : 0f;
            y[o + i] = (x[o + i] - mean) * inv * wv + bv;
        }
    }

    public static void NormBackwardScale(ArrayView<float> x, ArrayView<float> scale, ArrayView<float> dy, ArrayView<float> w, ArrayView<float> dScale, NormArgs a)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        var sharedD = SharedMemory.Allocate<double>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX, d = a.D;
        long o = (long)r * d;
        float mean = 0;
        if (a.Center != 0)
        {
            float s = 0;
            for (int i = t; i < d; i += step) s += x[o + i];
            mean = GroupSum(s, shared) / d;
        }
        float sigma = scale[r];
        double dot = 0;
        for (int i = t; i < d; i += step)
        {
            float wv = (a.HasWeight != 0 ? w[i] : 1f) + a.WeightOffset;
            dot += (double)(dy[o + i] * wv) * ((x[o + i] - mean) / sigma);
        }
        dot = GroupSumDouble(dot, sharedD);
        if (t == 0) dScale[r] = (float)(-dot / sigma);
    }

    public static void NormBackwardInput(ArrayView<float> x, ArrayView<float> scale, ArrayView<float> dy, ArrayView<float> dScale, ArrayView<float> w, ArrayView<float> dx, NormArgs a)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        var sharedD = SharedMemory.Allocate<double>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX, d = a.D;
        long o = (long)r * d;
        float mean = 0;
        if (a.Center != 0)
        {
            float s = 0;
            for (int i = t; i < d; i += step) s += x[o + i];
            mean = GroupSum(s, shared) / d;
        }
        float sigma = scale[r], ds = dScale[r];
        double dcSum = 0;
        for (int i = t; i < d; i += step)
        {
            float wv = (a.HasWeight != 0 ? w[i] : 1f) + a.WeightOffset;
            float c = x[o + i] - mean;
            float dc = dy[o + i] * wv / sigma + ds * (c / sigma) / d;
            dx[o + i] = dc;
            dcSum += dc;
        }
        if (a.Center != 0)
        {
            // Each thread subtracts from the elements it wrote itself, so no barrier is needed before.
            float m = (float)(GroupSumDouble(dcSum, sharedD) / d);
            for (int i = t; i < d; i += step) dx[o + i] -= m;
        }
    }

    public static void Softmax(ArrayView<float> x, ArrayView<float> y, int n)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * n;
        float max = float.NegativeInfinity;
        for (int j = t; j < n; j += step) max = XMath.Max(max, x[o + j]);
        max = GroupMax(max, shared);
        if (max == float.NegativeInfinity)
        {
            for (int j = t; j < n; j += step) y[o + j] = 0f;
            return;
        }
        float sum = 0;
        for (int j = t; j < n; j += step)
        {
            float e = XMath.Exp(x[o + j] - max);
            y[o + j] = e;
            sum += e;
        }
        float inv = 1f / GroupSum(sum, shared);
        for (int j = t; j < n; j += step) y[o + j] *= inv;
    }

    public static void SoftmaxBackward(ArrayView<float> p, ArrayView<float> dp, ArrayView<float> dx, int n)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * n;
        float dot = 0;
        for (int j = t; j < n; j += step) dot += p[o + j] * dp[o + j];
        dot = GroupSum(dot, shared);
        for (int j = t; j < n; j += step) dx[o + j] = p[o + j] * (dp[o + j] - dot);
    }

    /// <summary>log Σ exp over one row, max-subtracted, summed in double (every thread gets it).</summary>
    static float LogSumExp(ArrayView<float> x, long o, int n, ArrayView<float> shared, ArrayView<double> sharedD)
    {
        int t = Group.IdxX, step = Group.DimX;
        float max = float.NegativeInfinity;
        for (int j = t; j < n; j += step) max = XMath.Max(max, x[o + j]);
        max = GroupMax(max, shared);
        double sum = 0;
        for (int j = t; j < n; j += step) sum += XMath.Exp((double)x[o + j] - max);
        sum = GroupSumDouble(sum, sharedD);
        return IsFinite(max) ? (float)(max + XMath.Log(sum)) : max;
    }

    public static void LogSoftmax(ArrayView<float> x, ArrayView<float> y, int n)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        var sharedD = SharedMemory.Allocate<double>(MaxGroup);
        long o = (long)Grid.IdxX * n;
        float lse = LogSumExp(x, o, n, shared, sharedD);
        for (int j = Group.IdxX; j < n; j += Group.DimX) y[o + j] = x[o + j] - lse;
    }

    public static void CrossEntropy(ArrayView<float> x, ArrayView<int> targets, ArrayView<float> loss, ArrayView<float> dx, int n, int withGradient, float weight)
    {
        var shared = SharedMemory.Allocate<float>(MaxGroup);
        var sharedD = SharedMemory.Allocate<double>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * n;
        float lse = LogSumExp(x, o, n, shared, sharedD);
        int target = targets[r];
        if (t == 0) loss[r] = target < 0 ? 0f : lse - x[o + target];
        if (withGradient == 0) return;
        for (int j = t; j < n; j += step)
        {
            float g = target < 0 ? 0f : XMath.Exp(x[o + j] - lse) - (j == target ? 1f : 0f);
            dx[o + j] = weight != 1f ? g * weight : g;
        }
    }

    public static void ArgMax(ArrayView<float> x, ArrayView<int> result, int n)
    {
        var values = SharedMemory.Allocate<float>(MaxGroup);
        var indices = SharedMemory.Allocate<int>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * n;
        float best = 0;
        int at = -1;
        for (int j = t; j < n; j += step)
            if (Better(x[o + j], j, best, at)) { best = x[o + j]; at = j; }
        values[t] = best;
        indices[t] = at;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s && Better(values[t + s], indices[t + s], values[t], indices[t]))
            {
                values[t] = values[t + s];
                indices[t] = indices[t + s];
            }
            Group.Barrier();
        }
        if (t == 0) result[r] = indices[0];
    }

    /// <summary>Top-k by k selection passes: each pass picks the first element (in top-k order) after the previous pick.</summary>
    public static void TopK(ArrayView<float> x, ArrayView<float> values, ArrayView<float> indices, int n, int k)
    {
        var sv = SharedMemory.Allocate<float>(MaxGroup);
        var si = SharedMemory.Allocate<int>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * n;
        float prev = 0;
        int prevAt = -1;
        for (int pick = 0; pick < k; pick++)
        {
            float best = 0;
            int at = -1;
            for (int j = t; j < n; j += step)
            {
                float v = x[o + j];
                if (prevAt >= 0 && !Before(prev, prevAt, v, j)) continue;
                if (at < 0 || Before(v, j, best, at)) { best = v; at = j; }
            }
            sv[t] = best;
            si[t] = at;
            Group.Barrier();
            for (int s = Group.DimX / 2; s > 0; s >>= 1)
            {
                if (t < s && si[t + s] >= 0 && (si[t] < 0 || Before(sv[t + s], si[t + s], sv[t], si[t])))
                {
                    sv[t] = sv[t + s];
                    si[t] = si[t + s];
                }
                Group.Barrier();
            }
            prev = sv[0];
            prevAt = si[0];
            if (t == 0)
            {
                values[(long)r * k + pick] = prev;
                indices[(long)r * k + pick] = prevAt;
            }
            Group.Barrier();
        }
    }

    /// <summary>Top-k for k at most this runs as a radix select with small shared buffers (<see cref="TopKRadix"/>).</summary>
    public const int MaxRadixK = 256;

    /// <summary>
    /// Top-k for k at most this (and above <see cref="MaxRadixK"/>) runs as the same radix select with 32 KiB of shared
    /// picks (<see cref="TopKRadixLarge"/>): aux-k's k is d_in/2 (1,024 for d_in 2,048, 4,096 for d_in 8,192), where
    /// k selection passes over a 65,536-wide row cost ~0.65 s a step on an H100. Larger k runs by selection passes.
    /// </summary>
    public const int MaxRadixKLarge = 4096;

    /// <summary>One kept entry of a top-k row into its zeroed dense row; a column outside <c>[0, n)</c> is skipped.</summary>
    public static void ScatterRows(Index1D i, ArrayView<float> values, ArrayView<float> indices, ArrayView<float> dense, int k, int n)
    {
        float c = indices[i];
        if (!(c >= 0f && c < n)) return;
        int row = i / k;
        dense[(long)row * n + (int)c] = values[i];
    }

    /// <summary>A key whose unsigned order is the top-k order's reverse: larger value, larger key; −0 = +0; NaN smallest.</summary>
    static uint SortKey(float v)
    {
        if (IsNaN(v)) return 0u;
        if (v == 0f) v = 0f;
        uint b = Interop.FloatAsInt(v);
        return (b & 0x80000000u) != 0 ? ~b : b | 0x80000000u;
    }

    /// <summary>
    /// Top-k (k ≤ <see cref="MaxRadixK"/>) in a handful of passes whatever k is: four 8-bit histogram passes find the
    /// k-th largest key, one pass gathers the keys above it and, in index order, the first ties at it, and the k
    /// picks are ranked in shared memory.
    /// </summary>
    public static void TopKRadix(ArrayView<float> x, ArrayView<float> values, ArrayView<float> indices, int n, int k) =>
        RadixSelectRow(x, values, indices, n, k, SharedMemory.Allocate<float>(MaxRadixK), SharedMemory.Allocate<int>(MaxRadixK));

    /// <summary><see cref="TopKRadix"/> for k up to <see cref="MaxRadixKLarge"/>.</summary>
    public static void TopKRadixLarge(ArrayView<float> x, ArrayView<float> values, ArrayView<float> indices, int n, int k) =>
        RadixSelectRow(x, values, indices, n, k, SharedMemory.Allocate<float>(MaxRadixKLarge), SharedMemory.Allocate<int>(MaxRadixKLarge));

    // One group per row; pickValue/pickIndex are shared buffers of at least k entries.
    static void RadixSelectRow(ArrayView<float> x, ArrayView<float> values, ArrayView<float> indices, int n, int k,
        ArrayView<float> pickValue, ArrayView<int> pickIndex)
    {
        var hist = SharedMemory.Allocate<int>(256);
        var state = SharedMemory.Allocate<int>(4);
        var scan = SharedMemory.Allocate<int>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * n;
        uint prefix = 0, mask = 0;
        int remaining = k;
        for (int shift = 24; shift >= 0; shift -= 8)
        {
            for (int b = t; b < 256; b += step) hist[b] = 0;
            Group.Barrier();
            for (int j = t; j < n; j += step)
            {
                uint key = SortKey(x[o + j]);
                if ((key & mask) == prefix) Atomic.Add(ref hist[(int)((key >> shift) & 0xFFu)], 1);
            }
            Group.Barrier();
            if (t == 0)
            {
                int above = 0, bin = 255;
                for (; bin > 0; bin--)
                {
                    if (above + hist[bin] >= remaining) break;
                    above += hist[bin];
                }
                state[0] = (int)(prefix | ((uint)bin << shift));
                state[1] = remaining - above;
            }
            Group.Barrier();
            prefix = (uint)state[0];
            remaining = state[1];
            mask |= 0xFFu << shift;
            Group.Barrier();
        }
        // prefix is now the k-th largest key: k − remaining keys lie above it, and its first `remaining` ties complete the k.
        if (t == 0) state[2] = 0;
        Group.Barrier();
        for (int j = t; j < n; j += step)
        {
            float v = x[o + j];
            if (SortKey(v) > prefix)
            {
                int slot = Atomic.Add(ref state[2], 1);
                pickValue[slot] = v;
                pickIndex[slot] = j;
            }
        }
        int firstTie = k - remaining, taken = 0;
        for (int c = 0; c < n && taken < remaining; c += step)
        {
            int j = c + t;
            int flag = j < n && SortKey(x[o + j]) == prefix ? 1 : 0;
            scan[t] = flag;
            Group.Barrier();
            for (int offset = 1; offset < step; offset <<= 1)
            {
                int add = t >= offset ? scan[t - offset] : 0;
                Group.Barrier();
                scan[t] += add;
                Group.Barrier();
            }
            int before = taken + scan[t] - flag, total = scan[step - 1];
            if (flag == 1 && before < remaining)
            {
                pickValue[firstTie + before] = x[o + j];
                pickIndex[firstTie + before] = j;
            }
            Group.Barrier();
            taken += total;
        }
        Group.Barrier();
        for (int i = t; i < k; i += step)
        {
            float v = pickValue[i];
            int at = pickIndex[i], rank = 0;
            for (int other = 0; other < k; other++)
                if (Before(pickValue[other], pickIndex[other], v, at)) rank++;
            values[(long)r * k + rank] = v;
            indices[(long)r * k + rank] = at;
        }
    }

    // ---- whole-tensor reductions: one partial per group, finished on the host ---------------------

    public static void SumPartials(ArrayView<float> x, ArrayView<double> partials, int n)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        double s = 0;
        for (int i = Grid.IdxX * Group.DimX + Group.IdxX; i < n; i += Grid.DimX * Group.DimX) s += x[i];
        s = GroupSumDouble(s, shared);
        if (Group.IdxX == 0) partials[Grid.IdxX] = s;
    }

    public static void NonFinitePartials(ArrayView<float> x, ArrayView<int> partials, int n, int allowNegativeInfinity)
    {
        var shared = SharedMemory.Allocate<int>(MaxGroup);
        int found = int.MaxValue;
        for (int i = Grid.IdxX * Group.DimX + Group.IdxX; i < n; i += Grid.DimX * Group.DimX)
        {
            float v = x[i];
            if (!IsFinite(v) && !(allowNegativeInfinity != 0 && v == float.NegativeInfinity)) { found = i; break; }
        }
        int t = Group.IdxX;
        shared[t] = found;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) shared[t] = XMath.Min(shared[t], shared[t + s]);
            Group.Barrier();
        }
        if (t == 0) partials[Grid.IdxX] = shared[0];
    }

    // ---- positions, attention, embeddings -----------------------------------------------------

    /// <summary>Over <c>[rows, heads, half]</c>: rotate-half by the angle of the row's position (direction −1: the inverse).</summary>
    public static void Rotary(Index1D i, ArrayView<float> x, ArrayView<float> cos, ArrayView<float> sin, ArrayView<int> positions, int heads, int headDim, int half, float direction)
    {
        int k = i % half, rh = i / half, r = rh / heads;
        long o = (long)rh * headDim;
        long at = (long)positions[r] * half + k;
        float c = cos[at], s = direction * sin[at];
        float a = x[o + k], b = x[o + k + half];
        x[o + k] = a * c - b * s;
        x[o + k + half] = b * c + a * s;
    }

    /// <summary>Soft-cap then mask scores <c>[batch, heads, queryLen, keyLen]</c> in place.</summary>
    public static void MaskScores(Index1D i, ArrayView<float> scores, ArrayView<int> keyValid, MaskArgs m)
    {
        int j = i % m.KeyLen, q = i / m.KeyLen % m.QueryLen, b = i / (m.KeyLen * m.QueryLen * m.Heads);
        float v = scores[i];
        if (m.SoftCap > 0) v = m.SoftCap * XMath.Tanh(v / m.SoftCap);
        int qpos = m.QueryOffset + q;
        bool hidden = j > qpos || (m.SlidingWindow > 0 && j < qpos - m.SlidingWindow + 1)
            || (m.HasKeyValid != 0 && keyValid[(long)b * m.KeyLen + j] == 0);
        scores[i] = hidden ? float.NegativeInfinity : v;
    }

    public static void Embedding(Index1D i, ArrayView<float> table, ArrayView<int> ids, ArrayView<float> y, int d, float scale)
    {
        int row = i / d, c = i % d;
        y[i] = table[(long)ids[row] * d + c] * scale;
    }

    public static void EmbeddingHalf(Index1D i, ArrayView<ushort> table, ArrayView<int> ids, ArrayView<float> y, int d, float scale, int kind)
    {
        int row = i / d, c = i % d;
        y[i] = FromHalf(table[(long)ids[row] * d + c], kind) * scale;
    }

    public static void GatherColumns(Index1D i, ArrayView<float> x, ArrayView<int> columns, ArrayView<float> y, int n, int k)
    {
        int r = i / k, j = i % k;
        y[i] = x[(long)r * n + columns[j]];
    }

    public static void EmbeddingBackward(Index1D i, ArrayView<float> dy, ArrayView<int> ids, ArrayView<float> dTable, int d, float scale)
    {
        int row = i / d, c = i % d;
        Atomic.Add(ref dTable[(long)ids[row] * d + c], dy[i] * scale);
    }

    // ---- dictionary training -----------------------------------------------------------------

    /// <summary>One group per row: <c>y[r] (+)= Σ_c a[r, c]·b[r, c]</c>, summed in double.</summary>
    public static void RowDots(ArrayView<float> a, ArrayView<float> b, ArrayView<float> y, int cols, int accumulate)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * cols;
        double sum = 0;
        for (int c = t; c < cols; c += step) sum += (double)a[o + c] * b[o + c];
        sum = GroupSumDouble(sum, shared);
        if (t == 0) y[r] = accumulate != 0 ? (float)(y[r] + sum) : (float)sum;
    }

    /// <summary>
    /// For the columns c = t, t + step, … this thread owns: <c>y[o + c] = start + Σ_{q &lt; count} scale[q]·src[row[q], c]</c>
    /// in q order, a negative row skipped; start is 0 (<paramref name="from"/> 0), <c>init[c]</c> (1) or <c>y[o + c]</c> (2).
    /// </summary>
    static void AddScaledRows(ArrayView<int> row, ArrayView<float> scale, int count, ArrayView<float> src, int d,
        ArrayView<float> y, long o, int from, ArrayView<float> init)
    {
        for (int c = Group.IdxX; c < d; c += Group.DimX)
        {
            float acc = from == 2 ? y[o + c] : from == 1 ? init[c] : 0f;
            for (int q = 0; q < count; q++)
            {
                int i = row[q];
                if (i >= 0) acc += scale[q] * src[(long)i * d + c];
            }
            y[o + c] = acc;
        }
    }

    /// <summary>
    /// One group per row: <c>y[r, :] = bias + Σ_j values[r, j]·w[indices[r, j], :]</c>. The row's entries go through
    /// shared memory <see cref="MaxGroup"/> at a time; each thread owns the columns t, t + step, … of y, so a w row is read
    /// coalesced and each y element is summed by one thread in j order (no atomics: the same bits every run).
    /// </summary>
    public static void SparseRowsTimes(ArrayView<float> values, ArrayView<float> indices, ArrayView<float> w, ArrayView<float> bias,
        ArrayView<float> y, int k, int n, int d, int hasBias)
    {
        var sv = SharedMemory.Allocate<float>(MaxGroup);
        var si = SharedMemory.Allocate<int>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * d, ok = (long)r * k;
        if (k == 0)
            for (int c = t; c < d; c += step) y[o + c] = hasBias != 0 ? bias[c] : 0f;
        for (int j0 = 0; j0 < k; j0 += MaxGroup)
        {
            int count = XMath.Min(MaxGroup, k - j0);
            for (int j = t; j < count; j += step)
            {
                float c = indices[ok + j0 + j];
                si[j] = c >= 0f && c < n ? (int)c : -1;
                sv[j] = values[ok + j0 + j];
            }
            Group.Barrier();
            AddScaledRows(si, sv, count, w, d, y, o, j0 > 0 ? 2 : hasBias, bias);
            Group.Barrier(); // the next chunk overwrites the shared entries
        }
    }

    /// <summary>
    /// One group per row: <c>y[r, j] = a[r, :]·w[indices[r, j], :]</c> (0 for an index outside <c>[0, n)</c>), each dot a
    /// strided partial per thread (coalesced reads of the w row) summed in double by the group's tree.
    /// </summary>
    public static void RowDotsAt(ArrayView<float> a, ArrayView<float> w, ArrayView<float> indices, ArrayView<float> y, int d, int n, int k)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        var si = SharedMemory.Allocate<int>(MaxGroup);
        int r = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)r * d, ok = (long)r * k;
        for (int j0 = 0; j0 < k; j0 += MaxGroup)
        {
            int count = XMath.Min(MaxGroup, k - j0);
            for (int j = t; j < count; j += step)
            {
                float c = indices[ok + j0 + j];
                si[j] = c >= 0f && c < n ? (int)c : -1;
            }
            Group.Barrier();
            for (int j = 0; j < count; j++)
            {
                int i = si[j];
                double sum = 0;
                if (i >= 0)
                    for (int c = t; c < d; c += step) sum += (double)a[o + c] * w[(long)i * d + c];
                sum = GroupSumDouble(sum, shared); // every thread takes part, whatever the index
                if (t == 0) y[ok + j0 + j] = (float)sum;
            }
            Group.Barrier();
        }
    }

    // ---- SparseRowsTransposeTimes: a deterministic transpose of the (r, j) entries into per-column lists, then one group
    // per column summing its list in (r, j) order. Rows are split into chunks; a group walks its chunk's rows in order
    // (a barrier between rows) so that no two threads touch a counter at once and no atomics are needed.

    static int Column(float c, int n) => c >= 0f && c < n ? (int)c : -1;

    // entries of row `ro` before entry j (from = 0, to = j) or after it (from = j + 1, to = k) with column i
    static int Repeats(ArrayView<float> indices, long ro, int from, int to, int i, int n)
    {
        int count = 0;
        for (int q = from; q < to; q++) if (Column(indices[ro + q], n) == i) count++;
        return count;
    }

    /// <summary>
    /// Pass 1, one group per chunk of rows: <c>cnt[g, i]</c> = the chunk's entries with column i. With
    /// <paramref name="distinct"/> (no column repeats within a row) each entry counts itself: no thread of the row shares its counter.
    /// </summary>
    public static void SparseTransposeCount(ArrayView<float> indices, ArrayView<int> cnt, int rows, int k, int n, int chunk, int distinct)
    {
        int g = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)g * n;
        for (int i = t; i < n; i += step) cnt[o + i] = 0;
        Group.Barrier();
        int end = XMath.Min(rows, (g + 1) * chunk);
        for (int r = g * chunk; r < end; r++)
        {
            long ro = (long)r * k;
            for (int j = t; j < k; j += step)
            {
                int i = Column(indices[ro + j], n);
                if (i < 0) continue;
                if (distinct != 0) cnt[o + i] += 1;
                // a column repeated within the row is counted once, by its first entry
                else if (Repeats(indices, ro, 0, j, i, n) == 0) cnt[o + i] += 1 + Repeats(indices, ro, j + 1, k, i, n);
            }
            Group.Barrier();
        }
    }

    /// <summary>Pass 2, per column i: <c>cnt[g, i]</c> becomes the entries of column i in the chunks before g; <c>total[i]</c> all of them.</summary>
    public static void SparseTransposeChunkOffsets(Index1D i, ArrayView<int> cnt, ArrayView<int> total, int n, int groups)
    {
        int run = 0;
        for (int g = 0; g < groups; g++)
        {
            long p = (long)g * n + i;
            int c = cnt[p];
            cnt[p] = run;
            run += c;
        }
        total[i] = run;
    }

    /// <summary>Pass 3, one group: <c>start[i] = Σ_{i' &lt; i} total[i']</c> for i ≤ n (an exclusive scan).</summary>
    public static void ExclusiveScan(ArrayView<int> total, ArrayView<int> start, int n)
    {
        var shared = SharedMemory.Allocate<int>(MaxGroup);
        int t = Group.IdxX, step = Group.DimX;
        int per = (n + step - 1) / step, lo = XMath.Min(n, t * per), hi = XMath.Min(n, lo + per);
        int sum = 0;
        for (int i = lo; i < hi; i++) sum += total[i];
        shared[t] = sum;
        Group.Barrier();
        if (t == 0)
        {
            int run = 0;
            for (int u = 0; u < step; u++)
            {
                int v = shared[u];
                shared[u] = run;
                run += v;
            }
            start[n] = run;
        }
        Group.Barrier();
        int at = shared[t];
        for (int i = lo; i < hi; i++)
        {
            start[i] = at;
            at += total[i];
        }
    }

    /// <summary>
    /// Pass 4, one group per chunk: each entry's id <c>r·k + j</c> into its column's list, in (r, j) order. With
    /// <paramref name="distinct"/> an entry is its column's only one in the row: it takes the next slot and moves the
    /// counter on itself (a slot past the column's list, which only a broken promise gives, is dropped, not written).
    /// </summary>
    public static void SparseTransposePlace(ArrayView<float> indices, ArrayView<int> cnt, ArrayView<int> start, ArrayView<int> order, int rows, int k, int n, int chunk, int distinct)
    {
        int g = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        long o = (long)g * n;
        int end = XMath.Min(rows, (g + 1) * chunk);
        for (int r = g * chunk; r < end; r++)
        {
            long ro = (long)r * k;
            if (distinct != 0)
            {
                for (int j = t; j < k; j += step)
                {
                    int i = Column(indices[ro + j], n);
                    if (i < 0) continue;
                    int slot = start[i] + cnt[o + i];
                    if (slot < start[i + 1]) order[slot] = (int)(ro + j);
                    cnt[o + i] += 1;
                }
                Group.Barrier(); // the next row's entries read counters this row moved
                continue;
            }
            for (int j = t; j < k; j += step)
            {
                int i = Column(indices[ro + j], n);
                if (i >= 0) order[start[i] + cnt[o + i] + Repeats(indices, ro, 0, j, i, n)] = (int)(ro + j);
            }
            Group.Barrier(); // every entry of the row has read its column's counter
            for (int j = t; j < k; j += step)
            {
                int i = Column(indices[ro + j], n);
                if (i >= 0 && Repeats(indices, ro, 0, j, i, n) == 0) cnt[o + i] += 1 + Repeats(indices, ro, j + 1, k, i, n);
            }
            Group.Barrier();
        }
    }

    /// <summary>
    /// Pass 5, one group per column i: <c>y[i, :] (+)= Σ values[e]·a[e / k, :]</c> over the column's list in order, each
    /// thread owning the columns t, t + step, … of y; the list's entries go through shared memory <see cref="MaxGroup"/> at a time.
    /// </summary>
    public static void SparseTransposeTimes(ArrayView<float> values, ArrayView<int> order, ArrayView<int> start, ArrayView<float> a, ArrayView<float> y, int k, int d, int accumulate, int entries)
    {
        var sr = SharedMemory.Allocate<int>(MaxGroup);
        var sv = SharedMemory.Allocate<float>(MaxGroup);
        int i = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        int lo = start[i], hi = start[i + 1];
        long o = (long)i * d;
        if (lo == hi && accumulate == 0)
            for (int c = t; c < d; c += step) y[o + c] = 0f;
        for (int p0 = lo; p0 < hi; p0 += MaxGroup)
        {
            int count = XMath.Min(MaxGroup, hi - p0);
            for (int q = t; q < count; q += step)
            {
                int e = order[p0 + q];
                bool valid = e >= 0 && e < entries; // a slot left unwritten by a broken distinct-per-row promise holds anything
                sr[q] = valid ? e / k : -1;
                sv[q] = valid ? values[e] : 0f;
            }
            Group.Barrier();
            AddScaledRows(sr, sv, count, a, d, y, o, p0 > lo || accumulate != 0 ? 2 : 0, y);
            Group.Barrier();
        }
    }

    public static void ScaleRows(Index1D i, ArrayView<float> x, ArrayView<float> scale, ArrayView<float> y, int cols) =>
        y[i] = x[i] * scale[i / cols];

    public static void ReconstructionRowStats(Index1D i, ArrayView<float> xx, ArrayView<float> rr, ArrayView<float> dot, ArrayView<float> cosine, ArrayView<float> ratio, float minNorm)
    {
        float nx = XMath.Sqrt(xx[i]), nr = XMath.Sqrt(rr[i]);
        cosine[i] = nx == 0 && nr == 0 ? 1f : nx == 0 || nr == 0 ? 0f : dot[i] / (nx * nr);
        ratio[i] = nr / (nx < minNorm ? 1f : nx);
    }

    public static void NormScale(Index1D i, ArrayView<float> s, ArrayView<float> y, float target, int onlyAbove)
    {
        float n = XMath.Sqrt(s[i]);
        y[i] = n > 0 && (onlyAbove == 0 || n > target) ? target / n : 1f;
    }

    /// <summary>Per group, how many elements exceed the threshold (grid-stride), as a double partial.</summary>
    public static void CountAbovePartials(ArrayView<float> x, ArrayView<double> partials, int n, float threshold)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        double count = 0;
        for (int i = Grid.IdxX * Group.DimX + Group.IdxX; i < n; i += Grid.DimX * Group.DimX) if (x[i] > threshold) count++;
        count = GroupSumDouble(count, shared);
        if (Group.IdxX == 0) partials[Grid.IdxX] = count;
    }

    /// <summary>One group: <c>y[0] = Σ partials</c>, so a reduction ends on the device.</summary>
    public static void SumDoublePartials(ArrayView<double> partials, ArrayView<float> y, int n)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        double sum = 0;
        for (int i = Group.IdxX; i < n; i += Group.DimX) sum += partials[i];
        sum = GroupSumDouble(sum, shared);
        if (Group.IdxX == 0) y[0] = (float)sum;
    }

    public static void UpdateSinceFired(Index1D i, ArrayView<float> fired, ArrayView<float> since, ArrayView<float> sinceOut,
        ArrayView<float> deadBias, float tokens, float window)
    {
        float next = fired[i] > 0 ? 0f : XMath.Min(since[i] + tokens, window);
        sinceOut[i] = next;
        deadBias[i] = next >= window ? 0f : float.NegativeInfinity;
    }

    // ---- BatchTopK over a whole batch: a radix select spread over many groups ------------------------
    // state[0] = the cut key's prefix so far, state[1] = how many of the keys under that prefix are still to keep.

    /// <summary>Clears the 256-bin histogram and starts the select: empty prefix, <paramref name="keep"/> to go.</summary>
    public static void BatchTopKStart(Index1D i, ArrayView<int> hist, ArrayView<int> state, int keep)
    {
        hist[i] = 0;
        if (i == 0)
        {
            state[0] = 0;
            state[1] = keep;
        }
    }

    /// <summary>One radix pass: per group a shared histogram of the digit at <paramref name="shift"/> of the keys under the prefix, added into the global one.</summary>
    public static void BatchTopKHistogram(ArrayView<float> x, ArrayView<int> hist, ArrayView<int> state, int n, int shift, int mask)
    {
        var local = SharedMemory.Allocate<int>(256);
        int t = Group.IdxX, step = Group.DimX;
        for (int b = t; b < 256; b += step) local[b] = 0;
        Group.Barrier();
        uint prefix = (uint)state[0], m = (uint)mask;
        for (int i = Grid.IdxX * step + t; i < n; i += Grid.DimX * step)
        {
            uint key = SortKey(x[i]);
            if ((key & m) == prefix) Atomic.Add(ref local[(int)((key >> shift) & 0xFFu)], 1);
        }
        Group.Barrier();
        for (int b = t; b < 256; b += step) if (local[b] != 0) Atomic.Add(ref hist[b], local[b]);
    }

    /// <summary>One thread: the bin that holds the remaining-th largest key extends the prefix; the histogram is cleared for the next pass.</summary>
    public static void BatchTopKSelectBin(Index1D i, ArrayView<int> hist, ArrayView<int> state, int shift)
    {
        int remaining = state[1], above = 0, bin = 255;
        for (; bin > 0; bin--)
        {
            if (above + hist[bin] >= remaining) break;
            above += hist[bin];
        }
        state[0] = (int)((uint)state[0] | ((uint)bin << shift));
        state[1] = remaining - above;
        for (int b = 0; b < 256; b++) hist[b] = 0;
    }

    /// <summary>Per group, the ties at the cut key in its chunk <c>[g·chunk, (g+1)·chunk)</c> (chunks keep index order across groups).</summary>
    public static void BatchTopKTies(ArrayView<float> x, ArrayView<int> state, ArrayView<int> ties, int n, int chunk)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        int t = Group.IdxX, step = Group.DimX;
        uint prefix = (uint)state[0];
        long start = (long)Grid.IdxX * chunk, end = start + chunk < n ? start + chunk : n;
        double count = 0;
        for (long i = start + t; i < end; i += step) if (SortKey(x[i]) == prefix) count++;
        count = GroupSumDouble(count, shared);
        if (t == 0) ties[Grid.IdxX] = (int)count;
    }

    /// <summary>
    /// Per group over its chunk, in index order: ReLU'd values above the cut key, and ties at it while the keep is not
    /// full (the ties of earlier chunks counted first; the prefix scan runs only when some ties must be left out);
    /// the group's smallest positive kept value into <paramref name="mins"/>.
    /// </summary>
    public static void BatchTopKWrite(ArrayView<float> x, ArrayView<float> y, ArrayView<int> state, ArrayView<int> ties, ArrayView<float> mins,
        int n, int chunk, int groups)
    {
        var scan = SharedMemory.Allocate<int>(MaxGroup);
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        var fmin = SharedMemory.Allocate<float>(MaxGroup);
        int g = Grid.IdxX, t = Group.IdxX, step = Group.DimX;
        uint prefix = (uint)state[0];
        int remaining = state[1];
        double earlier = 0, total = 0;
        for (int h = t; h < groups; h += step)
        {
            total += ties[h];
            if (h < g) earlier += ties[h];
        }
        earlier = GroupSumDouble(earlier, shared);
        total = GroupSumDouble(total, shared);
        bool allTies = total <= remaining;   // the same for every thread of the group: the barriers below are uniform
        int taken = (int)earlier;
        long start = (long)g * chunk, end = start + chunk < n ? start + chunk : n;
        float min = float.PositiveInfinity;
        for (long c = start; c < end; c += step)
        {
            long j = c + t;
            bool inside = j < end;
            float v = inside ? x[j] : 0f;
            uint key = inside ? SortKey(v) : 0u;
            int flag = inside && key == prefix ? 1 : 0;
            bool tieKept = allTies;
            int found = 0;
            if (!allTies && taken < remaining)
            {
                scan[t] = flag;
                Group.Barrier();
                for (int offset = 1; offset < step; offset <<= 1)
                {
                    int add = t >= offset ? scan[t - offset] : 0;
                    Group.Barrier();
                    scan[t] += add;
                    Group.Barrier();
                }
                tieKept = taken + scan[t] - flag < remaining;
                found = scan[step - 1];
                Group.Barrier();
            }
            if (inside)
            {
                bool kept = key > prefix || (flag == 1 && tieKept);
                float a = kept && v > 0 ? v : 0f;
                y[j] = a;
                if (a > 0 && a < min) min = a;
            }
            taken += found;
        }
        fmin[t] = min;
        Group.Barrier();
        for (int s = step / 2; s > 0; s >>= 1)
        {
            if (t < s) fmin[t] = XMath.Min(fmin[t], fmin[t + s]);
            Group.Barrier();
        }
        if (t == 0) mins[g] = fmin[0];
    }

    /// <summary>One group: <c>minKept[0] = min(mins)</c>.</summary>
    public static void BatchTopKMin(ArrayView<float> mins, ArrayView<float> minKept, int groups)
    {
        var fmin = SharedMemory.Allocate<float>(MaxGroup);
        int t = Group.IdxX, step = Group.DimX;
        float min = float.PositiveInfinity;
        for (int h = t; h < groups; h += step) min = XMath.Min(min, mins[h]);
        fmin[t] = min;
        Group.Barrier();
        for (int s = step / 2; s > 0; s >>= 1)
        {
            if (t < s) fmin[t] = XMath.Min(fmin[t], fmin[t + s]);
            Group.Barrier();
        }
        if (t == 0) minKept[0] = fmin[0];
    }

    public static void JumpRelu(Index1D i, ArrayView<float> x, ArrayView<float> logThreshold, ArrayView<float> y, int cols)
    {
        float v = x[i];
        y[i] = v > XMath.Exp(logThreshold[i % cols]) ? v : 0f;
    }

    /// <summary>One thread per column (neighbouring threads read neighbouring columns): the threshold gradient summed in double.</summary>
    public static void JumpReluThresholdGrad(Index1D c, ArrayView<float> x, ArrayView<float> dY, ArrayView<float> logThreshold,
        ArrayView<float> grad, int rows, int cols, float eps, float penalty)
    {
        float theta = XMath.Exp(logThreshold[c]);
        double sum = 0;
        for (int r = 0; r < rows; r++)
        {
            long at = (long)r * cols + c;
            if (XMath.Abs((x[at] - theta) / eps) < 0.5f) sum += dY[at] * (-theta / eps) + (double)penalty;
        }
        grad[c] = (float)(sum * theta);
    }
}
