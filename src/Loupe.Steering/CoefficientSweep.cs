using Loupe.Reports;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;

namespace Loupe.Steering;

/// <summary>Sampling settings for a coefficient sweep.</summary>
/// <param name="MaxNewTokens">Tokens generated per sample.</param>
/// <param name="Temperature">Sampling temperature (0 = greedy, which makes every seed alike).</param>
/// <param name="TopK">Sample among the k most likely tokens (0 = all).</param>
/// <param name="TopP">Nucleus sampling mass (1 = all).</param>
/// <param name="Seeds">Samples per coefficient; sample i uses seed <c>FirstSeed + i</c> at every coefficient, so rows are paired.</param>
/// <param name="FirstSeed">The first seed.</param>
public sealed record SweepOptions(int MaxNewTokens = 60, float Temperature = 0.9f, int TopK = 40, float TopP = 1f, int Seeds = 8, int FirstSeed = 0);

/// <summary>One generated continuation and its score.</summary>
/// <param name="Seed">The sampler's seed.</param>
/// <param name="Tokens">The new tokens (prompt excluded).</param>
/// <param name="Text">The new tokens decoded.</param>
/// <param name="Score">The sweep's score of the continuation.</param>
/// <param name="LogProb">
/// Fluency: the mean log-probability per new token under the unedited model (nats; closer to 0 is
/// more the model's own text). Steering too hard shows up as a drop here before anything else.
/// </param>
public sealed record SweepSample(int Seed, int[] Tokens, string Text, double Score, double LogProb);

/// <summary>All samples at one coefficient, with the mean and sample standard deviation of their scores.</summary>
public sealed record SweepPoint(float Coefficient, IReadOnlyList<SweepSample> Samples)
{
    public double Mean => Separation.MeanSd(Samples.Select(s => s.Score).ToArray()).Mean;
    public double Sd => Separation.MeanSd(Samples.Select(s => s.Score).ToArray()).Sd;
    /// <summary>Mean of <see cref="SweepSample.LogProb"/> over samples (NaN when no sample has tokens).</summary>
    public double MeanLogProb => Samples.Where(s => s.Tokens.Length > 0).Select(s => s.LogProb).DefaultIfEmpty(double.NaN).Average();
}

/// <summary>
/// Measures how an edit's coefficient changes generated text.
/// 1. for each coefficient, build the edit (coefficient 0, or a null edit, runs the plain model);
/// 2. for each seed, sample a continuation of the prompt with the edit active at every step;
/// 3. score the continuation (prompt excluded) and its fluency (mean log-prob under the plain model);
/// 4. summarise per coefficient (mean ± sd over seeds).
/// </summary>
public static class CoefficientSweep
{
    /// <exception cref="InputError">No coefficients, fewer than one seed, an empty prompt, or an edit the model rejects.</exception>
    public static IReadOnlyList<SweepPoint> Run(HookedTransformer model, int[] prompt, IReadOnlyList<float> coefficients,
        Func<float, IActivationEdit?> edit, Func<int[], string, double> score, SweepOptions? options = null, IProgress<int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new SweepOptions();
        if (coefficients.Count == 0) throw new InputError("the sweep needs at least one coefficient");
        if (options.Seeds < 1) throw new InputError($"the sweep needs at least one seed, got {options.Seeds}");
        if (prompt.Length == 0) throw new InputError("the prompt has no tokens");
        var points = new List<SweepPoint>();
        int done = 0;
        foreach (float c in coefficients)
        {
            var e = c == 0f ? null : edit(c);
            var run = e is null ? new RunOptions() : ActivationEdits.Options(model, e);
            var samples = new List<SweepSample>();
            for (int i = 0; i < options.Seeds; i++)
            {
                int seed = options.FirstSeed + i;
                var generation = new GenerationOptions(options.MaxNewTokens, options.Temperature, options.TopK, options.TopP, seed);
                var tokens = model.Generate([prompt], generation, run)[0];
                string text = model.Tokenizer?.Decode(tokens, skipSpecialTokens: true) ?? string.Join(",", tokens);
                samples.Add(new SweepSample(seed, tokens, text, score(tokens, text), MeanLogProb(model, prompt, tokens)));
                progress?.Report(++done);
            }
            points.Add(new SweepPoint(c, samples));
        }
        return points;
    }

    /// <summary>Mean log-probability (nats) of <paramref name="continuation"/> after <paramref name="prompt"/> under the plain model; NaN when empty.</summary>
    public static double MeanLogProb(HookedTransformer model, int[] prompt, int[] continuation)
    {
        if (continuation.Length == 0) return double.NaN;
        var all = prompt.Concat(continuation).Take(model.Config.NCtx).ToArray();
        int V = model.Config.VocabOut, n = all.Length - prompt.Length;
        if (n <= 0) return double.NaN;
        var output = model.Run(all).Logits; // [1, pos, d_vocab_out]
        if (!output.IsHost)
        {
            // On a device: the cross-entropy of each next token there, and only its sum comes back.
            var backend = model.Backend;
            var rows = new Loupe.Tensors.Tensor(output.Storage.Slice((long)(prompt.Length - 1) * V, (long)n * V), n, V);
            var loss = backend.Empty(n);
            backend.CrossEntropyRows(rows, n, V, all.AsSpan(prompt.Length, n), loss, null, 1f);
            return -backend.Sum(loss) / n;
        }
        var logits = output.Span;
        double total = 0;
        for (int t = prompt.Length - 1; t < all.Length - 1; t++)
        {
            var row = logits.Slice(t * V, V);
            double max = double.NegativeInfinity, sum = 0;
            foreach (float x in row) max = Math.Max(max, x);
            foreach (float x in row) sum += Math.Exp(x - max);
            total += row[all[t + 1]] - max - Math.Log(sum); // log softmax of the token that came next
        }
        return total / n;
    }

    /// <summary>
    /// Spearman rank correlation between the coefficients and the mean scores: +1 when the mean
    /// rises with every step of the coefficient. NaN for fewer than two points or constant means.
    /// </summary>
    public static double Trend(IReadOnlyList<SweepPoint> points) =>
        RankCorrelation.Spearman(points.Select(p => (double)p.Coefficient).ToArray(), points.Select(p => p.Mean).ToArray());
}
