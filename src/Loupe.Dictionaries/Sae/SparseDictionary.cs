// Sparse dictionary: SAE, transcoder and skip-transcoder in one class (encoder/decoder + activation).
//
// Shape legend (SAELens names):
//   x      [batch, d_in]    input activations (MLP input for a transcoder)
//   target [batch, d_out]   what is reconstructed (= x for an SAE, MLP output for a transcoder)
//   W_enc  [d_in, d_sae]    b_enc [d_sae]
//   W_dec  [d_sae, d_out]   b_dec [d_out]
//   W_skip [d_in, d_out]    skip-transcoders only
//   log_threshold [d_sae]   JumpReLU only (θ = exp(log_threshold)); threshold [1] BatchTopK only
//
// Forward:
//   1. x_in  = x − b_dec  (if apply_b_dec_to_input; needs d_in = d_out)
//   2. pre   = x_in·W_enc + b_enc
//   3. acts  = f(pre)                    (SaeActivation)
//   4. recon = acts·W_dec + b_dec (+ x·W_skip)
//   5. loss  = Σ_d (recon − target)² / batch + sparsity(acts)
using System.Numerics.Tensors;
using Loupe.Tensors.Kernels;

namespace Loupe.Dictionaries.Sae;

/// <summary>Shapes and options of a dictionary.</summary>
public sealed record SaeShape(int DIn, int DSae, int DOut, bool ApplyBDecToInput, bool Skip)
{
    public static SaeShape Sae(int dIn, int dSae, bool applyBDecToInput = true) => new(dIn, dSae, dIn, applyBDecToInput, false);
    public static SaeShape Transcoder(int dIn, int dSae, int dOut, bool skip = false) => new(dIn, dSae, dOut, false, skip);
}

/// <summary>Parameter (or gradient) buffers of a dictionary, row-major.</summary>
public sealed class SaeParameters
{
    public SaeParameters(SaeShape s)
    {
        if (s.DIn <= 0 || s.DSae <= 0 || s.DOut <= 0) throw new ArgumentException($"dimensions must be positive: {s}");
        if (s.ApplyBDecToInput && s.DIn != s.DOut) throw new ArgumentException("apply_b_dec_to_input needs d_in == d_out");
        // Sizes reach here from files and arguments: a product past one array is refused, never wrapped around.
        Check.Product("dictionary shape", "W_enc [d_in, d_sae]", Check.MaxArrayElements, s.DIn, s.DSae);
        Check.Product("dictionary shape", "W_dec [d_sae, d_out]", Check.MaxArrayElements, s.DSae, s.DOut);
        if (s.Skip) Check.Product("dictionary shape", "W_skip [d_in, d_out]", Check.MaxArrayElements, s.DIn, s.DOut);
        Shape = s;
        WEnc = new float[s.DIn * s.DSae];
        BEnc = new float[s.DSae];
        WDec = new float[s.DSae * s.DOut];
        BDec = new float[s.DOut];
        WSkip = s.Skip ? new float[s.DIn * s.DOut] : [];
        LogThreshold = new float[s.DSae];
        Threshold = [-1f];
    }

    public SaeShape Shape { get; }
    public int DOut => Shape.DOut;
    public float[] WEnc { get; }          // [d_in, d_sae]
    public float[] BEnc { get; }          // [d_sae]
    public float[] WDec { get; }          // [d_sae, d_out]
    public float[] BDec { get; }          // [d_out]
    public float[] WSkip { get; }         // [d_in, d_out] or empty
    public float[] LogThreshold { get; }  // [d_sae] JumpReLU
    public float[] Threshold { get; }     // [1] BatchTopK inference threshold (−1 until learned; not trained by gradient)

    /// <summary>The trainable tensors, by SAELens name (threshold excluded: it is a running statistic).</summary>
    public IEnumerable<(string Name, float[] Data)> Trainable(SaeActivation act)
    {
        yield return ("W_enc", WEnc);
        yield return ("b_enc", BEnc);
        yield return ("W_dec", WDec);
        yield return ("b_dec", BDec);
        if (Shape.Skip) yield return ("W_skip", WSkip);
        if (act is JumpReluActivation) yield return ("log_threshold", LogThreshold);
    }

    public void Clear()
    {
        foreach (var a in new[] { WEnc, BEnc, WDec, BDec, WSkip, LogThreshold }) Array.Clear(a);
    }

    /// <summary>Copies every buffer (thresholds included) into <paramref name="into"/>, of the same shape.</summary>
    public void CopyTo(SaeParameters into)
    {
        ArgumentNullException.ThrowIfNull(into);
        if (into.Shape != Shape) throw new ArgumentException($"shape {into.Shape}, expected {Shape}", nameof(into));
        WEnc.CopyTo(into.WEnc, 0); BEnc.CopyTo(into.BEnc, 0); WDec.CopyTo(into.WDec, 0); BDec.CopyTo(into.BDec, 0);
        WSkip.CopyTo(into.WSkip, 0); LogThreshold.CopyTo(into.LogThreshold, 0); Threshold.CopyTo(into.Threshold, 0);
    }
}

/// <summary>Result of a forward pass on one batch.</summary>
/// <remarks><paramref name="MatryoshkaMse"/>: the inner levels' reconstruction losses of a Matryoshka SAE (in <paramref name="Loss"/>; 0 otherwise).</remarks>
public sealed record SaeLoss(float Loss, float Mse, float Sparsity, float L0, float ExplainedVariance, float AuxK = 0, float MatryoshkaMse = 0);

/// <summary>
/// A sparse autoencoder or (skip-)transcoder: a linear encoder, an <see cref="SaeActivation"/>, a linear
/// decoder. Architectures differ only in the activation.
/// </summary>
public sealed class SparseDictionary
{
    public SparseDictionary(SaeShape shape, SaeActivation activation)
    {
        Activation = activation ?? throw new ArgumentNullException(nameof(activation));
        P = new SaeParameters(shape);
    }

    public SaeShape Shape => P.Shape;
    public SaeActivation Activation { get; }
    public SaeParameters P { get; }
    public string Architecture => Activation.Architecture;

    /// <summary>
    /// SAELens-style initialisation: W_dec rows random with norm <paramref name="decoderNorm"/>,
    /// W_enc = W_decᵀ (for a transcoder: random, same scale), biases 0, JumpReLU θ = <paramref name="initThreshold"/>.
    /// </summary>
    public void Initialize(int seed, float decoderNorm = 0.1f, float initThreshold = 0.001f)
    {
        var rng = new Random(seed);
        var (dIn, dSae, dOut) = (Shape.DIn, Shape.DSae, Shape.DOut);
        for (int i = 0; i < dSae; i++)
        {
            var row = P.WDec.AsSpan(i * dOut, dOut);
            for (int j = 0; j < dOut; j++) row[j] = Gaussian(rng);
            TensorPrimitives.Multiply(row, decoderNorm / TensorPrimitives.Norm(row), row);
        }
        if (dIn == dOut)
            for (int i = 0; i < dSae; i++)
                for (int j = 0; j < dIn; j++) P.WEnc[j * dSae + i] = P.WDec[i * dOut + j];
        else
            for (int i = 0; i < P.WEnc.Length; i++) P.WEnc[i] = Gaussian(rng) * decoderNorm / MathF.Sqrt(dIn);
        Array.Clear(P.BEnc);
        Array.Clear(P.BDec);
        Array.Fill(P.LogThreshold, MathF.Log(initThreshold));
    }

    internal static float Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }

    /// <summary>pre = (x − b_dec if apply_b_dec_to_input)·W_enc + b_enc. x [batch, d_in] → pre [batch, d_sae].</summary>
    public void EncodePre(ReadOnlySpan<float> x, int batch, Span<float> xIn, Span<float> pre)
    {
        int dIn = Shape.DIn, dSae = Shape.DSae;
        if (x.Length < batch * dIn) throw new ArgumentException($"x has {x.Length} floats, expected batch·d_in = {batch * dIn}");
        x[..(batch * dIn)].CopyTo(xIn);
        if (Shape.ApplyBDecToInput)
            for (int b = 0; b < batch; b++) TensorPrimitives.Subtract(xIn.Slice(b * dIn, dIn), P.BDec, xIn.Slice(b * dIn, dIn));
        for (int b = 0; b < batch; b++) P.BEnc.CopyTo(pre.Slice(b * dSae, dSae));
        Gemm.Sgemm(false, false, batch, dSae, dIn, 1f, xIn, dIn, P.WEnc, dSae, 1f, pre, dSae);
    }

    /// <summary>Feature activations (inference mode). x [batch, d_in] → acts [batch, d_sae].</summary>
    public float[] Encode(ReadOnlySpan<float> x, int batch)
    {
        var xIn = new float[batch * Shape.DIn];
        var pre = new float[batch * Shape.DSae];
        var acts = new float[batch * Shape.DSae];
        EncodePre(x, batch, xIn, pre);
        Activation.Forward(pre, acts, batch, Shape.DSae, training: false, P);
        return acts;
    }

    /// <summary>recon = acts·W_dec + b_dec (+ x·W_skip). acts [batch, d_sae] → recon [batch, d_out].</summary>
    public void Decode(ReadOnlySpan<float> acts, ReadOnlySpan<float> x, int batch, Span<float> recon)
    {
        int dIn = Shape.DIn, dSae = Shape.DSae, dOut = Shape.DOut;
        for (int b = 0; b < batch; b++) P.BDec.CopyTo(recon.Slice(b * dOut, dOut));
        Gemm.Sgemm(false, false, batch, dOut, dSae, 1f, acts, dSae, P.WDec, dOut, 1f, recon, dOut);
        if (Shape.Skip) Gemm.Sgemm(false, false, batch, dOut, dIn, 1f, x, dIn, P.WSkip, dOut, 1f, recon, dOut);
    }

    /// <summary>Reconstruction of <paramref name="x"/> (inference mode). → [batch, d_out].</summary>
    public float[] Forward(ReadOnlySpan<float> x, int batch)
    {
        var acts = Encode(x, batch);
        var recon = new float[batch * Shape.DOut];
        Decode(acts, x, batch, recon);
        return recon;
    }

    /// <summary>
    /// Loss on one batch, and when <paramref name="grad"/> is not null its gradient w.r.t. every trainable
    /// parameter (written, not accumulated). target = x for an SAE.
    /// </summary>
    /// <remarks>
    /// With <paramref name="deadFeatures"/> and <paramref name="auxKCoefficient"/> &gt; 0, adds TopK's auxiliary
    /// loss (Gao et al. 2024) for activations with <see cref="SaeActivation.SupportsAuxK"/>; see <see cref="AuxK"/>.
    /// <paramref name="firesOut"/> [d_sae], when given, receives how many rows each feature fired on.
    /// When at most <see cref="SparseDensity"/> of the activations are nonzero, the decoder products run on the
    /// sparse rows (batch·L0·d instead of batch·d_sae·d); only the encoder products stay dense GEMMs.
    /// Reuses internal buffers between calls: not safe to call concurrently on one dictionary.
    /// </remarks>
    public SaeLoss ForwardBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> target, int batch, float sparsityCoefficient,
        SaeParameters? grad, bool training = true, Span<float> actsOut = default,
        ReadOnlySpan<bool> deadFeatures = default, float auxKCoefficient = 0, Span<int> firesOut = default)
    {
        int dIn = Shape.DIn, dSae = Shape.DSae, dOut = Shape.DOut;
        if (batch <= 0) throw new ArgumentOutOfRangeException(nameof(batch));
        if (target.Length < batch * dOut) throw new ArgumentException($"target has {target.Length} floats, expected batch·d_out = {batch * dOut}");
        var w = WorkspaceFor(batch);
        long t0 = s_debug ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        void Mark(string what)
        {
            if (!s_debug) return;
            long now = System.Diagnostics.Stopwatch.GetTimestamp();
            Console.Error.WriteLine($"[loupe] sae {what,-22} [{batch}, {dSae}] +{(now - t0) * 1000.0 / System.Diagnostics.Stopwatch.Frequency:F3} ms");
            t0 = now;
        }
        float[] xIn = w.XIn, pre = w.Pre, acts = w.Acts, err = w.Err; // [batch, d_in], [batch, d_sae] ×2, [batch, d_out] recon − target
        EncodePre(x, batch, xIn, pre);
        Mark("encode GEMM");
        Activation.Forward(pre, acts, batch, dSae, training, P);
        Mark("activation");
        long nnz = SparseRows.CountNonzero(acts, batch, dSae, w.RowCounts);
        bool sparse = nnz <= SparseDensity * batch * (double)dSae;
        if (sparse) w.Rows.Build(acts, batch, dSae, w.RowCounts);
        Mark("sparse rows");

        // recon = acts·W_dec + b_dec (+ x·W_skip), written into err then − target
        for (int b = 0; b < batch; b++) P.BDec.CopyTo(err.AsSpan(b * dOut, dOut));
        if (sparse) w.Rows.MultiplyAdd(P.WDec, dOut, err);
        else Gemm.Sgemm(false, false, batch, dOut, dSae, 1f, acts, dSae, P.WDec, dOut, 1f, err, dOut);
        if (Shape.Skip) Gemm.Sgemm(false, false, batch, dOut, dIn, 1f, x, dIn, P.WSkip, dOut, 1f, err, dOut);
        TensorPrimitives.Subtract(err, target[..(batch * dOut)], err);
        Mark("decode");

        // mse = Σ_b Σ_d err² / batch
        float mse = TensorPrimitives.SumOfSquares(err) / batch;
        float l0 = (float)nnz / batch;
        float ev = ExplainedVariance(err, target, batch, dOut);
        Mark("metrics");
        if (!firesOut.IsEmpty)
        {
            firesOut[..dSae].Clear();
            if (sparse) w.Rows.CountFires(firesOut);
            else for (int b = 0; b < batch; b++) for (int i = 0; i < dSae; i++) if (acts[b * dSae + i] != 0) firesOut[i]++;
        }

        // With a TopK-like activation (gradient only where active, no sparsity penalty) on sparse rows the
        // whole backward runs on the active entries: no dense [batch, d_sae] gradient buffer is touched.
        bool fullySparse = grad is not null && sparse && Activation.GradientOnlyWhereActive && !Activation.HasSparsityPenalty;
        float[] dActs = w.DActs, dPre = w.DPre; // [batch, d_sae] each (dense path only)
        if (grad is not null)
        {
            grad.Clear();
            if (!fullySparse)
            {
                ParallelClear(dActs);
                ParallelClear(dPre);
            }
        }
        Mark("clear");
        float sparsity = Activation.Sparsity(pre, acts, batch, dSae, sparsityCoefficient, P, dActs, dPre, grad);
        Mark("sparsity");
        if (!actsOut.IsEmpty) acts.CopyTo(actsOut);
        if (training) Activation.AfterTrainingForward(acts, batch, dSae, P);
        bool withAux = auxKCoefficient > 0 && Activation.SupportsAuxK && !deadFeatures.IsEmpty;
        float aux = withAux ? AuxK(pre, err, batch, deadFeatures, auxKCoefficient, grad) : 0f;
        bool auxEntries = withAux && grad is not null && w.AuxRows.Batch == batch && w.AuxRows.Nnz > 0;
        if (auxEntries && !fullySparse)
        {
            var auxRows = w.AuxRows;
            var auxGrad = w.AuxGrad;
            for (int b = 0; b < batch; b++)
                for (int j = auxRows.RowStart[b]; j < auxRows.RowStart[b + 1]; j++) dPre[b * dSae + auxRows.Col[j]] += auxGrad[j];
        }
        Mark("aux-k");
        // Matryoshka: the inner levels' losses, and with a gradient, the decoder backward level by level (below)
        var matryoshka = Activation as MatryoshkaBatchTopKActivation;
        float[]? dPreEntries = fullySparse ? w.EntryBuffer(w.Rows.Nnz) : null;
        float[] dRecon = err;
        float inner = 0;
        if (matryoshka is not null) (inner, dRecon) = MatryoshkaLevels(matryoshka.Widths, w, batch, sparse, grad, fullySparse, dPreEntries);
        var result = new SaeLoss(mse + sparsity + aux + inner, mse, sparsity, l0, ev, aux, inner);
        if (grad is null) return result;

        if (matryoshka is null)
        {
            // d mse / d recon = 2·err / batch
            TensorPrimitives.Multiply(dRecon, 2f / batch, dRecon);
            DecoderBackward(w, 0, dSae, dRecon, batch, sparse, fullySparse, grad, dPreEntries);
        }
        // recon = acts·W_dec + b_dec + x·W_skip
        if (fullySparse)
        {
            Mark("decoder backward");
            // pre = x_in·W_enc + b_enc  ⇒  dW_encᵀ[i] = Σ_b dPre[b,i]·x_in[b], db_enc[i] = Σ_b dPre[b,i]  (feature-major, then transposed)
            var wEncT = w.EncoderGradientT(Shape);
            ParallelClear(wEncT);
            w.Rows.AccumulateOuter(xIn, dIn, wEncT, dPreEntries, grad.BEnc);
            if (auxEntries) w.AuxRows.AccumulateOuter(xIn, dIn, wEncT, w.AuxGrad, grad.BEnc);
            Transpose(wEncT, dSae, dIn, grad.WEnc);
            Mark("sparse dW_enc");
        }
        ColumnSum(dRecon, batch, dOut, grad.BDec);
        if (Shape.Skip) Gemm.Sgemm(true, false, dIn, dOut, batch, 1f, x, dIn, dRecon, dOut, 0f, grad.WSkip, dOut);
        if (!fullySparse)
        {
            Mark("decoder backward");
            // acts = f(pre)
            Activation.Backward(pre, acts, dActs, dPre, batch, dSae, P, grad);
            Mark("activation backward");
            // pre = x_in·W_enc + b_enc
            Gemm.Sgemm(true, false, dIn, dSae, batch, 1f, xIn, dIn, dPre, dSae, 0f, grad.WEnc, dSae);
            Mark("dW_enc GEMM");
            ColumnSum(dPre, batch, dSae, grad.BEnc);
        }
        // x_in = x − b_dec  ⇒  db_dec −= Σ_b dPre[b]·W_encᵀ = W_enc·(Σ_b dPre[b]) = W_enc·db_enc
        if (Shape.ApplyBDecToInput)
        {
            var dXInSum = new float[dIn]; // [d_in]
            Gemm.Sgemm(false, false, dIn, 1, dSae, 1f, P.WEnc, dSae, grad.BEnc, 1, 0f, dXInSum, 1);
            TensorPrimitives.Subtract(grad.BDec, dXInSum, grad.BDec);
        }
        return result;
    }

    // The decoder's backward for features [c0, c1), whose reconstructions all receive the gradient dRecon [batch, d_out]:
    // dW_dec[c0..c1) += actsᵀ·dRecon and d acts[:, c0..c1) += dRecon·W_dec[c0..c1)ᵀ — on the sparse entries (into
    // dPreEntries when the whole backward is sparse, else scattered into DActs) or as GEMMs on the column slice.
    void DecoderBackward(Workspace w, int c0, int c1, float[] dRecon, int batch, bool sparse, bool fullySparse, SaeParameters grad, float[]? dPreEntries)
    {
        int dSae = Shape.DSae, dOut = Shape.DOut;
        if (fullySparse)
        {
            w.Rows.AccumulateOuter(dRecon, dOut, grad.WDec, columns: (c0, c1));                      // dW_dec += actsᵀ·dRecon
            w.Rows.DotWithRows(P.WDec, dOut, dRecon, dPreEntries!, (c0, c1));                       // dPre = dRecon·W_decᵀ where active
        }
        else if (sparse && Activation.GradientOnlyWhereActive)
        {
            w.Rows.AccumulateOuter(dRecon, dOut, grad.WDec, columns: (c0, c1));
            var dots = w.EntryBuffer(w.Rows.Nnz);
            w.Rows.DotWithRows(P.WDec, dOut, dRecon, dots, (c0, c1));                                // dActs += dRecon·W_decᵀ where active
            var rows = w.Rows;
            var dActs = w.DActs;
            RowParallel.For(batch, Math.Max(1, rows.Nnz / batch), b =>
            {
                for (int j = rows.RowStart[b]; j < rows.RowStart[b + 1]; j++)
                    if (rows.Col[j] >= c0 && rows.Col[j] < c1) dActs[b * dSae + rows.Col[j]] += dots[j];
            });
        }
        else
        {
            int n = c1 - c0;
            Gemm.Sgemm(true, false, n, dOut, batch, 1f, w.Acts.AsSpan(c0), dSae, dRecon, dOut, 1f, grad.WDec.AsSpan(c0 * dOut), dOut);  // dW_dec += actsᵀ·dRecon
            Gemm.Sgemm(false, true, batch, n, dOut, 1f, dRecon, dOut, P.WDec.AsSpan(c0 * dOut), dOut, 1f, w.DActs.AsSpan(c0), dSae);  // dActs += dRecon·W_decᵀ
        }
    }

    // Matryoshka levels, outermost first. Level j reconstructs from the features [0, w_j): its error is
    // e_j = e_{j+1} − acts[:, w_j..w_{j+1})·W_dec[w_j..w_{j+1}) (e_outer = err, so b_dec and W_skip are in every level),
    // and adds Σ e_j² / batch to the loss. A feature in level g's group [w_{g−1}, w_g) appears in every level j ≥ g, so its
    // gradient reads D_g = Σ_{j ≥ g} 2·e_j / batch, accumulated going inwards; b_dec and W_skip read D_0. Returns the inner
    // levels' loss and D_0 (in err's buffer, as the gradient of every reconstruction); err is left as D_0 when a gradient
    // is asked for, else unchanged.
    (float Inner, float[] DRecon) MatryoshkaLevels(IReadOnlyList<int> widths, Workspace w, int batch, bool sparse, SaeParameters? grad,
        bool fullySparse, float[]? dPreEntries)
    {
        int dSae = Shape.DSae, dOut = Shape.DOut;
        if (widths[^1] != dSae) throw new InvalidOperationException($"the matryoshka widths end at {widths[^1]}, not d_sae = {dSae}");
        float[] err = w.Err;
        float[] e = w.LevelError(batch * dOut);
        err.AsSpan(0, batch * dOut).CopyTo(e);
        var d = err;            // D, in place of err: err is not needed once e holds it
        if (grad is not null) TensorPrimitives.Multiply(d, 2f / batch, d);
        double inner = 0;
        for (int g = widths.Count - 1; g >= 0; g--)
        {
            int c0 = g == 0 ? 0 : widths[g - 1], c1 = widths[g];
            if (g < widths.Count - 1)
            {
                inner += TensorPrimitives.SumOfSquares(e.AsSpan(0, batch * dOut));
                if (grad is not null) TensorPrimitives.MultiplyAdd(e.AsSpan(0, batch * dOut), 2f / batch, d, d);
            }
            if (grad is not null) DecoderBackward(w, c0, c1, d, batch, sparse, fullySparse, grad, dPreEntries);
            if (g == 0) break;
            // e ← e − acts[:, c0..c1)·W_dec[c0..c1): the next level inwards lacks this group
            if (sparse) w.Rows.MultiplyAdd(P.WDec, dOut, e, -1f, (c0, c1));
            else Gemm.Sgemm(false, false, batch, dOut, c1 - c0, -1f, w.Acts.AsSpan(c0), dSae, P.WDec.AsSpan(c0 * dOut), dOut, 1f, e, dOut);
        }
        return ((float)(inner / batch), d);
    }

    /// <summary>
    /// Largest fraction of nonzero activations for which the decoder products run on sparse rows (default 0.05;
    /// 0 forces dense GEMMs, 1 forces the sparse path). Both paths compute the same quantities.
    /// </summary>
    public double SparseDensity { get; set; } = 0.05;

    /// <summary>into[j] += Σ_b m[b, j] (columns split among threads; each sums its rows in order).</summary>
    static void ColumnSum(float[] m, int rows, int cols, float[] into)
    {
        const int Block = 1024;
        int blocks = (cols + Block - 1) / Block;
        RowParallel.For(blocks, rows * Math.Min(Block, cols), blk =>
        {
            int c0 = blk * Block, n = Math.Min(Block, cols - c0);
            var dst = into.AsSpan(c0, n);
            for (int b = 0; b < rows; b++) TensorPrimitives.Add(dst, m.AsSpan(b * cols + c0, n), dst);
        });
    }

    // dst[c, r] = src[r, c] for src [rows, cols], in cache-sized tiles (tile rows in parallel)
    static void Transpose(float[] src, int rows, int cols, float[] dst)
    {
        const int Tile = 64;
        int tiles = (rows + Tile - 1) / Tile;
        RowParallel.For(tiles, Tile * cols, t =>
        {
            int r0 = t * Tile, r1 = Math.Min(rows, r0 + Tile);
            for (int c0 = 0; c0 < cols; c0 += Tile)
            {
                int c1 = Math.Min(cols, c0 + Tile);
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++) dst[c * rows + r] = src[r * cols + c];
            }
        });
    }

    static void ParallelClear(float[] a) => RowParallel.Chunks(a.Length, (s, e) => Array.Clear(a, (int)s, (int)(e - s)), 1 << 18);

    sealed class Workspace(int batch, SaeShape s)
    {
        public readonly int Batch = batch;
        public readonly float[] XIn = new float[batch * s.DIn];     // [batch, d_in]
        public readonly float[] Pre = new float[batch * s.DSae];    // [batch, d_sae]
        public readonly float[] Acts = new float[batch * s.DSae];   // [batch, d_sae]
        public readonly float[] DActs = new float[batch * s.DSae];  // [batch, d_sae]
        public readonly float[] DPre = new float[batch * s.DSae];   // [batch, d_sae]
        public readonly float[] Err = new float[batch * s.DOut];    // [batch, d_out]
        public readonly int[] RowCounts = new int[batch];           // [batch] nonzeros per row
        public readonly SparseRows Rows = new();
        public readonly SparseRows AuxRows = new();
        public float[] AuxGrad = [];                                  // [aux nnz] d loss / d z_aux at each aux entry
        float[]? _encT;
        public float[] EncoderGradientT(SaeShape s) => _encT ??= new float[s.DSae * s.DIn]; // [d_sae, d_in]
        float[] _entries = [];
        public float[] EntryBuffer(int n) => _entries.Length >= n ? _entries : _entries = new float[n];
        float[] _levelError = [];
        public float[] LevelError(int n) => _levelError.Length >= n ? _levelError : _levelError = new float[n];   // [batch, d_out] Matryoshka
    }

    static readonly bool s_debug = Environment.GetEnvironmentVariable("LOUPE_DEBUG") == "1";
    Workspace? _workspace;
    Workspace WorkspaceFor(int batch) => _workspace is { } w && w.Batch == batch ? w : _workspace = new Workspace(batch, Shape);

    /// <summary>
    /// Folds an input scaling x' = c·x used in training into the weights, so the dictionary takes raw x
    /// and returns raw-scale reconstructions (SAELens's fold_activation_norm_scaling_factor):
    /// W_enc ← c·W_enc, W_dec ← W_dec / c, b_dec ← b_dec / c. Pre-activations (and thresholds) are unchanged.
    /// For a transcoder this assumes targets were scaled by the same c.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="c"/> is not finite and positive.</exception>
    public void FoldInputScaling(float c)
    {
        if (!(c > 0) || !float.IsFinite(c)) throw new ArgumentOutOfRangeException(nameof(c), c, "scaling factor must be finite and positive");
        TensorPrimitives.Multiply(P.WEnc, c, P.WEnc);
        TensorPrimitives.Multiply(P.WDec, 1 / c, P.WDec);
        TensorPrimitives.Multiply(P.BDec, 1 / c, P.BDec);
    }

    /// <summary>
    /// TopK auxiliary loss, as SAELens: e = target − recon (detached), z_aux = the k_aux = d_in/2 largest
    /// ReLU'd pre-activations among dead features, ê = z_aux·W_dec (no bias),
    /// L_aux = coefficient · min(n_dead / k_aux, 1) · Σ_d (ê − e)² / batch.
    /// Gradient into W_dec rows of dead features and, through dPre, into the encoder.
    /// </summary>
    float AuxK(ReadOnlySpan<float> pre, ReadOnlySpan<float> err, int batch, ReadOnlySpan<bool> dead, float coefficient,
        SaeParameters? grad)
    {
        _workspace!.AuxRows.Batch = 0; // no aux entries unless built below
        int dSae = Shape.DSae, dOut = Shape.DOut, kNominal = Math.Max(1, Shape.DIn / 2);
        var deadIdx = new List<int>();
        for (int i = 0; i < dSae; i++) if (dead[i]) deadIdx.Add(i);
        if (deadIdx.Count == 0) return 0f;
        int kAux = Math.Min(kNominal, deadIdx.Count);
        float scale = coefficient * Math.Min((float)deadIdx.Count / kNominal, 1f);
        var dIdx = deadIdx.ToArray();
        // z_aux as sparse rows: per row the k_aux largest dead pre-activations, ReLU'd (zeros dropped)
        var picked = new int[batch * kAux];     // [batch, k_aux] feature index, −1 when ReLU'd to 0
        var pickedVal = new float[batch * kAux];
        var counts = new int[batch];
        var preArr = _workspace!.Pre;
        RowParallel.For(batch, dIdx.Length, b =>
        {
            var keys = new float[dIdx.Length];
            for (int j = 0; j < dIdx.Length; j++) keys[j] = preArr[b * dSae + dIdx[j]];
            Span<int> top = kAux <= 1024 ? stackalloc int[kAux] : new int[kAux];
            int n = TopKSelection.Largest(keys, kAux, top);
            top[..n].Sort();
            int c = 0;
            for (int r = 0; r < n; r++)
            {
                float v = keys[top[r]];
                if (v > 0) { picked[b * kAux + c] = dIdx[top[r]]; pickedVal[b * kAux + c] = v; c++; }
            }
            counts[b] = c;
        });
        var aux = _workspace.AuxRows;
        aux.Batch = batch;
        aux.Width = dSae;
        if (aux.RowStart.Length < batch + 1) aux.RowStart = new int[batch + 1];
        for (int b = 0; b < batch; b++) aux.RowStart[b + 1] = aux.RowStart[b] + counts[b];
        if (aux.Col.Length < aux.Nnz) { aux.Col = new int[aux.Nnz]; aux.Val = new float[aux.Nnz]; }
        for (int b = 0; b < batch; b++)
        {
            Array.Copy(picked, b * kAux, aux.Col, aux.RowStart[b], counts[b]);
            Array.Copy(pickedVal, b * kAux, aux.Val, aux.RowStart[b], counts[b]);
        }
        // diff = ê − e = z_aux·W_dec + err   (e = −err)
        var diff = new float[batch * dOut];    // [batch, d_out]
        err[..(batch * dOut)].CopyTo(diff);
        aux.MultiplyAdd(P.WDec, dOut, diff);
        float loss = scale * TensorPrimitives.SumOfSquares(diff) / batch;
        if (grad is null) return loss;
        // L_aux = scale·Σ diff² / batch  ⇒  dê = 2·scale·diff / batch
        TensorPrimitives.Multiply(diff, 2f * scale / batch, diff);
        aux.AccumulateOuter(diff, dOut, grad.WDec);                      // dW_dec += z_auxᵀ·dê
        if (_workspace.AuxGrad.Length < aux.Nnz) _workspace.AuxGrad = new float[aux.Nnz];
        aux.DotWithRows(P.WDec, dOut, diff, _workspace.AuxGrad);         // d/dpre = dê·W_decᵀ where z_aux > 0 (the caller adds it to dPre)
        return loss;
    }

    /// <summary>1 − Σ err² / Σ (target − mean(target))², over the batch (SAELens's explained variance, pooled).</summary>
    internal static float ExplainedVariance(ReadOnlySpan<float> err, ReadOnlySpan<float> target, int batch, int d)
    {
        var mean = new double[d];
        for (int b = 0; b < batch; b++) for (int j = 0; j < d; j++) mean[j] += target[b * d + j];
        double tot = 0, res = 0;
        for (int b = 0; b < batch; b++)
            for (int j = 0; j < d; j++)
            {
                double c = target[b * d + j] - mean[j] / batch;
                tot += c * c;
                res += (double)err[b * d + j] * err[b * d + j];
            }
        return tot == 0 ? 0f : (float)(1 - res / tot);
    }
}
