using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;
using Microsoft.Data.Sqlite;

namespace Loupe.Explain.Tests;

/// <summary>
/// A TopK SAE trained in the test on stories260K's block-2 residual stream (text sampled from the model), its feature
/// store built, and every live feature explained and scored end to end against the scripted server; killed and resumed.
/// </summary>
public class RealStoreTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [RequiresSharedFact("models/stories260K")]
    public async Task Stories260K_trained_sae_store_is_explained_scored_and_resumed_without_asking_twice()
    {
        using var folder = new TestFolder();
        string store = folder.File("features.db");
        const int dSae = 24;
        var build = new FeatureBuildOptions { TopK = 8, Quantiles = 3, QuantileSamples = 4, Window = 6, LogitCount = 5 };
        using (var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K")))
        {
            string hook = HookNames.ResidPost(2);
            int dModel = model.Config.DModel;
            var contexts = ContextBuilder.ForModel(model, new ModelSampledSource(model, 120, 40, seed: 1), 32, seed: 1, maxContexts: 120);
            var dict = new SparseDictionary(SaeShape.Sae(dModel, dSae), new TopKActivation(4));
            dict.Initialize(seed: 0);
            var trainer = new SaeTrainer(dict, new SaeTrainingOptions
            {
                Steps = 400, BatchSize = 256, LearningRate = 2e-3f, LrWarmupSteps = 10, NormalizeExpectedAverage = true, Seed = 0,
            });
            trainer.Begin(new ModelRows(model, contexts, hook, contextsPerWindow: 40));
            SaeStepMetrics first = trainer.Step(), last = first;
            while (!trainer.IsComplete) last = trainer.Step();
            trainer.Finish();
            output.WriteLine($"SAE {dModel}→{dSae} TopK 4, {last.Step + 1} steps: explained variance {first.ExplainedVariance:F3} → {last.ExplainedVariance:F3}");
            Assert.True(last.ExplainedVariance > Math.Max(0.5, first.ExplainedVariance), $"the SAE did not train: EV {first.ExplainedVariance:F3} → {last.ExplainedVariance:F3}");
            var config = new SaeLensConfig { DIn = dModel, DSae = dSae, DOut = dModel, HookName = hook, ApplyBDecToInput = dict.Shape.ApplyBDecToInput };
            FeatureDashboardBuilder.Build(model, dict, config, contexts, store, build);
        }
        string reference = folder.File("reference.db");
        File.Copy(store, reference);

        var options = new ExplainOptions { Examples = 6, ScoreExamples = 4, BatchSize = 4, Seed = 2 };
        var prices = new PriceTable(new Dictionary<string, ModelPrice> { ["m"] = new(1, 3) });
        async Task<ExplainSummary> Run(ScriptedServer server, string path, string cache, Action<FeatureOutcome, int, int>? onFeature = null, CancellationToken ct = default)
        {
            using var requestCache = new RequestCache(cache);
            using var client = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "m", Concurrency = 2, TopLogprobs = 2 }, requestCache);
            using var s = FeatureStore.Open(path);
            return await ExplainRunner.RunAsync(path, ExplainRunner.SelectFeatures(s, "all"), client, prices, options, onFeature, ct);
        }

        int live;
        using (var s = FeatureStore.Open(store)) live = ExplainRunner.SelectFeatures(s, "all").Count;
        Assert.True(live >= 4, $"only {live} live features");

        using (var clean = new ScriptedServer())
        {
            var full = await Run(clean, reference, folder.File("reference-cache.db"));
            Assert.Equal(live, full.Explained);
            output.WriteLine($"{live} live features, {clean.Answered} requests, {full.StoredUsage.PromptTokens}+{full.StoredUsage.CompletionTokens} tokens; mean detection accuracy " +
                $"{full.Outcomes.Average(o => o.Scores["detection"].Accuracy):F3}, fuzzing {full.Outcomes.Average(o => o.Scores["fuzzing"].Accuracy):F3}");
            var explainer = clean.Log.Where(r => r.System == Prompts.ExplainerSystem).ToList();
            Assert.Equal(live, explainer.Count);
            Assert.All(explainer, r => Assert.Contains("<<", r.User));
            Assert.All(explainer, r => Assert.InRange(r.User.Split('\n').Count(l => l.StartsWith("Example ", StringComparison.Ordinal)), 1, options.Examples));
            Assert.All(explainer, r => Assert.Contains("more likely next:", r.User));
            // Each feature's prompt holds exactly its first Examples stored windows (top, then interval samples), rendered with
            // every token where the feature is active in the store marked and no other.
            using (var shownStore = FeatureStore.Open(reference))
            {
                foreach (int f in ExplainRunner.SelectFeatures(shownStore, "all"))
                {
                    var shown = shownStore.Examples(f, FeatureStoreSchema.Top).Concat(shownStore.Examples(f, FeatureStoreSchema.Quantile))
                        .DistinctBy(e => (e.ContextId, e.Position)).Take(options.Examples).ToList();
                    var lines = shown.Select((e, i) => $"Example {i + 1}: " + new TextExample(e.WindowTokens.Select(t => shownStore.TokenText(t) ?? $"<{t}>").ToArray(),
                        e.WindowActs.Select(a => a > 0).ToArray()).Render().Replace("\r", "\\r").Replace("\n", "\\n")).ToList();
                    Assert.All(shown, e => Assert.True(e.WindowActs.Any(a => a > 0), $"feature {f}: an example window with no active token"));
                    var request = Assert.Single(explainer, r => lines.All(l => r.User.Contains(l + "\n", StringComparison.Ordinal)));
                    Assert.Equal(shown.Count, request.User.Split('\n').Count(l => l.StartsWith("Example ", StringComparison.Ordinal)));
                }
            }
            using var s = FeatureStore.Open(reference);
            foreach (int f in ExplainRunner.SelectFeatures(s, "all"))
            {
                var e = Assert.Single(s.Explanations(f));
                Assert.StartsWith("the token", e.Text);
                Assert.Contains("detection", e.Scores.Keys);
                Assert.Contains("fuzzing", e.Scores.Keys);
            }
            Assert.Equal(clean.PromptTokens, full.StoredUsage.PromptTokens);
            double cost = (clean.PromptTokens * 1.0 + clean.CompletionTokens * 3.0) / 1e6;
            Assert.InRange(full.StoredUsage.CostUsd!.Value, cost * (1 - 1e-9), cost * (1 + 1e-9));
        }

        using var server = new ScriptedServer();
        using var cts = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            Run(server, store, folder.File("cache.db"), (_, done, _) => { if (done == 2) cts.Cancel(); }, cts.Token));
        var resumed = await Run(server, store, folder.File("cache.db"));
        Assert.True(resumed.Skipped >= 2);
        var bodies = server.Log.Select(r => r.Body).ToList();
        Assert.Equal(bodies.Count, bodies.Distinct().Count());
        Assert.Equal(Rows(reference), Rows(store));
    }

    static List<string> Rows(string store)
    {
        using var db = new SqliteConnection($"Data Source={store};Mode=ReadOnly;Pooling=False");
        db.Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = """
            SELECT e.feature || '|' || e.text || '|' || COALESCE((SELECT group_concat(scorer || ':' || metric || '=' || value, ',') FROM
                (SELECT * FROM explanation_scores s WHERE s.feature = e.feature ORDER BY scorer, metric)), '')
            FROM explanations e ORDER BY e.feature
            """;
        using var r = cmd.ExecuteReader();
        var rows = new List<string>();
        while (r.Read()) rows.Add(r.GetString(0));
        return rows;
    }
}
