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

        var output = Tensor.Uninitialized(B, T, D);
        if (ctx.Wants(Names.Result))
        {
            // Per-head outputs z_h·W_O[h]; their sum plus b_O is the attention output.
            var result = Tensor.Uninitialized(B, T, NHeads, D);
            var perHead = new float[rows * D];
            for (int h = 0; h < NHeads; h++)
            {
                O.ForwardInputSlice(be, z.Span, rows, qWidth, h * DHead, DHead, perHead);
                var rs = result.Span;
                for (int r = 0; r < rows; r++) perHead.AsSpan(r * D, D).CopyTo(rs.Slice((r * NHeads + h) * D, D));
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
        var fused = new float[rows * width];
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
