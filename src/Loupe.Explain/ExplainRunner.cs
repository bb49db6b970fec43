using System.Globalization;
using Loupe.Dictionaries.Features;

namespace Loupe.Explain;

/// <summary>Requests, token counts and cost (null when the price table has no price for the model).</summary>
public sealed record Usage(int Requests, long PromptTokens, long CompletionTokens, double? CostUsd)
{
    public static readonly Usage Zero = new(0, 0, 0, 0);

    public static Usage operator +(Usage a, Usage b) =>
        new(a.Requests + b.Requests, a.PromptTokens + b.PromptTokens, a.CompletionTokens + b.CompletionTokens, a.CostUsd + b.CostUsd);

    public static Usage Of(IEnumerable<ChatResult> results, ModelPrice? price)
    {
        int n = 0;
        long prompt = 0, completion = 0;
        foreach (var r in results) (n, prompt, completion) = (n + 1, prompt + r.PromptTokens, completion + r.CompletionTokens);
        return new Usage(n, prompt, completion, price?.Cost(prompt, completion));
    }
}

/// <summary>
/// One feature's result: the explanation, each scorer's metrics, and its usage — <c>Usage</c> over every answer
/// the feature needed (cached or not: what the feature cost), <c>Fresh</c> over the requests this run sent.
/// <c>Simulation</c> is the simulation scorer's result when it ran (its metrics are not a classifier's).
/// </summary>
public sealed record FeatureOutcome(int Feature, string Explanation, IReadOnlyDictionary<string, ScoreMetrics> Scores, Usage Usage, Usage Fresh, SimulationMetrics? Simulation = null)
{
    /// <summary>Whether the non-activating examples were the most similar ones (<see cref="ExplainOptions.SimilarNegatives"/>); recorded with the scores that use them.</summary>
    public bool SimilarNegatives { get; init; }
}

/// <summary>
/// What to show and ask: explainer examples per feature, held-out activating examples per scorer (as many
/// non-activating ones join them for detection), examples per scorer request, the scorers (<c>detection</c>,
/// <c>fuzzing</c>, <c>simulation</c>: see <see cref="SimulationScorer"/>, <c>embedding</c>: see <see cref="EmbeddingScorer"/>), the seed of every random choice, whether the explainer sees 0–10 activation levels, and how
/// many promoted/suppressed tokens it sees.
/// </summary>
public sealed record ExplainOptions
{
    public int Examples { get; init; } = 20;
    public int ScoreExamples { get; init; } = 10;
    public int BatchSize { get; init; } = 5;
    public IReadOnlyList<string> Scorers { get; init; } = [Detection, Fuzzing];
    public int Seed { get; init; }
    public bool ShowActivations { get; init; }
    public int LogitTokens { get; init; } = 10;

    /// <summary>
    /// Non-activating examples chosen as the ones most similar to the held-out activating windows (by the sentence encoder,
    /// among four times as many candidates) instead of at random — Delphi's "FAISS" negatives: a scorer then has to tell the
    /// feature's contexts from look-alikes, not from random text, so detection, simulation and embedding scores are harder
    /// to earn. Needs the embedder.
    /// </summary>
    public bool SimilarNegatives { get; init; }

    /// <summary>The scorers whose examples include non-activating windows.</summary>
    public static readonly IReadOnlySet<string> UsesNegatives = new HashSet<string>(StringComparer.Ordinal) { Detection, Simulation, Embedding };

    public const string Detection = "detection", Fuzzing = "fuzzing", Simulation = "simulation", Embedding = "embedding";

    /// <exception cref="InputError">A count out of range or an unknown scorer.</exception>
    public void Validate()
    {
        if (Examples < 1) throw InputError.Expected("argument", "examples", "1 or more", Examples);
        if (ScoreExamples < 0) throw InputError.Expected("argument", "score-examples", "0 or more", ScoreExamples);
        if (BatchSize < 1) throw InputError.Expected("argument", "batch", "1 or more", BatchSize);
        if (LogitTokens < 0) throw InputError.Expected("argument", "logit-tokens", "0 or more", LogitTokens);
        foreach (var s in Scorers)
            if (s is not (Detection or Fuzzing or Simulation or Embedding)) throw InputError.Expected("argument", "scorers", "detection, fuzzing, simulation and/or embedding", s);
    }
}

/// <summary>A run's summary: features asked for, dead ones (never active: nothing to explain), already stored (skipped), explained now; this run's fresh usage, cache hits, HTTP requests sent and retries; totals stored for the model.</summary>
public sealed record ExplainSummary(int Requested, int Dead, int Skipped, int Explained, Usage Fresh, int CacheHits, int Sent, int Retries, int StoredFeatures, Usage StoredUsage, IReadOnlyList<FeatureOutcome> Outcomes);

/// <summary>
/// <c>loupe explain</c>: for each feature, builds the explainer prompt from its stored examples, asks the
/// explainer, scores the explanation with detection and/or fuzzing on held-out examples, and stores the result in
/// the feature store (one transaction per feature). Features already stored for this model and these scorers are
/// skipped; every answer goes through the client's cache, so a killed run resumes without asking anything twice
/// and, since every choice is seeded per feature, ends with the results an uninterrupted run would have.
/// </summary>
public static class ExplainRunner
{
    /// <summary>Parses a feature selection: <c>all</c>, <c>top:N</c> (the N densest live features), or a list of indices and ranges (<c>0-99,120</c>).</summary>
    /// <exception cref="InputError">Malformed, or an index outside 0..d_sae−1.</exception>
    public static IReadOnlyList<int> SelectFeatures(FeatureStore store, string spec)
    {
        spec = spec.Trim();
        if (spec == "all") return store.Features("feature").Where(s => s.NActive > 0).Select(s => s.Feature).ToList();
        if (spec.StartsWith("top:", StringComparison.Ordinal))
        {
            if (!int.TryParse(spec[4..], NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1)
                throw InputError.Expected("argument", "features", "top:N with N ≥ 1", spec);
            return store.Features("density").Where(s => s.NActive > 0).Take(n).Select(s => s.Feature).ToList();
        }
        var result = new SortedSet<int>();
        foreach (var part in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var ends = part.Split('-');
            if (ends.Length is < 1 or > 2 || !ends.All(e => int.TryParse(e, NumberStyles.None, CultureInfo.InvariantCulture, out _)))
                throw InputError.Expected("argument", "features", "all, top:N, or indices and ranges like 0-99,120", spec);
            int from = int.Parse(ends[0], CultureInfo.InvariantCulture), to = int.Parse(ends[^1], CultureInfo.InvariantCulture);
            if (to < from) throw InputError.Expected("argument", "features", "ranges from low to high", part);
            store.CheckFeature(from);
            store.CheckFeature(to);
            for (int f = from; f <= to; f++) result.Add(f);
        }
        if (result.Count == 0) throw InputError.Expected("argument", "features", "at least one feature", spec);
        return [.. result];
    }

    /// <summary>Runs (or resumes) the explanation of <paramref name="features"/>; <paramref name="onFeature"/> is called after each feature is stored.</summary>
    /// <param name="storePath">The feature store; explanations and scores are written into it.</param>
    /// <param name="features">The features to explain.</param>
    /// <param name="client">The endpoint (explainer and LLM scorers).</param>
    /// <param name="prices">Prices of the endpoint's model.</param>
    /// <param name="options">Examples, scorers, seed.</param>
    /// <param name="onFeature">Told after each feature is stored (outcome, done, total).</param>
    /// <param name="cancellationToken">Stops the run (finished features stay stored).</param>
    /// <param name="embedder">The sentence encoder of the embedding scorer (required when it is among the scorers).</param>
    /// <exception cref="EndpointError">The endpoint refused a request or gave up (features finished before are stored).</exception>
    /// <exception cref="OperationCanceledException">Cancelled (features finished before are stored).</exception>
    /// <exception cref="InputError">An option is out of range, or the embedding scorer is asked for without an embedder.</exception>
    public static async Task<ExplainSummary> RunAsync(string storePath, IReadOnlyList<int> features, ChatClient client, PriceTable prices, ExplainOptions options,
        Action<FeatureOutcome, int, int>? onFeature = null, CancellationToken cancellationToken = default, ITextEmbedder? embedder = null)
    {
        options.Validate();
        if (options.Scorers.Contains(ExplainOptions.Embedding) && embedder is null)
            throw InputError.Expected("argument", "--embedder", "a sentence encoder for the embedding scorer", "none");
        if (options.SimilarNegatives && embedder is null)
            throw InputError.Expected("argument", "--embedder", "a sentence encoder to find similar non-activating examples (--negatives similar)", "none");
        string model = client.Options.Model;
        var price = prices.For(model);
        using var store = FeatureStore.Open(storePath);
        using var writer = new ExplanationWriter(storePath);
        var storeLock = new Lock();
        foreach (int f in features) store.CheckFeature(f);
        var live = store.Features("feature").Where(s => s.NActive > 0).Select(s => s.Feature).ToArray();
        var liveSet = live.ToHashSet();
        int dead = features.Count(f => !liveSet.Contains(f));
        var pending = features.Where(f => liveSet.Contains(f) && !writer.IsDone(f, model, options.Scorers, options.SimilarNegatives)).ToList();
        int skipped = features.Count - dead - pending.Count;
        var outcomes = new List<FeatureOutcome>();
        int done = 0;
        await Parallel.ForEachAsync(pending, new ParallelOptions { MaxDegreeOfParallelism = client.Options.Concurrency, CancellationToken = cancellationToken },
            async (f, ct) =>
            {
                FeatureInputs inputs;
                lock (storeLock) inputs = FeatureInputs.Build(store, f, live, options, options.SimilarNegatives ? embedder : null);
                var outcome = await ExplainFeatureAsync(client, inputs, options, price, embedder, ct).ConfigureAwait(false);
                ct.ThrowIfCancellationRequested();
                writer.Save(outcome, model);
                int n;
                lock (outcomes)
                {
                    outcomes.Add(outcome);
                    n = ++done;
                }
                onFeature?.Invoke(outcome, n, pending.Count);
            }).ConfigureAwait(false);
        outcomes.Sort((a, b) => a.Feature.CompareTo(b.Feature));
        var fresh = outcomes.Aggregate(Usage.Zero with { CostUsd = price is null ? null : 0 }, (u, o) => u + o.Fresh);
        int hits = outcomes.Sum(o => o.Usage.Requests - o.Fresh.Requests);
        var (storedFeatures, storedUsage) = writer.Totals(model);
        return new ExplainSummary(features.Count, dead, skipped, outcomes.Count, fresh, hits, client.Sent, client.Retries, storedFeatures, storedUsage, outcomes);
    }

    static async Task<FeatureOutcome> ExplainFeatureAsync(ChatClient client, FeatureInputs inputs, ExplainOptions options, ModelPrice? price, ITextEmbedder? embedder, CancellationToken ct)
    {
        var answers = new List<ChatResult>();
        var explained = await client.CompleteAsync(Prompts.Explainer(inputs.Explainer, inputs.Promoted, inputs.Suppressed), ct).ConfigureAwait(false);
        answers.Add(explained);
        string explanation = Prompts.ParseExplanation(explained.Content);
        var scores = new Dictionary<string, ScoreMetrics>(StringComparer.Ordinal);
        var scorerTasks = options.Scorers.Where(s => s is ExplainOptions.Detection or ExplainOptions.Fuzzing).Select(async scorer =>
        {
            var items = scorer == ExplainOptions.Detection ? inputs.Detection : inputs.Fuzzing;
            string system = scorer == ExplainOptions.Detection ? Prompts.DetectionSystem : Prompts.FuzzingSystem;
            var batches = items.Chunk(options.BatchSize).ToList();
            var results = await Task.WhenAll(batches.Select(b => client.CompleteAsync(Prompts.Scorer(system, explanation, b.Select(i => i.Example).ToList()), ct))).ConfigureAwait(false);
            var labels = new List<bool>();
            var predictions = new List<bool>();
            var probabilities = new List<double>();
            bool allProbabilities = true;
            int unparsed = 0;
            for (int b = 0; b < batches.Count; b++)
            {
                var batch = batches[b];
                var parsed = Prompts.ParseAnswers(results[b].Content, batch.Length);
                var p = Prompts.AnswerProbabilities(results[b].Logprobs, batch.Length);
                if (parsed is null) unparsed += batch.Length;
                if (p is null) allProbabilities = false;
                for (int i = 0; i < batch.Length; i++)
                {
                    labels.Add(batch[i].Label);
                    predictions.Add(parsed is not null && parsed[i] == 1);
                    if (p is not null) probabilities.Add(p[i]);
                }
            }
            return (scorer, results, metrics: ScoreMetrics.Compute(labels, predictions, allProbabilities && labels.Count > 0 ? probabilities : null, unparsed));
        }).ToList();
        // the simulator predicts each window on its own: one request per window
        var simulationTask = options.Scorers.Contains(ExplainOptions.Simulation)
            ? Task.WhenAll(inputs.Simulation.Select(e => client.CompleteAsync(SimulationScorer.Prompt(explanation, e.Tokens), ct)))
            : null;
        foreach (var (scorer, results, metrics) in await Task.WhenAll(scorerTasks).ConfigureAwait(false))
        {
            scores[scorer] = metrics;
            answers.AddRange(results);
        }
        SimulationMetrics? simulation = null;
        if (simulationTask is not null)
        {
            var results = await simulationTask.ConfigureAwait(false);
            answers.AddRange(results);
            var predictions = new List<double[]>(results.Length);
            int unparsed = 0, fromLogprobs = 0;
            for (int i = 0; i < results.Length; i++)
            {
                var tokens = inputs.Simulation[i].Tokens;
                var parsed = SimulationScorer.Parse(results[i].Content, results[i].Logprobs, tokens.Length);
                if (parsed is null) unparsed++;
                else if (parsed.Value.FromLogprobs) fromLogprobs++;
                predictions.Add(parsed?.Values ?? new double[tokens.Length]);
            }
            simulation = SimulationMetrics.Compute(inputs.Simulation, predictions, unparsed, fromLogprobs);
        }
        // the embedding scorer asks no language model: the detection examples, embedded beside the explanation
        if (options.Scorers.Contains(ExplainOptions.Embedding))
            scores[ExplainOptions.Embedding] = await Task.Run(() => EmbeddingScorer.Score(embedder!, explanation, inputs.Detection).Metrics, ct).ConfigureAwait(false);
        return new FeatureOutcome(inputs.Feature, explanation, scores, Usage.Of(answers, price), Usage.Of(answers.Where(a => !a.Cached), price), simulation)
        {
            SimilarNegatives = options.SimilarNegatives,
        };
    }
}

/// <summary>A scorer's example and its truth: activating (detection) or correctly marked (fuzzing).</summary>
public sealed record ScoredExample(TextExample Example, bool Label);

/// <summary>Everything the prompts of one feature need, chosen from the store with a per-feature seeded random generator.</summary>
sealed record FeatureInputs(int Feature, List<TextExample> Explainer, List<string> Promoted, List<string> Suppressed, List<ScoredExample> Detection, List<ScoredExample> Fuzzing,
    List<SimulationExample> Simulation)
{
    // similarTo: with it, the non-activating windows are the most similar of a larger random pool (ExplainOptions.SimilarNegatives).
    public static FeatureInputs Build(FeatureStore store, int f, IReadOnlyList<int> live, ExplainOptions o, ITextEmbedder? similarTo = null)
    {
        var rng = new Random(unchecked(o.Seed * 1_000_003 + f));
        var summary = store.Feature(f);
        var top = store.Examples(f, FeatureStoreSchema.Top);
        var quantile = store.Examples(f, FeatureStoreSchema.Quantile);
        string Text(int id) => store.TokenText(id) ?? $"<{id}>";

        // The explainer sees the top examples (then the highest intervals' samples when there are too few top ones).
        var shown = top.Concat(quantile).DistinctBy(e => (e.ContextId, e.Position)).Take(o.Examples).ToList();
        var shownKeys = shown.Select(e => (e.ContextId, e.Position)).ToHashSet();
        var explainer = shown.Select(e =>
        {
            var marked = e.WindowActs.Select(a => a > 0).ToArray();
            int[]? levels = o.ShowActivations ? e.WindowActs.Select(a => (int)Math.Round(10 * a / Math.Max(summary.MaxAct, 1e-12))).ToArray() : null;
            return new TextExample(e.WindowTokens.Select(Text).ToArray(), marked, levels);
        }).ToList();

        // Held out: interval samples (and top examples beyond those shown) the explainer did not see.
        var heldOut = quantile.Concat(top).Where(e => !shownKeys.Contains((e.ContextId, e.Position))).DistinctBy(e => (e.ContextId, e.Position)).ToList();
        Shuffle(heldOut, rng);
        heldOut = heldOut.Take(o.ScoreExamples).ToList();

        // Non-activating: windows from other features' top examples, in contexts where this feature has no stored example.
        var ownContexts = top.Concat(quantile).Select(e => e.ContextId).ToHashSet();
        // With similarTo: a pool four times as large, of which the most similar to the held-out windows are kept.
        int pool = similarTo is null ? 1 : 4;
        var negatives = new List<FeatureExample>();
        var usedContexts = new HashSet<int>();
        var others = live.Where(g => g != f).ToArray();
        for (int tries = 0; negatives.Count < pool * heldOut.Count && others.Length > 0 && tries < 8 * pool * heldOut.Count; tries++)
        {
            var candidates = store.Examples(others[rng.Next(others.Length)], FeatureStoreSchema.Top, 5);
            if (candidates.Count == 0) continue;
            var e = candidates[rng.Next(candidates.Count)];
            if (ownContexts.Contains(e.ContextId) || !usedContexts.Add(e.ContextId)) continue;
            negatives.Add(e);
        }
        TextExample Plain(FeatureExample e) => new(e.WindowTokens.Select(Text).ToArray(), new bool[e.WindowActs.Length]);
        if (similarTo is not null)
        {
            string Joined(FeatureExample e) => string.Concat(e.WindowTokens.Select(Text));
            var keep = NegativeExamples.MostSimilar(similarTo, [.. heldOut.Select(Joined)], [.. negatives.Select(Joined)], heldOut.Count);
            negatives = [.. keep.Select(i => negatives[i])];
        }
        var detection = heldOut.Select(e => new ScoredExample(Plain(e), true)).Concat(negatives.Select(e => new ScoredExample(Plain(e), false))).ToList();
        Shuffle(detection, rng);
        // Simulation: the same windows with their true activations (the non-activating ones all zero, as detection assumes).
        var simulation = heldOut.Select(e => new SimulationExample(e.WindowTokens.Select(Text).ToArray(), e.WindowActs, true))
            .Concat(negatives.Select(e => new SimulationExample(e.WindowTokens.Select(Text).ToArray(), new float[e.WindowActs.Length], false))).ToList();

        // Fuzzing: half marked where the feature is active, half with as many tokens marked at random among inactive ones.
        var fuzzing = new List<ScoredExample>();
        for (int i = 0; i < heldOut.Count; i++)
        {
            var e = heldOut[i];
            var active = e.WindowActs.Select(a => a > 0).ToArray();
            if (i < (heldOut.Count + 1) / 2)
            {
                fuzzing.Add(new ScoredExample(new TextExample(e.WindowTokens.Select(Text).ToArray(), active), true));
                continue;
            }
            var inactive = Enumerable.Range(0, active.Length).Where(j => !active[j]).ToList();
            if (inactive.Count == 0) continue;
            Shuffle(inactive, rng);
            var marked = new bool[active.Length];
            foreach (int j in inactive.Take(Math.Max(1, active.Count(a => a)))) marked[j] = true;
            fuzzing.Add(new ScoredExample(new TextExample(e.WindowTokens.Select(Text).ToArray(), marked), false));
        }
        Shuffle(fuzzing, rng);

        var promoted = store.Logits(f, FeatureStoreSchema.Promoted).Take(o.LogitTokens).Select(r => r.TokenStr ?? Text(r.TokenId)).ToList();
        var suppressed = store.Logits(f, FeatureStoreSchema.Suppressed).Take(o.LogitTokens).Select(r => r.TokenStr ?? Text(r.TokenId)).ToList();
        return new FeatureInputs(f, explainer, promoted, suppressed, detection, fuzzing, simulation);
    }

    static void Shuffle<T>(List<T> list, Random rng)
    {
        for (int i = list.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
    }
}

/// <summary>Choosing non-activating examples that look like the activating ones (<see cref="ExplainOptions.SimilarNegatives"/>).</summary>
public static class NegativeExamples
{
    /// <summary>
    /// The indices of the <paramref name="count"/> candidates most similar to any of <paramref name="positives"/> (the largest
    /// cosine of its embedding to a positive's), most similar first; ties in candidate order.
    /// </summary>
    public static int[] MostSimilar(ITextEmbedder embedder, IReadOnlyList<string> positives, IReadOnlyList<string> candidates, int count)
    {
        ArgumentNullException.ThrowIfNull(embedder);
        if (candidates.Count == 0 || count <= 0) return [];
        if (positives.Count == 0) return [.. Enumerable.Range(0, Math.Min(count, candidates.Count))];
        var vectors = embedder.Embed([.. positives, .. candidates]);
        var score = new double[candidates.Count];
        for (int c = 0; c < candidates.Count; c++)
        {
            var v = vectors[positives.Count + c];
            score[c] = double.NegativeInfinity;
            for (int p = 0; p < positives.Count; p++) score[c] = Math.Max(score[c], EmbeddingScorer.Cosine(vectors[p], v));
        }
        return [.. Enumerable.Range(0, candidates.Count).OrderByDescending(c => score[c]).ThenBy(c => c).Take(count)];
    }
}
