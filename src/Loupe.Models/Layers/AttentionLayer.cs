using Loupe.Models.Hooks;
using Loupe.Tensors;
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
    }

    /// <summary>One fused projection (GPT-2, GPT-NeoX).</summary>
    public AttentionLayer(int layer, ModelConfig cfg, Linear qkv, FusedQkvLayout layout, Linear o, RotaryTable? rotary)
        : this(layer, cfg, o, rotary)
    {
        Qkv = qkv;
        Layout = layout;
    }

    AttentionLayer(int layer, ModelConfig cfg, Linear o, RotaryTable? rotary)
    {
        Layer = layer;
        Names = new BlockHookNames(layer);
        O = o;
        Rotary = rotary;
        NHeads = cfg.NHeads;
        NKvHeads = cfg.KvHeads;
        DHead = cfg.DHead;
        Scale = cfg.AttnScale;
        SoftCap = cfg.AttnSoftCap;
        Window = cfg.IsLocal(layer) ? cfg.SlidingWindow : 0;
    }

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

    /// <summary>Runs attention on x <c>[batch, pos, d_model]</c> and returns its output <c>[batch, pos, d_model]</c>.</summary>
    public Tensor Forward(ForwardContext ctx, Tensor x, HookedTransformer model)
    {
        var be = model.Backend;
        int B = x.Dim(0), T = x.Dim(1), D = x.Dim(2), rows = B * T;
        int qWidth = NHeads * DHead, kvWidth = NKvHeads * DHead;
        var q = Tensor.Uninitialized(B, T, NHeads, DHead);
        var k = Tensor.Uninitialized(B, T, NKvHeads, DHead);
        var v = Tensor.Uninitialized(B, T, NKvHeads, DHead);
        Project(be, x.Span, rows, q.Span, k.Span, v.Span, qWidth, kvWidth);
        q = ctx.Hook(Names.Q, Layer, q);
        k = ctx.Hook(Names.K, Layer, k);
        v = ctx.Hook(Names.V, Layer, v);
        if (Rotary is not null)
        {
            // hook_q/hook_k see the projections; hook_rot_q/hook_rot_k what enters the dot product.
            q = q.Clone();
            be.Rotary(Rotary, q.Span, rows, NHeads, DHead, ctx.Positions);
            q = ctx.Hook(Names.RotQ, Layer, q);
            k = k.Clone();
            be.Rotary(Rotary, k.Span, rows, NKvHeads, DHead, ctx.Positions);
            k = ctx.Hook(Names.RotK, Layer, k);
        }

        // Keys and values: this pass's, or the KV cache's with this pass's appended.
        ReadOnlySpan<float> keys = k.Span, values = v.Span;
        int keyLen = T, capacity = 0, offset = 0;
        bool[]? keyValid = ctx.KeyValid;
        if (ctx.KvCache is { } cache)
        {
            cache.Write(Layer, k.Span, v.Span, T);
            keys = cache.Keys(Layer);
            values = cache.Values(Layer);
            offset = cache.Length;
            keyLen = offset + T;
            capacity = cache.Capacity;
        }
        var mask = new AttentionMask(offset, Window, SoftCap, keyValid);
        var scores = Tensor.Uninitialized(B, NHeads, T, keyLen);
        if (capacity > 0 && keyValid is not null)
        {
            // The cache's padding mask is laid out [batch, capacity]; compact it to [batch, keyLen].
            var compact = new bool[B * keyLen];
            for (int b = 0; b < B; b++) Array.Copy(keyValid, b * capacity, compact, b * keyLen, keyLen);
            mask = mask with { KeyValid = compact };
        }
        be.AttentionScores(q.Span, keys, B, T, keyLen, NHeads, NKvHeads, DHead, Scale, mask, scores.Span, capacity);
        scores = ctx.Hook(Names.AttnScores, Layer, scores);
        var pattern = Tensor.Uninitialized(B, NHeads, T, keyLen);
        be.SoftmaxRows(scores.Span, B * NHeads * T, keyLen, pattern.Span);
        pattern = ctx.Hook(Names.Pattern, Layer, pattern);
        var z = Tensor.Uninitialized(B, T, NHeads, DHead);
        be.AttentionApply(pattern.Span, values, B, T, keyLen, NHeads, NKvHeads, DHead, z.Span, capacity);
        z = ctx.Hook(Names.Z, Layer, z);

        bool perHead = ctx.Wants(Names.Result);
        if (ctx.RecordsForBackward)
        {
            if (ctx.KvCache is not null) throw new NotSupportedException("backward passes through a KV cache are not supported; run the full sequence instead");
            ctx.Save(this, new Saved(q, k, v, SoftCap > 0 ? scores : null, pattern, perHead));
        }
        var output = Tensor.Uninitialized(B, T, D);
        if (perHead)
        {
            // Per-head outputs z_h·W_O[h]; their sum plus b_O is the attention output.
            var result = Tensor.Uninitialized(B, T, NHeads, D);
            var headOut = new float[rows * D];
            for (int h = 0; h < NHeads; h++)
            {
                O.ForwardInputSlice(be, z.Span, rows, qWidth, h * DHead, DHead, headOut);
                var rs = result.Span;
                for (int r = 0; r < rows; r++) headOut.AsSpan(r * D, D).CopyTo(rs.Slice((r * NHeads + h) * D, D));
            }
            result = ctx.Hook(Names.Result, Layer, result);
            var os = output.Span;
            var all = result.Span;
            var bias = O.Bias.Span;
            for (int r = 0; r < rows; r++)
            {
                var o = os.Slice(r * D, D);
                if (bias.IsEmpty) o.Clear(); else bias.CopyTo(o);
                for (int h = 0; h < NHeads; h++) be.Add(o, all.Slice((r * NHeads + h) * D, D), o);
            }
        }
        else
        {
            O.Forward(be, z.Span, rows, output.Span);
        }
        return output;
    }

    /// <summary>What the backward pass needs: q and k as they entered the dot product (after rotary), v, the pattern, and the capped scores when soft-capping.</summary>
    sealed record Saved(Tensor Q, Tensor K, Tensor V, Tensor? Scores, Tensor Pattern, bool PerHead);

    /// <summary>Backward from d output <c>[batch, pos, d_model]</c> to d x (the attention input), through every hook point.</summary>
    public Tensor Backward(ForwardContext ctx, Tensor dOut, HookedTransformer model)
    {
        var be = model.Backend;
        var s = ctx.Restore<Saved>(this);
        int B = dOut.Dim(0), T = dOut.Dim(1), D = dOut.Dim(2), rows = B * T;
        int qWidth = NHeads * DHead, kvWidth = NKvHeads * DHead, group = NHeads / NKvHeads;

        // Forward: output = Σ_h z_h·W_O[h] + b_O, each term being hook_result[:, :, h].
        var dz = Tensor.Uninitialized(B, T, NHeads, DHead);
        if (s.PerHead)
        {
            var dResult = Tensor.Uninitialized(B, T, NHeads, D);
            for (int r = 0; r < rows; r++)
                for (int h = 0; h < NHeads; h++) dOut.Span.Slice(r * D, D).CopyTo(dResult.Span.Slice((r * NHeads + h) * D, D));
            dResult = ctx.GradHook(Names.Result, Layer, dResult);
            for (int h = 0; h < NHeads; h++)
                O.BackwardInputSlice(be, dResult.Span.Slice(h * D), NHeads * D, rows, dz.Span, qWidth, h * DHead, DHead);
        }
        else
        {
            O.BackwardInput(be, dOut.Span, rows, dz.Span);
        }
        dz = ctx.GradHook(Names.Z, Layer, dz);

        // Forward: z[b, q, h] = Σ_k pattern[b, h, q, k] · v[b, k, h/group].
        var dPattern = Tensor.Uninitialized(B, NHeads, T, T);
        var dv = Tensor.Zeros(B, T, NKvHeads, DHead);
        ForEachKvHead(B, (b, kvh) =>
        {
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                var dzs = dz.Span.Slice((b * T * NHeads + h) * DHead);
                var vs = s.V.Span.Slice((b * T * NKvHeads + kvh) * DHead);
                var dps = dPattern.Span.Slice((b * NHeads + h) * T * T, T * T);
                be.Sgemm(false, true, T, T, DHead, 1f, dzs, qWidth, vs, kvWidth, 0f, dps, T);
                be.Sgemm(true, false, T, DHead, T, 1f, s.Pattern.Span.Slice((b * NHeads + h) * T * T, T * T), T, dzs, qWidth,
                    1f, dv.Span.Slice((b * T * NKvHeads + kvh) * DHead), kvWidth);
            }
        });
        dPattern = ctx.GradHook(Names.Pattern, Layer, dPattern);

        // Forward: pattern = softmax(scores) over key_pos ⇒ dscores = p ⊙ (dp − Σ_k p·dp).
        var dScores = Tensor.Uninitialized(B, NHeads, T, T);
        for (int r = 0; r < B * NHeads * T; r++)
        {
            var p = s.Pattern.Span.Slice(r * T, T);
            var dp = dPattern.Span.Slice(r * T, T);
            float dot = System.Numerics.Tensors.TensorPrimitives.Dot(p, dp);
            var ds = dScores.Span.Slice(r * T, T);
            for (int j = 0; j < T; j++) ds[j] = p[j] * (dp[j] - dot);
        }
        dScores = ctx.GradHook(Names.AttnScores, Layer, dScores);
        var dRaw = dScores;
        if (s.Scores is { } capped)
        {
            // Forward: capped = cap·tanh(raw/cap) ⇒ d raw = d capped · (1 − (capped/cap)²); masked (−∞) entries get 0.
            dRaw = Tensor.Uninitialized(B, NHeads, T, T);
            for (int i = 0; i < dRaw.Length; i++)
            {
                float c = capped.Span[i];
                dRaw.Span[i] = float.IsFinite(c) ? dScores.Span[i] * (1 - (c / SoftCap) * (c / SoftCap)) : 0f;
            }
        }

        // Forward: raw[b, h, q, k] = scale · q[b, q, h] · k[b, k, h/group].
        var dq = Tensor.Uninitialized(B, T, NHeads, DHead);
        var dk = Tensor.Zeros(B, T, NKvHeads, DHead);
        ForEachKvHead(B, (b, kvh) =>
        {
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                var dr = dRaw.Span.Slice((b * NHeads + h) * T * T, T * T);
                be.Sgemm(false, false, T, DHead, T, Scale, dr, T, s.K.Span.Slice((b * T * NKvHeads + kvh) * DHead), kvWidth,
                    0f, dq.Span.Slice((b * T * NHeads + h) * DHead), qWidth);
                be.Sgemm(true, false, T, DHead, T, Scale, dr, T, s.Q.Span.Slice((b * T * NHeads + h) * DHead), qWidth,
                    1f, dk.Span.Slice((b * T * NKvHeads + kvh) * DHead), kvWidth);
            }
        });
        if (Rotary is not null)
        {
            // Forward: rot = R(pos)·x ⇒ dx = R(pos)ᵀ·d rot = R(−pos)·d rot.
            dq = ctx.GradHook(Names.RotQ, Layer, dq).Clone();
            be.RotaryInverse(Rotary, dq.Span, rows, NHeads, DHead, ctx.Positions);
            dk = ctx.GradHook(Names.RotK, Layer, dk).Clone();
            be.RotaryInverse(Rotary, dk.Span, rows, NKvHeads, DHead, ctx.Positions);
        }
        dq = ctx.GradHook(Names.Q, Layer, dq);
        dk = ctx.GradHook(Names.K, Layer, dk);
        dv = ctx.GradHook(Names.V, Layer, dv);

        // Forward: q, k, v = projections of x.
        var dx = Tensor.Uninitialized(B, T, D);
        if (Qkv is null)
        {
            Q!.BackwardInput(be, dq.Span, rows, dx.Span);
            K!.BackwardInput(be, dk.Span, rows, dx.Span, accumulate: true);
            V!.BackwardInput(be, dv.Span, rows, dx.Span, accumulate: true);
            return dx;
        }
        int width = qWidth + 2 * kvWidth;
        var dFused = GC.AllocateUninitializedArray<float>(rows * width);
        for (int r = 0; r < rows; r++)
        {
            var dst = dFused.AsSpan(r * width, width);
            if (Layout == FusedQkvLayout.Concatenated)
            {
                dq.Span.Slice(r * qWidth, qWidth).CopyTo(dst);
                dk.Span.Slice(r * kvWidth, kvWidth).CopyTo(dst.Slice(qWidth));
                dv.Span.Slice(r * kvWidth, kvWidth).CopyTo(dst.Slice(qWidth + kvWidth));
            }
            else
            {
                for (int h = 0; h < NHeads; h++)
                {
                    dq.Span.Slice(r * qWidth + h * DHead, DHead).CopyTo(dst.Slice(h * 3 * DHead));
                    dk.Span.Slice(r * kvWidth + h * DHead, DHead).CopyTo(dst.Slice(h * 3 * DHead + DHead));
                    dv.Span.Slice(r * kvWidth + h * DHead, DHead).CopyTo(dst.Slice(h * 3 * DHead + 2 * DHead));
                }
            }
        }
        Qkv.BackwardInput(be, dFused, rows, dx.Span);
        return dx;
    }

    /// <summary>Runs <paramref name="body"/> for every (batch, kv head); heads sharing a kv head run in one task so their k/v gradients accumulate without races.</summary>
    void ForEachKvHead(int batch, Action<int, int> body) =>
        Attention.ForEachHead(batch * NKvHeads, i => body(i / NKvHeads, i % NKvHeads));

    void Project(Tensors.Backends.IComputeBackend be, ReadOnlySpan<float> x, int rows, Span<float> q, Span<float> k, Span<float> v, int qWidth, int kvWidth)
    {
        if (Qkv is null)
        {
            Q!.Forward(be, x, rows, q);
            K!.Forward(be, x, rows, k);
            V!.Forward(be, x, rows, v);
            return;
        }
        int width = qWidth + 2 * kvWidth;
        var fused = GC.AllocateUninitializedArray<float>(rows * width);
        Qkv.Forward(be, x, rows, fused);
        for (int r = 0; r < rows; r++)
        {
            var src = fused.AsSpan(r * width, width);
            if (Layout == FusedQkvLayout.Concatenated)
            {
                src.Slice(0, qWidth).CopyTo(q.Slice(r * qWidth, qWidth));
                src.Slice(qWidth, kvWidth).CopyTo(k.Slice(r * kvWidth, kvWidth));
                src.Slice(qWidth + kvWidth, kvWidth).CopyTo(v.Slice(r * kvWidth, kvWidth));
            }
            else
            {
                for (int h = 0; h < NHeads; h++)
                {
                    var head = src.Slice(h * 3 * DHead, 3 * DHead);
                    head.Slice(0, DHead).CopyTo(q.Slice(r * qWidth + h * DHead, DHead));
                    head.Slice(DHead, DHead).CopyTo(k.Slice(r * kvWidth + h * DHead, DHead));
                    head.Slice(2 * DHead, DHead).CopyTo(v.Slice(r * kvWidth + h * DHead, DHead));
                }
            }
        }
    }
}
