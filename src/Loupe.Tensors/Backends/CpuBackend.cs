using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Loupe.Tensors.Kernels;

namespace Loupe.Tensors.Backends;

/// <summary>
/// The CPU: OpenBLAS for products when present, TensorPrimitives (SIMD) for the rest. Tensors are
/// host tensors; nothing is ever copied between host and device, so <see cref="Transfers"/> stays zero.
/// </summary>
public sealed class CpuBackend : IComputeBackend
{
    public static CpuBackend Instance { get; } = new(ElementType.F32);

    /// <summary>
    /// The CPU with weight matrices rounded to bf16 or fp16 (nearest even, as a GPU backend keeps them) and computed in
    /// fp32: what a half-precision device run owes to the format's rounding of the weights alone. Each matrix is a
    /// rounded copy (the model's fp32 host weights stay as they are), so this costs a second copy of the matrices.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="weights"/> is neither BF16 nor F16.</exception>
    public static CpuBackend WithRoundedWeights(ElementType weights) => weights is ElementType.BF16 or ElementType.F16
        ? new(weights)
        : throw new ArgumentOutOfRangeException(nameof(weights), weights, "bf16 or f16");

    CpuBackend(ElementType weights) => WeightElementType = weights;

    /// <summary>
    /// For work that runs independent jobs side by side, one per core (probes on several hooks): while the scope lives,
    /// OpenBLAS runs each product on the calling thread. Its own threads would otherwise spin between the many small
    /// products of each job and compete with the jobs (2 hooks × 2 BLAS threads on 2 cores: 1.9× slower,
    /// <c>Loupe.Bench probes</c>). Process-wide, like the thread count it sets (products give the same numbers either
    /// way: OpenBLAS splits rows and columns between threads, never the sum); the previous count comes back on dispose.
    /// </summary>
    public static IDisposable SideBySideJobs()
    {
        int previous = Blas.OpenBlas.Threads;
        if (!Kernels.Gemm.UsesBlas || previous <= 1) return NoScope.Instance;
        Blas.OpenBlas.SetThreads(1);
        return new ThreadScope(previous);
    }

    sealed class ThreadScope(int previous) : IDisposable
    {
        int _disposed;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) Blas.OpenBlas.SetThreads(previous);
        }
    }

    sealed class NoScope : IDisposable
    {
        public static readonly NoScope Instance = new();
        public void Dispose() { }
    }

    public string Name => (Kernels.Gemm.UsesBlas ? "cpu+openblas" : "cpu+managed") + (WeightElementType == ElementType.F32 ? "" : $" ({WeightElementType} weights)");
    public Device Device => Device.Cpu;
    public ElementType WeightElementType { get; }
    public TransferCounter Transfers { get; } = new();

    static Span<float> S(Tensor t, long offset = 0) => offset == 0 ? t.Span : t.Span[checked((int)offset)..];
    static ReadOnlySpan<float> R(Tensor? t) => t is null ? default : t.Span;

    // ---- memory ----

    public Tensor Empty(params int[] shape) => Tensor.Uninitialized(shape);
    public Tensor Zeros(params int[] shape) => Tensor.Zeros(shape);

    public Tensor ToDevice(Tensor tensor, TransferKind kind = TransferKind.Data) => tensor.ToCpu();

    public Tensor LoadWeight(ReadOnlyMemory<float> values, int[] shape, ElementType keepAs = ElementType.F32)
    {
        if (keepAs == ElementType.F32 || WeightElementType == ElementType.F32) return new(MemoryMarshal.AsMemory(values), shape);
        var rounded = new float[values.Length];
        var source = values.Span;
        if (keepAs == ElementType.BF16)
            for (int i = 0; i < rounded.Length; i++) rounded[i] = RoundToBf16(source[i]);
        else
            for (int i = 0; i < rounded.Length; i++) rounded[i] = (float)(Half)source[i];
        return new(rounded, shape);
    }

    /// <summary>fp32 rounded to the nearest bf16 (ties to even); NaN and ±∞ stay as they are.</summary>
    public static float RoundToBf16(float f)
    {
        uint x = BitConverter.SingleToUInt32Bits(f);
        if ((x & 0x7F800000u) == 0x7F800000u) return f;
        return BitConverter.UInt32BitsToSingle(((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16) << 16);
    }

    public void CopyRows(Tensor src, long srcOffset, int srcStride, Tensor dst, long dstOffset, int dstStride, int rows, int cols, bool accumulate = false)
    {
        var s = S(src, srcOffset);
        var d = S(dst, dstOffset);
        for (int r = 0; r < rows; r++)
        {
            var from = s.Slice(r * srcStride, cols);
            var to = d.Slice(r * dstStride, cols);
            if (accumulate) TensorPrimitives.Add(to, from, to);
            else from.CopyTo(to);
        }
    }

    public void Fill(Tensor dst, float value) => dst.Span.Fill(value);

    // ---- products ----

    public void Gemm(bool transA, bool transB, int m, int n, int k, float alpha, Tensor a, long aOffset, int lda,
        Tensor b, long bOffset, int ldb, float beta, Tensor c, long cOffset, int ldc) =>
        Kernels.Gemm.Sgemm(transA, transB, m, n, k, alpha, S(a, aOffset), lda, S(b, bOffset), ldb, beta, S(c, cOffset), ldc);

    public void GemmBatched(bool transA, bool transB, int m, int n, int k, float alpha, Tensor a, long aOffset, int lda, long strideA,
        Tensor b, long bOffset, int ldb, long strideB, float beta, Tensor c, long cOffset, int ldc, long strideC, int batch)
    {
        for (int i = 0; i < batch; i++)
            Gemm(transA, transB, m, n, k, alpha, a, aOffset + i * strideA, lda, b, bOffset + i * strideB, ldb, beta, c, cOffset + i * strideC, ldc);
    }

    public void Linear(Tensor x, int rows, int k, Tensor weight, bool weightIsOutIn, int n, Tensor? bias, Tensor y) =>
        Kernels.Gemm.Linear(x.Span, rows, k, weight.Span, weightIsOutIn, n, R(bias), y.Span);

    // ---- element-wise ----

    public void Add(Tensor a, Tensor b, Tensor y) => TensorPrimitives.Add(a.Span, b.Span, y.Span);
    public void Multiply(Tensor a, Tensor b, Tensor y) => TensorPrimitives.Multiply(a.Span, b.Span, y.Span);
    public void Scale(Tensor a, float s, Tensor y) => TensorPrimitives.Multiply(a.Span, s, y.Span);

    public void DifferenceProduct(Tensor a, Tensor b, Tensor g, Tensor y)
    {
        Span<float> sa = a.Span, sb = b.Span, sg = g.Span, sy = y.Span;
        for (int i = 0; i < sy.Length; i++)
        {
            float diff = sa[i] - sb[i];
            sy[i] = float.IsFinite(diff) ? diff * sg[i] : 0f;
        }
    }

    public void AddRowVector(Tensor y, int rows, Tensor v)
    {
        var ys = y.Span;
        var vs = v.Span;
        int n = vs.Length;
        for (int r = 0; r < rows; r++)
        {
            var row = ys.Slice(r * n, n);
            TensorPrimitives.Add(row, vs, row);
        }
    }

    public void SumMiddleAxis(Tensor x, int outer, int middle, int inner, Tensor y, bool accumulate = false)
    {
        var xs = x.Span;
        var ys = y.Span;
        for (int o = 0; o < outer; o++)
        {
            var row = ys.Slice(o * inner, inner);
            if (!accumulate) row.Clear();
            for (int m = 0; m < middle; m++) TensorPrimitives.Add(row, xs.Slice((o * middle + m) * inner, inner), row);
        }
    }

    public void Activation(string name, Tensor x, Tensor y) => Activations.Apply(name, x.Span, y.Span);

    public void ActivationBackward(string name, Tensor x, Tensor dy, Tensor dx) => Activations.Backward(name, x.Span, dy.Span, dx.Span);

    public void SoftCap(Tensor a, float cap, Tensor y)
    {
        TensorPrimitives.Multiply(a.Span, 1f / cap, y.Span);
        TensorPrimitives.Tanh(y.Span, y.Span);
        TensorPrimitives.Multiply(y.Span, cap, y.Span);
    }

    public void SoftCapBackward(Tensor capped, Tensor dy, float cap, Tensor dx)
    {
        var c = capped.Span;
        var d = dy.Span;
        var o = dx.Span;
        for (int i = 0; i < o.Length; i++)
        {
            float v = c[i];
            o[i] = float.IsFinite(v) ? d[i] * (1 - (v / cap) * (v / cap)) : 0f;
        }
    }

    // ---- normalization ----

    public void Norm(bool center, Tensor x, int rows, int d, Tensor? weight, float weightOffset, Tensor? bias, float eps, Tensor y, Tensor scale)
    {
        if (center)
        {
            // The LayerNorm kernel has no weight offset: fold it into the weight (absent weight = 1).
            ReadOnlySpan<float> w = R(weight);
            if (weightOffset != 0f)
            {
                var effective = new float[d];
                if (w.IsEmpty) effective.AsSpan().Fill(1f + weightOffset);
                else TensorPrimitives.Add(w, weightOffset, effective);
                w = effective;
            }
            Normalization.LayerNorm(x.Span, rows, d, w, R(bias), eps, y.Span, scale.Span);
        }
        else
        {
            Normalization.RmsNorm(x.Span, rows, d, R(weight), weightOffset, eps, y.Span, scale.Span);
            if (bias is { Length: > 0 }) AddRowVector(y, rows, bias); // the RMSNorm kernel has no bias
        }
    }

    public void NormWithScale(bool center, Tensor x, int rows, int d, Tensor? weight, float weightOffset, Tensor? bias, Tensor scale, Tensor y)
    {
        var w = R(weight);
        var b = R(bias);
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Span.Slice(r * d, d);
            var yr = y.Span.Slice(r * d, d);
            float mean = center ? TensorPrimitives.Sum(xr) / d : 0f;
            float inv = 1f / scale.Span[r];
            for (int i = 0; i < d; i++)
                yr[i] = (xr[i] - mean) * inv * ((w.IsEmpty ? 1f : w[i]) + weightOffset) + (b.IsEmpty ? 0f : b[i]);
        }
    }

    public void NormBackwardScale(bool center, Tensor x, Tensor scale, Tensor dy, int rows, int d, Tensor? weight, float weightOffset, Tensor dScale)
    {
        var w = R(weight);
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Span.Slice(r * d, d);
            var dyr = dy.Span.Slice(r * d, d);
            float mean = center ? TensorPrimitives.Sum(xr) / d : 0f;
            float sigma = scale.Span[r];
            double dot = 0;
            for (int i = 0; i < d; i++)
                dot += (double)(dyr[i] * ((w.IsEmpty ? 1f : w[i]) + weightOffset)) * ((xr[i] - mean) / sigma);
            dScale.Span[r] = (float)(-dot / sigma);
        }
    }

    public void NormBackwardInput(bool center, Tensor x, Tensor scale, Tensor dy, Tensor dScale, int rows, int d, Tensor? weight, float weightOffset, Tensor dx)
    {
        var w = R(weight);
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Span.Slice(r * d, d);
            var dyr = dy.Span.Slice(r * d, d);
            var dxr = dx.Span.Slice(r * d, d);
            float mean = center ? TensorPrimitives.Sum(xr) / d : 0f;
            float sigma = scale.Span[r], ds = dScale.Span[r];
            double dcMean = 0;
            for (int i = 0; i < d; i++)
            {
                float c = xr[i] - mean;
                float dc = dyr[i] * ((w.IsEmpty ? 1f : w[i]) + weightOffset) / sigma + ds * (c / sigma) / d;
                dxr[i] = dc;
                dcMean += dc;
            }
            if (center)
            {
                float m = (float)(dcMean / d);
                for (int i = 0; i < d; i++) dxr[i] -= m;
            }
        }
    }

    // ---- softmax and reductions ----

    public void SoftmaxRows(Tensor x, int rows, int n, Tensor y) => Softmax.Rows(x.Span, rows, n, y.Span);

    public void SoftmaxBackwardRows(Tensor p, Tensor dp, int rows, int n, Tensor dx)
    {
        for (int r = 0; r < rows; r++)
        {
            var pr = p.Span.Slice(r * n, n);
            var dpr = dp.Span.Slice(r * n, n);
            float dot = TensorPrimitives.Dot(pr, dpr);
            var o = dx.Span.Slice(r * n, n);
            for (int j = 0; j < n; j++) o[j] = pr[j] * (dpr[j] - dot);
        }
    }

    public void LogSoftmaxRows(Tensor x, int rows, int n, Tensor y)
    {
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Span.Slice(r * n, n);
            var yr = y.Span.Slice(r * n, n);
            float lse = LogSumExp(xr);
            TensorPrimitives.Subtract(xr, lse, yr);
        }
    }

    /// <summary>log Σ exp(x), max-subtracted, summed in double.</summary>
    static float LogSumExp(ReadOnlySpan<float> x)
    {
        float max = TensorPrimitives.Max(x);
        if (!float.IsFinite(max)) return max;
        double sum = 0;
        foreach (var v in x) sum += Math.Exp(v - max);
        return (float)(max + Math.Log(sum));
    }

    public void CrossEntropyRows(Tensor logits, int rows, int n, ReadOnlySpan<int> targets, Tensor loss, Tensor? dLogits, float weight)
    {
        if (targets.Length < rows) throw new ArgumentException($"{targets.Length} targets for {rows} rows", nameof(targets));
        for (int r = 0; r < rows; r++)
            if (targets[r] >= n) throw new ArgumentOutOfRangeException(nameof(targets), $"target {targets[r]} of row {r} is outside {n} classes");
        // Rows are independent: large inputs are split into row chunks across cores (the same numbers either way).
        int chunks = (long)rows * n >= 1 << 16 ? Math.Min(Environment.ProcessorCount, Math.Max(1, rows / 64)) : 1;
        if (chunks == 1)
        {
            CrossEntropyRowRange(logits, 0, rows, n, targets, loss, dLogits, weight);
            return;
        }
        var t = targets[..rows].ToArray();
        Parallel.For(0, chunks, c => CrossEntropyRowRange(logits, (int)((long)rows * c / chunks), (int)((long)rows * (c + 1) / chunks), n, t, loss, dLogits, weight));
    }

    static void CrossEntropyRowRange(Tensor logits, int from, int to, int n, ReadOnlySpan<int> targets, Tensor loss, Tensor? dLogits, float weight)
    {
        for (int r = from; r < to; r++)
        {
            var xr = logits.Span.Slice(r * n, n);
            int t = targets[r];
            float lse = LogSumExp(xr);
            loss.Span[r] = t < 0 ? 0f : lse - xr[t];
            if (dLogits is null) continue;
            var dr = dLogits.Span.Slice(r * n, n);
            if (t < 0) { dr.Clear(); continue; }
            TensorPrimitives.Subtract(xr, lse, dr);
            TensorPrimitives.Exp(dr, dr);
            dr[t] -= 1f;
            if (weight != 1f) TensorPrimitives.Multiply(dr, weight, dr);
        }
    }

    public double Sum(Tensor x)
    {
        double sum = 0;
        foreach (var v in x.Span) sum += v;
        return sum;
    }

    public int[] ArgMaxRows(Tensor x, int rows, int n)
    {
        var result = new int[rows];
        for (int r = 0; r < rows; r++) result[r] = TensorPrimitives.IndexOfMax(x.Span.Slice(r * n, n));
        return result;
    }

    public long IndexOfNonFinite(Tensor x, bool allowNegativeInfinity = false)
    {
        var s = x.Span;
        for (int i = 0; i < s.Length; i++)
            if (!float.IsFinite(s[i]) && !(allowNegativeInfinity && float.IsNegativeInfinity(s[i]))) return i;
        return -1;
    }

    public void TopKRows(Tensor x, int rows, int n, int k, Tensor values, Tensor indices)
    {
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), $"top-k needs 1 ≤ k ≤ {n}, got {k}");
        var xs = x.Span;
        var vs = values.Span;
        var ix = indices.Span;
        var heap = new int[k];
        for (int r = 0; r < rows; r++)
        {
            var xr = xs.Slice(r * n, n);
            // A heap of the k best so far with the worst on top: O(n log k) per row instead of a full sort.
            int size = 0;
            for (int j = 0; j < n; j++)
            {
                if (size < k) { heap[size] = j; SiftUp(heap, size++, xr); continue; }
                if (Compare(xr[j], xr[heap[0]], j, heap[0]) >= 0) continue; // not better than the worst kept
                heap[0] = j;
                SiftDown(heap, size, xr);
            }
            // Popping the worst each time fills the row from the back: largest first; ties (and NaN, kept last) by lower index.
            for (int j = k - 1; j >= 0; j--)
            {
                int worst = heap[0];
                vs[r * k + j] = xr[worst];
                ix[r * k + j] = worst;
                heap[0] = heap[--size];
                SiftDown(heap, size, xr);
            }
        }
    }

    // Heap order: the parent is worse than (ranks after) its children, so heap[0] is the worst kept.
    static void SiftUp(int[] heap, int i, ReadOnlySpan<float> x)
    {
        while (i > 0)
        {
            int parent = (i - 1) / 2;
            if (Compare(x[heap[i]], x[heap[parent]], heap[i], heap[parent]) <= 0) return;
            (heap[i], heap[parent]) = (heap[parent], heap[i]);
            i = parent;
        }
    }

    static void SiftDown(int[] heap, int size, ReadOnlySpan<float> x)
    {
        int i = 0;
        while (true)
        {
            int l = 2 * i + 1, worst = i;
            if (l < size && Compare(x[heap[l]], x[heap[worst]], heap[l], heap[worst]) > 0) worst = l;
            if (l + 1 < size && Compare(x[heap[l + 1]], x[heap[worst]], heap[l + 1], heap[worst]) > 0) worst = l + 1;
            if (worst == i) return;
            (heap[i], heap[worst]) = (heap[worst], heap[i]);
            i = worst;
        }
    }

    public void ScatterRows(Tensor values, Tensor indices, int rows, int k, int n, Tensor dense)
    {
        var vs = values.Span;
        var ix = indices.Span;
        var d = dense.Span[..checked(rows * n)];
        d.Clear();
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < k; j++)
            {
                float c = ix[r * k + j];
                if (!(c >= 0 && c < n) || c != MathF.Floor(c))
                    throw new ArgumentOutOfRangeException(nameof(indices), $"indices[{r}, {j}] = {c} is not a column of [0, {n})");
                d[r * n + (int)c] = vs[r * k + j];
            }
    }

    static int Compare(float a, float b, int i, int j)
    {
        bool an = float.IsNaN(a), bn = float.IsNaN(b);
        if (an != bn) return an ? 1 : -1;
        if (!an && a != b) return a > b ? -1 : 1;
        return i.CompareTo(j);
    }

    // ---- positions and attention ----

    public void Rotary(RotaryTable table, Tensor x, int rows, int heads, int headDim, ReadOnlySpan<int> positions, bool inverse = false)
    {
        if (inverse) table.ApplyInverse(x.Span, rows, heads, headDim, positions);
        else table.Apply(x.Span, rows, heads, headDim, positions);
    }

    public void AttentionScores(Tensor q, Tensor k, AttentionShape s, float scale, AttentionMask mask, Tensor scores) =>
        Attention.Scores(q.Span, k.Span, s.Batch, s.QueryLen, s.KeyLen, s.Heads, s.KvHeads, s.DHead, scale, mask, scores.Span, s.KeyCapacity);

    public void AttentionApply(Tensor pattern, Tensor v, AttentionShape s, Tensor z) =>
        Attention.ApplyPattern(pattern.Span, v.Span, s.Batch, s.QueryLen, s.KeyLen, s.Heads, s.KvHeads, s.DHead, z.Span, s.KeyCapacity);

    public void AttentionApplyBackward(Tensor dz, Tensor pattern, Tensor v, AttentionShape s, Tensor dPattern, Tensor dv)
    {
        int T = s.QueryLen, K = s.KeyLen, group = s.Group, qWidth = s.Heads * s.DHead, kvWidth = s.KvHeads * s.DHead;
        dv.Span.Clear();
        // Heads sharing a kv head run in one task so their dv accumulates without races.
        Attention.ForEachHead(s.Batch * s.KvHeads, (long)T * K * s.DHead, i =>
        {
            int b = i / s.KvHeads, kvh = i % s.KvHeads;
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                var dzs = dz.Span.Slice((b * T * s.Heads + h) * s.DHead);
                var vs = v.Span.Slice((b * K * s.KvHeads + kvh) * s.DHead);
                var dps = dPattern.Span.Slice((b * s.Heads + h) * T * K, T * K);
                Kernels.Gemm.Sgemm(false, true, T, K, s.DHead, 1f, dzs, qWidth, vs, kvWidth, 0f, dps, K);
                Kernels.Gemm.Sgemm(true, false, K, s.DHead, T, 1f, pattern.Span.Slice((b * s.Heads + h) * T * K, T * K), K, dzs, qWidth,
                    1f, dv.Span.Slice((b * K * s.KvHeads + kvh) * s.DHead), kvWidth);
            }
        });
    }

    public void AttentionScoresBackward(Tensor dRaw, Tensor q, Tensor k, AttentionShape s, float scale, Tensor dq, Tensor dk)
    {
        int T = s.QueryLen, K = s.KeyLen, group = s.Group, qWidth = s.Heads * s.DHead, kvWidth = s.KvHeads * s.DHead;
        dk.Span.Clear();
        Attention.ForEachHead(s.Batch * s.KvHeads, (long)T * K * s.DHead, i =>
        {
            int b = i / s.KvHeads, kvh = i % s.KvHeads;
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                var dr = dRaw.Span.Slice((b * s.Heads + h) * T * K, T * K);
                Kernels.Gemm.Sgemm(false, false, T, s.DHead, K, scale, dr, K, k.Span.Slice((b * K * s.KvHeads + kvh) * s.DHead), kvWidth,
                    0f, dq.Span.Slice((b * T * s.Heads + h) * s.DHead), qWidth);
                Kernels.Gemm.Sgemm(true, false, K, s.DHead, T, scale, dr, K, q.Span.Slice((b * T * s.Heads + h) * s.DHead), qWidth,
                    1f, dk.Span.Slice((b * K * s.KvHeads + kvh) * s.DHead), kvWidth);
            }
        });
    }

    // ---- embeddings ----

    public void Embedding(Tensor table, int d, ReadOnlySpan<int> ids, float scale, Tensor y)
    {
        var t = table.Span;
        var ys = y.Span;
        int vocab = t.Length / d;
        for (int i = 0; i < ids.Length; i++)
        {
            if ((uint)ids[i] >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(ids), $"id {ids[i]} at {i} is outside the table of {vocab} rows");
            var row = ys.Slice(i * d, d);
            t.Slice(ids[i] * d, d).CopyTo(row);
            if (scale != 1f) TensorPrimitives.Multiply(row, scale, row);
        }
    }

    public void GatherColumns(Tensor x, int rows, int n, ReadOnlySpan<int> columns, Tensor y)
    {
        var xs = x.Span;
        var ys = y.Span;
        int k = columns.Length;
        if ((long)rows * n > xs.Length) throw new ArgumentException($"x holds {xs.Length} elements; rows·n = {(long)rows * n}", nameof(x));
        if ((long)rows * k > ys.Length) throw new ArgumentException($"y holds {ys.Length} elements; rows·columns = {(long)rows * k}", nameof(y));
        for (int j = 0; j < k; j++)
            if ((uint)columns[j] >= (uint)n) throw new ArgumentOutOfRangeException(nameof(columns), $"column {columns[j]} at {j} is outside the {n} columns");
        for (int r = 0; r < rows; r++)
        {
            var row = xs.Slice(r * n, n);
            var into = ys.Slice(r * k, k);
            for (int j = 0; j < k; j++) into[j] = row[columns[j]];
        }
    }

    public void EmbeddingBackward(Tensor dy, int d, ReadOnlySpan<int> ids, float scale, Tensor dTable)
    {
        var t = dTable.Span;
        int vocab = t.Length / d;
        for (int i = 0; i < ids.Length; i++)
        {
            if ((uint)ids[i] >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(ids), $"id {ids[i]} at {i} is outside the table of {vocab} rows");
            var row = t.Slice(ids[i] * d, d);
            TensorPrimitives.MultiplyAdd(dy.Span.Slice(i * d, d), scale, row, row);
        }
    }

    // ---- training ----

    public void AdamStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps, int step)
    {
        var p = param.Span;
        var g = grad.Span;
        var ms = m.Span;
        var vs = v.Span;
        float c1 = 1 - MathF.Pow(beta1, step), c2 = 1 - MathF.Pow(beta2, step);
        for (int i = 0; i < p.Length; i++)
        {
            ms[i] = beta1 * ms[i] + (1 - beta1) * g[i];
            vs[i] = beta2 * vs[i] + (1 - beta2) * g[i] * g[i];
            p[i] -= lr * (ms[i] / c1) / (MathF.Sqrt(vs[i] / c2) + eps);
        }
    }

    // ---- dictionary training -------------------------------------------------------------------

    public void RowDots(Tensor a, Tensor b, int rows, int cols, Tensor y, bool accumulate = false)
    {
        var av = a.Span[..checked(rows * cols)];
        var bv = b.Span[..checked(rows * cols)];
        var yv = y.Span[..rows];
        for (int r = 0; r < rows; r++)
        {
            double sum = 0;
            var ar = av.Slice(r * cols, cols);
            var br = bv.Slice(r * cols, cols);
            for (int c = 0; c < cols; c++) sum += (double)ar[c] * br[c];
            yv[r] = accumulate ? (float)(yv[r] + sum) : (float)sum;
        }
    }

    public void SparseRowsTimes(Tensor values, Tensor indices, int rows, int k, Tensor w, int n, int d, Tensor? bias, Tensor y)
    {
        var vs = values.Span[..checked(rows * k)];
        var ix = indices.Span[..checked(rows * k)];
        var wv = w.Span[..checked(n * d)];
        var yv = y.Span[..checked(rows * d)];
        var bv = bias is null ? default : bias.Span[..d];
        for (int r = 0; r < rows; r++)
        {
            var yr = yv.Slice(r * d, d);
            if (bias is null) yr.Clear();
            else bv.CopyTo(yr);
            // y += v·w[c] one index at a time, in order: the GPU kernel adds in the same order
            for (int j = 0; j < k; j++)
            {
                float c = ix[r * k + j];
                if (!(c >= 0 && c < n)) continue;
                TensorPrimitives.MultiplyAdd(wv.Slice((int)c * d, d), vs[r * k + j], yr, yr);
            }
        }
    }

    public void RowDotsAt(Tensor a, int rows, int d, Tensor w, int n, Tensor indices, int k, Tensor y)
    {
        var av = a.Span[..checked(rows * d)];
        var wv = w.Span[..checked(n * d)];
        var ix = indices.Span[..checked(rows * k)];
        var yv = y.Span[..checked(rows * k)];
        for (int r = 0; r < rows; r++)
        {
            var ar = av.Slice(r * d, d);
            for (int j = 0; j < k; j++)
            {
                float c = ix[r * k + j];
                yv[r * k + j] = c >= 0 && c < n ? TensorPrimitives.Dot(ar, wv.Slice((int)c * d, d)) : 0f;
            }
        }
    }

    public void SparseRowsTransposeTimes(Tensor values, Tensor indices, int rows, int k, Tensor a, int n, int d, Tensor y, bool accumulate = false, bool distinctPerRow = false)
    {
        // distinctPerRow changes nothing here: entries are added one at a time, repeats or not
        var vs = values.Span[..checked(rows * k)];
        var ix = indices.Span[..checked(rows * k)];
        var av = a.Span[..checked(rows * d)];
        var yv = y.Span[..checked(n * d)];
        if (!accumulate) yv.Clear();
        // rows, then entries, in order: each y row gets its terms in (r, j) order, as on the GPU
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < k; j++)
            {
                float c = ix[r * k + j];
                if (!(c >= 0 && c < n)) continue;
                var yr = yv.Slice((int)c * d, d);
                TensorPrimitives.MultiplyAdd(av.Slice(r * d, d), vs[r * k + j], yr, yr);
            }
    }

    public void ScaleRows(Tensor x, int rows, int cols, Tensor scale, Tensor y)
    {
        var xv = x.Span[..checked(rows * cols)];
        var sv = scale.Span[..rows];
        var yv = y.Span[..checked(rows * cols)];
        for (int r = 0; r < rows; r++) TensorPrimitives.Multiply(xv.Slice(r * cols, cols), sv[r], yv.Slice(r * cols, cols));
    }

    public void NormScale(Tensor sumSquares, float target, bool onlyAbove, Tensor y)
    {
        var s = sumSquares.Span;
        var yv = y.Span[..s.Length];
        for (int i = 0; i < s.Length; i++)
        {
            float n = MathF.Sqrt(s[i]);
            yv[i] = n > 0 && (!onlyAbove || n > target) ? target / n : 1f;
        }
    }

    public void ReconstructionRowStats(Tensor xx, Tensor rr, Tensor dot, float minNorm, Tensor cosine, Tensor ratio)
    {
        var x = xx.Span;
        var r = rr.Span[..x.Length];
        var d = dot.Span[..x.Length];
        var c = cosine.Span[..x.Length];
        var q = ratio.Span[..x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            float nx = MathF.Sqrt(x[i]), nr = MathF.Sqrt(r[i]);
            c[i] = nx == 0 && nr == 0 ? 1f : nx == 0 || nr == 0 ? 0f : d[i] / (nx * nr);
            q[i] = nr / (nx < minNorm ? 1f : nx);
        }
    }

    public void CountAbove(Tensor x, float threshold, Tensor y)
    {
        long count = 0;
        foreach (float v in x.Span) if (v > threshold) count++;
        y.Span[0] = count;
    }

    public void UpdateSinceFired(Tensor fired, Tensor since, float tokens, float window, Tensor sinceOut, Tensor deadBias)
    {
        var f = fired.Span;
        var s = since.Span[..f.Length];
        var o = sinceOut.Span[..f.Length];
        var d = deadBias.Span[..f.Length];
        for (int i = 0; i < f.Length; i++)
        {
            float next = f[i] > 0 ? 0f : MathF.Min(s[i] + tokens, window);
            o[i] = next;
            d[i] = next >= window ? 0f : float.NegativeInfinity;
        }
    }

    public void BatchTopK(Tensor x, int count, int keep, Tensor y, Tensor minKept)
    {
        if (keep < 1 || keep > count) throw new ArgumentOutOfRangeException(nameof(keep), $"batch top-k needs 1 ≤ keep ≤ {count}, got {keep}");
        var xs = x.Span[..count];
        var ys = y.Span[..count];
        // the keep-th largest value (NaN sorts last, as a value never kept before a number)
        var sorted = xs.ToArray();
        Array.Sort(sorted, (a, b) => float.IsNaN(a) ? (float.IsNaN(b) ? 0 : 1) : float.IsNaN(b) ? -1 : b.CompareTo(a));
        float cut = sorted[keep - 1];
        int above = 0;
        foreach (float v in xs) if (v > cut) above++;
        int ties = keep - above;
        float min = float.PositiveInfinity;
        for (int i = 0; i < count; i++)
        {
            float v = xs[i];
            bool kept = v > cut || (v == cut && ties-- > 0);
            float a = kept && v > 0 ? v : 0f;
            ys[i] = a;
            if (a > 0 && a < min) min = a;
        }
        minKept.Span[0] = min;
    }

    public void JumpRelu(Tensor x, int rows, int cols, Tensor logThreshold, Tensor y)
    {
        var xs = x.Span[..checked(rows * cols)];
        var ys = y.Span[..checked(rows * cols)];
        var lt = logThreshold.Span[..cols];
        var theta = new float[cols];
        for (int c = 0; c < cols; c++) theta[c] = MathF.Exp(lt[c]);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                float v = xs[r * cols + c];
                ys[r * cols + c] = v > theta[c] ? v : 0f;
            }
    }

    public void JumpReluThresholdGrad(Tensor x, Tensor dY, int rows, int cols, Tensor logThreshold, float bandwidth, float sparsityScale, Tensor grad)
    {
        var xs = x.Span[..checked(rows * cols)];
        var ds = dY.Span[..checked(rows * cols)];
        var lt = logThreshold.Span[..cols];
        var g = grad.Span[..cols];
        float eps = bandwidth, penalty = -sparsityScale / bandwidth;
        for (int c = 0; c < cols; c++)
        {
            float theta = MathF.Exp(lt[c]);
            double sum = 0;
            for (int r = 0; r < rows; r++)
                if (MathF.Abs((xs[r * cols + c] - theta) / eps) < 0.5f) sum += ds[r * cols + c] * (-theta / eps) + (double)penalty;
            g[c] = (float)(sum * theta);
        }
    }
}
