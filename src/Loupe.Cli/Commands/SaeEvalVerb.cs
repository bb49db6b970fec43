using System.CommandLine;
using System.Globalization;
using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Splice;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe sae eval</c>: splice a dictionary into the model over a text corpus and report L0, variance
/// explained, cosine similarity, cross-entropy clean / with the SAE / zero-ablated (loss recovered), KL,
/// dead and dense features and the feature-density histogram (eval.json + density.svg).
/// </summary>
static class SaeEvalVerb
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var sae = new Option<string>("--sae") { Description = "The dictionary: a SAELens folder (cfg.json + sae_weights.safetensors) or its cfg.json. Or hf:ORG/NAME[/PATH][@REVISION]: that folder or file of a Hugging Face hub repository, fetched into the hub cache; or saelens:RELEASE/SAE_ID, as SAE.from_pretrained names it (SAELens's registry)", Required = true };
        var hook = new Option<string?>("--hook") { Description = "The hook it reads (default: cfg.json's hook_name)" };
        var hookOut = new Option<string?>("--hook-out") { Description = "For a transcoder, the hook it replaces (default: cfg.json's hook_name_out, or blocks.L.hook_mlp_out for an MLP-input hook)" };
        var source = new Option<string>("--source")
        {
            Description = "Where the text comes from: " + TextSourceSpec.Help + " (N samples from the model)",
            Required = true,
        };
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int>("--max-contexts") { Description = "Evaluate at most this many contexts", DefaultValueFactory = _ => 64 };
        var batchSize = new Option<int>("--batch-size") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 8 };
        var seed = new Option<int>("--seed") { Description = "Seed for shuffling contexts (and sampling with generate:N)", DefaultValueFactory = _ => 0 };
        var exclude = new Option<string?>("--exclude-tokens")
        {
            Description = "Token ids left out of the activation metrics and not spliced (comma-separated, or \"none\"); default: the model's BOS and EOS",
        };
        var denseThreshold = new Option<double>("--dense-threshold") { Description = "A feature firing on more than this fraction of tokens counts as dense", DefaultValueFactory = _ => 0.1 };
        var levels = new Option<string?>("--levels")
        {
            Description = "Prefix widths whose reconstruction is measured alone, e.g. 128,512 (default: a Matryoshka SAE's inner levels, from cfg.json's matryoshka_widths; none for other dictionaries)",
        };
        var levelLosses = new Option<bool>("--level-losses") { Description = "Also splice each level's reconstruction into the model for its CE and loss recovered (one more forward pass per level and batch)" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder for eval.json and density.svg (written atomically)", Required = true };
        var command = new Command("eval",
            "Evaluate an SAE or transcoder spliced into the model (SAELens's evals.py definitions): L0, fraction of variance\n" +
            "unexplained, cosine similarity, cross-entropy clean / with the reconstruction / zero-ablated and the loss recovered\n" +
            "(CE_zero − CE_sae) / (CE_zero − CE_clean), KL, dead and dense feature fractions, and the log10 feature-density histogram.\n" +
            "BOS/EOS positions keep their activation and are left out of the activation metrics; every position counts in the losses.\n\n" +
            "Examples:\n" +
            "  loupe sae eval --model ../shared/models/stories260K --sae sae/ --source brown:../shared/datasets/brown-corpus --out eval/\n" +
            "  loupe sae eval --model ../shared/models/stories260K --sae tc/ --hook blocks.1.mlp.hook_in --hook-out blocks.1.hook_mlp_out \\\n" +
            "      --source generate:200 --context-size 64 --max-contexts 32 --out tc-eval/\n" +
            "  loupe sae eval --model ../shared/models/stories260K --sae sae/ --source generate:200 --device cuda --out eval/")
        { model, sae, hook, hookOut, source, contextSize, maxContexts, batchSize, seed, exclude, denseThreshold, levels, levelLosses, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // Cheap checks first, so a typo fails before the model loads.
            int contextCount = CliSupport.Int(parse, maxContexts, 1);
            int contextsPerPass = CliSupport.Int(parse, batchSize, 1);
            int? tokensPerContext = CliSupport.Int(parse, contextSize, 2);
            double dense = CliSupport.Double(parse, denseThreshold, 0, 1);
            var excluded = ParseExclude(parse.GetValue(exclude));
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            string saePath = CliSupport.LocalPath(parse.GetValue(sae)!, "--sae");
            // On a device the splice and the metrics run there; each batch reads back only sums and counts.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var (splice, cfg) = SaeSplice.Load(m, saePath, parse.GetValue(hook), new SaeSpliceOptions { OutputHook = parse.GetValue(hookOut) });
            CliSupport.WarnOnProcessing(m, splice.InputHook, cfg);
            int seedValue = parse.GetValue(seed);
            var text = HarvestCommand.ParseSource(m, parse.GetValue(source)!, seedValue);
            var contexts = CliSupport.Status.Status().Start("tokenizing into contexts",
                _ => ContextBuilder.ForModel(m, text, CliSupport.ContextSize(tokensPerContext, m), seedValue, contextCount));
            int dSae = splice.Dictionary.Shape.DSae;
            int[] prefixWidths = parse.GetValue(levels) is { } given
                ? MatryoshkaBatchTopKActivation.CheckWidths(CliSupport.IntegerList(given, "--levels", "ascending integers like 128,512"), dSae, "argument", "--levels")[..^1]
                : cfg.MatryoshkaLevels() is { Length: > 1 } recorded ? recorded[..^1] : [];
            var options = new SaeEvalOptions
            {
                BatchSize = contextsPerPass,
                ExcludeTokens = excluded,
                DenseThreshold = dense,
                Levels = prefixWidths,
                LevelLosses = parse.GetValue(levelLosses),
            };
            if (options.LevelLosses && prefixWidths.Length == 0)
                throw new InputError("argument: --level-losses: there are no levels to measure: give --levels (a dictionary without matryoshka_widths in its cfg.json has none)");
            SaeEvalResult? result = null;
            CliSupport.Status.Progress().AutoClear(true)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("evaluating", maxValue: contexts.Count);
                    var progress = new CliSupport.SyncProgress<SaeEvalProgress>(p => task.Value = p.ContextsDone);
                    result = SaeEvaluator.Evaluate(m, splice, contexts, options, progress);
                });
            string json = SaeEvalReport.Write(folder, result!, m.Source ?? "", cfg.ModelName, Path.GetFullPath(saePath), seedValue);
            Print(result!);
            Console.WriteLine($"wrote {json} and density.svg");
            return 0;
        }));
        return command;
    }

    /// <exception cref="InputError">An id is not an integer.</exception>
    static int[]? ParseExclude(string? text)
    {
        if (text is null) return null;
        if (text.Trim() is "none" or "") return [];
        return text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(v => int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id) ? id
                : throw InputError.Expected("argument", "--exclude-tokens", "integer token ids like \"1,2\" or \"none\"", v))
            .ToArray();
    }

    static void Print(SaeEvalResult r)
    {
        string F(double v, string format = "F4") => double.IsNaN(v) ? "n/a" : v.ToString(format, CultureInfo.InvariantCulture);
        Console.WriteLine($"{r.Architecture} dictionary at {r.Hook}{(r.OutputHook != r.Hook ? $" → {r.OutputHook}" : "")}: d_in {r.DIn}, d_sae {r.DSae}, d_out {r.DOut}");
        Console.WriteLine($"{r.Contexts} contexts × {r.ContextSize} tokens ({r.Source}); {r.Positions.ToString("N0", CultureInfo.InvariantCulture)} positions in activation metrics " +
            $"(excluding tokens {(r.ExcludedTokens.Length == 0 ? "none" : string.Join(", ", r.ExcludedTokens))}), {r.Predictions.ToString("N0", CultureInfo.InvariantCulture)} predictions");
        var rows = new (string, string)[]
        {
            ("L0 (active features / token)", F(r.L0, "F2")),
            ("L1", F(r.L1)),
            ("FVU", F(r.Fvu)),
            ("explained variance", F(r.ExplainedVariance)),
            ("cosine similarity", F(r.CosineSimilarity)),
            ("‖x̂‖ / ‖x‖", F(r.L2Ratio)),
            ("MSE (‖x − x̂‖² / token)", F(r.Mse, "G5")),
            ("CE loss clean", F(r.CeLossClean)),
            ("CE loss with SAE", F(r.CeLossWithSae)),
            ("CE loss zero-ablated", F(r.CeLossZeroAblated)),
            ("loss recovered", F(r.LossRecovered)),
            ("KL with SAE", F(r.KlWithSae)),
            ("KL zero-ablated", F(r.KlZeroAblated)),
            ("dead features", $"{r.DeadFeatures} ({F(100 * r.DeadFraction, "F1")}%)"),
            ($"dense features (> {F(r.DenseThreshold, "G3")})", $"{r.DenseFeatures} ({F(100 * r.DenseFraction, "F1")}%)"),
        };
        foreach (var (name, value) in rows) Console.WriteLine($"  {name,-32} {value}");
        foreach (var level in r.Levels)
            Console.WriteLine($"  {$"latents [0, {level.Width}) alone",-32} explained variance {F(level.ExplainedVariance)}, MSE {F(level.Mse, "G5")}" +
                (double.IsNaN(level.CeLoss) ? "" : $", CE {F(level.CeLoss)}, loss recovered {F(level.LossRecovered)}"));
        Console.WriteLine($"  {"log10 density histogram",-32} {Sparkline(r.DensityHistogram.Counts)}  [−10 … 0]");
    }

    internal static string Sparkline(long[] counts)
    {
        const string bars = "▁▂▃▄▅▆▇█";
        long max = Math.Max(1, counts.Max());
        return string.Concat(counts.Select(c => c == 0 ? ' ' : bars[(int)Math.Min(bars.Length - 1, c * bars.Length / (max + 1))]));
    }
}
