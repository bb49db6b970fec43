using System.Text.Json;
using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Edges;

/// <summary>The EAP-IG reference data of tests/data/circuits/{name}: tokens and every method's score per edge.</summary>
sealed record Fixture(TokenBatch Clean, TokenBatch Corrupted, JsonElement Edges)
{
    public static Fixture Load(string name)
    {
        string folder = SharedData.TestData(Path.Combine("circuits", name));
        using var scores = SafeTensorsFile.Open(Path.Combine(folder, "scores.safetensors"));
        TokenBatch Tokens(string tensor)
        {
            Assert.True(scores.TryGetInfo(tensor, out var info));
            var ids = scores.GetInt64(tensor).Select(x => (int)x).ToArray();
            return new TokenBatch(ids, (int)info.Shape[0], (int)info.Shape[1]);
        }
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "edges.json")));
        return new Fixture(Tokens("clean_tokens"), Tokens("corrupted_tokens"), json.RootElement.GetProperty("edges").Clone());
    }

    /// <summary>The gpt2 fixture's metric: m_b = logits[b, −1, 17] − logits[b, −1, 42].</summary>
    public MeanLogitDiff Gpt2Metric() => new([.. Enumerable.Range(0, Clean.Batch).Select(_ => new[] { new LogitDiffTerm(-1, 17, 42) })]);

    /// <summary>The induction fixture's metric: m_b = mean over p = 48..62 of logits[b, p, clean[b, p+1]] − logits[b, p, corrupted[b, p+1]].</summary>
    public MeanLogitDiff InductionMetric()
    {
        int T = Clean.Length;
        return new([.. Enumerable.Range(0, Clean.Batch).Select(b =>
            Enumerable.Range(48, 15).Select(p => new LogitDiffTerm(p, Clean.Ids[b * T + p + 1], Corrupted.Ids[b * T + p + 1])).ToArray())]);
    }

    /// <summary>Edge name → EAP-IG's score for <paramref name="method"/>, in EAP-IG's edge order.</summary>
    public List<KeyValuePair<string, double>> Scores(string method) =>
        [.. Edges.EnumerateArray().Select(e => KeyValuePair.Create(e.GetProperty("name").GetString()!, e.GetProperty(method).GetDouble()))];
}
