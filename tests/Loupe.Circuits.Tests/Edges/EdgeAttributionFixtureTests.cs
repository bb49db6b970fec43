using System.Text.Json;
using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Circuits.Tests.Edges;

/// <summary>
/// Loupe's EAP, EAP-IG-inputs and exact edge scores against EAP-IG's own (hannamw/EAP-IG on TransformerLens,
/// tests/data/circuits, see its README): every edge within 2e-5 absolute, compared by name, and the same top 20.
/// </summary>
public class EdgeAttributionFixtureTests(ITestOutputHelper output)
{
    const double Tolerance = 2e-5;
    const string Induction = "models/induction-attn-only-2l";

    public static TheoryData<string> Methods => ["EAP", "EAP-IG-inputs.steps5", "EAP-IG-inputs.steps30", "exact"];

    [Theory]
    [MemberData(nameof(Methods))]
    public void Gpt2MatchesEapIg(string method)
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var fixture = Fixture.Load("gpt2");
        var metric = fixture.Gpt2Metric();
        Compare(fixture, method, Score(model, fixture, metric, method));
    }

    [RequiresSharedTheory(Induction)]
    [MemberData(nameof(Methods))]
    public void InductionMatchesEapIg(string method)
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(Induction));
        var fixture = Fixture.Load("induction-attn-only-2l");
        var metric = fixture.InductionMetric();
        Compare(fixture, method, Score(model, fixture, metric, method));
    }

    static EdgeScores Score(HookedTransformer model, Fixture fixture, IExampleMetric metric, string method)
    {
        var graph = EdgeGraph.FromModel(model);
        return method switch
        {
            "EAP" => EdgeAttribution.Eap(model, graph, fixture.Clean, fixture.Corrupted, metric),
            "exact" => EdgeAttribution.Exact(model, graph, fixture.Clean, fixture.Corrupted, metric),
            _ => EdgeAttribution.EapIgInputs(model, graph, fixture.Clean, fixture.Corrupted, metric, int.Parse(method["EAP-IG-inputs.steps".Length..])),
        };
    }

    void Compare(Fixture fixture, string method, EdgeScores ours)
    {
        Assert.Equal(method, ours.Method);
        var reference = fixture.Scores(method);
        double worst = 0;
        foreach (var (name, expected) in reference)
        {
            // Edges of the zero MLPs EAP-IG needed for the attention-only model are not in Loupe's graph; they score 0 there.
            double actual = ours.Graph.IndexOf(name) >= 0 ? ours[name] : 0;
            Assert.True(Math.Abs(actual - expected) <= Tolerance, $"{method} {name}: Loupe {actual:G9}, EAP-IG {expected:G9}");
            worst = Math.Max(worst, Math.Abs(actual - expected));
        }
        output.WriteLine($"{method}: {reference.Count} edges, max |Loupe − EAP-IG| = {worst:E2}");
        Assert.InRange(worst, 0, Tolerance);
        Assert.Equal(ours.Graph.Edges.Count, reference.Count(r => ours.Graph.IndexOf(r.Key) >= 0));
        var topReference = reference.OrderByDescending(r => Math.Abs(r.Value)).Take(20).Select(r => r.Key).ToArray();
        var topOurs = ours.Graph.Edges.Select((e, i) => (e.Name, Score: ours.Scores[i])).OrderByDescending(x => Math.Abs(x.Score)).Take(20).Select(x => x.Name).ToArray();
        Assert.Equal(topReference, topOurs);
    }
}
