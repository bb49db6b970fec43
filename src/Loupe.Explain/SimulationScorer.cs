// Simulation scoring (Bills et al. 2023, "Language models can explain neurons in language models"; Delphi's simulator
// scorer): a language model reads only the explanation and predicts the feature's activation, 0–10, on every token of
// a window; the score is the correlation between predicted and true activations over every token of every window
// (held-out activating windows and as many windows from contexts where the feature has no stored example, taken as
// all-zero — the detection scorer's examples). Correlation is blind to scale, so the 0–10 range needs no calibration.
//
// OpenAI's original reads expected values from the logprobs of the prompt itself ("all at once"), which chat endpoints
// cannot give. Here the simulator answers with a JSON list of numbers, one per token; when the endpoint returns
// logprobs, each number whose token is exactly that number is replaced by the expected value over the alternatives
// that read 0–10 (the answer is autoregressive: each value is conditioned on the values sampled before it). An answer
// without a list of the right length and range is counted unparsed and simulates zeros, as Delphi's does.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Loupe.Explain;

/// <summary>A window the simulator predicts: its tokens, the feature's true activation on each, and whether it is one of the feature's activating windows.</summary>
public sealed record SimulationExample(string[] Tokens, float[] Activations, bool Activating);

/// <summary>
/// The simulation scorer's result: Pearson correlation of predicted and true activations over every token of every
/// window (null when either side is constant, e.g. nothing predicted anywhere), the same over the activating windows
/// alone, the windows and tokens, the windows whose answer could not be parsed (simulated as zeros), and the windows
/// whose predictions are expected values from logprobs.
/// </summary>
public sealed record SimulationMetrics(double? Correlation, double? ActivatingCorrelation, int N, int Tokens, int Unparsed, int FromLogprobs)
{
    /// <summary>Metric name → value, as stored in <c>explanation_scores</c> (an undefined correlation is left out).</summary>
    public IEnumerable<(string Metric, double Value)> Values()
    {
        if (Correlation is double r) yield return ("ev_correlation", r);
        if (ActivatingCorrelation is double a) yield return ("ev_correlation_activating", a);
        yield return ("n", N);
        yield return ("tokens", Tokens);
        yield return ("unparsed", Unparsed);
        yield return ("from_logprobs", FromLogprobs);
    }

    /// <summary>The metrics of <paramref name="predictions"/> (one array per example, aligned with its tokens).</summary>
    public static SimulationMetrics Compute(IReadOnlyList<SimulationExample> examples, IReadOnlyList<double[]> predictions, int unparsed, int fromLogprobs)
    {
        if (examples.Count != predictions.Count) throw new ArgumentException($"{predictions.Count} predictions for {examples.Count} examples", nameof(predictions));
        var truth = new List<double>();
        var predicted = new List<double>();
        var activatingTruth = new List<double>();
        var activatingPredicted = new List<double>();
        for (int i = 0; i < examples.Count; i++)
        {
            var e = examples[i];
            if (predictions[i].Length != e.Tokens.Length) throw new ArgumentException($"example {i}: {predictions[i].Length} predictions for {e.Tokens.Length} tokens", nameof(predictions));
            for (int t = 0; t < e.Tokens.Length; t++)
            {
                truth.Add(e.Activations[t]);
                predicted.Add(predictions[i][t]);
                if (!e.Activating) continue;
                activatingTruth.Add(e.Activations[t]);
                activatingPredicted.Add(predictions[i][t]);
            }
        }
        return new SimulationMetrics(Pearson(truth, predicted), Pearson(activatingTruth, activatingPredicted), examples.Count, truth.Count, unparsed, fromLogprobs);
    }

    /// <summary>Pearson's r; null with fewer than two values or when either side has no variance.</summary>
    public static double? Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        int n = x.Count;
        if (n != y.Count) throw new ArgumentException("x and y differ in length");
        if (n < 2) return null;
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < n; i++)
        {
            double dx = x[i] - mx, dy = y[i] - my;
            sxy += dx * dy;
            sxx += dx * dx;
            syy += dy * dy;
        }
        return sxx <= 0 || syy <= 0 ? null : Math.Clamp(sxy / Math.Sqrt(sxx * syy), -1, 1);
    }
}

/// <summary>The simulator's prompt and the parsing of its answer (see the file header).</summary>
public static partial class SimulationScorer
{
    public const int MaxLevel = 10;

    public const string System = """
        You are checking an explanation of a feature of a language model. You get the explanation and a text split into
        numbered tokens. Predict, from the explanation alone, how strongly the feature activates on each token, as a number
        from 0 (not at all) to 10 (as strongly as it ever does). Most tokens of most texts get 0. A feature that fires on a
        word may fire on only one of its tokens; read the explanation for where it fires and on what context.
        Answer with nothing but a JSON list with one number per token, in order, for example [0, 0, 7, 0].
        """;

    // A worked example (invented for this prompt) so the simulator sees the format and that most values are 0.
    static readonly string[] s_exampleTokens = ["It", " was", " raining", " hard", ",", " so", " we", " stayed", " in", "."];
    static readonly int[] s_exampleLevels = [0, 0, 10, 3, 0, 0, 0, 0, 0, 0];
    const string ExampleExplanation = "the word \"rain\" and its forms, most strongly the verb";

    /// <summary>The simulator's messages for one window: the worked example, then the explanation and the window's tokens.</summary>
    public static List<ChatMessage> Prompt(string explanation, IReadOnlyList<string> tokens) =>
    [
        new("system", System),
        new("user", User(ExampleExplanation, s_exampleTokens)),
        new("assistant", "[" + string.Join(", ", s_exampleLevels) + "]"),
        new("user", User(explanation, tokens)),
    ];

    static string User(string explanation, IReadOnlyList<string> tokens)
    {
        var user = new StringBuilder();
        user.Append("Explanation: ").Append(explanation).Append("\n\nTokens:\n");
        for (int i = 0; i < tokens.Count; i++)
            user.Append(i + 1).Append('\t').Append(JsonSerializer.Serialize(tokens[i])).Append('\n');
        user.Append("\nAnswer with a JSON list of ").Append(tokens.Count).Append(" numbers from 0 to 10.");
        return user.ToString();
    }

    /// <summary>
    /// The predicted activations in a simulator's answer: the last JSON list of exactly <paramref name="count"/> numbers
    /// in 0–10, each replaced by its expected value when <paramref name="logprobs"/> align with the answer and hold that
    /// number as one token. Null when the answer has no such list.
    /// </summary>
    public static (double[] Values, bool FromLogprobs)? Parse(string answer, IReadOnlyList<TokenLogprob>? logprobs, int count)
    {
        foreach (Match m in ListPattern().Matches(answer).Reverse())
        {
            double[]? values;
            try
            {
                values = JsonSerializer.Deserialize<double[]>(m.Value);
            }
            catch (JsonException)
            {
                continue;
            }
            var numbers = NumberPattern().Matches(m.Value);
            if (values is null || values.Length != count || numbers.Count != count || !values.All(v => v is >= 0 and <= MaxLevel)) continue;
            bool fromLogprobs = ExpectedValues(answer, logprobs, m.Index, numbers, values);
            return (values, fromLogprobs);
        }
        return null;
    }

    /// <summary>
    /// Replaces each value by E[level] over its token's alternatives that read 0–10 (the sampled token included when the
    /// alternatives leave it out). Only when the logprob tokens spell the answer exactly and every number is one token;
    /// otherwise the sampled values stay and false is returned.
    /// </summary>
    static bool ExpectedValues(string answer, IReadOnlyList<TokenLogprob>? logprobs, int listStart, MatchCollection numbers, double[] values)
    {
        if (logprobs is null || logprobs.Count == 0) return false;
        var starts = new Dictionary<int, TokenLogprob>();
        int offset = 0;
        foreach (var t in logprobs)
        {
            if (offset + t.Token.Length > answer.Length || string.CompareOrdinal(answer, offset, t.Token, 0, t.Token.Length) != 0) return false;
            // a token may carry the number's leading space: key it by where its digits start
            starts[offset + (t.Token.Length - t.Token.TrimStart().Length)] = t;
            offset += t.Token.Length;
        }
        if (offset != answer.Length) return false;
        var expected = new double[values.Length];
        for (int i = 0; i < numbers.Count; i++)
        {
            var number = numbers[i];
            if (!starts.TryGetValue(listStart + number.Index, out var token) || token.Token.Trim() != number.Value) return false;
            double total = 0, weighted = 0;
            foreach (var (alternative, logprob) in token.Top)
                if (Level(alternative) is int level)
                {
                    double p = Math.Exp(logprob);
                    total += p;
                    weighted += p * level;
                }
            if (!token.Top.Keys.Any(k => k.Trim() == number.Value) && Level(number.Value) is int sampled)
            {
                double p = Math.Exp(token.Logprob);
                total += p;
                weighted += p * sampled;
            }
            if (!(total > 0)) return false;
            expected[i] = weighted / total;
        }
        expected.CopyTo(values, 0);
        return true;
    }

    static int? Level(string token) =>
        int.TryParse(token.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v <= MaxLevel ? v : null;

    [GeneratedRegex(@"\[[\s0-9.,]*\]")]
    private static partial Regex ListPattern();

    [GeneratedRegex(@"[0-9]+(\.[0-9]+)?")]
    private static partial Regex NumberPattern();
}
