using System.Text.RegularExpressions;
using Loupe.Dictionaries.Features;
using Microsoft.Data.Sqlite;

namespace Loupe.Explain.Tests;

public class ExplainRunTests
{
    const string Model = "scripted-model";

    static readonly ExplainOptions Options = new() { Examples = 6, ScoreExamples = 6, BatchSize = 4, Seed = 3 };

    static ChatClient Client(ScriptedServer server, string cachePath, out RequestCache cache, int concurrency)
    {
        cache = new RequestCache(cachePath);
        return new ChatClient(new EndpointOptions
        {
            Endpoint = server.BaseUrl, Model = Model, ApiKey = "test-key", Concurrency = concurrency, TopLogprobs = 2,
            BaseDelay = TimeSpan.FromMilliseconds(20), RequestTimeout = TimeSpan.FromSeconds(10),
        }, cache);
    }

    static PriceTable Prices => new(new Dictionary<string, ModelPrice> { [Model] = new(2.0, 8.0) });

    static async Task<ExplainSummary> Run(ScriptedServer server, string store, string cachePath, int concurrency = 3, ExplainOptions? options = null,
        Action<FeatureOutcome, int, int>? onFeature = null, CancellationToken ct = default)
    {
        using var client = Client(server, cachePath, out var cache, concurrency);
        using (cache)
        {
            using var s = FeatureStore.Open(store);
            return await ExplainRunner.RunAsync(store, ExplainRunner.SelectFeatures(s, "all"), client, Prices, options ?? Options, onFeature, ct);
        }
    }

    static int ExampleLines(string user) => user.Split('\n').Count(l => l.StartsWith("Example ", StringComparison.Ordinal));

    [Fact]
    public async Task Full_run_explains_and_scores_every_live_feature()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        var summary = await Run(server, store, folder.File("cache.db"));

        Assert.Equal(SyntheticStore.DSae - 1, summary.Explained);
        using var s = FeatureStore.Open(store);
        for (int f = 0; f < SyntheticStore.DSae; f++)
        {
            var explanations = s.Explanations(f);
            if (f == SyntheticStore.Dead)
            {
                Assert.Empty(explanations);
                continue;
            }
            var e = Assert.Single(explanations);
            Assert.Equal(Model, e.ExplainerModel);
            Assert.Equal($"the token \"{SyntheticStore.Words[f].Trim()}\"", e.Text);
            foreach (var scorer in new[] { "detection", "fuzzing" })
            {
                var m = e.Scores[scorer];
                Assert.InRange(m["accuracy"], 1 - 1e-12, 1 + 1e-12);
                Assert.InRange(m["f1"], 1 - 1e-12, 1 + 1e-12);
                Assert.InRange(m["auroc"], 1 - 1e-12, 1 + 1e-12);
                Assert.Equal(scorer == "detection" ? 12 : 6, m["n"]);
            }
        }

        // The prompts: the explainer saw the configured number of examples with its word marked, scorers at most a batch each.
        var log = server.Log.ToList();
        var explainer = log.Where(r => r.System == Prompts.ExplainerSystem).ToList();
        Assert.Equal(SyntheticStore.DSae - 1, explainer.Count);
        foreach (var r in explainer)
        {
            Assert.Equal(Options.Examples, ExampleLines(r.User));
            Assert.Matches(new Regex("<< (apple|river|seven|purple|castle|lantern)>>"), r.User);
        }
        Assert.Contains(explainer, r => r.User.Contains("more likely next: \" the\", \" a\", \" and\""));
        var detection = log.Where(r => r.System == Prompts.DetectionSystem).ToList();
        var fuzzing = log.Where(r => r.System == Prompts.FuzzingSystem).ToList();
        Assert.All(detection.Concat(fuzzing), r => Assert.InRange(ExampleLines(r.User), 1, Options.BatchSize));
        Assert.All(detection, r => Assert.DoesNotContain("<<", r.User));
        Assert.All(fuzzing, r => Assert.Contains("<<", r.User));
        Assert.Equal((SyntheticStore.DSae - 1) * 12, detection.Sum(r => ExampleLines(r.User)));
        Assert.Equal((SyntheticStore.DSae - 1) * 6, fuzzing.Sum(r => ExampleLines(r.User)));
        Assert.All(log, r => Assert.Equal("Bearer test-key", r.Authorization));

        // Accounting: the stored per-feature usage adds up to the server's usage, priced by the table.
        Assert.Equal(server.Answered, summary.StoredUsage.Requests);
        Assert.Equal(server.PromptTokens, summary.StoredUsage.PromptTokens);
        Assert.Equal(server.CompletionTokens, summary.StoredUsage.CompletionTokens);
        double expected = (server.PromptTokens * 2.0 + server.CompletionTokens * 8.0) / 1e6;
        Assert.InRange(summary.StoredUsage.CostUsd!.Value, expected * (1 - 1e-9) - 1e-12, expected * (1 + 1e-9) + 1e-12);
        Assert.Equal(summary.StoredUsage with { CostUsd = 0 }, summary.Fresh with { CostUsd = 0 });
        Assert.InRange(summary.Fresh.CostUsd!.Value, expected * (1 - 1e-9) - 1e-12, expected * (1 + 1e-9) + 1e-12);

        // A second run finds everything stored and asks nothing.
        int asked = server.Log.Count;
        var again = await Run(server, store, folder.File("cache.db"));
        Assert.Equal(0, again.Explained);
        Assert.Equal(SyntheticStore.DSae - 1, again.Skipped);
        Assert.Equal(asked, server.Log.Count);
    }

    [Fact]
    public async Task Killed_run_resumes_without_asking_twice_and_ends_as_an_uninterrupted_run()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        string reference = SyntheticStore.Write(folder.File("reference.db"));
        using (var clean = new ScriptedServer()) await Run(clean, reference, folder.File("reference-cache.db"));

        using var server = new ScriptedServer();
        using var cts = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            Run(server, store, folder.File("cache.db"), onFeature: (_, done, _) => { if (done == 2) cts.Cancel(); }, ct: cts.Token));
        int firstRun = server.Log.Count;
        using (var partial = FeatureStore.Open(store))
            Assert.InRange(Enumerable.Range(0, SyntheticStore.DSae).Count(f => partial.Explanations(f).Count > 0), 2, SyntheticStore.DSae - 2);

        var resumed = await Run(server, store, folder.File("cache.db"));
        Assert.True(resumed.Skipped >= 2);
        Assert.True(server.Log.Count > firstRun);
        var bodies = server.Log.Select(r => r.Body).ToList();
        Assert.Equal(bodies.Count, bodies.Distinct().Count()); // nothing asked twice
        Assert.Equal(Rows(reference), Rows(store));

        // Every answer the server gave is accounted to exactly one stored feature.
        Assert.Equal(server.PromptTokens, resumed.StoredUsage.PromptTokens);
        Assert.Equal(server.CompletionTokens, resumed.StoredUsage.CompletionTokens);
        Assert.Equal(server.Answered, resumed.StoredUsage.Requests);
    }

    [Fact]
    public async Task A_refused_request_stops_the_run_clearly_and_a_rerun_completes()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        server.Enqueue(Fault.RateLimit, Fault.ServerError, Fault.Timeout);
        server.TimeoutDelay = TimeSpan.FromSeconds(1);
        var options = Options with { ScoreExamples = 4 };
        int answered = 0;
        server.BeforeAnswer = r =>
        {
            // After a few answers, the endpoint refuses one request outright.
            if (r.Fault is null && Interlocked.Increment(ref answered) == 10) server.Enqueue(Fault.BadRequest);
            return Task.CompletedTask;
        };
        var e = await Assert.ThrowsAsync<EndpointError>(() => Run(server, store, folder.File("cache.db"), concurrency: 1, options: options));
        Assert.Contains("HTTP 400", e.Message);
        Assert.Contains("does not exist", e.Message);
        server.BeforeAnswer = null;
        var rerun = await Run(server, store, folder.File("cache.db"), concurrency: 1, options: options);
        Assert.Equal(SyntheticStore.DSae - 1, rerun.StoredFeatures);
        Assert.Equal(server.Answered, rerun.StoredUsage.Requests);
    }

    [Fact]
    public void Stores_without_explanation_tables_still_read_and_features_select()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using (var s = FeatureStore.Open(store))
        {
            Assert.Empty(s.Explanations(0));
            Assert.Equal([0, 1, 2, 3, 4, 5], ExplainRunner.SelectFeatures(s, "all"));
            Assert.Equal([1, 2, 3, 5], ExplainRunner.SelectFeatures(s, "1-3,5"));
            Assert.Equal(2, ExplainRunner.SelectFeatures(s, "top:2").Count);
            Assert.Equal([5, 6], ExplainRunner.SelectFeatures(s, "5-6"));
            Assert.Throws<InputError>(() => ExplainRunner.SelectFeatures(s, "0-99"));
            Assert.Throws<InputError>(() => ExplainRunner.SelectFeatures(s, "3-1"));
        }
        using (new ExplanationWriter(store)) { }
        using var reopened = FeatureStore.Open(store);
        Assert.Empty(reopened.Explanations(0));
    }

    /// <summary>Every stored explanation and score, without the creation time.</summary>
    static List<string> Rows(string store)
    {
        using var db = new SqliteConnection($"Data Source={store};Mode=ReadOnly;Pooling=False");
        db.Open();
        var rows = new List<string>();
        foreach (var sql in new[]
        {
            "SELECT feature, explainer_model, text FROM explanations ORDER BY feature",
            "SELECT feature, scorer, metric, value FROM explanation_scores ORDER BY feature, scorer, metric",
            "SELECT feature, requests, prompt_tokens, completion_tokens, cost_usd FROM explanation_costs ORDER BY feature",
        })
        {
            using var cmd = db.CreateCommand();
            cmd.CommandText = sql;
            using var r = cmd.ExecuteReader();
            while (r.Read()) rows.Add(string.Join("|", Enumerable.Range(0, r.FieldCount).Select(i => Convert.ToString(r.GetValue(i), System.Globalization.CultureInfo.InvariantCulture))));
        }
        return rows;
    }
}
