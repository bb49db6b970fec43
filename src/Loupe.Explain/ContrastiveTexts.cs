using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Loupe.Explain;

/// <summary>Texts for a concept monitor, written and filtered by an endpoint.</summary>
/// <param name="Positive">Texts that express the concept and that the judge scored at or above the positive bar.</param>
/// <param name="Negative">Texts that do not (ordinary or opposite) and that the judge scored at or below the negative bar.</param>
/// <param name="Rejected">Texts the judge's score put on the wrong side of their bar, with the score.</param>
public sealed record ContrastiveSet(IReadOnlyList<string> Positive, IReadOnlyList<string> Negative, IReadOnlyList<(string Text, bool MeantPositive, int Score)> Rejected);

/// <summary>
/// Writes contrastive texts for a concept from its description, as the persona-vector pipeline does: an endpoint is
/// asked for short texts that clearly express the concept and for texts that do not (plain, everyday text and the
/// concept's opposite), in the style the monitored model reads; a judge (the same or another endpoint) then scores how
/// strongly each text expresses the concept (0–100) and only texts on the right side of their bar are kept.
/// Every request goes through <see cref="ChatClient"/>'s cache, so a rerun asks nothing twice.
/// </summary>
public static partial class ContrastiveTexts
{
    /// <summary>Asks for <paramref name="count"/> texts of each kind and keeps those the judge agrees with.</summary>
    /// <param name="writer">The endpoint that writes the texts.</param>
    /// <param name="judge">The endpoint that scores them (may be <paramref name="writer"/>).</param>
    /// <param name="concept">The concept's description, e.g. "sadness: a character feels sad, cries or is lonely".</param>
    /// <param name="count">Texts requested per kind.</param>
    /// <param name="style">What the texts should read like (the monitored model's domain).</param>
    /// <param name="positiveBar">Keep a concept text only if the judge scores it at least this.</param>
    /// <param name="negativeBar">Keep an ordinary text only if the judge scores it at most this.</param>
    /// <param name="cancellationToken">Cancels the requests.</param>
    /// <exception cref="EndpointError">An answer is not a JSON list of strings, or a score is not a number in [0, 100].</exception>
    public static async Task<ContrastiveSet> GenerateAsync(ChatClient writer, ChatClient judge, string concept, int count,
        string style = "one or two plain sentences, like a short children's story", int positiveBar = 70, int negativeBar = 30,
        CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 2);
        var positive = await WriteAsync(writer, $"Write {count} different texts that clearly express this concept: {concept}. Each text is {style}.", count, cancellationToken);
        var negative = await WriteAsync(writer, $"Write {count} different texts that do NOT express this concept: {concept}. Half are ordinary everyday texts, half express its opposite. Each text is {style}.", count, cancellationToken);
        var keptPositive = new List<string>();
        var keptNegative = new List<string>();
        var rejected = new List<(string, bool, int)>();
        foreach (var (text, meantPositive) in positive.Select(t => (t, true)).Concat(negative.Select(t => (t, false))))
        {
            int score = await ScoreAsync(judge, concept, text, cancellationToken);
            if (meantPositive && score >= positiveBar) keptPositive.Add(text);
            else if (!meantPositive && score <= negativeBar) keptNegative.Add(text);
            else rejected.Add((text, meantPositive, score));
        }
        return new ContrastiveSet(keptPositive, keptNegative, rejected);
    }

    static async Task<IReadOnlyList<string>> WriteAsync(ChatClient client, string request, int count, CancellationToken cancellationToken)
    {
        var answer = await client.CompleteAsync([
            new ChatMessage("system", "You write example texts for training a classifier. Answer with a JSON list of strings only, no commentary."),
            new ChatMessage("user", request + $" Answer with a JSON list of exactly {count} strings.")], cancellationToken);
        string content = answer.Content.Trim();
        int start = content.IndexOf('['), end = content.LastIndexOf(']');
        try
        {
            if (start < 0 || end <= start) throw new JsonException("no list");
            var texts = JsonSerializer.Deserialize<string[]>(content[start..(end + 1)]) ?? throw new JsonException("null");
            return [.. texts.Select(t => t.Trim()).Where(t => t.Length > 0).Distinct()];
        }
        catch (JsonException)
        {
            throw new EndpointError($"{client.Options.ChatUrl}: expected a JSON list of strings, got: {content[..Math.Min(200, content.Length)]}");
        }
    }

    [GeneratedRegex(@"\b(100|\d{1,2})\b")]
    private static partial Regex Score();

    static async Task<int> ScoreAsync(ChatClient judge, string concept, string text, CancellationToken cancellationToken)
    {
        var answer = await judge.CompleteAsync([
            new ChatMessage("system", "You rate texts. Answer with one integer from 0 to 100 and nothing else."),
            new ChatMessage("user", $"How strongly does this text express the concept \"{concept}\"? 0 = not at all, 100 = unmistakably.\n<text>{text}</text>")],
            cancellationToken);
        var match = Score().Match(answer.Content);
        return match.Success ? int.Parse(match.Value, CultureInfo.InvariantCulture)
            : throw new EndpointError($"{judge.Options.ChatUrl}: expected a score from 0 to 100, got: {answer.Content[..Math.Min(200, answer.Content.Length)]}");
    }
}
