using System.CommandLine;
using System.Globalization;
using Loupe.Dictionaries.Features;
using Loupe.Explain;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe explain</c>: automated interpretability over a feature store — Delphi-style explanations from an
/// OpenAI-compatible endpoint, scored by detection and fuzzing, stored in the store (docs/explain.md).
/// </summary>
static class ExplainCommand
{
    public static Command Create()
    {
        var store = new Option<string>("--store") { Description = "The feature store (features.db from `loupe features build`); explanations and scores are written into it", Required = true };
        var endpoint = new Option<string>("--endpoint") { Description = "OpenAI-compatible API base, e.g. https://api.openai.com/v1 or http://localhost:8000/v1", Required = true };
        var model = new Option<string>("--model", "-m") { Description = "Model name sent to the endpoint (explainer and scorer)", Required = true };
        var apiKeyEnv = new Option<string>("--api-key-env") { Description = "Environment variable holding the API key (none sent when it is unset)", DefaultValueFactory = _ => "OPENAI_API_KEY" };
        var features = new Option<string>("--features") { Description = "Features: all (live ones), top:N (N densest), or indices and ranges like 0-99,120", DefaultValueFactory = _ => "all" };
        var examples = new Option<int>("--examples") { Description = "Examples shown to the explainer (top examples, then interval samples)", DefaultValueFactory = _ => 20 };
        var scoreExamples = new Option<int>("--score-examples") { Description = "Held-out activating examples per scorer (detection adds as many non-activating ones)", DefaultValueFactory = _ => 10 };
        var batch = new Option<int>("--batch") { Description = "Examples per scorer request", DefaultValueFactory = _ => 5 };
        var scorers = new Option<string>("--scorers") { Description = "Scorers: detection, fuzzing, simulation, embedding (comma-separated); none: explanations only", DefaultValueFactory = _ => "detection,fuzzing" };
        var embedder = new Option<string>("--embedder")
        {
            Description = "The embedding scorer's sentence encoder: a BERT-family folder or hub id (default: all-MiniLM-L6-v2 from NuGet)",
            DefaultValueFactory = _ => Loupe.Models.Loading.MiniLmPackage.ModelName,
        };
        var negatives = new Option<string>("--negatives")
        {
            Description = "Non-activating examples for detection, simulation and embedding: random (other features' contexts) or similar (the most similar to the held-out activating windows by --embedder, of four times as many: harder, Delphi's FAISS negatives)",
            DefaultValueFactory = _ => "random",
        };
        var concurrency = new Option<int>("--concurrency") { Description = "Requests in flight at once", DefaultValueFactory = _ => 4 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature", DefaultValueFactory = _ => 0.0 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Completion token limit per request", DefaultValueFactory = _ => 500 };
        var logprobs = new Option<int>("--top-logprobs") { Description = "Ask for logprobs with this many alternatives (AUROC of the scorers); 0: do not ask", DefaultValueFactory = _ => 5 };
        var timeout = new Option<double>("--timeout") { Description = "Seconds to wait for one answer before retrying", DefaultValueFactory = _ => 120 };
        var retries = new Option<int>("--retries") { Description = "Retries of a request on 429, 5xx, timeouts and dropped connections", DefaultValueFactory = _ => 6 };
        var activations = new Option<bool>("--show-activations") { Description = "Show the explainer each marked token's activation (0–10)" };
        var prices = new Option<string?>("--prices") { Description = "Price table JSON (model → $ per 1M input/output tokens); default STORE_FOLDER/prices.json, written on first use" };
        var cache = new Option<string?>("--cache") { Description = "Request cache (SQLite); default STORE.explain-cache.db. Nothing in it is asked again" };
        var seed = new Option<int>("--seed") { Description = "Seeds the choice of held-out and non-activating examples and fuzzing marks", DefaultValueFactory = _ => 0 };
        var command = new Command("explain",
            "Explain every feature of a feature store with a language model behind any OpenAI-compatible endpoint, as Delphi\n" +
            "does: the explainer sees top and interval examples with activating tokens marked <<like this>> and the feature's\n" +
            "promoted tokens; detection (held-out activating vs. other contexts) and fuzzing (correct vs. random marks) score\n" +
            "each explanation (accuracy, precision, recall, F1; AUROC with logprobs); simulation by the correlation of the activations a\n" +
            "model predicts from the explanation with the true ones; embedding scores it by how well a sentence\n" +
            "encoder's similarity to the explanation separates activating examples (AUROC; no requests). Results go into the store and show in\n" +
            "`loupe features top`. Every answer is cached; a killed run resumes where it stopped.\n\n" +
            "Examples:\n" +
            "  loupe explain --store sae/features.db --endpoint https://api.openai.com/v1 --model gpt-4o-mini --features top:100\n" +
            "  loupe explain --store sae/features.db --endpoint http://localhost:8000/v1 --model local --api-key-env NONE --features 0-49\n" +
            "  loupe explain --store sae/features.db --endpoint http://localhost:8000/v1 --model local --scorers detection,embedding\n" +
            "  loupe explain --store sae/features.db --endpoint http://localhost:8000/v1 --model local --scorers detection,simulation --negatives similar")
        {
            store, endpoint, model, apiKeyEnv, features, examples, scoreExamples, batch, scorers, concurrency, temperature, maxTokens, logprobs,
            timeout, retries, activations, prices, cache, seed, embedder, negatives,
        };
        command.SetAction((parse, cancellationToken) => Task.FromResult(CliSupport.Guard(() =>
        {
            CliSupport.NoModelOnDevice("it reads examples and promoted tokens from the feature store, which 'features build' computed on its device, and asks the endpoint");
            string storePath = Path.GetFullPath(parse.GetValue(store)!);
            var scorerList = parse.GetValue(scorers)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Where(s => s != "none").Distinct().ToList();
            var options = new ExplainOptions
            {
                Examples = parse.GetValue(examples), ScoreExamples = parse.GetValue(scoreExamples), BatchSize = parse.GetValue(batch),
                Scorers = scorerList, Seed = parse.GetValue(seed), ShowActivations = parse.GetValue(activations),
                SimilarNegatives = parse.GetValue(negatives) switch
                {
                    "random" => false,
                    "similar" => true,
                    var other => throw InputError.Expected("argument", "--negatives", "random or similar", other),
                },
            };
            options.Validate();
            double seconds = parse.GetValue(timeout);
            if (!(seconds > 0 && seconds < 86400)) throw InputError.Expected("argument", "timeout", "seconds in (0, 86400)", seconds);
            var endpointOptions = new EndpointOptions
            {
                Endpoint = parse.GetValue(endpoint)!, Model = parse.GetValue(model)!, ApiKey = Environment.GetEnvironmentVariable(parse.GetValue(apiKeyEnv)!),
                Temperature = parse.GetValue(temperature), MaxTokens = parse.GetValue(maxTokens), TopLogprobs = parse.GetValue(logprobs),
                Concurrency = parse.GetValue(concurrency), MaxRetries = parse.GetValue(retries), RequestTimeout = TimeSpan.FromSeconds(seconds),
            };
            endpointOptions.Validate();
            IReadOnlyList<int> selected;
            using (var s = FeatureStore.Open(storePath)) selected = ExplainRunner.SelectFeatures(s, parse.GetValue(features)!);
            var priceTable = PriceTable.Load(parse.GetValue(prices) ?? Path.Combine(Path.GetDirectoryName(storePath)!, "prices.json"));
            if (priceTable.For(endpointOptions.Model) is null)
                Console.Error.WriteLine($"warning: no price for model '{endpointOptions.Model}' in the price table; costs are reported as unknown");
            // the embedding scorer's encoder runs here, on the host (a 22M-parameter model: the endpoint is the slow part)
            string encoderPath = parse.GetValue(embedder)!;
            using var encoder = scorerList.Contains(ExplainOptions.Embedding) || options.SimilarNegatives ? CliSupport.LoadModel(encoderPath, option: "--embedder") : null;
            var textEmbedder = encoder is null ? null : new SentenceEncoderEmbedder(encoder, encoderPath);
            using var requestCache = new RequestCache(parse.GetValue(cache) ?? storePath + ".explain-cache.db");
            using var client = new ChatClient(endpointOptions, requestCache);

            ExplainSummary? summary = null;
            try
            {
                CliSupport.Status.Progress().AutoClear(true)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("explaining", maxValue: Math.Max(1, selected.Count));
                        summary = ExplainRunner.RunAsync(storePath, selected, client, priceTable, options, (outcome, done, total) =>
                        {
                            lock (task)
                            {
                                task.MaxValue = Math.Max(1, total);
                                task.Value = done;
                                task.Description = $"explaining ({done}/{total}, {client.Sent} requests, {client.Retries} retries)";
                            }
                        }, cancellationToken, textEmbedder).GetAwaiter().GetResult();
                    });
            }
            catch (OperationCanceledException)
            {
                Console.Error.WriteLine($"cancelled; finished features are stored in {storePath} and answers in {requestCache.Path}: run the same command again to resume");
                return 130;
            }
            PrintSummary(summary!, endpointOptions.Model);
            return 0;
        })));
        return command;
    }

    static void PrintSummary(ExplainSummary s, string model)
    {
        static string F(double? v) => v is double d ? d.ToString("F2", CultureInfo.InvariantCulture) : "—";
        static string Cost(double? v) => v is double d ? "$" + d.ToString("F4", CultureInfo.InvariantCulture) : "unknown";
        Console.WriteLine($"{"feature",8}  {"det acc",7}  {"det F1",6}  {"det AUC",7}  {"fuzz acc",8}  {"fuzz AUC",8}  {"sim r",6}  {"emb AUC",7}  {"tokens",8}  {"cost",9}  explanation");
        foreach (var o in s.Outcomes)
        {
            o.Scores.TryGetValue(ExplainOptions.Detection, out var d);
            o.Scores.TryGetValue(ExplainOptions.Fuzzing, out var z);
            o.Scores.TryGetValue(ExplainOptions.Embedding, out var e);
            Console.WriteLine($"{o.Feature,8}  {F(d?.Accuracy),7}  {F(d?.F1),6}  {F(d?.Auroc),7}  {F(z?.Accuracy),8}  {F(z?.Auroc),8}  {F(o.Simulation?.Correlation),6}  {F(e?.Auroc),7}  " +
                $"{(o.Usage.PromptTokens + o.Usage.CompletionTokens).ToString(CultureInfo.InvariantCulture),8}  {Cost(o.Usage.CostUsd),9}  {o.Explanation}");
        }
        double Mean(Func<FeatureOutcome, double?> pick) => s.Outcomes.Select(pick).OfType<double>().DefaultIfEmpty(double.NaN).Average();
        if (s.Outcomes.Count > 0)
            Console.WriteLine($"mean: detection accuracy {F(Mean(o => o.Scores.GetValueOrDefault(ExplainOptions.Detection)?.Accuracy))}, " +
                $"fuzzing accuracy {F(Mean(o => o.Scores.GetValueOrDefault(ExplainOptions.Fuzzing)?.Accuracy))}, " +
                $"simulation r {F(Mean(o => o.Simulation?.Correlation))} ({s.Outcomes.Count(o => o.Simulation is { Correlation: null })} undefined), " +
                $"embedding AUROC {F(Mean(o => o.Scores.GetValueOrDefault(ExplainOptions.Embedding)?.Auroc))}");
        Console.WriteLine($"{s.Explained} features explained, {s.Skipped} already stored{(s.Dead > 0 ? $", {s.Dead} dead (skipped)" : "")}; {s.Sent} requests sent ({s.Retries} retries), {s.CacheHits} answers from the cache");
        Console.WriteLine($"this run: {s.Fresh.PromptTokens.ToString("N0", CultureInfo.InvariantCulture)} prompt + {s.Fresh.CompletionTokens.ToString("N0", CultureInfo.InvariantCulture)} completion tokens, {Cost(s.Fresh.CostUsd)}");
        Console.WriteLine($"stored for {model}: {s.StoredFeatures} features, {s.StoredUsage.PromptTokens.ToString("N0", CultureInfo.InvariantCulture)} prompt + " +
            $"{s.StoredUsage.CompletionTokens.ToString("N0", CultureInfo.InvariantCulture)} completion tokens, {Cost(s.StoredUsage.CostUsd)}");
    }
}
