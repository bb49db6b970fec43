using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;

namespace Loupe.Models.Layers;

/// <summary>How a fused query/key/value projection lays out its output columns.</summary>
public enum FusedQkvLayout
{
    /// <summary><c>[q (H·d_head) | k | v]</c> — GPT-2's c_attn.</summary>
    Concatenated,
    /// <summary>Per head <c>[q | k | v]</c> — GPT-NeoX's query_key_value.</summary>
    HeadInterleaved,
}

/// <summary>
/// Causal self-attention with TransformerLens hook points. Shapes:
///   x        [batch, pos, d_model]
///   q, rot_q [batch, pos, head_index, d_head]         hook_q / hook_rot_q
///   k, v     [batch, pos, kv_head_index, d_head]      hook_k, hook_v / hook_rot_k
///   scores   [batch, head_index, query_pos, key_pos]  hook_attn_scores (masked entries −∞)
///   pattern  [batch, head_index, query_pos, key_pos]  hook_pattern
///   z        [batch, pos, head_index, d_head]         hook_z
///   result   [batch, pos, head_index, d_model]        hook_result (only computed when asked for)
///   output   [batch, pos, d_model]                    what the block hooks as hook_attn_out
/// </summary>
public sealed class AttentionLayer
{
    /// <summary>Separate projections (Llama, Qwen2, Gemma, TransformerLens checkpoints).</summary>
    public AttentionLayer(int layer, ModelConfig cfg, Linear q, Linear k, Linear v, Linear o, RotaryTable? rotary)
        : this(layer, cfg, o, rotary)
    {
        Q = q; K = k; V = v;
        q.Name ??= $"blocks.{layer}.attn.W_Q";
        k.Name ??= $"blocks.{layer}.attn.W_K";
        v.Name ??= $"blocks.{layer}.attn.W_V";
    }

    /// <summary>One fused projection (GPT-2, GPT-NeoX).</summary>
    public AttentionLayer(int layer, ModelConfig cfg, Linear qkv, FusedQkvLayout layout, Linear o, RotaryTable? rotary)
        : this(layer, cfg, o, rotary)
    {
        Qkv = qkv;
        Layout = layout;
        qkv.Name ??= $"blocks.{layer}.attn.W_Q/W_K/W_V (fused)";
    }

    AttentionLayer(int layer, ModelConfig cfg, Linear o, RotaryTable? rotary)
    {
        Layer = layer;
        Names = new BlockHookNames(layer);
        O = o;
        o.Name ??= $"blocks.{layer}.attn.W_O";
        Rotary = rotary;
        NHeads = cfg.NHeads;
        NKvHeads = cfg.KvHeads;
        DHead = cfg.DHead;
        Scale = cfg.AttnScale;
        SoftCap = cfg.AttnSoftCap;
        Window = cfg.IsLocal(layer) ? cfg.SlidingWindow : 0;
        ShortformerPositions = cfg.ShortformerPositions;
    }

    /// <summary>Its queries and keys read ln1(stream) + hook_pos_embed, its values ln1(stream) alone (<see cref="ModelConfig.ShortformerPositions"/>).</summary>
    public bool ShortformerPositions { get; }

    public int Layer { get; }
    public BlockHookNames Names { get; }
    public Linear? Q { get; }
    public Linear? K { get; }
    public Linear? V { get; }
    public Linear? Qkv { get; }
    public FusedQkvLayout Layout { get; }
    /// <summary>Output projection W_O: input is z flattened to <c>[head_index·d_head]</c>.</summary>
    public Linear O { get; }
    public RotaryTable? Rotary { get; }
    public int NHeads { get; }
    public int NKvHeads { get; }
    public int DHead { get; }
    public float Scale { get; }
    public float SoftCap { get; }
    public int Window { get; }
    /// <summary>Every query sees every (unpadded) key: encoders such as BERT. False: causal.</summary>
    public bool Bidirectional { get; init; }
    /// <summary>Per-head RMSNorm of q before rotary (Qwen3), or null.</summary>
    public Norm? QNorm { get; init; }
    /// <summary>Per-head RMSNorm of k before rotary (Qwen3), or null.</summary>
    public Norm? KNorm { get; init; }

    /// <summary>Keys under which TransformerLens's split (per-head) inputs keep their state for the backward pass.</summary>
    internal SplitInputKeys SplitKeys { get; } = new();

    internal sealed class SplitInputKeys
    {
        public object Q { get; } = new();
        public object K { get; } = new();
        public object V { get; } = new();
        /// <summary>ln1 of the stream itself, for the parts no one looks at per head.</summary>
        public object Shared { get; } = new();
        public object State { get; } = new();
        /// <summary>Marks a pass that added shortformer positions to the queries and keys of the unsplit inputs.</summary>
        public object Shortformer { get; } = new();
    }

    /// <summary>Runs attention on x <c>[batch, pos, d_model]</c> and returns its output <c>[batch, pos, d_model]</c>.</summary>
    public Tensor Forward(ForwardContext ctx, Tensor x)
    {
        int B = x.Dim(0), T = x.Dim(1), D = x.Dim(2), rows = B * T;
        var q = ctx.Scratch(B, T, NHeads, DHead);
        var k = ctx.Scratch(B, T, NKvHeads, DHead);
        var v = ctx.Scratch(B, T, NKvHeads, DHead);
        Project(ctx, x, rows, q, k, v);
        return Attend(ctx, q, k, v, D);
    }

    /// <summary>
    /// Runs attention on per-head inputs (TransformerLens's <c>use_split_qkv_input</c>), each already normalised:
    /// head h's query from <paramref name="queryInput"/><c>[:, :, h]</c> <c>[batch, pos, head_index, d_model]</c>, key/value head g's
    /// key and value from <paramref name="keyInput"/> and <paramref name="valueInput"/> <c>[batch, pos, kv_head_index, d_model]</c>.
    /// An input of shape <c>[batch, pos, d_model]</c> is one normalised stream every head reads (no copies: nothing looks at
    /// that input per head). With every input the normalised stream this is <see cref="Forward"/>.
    /// </summary>
    public Tensor ForwardSplit(ForwardContext ctx, Tensor queryInput, Tensor keyInput, Tensor valueInput)
    {
        int B = queryInput.Dim(0), T = queryInput.Dim(1), D = queryInput.Dim(-1), rows = B * T;
        var be = ctx.Backend;
        var q = ctx.Scratch(B, T, NHeads, DHead);
        var k = ctx.Scratch(B, T, NKvHeads, DHead);
        var v = ctx.Scratch(B, T, NKvHeads, DHead);
        foreach (var (input, output, part, heads) in new[] { (queryInput, q, 0, NHeads), (keyInput, k, 1, NKvHeads), (valueInput, v, 2, NKvHeads) })
        {
            bool shared = input.Rank == 3;
            if (shared && HeadColumnsAdjoin)
            {
                // One stream for every head: the part's whole projection at once.
                var (weight, first) = Columns(part, 0);
                weight.ForwardOutputSlice(be, input, 0, D, rows, first, heads * DHead, output, 0, heads * DHead);
                continue;
            }
            for (int h = 0; h < heads; h++)
            {
                var (w, column) = Columns(part, h);
                w.ForwardOutputSlice(be, input, shared ? 0 : (long)h * D, shared ? D : heads * D, rows, column, DHead, output, (long)h * DHead, heads * DHead);
            }
        }
        return Attend(ctx, q, k, v, D);
    }

    /// <summary>Whether each part's heads have adjacent columns in their projection (all but GPT-NeoX's head-interleaved layout).</summary>
    bool HeadColumnsAdjoin => Qkv is null || Layout == FusedQkvLayout.Concatenated;

    /// <summary>The projection holding head <paramref name="head"/>'s query (part 0), key (1) or value (2) columns, and the first of them.</summary>
    (Linear Weight, int Column) Columns(int part, int head)
    {
        if (Qkv is null) return (part switch { 0 => Q!, 1 => K!, _ => V! }, head * DHead);
        if (Layout == FusedQkvLayout.HeadInterleaved) return (Qkv, (3 * head + part) * DHead);
        int start = part switch { 0 => 0, 1 => NHeads * DHead, _ => (NHeads + NKvHeads) * DHead };
        return (Qkv, start + head * DHead);
    }

    /// <summary>Attention from the projections q, k, v on: their hook points, rotary, scores, pattern, z and the output.</summary>
    Tensor Attend(ForwardContext ctx, Tensor q, Tensor k, Tensor v, int D)
    {
        var be = ctx.Backend;
        int B = q.Dim(0), T = q.Dim(1), rows = B * T;
        int qWidth = NHeads * DHead;
        q = ctx.Hook(Names.Q, Layer, q);
        k = ctx.Hook(Names.K, Layer, k);
        v = ctx.Hook(Names.V, Layer, v);
        // Qwen3: each head's q and k are RMS-normalised (over d_head) before rotary; hook_q/hook_k stay the projections.
        if (QNorm is not null) q = ctx.Replacing(q, QNorm.Forward(ctx, Layer, q));
        if (KNorm is not null) k = ctx.Replacing(k, KNorm.Forward(ctx, Layer, k));
        if (Rotary is not null)
        {
            // hook_q/hook_k see the projections; hook_rot_q/hook_rot_k what enters the dot product.
            var rotary = RotaryFor(ctx);
            q = ctx.Hook(Names.RotQ, Layer, Rotated(ctx, rotary, q, rows, NHeads));
            k = ctx.Hook(Names.RotK, Layer, Rotated(ctx, rotary, k, rows, NKvHeads));
        }

        // Keys and values: this pass's, or the KV cache's with this pass's appended.
        Tensor keys = k, values = v;
        int keyLen = T, capacity = 0, offset = 0;
        bool[]? keyValid = ctx.KeyValid;
        if (ctx.KvCache is { } cache)
        {
            cache.Write(be, Layer, k, v, T);
            keys = cache.Keys(Layer);
            values = cache.Values(Layer);
            offset = cache.Length;
            keyLen = offset + T;
            capacity = cache.Capacity;
        }
        // The kernels mask keys after the query's position; placing every query after the last key
        // (offset = keyLen) leaves only the padding mask, which is bidirectional attention.
        var mask = new AttentionMask(Bidirectional ? keyLen : offset, Window, SoftCap, keyValid);
        if (capacity > 0 && keyValid is not null)
        {
            // The cache's padding mask is laid out [batch, capacity]; compact it to [batch, keyLen].
            var compact = new bool[B * keyLen];
            for (int b = 0; b < B; b++) Array.Copy(keyValid, b * capacity, compact, b * keyLen, keyLen);
            mask = mask with { KeyValid = compact };
        }
        var shape = new AttentionShape(B, T, keyLen, NHeads, NKvHeads, DHead, capacity);
        var scores = ctx.Scratch(B, NHeads, T, keyLen);
        be.AttentionScores(q, keys, shape, Scale, mask, scores);
        scores = ctx.Hook(Names.AttnScores, Layer, scores);
        var pattern = ctx.Scratch(B, NHeads, T, keyLen);
        be.SoftmaxRows(scores, B * NHeads * T, keyLen, pattern);
        pattern = ctx.Hook(Names.Pattern, Layer, pattern);
        var z = ctx.Scratch(B, T, NHeads, DHead);
        be.AttentionApply(pattern, values, shape, z);
        z = ctx.Hook(Names.Z, Layer, z);
        // Dead from here on unless saved for a backward pass (then Release keeps them: nothing is reused).
        foreach (var dead in new[] { q, k, v, scores, pattern }) ctx.Release(dead);

        bool perHead = ctx.Wants(Names.Result);
        if (ctx.RecordsForBackward)
        {
            if (ctx.KvCache is not null) throw new NotSupportedException("backward passes through a KV cache are not supported; run the full sequence instead");
            ctx.Save(this, new Saved(q, k, v, SoftCap > 0 ? scores : null, pattern, perHead));
        }
        var output = ctx.Scratch(B, T, D);
        if (perHead)
        {
            // Per-head outputs z_h·W_O[h]; their sum plus b_O is the attention output.
            var result = be.Empty(B, T, NHeads, D);
            var headOut = be.Empty(rows, D);
            for (int h = 0; h < NHeads; h++)
            {
                O.ForwardInputSlice(be, z, rows, qWidth, h * DHead, DHead, headOut);
                be.CopyRows(headOut, 0, D, result, (long)h * D, NHeads * D, rows, D);
            }
            result = ctx.Hook(Names.Result, Layer, result);
            if (O.BiasOn(be) is { } bias) be.CopyRows(bias, 0, 0, output, 0, D, rows, D);
            else be.Fill(output, 0f);
            be.SumMiddleAxis(result, rows, NHeads, D, output, accumulate: true);
        }
        else
        {
            O.Forward(be, z, rows, output);
        }
        ctx.Release(z);
        return output;
    }

    /// <summary>
    /// A rotated copy of q or k, or of their gradients (<paramref name="inverse"/>), in a tensor from <paramref name="take"/>;
    /// <paramref name="x"/> is released (a hook may have seen it, so it is never rotated in place).
    /// </summary>
    Tensor Rotated(ForwardContext ctx, RotaryTable rotary, Tensor x, int rows, int heads, bool inverse = false, Func<int[], Tensor>? take = null)
    {
        var rotated = (take ?? ctx.Scratch)(x.Shape.ToArray());
        ctx.Backend.CopyRows(x, 0, x.Length, rotated, 0, x.Length, 1, x.Length);
        ctx.Backend.Rotary(rotary, rotated, rows, heads, DHead, ctx.Positions, inverse);
        ctx.Release(x);
        return rotated;
    }

    /// <summary>What the backward pass needs: q and k as they entered the dot product (after rotary), v, the pattern, and the capped scores when soft-capping.</summary>
    sealed record Saved(Tensor Q, Tensor K, Tensor V, Tensor? Scores, Tensor Pattern, bool PerHead);

    /// <summary>Backward from d output <c>[batch, pos, d_model]</c> to d x (the attention input), through every hook point.</summary>
    public Tensor Backward(ForwardContext ctx, Tensor dOut)
    {
        var (dq, dk, dv) = BackwardToProjections(ctx, dOut);
        var be = ctx.Backend;
        int B = dOut.Dim(0), T = dOut.Dim(1), D = dOut.Dim(2), rows = B * T;
        // Forward: q, k, v = projections of x.
        var dx = ctx.GradScratch(B, T, D);
        if (Qkv is null)
        {
            Q!.BackwardInput(be, dq, rows, dx);
            K!.BackwardInput(be, dk, rows, dx, accumulate: true);
            V!.BackwardInput(be, dv, rows, dx, accumulate: true);
        }
        else
        {
            var dFused = ctx.GradScratch(rows, Qkv.DOut);
            CopyFused(be, dFused, rows, dq, dk, dv, toFused: true);
            Qkv.BackwardInput(be, dFused, rows, dx);
            ctx.Release(dFused);
        }
        foreach (var dead in new[] { dq, dk, dv }) ctx.Release(dead);
        return dx;
    }

    /// <summary>
    /// Backward of <see cref="ForwardSplit"/>: d output → the gradients at its three inputs, each of the shape the input had
    /// (<paramref name="shared"/>[part]: the part read one stream <c>[batch, pos, d_model]</c>, whose gradient sums every head's;
    /// else <c>[batch, pos, head_index, d_model]</c>, key/value heads for the last two).
    /// </summary>
    public (Tensor DQueryInput, Tensor DKeyInput, Tensor DValueInput) BackwardSplit(ForwardContext ctx, Tensor dOut, IReadOnlyList<bool> shared)
    {
        var (dq, dk, dv) = BackwardToProjections(ctx, dOut);
        var be = ctx.Backend;
        int B = dOut.Dim(0), T = dOut.Dim(1), D = dOut.Dim(2), rows = B * T;
        var inputs = new Tensor[3];
        foreach (var (dProjection, part, heads) in new[] { (dq, 0, NHeads), (dk, 1, NKvHeads), (dv, 2, NKvHeads) })
        {
            // Forward: head h's projection = its input·W[:, head h's columns] (+ b).
            if (shared[part] && HeadColumnsAdjoin)
            {
                var dStream = inputs[part] = ctx.GradScratch(B, T, D);
                var (weight, first) = Columns(part, 0);
                weight.BackwardOutputSlice(be, dProjection, 0, heads * DHead, rows, first, heads * DHead, dStream, 0, D);
            }
            else
            {
                var dInput = inputs[part] = shared[part] ? ctx.GradScratch(B, T, D) : ctx.GradScratch(B, T, heads, D);
                for (int h = 0; h < heads; h++)
                {
                    var (w, column) = Columns(part, h);
                    if (shared[part]) w.BackwardOutputSlice(be, dProjection, (long)h * DHead, heads * DHead, rows, column, DHead, dInput, 0, D, accumulate: h > 0);
                    else w.BackwardOutputSlice(be, dProjection, (long)h * DHead, heads * DHead, rows, column, DHead, dInput, (long)h * D, heads * D);
                }
            }
            ctx.Release(dProjection);
        }
        return (inputs[0], inputs[1], inputs[2]);
    }

    /// <summary>d output → d q, d k, d v (the projections), through every hook point of attention.</summary>
    (Tensor Dq, Tensor Dk, Tensor Dv) BackwardToProjections(ForwardContext ctx, Tensor dOut)
    {
        var be = ctx.Backend;
        var s = ctx.Restore<Saved>(this);
        int B = dOut.Dim(0), T = dOut.Dim(1), D = dOut.Dim(2), rows = B * T;
        int qWidth = NHeads * DHead;
        var shape = new AttentionShape(B, T, T, NHeads, NKvHeads, DHead);

        // Forward: output = Σ_h z_h·W_O[h] + b_O, each term being hook_result[:, :, h].
        var dz = ctx.GradScratch(B, T, NHeads, DHead);
        if (s.PerHead)
        {
            var dResult = ctx.GradScratch(B, T, NHeads, D);
            for (int h = 0; h < NHeads; h++) be.CopyRows(dOut, 0, D, dResult, (long)h * D, NHeads * D, rows, D);
            dResult = ctx.GradHook(Names.Result, Layer, dResult);
            for (int h = 0; h < NHeads; h++)
                O.BackwardInputSlice(be, dResult, (long)h * D, NHeads * D, rows, dz, qWidth, h * DHead, DHead);
            ctx.Release(dResult);
        }
        else
        {
            O.BackwardInput(be, dOut, rows, dz);
        }
        dz = ctx.GradHook(Names.Z, Layer, dz);

        // Forward: z[b, q, h] = Σ_k pattern[b, h, q, k] · v[b, k, h/group].
        var dPattern = ctx.GradScratch(B, NHeads, T, T);
        var dv = ctx.GradScratch(B, T, NKvHeads, DHead);
        be.AttentionApplyBackward(dz, s.Pattern, s.V, shape, dPattern, dv);
        ctx.Release(dz);
        dPattern = ctx.GradHook(Names.Pattern, Layer, dPattern);

        // Forward: pattern = softmax(scores) over key_pos ⇒ dscores = p ⊙ (dp − Σ_k p·dp).
        var dScores = ctx.GradScratch(B, NHeads, T, T);
        be.SoftmaxBackwardRows(s.Pattern, dPattern, B * NHeads * T, T, dScores);
        ctx.Release(dPattern);
        dScores = ctx.GradHook(Names.AttnScores, Layer, dScores);
        var dRaw = dScores;
        if (s.Scores is { } capped)
        {
            // Forward: capped = cap·tanh(raw/cap) ⇒ d raw = d capped · (1 − (capped/cap)²); masked (−∞) entries get 0.
            dRaw = ctx.GradScratch(B, NHeads, T, T);
            be.SoftCapBackward(capped, dScores, SoftCap, dRaw);
        }

        // Forward: raw[b, h, q, k] = scale · q[b, q, h] · k[b, k, h/group].
        var dq = ctx.GradScratch(B, T, NHeads, DHead);
        var dk = ctx.GradScratch(B, T, NKvHeads, DHead);
        be.AttentionScoresBackward(dRaw, s.Q, s.K, shape, Scale, dq, dk);
        ctx.Release(dScores);
        ctx.Release(dRaw);
        if (Rotary is not null)
        {
            // Forward: rot = R(pos)·x ⇒ dx = R(pos)ᵀ·d rot = R(−pos)·d rot.
            var rotary = RotaryFor(ctx);
            dq = Rotated(ctx, rotary, ctx.GradHook(Names.RotQ, Layer, dq), rows, NHeads, inverse: true, ctx.GradScratch);
            dk = Rotated(ctx, rotary, ctx.GradHook(Names.RotK, Layer, dk), rows, NKvHeads, inverse: true, ctx.GradScratch);
        }
        if (QNorm is not null) dq = ctx.Replacing(dq, QNorm.Backward(ctx, Layer, dq));
        if (KNorm is not null) dk = ctx.Replacing(dk, KNorm.Backward(ctx, Layer, dk));
        dq = ctx.GradHook(Names.Q, Layer, dq);
        dk = ctx.GradHook(Names.K, Layer, dk);
        dv = ctx.GradHook(Names.V, Layer, dv);
        return (dq, dk, dv);
    }

    /// <summary>
    /// The rotary table of this pass: fixed, or for length-dependent frequencies (dynamic NTK) the one for positions up to
    /// the pass's last (as Hugging Face recomputes them from max(position_ids) + 1).
    /// </summary>
    RotaryTable RotaryFor(ForwardContext ctx)
    {
        if (Rotary!.LengthDependent is null) return Rotary;
        int last = 0;
        foreach (int p in ctx.Positions) last = Math.Max(last, p);
        return Rotary.ForLength(last + 1);
    }

    void Project(ForwardContext ctx, Tensor x, int rows, Tensor q, Tensor k, Tensor v)
    {
        var be = ctx.Backend;
        if (Qkv is null)
        {
            Q!.Forward(be, x, rows, q);
            K!.Forward(be, x, rows, k);
            V!.Forward(be, x, rows, v);
            return;
        }
        var fused = ctx.Scratch(rows, Qkv.DOut);
        Qkv.Forward(be, x, rows, fused);
        CopyFused(be, fused, rows, q, k, v, toFused: false);
        ctx.Release(fused);
    }

    /// <summary>
    /// Splits the fused projection <c>[rows, q | k | v]</c> (or per head <c>[q | k | v]</c>) into q, k, v,
    /// or (<paramref name="toFused"/>) merges their gradients back into that layout.
    /// </summary>
    void CopyFused(IComputeBackend be, Tensor fused, int rows, Tensor q, Tensor k, Tensor v, bool toFused)
    {
        int qWidth = NHeads * DHead, kvWidth = NKvHeads * DHead, width = qWidth + 2 * kvWidth;
        void Copy(Tensor part, long fusedOffset, int fusedStride, int partStride, int count, int cols)
        {
            if (toFused) be.CopyRows(part, 0, partStride, fused, fusedOffset, fusedStride, count, cols);
            else be.CopyRows(fused, fusedOffset, fusedStride, part, 0, partStride, count, cols);
        }
        if (Layout == FusedQkvLayout.Concatenated)
        {
            Copy(q, 0, width, qWidth, rows, qWidth);
            Copy(k, qWidth, width, kvWidth, rows, kvWidth);
            Copy(v, qWidth + kvWidth, width, kvWidth, rows, kvWidth);
            return;
        }
        // Head-interleaved (GPT-NeoX; as many kv heads as heads): row (r, h) of the fused output is [q | k | v] of head h.
        Copy(q, 0, 3 * DHead, DHead, rows * NHeads, DHead);
        Copy(k, DHead, 3 * DHead, DHead, rows * NHeads, DHead);
        Copy(v, 2 * DHead, 3 * DHead, DHead, rows * NHeads, DHead);
    }
}
