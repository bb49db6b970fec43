using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors.Kernels;

namespace Loupe.Causal.Lens;

/// <summary>One candidate next token and its probability.</summary>
/// <param name="Token">The token id.</param>
/// <param name="Probability">Its softmax probability over d_vocab_out.</param>
public sealed record TokenProbability(int Token, double Probability);

/// <summary>
/// The model's next-token distribution: the k most likely tokens at the last position (what <c>loupe run</c>
/// prints) or at every position (what the Prompt page shows on hover).
/// </summary>
public static class NextTokens
{
    /// <summary>The <paramref name="k"/> most likely next tokens at each requested position of one sequence.</summary>
    /// <param name="model">Any loaded model.</param>
    /// <param name="ids">One sequence of token ids.</param>
    /// <param name="k">How many tokens per position (clamped to d_vocab_out).</param>
    /// <param name="allPositions">Every position (true) or only the last (false: the pass computes only that row of logits).</param>
    /// <returns>One list per position, most likely first.</returns>
    /// <exception cref="InputError">The model produced a non-finite logit: a table of NaN probabilities would look like an answer.</exception>
    public static TokenProbability[][] TopK(HookedTransformer model, int[] ids, int k, bool allPositions = false)
    {
        var output = model.Run(ids, new RunOptions { LastPositionLogitsOnly = !allPositions }).Logits;
        int V = model.Config.VocabOut, rows = allPositions ? ids.Length : 1;
        k = Math.Clamp(k, 0, V);
        if (!output.IsHost && k > 0) return OnDevice(model.Backend, output, rows, V, k);
        var logits = output.ToCpu().Span;
        var result = new TokenProbability[rows][];
        var probs = new float[V];
        for (int r = 0; r < rows; r++)
        {
            var row = logits.Slice(r * V, V);
            foreach (float v in row)
                if (!(v < float.PositiveInfinity))
                    throw new InputError($"{model.Source}: the model produced a non-finite logit ({InputError.Show(v)}) at position {(allPositions ? r : ids.Length - 1)}; its weights or activations overflow");
            Softmax.Row(row, probs);
            result[r] = [.. Enumerable.Range(0, V).OrderByDescending(i => probs[i]).Take(k).Select(i => new TokenProbability(i, probs[i]))];
        }
        return result;
    }

    /// <summary>
    /// Softmax and top-k on the device: only the <c>[rows, k]</c> probabilities and ids come back, not <c>[rows, vocab]</c>
    /// logits. The forward pass has already refused non-finite logits (its finite check), so nothing is lost by not
    /// scanning them here; ties go to the lower id, as on the host.
    /// </summary>
    static TokenProbability[][] OnDevice(Loupe.Tensors.Backends.IComputeBackend backend, Loupe.Tensors.Tensor logits, int rows, int V, int k)
    {
        var probs = backend.Empty(rows, V);
        backend.SoftmaxRows(logits, rows, V, probs);
        var values = backend.Empty(rows, k);
        var indices = backend.Empty(rows, k);
        backend.TopKRows(probs, rows, V, k, values, indices);
        var p = new float[rows * k];
        var id = new float[rows * k];
        values.CopyTo(p);
        indices.CopyTo(id);
        return [.. Enumerable.Range(0, rows).Select(r => Enumerable.Range(r * k, k).Select(j => new TokenProbability((int)id[j], p[j])).ToArray())];
    }
}
