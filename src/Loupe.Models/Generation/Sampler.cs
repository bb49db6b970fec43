using System.Numerics.Tensors;

namespace Loupe.Models.Generation;

/// <summary>How to pick each new token.</summary>
/// <param name="MaxNewTokens">Upper bound on generated tokens (also bounded by n_ctx).</param>
/// <param name="Temperature">0 = greedy (argmax); otherwise logits are divided by it before sampling.</param>
/// <param name="TopK">Keep only the k most likely tokens (0 = all).</param>
/// <param name="TopP">Keep the smallest set whose probability reaches p (1 = all).</param>
/// <param name="Seed">Seeds the sampler so runs repeat exactly.</param>
/// <param name="StopAtEos">Stop a row once it emits the end-of-sequence token.</param>
/// <param name="OnToken">
/// Called after each step for every row still running, with the token just picked (already part of the output);
/// returning false ends that row there. Lets a caller stream tokens, read the step's logits, or stop early
/// (e.g. when a monitor crosses its threshold). Null = generate until EOS or <paramref name="MaxNewTokens"/>.
/// </param>
public sealed record GenerationOptions(int MaxNewTokens = 32, float Temperature = 0f, int TopK = 0, float TopP = 1f, int Seed = 0, bool StopAtEos = true,
    Func<GeneratedToken, bool>? OnToken = null);

/// <summary>One token just picked by <see cref="HookedTransformer.Generate"/>, as handed to <see cref="GenerationOptions.OnToken"/>.</summary>
public sealed class GeneratedToken
{
    readonly Loupe.Tensors.Tensor _logits;
    readonly float[]? _hostLogits;
    readonly int _vocab;
    float[]? _copied;

    readonly Loupe.Tensors.Backends.IComputeBackend? _backend;

    internal GeneratedToken(int row, int index, int token, Loupe.Tensors.Tensor logits, float[]? hostLogits, int vocab, Loupe.Tensors.Backends.IComputeBackend? backend = null)
    {
        _backend = backend;
        Row = row;
        Index = index;
        Token = token;
        _logits = logits;
        _hostLogits = hostLogits;
        _vocab = vocab;
    }

    /// <summary>The batch row.</summary>
    public int Row { get; }
    /// <summary>0 for the first new token of the row, 1 for the next, …</summary>
    public int Index { get; }
    public int Token { get; }

    /// <summary>
    /// The logits the token was picked from <c>[vocab]</c> (before temperature). Copied from the device only when
    /// asked, so greedy decoding that never reads them keeps picking on the device.
    /// </summary>
    public ReadOnlySpan<float> Logits => (_hostLogits ?? (_copied ??= _logits.ToCpu().Span.ToArray())).AsSpan(Row * _vocab, _vocab);

    /// <summary>Whether the step's logits are on the device (and <see cref="Logits"/> would copy a row of d_vocab floats).</summary>
    public bool LogitsOnDevice => _hostLogits is null && _copied is null && !_logits.IsHost && _backend is not null;

    /// <summary>
    /// ln p of the picked token and the <paramref name="k"/> most likely tokens (ids and ln p, most likely first; ties to
    /// the lower id) under the step's logits, computed on their device: log-softmax and top-k run there and one copy of
    /// 2k + 1 floats comes back, not the d_vocab logits.
    /// </summary>
    /// <exception cref="InvalidOperationException">The logits are not on a device (<see cref="LogitsOnDevice"/> is false).</exception>
    public (float Picked, int[] Ids, float[] LogProbs) LogProbabilitiesOnDevice(int k)
    {
        if (!LogitsOnDevice) throw new InvalidOperationException("the step's logits are on the host; read Logits");
        var b = _backend!;
        k = Math.Clamp(k, 0, _vocab);
        var row = new Loupe.Tensors.Tensor(_logits.Storage.Slice((long)Row * _vocab, _vocab), 1, _vocab);
        var logp = b.Empty(1, _vocab);
        b.LogSoftmaxRows(row, 1, _vocab, logp);
        var packed = b.Empty(2 * k + 1); // [top values | top ids | the picked token's ln p]: one read-back
        if (k > 0)
        {
            var values = b.Empty(1, k);
            var ids = b.Empty(1, k);
            b.TopKRows(logp, 1, _vocab, k, values, ids);
            b.CopyRows(values, 0, k, packed, 0, k, 1, k);
            b.CopyRows(ids, 0, k, packed, k, k, 1, k);
        }
        b.CopyRows(logp, Token, 1, packed, 2 * k, 1, 1, 1);
        var host = new float[2 * k + 1];
        packed.CopyTo(host);
        return (host[2 * k], [.. host.AsSpan(k, k).ToArray().Select(id => (int)id)], host[..k]);
    }
}

/// <summary>Greedy, temperature, top-k and top-p (nucleus) sampling with a seeded generator.</summary>
public sealed class Sampler
{
    readonly GenerationOptions _options;
    readonly Random _random;

    /// <exception cref="InputError">
    /// An option is out of range: temperature must be finite and ≥ 0, top-p in (0, 1], top-k and
    /// max-new-tokens ≥ 0 (NaN and ±∞ are refused: NaN would otherwise pick the least likely token).
    /// </exception>
    public Sampler(GenerationOptions options)
    {
        Validate(options);
        _options = options;
        _random = new Random(options.Seed);
    }

    /// <summary>Checks generation options as they arrive from a command line or a request.</summary>
    /// <exception cref="InputError">As for the constructor; the message names the option and the value found.</exception>
    public static void Validate(GenerationOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        Check.Finite(options.Temperature, 0, double.PositiveInfinity, "generation options", "temperature");
        if (!(options.TopP > 0 && options.TopP <= 1)) throw InputError.Expected("generation options", "top_p", "a number in (0, 1]", options.TopP);
        Check.InRange(options.TopK, 0, int.MaxValue, "generation options", "top_k");
        Check.InRange(options.MaxNewTokens, 0, int.MaxValue, "generation options", "max_new_tokens");
    }

    /// <summary>Picks a token id from one row of logits.</summary>
    /// <exception cref="InputError">The logits contain NaN or +∞ (the model's weights or activations overflowed).</exception>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (TensorPrimitives.IndexOfMax(logits) is var argmax && !(logits[argmax] < float.PositiveInfinity))
            throw new InputError($"the model produced {(float.IsNaN(logits[argmax]) ? "NaN" : "infinite")} logits (at token {argmax}); cannot sample a token");
        if (_options.Temperature == 0f) return argmax;
        var order = Enumerable.Range(0, logits.Length).ToArray();
        var values = logits.ToArray();
        Array.Sort(values.Select(v => -v).ToArray(), order);
        int keep = _options.TopK > 0 ? Math.Min(_options.TopK, order.Length) : order.Length;
        var probs = new double[keep];
        // Scaled differences from the largest logit are ≤ 0, so a tiny temperature underflows to 0 instead of overflowing to ∞ − ∞ = NaN.
        double max = logits[order[0]], sum = 0;
        for (int i = 0; i < keep; i++) sum += probs[i] = Math.Exp((logits[order[i]] - max) / _options.Temperature);
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
