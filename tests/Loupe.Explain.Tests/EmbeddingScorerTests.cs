using Loupe.Dictionaries.Features;
using Loupe.Models;
using Loupe.Models.Loading;

namespace Loupe.Explain.Tests;

/// <summary>
/// The embedding scorer: its metrics from given vectors against the definitions (cosine; AUROC as the share of
/// positive–negative pairs ranked right), and a whole run with the real all-MiniLM-L6-v2 (from NuGet) on the synthetic
/// store, where each explanation names the word its feature fires on — and no request is sent for it.
/// </summary>
public sealed class EmbeddingScorerTests(Xunit.Abstractions.ITestOutputHelper output) : IDisposable
{
    readonly string _cache = Path.Combine(Path.GetTempPath(), "loupe-embed-scorer-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_cache)) Directory.Delete(_cache, true);
    }

    /// <summary>Fixed vectors by text; the explanation's is the first.</summary>
    sealed class TableEmbedder(Dictionary<string, float[]> table) : ITextEmbedder
    {
        public string Name => "table";
        public float[][] Embed(IReadOnlyList<string> texts) => [.. texts.Select(t => table[t])];
    }

    static ScoredExample Item(string text, bool label) => new(new TextExample([text], [false]), label);

    [Fact]
    public void Metrics_follow_the_cosine_ranking()
    {
        var table = new Dictionary<string, float[]>
        {
            ["query"] = [1, 0, 0],
            ["a"] = [3, 1, 0],      // cos 0.949
            ["b"] = [0, 2, 0],      // cos 0
            ["c"] = [1, 1, 1],      // cos 0.577
            ["d"] = [-1, 0, 1],     // cos −0.707
            ["e"] = [2, 2, 0],      // cos 0.707
        };
        var items = new[] { Item("a", true), Item("b", false), Item("c", false), Item("d", false), Item("e", true) };
        var (m, sim) = EmbeddingScorer.Score(new TableEmbedder(table), "query", items);
        double[] expected = [3 / Math.Sqrt(10), 0, 1 / Math.Sqrt(3), -1 / Math.Sqrt(2), 1 / Math.Sqrt(2)];
        for (int i = 0; i < 5; i++) Assert.Equal(expected[i], sim[i], 1e-6);
        // both positives rank above all three negatives: every pair right
        Assert.Equal(1.0, m.Auroc!.Value, 1e-12);
        Assert.Equal((1.0, 1.0, 5), (m.Accuracy, m.Precision, m.N));
        // positives a, c; negatives b, d, e: of the 6 (positive, negative) pairs only (c, e) is ranked wrong
        items[2] = Item("c", true);
        items[4] = Item("e", false);
        (m, _) = EmbeddingScorer.Score(new TableEmbedder(table), "query", items);
        Assert.Equal(5.0 / 6, m.Auroc!.Value, 1e-12);
        // the two most similar (a, e) are read as activating: a right, e wrong; c missed
        Assert.Equal(0.5, m.Precision, 1e-12);
        Assert.Equal(0.5, m.Recall, 1e-12);
        Assert.Equal(0, m.Unparsed);
    }

    [Fact]
    public async Task A_run_with_MiniLM_scores_each_explanation_without_a_request()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        using var encoder = ModelLoader.LoadFolder(MiniLmPackage.Materialize(_cache));
        var embedder = new SentenceEncoderEmbedder(encoder, "all-MiniLM-L6-v2");
        var options = new ExplainOptions { Examples = 6, ScoreExamples = 6, BatchSize = 4, Seed = 3, Scorers = [ExplainOptions.Detection, ExplainOptions.Embedding] };
        using var cache = new RequestCache(folder.File("cache.db"));
        using var client = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "scripted-model", ApiKey = "k", TopLogprobs = 2, RequestTimeout = TimeSpan.FromSeconds(10) }, cache);
        IReadOnlyList<int> features;
        using (var s = FeatureStore.Open(store)) features = ExplainRunner.SelectFeatures(s, "all");

        // without an encoder the scorer is refused before anything is asked
        var refused = await Assert.ThrowsAsync<InputError>(() => ExplainRunner.RunAsync(store, features, client, new PriceTable(new Dictionary<string, ModelPrice>()), options));
        Assert.Contains("--embedder", refused.Message);
        Assert.Empty(server.Log);

        var summary = await ExplainRunner.RunAsync(store, features, client, new PriceTable(new Dictionary<string, ModelPrice>()), options, embedder: embedder);
        Assert.Equal(SyntheticStore.DSae - 1, summary.Explained);
        // requests: one explainer and the detection batches per feature, none for the embedding scorer
        Assert.Equal((SyntheticStore.DSae - 1) * (1 + 3), server.Log.Count);
        using var store2 = FeatureStore.Open(store);
        foreach (var o in summary.Outcomes)
        {
            var m = o.Scores[ExplainOptions.Embedding];
            output.WriteLine($"feature {o.Feature} \"{o.Explanation}\": embedding AUROC {m.Auroc:F3}, detection accuracy {o.Scores[ExplainOptions.Detection].Accuracy:F3}");
            Assert.Equal(12, m.N);
            // "the token "apple"" is nearest to the windows holding " apple"
            Assert.True(m.Auroc >= 0.9, $"feature {o.Feature} ({o.Explanation}): embedding AUROC {m.Auroc}");
            Assert.Equal(m.Auroc!.Value, store2.Explanations(o.Feature).Single().Scores[ExplainOptions.Embedding]["auroc"], 1e-12);
        }
    }

    [Fact]
    public void MiniLM_ranks_by_meaning_not_by_position()
    {
        using var encoder = ModelLoader.LoadFolder(MiniLmPackage.Materialize(_cache));
        var embedder = new SentenceEncoderEmbedder(encoder, "all-MiniLM-L6-v2");
        ScoredExample[] items =
        [
            Item("she ate a red apple after lunch", true), Item("the boat drifted down the river", false),
            Item("he sliced the apple into pieces", true), Item("seven ducks swam across the pond", false),
            Item("an apple tree grew in the yard", true), Item("the castle stood on the hill", false),
        ];
        var (right, _) = EmbeddingScorer.Score(embedder, "mentions of apples, the fruit", items);
        var (wrong, _) = EmbeddingScorer.Score(embedder, "rivers and boats on water", items);
        output.WriteLine($"AUROC with the right explanation {right.Auroc:F3}, with a wrong one {wrong.Auroc:F3}");
        Assert.Equal(1.0, right.Auroc!.Value, 1e-12);
        Assert.True(wrong.Auroc < 0.5, $"a wrong explanation should not separate the examples: AUROC {wrong.Auroc}");
    }

    [Loupe.Testing.RequiresSharedFact("models/stories260K")]
    public void A_decoder_is_not_an_embedder()
    {
        using var llama = ModelLoader.LoadFolder(Loupe.Testing.SharedData.Require("models/stories260K"));
        var e = Assert.Throws<InputError>(() => new SentenceEncoderEmbedder(llama, "stories260K"));
        Assert.Contains("sentence encoder", e.Message);
    }
}
