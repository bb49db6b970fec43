using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Models.Layers;

/// <summary>
/// What attention reads from the residual stream, with TransformerLens's per-head input hooks:
/// <c>blocks.L.hook_attn_in</c> (<c>use_attn_in</c>) and <c>blocks.L.hook_q_input / hook_k_input / hook_v_input</c>
/// (<c>use_split_qkv_input</c>), each <c>[batch, pos, head_index, d_model]</c>: a copy of hook_resid_pre per head (per key/value
/// head for k and v). Loupe runs them without a flag:
/// <list type="bullet">
/// <item>Nothing at them: ln1 and the fused projections, as always.</item>
/// <item>Only recorded (a cache): the same pass, and the copies are made for the record.</item>
/// <item>Edited (a hook or splice), hooked or recorded in the backward pass: the split pass. Each head's query reads its own copy
///   of the stream, normalised by ln1 apart (as TransformerLens does), so a hook there patches one head's query, key or value
///   alone — path patching to a head's input. The query/key/value inputs are copies of hook_attn_in when something reads that
///   too (so an edit there reaches all three; TransformerLens with both flags ignores hook_attn_in). The gradient at each
///   copy is that head's alone; the stream's is their sum.</item>
/// </list>
/// In the split pass ln1's own hooks have no value of their declared shape (TransformerLens fires them once per copy with a
/// head axis): a hook or splice there is refused, a record of them says why it is missing.
/// </summary>
internal static class AttentionInputs
{
    /// <summary>How one part (query, key or value) read the stream in the split pass.</summary>
    enum PartInput
    {
        /// <summary>No hook, splice, record or gradient looked at it per head: every head read the one normalised stream, and the
        /// part's gradient is summed over heads before ln1's backward, as in the fused pass.</summary>
        Shared,
        /// <summary>Only its gradient is asked for per head: the forward read the one normalised stream (every copy would hold it,
        /// so none is made, and the pass keeps nothing per head); the backward gives each head its own gradient.</summary>
        SharedForwardPerHeadGradient,
        /// <summary>Its own copies (hooked, edited, recorded, or copies of an edited hook_attn_in), each normalised apart.</summary>
        Copies,
    }

    /// <param name="FromAttnIn">The three inputs are copies of hook_attn_in: its gradient is their sum.</param>
    /// <param name="Heads">Query heads (and hook_attn_in's copies).</param>
    /// <param name="KvHeads">Key/value heads: hook_k_input's and hook_v_input's copies.</param>
    /// <param name="Parts">How the query, key and value read the stream.</param>
    sealed record SplitState(bool FromAttnIn, int Heads, int KvHeads, PartInput[] Parts);

    /// <summary>Attention's output from <paramref name="residPre"/> through ln1 and <paramref name="attn"/>.</summary>
    public static Tensor Forward(ForwardContext ctx, int layer, Tensor residPre, Norm ln1, AttentionLayer attn)
    {
        var names = attn.Names;
        string? split = SplitBy(ctx, attn);
        if (split is null)
        {
            Record(ctx, layer, residPre, attn);
            var normed = ln1.Forward(ctx, layer, residPre);
            Tensor output;
            if (!attn.ShortformerPositions) output = attn.Forward(ctx, normed);
            else
            {
                // TransformerLens: attn(query_input = ln1(x) + pos, key_input = ln1(x) + pos, value_input = ln1(x)).
                var queryKey = WithPositions(ctx, normed);
                ctx.Save(attn.SplitKeys.Shortformer, attn.SplitKeys.Shortformer);
                output = attn.ForwardSplit(ctx, queryKey, queryKey, normed);
                ctx.Release(queryKey);
            }
            if (!ReferenceEquals(normed, residPre)) ctx.Release(normed);
            return output;
        }
        SetAsideNormHooks(ctx, ln1, split);
        int H = attn.NHeads, G = attn.NKvHeads;
        // hook_attn_in is made when something reads or edits it; when only its gradient is asked for, the parts give per-head
        // gradients whose sum is its gradient.
        bool attnInGradient = H == G && ctx.GradientSeenAt(names.AttnIn);
        Tensor? attnIn = H == G && ForwardTouched(ctx, names.AttnIn) ? ctx.Hook(names.AttnIn, layer, Repeat(ctx, residPre, H)) : null;
        var keys = attn.SplitKeys;
        var inputs = new (string Name, object Key, int Heads)[] { (names.QInput, keys.Q, H), (names.KInput, keys.K, G), (names.VInput, keys.V, G) };
        var normalized = new Tensor[3];
        var parts = new PartInput[3];
        Tensor? stream = null; // ln1 of resid_pre, for the parts no one looks at per head in the forward pass
        for (int i = 0; i < 3; i++)
        {
            var (name, key, heads) = inputs[i];
            if (attnIn is null && !ForwardTouched(ctx, name))
            {
                parts[i] = attnInGradient || ctx.GradientSeenAt(name) ? PartInput.SharedForwardPerHeadGradient : PartInput.Shared;
                normalized[i] = stream ??= ln1.ForwardRows(ctx, keys.Shared, residPre);
                continue;
            }
            parts[i] = PartInput.Copies;
            Tensor input;
            if (ctx.Wants(name)) input = ctx.Hook(name, layer, attnIn is null ? Repeat(ctx, residPre, heads) : Copy(ctx, attnIn));
            else input = attnIn ?? Repeat(ctx, residPre, heads);
            normalized[i] = ln1.ForwardRows(ctx, key, input);
            if (!ReferenceEquals(input, attnIn) && !ReferenceEquals(normalized[i], input)) ctx.Release(input);
        }
        ctx.Save(keys.State, new SplitState(attnIn is not null || attnInGradient, H, G, parts));
        if (attn.ShortformerPositions)
        {
            // Each query and key input, shared or per head, gets the positions after its ln1; values do not.
            Tensor? streamWithPositions = null;
            for (int i = 0; i < 2; i++)
            {
                var input = normalized[i];
                if (ReferenceEquals(input, stream)) normalized[i] = streamWithPositions ??= WithPositions(ctx, input);
                else
                {
                    normalized[i] = WithPositions(ctx, input);
                    if (!ReferenceEquals(input, attnIn) && !ReferenceEquals(input, residPre)) ctx.Release(input);
                }
            }
            if (stream is not null && !normalized.Any(t => ReferenceEquals(t, stream)) && !ReferenceEquals(stream, residPre)) ctx.Release(stream);
        }
        var result = attn.ForwardSplit(ctx, normalized[0], normalized[1], normalized[2]);
        foreach (var t in normalized.Distinct(ReferenceEqualityComparer.Instance).Cast<Tensor>())
            if (!ReferenceEquals(t, attnIn) && !ReferenceEquals(t, residPre)) ctx.Release(t);
        return result;
    }

    /// <summary>Backward of <see cref="Forward"/>: d attention output → the gradient it sends to <c>hook_resid_pre</c>.</summary>
    public static Tensor Backward(ForwardContext ctx, int layer, Tensor dOut, Norm ln1, AttentionLayer attn)
    {
        var keys = attn.SplitKeys;
        var be = ctx.Backend;
        if (!ctx.TryRestore<SplitState>(keys.State, out var state))
        {
            if (!ctx.TryRestore<object>(keys.Shortformer, out _))
            {
                var dNormed = attn.Backward(ctx, dOut);
                return ctx.Replacing(dNormed, ln1.Backward(ctx, layer, dNormed));
            }
            // Forward: q and k read ln1(x) + pos, v read ln1(x).
            var (dQuery, dKey, dValue) = attn.BackwardSplit(ctx, dOut, [true, true, true]);
            AddPositionGradient(ctx, dQuery, 1);
            AddPositionGradient(ctx, dKey, 1);
            be.Add(dQuery, dKey, dQuery);
            be.Add(dQuery, dValue, dQuery);
            ctx.Release(dKey);
            ctx.Release(dValue);
            return ctx.Replacing(dQuery, ln1.Backward(ctx, layer, dQuery));
        }
        var names = attn.Names;
        int B = dOut.Dim(0), T = dOut.Dim(1), D = dOut.Dim(2), rows = B * T;
        var mode = state!.Parts;
        var (dq, dk, dv) = attn.BackwardSplit(ctx, dOut, [.. mode.Select(m => m == PartInput.Shared)]);
        var d = new[] { dq, dk, dv };
        if (attn.ShortformerPositions)
        {
            AddPositionGradient(ctx, dq, state.Heads);
            AddPositionGradient(ctx, dk, state.KvHeads);
        }
        var parts = new (string Name, object Key, int Heads)[] { (names.QInput, keys.Q, state.Heads), (names.KInput, keys.K, state.KvHeads), (names.VInput, keys.V, state.KvHeads) };
        var dResid = ctx.GradScratch(B, T, D);
        bool written = false; // whether dResid holds a sum yet
        // Parts that read the shared stream and need no per-head gradient: theirs add up before the one ln1 they went through.
        Tensor? dStream = null;
        for (int i = 0; i < 3; i++)
        {
            if (mode[i] != PartInput.Shared) continue;
            if (dStream is null) dStream = d[i];
            else
            {
                be.Add(dStream, d[i], dStream);
                ctx.Release(d[i]);
            }
        }
        if (dStream is not null)
        {
            var viaStream = ln1.BackwardRows(ctx, keys.Shared, dStream);
            be.CopyRows(viaStream, 0, viaStream.Length, dResid, 0, viaStream.Length, 1, viaStream.Length);
            written = true;
            if (!ReferenceEquals(viaStream, dStream)) ctx.Release(viaStream);
            ctx.Release(dStream);
        }
        // The others: each head's copy went through ln1 apart (or would have: the stream's rows and scale, repeated), then its
        // head's columns of the projection.
        for (int i = 0; i < 3; i++)
        {
            if (mode[i] == PartInput.Shared) continue;
            var dInput = mode[i] == PartInput.Copies
                ? ln1.BackwardRows(ctx, parts[i].Key, d[i])
                : ln1.BackwardRowsRepeated(ctx, keys.Shared, d[i], parts[i].Heads);
            d[i] = ctx.GradHook(parts[i].Name, layer, ctx.Replacing(d[i], dInput));
        }
        if (state.FromAttnIn)
        {
            // Forward: the three inputs were copies of hook_attn_in, itself one copy of resid_pre per head.
            var dAttnIn = ctx.GradScratch(B, T, state.Heads, D);
            be.Add(d[0], d[1], dAttnIn);
            be.Add(dAttnIn, d[2], dAttnIn);
            dAttnIn = ctx.GradHook(names.AttnIn, layer, dAttnIn);
            be.SumMiddleAxis(dAttnIn, rows, state.Heads, D, dResid, accumulate: written);
            ctx.Release(dAttnIn);
        }
        else
        {
            // Forward: each input was a copy of resid_pre per (key/value) head.
            for (int i = 0; i < 3; i++)
            {
                if (mode[i] == PartInput.Shared) continue;
                be.SumMiddleAxis(d[i], rows, parts[i].Heads, D, dResid, accumulate: written);
                written = true;
            }
        }
        for (int i = 0; i < 3; i++)
            if (mode[i] != PartInput.Shared) ctx.Release(d[i]);
        return dResid;
    }

    /// <summary>Whether something reads or edits <paramref name="name"/> in the forward pass (then it has its own copies).</summary>
    static bool ForwardTouched(ForwardContext ctx, string name) => ctx.Wants(name) || ctx.MayChangeForward(name);

    /// <summary>The first per-head input hook that needs the split pass (an edit, a splice, a gradient hook or record), or null.</summary>
    static string? SplitBy(ForwardContext ctx, AttentionLayer attn)
    {
        foreach (var name in PerHeadHooks(attn))
            if (ctx.MayChange(name) || ctx.WantsGradient(name))
                return name;
        return null;
    }

    static IEnumerable<string> PerHeadHooks(AttentionLayer attn)
    {
        var names = attn.Names;
        if (attn.NHeads == attn.NKvHeads) yield return names.AttnIn;
        yield return names.QInput;
        yield return names.KInput;
        yield return names.VInput;
    }

    /// <summary>Without the split pass, a cache asking for the per-head inputs gets its copies of resid_pre.</summary>
    static void Record(ForwardContext ctx, int layer, Tensor residPre, AttentionLayer attn)
    {
        var names = attn.Names;
        foreach (var name in PerHeadHooks(attn))
            if (ctx.Wants(name))
            {
                int heads = name == names.KInput || name == names.VInput ? attn.NKvHeads : attn.NHeads;
                ctx.Hook(name, layer, Repeat(ctx, residPre, heads));
            }
    }

    /// <summary>ln1's hooks in the split pass: a hook or splice there is refused; a record of them notes why it has no value.</summary>
    static void SetAsideNormHooks(ForwardContext ctx, Norm ln1, string split)
    {
        if (ln1.Kind == NormKind.None) return;
        string why = $"{split} is edited or differentiated in this pass, so ln1 normalised each head's copy of the stream apart, " +
            "as TransformerLens does with split attention inputs (there ln1's hooks fire once per copy, with a head axis)";
        foreach (var name in new[] { ln1.ScaleHook, ln1.NormalizedHook })
        {
            if (ctx.MayChange(name))
                throw new InputError($"a hook or splice at {name} cannot run in this pass: {why}; {name} has no [batch, pos, …] value " +
                    $"to hook. Edit the per-head inputs instead, or run the two in separate passes");
            if (ctx.Records(name)) ctx.SkipRecords(name, why);
        }
    }

    /// <summary><paramref name="stream"/> <c>[batch, pos, d_model]</c> copied once per head: <c>[batch, pos, heads, d_model]</c>.</summary>
    static Tensor Repeat(ForwardContext ctx, Tensor stream, int heads)
    {
        int B = stream.Dim(0), T = stream.Dim(1), D = stream.Dim(2);
        var copies = ctx.Scratch(B, T, heads, D);
        for (int h = 0; h < heads; h++) ctx.Backend.CopyRows(stream, 0, D, copies, (long)h * D, heads * D, B * T, D);
        return copies;
    }

    /// <summary>
    /// <paramref name="normed"/> <c>[batch, pos, d_model]</c> or <c>[batch, pos, heads, d_model]</c> plus the shortformer positions
    /// <c>[batch, pos, d_model]</c> (every head's copy gets them), into a new tensor.
    /// </summary>
    static Tensor WithPositions(ForwardContext ctx, Tensor normed)
    {
        var pos = ctx.ShortformerPositions
            ?? throw new InvalidOperationException("a shortformer attention layer ran without hook_pos_embed: the pass did not start at the embedding");
        Tensor y;
        if (normed.Rank == 3) y = ctx.Scratch(normed.Shape.ToArray());
        else y = Repeat(ctx, pos, normed.Dim(2));
        ctx.Backend.Add(normed, normed.Rank == 3 ? pos : y, y);
        return y;
    }

    /// <summary>Adds what a query or key input's gradient sends the shortformer positions (summed over heads when per head).</summary>
    static void AddPositionGradient(ForwardContext ctx, Tensor dInput, int heads)
    {
        var be = ctx.Backend;
        int B = dInput.Dim(0), T = dInput.Dim(1), D = dInput.Dim(-1);
        var acc = ctx.ShortformerPositionGradient;
        bool first = acc is null;
        acc ??= ctx.ShortformerPositionGradient = ctx.GradScratch(B, T, D);
        if (dInput.Rank == 3)
        {
            if (first) be.CopyRows(dInput, 0, dInput.Length, acc, 0, dInput.Length, 1, dInput.Length);
            else be.Add(acc, dInput, acc);
        }
        else be.SumMiddleAxis(dInput, B * T, heads, D, acc, accumulate: !first);
    }

    static Tensor Copy(ForwardContext ctx, Tensor x)
    {
        var copy = ctx.Scratch(x.Shape.ToArray());
        ctx.Backend.CopyRows(x, 0, x.Length, copy, 0, x.Length, 1, x.Length);
        return copy;
    }
}
