using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Testing;
using Microsoft.Data.Sqlite;

namespace Loupe.Explain.Tests;

/// <summary>
/// A feature store built from the real stories260K model (text sampled from it) and a seeded ReLU SAE at
/// blocks.2.hook_resid_post, explained end to end against the scripted server, killed and resumed.
/// </summary>
public class RealStoreTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [RequiresSharedFact("models/stories260K")]
    public async Task Stories260K_store_is_explained_scored_and_resumed_without_asking_twice()
    {
        using var folder = new TestFolder();
        string store = folder.File("features.db");
        using (var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K")))
        {
            const string hook = "blocks.2.hook_resid_post";
            const int dSae = 12;
            var dict = new SparseDictionary(SaeShape.Sae(64, dSae, applyBDecToInput: false), new ReluActivation());
            dict.Initialize(seed: 7, decoderNorm: 1f);
            for (int f = 0; f < dSae; f++) dict.P.BEnc[f] = -0.5f - 0.1f * f; // sparse, from common to rare
            var config = new SaeLensConfig { DIn = 64, DSae = dSae, DOut = 64, HookName = hook, ApplyBDecToInput = false };
            var contexts = ContextBuilder.ForModel(model, new ModelSampledSource(model, 40, 40, seed: 1), 32, seed: 1, maxContexts: 40);
            FeatureDashboardBuilder.Build(model, dict, config, contexts, store,
                new FeatureBuildOptions { TopK = 8, Quantiles = 3, QuantileSamples = 4, Window = 6, LogitCount = 5 });
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
