using System.CommandLine;
using System.Globalization;
using Loupe.Probes.Classifiers;
using Loupe.Probes.Corpus;
using Loupe.Probes.Experiment;
using Loupe.Probes.Harvest;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe probe</c>: train linear part-of-speech probes on cached activations, hook by hook.</summary>
static class ProbeCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var dataset = new Option<string>("--dataset", "-d") { Description = "Labelled text: brown:FOLDER (the Brown corpus in NLTK's layout, tags mapped to the 12 universal tags)", Required = true };
        var categories = new Option<string?>("--categories") { Description = "Comma-separated Brown categories, e.g. news,fiction (default: all)" };
        var maxSentences = new Option<int?>("--max-sentences", "-n") { Description = "Sample this many sentences (seeded) from the chosen categories (default: all)" };
        var hooks = new Option<string>("--hooks") { Description = "Comma-separated glob patterns over hook names to probe", DefaultValueFactory = _ => ActivationHarvester.DefaultHooks };
        var probe = new Option<string>("--probe") { Description = "Which probes: logistic, diffmeans or both", DefaultValueFactory = _ => "both" };
        var seed = new Option<int>("--seed") { Description = "Seeds the sentence sample and the train/held-out split", DefaultValueFactory = _ => 0 };
        var heldOut = new Option<double>("--held-out") { Description = "Share of sentences held out for scoring", DefaultValueFactory = _ => 0.2 };
        var l2 = new Option<double>("--l2") { Description = "L2 penalty λ of the logistic probe (on standardized features)", DefaultValueFactory = _ => new LogisticOptions().L2 };
        var iterations = new Option<int>("--max-iterations") { Description = "L-BFGS iteration budget of the logistic probe", DefaultValueFactory = _ => new LogisticOptions().MaxIterations };
        var output = new Option<string>("--out", "-o") { Description = "Folder for probe.json and probe_accuracy.svg", Required = true };
        var command = new Command("probe",
            "Does the residual stream encode part of speech? Tokenize tagged sentences, label each word's last token with its\n" +
            "universal tag, cache the activations at each hook, and train probes per hook (multinomial logistic regression and\n" +
            "nearest class mean), split by sentence. Prints held-out accuracy per hook against the majority-class baseline and\n" +
            "writes OUT/probe.json (accuracies, counts, confusion matrix at the best hook, settings, seconds) and\n" +
            "OUT/probe_accuracy.svg (accuracy per hook).\n\n" +
            "Examples:\n" +
            "  loupe probe --model ../shared/models/stories260K --dataset brown:../shared/datasets/brown-corpus --categories news,fiction --max-sentences 2000 --out probe-out\n" +
            "  loupe probe -m ../shared/models/stories260K -d brown:../shared/datasets/brown-corpus --hooks \"blocks.*.hook_resid_pre\" --probe diffmeans --seed 3 --out pre")
        { model, dataset, categories, maxSentences, hooks, probe, seed, heldOut, l2, iterations, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // Cheap checks first, so a typo fails before the model loads.
            var kinds = ParseProbeKinds(parse.GetValue(probe)!);
            string outDir = CliSupport.OutputFolder(parse.GetValue(output)!);
            string corpusFolder = ParseDataset(parse.GetValue(dataset)!);
            var cats = (parse.GetValue(categories) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var settings = new PosProbeSettings
            {
                Categories = cats,
                MaxSentences = CliSupport.Int(parse, maxSentences, 2),
                Hooks = parse.GetValue(hooks)!,
                Probes = kinds,
                Seed = parse.GetValue(seed),
                HeldOutFraction = CliSupport.Double(parse, heldOut, 0, 1),
                Logistic = new LogisticOptions(CliSupport.Double(parse, l2, 0), CliSupport.Int(parse, iterations, 0)),
            };
            if (settings.HeldOutFraction is <= 0 or >= 1) throw InputError.Expected("argument", heldOut.Name, "a number in (0, 1)", settings.HeldOutFraction);
            PosProbeExperiment.Validate(settings);
            var corpus = BrownCorpus.Open(corpusFolder);
            corpus.FileIds(cats);

            // The model runs where --device says (only the labelled tokens' activations come back), and so do the probes' products.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            CliSupport.SelectHooks(m, settings.Hooks); // a pattern that matches nothing fails before the corpus is read
            PosProbeResult? result = null;
            CliSupport.Status.Progress().AutoClear(true)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
                .Start(ctx =>
                {
                    var tasks = new Dictionary<string, ProgressTask>();
                    var progress = new SyncProgress<ProbeProgress>(p =>
                    {
                        if (!tasks.TryGetValue(p.Stage, out var task))
                            tasks[p.Stage] = task = ctx.AddTask(p.Stage, maxValue: Math.Max(1, p.Total));
                        task.MaxValue = Math.Max(1, p.Total);
                        task.Value = Math.Max(task.Value, p.Done); // hooks finish on worker threads, in any order
                    });
                    result = PosProbeExperiment.Run(m, corpus, settings, progress, CliSupport.FreeDeviceMemory(m.Backend));
                });
            var (json, chart) = result!.Save(outDir);
            PrintTable(result);
            Console.Error.WriteLine($"wrote {json} and {chart} in {result.Seconds["total"]:F1} s");
            return 0;
        }));
        return command;
    }

    /// <exception cref="InputError">Not one of logistic, diffmeans, both.</exception>
    internal static ProbeKinds ParseProbeKinds(string text) => text.Trim().ToLowerInvariant() switch
    {
        "logistic" => ProbeKinds.Logistic,
        "diffmeans" or "diff-means" => ProbeKinds.DiffMeans,
        "both" => ProbeKinds.Both,
        _ => throw InputError.Expected("argument", "--probe", "logistic, diffmeans or both", text),
    };

    /// <summary>"brown:FOLDER" → FOLDER.</summary>
    /// <exception cref="InputError">The dataset kind is not brown or the folder is missing from the spec.</exception>
    internal static string ParseDataset(string spec)
    {
        int colon = spec.IndexOf(':');
        string kind = colon < 0 ? "" : spec[..colon].Trim().ToLowerInvariant(), folder = colon < 0 ? "" : spec[(colon + 1)..].Trim();
        if (kind != "brown" || folder.Length == 0)
            throw InputError.Expected("argument", "--dataset", "brown:FOLDER, e.g. brown:../shared/datasets/brown-corpus", spec);
        return folder;
    }

    static void PrintTable(PosProbeResult result)
    {
        var run = result.Run;
        static string F(double? v) => v is double d ? d.ToString("F3", CultureInfo.InvariantCulture) : "-";
        Console.WriteLine($"{result.Alignment.Aligned} sentences ({run.Split.TrainCount} train / {run.Split.HeldOutCount} held out), " +
                          $"{run.TrainTokens} / {run.HeldOutTokens} labelled tokens; baseline = always {run.Classes[run.MajorityClass]}");
        Console.WriteLine($"{"hook",-28} {"logistic",9} {"(train)",8} {"diffmeans",9} {"(train)",8} {"baseline",8}");
        foreach (var h in run.Hooks)
            Console.WriteLine($"{h.Hook,-28} {F(h.Logistic?.HeldOutAccuracy),9} {F(h.Logistic?.TrainAccuracy),8} {F(h.DiffMeans?.HeldOutAccuracy),9} {F(h.DiffMeans?.TrainAccuracy),8} {F(run.BaselineAccuracy),8}");
        Console.WriteLine($"best: {run.Best.Hook} ({F(run.Best.RankingAccuracy)} held-out)");
    }

    /// <summary>Reports on the reporting thread (Progress&lt;T&gt; would post to the thread pool and reorder updates).</summary>
    sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
