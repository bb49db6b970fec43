using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Causal.Patchscopes;

/// <summary>What a patchscope produced at one target layer.</summary>
/// <param name="TargetLayer">The block whose resid_pre received the vector at the target position.</param>
/// <param name="Tokens">The generated continuation's token ids.</param>
/// <param name="Text">Its text, when the model has a tokenizer.</param>
/// <param name="TopNext">The first generated position's most likely tokens and their probabilities.</param>
public sealed record PatchscopeReading(int TargetLayer, int[] Tokens, string? Text, IReadOnlyList<(int Token, double Probability)> TopNext);

/// <summary>
/// Patchscopes (Ghandeharioun et al. 2024) and SelfIE: read a hidden representation out in words by placing it in
/// another prompt and letting the model continue. A vector (a residual-stream activation from a source prompt, or any
/// direction of the residual stream: an SAE feature's decoder row, a probe or steering direction) replaces
/// <c>resid_pre</c> of the target layer at one position of a target prompt — by default the last token of the identity
/// prompt <c>cat -&gt; cat; 1135 -&gt; 1135; hello -&gt; hello; ?</c>, which asks the model to repeat what it sees —
/// during the prompt pass only; the continuation is generated greedily with the KV cache.
/// </summary>
public static class Patchscope
{
    /// <summary>The identity prompt of the Patchscopes paper: its last token is the placeholder.</summary>
    public const string IdentityPrompt = "cat -> cat; 1135 -> 1135; hello -> hello; ?";

    /// <summary><c>resid_pre</c> of block <paramref name="layer"/> (or the final resid_post when it equals n_layers) at one position of a prompt.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The layer or position is outside the model or prompt.</exception>
    public static float[] Read(HookedTransformer model, int[] prompt, int layer, int position)
    {
        int L = model.Config.NLayers;
        if ((uint)layer > (uint)L) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} is outside 0..{L} (n_layers = {L} reads the final resid_post)");
        int p = position < 0 ? prompt.Length + position : position;
        if ((uint)p >= (uint)prompt.Length) throw new ArgumentOutOfRangeException(nameof(position), $"position {position} is outside a prompt of {prompt.Length} tokens");
        string hook = layer == L ? HookNames.ResidPost(L - 1) : HookNames.ResidPre(layer);
        var act = model.RunWithCache(TokenBatch.Single(prompt), hook).Cache[hook];
        int D = model.Config.DModel;
        // Only the asked position comes to the host (one row copied out of the device activation).
        var row = model.Backend.Empty(D);
        model.Backend.CopyRows(act, (long)p * D, D, row, 0, D, 1, D);
        var host = new float[D];
        row.CopyTo(host);
        return host;
    }

    /// <summary>
    /// The mean norm of <c>resid_pre</c> of <paramref name="layer"/> over a prompt's positions, position 0 left out
    /// (the first position is often an attention sink of outsized norm): the scale a unit direction is given before it is
    /// placed in the stream, so it looks like the activations the layer normally sees.
    /// </summary>
    public static double TypicalNorm(HookedTransformer model, int[] prompt, int layer)
    {
        string hook = layer == model.Config.NLayers ? HookNames.ResidPost(layer - 1) : HookNames.ResidPre(layer);
        var act = model.RunWithCache(TokenBatch.Single(prompt), hook).Cache[hook]; // [1, pos, d_model]
        int D = model.Config.DModel, T = prompt.Length, first = T > 1 ? 1 : 0;
        // Squared norms per position where the activation lives; only those T numbers come to the host.
        var squares = model.Backend.Empty(T);
        model.Backend.RowDots(act, act, T, D, squares);
        var host = new float[T];
        squares.CopyTo(host);
        double sum = 0;
        for (int p = first; p < T; p++) sum += Math.Sqrt(host[p]);
        return sum / (T - first);
    }

    /// <summary>
    /// Places <paramref name="vector"/> at <paramref name="targetPosition"/> of <paramref name="target"/>, in resid_pre of
    /// each of <paramref name="targetLayers"/> in turn (one generation per layer, batched), and generates.
    /// </summary>
    /// <exception cref="ArgumentException">The vector's width is not d_model, or a layer or position is out of range.</exception>
    public static IReadOnlyList<PatchscopeReading> Run(HookedTransformer model, int[] target, int targetPosition, ReadOnlySpan<float> vector,
        IReadOnlyList<int> targetLayers, int newTokens = 8, int topK = 5)
    {
        int D = model.Config.DModel, L = model.Config.NLayers;
        if (vector.Length != D) throw new ArgumentException($"the vector has {vector.Length} values; d_model is {D}", nameof(vector));
        int p = targetPosition < 0 ? target.Length + targetPosition : targetPosition;
        if ((uint)p >= (uint)target.Length) throw new ArgumentException($"target position {targetPosition} is outside a prompt of {target.Length} tokens", nameof(targetPosition));
        foreach (int l in targetLayers)
            if ((uint)l >= (uint)L) throw new ArgumentException($"target layer {l} is outside 0..{L - 1}", nameof(targetLayers));
        var backend = model.Backend;
        var v = backend.LoadWeight(vector.ToArray(), [D]); // on the model's device, once for every layer and step
        int count = targetLayers.Count, T = target.Length;
        var options = new RunOptions();
        // Row r of the batch patches layer targetLayers[r]; only the prompt pass (generation step 0) is patched.
        foreach (var group in targetLayers.Select((l, r) => (l, r)).GroupBy(x => x.l))
        {
            var rows = group.Select(x => x.r).ToArray();
            options.AddHook(HookNames.ResidPre(group.Key), (act, ctx) =>
            {
                if (ctx.GenerationStep > 0) return null;
                foreach (int r in rows) backend.CopyRows(v, 0, D, act, (long)(r * T + p) * D, D, 1, D); // in place, where the pass runs
                return null;
            });
        }
        // The first new token's distribution, from a plain patched forward pass (the generation picks greedily from the same logits).
        var ids = new int[count * T];
        for (int r = 0; r < count; r++) target.CopyTo(ids, r * T);
        var output = model.Run(new TokenBatch(ids, count, T), options).Logits; // [count, T, d_vocab_out]
        int V = output.Dim(2);
        // Only each row's last position comes to the host: the first new token's distribution.
        var last = backend.Empty(count, V);
        backend.CopyRows(output, (long)(T - 1) * V, T * V, last, 0, V, count, V);
        var logits = new float[count * V];
        last.CopyTo(logits);
        var generated = newTokens > 0
            ? model.Generate([.. Enumerable.Repeat(target, count)], new GenerationOptions(MaxNewTokens: newTokens, Temperature: 0, StopAtEos: false), options)
            : [.. Enumerable.Range(0, count).Select(_ => Array.Empty<int>())];
        var readings = new List<PatchscopeReading>(count);
        for (int r = 0; r < count; r++)
        {
            var row = logits.AsSpan(r * V, V).ToArray();
            double max = double.NegativeInfinity;
            foreach (float x in row) max = Math.Max(max, x);
            double z = 0;
            foreach (float x in row) z += Math.Exp(x - max);
            var top = Enumerable.Range(0, V).OrderByDescending(i => row[i]).Take(topK).Select(i => (i, Math.Exp(row[i] - max) / z)).ToList();
            readings.Add(new PatchscopeReading(targetLayers[r], generated[r], model.Tokenizer?.Decode(generated[r]), top));
        }
        return readings;
    }
}
