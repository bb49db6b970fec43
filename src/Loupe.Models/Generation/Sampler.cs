using System.Numerics.Tensors;

namespace Loupe.Models.Generation;

/// <summary>How to pick each new token.</summary>
/// <param name="MaxNewTokens">Upper bound on generated tokens (also bounded by n_ctx).</param>
/// <param name="Temperature">0 = greedy (argmax); otherwise logits are divided by it before sampling.</param>
/// <param name="TopK">Keep only the k most likely tokens (0 = all).</param>
/// <param name="TopP">Keep the smallest set whose probability reaches p (1 = all).</param>
/// <param name="Seed">Seeds the sampler so runs repeat exactly.</param>
/// <param name="StopAtEos">Stop a row once it emits the end-of-sequence token.</param>
public sealed record GenerationOptions(int MaxNewTokens = 32, float Temperature = 0f, int TopK = 0, float TopP = 1f, int Seed = 0, bool StopAtEos = true);

/// <summary>Greedy, temperature, top-k and top-p (nucleus) sampling with a seeded generator.</summary>
public sealed class Sampler
{
    readonly GenerationOptions _options;
    readonly Random _random;

    public Sampler(GenerationOptions options)
    {
        if (options.Temperature < 0) throw new ArgumentException($"temperature must be ≥ 0, got {options.Temperature}");
        if (options.TopP is <= 0 or > 1) throw new ArgumentException($"top-p must be in (0, 1], got {options.TopP}");
        if (options.TopK < 0) throw new ArgumentException($"top-k must be ≥ 0, got {options.TopK}");
        _options = options;
        _random = new Random(options.Seed);
    }

    /// <summary>Picks a token id from one row of logits.</summary>
    /// <exception cref="InvalidOperationException">The logits contain NaN.</exception>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (TensorPrimitives.IndexOfMax(logits) is var argmax && float.IsNaN(logits[argmax]))
            throw new InvalidOperationException("the model produced NaN logits; cannot sample a token");
        if (_options.Temperature == 0f) return argmax;
        var order = Enumerable.Range(0, logits.Length).ToArray();
        var values = logits.ToArray();
        Array.Sort(values.Select(v => -v).ToArray(), order);
        int keep = _options.TopK > 0 ? Math.Min(_options.TopK, order.Length) : order.Length;
        var probs = new double[keep];
        double max = logits[order[0]] / _options.Temperature, sum = 0;
        for (int i = 0; i < keep; i++) sum += probs[i] = Math.Exp(logits[order[i]] / _options.Temperature - max);
        if (_options.TopP < 1f)
        {
            double cumulative = 0;
            for (int i = 0; i < keep; i++)
            {
                cumulative += probs[i] / sum;
                if (cumulative >= _options.TopP) { keep = i + 1; break; }
            }
            sum = 0;
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        double u = _random.NextDouble() * sum;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[i];
            if (u <= 0) return order[i];
        }
        return order[keep - 1];
    }
}
