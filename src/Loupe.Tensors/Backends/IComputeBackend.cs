using Loupe.Tensors.Kernels;

namespace Loupe.Tensors.Backends;

/// <summary>
/// Every operation the forward pass, the backward passes, the hooks, generation and dictionary
/// training use — the whole list, in one place. Operands are tensors on <see cref="Device"/>;
/// shapes are in the parameter names, buffers are row-major, offsets and strides count elements.
/// Output tensors are written, never resized; with <c>accumulate</c> the result is added to them.
/// Small integer inputs that come with the tokens (ids, positions, padding masks) are passed as
/// host spans and uploaded by the backend (counted as <see cref="TransferKind.Inputs"/>).
/// Each operation has a scalar twin in <see cref="Kernels.Reference.ReferenceKernels"/>; both
/// backends are tested against the twins.
/// </summary>
public interface IComputeBackend
{
    /// <summary>A short name ("cpu+openblas", "cuda (ILGPU + cuBLAS)", …).</summary>
    string Name { get; }

    /// <summary>Where this backend's tensors live.</summary>
    Device Device { get; }

    /// <summary>How matrix weights are kept on this device: fp32, or bf16/fp16 on a GPU chosen at creation (products accumulate in fp32).</summary>
    ElementType WeightElementType { get; }

    /// <summary>Every copy between host and device so far, by kind (the CPU backend copies nothing).</summary>
    TransferCounter Transfers { get; }

    /// <summary>Free memory on the device now, when it is known (null on the CPU and the emulated device): what sizes an upload.</summary>
    long? FreeMemoryBytes => null;

    // ---- memory ------------------------------------------------------------------------------

    /// <summary>A tensor on this device whose contents are undefined (callers overwrite every element).</summary>
    Tensor Empty(params int[] shape);

    /// <summary>A zero-filled tensor on this device.</summary>
    Tensor Zeros(params int[] shape);

    /// <summary>
    /// <paramref name="tensor"/> on this device: itself when it is already here, otherwise a copy
    /// (host→device, counted as <paramref name="kind"/>).
    /// </summary>
    Tensor ToDevice(Tensor tensor, TransferKind kind = TransferKind.Data);

    /// <summary>
    /// Weights, once at load: on the CPU a zero-copy wrap (memory-mapped files stay mapped); on a GPU
    /// an upload kept as <paramref name="keepAs"/> (bf16/fp16 weights stay 16-bit; products accumulate in fp32).
    /// </summary>
    Tensor LoadWeight(ReadOnlyMemory<float> values, int[] shape, ElementType keepAs = ElementType.F32);

    /// <summary><c>dst[r, :cols] (+)= src[r, :cols]</c> for <paramref name="rows"/> rows, each side with its own offset and row stride.</summary>
    void CopyRows(Tensor src, long srcOffset, int srcStride, Tensor dst, long dstOffset, int dstStride, int rows, int cols, bool accumulate = false);

    /// <summary>Sets every element of <paramref name="dst"/> to <paramref name="value"/>.</summary>
    void Fill(Tensor dst, float value);

    // ---- products ----------------------------------------------------------------------------

    /// <summary>
    /// <c>C = alpha·op(A)·op(B) + beta·C</c> with <c>op(A)</c> <c>[m, k]</c> and <c>op(B)</c> <c>[k, n]</c>;
    /// leading dimensions are the row strides of the stored matrices. B may be a 16-bit weight.
    /// With beta = 0, C's previous contents (even NaN) are ignored.
    /// </summary>
    void Gemm(bool transA, bool transB, int m, int n, int k, float alpha, Tensor a, long aOffset, int lda,
        Tensor b, long bOffset, int ldb, float beta, Tensor c, long cOffset, int ldc);

    /// <summary>
    /// <paramref name="batch"/> products as <see cref="Gemm"/>, the i-th at offsets
    /// <c>aOffset + i·strideA</c>, <c>bOffset + i·strideB</c>, <c>cOffset + i·strideC</c> (a stride may be 0).
    /// </summary>
    void GemmBatched(bool transA, bool transB, int m, int n, int k, float alpha, Tensor a, long aOffset, int lda, long strideA,
        Tensor b, long bOffset, int ldb, long strideB, float beta, Tensor c, long cOffset, int ldc, long strideC, int batch);

    /// <summary><c>y[rows, n] = x[rows, k]·W + bias</c>; W is <c>[k, n]</c>, or <c>[n, k]</c> when <paramref name="weightIsOutIn"/> (nn.Linear).</summary>
    void Linear(Tensor x, int rows, int k, Tensor weight, bool weightIsOutIn, int n, Tensor? bias, Tensor y);

    // ---- element-wise ------------------------------------------------------------------------

    /// <summary><c>y = a + b</c> (y may alias a or b).</summary>
    void Add(Tensor a, Tensor b, Tensor y);

    /// <summary><c>y = a ⊙ b</c> (y may alias a or b).</summary>
    void Multiply(Tensor a, Tensor b, Tensor y);

    /// <summary><c>y = a · s</c> (y may alias a).</summary>
    void Scale(Tensor a, float s, Tensor y);

    /// <summary><c>y = (a − b) ⊙ g</c>, with 0 where <c>a − b</c> is not finite (masked scores are −∞ in both runs; attribution patching).</summary>
    void DifferenceProduct(Tensor a, Tensor b, Tensor g, Tensor y);

    /// <summary><c>y[r, :] += v</c> for each of <paramref name="rows"/> rows of width <c>v.Length</c> (bias).</summary>
    void AddRowVector(Tensor y, int rows, Tensor v);

    /// <summary><c>y[o, i] (+)= Σ_m x[o, m, i]</c> over x <c>[outer, middle, inner]</c>.</summary>
    void SumMiddleAxis(Tensor x, int outer, int middle, int inner, Tensor y, bool accumulate = false);

    /// <summary>Element-wise activation by config name (relu, silu, gelu, gelu_new, …).</summary>
    void Activation(string name, Tensor x, Tensor y);

    /// <summary>Backward of an activation: <c>dx = dy ⊙ f′(x)</c>.</summary>
    void ActivationBackward(string name, Tensor x, Tensor dy, Tensor dx);

    /// <summary><c>y = cap·tanh(a/cap)</c> (logit soft-capping; y may alias a).</summary>
    void SoftCap(Tensor a, float cap, Tensor y);

    /// <summary>Backward of <see cref="SoftCap"/> from its output: <c>dx = dy·(1 − (y/cap)²)</c>; non-finite y (masked −∞) gives 0.</summary>
    void SoftCapBackward(Tensor capped, Tensor dy, float cap, Tensor dx);

    // ---- normalization -----------------------------------------------------------------------

    /// <summary>
    /// LayerNorm (<paramref name="center"/>) or RMSNorm of x <c>[rows, d]</c>:
    /// <c>c = x − mean(x)</c> or <c>x</c>; <c>σ = sqrt(mean(c²) + eps)</c> into <paramref name="scale"/> <c>[rows]</c>;
    /// <c>y = c/σ · (w + weightOffset) + b</c>. Absent weight = 1, absent bias = 0.
    /// </summary>
    void Norm(bool center, Tensor x, int rows, int d, Tensor? weight, float weightOffset, Tensor? bias, float eps, Tensor y, Tensor scale);

    /// <summary><see cref="Norm"/>'s output with a given <paramref name="scale"/> (a hooked hook_scale) instead of the computed σ.</summary>
    void NormWithScale(bool center, Tensor x, int rows, int d, Tensor? weight, float weightOffset, Tensor? bias, Tensor scale, Tensor y);

    /// <summary>Backward of <see cref="Norm"/> to the scale: <c>dσ[r] = −Σᵢ dy·w_eff·ĉ / σ</c> with <c>ĉ = c/σ</c>.</summary>
    void NormBackwardScale(bool center, Tensor x, Tensor scale, Tensor dy, int rows, int d, Tensor? weight, float weightOffset, Tensor dScale);

    /// <summary>
    /// Backward of <see cref="Norm"/> to the input, given d scale (possibly hooked):
    /// <c>dc = dy·w_eff/σ + dσ·(c/σ)/d</c>; LayerNorm then subtracts the row mean of dc.
    /// </summary>
    void NormBackwardInput(bool center, Tensor x, Tensor scale, Tensor dy, Tensor dScale, int rows, int d, Tensor? weight, float weightOffset, Tensor dx);

    // ---- softmax and reductions --------------------------------------------------------------

    /// <summary>Row-wise softmax of x <c>[rows, n]</c>; −∞ gets 0, an all −∞ row becomes zeros.</summary>
    void SoftmaxRows(Tensor x, int rows, int n, Tensor y);

    /// <summary>Backward of <see cref="SoftmaxRows"/>: <c>dx = p ⊙ (dp − Σⱼ p·dp)</c> per row.</summary>
    void SoftmaxBackwardRows(Tensor p, Tensor dp, int rows, int n, Tensor dx);

    /// <summary>Row-wise log-softmax of x <c>[rows, n]</c> (max-subtracted).</summary>
    void LogSoftmaxRows(Tensor x, int rows, int n, Tensor y);

    /// <summary>
    /// Per row of logits <c>[rows, n]</c>: <c>loss[r] = −log softmax(x[r])[target[r]]</c> into <paramref name="loss"/> <c>[rows]</c>,
    /// and when <paramref name="dLogits"/> is given, <c>d loss[r] · weight / d x[r] = (softmax(x[r]) − onehot) · weight</c>.
    /// Targets below 0 are ignored (loss 0, gradient 0).
    /// </summary>
    void CrossEntropyRows(Tensor logits, int rows, int n, ReadOnlySpan<int> targets, Tensor loss, Tensor? dLogits, float weight);

    /// <summary>Sum of all elements (double accumulation), read back to the host (counted as <see cref="TransferKind.Scalars"/>).</summary>
    double Sum(Tensor x);

    /// <summary>Index of the largest element of each row of x <c>[rows, n]</c> (first on ties), read back to the host.</summary>
    int[] ArgMaxRows(Tensor x, int rows, int n);

    /// <summary>
    /// The index of the first NaN or ±∞ in x (−∞ allowed when <paramref name="allowNegativeInfinity"/>),
    /// or −1; read back to the host (counted as <see cref="TransferKind.Scalars"/>).
    /// </summary>
    long IndexOfNonFinite(Tensor x, bool allowNegativeInfinity = false);

    /// <summary>
    /// Top-k of each row of x <c>[rows, n]</c> by value (largest first; ties to the lower index):
    /// values into <paramref name="values"/> <c>[rows, k]</c>, column indices (as floats, exact below 2²⁴) into <paramref name="indices"/>.
    /// </summary>
    void TopKRows(Tensor x, int rows, int n, int k, Tensor values, Tensor indices);

    /// <summary>
    /// Inverse of <see cref="TopKRows"/>'s gather: <paramref name="dense"/> <c>[rows, n]</c> becomes zero except
    /// <c>dense[r, indices[r, j]] = values[r, j]</c> for <c>j &lt; k</c>. Indices are floats as <see cref="TopKRows"/>
    /// writes them, distinct within a row and in <c>[0, n)</c> (the CPU refuses others; a GPU skips them).
    /// </summary>
    void ScatterRows(Tensor values, Tensor indices, int rows, int k, int n, Tensor dense);

    // ---- positions and attention -------------------------------------------------------------

    /// <summary>
    /// Rotary embedding of x <c>[rows, heads, headDim]</c> in place (or its inverse, the backward);
    /// row r at position <c>positions[r]</c>.
    /// </summary>
    void Rotary(RotaryTable table, Tensor x, int rows, int heads, int headDim, ReadOnlySpan<int> positions, bool inverse = false);

    /// <summary>
    /// Masked scores <c>[batch, head, query_pos, key_pos]</c> = scale·q·kᵀ, soft-capped, masked to −∞.
    /// q is <c>[batch, query_pos, head, d_head]</c>; k is <c>[batch, key_pos, kv_head, d_head]</c>, or a KV cache
    /// whose batch rows hold <see cref="AttentionShape.KeyCapacity"/> positions.
    /// </summary>
    void AttentionScores(Tensor q, Tensor k, AttentionShape shape, float scale, AttentionMask mask, Tensor scores);

    /// <summary><c>z[b, q, h, :] = Σ_k pattern[b, h, q, k] · v[b, k, h/group, :]</c>.</summary>
    void AttentionApply(Tensor pattern, Tensor v, AttentionShape shape, Tensor z);

    /// <summary>
    /// Backward of <see cref="AttentionApply"/> (no KV cache): <c>dPattern = dz·vᵀ</c> per head and
    /// <c>dv (written) = Σ over the heads sharing a kv head of patternᵀ·dz</c>.
    /// </summary>
    void AttentionApplyBackward(Tensor dz, Tensor pattern, Tensor v, AttentionShape shape, Tensor dPattern, Tensor dv);

    /// <summary>
    /// Backward of the raw scores <c>scale·q·kᵀ</c> (no KV cache): <c>dq = scale·dRaw·k</c>,
    /// <c>dk (written) = Σ over the heads sharing a kv head of scale·dRawᵀ·q</c>.
    /// </summary>
    void AttentionScoresBackward(Tensor dRaw, Tensor q, Tensor k, AttentionShape shape, float scale, Tensor dq, Tensor dk);

    // ---- embeddings --------------------------------------------------------------------------

    /// <summary><c>y[i, :] = table[ids[i], :] · scale</c> for a table <c>[vocab, d]</c>.</summary>
    void Embedding(Tensor table, int d, ReadOnlySpan<int> ids, float scale, Tensor y);

    /// <summary>
    /// <c>y[r, j] = x[r, columns[j]]</c> for x <c>[rows, n]</c> and y <c>[rows, columns.Length]</c>: a few features' columns
    /// out of a wide activation matrix (a cross-layer transcoder decoded from the active features' rows only).
    /// </summary>
    void GatherColumns(Tensor x, int rows, int n, ReadOnlySpan<int> columns, Tensor y);

    /// <summary>Backward of <see cref="Embedding"/>: <c>dTable[ids[i], :] += dy[i, :] · scale</c> (repeated ids add up).</summary>
    void EmbeddingBackward(Tensor dy, int d, ReadOnlySpan<int> ids, float scale, Tensor dTable);

    // ---- training ----------------------------------------------------------------------------

    /// <summary>
    /// One Adam step (PyTorch's formula, bias-corrected, no weight decay) over a parameter and its
    /// moments: <c>m = β₁m + (1−β₁)g</c>, <c>v = β₂v + (1−β₂)g²</c>,
    /// <c>p −= lr·(m/(1−β₁ᵗ)) / (sqrt(v/(1−β₂ᵗ)) + eps)</c>.
    /// </summary>
    void AdamStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps, int step);

    // ---- dictionary training (row norms, clipping, dead features) -----------------------------

    /// <summary>
    /// <c>y[r] = Σ_c a[r, c]·b[r, c]</c> for a and b <c>[rows, cols]</c> (summed in double), written, or added to y when
    /// <paramref name="accumulate"/>. With <c>a = b</c>: squared row norms.
    /// </summary>
    void RowDots(Tensor a, Tensor b, int rows, int cols, Tensor y, bool accumulate = false);

    /// <summary>
    /// A sparse-times-dense product with the sparse rows given as top-k entries (what <see cref="TopKRows"/> writes):
    /// <c>y[r, :] = bias + Σ_{j &lt; k} values[r, j]·w[indices[r, j], :]</c> for <c>r &lt; rows</c>, added in that order
    /// (bias first, then j = 0, 1, …: the result does not depend on scheduling). values and indices are <c>[rows, k]</c>,
    /// w is fp32 <c>[n, d]</c>, bias <c>[d]</c> (null: 0), y <c>[rows, d]</c> (written). Indices are whole floats;
    /// one outside <c>[0, n)</c> (or NaN) is skipped. The decoder of a TopK dictionary: k·d work per row instead of n·d.
    /// </summary>
    void SparseRowsTimes(Tensor values, Tensor indices, int rows, int k, Tensor w, int n, int d, Tensor? bias, Tensor y);

    /// <summary>
    /// <c>y[r, j] = Σ_c a[r, c]·w[indices[r, j], c]</c> for a <c>[rows, d]</c>, fp32 w <c>[n, d]</c>, indices and y
    /// <c>[rows, k]</c> (written); 0 where the index is outside <c>[0, n)</c> (or NaN). The gradient of
    /// <see cref="SparseRowsTimes"/> to its values: only the k entries of <c>a·wᵀ</c> a TopK step keeps.
    /// </summary>
    void RowDotsAt(Tensor a, int rows, int d, Tensor w, int n, Tensor indices, int k, Tensor y);

    /// <summary>
    /// The transpose of <see cref="SparseRowsTimes"/>'s sparse rows times a: <c>y[i, :] (+)= Σ values[r, j]·a[r, :]</c> over the
    /// entries with <c>indices[r, j] = i</c>, for y <c>[n, d]</c> (written, or added to with <paramref name="accumulate"/>),
    /// a <c>[rows, d]</c>, values and indices <c>[rows, k]</c> (whole floats; outside <c>[0, n)</c> or NaN skipped; repeats
    /// allowed). Each row of y is summed in (r, j) order: the result does not depend on scheduling. The gradient of
    /// <see cref="SparseRowsTimes"/> to w (a TopK decoder's gradient: k·d per row of a instead of n·d).
    /// <paramref name="distinctPerRow"/> is the caller's promise that no index repeats within a row (true of
    /// <see cref="TopKRows"/>'s indices): the result is the same, but a backend may skip its repeat check (on the GPU an
    /// O(k) scan per entry, which dominates at aux-k's k of ~1,000). A broken promise gives a wrong y, never a write outside it.
    /// </summary>
    void SparseRowsTransposeTimes(Tensor values, Tensor indices, int rows, int k, Tensor a, int n, int d, Tensor y, bool accumulate = false, bool distinctPerRow = false);

    /// <summary><c>y[r, c] = x[r, c]·scale[r]</c> for x <c>[rows, cols]</c> and scale <c>[rows]</c> (y may be x). One row: a scalar held on the device.</summary>
    void ScaleRows(Tensor x, int rows, int cols, Tensor scale, Tensor y);

    /// <summary>
    /// From squared norms <c>s</c>: <c>y[i] = target / √s[i]</c> where <c>√s[i] &gt; 0</c> and, when <paramref name="onlyAbove"/>,
    /// <c>√s[i] &gt; target</c>; else 1. The factor that renormalises a row to norm <paramref name="target"/>
    /// (<paramref name="onlyAbove"/> false) or clips a norm to at most it (true). y may be s.
    /// </summary>
    void NormScale(Tensor sumSquares, float target, bool onlyAbove, Tensor y);

    /// <summary>
    /// Per row of a reconstruction, from <c>xx = ‖x‖²</c>, <c>rr = ‖x̂‖²</c> and <c>dot = x·x̂</c> (each <c>[rows]</c>):
    /// <c>cosine = dot / (‖x‖·‖x̂‖)</c> (1 when both are 0, 0 when one is) and <c>ratio = ‖x̂‖ / ‖x‖</c> (‖x‖ below
    /// <paramref name="minNorm"/> counts as 1): SAELens's cosine similarity and l2 ratio, summed later.
    /// </summary>
    void ReconstructionRowStats(Tensor xx, Tensor rr, Tensor dot, float minNorm, Tensor cosine, Tensor ratio);

    /// <summary><c>y[0] = #{i : x[i] &gt; threshold}</c> (NaN never counts), written into a tensor on the device.</summary>
    void CountAbove(Tensor x, float threshold, Tensor y);

    /// <summary>
    /// Dead-feature bookkeeping of dictionary training, per feature i: <c>sinceOut[i] = fired[i] &gt; 0 ? 0 : min(since[i] + tokens, window)</c>
    /// (tokens since the feature last fired, saturated at the window: past it a feature is dead whatever the count) and
    /// <c>deadBias[i] = sinceOut[i] ≥ window ? 0 : −∞</c> (added to pre-activations, it leaves only dead features' values).
    /// sinceOut may be since.
    /// </summary>
    void UpdateSinceFired(Tensor fired, Tensor since, float tokens, float window, Tensor sinceOut, Tensor deadBias);

    /// <summary>
    /// BatchTopK's training activation over the first <paramref name="count"/> elements of x (a whole batch, flattened):
    /// <c>y = max(x, 0)</c> at the <paramref name="keep"/> largest (everything above the keep-th largest value, then ties at
    /// it in index order), 0 elsewhere; <c>minKept[0]</c> = the smallest positive kept value (+∞ when none), which the
    /// trainer folds into the inference threshold. y must not be x.
    /// </summary>
    void BatchTopK(Tensor x, int count, int keep, Tensor y, Tensor minKept);

    /// <summary>JumpReLU: <c>y[r, c] = x[r, c] &gt; θ_c ? x[r, c] : 0</c> with <c>θ_c = exp(logThreshold[c])</c> (y may be x).</summary>
    void JumpRelu(Tensor x, int rows, int cols, Tensor logThreshold, Tensor y);

    /// <summary>
    /// JumpReLU's log-threshold gradient (straight-through estimator, rectangle kernel of width ε = <paramref name="bandwidth"/>),
    /// written: with <c>θ_c = exp(logThreshold[c])</c> and <c>w = 1[|(x[r, c] − θ_c)/ε| &lt; ½]</c>,
    /// <c>grad[c] = θ_c·Σ_r w·(dY[r, c]·(−θ_c/ε) − sparsityScale/ε)</c>: the activation's term and the L0 penalty's
    /// (<paramref name="sparsityScale"/> = λ/batch).
    /// </summary>
    void JumpReluThresholdGrad(Tensor x, Tensor dY, int rows, int cols, Tensor logThreshold, float bandwidth, float sparsityScale, Tensor grad);
}

/// <summary>Sizes of one attention call.</summary>
/// <param name="Batch">Sequences.</param>
/// <param name="QueryLen">Query positions of this call.</param>
/// <param name="KeyLen">Key positions visible (cached ones included).</param>
/// <param name="Heads">Query heads.</param>
/// <param name="KvHeads">Key/value heads (grouped-query attention when fewer than <paramref name="Heads"/>).</param>
/// <param name="DHead">Dimensions per head.</param>
/// <param name="KeyCapacity">When &gt; 0, k and v are a KV cache whose batch rows hold that many positions.</param>
public readonly record struct AttentionShape(int Batch, int QueryLen, int KeyLen, int Heads, int KvHeads, int DHead, int KeyCapacity = 0)
{
    public int Group => Heads / KvHeads;
    /// <summary>Positions per batch row of k and v.</summary>
    public int KeyRows => KeyCapacity > 0 ? KeyCapacity : KeyLen;
}
