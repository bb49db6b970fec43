using Loupe.Dictionaries.Features;

namespace Loupe.Explain.Tests;

/// <summary>Similar non-activating examples (Delphi's FAISS negatives): the choice, and that the stores keep runs with either choice apart.</summary>
public sealed class NegativeExamplesTests
{
    /// <summary>A bag of words over a fixed vocabulary: texts sharing words are similar.</summary>
    sealed class BagOfWords(IReadOnlyList<string> words) : ITextEmbedder
    {
        public string Name => "bag-of-words";
        public int Calls;

        public float[][] Embed(IReadOnlyList<string> texts)
        {
            Interlocked.Increment(ref Calls);
            return [.. texts.Select(t => words.Select(w => (float)CountOf(t, w)).ToArray())];
        }

        static int CountOf(string text, string word)
        {
            int n = 0;
            for (int at = text.IndexOf(word, StringComparison.Ordinal); at >= 0; at = text.IndexOf(word, at + word.Length, StringComparison.Ordinal)) n++;
            return n;
        }
    }

    sealed class Fixed(Dictionary<string, float[]> vectors) : ITextEmbedder
    {
        public string Name => "fixed";
        public float[][] Embed(IReadOnlyList<string> texts) => [.. texts.Select(t => vectors[t])];
    }

    [Fact]
    public void The_candidates_closest_to_any_positive_are_kept_most_similar_first()
    {
        var embedder = new Fixed(new()
        {
            ["p1"] = [1, 0, 0], ["p2"] = [0, 1, 0],
            ["far"] = [0, 0, 1], ["near p2"] = [0.1f, 1, 0], ["near p1"] = [1, 0.5f, 0], ["between"] = [1, 1, 0], ["also far"] = [0, 0, 2],
        });
        string[] candidates = ["far", "near p2", "near p1", "between", "also far"];
        // cosines to the nearest positive: near p2 0.995, near p1 0.894, between 0.707, far 0, also far 0 (ties in order)
        Assert.Equal([1, 2, 3], NegativeExamples.MostSimilar(embedder, ["p1", "p2"], candidates, 3));
        Assert.Equal([1, 2, 3, 0, 4], NegativeExamples.MostSimilar(embedder, ["p1", "p2"], candidates, 9));
        Assert.Empty(NegativeExamples.MostSimilar(embedder, ["p1"], [], 3));
    }

    [Fact]
    public void Similar_negatives_are_closer_to_the_activating_windows_than_random_ones()
    {
        using var folder = new TestFolder();
        using var store = FeatureStore.Open(SyntheticStore.Write(folder.File("features.db")));
        var embedder = new BagOfWords([.. SyntheticStore.Filler, .. SyntheticStore.Words]);
        var live = Enumerable.Range(0, SyntheticStore.DSae).Where(f => f != SyntheticStore.Dead).ToArray();
        var options = new ExplainOptions { Examples = 6, ScoreExamples = 6, Seed = 3 };
        double Nearest(ScoredExample negative, IReadOnlyList<ScoredExample> positives)
        {
            var vectors = embedder.Embed([string.Concat(negative.Example.Tokens), .. positives.Select(p => string.Concat(p.Example.Tokens))]);
            return vectors.Skip(1).Max(p => Cosine(vectors[0], p));
        }
        double randomMean = 0, similarMean = 0;
        foreach (int f in live)
        {
            var random = FeatureInputs.Build(store, f, live, options);
            var similar = FeatureInputs.Build(store, f, live, options, embedder);
            var positives = similar.Detection.Where(d => d.Label).ToList();
            Assert.Equal(random.Detection.Count(d => d.Label), positives.Count);
            Assert.Equal(positives.Count, similar.Detection.Count(d => !d.Label));       // as many negatives as held-out windows
            Assert.Equal(similar.Detection.Count, similar.Simulation.Count);              // the simulator sees the same windows
            // no negative window holds the feature's word: they come from contexts where it has no stored example
            Assert.All(similar.Detection.Where(d => !d.Label), d => Assert.DoesNotContain(SyntheticStore.Words[f], d.Example.Tokens));
            randomMean += random.Detection.Where(d => !d.Label).Average(d => Nearest(d, positives)) / live.Length;
            similarMean += similar.Detection.Where(d => !d.Label).Average(d => Nearest(d, positives)) / live.Length;
        }
        Assert.True(similarMean > randomMean, $"mean nearest cosine: similar {similarMean:F4}, random {randomMean:F4}");
    }

    static double Cosine(float[] a, float[] b)
    {
        double dot = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) { dot += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
        return dot / Math.Sqrt(aa * bb);
    }

    [Fact]
    public async Task A_run_with_other_negatives_scores_again_and_the_stored_scores_say_which()
    {
        using var folder = new TestFolder();
        string storePath = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        var embedder = new BagOfWords([.. SyntheticStore.Filler, .. SyntheticStore.Words]);
        var similar = new ExplainOptions { Examples = 6, ScoreExamples = 4, BatchSize = 4, Seed = 2, Scorers = [ExplainOptions.Detection, ExplainOptions.Fuzzing], SimilarNegatives = true };
        async Task<ExplainSummary> Run(ExplainOptions options)
        {
            using var cache = new RequestCache(folder.File("cache.db"));
            using var client = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "m", TopLogprobs = 2 }, cache);
            using var s = FeatureStore.Open(storePath);
            return await ExplainRunner.RunAsync(storePath, ExplainRunner.SelectFeatures(s, "0-1"), client, new PriceTable(new Dictionary<string, ModelPrice>()), options, embedder: embedder);
        }

        var first = await Run(similar);
        Assert.Equal(2, first.Explained);
        using (var s = FeatureStore.Open(storePath))
        {
            var scores = s.Explanations(0).Single().Scores;
            Assert.Equal(1.0, scores[ExplainOptions.Detection]["similar_negatives"]);
            Assert.False(scores[ExplainOptions.Fuzzing].ContainsKey("similar_negatives"));   // fuzzing shows no negatives
        }
        int asked = server.Log.Count;
        Assert.Equal(0, (await Run(similar)).Explained);                  // the same choice: stored, nothing asked
        Assert.Equal(asked, server.Log.Count);

        var random = await Run(similar with { SimilarNegatives = false });  // the other choice: scored again
        Assert.Equal(2, random.Explained);
        Assert.DoesNotContain(server.Log.Skip(asked), r => r.System == Prompts.ExplainerSystem);   // the explanation itself came from the cache
        using (var s = FeatureStore.Open(storePath))
            Assert.False(s.Explanations(0).Single().Scores[ExplainOptions.Detection].ContainsKey("similar_negatives"));

        // without an embedder, similar negatives are refused by name
        using var c = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "m" });
        var e = await Assert.ThrowsAsync<InputError>(() => ExplainRunner.RunAsync(storePath, [0], c, new PriceTable(new Dictionary<string, ModelPrice>()), similar));
        Assert.Contains("--negatives similar", e.Message);
    }
}
