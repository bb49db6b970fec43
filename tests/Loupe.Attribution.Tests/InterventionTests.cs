using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Attribution.Tests;

/// <summary>
/// The edges checked by intervention, as circuit-tracer's own tests do it: in the real model with attention
/// patterns, norm scales and MLP outputs frozen (a forward pass through the model's own code, not the
/// attribution engine's transpose), adding a source's vector once more changes every target feature's
/// pre-activation and every demeaned target logit by exactly that source's adjacency column.
/// </summary>
public sealed class InterventionTests
{
    sealed class Setup : IDisposable
    {
        public readonly HookedTransformer Model = FixtureAttributionTests.Model();
        public readonly ReplacementModel Replacement;
        public readonly AttributionGraph Graph;
        public readonly float[][] LogitDirections;

        public Setup()
        {
            var tc = FixtureAttributionTests.Transcoders(Model);
            Replacement = new ReplacementModel(Model, tc);
            Graph = new Attributor(Model, tc).Attribute(FixtureAttributionTests.Prompt);
            LogitDirections = FrozenProbe.LogitDirections(Model, Graph);
        }

        public void Dispose() => Model.Dispose();

        public double[] Targets(InterventionResult r) => FrozenProbe.Targets(Replacement, Graph, LogitDirections, r);

        public Func<string, bool> Cache => FrozenProbe.Cache;

        public AddedVector[] SourceVector(int node) => FrozenProbe.SourceVector(Model, Replacement.Transcoders, Graph, node);

        public double ColumnError(int source, double[] clean, double[] changed) => FrozenProbe.ColumnError(Graph, source, clean, changed);
    }

    [Fact]
    public void Every_error_token_and_feature_column_is_reproduced_by_adding_its_vector()
    {
        using var s = new Setup();
        var frozen = s.Replacement.Freeze(FixtureAttributionTests.Prompt);
        var clean = s.Targets(s.Replacement.Run(FixtureAttributionTests.Prompt, frozen: frozen, cache: s.Cache));
        double worst = 0;
        for (int source = 0; source < s.Graph.LogitOffset; source++)
        {
            var changed = s.Targets(s.Replacement.Run(FixtureAttributionTests.Prompt, frozen: frozen, additions: s.SourceVector(source), cache: s.Cache));
            worst = Math.Max(worst, s.ColumnError(source, clean, changed));
        }
        Assert.True(worst <= 1e-3, $"max |Δ − A| = {worst:g3}");
    }

    [Fact]
    public void Attribution_is_the_same_for_any_input_of_the_same_length_when_everything_is_frozen()
    {
        using var s = new Setup();
        var frozen = s.Replacement.Freeze(FixtureAttributionTests.Prompt);
        var rng = new Random(5);
        int[] other = [.. FixtureAttributionTests.Prompt.Select(_ => rng.Next(s.Model.Config.DVocab))];
        var clean = s.Targets(s.Replacement.Run(other, frozen: frozen, cache: s.Cache));
        double worst = 0;
        foreach (int source in new[] { s.Graph.ErrorOffset + 9, s.Graph.TokenOffset + 3, 0, 57, 120 })
        {
            var changed = s.Targets(s.Replacement.Run(other, frozen: frozen, additions: s.SourceVector(source), cache: s.Cache));
            worst = Math.Max(worst, s.ColumnError(source, clean, changed));
        }
        Assert.True(worst <= 1e-3, $"max |Δ − A| = {worst:g3}");
    }

    [Fact]
    public void Doubling_100_random_features_reproduces_their_columns()
    {
        using var s = new Setup();
        var frozen = s.Replacement.Freeze(FixtureAttributionTests.Prompt);
        var clean = s.Targets(s.Replacement.Run(FixtureAttributionTests.Prompt, frozen: frozen, cache: s.Cache));
        var rng = new Random(11);
        var picks = Enumerable.Range(0, s.Graph.SelectedFeatures.Length).OrderBy(_ => rng.Next()).Take(100).ToArray();
        double worst = 0;
        foreach (int source in picks)
        {
            var n = s.Graph.Node(source);
            var edit = new FeatureIntervention(n.Layer, n.Position, n.Index, 2f, InterventionKind.Scale);
            var changed = s.Targets(s.Replacement.Run(FixtureAttributionTests.Prompt, [edit], frozen, cache: s.Cache));
            worst = Math.Max(worst, s.ColumnError(source, clean, changed));
        }
        Assert.True(worst <= 1e-3, $"max |Δ − A| = {worst:g3}");
    }

    [Fact]
    public void Ablating_a_feature_in_a_free_run_changes_the_logits_and_bad_edits_are_refused()
    {
        using var s = new Setup();
        var baseRun = s.Replacement.Run(FixtureAttributionTests.Prompt);
        var n = s.Graph.Node(s.Graph.SelectedFeatures.Length - 1);
        var ablated = s.Replacement.Run(FixtureAttributionTests.Prompt, [new FeatureIntervention(n.Layer, n.Position, n.Index, 0f)]);
        Assert.NotEqual(baseRun.LastLogits, ablated.LastLogits);
        Assert.Equal(10, ablated.Top.Length);
        Assert.Throws<ArgumentException>(() => s.Replacement.Run(FixtureAttributionTests.Prompt, [new FeatureIntervention(7, 1, 0, 0f)]));
        Assert.Throws<ArgumentException>(() => s.Replacement.Run(FixtureAttributionTests.Prompt, [new FeatureIntervention(0, 1, 999, 0f)]));
        Assert.Throws<ArgumentException>(() => s.Replacement.Run(FixtureAttributionTests.Prompt, [new FeatureIntervention(0, 99, 0, 0f)]));
        var generated = s.Replacement.Generate(FixtureAttributionTests.Prompt, [new FeatureIntervention(n.Layer, -1, n.Index, 5f)], new Models.Generation.GenerationOptions(MaxNewTokens: 4, StopAtEos: false));
        Assert.Equal(4, generated.Length);
    }
}
