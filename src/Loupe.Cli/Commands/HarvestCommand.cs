using System.CommandLine;
using System.Globalization;
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Loading;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe harvest</c>: stream activations of chosen hooks to sharded safetensors with a manifest (resumable).</summary>
static class HarvestCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var source = new Option<string>("--source")
        {
            Description = "Where the text comes from: " + TextSourceSpec.Help + " (N samples from the model)",
            Required = true,
        };
        var hooks = new Option<string>("--hooks") { Description = "Comma-separated glob patterns of per-position hooks, e.g. \"blocks.2.hook_resid_post\"", Required = true };
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int?>("--max-contexts") { Description = "Harvest at most this many contexts" };
        var seed = new Option<int>("--seed") { Description = "Seed for shuffling contexts (and sampling with generate:N)", DefaultValueFactory = _ => 0 };
        var batchSize = new Option<int>("--batch-size") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 8 };
        var shardTokens = new Option<int>("--shard-tokens") { Description = "Tokens per shard file", DefaultValueFactory = _ => 65_536 };
        var keepBos = new Option<bool>("--keep-bos") { Description = "Also store the BOS position's activations (skipped by default)" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder (shards + manifest.json); run the same command again to resume", Required = true };
        var command = new Command("harvest",
            "Stream the activations of chosen hooks over a text corpus to sharded safetensors files with a manifest.\n" +
            "Memory stays bounded (one shard at a time); a killed harvest resumes after its last complete shard when run again.\n\n" +
            "Examples:\n" +
            "  loupe harvest --model ../shared/models/stories260K --source brown:../shared/datasets/brown-corpus --hooks blocks.2.hook_resid_post --out acts/\n" +
            "  loupe harvest --model ../shared/models/stories260K --source generate:2000 --hooks \"blocks.1.mlp.hook_in,blocks.1.hook_mlp_out\" --out tc/\n" +
            "  loupe harvest --model ../shared/models/stories260K --source generate:200 --hooks blocks.2.hook_resid_post --device cuda --out acts/")
        { model, source, hooks, contextSize, maxContexts, seed, batchSize, shardTokens, keepBos, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // On a device each batch's cache stays there and only the rows written to a shard cross to the host.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            int seedValue = parse.GetValue(seed);
            var text = ParseSource(m, parse.GetValue(source)!, seedValue);
            var selected = CliSupport.SelectHooks(m, parse.GetValue(hooks)!);
            var contexts = CliSupport.Status.Status().Start("tokenizing into contexts",
                _ => ContextBuilder.ForModel(m, text, CliSupport.ContextSize(parse.GetValue(contextSize), m), seedValue, CliSupport.Int(parse, maxContexts, 1)));
            var options = new HarvestOptions(selected, CliSupport.Int(parse, batchSize, 1), CliSupport.Int(parse, shardTokens, 1), SkipBos: !parse.GetValue(keepBos));
            // What it will write, before the first forward pass (the harvest itself refuses a disk without room for what is left).
            if (Harvester.EstimateBytes(m, contexts, options) is long bytes)
                Console.Error.WriteLine($"disk: ≈ {CliSupport.FormatBytes(bytes)} of shards for {contexts.Count.ToString("N0", CultureInfo.InvariantCulture)} contexts × {selected.Count} hook(s) as float32" +
                    (Harvester.FreeBytes(parse.GetValue(output)!) is long free ? $" ({CliSupport.FormatBytes(free)} free there)" : ""));
            HarvestManifest? manifest = null;
            CliSupport.Status.Progress().AutoClear(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("harvesting", maxValue: 1);
                    var progress = new Progress<HarvestProgress>(p =>
                    {
                        task.MaxValue = Math.Max(1, p.TotalTokens);
                        task.Value = p.TokensDone;
                        task.Description = $"harvesting, shard {p.ShardsDone}/{p.TotalShards}, {p.TokensPerSecond:F0} tok/s";
                    });
                    manifest = Harvester.Run(m, contexts, parse.GetValue(output)!, options, progress);
                });
            Console.WriteLine($"{manifest!.TotalTokens.ToString("N0", CultureInfo.InvariantCulture)} tokens × {selected.Count} hooks in {manifest.Shards.Count} shards → {parse.GetValue(output)}");
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// The CLI's <c>--source</c>: <see cref="TextSourceSpec.Parse"/>; a path on the hub, <c>KIND:hf:datasets/ORG/NAME[/PATH][@REVISION][#COLUMN]</c>
    /// (e.g. <c>parquet:hf:datasets/NeelNanda/pile-10k/data</c>), is fetched into the hub cache first, its size printed before.
    /// </summary>
    internal static ITextSource ParseSource(HookedTransformer model, string spec, int seed)
    {
        int colon = spec.IndexOf(':');
        if (colon > 0 && spec.AsSpan(colon + 1).StartsWith("hf:", StringComparison.Ordinal))
        {
            string hub = spec[(colon + 1)..], column = "";
            int hash = hub.LastIndexOf('#');
            if (hash > 0) (hub, column) = (hub[..hash], hub[hash..]);
            spec = spec[..(colon + 1)] + CliSupport.LocalPath(hub, "--source") + column;
            // SAELens keeps a pre-tokenized dataset's sae_lens.json at the repository's top: fetched too when there is one
            if (spec.StartsWith("parquet:", StringComparison.Ordinal)) CliSupport.HubFileIfPresent(hub, PretokenizedMetadata.FileName);
        }
        var source = TextSourceSpec.Parse(model, spec, seed);
        if (source is ParquetSource { Metadata: { } m })
        {
            // as SAELens does before training on a pre-tokenized dataset: the tokenizer it names must have this model's vocabulary
            var (tokenizer, why) = model.Tokenizer is null ? (null, "this model has no tokenizer") : DatasetTokenizer(m.TokenizerName);
            if (tokenizer is not null)
                Console.Error.WriteLine($"--source: the rows were tokenized with {m.TokenizerName}, whose vocabulary is this model's ({m.CheckSameVocabulary(tokenizer, model.Tokenizer!):N0} tokens)");
            else
                Console.Error.WriteLine($"--source: the rows were tokenized with {m.TokenizerName} ({m.Path}); its vocabulary could not be compared with this model's ({why}), " +
                    "so only the ids' range is checked: the model's tokenizer must be that one");
        }
        return source;
    }

    /// <summary>The tokenizer a pre-tokenized dataset names: a local folder, or tokenizer.json of a hub model (fetched into the hub cache); null with why when neither is at hand.</summary>
    static (Loupe.Tokenizers.ITokenizer? Tokenizer, string Why) DatasetTokenizer(string name)
    {
        try
        {
            if (Directory.Exists(name)) return (Loupe.Tokenizers.TokenizerLoader.FromFolder(name), "");
            if (!HubClient.IsValidRepoId(name)) return (null, $"'{name}' is neither a folder nor a hub id");
            using var client = new HubClient();
            string path = client.ResolvePathAsync(name, "tokenizer.json").GetAwaiter().GetResult();
            return (Loupe.Tokenizers.TokenizerLoader.FromFolder(Path.GetDirectoryName(path)!), "");
        }
        catch (Exception e) when (e is InputError or HttpRequestException or IOException)
        {
            return (null, e.Message.ReplaceLineEndings(" "));
        }
    }
}
