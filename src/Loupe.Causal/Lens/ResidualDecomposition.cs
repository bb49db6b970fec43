using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Causal.Lens;

// Decomposing the final residual stream into what each component wrote (TransformerLens's
// decompose_resid / stack_head_results):
// 1. Run once, caching hook_embed, hook_pos_embed, every block's attn.hook_result (per head),
//    hook_attn_out and hook_mlp_out, and the last block's hook_resid_post.
// 2. At one (row, position): embed, pos_embed, then per layer each head's hook_result[h], the
//    layer's attention bias b_O (= hook_attn_out − Σ_h hook_result[h]), and hook_mlp_out.
// 3. Check: Σ components = blocks.{L−1}.hook_resid_post (the input of ln_final).

/// <summary>What one component wrote into the residual stream at one position.</summary>
/// <param name="Name">e.g. <c>embed</c>, <c>pos_embed</c>, <c>L1H3</c>, <c>L1 b_O</c>, <c>L1 attn</c>, <c>L1 mlp</c>.</param>
/// <param name="Kind">embed, pos_embed, head, attn_bias, attn (a whole layer's attention), mlp.</param>
/// <param name="Layer">The block, or −1 for embeddings.</param>
/// <param name="Head">The head, or −1.</param>
/// <param name="Vector">Its contribution <c>[d_model]</c>.</param>
public sealed record ResidualComponent(string Name, string Kind, int Layer, int Head, float[] Vector);

/// <summary>
/// The final residual stream at one position as a sum of components, ordered: embed, pos_embed
/// (when the model has learned positions), then per layer its heads 0…n_heads−1, its attention
/// bias b_O (a separate component per layer, zero for models without b_O), its MLP. Models
/// whose attention output passes through a post-attention norm before the residual stream
/// (Gemma 2's ln1_post) have no per-head decomposition that sums exactly; there each layer's
/// attention is one component "L{l} attn" (hook_attn_out).
/// </summary>
public sealed class ResidualDecomposition
{
    public required IReadOnlyList<ResidualComponent> Components { get; init; }
    /// <summary>blocks.{L−1}.hook_resid_post at this row and position <c>[d_model]</c>.</summary>
    public required float[] Residual { get; init; }
    public int Row { get; init; }
    public int Position { get; init; }

    /// <summary><c>max_d |Σ components − residual|</c>.</summary>
    public double MaxAbsError
    {
        get
        {
            double worst = 0;
            for (int d = 0; d < Residual.Length; d++)
            {
                double sum = 0;
                foreach (var c in Components) sum += c.Vector[d];
                worst = Math.Max(worst, Math.Abs(sum - Residual[d]));
            }
            return worst;
        }
    }

    /// <summary>The hook points a decomposition reads (cache these through <see cref="RunOptions.CacheFilter"/>).</summary>
    /// <exception cref="InputError">The model's residual stream is not a sum of component outputs (post-LayerNorm encoders).</exception>
    public static HashSet<string> Hooks(HookedTransformer model)
    {
        model.RequireResidualSum("a residual-stream decomposition (direct logit attribution)");
        var known = new HashSet<string>(model.HookPointNames, StringComparer.Ordinal);
        var hooks = new HashSet<string>(StringComparer.Ordinal) { HookNames.Embed, HookNames.ResidPost(model.Config.NLayers - 1) };
        if (known.Contains(HookNames.PosEmbed) && !model.Config.ShortformerPositions) hooks.Add(HookNames.PosEmbed);
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            hooks.Add(HookNames.AttnOut(l));
            if (!HasPostAttentionNorm(known, l)) hooks.Add(HookNames.Result(l));
            if (known.Contains(HookNames.MlpOut(l))) hooks.Add(HookNames.MlpOut(l));
        }
        return hooks;
    }

    /// <summary>Whether layer l's attention output is normalized again before the residual stream (its heads do not sum to hook_attn_out).</summary>
    static bool HasPostAttentionNorm(HashSet<string> known, int l) => known.Contains(HookNames.NormScale(l, "ln1_post"));

    /// <summary>Runs the model once and decomposes row <paramref name="row"/> at <paramref name="position"/> (negative counts from the end).</summary>
    public static ResidualDecomposition Compute(HookedTransformer model, TokenBatch tokens, int row = 0, int position = -1)
    {
        var hooks = Hooks(model);
        if (DeviceLens.Applies(model))
        {
            var pass = new DeviceLens.Pass(model, tokens, hooks);
            return FromDevice(model, pass.Cache, row, position, pass.Table, pass.Read);
        }
        var cache = model.Run(tokens, new RunOptions { CacheFilter = hooks.Contains }).Cache;
        return FromCache(model, cache, row, position);
    }

    /// <summary>Decomposes from a cache holding <see cref="Hooks"/>.</summary>
    /// <exception cref="InputError">The row or position is outside the cached batch.</exception>
    public static ResidualDecomposition FromCache(HookedTransformer model, ActivationCache cache, int row = 0, int position = -1)
    {
        if (!cache[HookNames.ResidPost(model.Config.NLayers - 1)].IsHost)
            return FromDevice(model, cache, row, position, size => model.Backend.Empty(size), table => table.ToCpu().Span.ToArray());
        var cfg = model.Config;
        int D = cfg.DModel, H = cfg.NHeads, L = cfg.NLayers;
        var final = cache[HookNames.ResidPost(L - 1)]; // [batch, pos, d_model]
        int B = final.Dim(0), T = final.Dim(1);
        if ((uint)row >= (uint)B) throw new InputError($"row {row} is outside the batch of {B}");
        int p = position < 0 ? T + position : position;
        if ((uint)p >= (uint)T) throw new InputError($"position {position} is outside a sequence of {T}");
        float[] At(Tensor t) => t.Span.Slice((row * T + p) * D, D).ToArray();

        var components = new List<ResidualComponent> { new("embed", "embed", -1, -1, At(cache[HookNames.Embed])) };
        if (PositionsInStream(model, cache)) components.Add(new("pos_embed", "pos_embed", -1, -1, At(cache[HookNames.PosEmbed])));
        for (int l = 0; l < L; l++)
        {
            var attnOut = At(cache[HookNames.AttnOut(l)]);
            if (cache.Contains(HookNames.Result(l)))
            {
                var result = cache[HookNames.Result(l)]; // [batch, pos, head_index, d_model]
                var bias = (float[])attnOut.Clone();
                for (int h = 0; h < H; h++)
                {
                    var head = result.Span.Slice(((row * T + p) * H + h) * D, D).ToArray();
                    for (int d = 0; d < D; d++) bias[d] -= head[d];
                    components.Add(new($"L{l}H{h}", "head", l, h, head));
                }
                // hook_attn_out = Σ_h hook_result[h] + b_O, so the remainder is b_O (≈0 without one).
                components.Add(new($"L{l} b_O", "attn_bias", l, -1, bias));
            }
            else
            {
                components.Add(new($"L{l} attn", "attn", l, -1, attnOut));
            }
            if (cache.Contains(HookNames.MlpOut(l))) components.Add(new($"L{l} mlp", "mlp", l, -1, At(cache[HookNames.MlpOut(l)])));
        }
        return new ResidualDecomposition { Components = components, Residual = At(final), Row = row, Position = p };
    }

    /// <summary>Whether hook_pos_embed is a term of the stream: cached, and not a shortformer's (those only reach queries and keys).</summary>
    static bool PositionsInStream(HookedTransformer model, ActivationCache cache) =>
        cache.Contains(HookNames.PosEmbed) && !model.Config.ShortformerPositions;

    /// <summary>How many components <see cref="FromCache"/> makes from <paramref name="cache"/>.</summary>
    internal static int ComponentCount(HookedTransformer model, ActivationCache cache)
    {
        int count = PositionsInStream(model, cache) ? 2 : 1;
        for (int l = 0; l < model.Config.NLayers; l++)
            count += (cache.Contains(HookNames.Result(l)) ? model.Config.NHeads + 1 : 1) + (cache.Contains(HookNames.MlpOut(l)) ? 1 : 0);
        return count;
    }

    /// <summary>
    /// Copies the components at (<paramref name="row"/>, <paramref name="p"/>) of a device cache into the first
    /// <see cref="ComponentCount"/> rows of <paramref name="dst"/> <c>[*, d_model]</c> on the device, in <see cref="FromCache"/>'s
    /// order; b_O is <c>hook_attn_out − Σ_h hook_result[h]</c> there too.
    /// </summary>
    /// <returns>The components' names and places; their vectors are empty (they stay on the device).</returns>
    internal static List<ResidualComponent> StackOnDevice(HookedTransformer model, ActivationCache cache, int row, int p, Tensor dst)
    {
        var be = model.Backend;
        var cfg = model.Config;
        int D = cfg.DModel, H = cfg.NHeads, L = cfg.NLayers, T = cache[HookNames.ResidPost(L - 1)].Dim(1);
        long at = ((long)row * T + p) * D;
        var components = new List<ResidualComponent>();
        void Copy(Tensor src, long offset, int rows, ResidualComponent first)
        {
            be.CopyRows(src, offset, D, dst, (long)components.Count * D, D, rows, D);
            components.Add(first);
        }
        Copy(cache[HookNames.Embed], at, 1, new("embed", "embed", -1, -1, []));
        if (PositionsInStream(model, cache)) Copy(cache[HookNames.PosEmbed], at, 1, new("pos_embed", "pos_embed", -1, -1, []));
        Tensor? headSum = null;
        for (int l = 0; l < L; l++)
        {
            var attnOut = cache[HookNames.AttnOut(l)];
            if (cache.Contains(HookNames.Result(l)))
            {
                var result = cache[HookNames.Result(l)]; // [batch, pos, head_index, d_model]
                long heads = at * H;
                be.CopyRows(result, heads, D, dst, (long)components.Count * D, D, H, D);
                for (int h = 0; h < H; h++) components.Add(new($"L{l}H{h}", "head", l, h, []));
                long bias = (long)components.Count * D;
                Copy(attnOut, at, 1, new($"L{l} b_O", "attn_bias", l, -1, []));
                headSum ??= be.Empty(D);
                be.SumMiddleAxis(new Tensor(result.Storage.Slice(heads, (long)H * D), H * D), 1, H, D, headSum);
                be.Scale(headSum, -1f, headSum);
                be.CopyRows(headSum, 0, D, dst, bias, D, 1, D, accumulate: true);
            }
            else
            {
                Copy(attnOut, at, 1, new($"L{l} attn", "attn", l, -1, []));
            }
            if (cache.Contains(HookNames.MlpOut(l))) Copy(cache[HookNames.MlpOut(l)], at, 1, new($"L{l} mlp", "mlp", l, -1, []));
        }
        return components;
    }

    // A device cache: the components and the final residual stacked on the device, one table read back.
    static ResidualDecomposition FromDevice(HookedTransformer model, ActivationCache cache, int row, int position, Func<int, Tensor> table, Func<Tensor, float[]> read)
    {
        int D = model.Config.DModel, L = model.Config.NLayers;
        var final = cache[HookNames.ResidPost(L - 1)];
        int B = final.Dim(0), T = final.Dim(1);
        if ((uint)row >= (uint)B) throw new InputError($"row {row} is outside the batch of {B}");
        int p = position < 0 ? T + position : position;
        if ((uint)p >= (uint)T) throw new InputError($"position {position} is outside a sequence of {T}");
        int n = ComponentCount(model, cache);
        var stacked = table((n + 1) * D);
        var components = StackOnDevice(model, cache, row, p, stacked);
        model.Backend.CopyRows(final, ((long)row * T + p) * D, D, stacked, (long)n * D, D, 1, D);
        var values = read(stacked);
        return new ResidualDecomposition
        {
            Components = [.. components.Select((c, i) => c with { Vector = values.AsSpan(i * D, D).ToArray() })],
            Residual = values.AsSpan(n * D, D).ToArray(),
            Row = row,
            Position = p,
        };
    }
}
