using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe features</c>: feature dashboards of a dictionary — <c>build</c> runs the model over a corpus and
/// writes a SQLite feature store (top and interval examples with context windows, activation histograms,
/// logit effects); <c>top</c> and <c>list</c> query it; <c>neuronpedia</c> writes graph-viewer feature files from it.
/// </summary>
static class FeaturesCommand
{
    public static Command Create()
    {
        var command = new Command("features",
            "Feature dashboards: top-activating contexts, interval samples, activation histograms and logit effects of every\n" +
            "feature of a dictionary, stored in SQLite (one file per dictionary, default SAE_FOLDER/features.db; schema in\n" +
            "docs/feature-store.md).\n\n" +
            "Examples:\n" +
            "  loupe features build --model ../shared/models/stories260K --sae sae/ --source brown:../shared/datasets/brown-corpus --max-contexts 2000\n" +
            "  loupe features top --sae sae/ --feature 123\n" +
            "  loupe features list --sae sae/ --sort density --n 20\n" +
            "  loupe features neuronpedia --graph graphs/graph.json --stores tc/ --out graphs/features");
        command.Subcommands.Add(BuildVerb());
        command.Subcommands.Add(TopVerb());
        command.Subcommands.Add(ListVerb());
        command.Subcommands.Add(FeaturesNeuronpediaVerb.Create());
        return command;
    }

    static Command BuildVerb()
    {
        var model = CliSupport.ModelOption();
        var sae = new Option<string>("--sae") { Description = "The dictionary: a SAELens folder (cfg.json + sae_weights.safetensors) or its cfg.json, or a Gemma Scope params.npz (give --hook). Or hf:ORG/NAME[/PATH][@REVISION]: that folder or file of a Hugging Face hub repository, fetched into the hub cache; or saelens:RELEASE/SAE_ID, as SAE.from_pretrained names it (SAELens's registry) (then give --out)", Required = true };
        var hook = new Option<string?>("--hook") { Description = "Hook point the dictionary reads (default: cfg.json's hook_name)" };
        var source = new Option<string>("--source")
        {
            Description = "Where the text comes from: " + TextSourceSpec.Help + " (N samples from the model)",
            Required = true,
        };
        var contextSize = new Option<int?>("--context-size") { Description = "Tokens per context, BOS included (default: cfg.json's context_size, at most n_ctx)" };
        var maxContexts = new Option<int?>("--max-contexts") { Description = "Use at most this many contexts" };
        var seed = new Option<int>("--seed") { Description = "Seeds the context shuffle, generate:N sampling and the interval sampling", DefaultValueFactory = _ => 0 };
        var batchSize = new Option<int>("--batch-size") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 8 };
        var top = new Option<int>("--top") { Description = "Top-activating examples kept per feature", DefaultValueFactory = _ => 20 };
        var quantiles = new Option<int>("--quantiles") { Description = "Equal activation intervals over (0, max] to sample examples from", DefaultValueFactory = _ => 10 };
        var quantileSamples = new Option<int>("--quantile-samples") { Description = "Examples sampled per interval", DefaultValueFactory = _ => 5 };
        var bins = new Option<int>("--bins") { Description = "Bins of the activation and logit histograms", DefaultValueFactory = _ => 50 };
        var window = new Option<int>("--window") { Description = "Tokens kept on each side of an example for highlighting", DefaultValueFactory = _ => 16 };
        var logits = new Option<int>("--logits") { Description = "Promoted and suppressed tokens kept per feature (0: skip logit effects)", DefaultValueFactory = _ => 10 };
        var keepBos = new Option<bool>("--keep-bos") { Description = "Count each context's BOS position too (left out by default: its activations are outliers)" };
        var output = new Option<string?>("--out", "-o") { Description = "The SQLite file to write (default: SAE_FOLDER/features.db); replaced atomically" };
        var resume = new Option<bool>("--resume") { Description = "Continue a killed or cancelled build from its checkpoint OUT.checkpoint (same model, dictionary, corpus and settings; the store ends the same as an uninterrupted build's)" };
        var checkpointEvery = new Option<double>("--checkpoint-every") { Description = "Seconds between checkpoints to OUT.checkpoint (0: after every batch)", DefaultValueFactory = _ => 300 };
        var command = new Command("build",
            "Run the model over a corpus, encode the dictionary's hook at every token and store, per feature: density, max and\n" +
            "mean activation, the top-K contexts, samples from equal activation intervals of (0, max] (two passes: the first\n" +
            "finds each max), an activation histogram, and the tokens each feature's decoder direction promotes and suppresses\n" +
            "through the unembedding. Memory stays bounded whatever the corpus size; the store is written atomically, and a\n" +
            "checkpoint beside it (OUT.checkpoint, every --checkpoint-every seconds) lets --resume continue a killed build.\n\n" +
            "Examples:\n" +
            "  loupe features build --model ../shared/models/stories260K --sae sae/ --source brown:../shared/datasets/brown-corpus --max-contexts 2000\n" +
            "  loupe features build -m ../shared/models/stories260K --sae tc/cfg.json --source generate:500 --context-size 64 --out tc-features.db")
        { model, sae, hook, source, contextSize, maxContexts, seed, batchSize, top, quantiles, quantileSamples, bins, window, logits, keepBos, output, resume, checkpointEvery };
        command.SetAction((parse, cancellationToken) => Task.FromResult(CliSupport.Guard(() =>
        {
            string given = parse.GetValue(sae)!, saePath = CliSupport.LocalPath(given, "--sae");
            // The default store goes beside the dictionary, which for hf:… is inside the hub cache: not a place to write.
            if (given != saePath && parse.GetValue(output) is null)
                throw new InputError($"argument: --out: needed with --sae {given} (the dictionary is in the hub cache, where features.db does not belong)");
            // A Gemma Scope .npz does not name its hook; a SAELens cfg.json does (and refuses a second one).
            bool npz = saePath.EndsWith(".npz", StringComparison.OrdinalIgnoreCase)
                || (Directory.Exists(saePath) && !File.Exists(Path.Combine(saePath, SaeLensFormat.ConfigFile)));
            var (dictionary, config) = DictionaryFile.Load(saePath, npz ? parse.GetValue(hook) : null);
            string outPath = CliSupport.OutputFile(parse.GetValue(output) ?? Path.Combine(DictionaryFolder(saePath), FeatureStoreSchema.DefaultFileName));
            var options = new FeatureBuildOptions
            {
                Hook = parse.GetValue(hook),
                BatchSize = parse.GetValue(batchSize),
                TopK = parse.GetValue(top),
                Quantiles = parse.GetValue(quantiles),
                QuantileSamples = parse.GetValue(quantileSamples),
                HistogramBins = parse.GetValue(bins),
                Window = parse.GetValue(window),
                LogitCount = parse.GetValue(logits),
                SkipBos = !parse.GetValue(keepBos),
                Seed = parse.GetValue(seed),
                Resume = parse.GetValue(resume),
                CheckpointSeconds = parse.GetValue(checkpointEvery),
            };
            options.Validate();
            // On a device the dictionary encodes there and only the nonzero feature activations come back per batch.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            CliSupport.WarnOnProcessing(m, FeatureDashboardBuilder.ResolveHook(m, config, options.Hook), config); // and fail on a bad hook before tokenizing
            int seedValue = parse.GetValue(seed);
            int size = parse.GetValue(contextSize) ?? Math.Min(config.ContextSize, m.Config.NCtx);
            var text = HarvestCommand.ParseSource(m, parse.GetValue(source)!, seedValue);
            var contexts = CliSupport.Status.Status().Start("tokenizing into contexts",
                _ => ContextBuilder.ForModel(m, text, CliSupport.ContextSize(size, m), seedValue, CliSupport.Int(parse, maxContexts, 1)));
            // The memory it will take, before the long passes allocate it.
            long state = FeatureDashboardBuilder.EstimateStateBytes(dictionary.Shape.DSae, options), batch = FeatureDashboardBuilder.EstimateBatchBytes(dictionary.Shape.DSae, contexts.ContextSize, options);
            Console.Error.WriteLine($"memory: ≈ {CliSupport.FormatBytes(state)} of per-feature state (top {options.TopK}, {options.Quantiles}×{options.QuantileSamples} interval samples, ±{options.Window} windows, {options.HistogramBins} bins)" +
                $" + ≈ {CliSupport.FormatBytes(batch)} per batch of {options.BatchSize} contexts' feature activations" +
                (options.CheckpointSeconds is double every ? $"; checkpoints of ≈ {CliSupport.FormatBytes(state)} to {FeatureDashboardBuilder.CheckpointPath(outPath)} every {every:0.#} s" : ""));
            FeatureBuildSummary? summary = null;
            try
            {
                CliSupport.Status.Progress().AutoClear(true)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var tasks = new Dictionary<string, ProgressTask>();
                        var progress = new CliSupport.SyncProgress<FeatureBuildProgress>(p =>
                        {
                            if (!tasks.TryGetValue(p.Stage, out var task)) tasks[p.Stage] = task = ctx.AddTask(p.Stage, maxValue: Math.Max(1, p.Total));
                            task.MaxValue = Math.Max(1, p.Total);
                            task.Value = p.Done;
                            if (p.TokensPerSecond > 0) task.Description = $"{p.Stage}, {p.TokensPerSecond:F0} tok/s";
                        });
                        summary = FeatureDashboardBuilder.Build(m, dictionary, config, contexts, outPath, options, saePath, progress, cancellationToken);
                    });
            }
            catch (OperationCanceledException)
            {
                string checkpoint = FeatureDashboardBuilder.CheckpointPath(outPath);
                Console.Error.WriteLine(File.Exists(checkpoint)
                    ? $"cancelled; {outPath} was not written; --resume continues from the last checkpoint ({checkpoint})"
                    : $"cancelled; {outPath} was not written");
                return 130;
            }
            var s = summary!;
            Console.WriteLine($"{s.DSae.ToString("N0", CultureInfo.InvariantCulture)} features × {s.Tokens.ToString("N0", CultureInfo.InvariantCulture)} tokens at {s.Hook}: " +
                $"{s.DeadFeatures.ToString("N0", CultureInfo.InvariantCulture)} dead, {s.Examples.ToString("N0", CultureInfo.InvariantCulture)} examples from " +
                $"{s.ContextsStored.ToString("N0", CultureInfo.InvariantCulture)} contexts → {s.Path} ({s.Seconds:F1} s)");
            return 0;
        })));
        return command;
    }

    static Command TopVerb()
    {
        var (sae, db) = StoreOptions();
        var feature = new Option<int>("--feature", "-f") { Description = "Feature index (0..d_sae−1)", Required = true };
        var count = new Option<int>("--n") { Description = "Top examples to show", DefaultValueFactory = _ => 10 };
        var context = new Option<int>("--context") { Description = "Tokens shown on each side of an example (at most the stored window)", DefaultValueFactory = _ => 8 };
        var showQuantiles = new Option<bool>("--quantiles") { Description = "Also show the interval samples, highest interval first" };
        var json = new Option<bool>("--json") { Description = "Print everything stored for the feature as JSON instead" };
        var command = new Command("top",
            "Show one feature: density, max and mean activation, the activation histogram as a sparkline, the top-activating\n" +
            "contexts with the example token marked «like this», and the tokens its decoder direction promotes and suppresses.\n\n" +
            "Examples:\n" +
            "  loupe features top --sae sae/ --feature 123\n" +
            "  loupe features top --db sae/features.db -f 7 --n 20 --quantiles\n" +
            "  loupe features top --sae sae/ -f 7 --json")
        { sae, db, feature, count, context, showQuantiles, json };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            int f = parse.GetValue(feature), n = CliSupport.Int(parse, count, 0), side = CliSupport.Int(parse, context, 0);
            using var store = OpenStore(parse, sae, db);
            // The store's own check names no option (the server asks it too).
            if ((uint)f >= (uint)store.DSae)
                throw InputError.Expected("argument", feature.Name, $"an index in [0, {store.DSae - 1}] (this dictionary has d_sae = {store.DSae} features)", f);
            if (parse.GetValue(json)) Console.WriteLine(FeatureDashboardJson.Build(store, f, n).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            else PrintFeature(store, f, n, side, parse.GetValue(showQuantiles));
            return 0;
        }));
        return command;
    }

    static Command ListVerb()
    {
        var (sae, db) = StoreOptions();
        var sort = new Option<string>("--sort") { Description = "Order: density, max_act (largest first) or feature", DefaultValueFactory = _ => "density" };
        var count = new Option<int>("--n") { Description = "Features to list", DefaultValueFactory = _ => 20 };
        var json = new Option<bool>("--json") { Description = "Print JSON lines instead of a table" };
        var command = new Command("list",
            "List features with their density, max and mean activation and top promoted token.\n\n" +
            "Examples:\n" +
            "  loupe features list --sae sae/ --n 20\n" +
            "  loupe features list --db sae/features.db --sort max_act --json")
        { sae, db, sort, count, json };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            int n = CliSupport.Int(parse, count, 0);
            string order = parse.GetValue(sort)!;
            if (order is not ("density" or "max_act" or "feature")) throw InputError.Expected("argument", sort.Name, "density, max_act or feature", order);
            using var store = OpenStore(parse, sae, db);
            var rows = store.Features(order, n);
            bool asJson = parse.GetValue(json);
            if (!asJson)
            {
                Console.WriteLine($"{store.DSae.ToString("N0", CultureInfo.InvariantCulture)} features at {store.Hook}, {store.Tokens.ToString("N0", CultureInfo.InvariantCulture)} tokens, {store.DeadFeatures().ToString("N0", CultureInfo.InvariantCulture)} dead");
                Console.WriteLine($"{"feature",8}  {"density",9}  {"max",9}  {"mean",9}  top promoted");
            }
            foreach (var r in rows)
            {
                var promoted = store.Logits(r.Feature, FeatureStoreSchema.Promoted).FirstOrDefault();
                if (asJson)
                    Console.WriteLine(new JsonObject
                    {
                        ["feature"] = r.Feature, ["n_active"] = r.NActive, ["density"] = r.Density, ["max_act"] = r.MaxAct,
                        ["mean_act"] = r.MeanAct, ["decoder_norm"] = r.DecoderNorm, ["top_promoted_token_id"] = promoted?.TokenId,
                        ["top_promoted_token_str"] = promoted?.TokenStr,
                    }.ToJsonString());
                else
                    Console.WriteLine($"{r.Feature,8}  {Percent(r.Density),9}  {r.MaxAct,9:F3}  {(r.MeanAct is double m ? m.ToString("F3", CultureInfo.InvariantCulture) : "—"),9}  " +
                        (promoted is null ? "" : $"{Quote(promoted.TokenStr ?? $"<{promoted.TokenId}>")} {promoted.Value:+0.000;-0.000}"));
            }
            return 0;
        }));
        return command;
    }

    static (Option<string?> Sae, Option<string?> Db) StoreOptions() => (
        new Option<string?>("--sae") { Description = "The dictionary folder (or its cfg.json); reads SAE_FOLDER/features.db" },
        new Option<string?>("--db") { Description = "A feature store file written by `loupe features build`" });

    /// <exception cref="InputError">Both or neither of --sae and --db.</exception>
    static FeatureStore OpenStore(ParseResult parse, Option<string?> sae, Option<string?> db)
    {
        string? saePath = parse.GetValue(sae), dbPath = parse.GetValue(db);
        if ((saePath is null) == (dbPath is null)) throw new InputError("argument: give exactly one of --sae (reads SAE_FOLDER/features.db) or --db FILE");
        return FeatureStore.Open(dbPath ?? Path.Combine(DictionaryFolder(saePath!), FeatureStoreSchema.DefaultFileName));
    }

    /// <summary>The folder of a dictionary given as a folder or as its cfg.json.</summary>
    static string DictionaryFolder(string saePath) =>
        File.Exists(saePath) ? Path.GetDirectoryName(Path.GetFullPath(saePath))! : saePath;

    static void PrintFeature(FeatureStore store, int f, int n, int side, bool showQuantiles)
    {
        var s = store.Feature(f);
        Console.WriteLine($"feature {f} of {store.DSae.ToString(CultureInfo.InvariantCulture)} at {store.Hook}");
        Console.WriteLine($"  density {Percent(s.Density)} ({s.NActive.ToString("N0", CultureInfo.InvariantCulture)} of {store.Tokens.ToString("N0", CultureInfo.InvariantCulture)} tokens)" +
            $"   max {s.MaxAct:F3}   mean when active {(s.MeanAct is double m ? m.ToString("F3", CultureInfo.InvariantCulture) : "—")}   ‖W_dec‖ {s.DecoderNorm:F3}");
        if (store.Histogram(f) is { } h)
            Console.WriteLine($"  activations {Sparkline(h.Counts)}  ({h.Counts.Length} bins over (0, {h.Edges[^1]:F3}])");
        if (s.NActive == 0) Console.WriteLine("  dead: never active on these tokens");
        foreach (var x in store.Explanations(f)) Console.WriteLine($"  explanation ({x.ExplainerModel}): {Quote(x.Text)}{ScoreText(x)}");

        var top = store.Examples(f, FeatureStoreSchema.Top, n);
        if (top.Count > 0)
        {
            Console.WriteLine();
            Console.WriteLine("top activations");
            foreach (var e in top) Console.WriteLine($"  {e.Rank + 1,3}  {e.Activation,8:F3}  {Render(store, e, side)}");
        }
        if (showQuantiles)
            foreach (var interval in store.Intervals(f).Where(i => i.NActive > 0))
            {
                Console.WriteLine();
                Console.WriteLine($"interval ({interval.Lower:F3}, {interval.Upper:F3}]: {interval.NActive.ToString("N0", CultureInfo.InvariantCulture)} tokens ({Percent(s.NActive == 0 ? 0 : (double)interval.NActive / s.NActive)} of active)");
                foreach (var e in store.Examples(f, FeatureStoreSchema.Quantile).Where(e => e.Bin == interval.Bin))
                    Console.WriteLine($"       {e.Activation,8:F3}  {Render(store, e, side)}");
            }

        var promoted = store.Logits(f, FeatureStoreSchema.Promoted);
        var suppressed = store.Logits(f, FeatureStoreSchema.Suppressed);
        if (promoted.Count + suppressed.Count > 0)
        {
            Console.WriteLine();
            Console.WriteLine($"{"promoted logits",-30}  suppressed logits");
            for (int i = 0; i < Math.Max(promoted.Count, suppressed.Count); i++)
            {
                string left = i < promoted.Count ? LogitCell(promoted[i]) : "";
                string right = i < suppressed.Count ? LogitCell(suppressed[i]) : "";
                Console.WriteLine($"  {left,-28}  {right}");
            }
        }
        else Console.WriteLine($"\nlogit effects: {(store.Meta.TryGetValue("logit_effects", out var why) ? why : "not stored")}");
    }

    /// <summary>"  detection acc 0.90 F1 0.89 AUROC 0.95  fuzzing …" for the scorers stored with an explanation.</summary>
    static string ScoreText(FeatureExplanation x) => string.Concat(x.Scores.Select(kv => (kv.Key == Loupe.Explain.ExplainOptions.Simulation
        ? $"   {kv.Key} r {Metric(kv.Value, "ev_correlation")} (activating windows {Metric(kv.Value, "ev_correlation_activating")})"
        : $"   {kv.Key} acc {Metric(kv.Value, "accuracy")} F1 {Metric(kv.Value, "f1")}" + (kv.Value.ContainsKey("auroc") ? $" AUROC {Metric(kv.Value, "auroc")}" : ""))
        + (kv.Value.ContainsKey("similar_negatives") ? " vs similar negatives" : "")));

    static string Metric(IReadOnlyDictionary<string, double> metrics, string name) =>
        metrics.TryGetValue(name, out double v) ? v.ToString("F2", CultureInfo.InvariantCulture) : "—";

    static string LogitCell(LogitRow r) => $"{r.Value,8:+0.000;-0.000}  {Quote(r.TokenStr ?? $"<{r.TokenId}>")}";

    /// <summary>The example's window as text, the example token marked «so», at most <paramref name="side"/> tokens each side.</summary>
    static string Render(FeatureStore store, FeatureExample e, int side)
    {
        int from = Math.Max(e.WindowStart, e.Position - side), to = Math.Min(e.WindowStart + e.WindowActs.Length - 1, e.Position + side);
        var text = new StringBuilder();
        if (from > 0) text.Append('…');
        for (int p = from; p <= to; p++)
        {
            string token = Visible(store.TokenText(e.ContextTokens[p]) ?? $"<{e.ContextTokens[p]}>");
            text.Append(p == e.Position ? $"«{token}»" : token);
        }
        if (to < e.ContextTokens.Length - 1) text.Append('…');
        return text.ToString();
    }

    static string Visible(string s) => s.Replace("\r", "\\r").Replace("\n", "↵").Replace("\t", "→");

    static string Quote(string s) => "\"" + Visible(s) + "\"";

    static string Percent(double fraction) => (fraction * 100).ToString(fraction >= 0.001 || fraction == 0 ? "F3" : "G3", CultureInfo.InvariantCulture) + "%";

    /// <summary>One block character per bin, height ∝ count (blank for an empty bin).</summary>
    internal static string Sparkline(IReadOnlyList<long> counts)
    {
        const string levels = "▁▂▃▄▅▆▇█";
        long max = counts.Count == 0 ? 0 : counts.Max();
        var line = new StringBuilder(counts.Count);
        foreach (long c in counts)
            line.Append(c == 0 || max == 0 ? ' ' : levels[(int)Math.Min(levels.Length - 1, (c * levels.Length - 1) / max)]);
        return line.ToString();
    }
}
