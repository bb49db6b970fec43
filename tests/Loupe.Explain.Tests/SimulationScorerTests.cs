using Loupe.Dictionaries.Features;

namespace Loupe.Explain.Tests;

public class SimulationScorerTests
{
    static Dictionary<string, double> Alternatives(params (string Token, double P)[] alternatives) =>
        alternatives.ToDictionary(a => a.Token, a => Math.Log(a.P));

    [Fact]
    public void Prompt_shows_a_worked_example_then_the_tokens_quoted_and_counted()
    {
        var messages = SimulationScorer.Prompt("the token \"cat\"", [" the", " cat", "\n"]);
        Assert.Equal(["system", "user", "assistant", "user"], messages.Select(m => m.Role));
        Assert.Equal(SimulationScorer.System, messages[0].Content);
        Assert.StartsWith("[", messages[2].Content);
        Assert.Contains("Explanation: the token \"cat\"", messages[3].Content);
        Assert.Contains("1\t\" the\"\n2\t\" cat\"\n3\t\"\\n\"\n", messages[3].Content);
        Assert.Contains("JSON list of 3 numbers from 0 to 10", messages[3].Content);
        // the worked example's answer parses as its own token count
        int exampleTokens = messages[1].Content.Split('\n').Count(l => l.Contains('\t'));
        Assert.NotNull(SimulationScorer.Parse(messages[2].Content, null, exampleTokens));
    }

    [Fact]
    public void Answers_parse_only_as_a_list_of_the_right_length_and_range()
    {
        var (values, fromLogprobs) = SimulationScorer.Parse("Reasoning [1] first.\nAnswer: [0, 2.5, 10]", null, 3)!.Value;
        Assert.Equal([0, 2.5, 10], values);
        Assert.False(fromLogprobs);
        Assert.Equal([4.0, 0], SimulationScorer.Parse("[4, 0] then [0, 11]", null, 2)!.Value.Values);  // the later list is out of range
        Assert.Null(SimulationScorer.Parse("[0, 1]", null, 3));
        Assert.Null(SimulationScorer.Parse("[0, 11, 2]", null, 3));
        Assert.Null(SimulationScorer.Parse("[1..2, 3]", null, 3));
        Assert.Null(SimulationScorer.Parse("zero, seven, ten", null, 3));
    }

    [Fact]
    public void Expected_values_come_from_the_alternatives_of_each_number_token()
    {
        const string answer = "[0, 7, 10]";
        var logprobs = new List<TokenLogprob>
        {
            new("[", 0, Alternatives()),
            new("0", Math.Log(0.5), Alternatives(("0", 0.5), ("1", 0.25), ("x", 0.25))),   // "x" is no level: left out
            new(",", 0, Alternatives()),
            new(" 7", Math.Log(0.6), Alternatives((" 7", 0.6), (" 8", 0.2), (" 3", 0.2))),
            new(", ", 0, Alternatives()),
            new("10", Math.Log(0.7), Alternatives(("9", 0.3))),                                 // the sampled token joins its alternatives
            new("]", 0, Alternatives()),
        };
        var (values, fromLogprobs) = SimulationScorer.Parse(answer, logprobs, 3)!.Value;
        Assert.True(fromLogprobs);
        Assert.Equal(0.25 / 0.75, values[0], 1e-12);
        Assert.Equal(0.6 * 7 + 0.2 * 8 + 0.2 * 3, values[1], 1e-12);
        Assert.Equal(0.7 * 10 + 0.3 * 9, values[2], 1e-12);

        // logprobs that do not spell the answer, or a number split over tokens, leave the sampled values
        var misaligned = logprobs.Take(3).ToList();
        var split = new List<TokenLogprob> { new("[0, 7, ", 0, Alternatives()), new("1", 0, Alternatives(("1", 1.0))), new("0]", 0, Alternatives()) };
        foreach (var other in new[] { misaligned, split })
        {
            var sampled = SimulationScorer.Parse(answer, other, 3)!.Value;
            Assert.Equal([0.0, 7, 10], sampled.Values);
            Assert.False(sampled.FromLogprobs);
        }
    }

    [Fact]
    public void Correlation_is_pearson_over_every_token_and_over_activating_windows()
    {
        SimulationExample[] examples = [new([" a", " b", " c"], [5, 0, 2], true), new([" d", " e"], [0, 0], false)];
        var m = SimulationMetrics.Compute(examples, [[8, 0, 3], [0, 1]], unparsed: 1, fromLogprobs: 0);
        // statistics.correlation of the pairs (5,8) (0,0) (2,3) (0,0) (0,1), and of the first three (Python 3.11)
        Assert.Equal(0.9912039400332623, m.Correlation!.Value, 1e-12);
        Assert.Equal(0.9995971261503048, m.ActivatingCorrelation!.Value, 1e-12);
        Assert.Equal((2, 5, 1), (m.N, m.Tokens, m.Unparsed));

        // nothing predicted: the correlation is undefined, not 0, and is not stored
        var flat = SimulationMetrics.Compute(examples, [[0, 0, 0], [0, 0]], unparsed: 2, fromLogprobs: 0);
        Assert.Null(flat.Correlation);
        Assert.DoesNotContain(flat.Values(), v => v.Metric.StartsWith("ev_", StringComparison.Ordinal));
        Assert.Contains(("unparsed", 2.0), flat.Values());
    }

    [Fact]
    public async Task A_run_simulates_every_held_out_window_and_stores_the_correlation()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        var options = new ExplainOptions { Examples = 6, ScoreExamples = 6, Seed = 5, Scorers = [ExplainOptions.Simulation] };
        var summary = await Run(server, store, folder.File("cache.db"), options);
        Assert.Equal(SyntheticStore.DSae - 1, summary.Explained);

        var requests = server.Log.Where(r => r.System == SimulationScorer.System).ToList();
        Assert.Equal((SyntheticStore.DSae - 1) * 12, requests.Count);   // one per window: 6 held out + 6 non-activating
        using var s = FeatureStore.Open(store);
        foreach (var o in summary.Outcomes)
        {
            var m = o.Simulation!;
            Assert.Equal((12, 0, 12), (m.N, m.Unparsed, m.FromLogprobs));
            // The truth, from the store: a window the simulator saw is one of the feature's stored windows (its
            // activations) or a non-activating one (zeros). The scripted simulator's expected values: 8 (10 at 0.8, 0 at
            // 0.2) on the explained word, 0.1 (0 at 0.9, 1 at 0.1) elsewhere.
            string word = SyntheticStore.Words[o.Feature].Trim();
            var windows = s.Examples(o.Feature, FeatureStoreSchema.Top).Concat(s.Examples(o.Feature, FeatureStoreSchema.Quantile))
                .ToDictionary(e => string.Concat(e.WindowTokens.Select(t => s.TokenText(t) + "|")), e => e.WindowActs);
            var (truth, predicted, activatingTruth, activatingPredicted) = (new List<double>(), new List<double>(), new List<double>(), new List<double>());
            int activatingWindows = 0;
            foreach (var r in requests.Where(r => r.User.Contains($"Explanation: the token \"{word}\"", StringComparison.Ordinal)))
            {
                var windowTokens = r.User.Split('\n').Where(l => l.Contains('\t')).Select(l => System.Text.Json.JsonSerializer.Deserialize<string>(l[(l.IndexOf('\t') + 1)..])!).ToList();
                bool activating = windows.TryGetValue(string.Concat(windowTokens.Select(t => t + "|")), out var acts);
                if (activating) activatingWindows++;
                for (int i = 0; i < windowTokens.Count; i++)
                {
                    double p = windowTokens[i].Trim() == word ? 8 : 0.1, a = activating ? acts![i] : 0;
                    truth.Add(a);
                    predicted.Add(p);
                    if (!activating) continue;
                    activatingTruth.Add(a);
                    activatingPredicted.Add(p);
                }
            }
            Assert.Equal(6, activatingWindows);
            Assert.Equal(SimulationMetrics.Pearson(truth, predicted)!.Value, m.Correlation!.Value, 1e-9);
            Assert.Equal(SimulationMetrics.Pearson(activatingTruth, activatingPredicted)!.Value, m.ActivatingCorrelation!.Value, 1e-9);
            Assert.InRange(m.Correlation.Value, 0.5, 1 - 1e-6);   // the word's activation varies across windows: high, not 1
            var stored = s.Explanations(o.Feature).Single().Scores[ExplainOptions.Simulation];
            Assert.Equal(m.Correlation.Value, stored["ev_correlation"], 1e-12);
            Assert.Equal(m.Tokens, stored["tokens"]);
        }
        int tokens = requests.Sum(r => r.User.Split('\n').Count(l => l.Contains('\t')));
        Assert.Equal(tokens, summary.Outcomes.Sum(o => o.Simulation!.Tokens));

        // stored: a rerun asks nothing
        int asked = server.Log.Count;
        var again = await Run(server, store, folder.File("cache.db"), options);
        Assert.Equal((0, SyntheticStore.DSae - 1, asked), (again.Explained, again.Skipped, server.Log.Count));
    }

    [Fact]
    public async Task An_explanation_that_predicts_nothing_has_no_correlation_and_bad_answers_count_as_unparsed()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        int simulations = 0;
        // a word that occurs nowhere, different per feature (so no two features send the same simulation request)
        server.CustomAnswer = (system, user) =>
            system == Prompts.ExplainerSystem ? $"[EXPLANATION]: the token \"zebra{System.Text.RegularExpressions.Regex.Match(user, "<<(.*?)>>").Groups[1].Value.Trim()}\""
            : system == SimulationScorer.System && Interlocked.Increment(ref simulations) % 3 == 0 ? "I cannot tell." : null;
        var options = new ExplainOptions { Examples = 6, ScoreExamples = 4, Seed = 1, Scorers = [ExplainOptions.Simulation] };
        // without logprobs every prediction is 0 (with them, the scripted 0s would be expected values of 0.1 or 0)
        var summary = await Run(server, store, folder.File("cache.db"), options, topLogprobs: 0);
        Assert.All(summary.Outcomes, o => Assert.Null(o.Simulation!.Correlation));
        Assert.Equal(simulations / 3, summary.Outcomes.Sum(o => o.Simulation!.Unparsed));
        using var s = FeatureStore.Open(store);
        Assert.All(summary.Outcomes, o => Assert.False(s.Explanations(o.Feature).Single().Scores[ExplainOptions.Simulation].ContainsKey("ev_correlation")));
    }

    static async Task<ExplainSummary> Run(ScriptedServer server, string store, string cachePath, ExplainOptions options, int topLogprobs = 2)
    {
        using var cache = new RequestCache(cachePath);
        using var client = new ChatClient(new EndpointOptions
        {
            Endpoint = server.BaseUrl, Model = "scripted-model", Concurrency = 4, TopLogprobs = topLogprobs,
            BaseDelay = TimeSpan.FromMilliseconds(20), RequestTimeout = TimeSpan.FromSeconds(10),
        }, cache);
        using var s = FeatureStore.Open(store);
        return await ExplainRunner.RunAsync(store, ExplainRunner.SelectFeatures(s, "all"), client, new PriceTable(new Dictionary<string, ModelPrice>()), options);
    }
}
