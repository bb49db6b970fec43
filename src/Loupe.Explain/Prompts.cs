using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Loupe.Explain;

/// <summary>
/// A text window as the prompts show it: its tokens' texts, which are marked, and (for the explainer) each
/// token's activation scaled to 0–10 of the feature's maximum.
/// </summary>
public sealed record TextExample(string[] Tokens, bool[] Marked, int[]? Levels = null)
{
    /// <summary>The tokens joined, each run of consecutive marked tokens wrapped as <c>&lt;&lt;so&gt;&gt;</c>.</summary>
    public string Render()
    {
        var text = new StringBuilder();
        for (int i = 0; i < Tokens.Length; i++)
        {
            if (Marked[i] && (i == 0 || !Marked[i - 1])) text.Append("<<");
            text.Append(Tokens[i]);
            if (Marked[i] && (i == Tokens.Length - 1 || !Marked[i + 1])) text.Append(">>");
        }
        return text.ToString();
    }
}

/// <summary>
/// The explainer and scorer prompts, after the design of EleutherAI's Delphi (own wording): the explainer sees
/// examples with activating tokens between <c>&lt;&lt; &gt;&gt;</c> (optionally with 0–10 activation levels) and the
/// feature's promoted tokens, and ends its answer with <c>[EXPLANATION]: …</c>; the detection and fuzzing scorers
/// see a batch of numbered examples and answer with a JSON list of 0/1, one per example.
/// </summary>
public static partial class Prompts
{
    public const string ExplainerSystem = """
        You are a careful interpretability researcher studying one feature of a language model's internal activations.
        You get text examples in which the tokens where the feature activates are marked between delimiters <<like this>>;
        a run of consecutive activating tokens is marked as one span <<like this one>>. After an example, the marked tokens
        may be listed with their activation strength from 0 to 10. You may also get the tokens the feature makes more or
        less likely to come next.

        Look for what the marked tokens have in common: the token itself, its meaning, the context before it, or what
        comes after it. Write one short explanation (a phrase or a sentence, no more) that would let someone predict where
        the feature activates. Do not list the examples. You may think first; your answer must end with a line of the form
        [EXPLANATION]: your explanation
        """;

    public const string DetectionSystem = """
        You are checking an explanation of a feature of a language model. You get the explanation and numbered text
        examples. The feature activates on some tokens of some examples and on none of others. For each example, decide
        whether the feature, as the explanation describes it, activates anywhere in that example.
        Answer with nothing but a JSON list with one 0 (does not activate) or 1 (activates) per example, in order,
        for example [1, 0, 0, 1].
        """;

    public const string FuzzingSystem = """
        You are checking an explanation of a feature of a language model. You get the explanation and numbered text
        examples, each with some tokens marked between delimiters <<like this>>. In some examples the marked tokens are
        exactly those on which the feature activates; in others the marked tokens were chosen at random. For each example,
        decide whether the marked tokens are ones the explanation describes.
        Answer with nothing but a JSON list with one 1 (marked correctly) or 0 (marked at random) per example, in order,
        for example [0, 1, 1, 0].
        """;

    /// <summary>The explainer's messages for a feature's examples and (when stored) its promoted/suppressed tokens.</summary>
    public static List<ChatMessage> Explainer(IReadOnlyList<TextExample> examples, IReadOnlyList<string> promoted, IReadOnlyList<string> suppressed)
    {
        var user = new StringBuilder();
        for (int i = 0; i < examples.Count; i++)
        {
            var e = examples[i];
            user.Append("Example ").Append(i + 1).Append(": ").Append(Visible(e.Render())).Append('\n');
            if (e.Levels is { } levels)
            {
                var marked = Enumerable.Range(0, e.Tokens.Length).Where(j => e.Marked[j])
                    .Select(j => $"(\"{Visible(e.Tokens[j])}\", {levels[j].ToString(CultureInfo.InvariantCulture)})");
                user.Append("Activations: ").Append(string.Join(", ", marked)).Append('\n');
            }
        }
        if (promoted.Count > 0) user.Append("\nTokens the feature makes more likely next: ").Append(string.Join(", ", promoted.Select(Quote))).Append('\n');
        if (suppressed.Count > 0) user.Append("Tokens the feature makes less likely next: ").Append(string.Join(", ", suppressed.Select(Quote))).Append('\n');
        return [new("system", ExplainerSystem), new("user", user.ToString())];
    }

    /// <summary>A scorer's messages: the explanation and the batch of examples, numbered from 1.</summary>
    public static List<ChatMessage> Scorer(string system, string explanation, IReadOnlyList<TextExample> batch)
    {
        var user = new StringBuilder();
        user.Append("Explanation: ").Append(explanation).Append("\n\n");
        for (int i = 0; i < batch.Count; i++) user.Append("Example ").Append(i + 1).Append(": ").Append(Visible(batch[i].Render())).Append('\n');
        user.Append("\nAnswer with a JSON list of ").Append(batch.Count).Append(" numbers (0 or 1).");
        return [new("system", system), new("user", user.ToString())];
    }

    static string Visible(string s) => s.Replace("\r", "\\r").Replace("\n", "\\n");

    static string Quote(string s) => "\"" + Visible(s) + "\"";

    /// <summary>The explanation after the last <c>[EXPLANATION]:</c>, whitespace collapsed; without the marker, the answer's last non-empty line.</summary>
    public static string ParseExplanation(string answer)
    {
        int at = answer.LastIndexOf("[EXPLANATION]:", StringComparison.OrdinalIgnoreCase);
        string text = at >= 0 ? answer[(at + "[EXPLANATION]:".Length)..]
            : answer.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.Length > 0) ?? "";
        text = Whitespace().Replace(text, " ").Trim();
        return text.Length > 1 && text[0] == '"' && text[^1] == '"' && text.IndexOf('"', 1) == text.Length - 1 ? text[1..^1].Trim() : text;
    }

    /// <summary>The 0/1 answers of a scorer, or null when the answer holds no JSON list of exactly <paramref name="count"/> zeros and ones.</summary>
    public static int[]? ParseAnswers(string answer, int count)
    {
        foreach (Match m in ListPattern().Matches(answer).Reverse())
        {
            try
            {
                var values = JsonSerializer.Deserialize<int[]>(m.Value);
                if (values is not null && values.Length == count && values.All(v => v is 0 or 1)) return values;
            }
            catch (JsonException)
            {
            }
        }
        return null;
    }

    /// <summary>
    /// P("1") of each answer from the logprobs: the i-th token that reads 0 or 1 is the i-th answer, and its
    /// alternatives give P(1) / (P(0) + P(1)). Null when the logprobs do not hold <paramref name="count"/> such tokens.
    /// </summary>
    public static double[]? AnswerProbabilities(IReadOnlyList<TokenLogprob>? logprobs, int count)
    {
        if (logprobs is null) return null;
        var result = new List<double>(count);
        foreach (var t in logprobs)
        {
            string token = t.Token.Trim();
            if (token is not ("0" or "1")) continue;
            double p0 = 0, p1 = 0;
            foreach (var (alternative, logprob) in t.Top)
            {
                string a = alternative.Trim();
                if (a == "1") p1 += Math.Exp(logprob);
                else if (a == "0") p0 += Math.Exp(logprob);
            }
            if (!t.Top.Keys.Any(k => k.Trim() == token))
                if (token == "1") p1 += Math.Exp(t.Logprob); else p0 += Math.Exp(t.Logprob);
            result.Add(p0 + p1 > 0 ? p1 / (p0 + p1) : token == "1" ? 1 : 0);
            if (result.Count == count) return [.. result];
        }
        return null;
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();

    [GeneratedRegex(@"\[[\s0-9,]*\]")]
    private static partial Regex ListPattern();
}
