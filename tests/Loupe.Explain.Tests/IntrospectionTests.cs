using Loupe.Explain;
using Loupe.Explain.Introspection;
using Loupe.Models;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Explain.Tests;

/// <summary>
/// The concept-injection protocol with answers known in advance: a planted vector (a word's unembedding direction at the
/// last layer, far above the stream's norm) makes the model say the word, a scripted judge grades through the real HTTP
/// client, and the rates come out as constructed; the string-match grader on hand-written responses; and the real
/// protocol end to end on stories260K (a 260K-parameter model is not expected to introspect; its rates are reported).
/// </summary>
public class IntrospectionTests(ITestOutputHelper output)
{
    static readonly string[] Words = ["dog", "ball", "tree"];
    /// <summary>Words that are one token each in stories260K's vocabulary, so a planted unembedding direction spells them.</summary>
    static readonly string[] SingleTokenWords = ["big", "happy", "mom"];

    [Fact]
    public async Task StringMatchGraderReadsAffirmationsAndNames()
    {
        var grader = new StringMatchGrader();
        Assert.Equal(new Grade(true, true), await grader.GradeAsync("Yes, I detect a thought about dogs.", "dog"));
        Assert.Equal(new Grade(true, false), await grader.GradeAsync("I notice something strange, maybe the sea.", "dog"));
        Assert.Equal(new Grade(false, true), await grader.GradeAsync("No. The dog is brown.", "dog"));
        Assert.Equal(new Grade(false, false), await grader.GradeAsync("No, I don't detect anything.", null));
        Assert.False((await grader.GradeAsync("hotdogs are tasty", "dog")).Identified);
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task APlantedConceptIsDetectedAndIdentifiedByAScriptedJudge()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        int L = model.Config.NLayers;
        var typical = model.RunWithCache(TokenBatch.Single(model.Tokenizer!.Encode("Once upon a time there was a dog")), Loupe.Models.Hooks.HookNames.ResidPre(L - 1))
            .Cache[Loupe.Models.Hooks.HookNames.ResidPre(L - 1)].ToCpu().Span.ToArray();
        double norm = Math.Sqrt(typical.Sum(x => (double)x * x) / (typical.Length / model.Config.DModel));
        var vectors = SingleTokenWords.ToDictionary(w => w, w =>
        {
            int token = model.Tokenizer.Encode(w).Last();
            var u = model.UnembedDirection(token);
            double length = Math.Sqrt(u.Sum(x => (double)x * x));
            return (IReadOnlyDictionary<int, float[]>)new Dictionary<int, float[]> { [L - 1] = [.. u.Select(x => (float)(x / length * 20 * norm))] };
        });
        using var server = new ScriptedServer
        {
            // The judge: detection = the response mentions any concept word; identification = it mentions the asked one.
            CustomAnswer = (system, user) =>
            {
                string response = user[(user.IndexOf("<response>", StringComparison.Ordinal) + 10)..user.IndexOf("</response>", StringComparison.Ordinal)].ToLowerInvariant();
                string? asked = user.Contains("about \"", StringComparison.Ordinal) ? user.Split("about \"")[1].Split('"')[0] : null;
                string q1 = SingleTokenWords.Any(response.Contains) ? "YES" : "NO";
                return asked is null ? q1 : $"{q1}\n{(response.Contains(asked) ? "YES" : "NO")}";
            },
        };
        using var judge = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "judge" });
        var result = await ConceptInjection.RunAsync(model, new IntrospectionOptions
        {
            Words = SingleTokenWords, LayerFractions = [1.0], Strengths = [1], Vectors = vectors, NewTokens = 6,
        }, new JudgeGrader(judge));
        foreach (var t in result.Trials) output.WriteLine($"{t.Word ?? "(control)",-10} {t.Grade} {t.Response}");
        var cell = Assert.Single(result.Cells);
        Assert.Equal(L - 1, cell.Layer);
        Assert.Equal(1.0, cell.Detection);
        Assert.Equal(1.0, cell.Identification);
        Assert.Equal(0.0, cell.FalsePositives);
        Assert.Equal(SingleTokenWords.Length + 1, server.Answered); // one judgement per trial, the control once
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task TheProtocolRunsEndToEndOnStories260K()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var vectors = ConceptInjection.ConceptVectors(model, Words, 2, "Tell me about {0}");
        var sum = new double[model.Config.DModel];
        foreach (var v in vectors.Values) for (int d = 0; d < sum.Length; d++) sum[d] += v[d];
        Assert.All(sum, s => Assert.InRange(s, -1e-4, 1e-4)); // differences from the mean
        var result = await ConceptInjection.RunAsync(model, new IntrospectionOptions { Words = Words, LayerFractions = [0.4, 0.8], Strengths = [2, 8], NewTokens = 12 }, new StringMatchGrader());
        Assert.Equal(4, result.Cells.Count);
        foreach (var c in result.Cells) output.WriteLine($"layer {c.Layer} × {c.Strength}: detection {c.Detection:P0}, identification {c.Identification:P0}, false positives {c.FalsePositives:P0}");
        Assert.All(result.Cells, c => Assert.InRange(c.Detection, 0, 1));
        Assert.Equal(4 * (Words.Length + 1), result.Trials.Count);
    }
}
