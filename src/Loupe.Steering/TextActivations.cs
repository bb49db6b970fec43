using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Steering;

/// <summary>How one text's activations <c>[pos, d]</c> are reduced to a single <c>[d]</c> vector.</summary>
public enum TokenReduction
{
    /// <summary>The last token's activation (what predicts the continuation).</summary>
    LastToken,
    /// <summary>The mean over the text's tokens, leaving out a leading BOS (its activation is the same for every text).</summary>
    MeanOverTokens,
}

/// <summary>
/// Reads hook activations for a set of texts, one reduced vector per text.
/// 1. batch the texts (right-padded: causal attention keeps pads out of real tokens);
/// 2. run the model once per batch, caching only the requested hooks;
/// 3. reduce each row's real positions (<see cref="TokenReduction"/>) to <c>[d]</c>.
/// </summary>
public static class TextActivations
{
    /// <summary>Texts per forward pass.</summary>
    public const int BatchSize = 16;

    /// <summary>
    /// For each hook, a matrix <c>[text][d]</c>: row i is text i's activation reduced by <paramref name="reduction"/>.
    /// </summary>
    /// <exception cref="InputError">No texts, an empty text, an unknown hook, or a hook that is not <c>[batch, pos, d]</c>.</exception>
    public static IReadOnlyDictionary<string, float[][]> Collect(HookedTransformer model, IReadOnlyList<int[]> texts,
        IReadOnlyList<string> hooks, TokenReduction reduction)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (texts.Count == 0) throw new InputError("no texts were given to read activations from");
        for (int i = 0; i < texts.Count; i++)
            if (texts[i].Length == 0) throw new InputError($"text {i} has no tokens");
        foreach (var hook in hooks) ActivationEdits.RequireHook(model, hook);
        var wanted = new HashSet<string>(hooks, StringComparer.Ordinal);
        var result = hooks.ToDictionary(h => h, _ => new float[texts.Count][], StringComparer.Ordinal);
        int? bos = model.Config.BosTokenId;
        for (int start = 0; start < texts.Count; start += BatchSize)
        {
            var rows = texts.Skip(start).Take(BatchSize).ToArray();
            var batch = TokenBatch.FromRows(rows, 0, PaddingSide.Right);
            var cache = model.Run(batch, new RunOptions { CacheFilter = wanted.Contains, LastPositionLogitsOnly = true }).Cache;
            foreach (var hook in hooks)
            {
                var act = cache[hook]; // [batch, pos, d]
                if (act.Rank != 3)
                    throw new InputError($"hook '{hook}' is {act.ShapeString}; reading text activations needs a [batch, pos, d] hook such as blocks.0.hook_resid_post");
                int T = act.Dim(1), d = act.Dim(2);
                if (!act.IsHost)
                {
                    ReduceOnDevice(model, act, rows, reduction, bos).CopyTo(result[hook].AsSpan(start, rows.Length));
                    continue;
                }
                for (int b = 0; b < rows.Length; b++)
                {
                    int n = rows[b].Length;
                    int first = reduction == TokenReduction.LastToken ? n - 1 : n > 1 && rows[b][0] == bos ? 1 : 0;
                    var mean = new float[d];
                    for (int t = first; t < n; t++)
                    {
                        var row = act.Span.Slice((b * T + t) * d, d);
                        for (int j = 0; j < d; j++) mean[j] += row[j];
                    }
                    for (int j = 0; j < d; j++) mean[j] /= n - first;
                    result[hook][start + b] = mean;
                }
            }
        }
        return result;
    }

    /// <summary>
    /// The reduced rows of a device activation <c>[batch, pos, d]</c>: each row's positions are reduced on the device into one
    /// <c>[batch, d]</c> table, and that table is the one copy to the host.
    /// </summary>
    static float[][] ReduceOnDevice(HookedTransformer model, Tensor act, int[][] rows, TokenReduction reduction, int? bos)
    {
        var backend = model.Backend;
        int T = act.Dim(1), d = act.Dim(2);
        var table = backend.Empty(rows.Length, d);
        for (int b = 0; b < rows.Length; b++)
        {
            int n = rows[b].Length;
            int first = reduction == TokenReduction.LastToken ? n - 1 : n > 1 && rows[b][0] == bos ? 1 : 0;
            var slot = new Tensor(table.Storage.Slice((long)b * d, d), d);
            backend.SumMiddleAxis(new Tensor(act.Storage.Slice((long)(b * T + first) * d, (long)(n - first) * d), n - first, d), 1, n - first, d, slot);
            if (n - first > 1) backend.Scale(slot, 1f / (n - first), slot);
        }
        var host = new float[rows.Length * d];
        table.CopyTo(host);
        return Enumerable.Range(0, rows.Length).Select(b => host.AsSpan(b * d, d).ToArray()).ToArray();
    }

    /// <summary>The activation at every position of one sequence <c>[pos][d]</c>.</summary>
    /// <exception cref="InputError">The sequence is empty, the hook unknown or not <c>[batch, pos, d]</c>.</exception>
    public static float[][] PerToken(HookedTransformer model, int[] tokens, string hook)
    {
        var act = PerTokenActivation(model, tokens, hook).ToCpu(); // every position is asked for: one copy
        int d = act.Dim(2);
        return Enumerable.Range(0, tokens.Length).Select(t => act.Span.Slice(t * d, d).ToArray()).ToArray();
    }

    /// <summary>The activation of one sequence at <paramref name="hook"/> <c>[1, pos, d]</c>, where the model runs (on its device).</summary>
    /// <exception cref="InputError">The sequence is empty, the hook unknown or not <c>[batch, pos, d]</c>.</exception>
    internal static Tensor PerTokenActivation(HookedTransformer model, int[] tokens, string hook)
    {
        if (tokens.Length == 0) throw new InputError("the sequence has no tokens");
        ActivationEdits.RequireHook(model, hook);
        var act = model.Run(TokenBatch.Single(tokens), new RunOptions { CacheFilter = h => h == hook, LastPositionLogitsOnly = true }).Cache[hook];
        if (act.Rank != 3) throw new InputError($"hook '{hook}' is {act.ShapeString}; per-token reading needs a [batch, pos, d] hook");
        return act;
    }

    /// <summary>The element-wise mean of equal-length rows.</summary>
    internal static float[] Mean(IReadOnlyList<float[]> rows)
    {
        var mean = new float[rows[0].Length];
        foreach (var row in rows)
            for (int j = 0; j < mean.Length; j++) mean[j] += row[j];
        for (int j = 0; j < mean.Length; j++) mean[j] /= rows.Count;
        return mean;
    }
}
