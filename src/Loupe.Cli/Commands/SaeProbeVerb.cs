using System.CommandLine;
using System.Globalization;
using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Sae;
using Loupe.Probes.Corpus;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe sae probe</c>: k-sparse probing of a dictionary's latents against its input neurons (SAEBench's sparse probing).</summary>
static class SaeProbeVerb
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var sae = new Option<string>("--sae") { Description = "The dictionary: a SAELens folder or its cfg.json, Gemma Scope params.npz or Gemma Scope 2 folder, a sparsify or dictionary_learning folder. Or hf:ORG/NAME[/PATH][@REVISION], or saelens:RELEASE/SAE_ID (SAELens's registry)", Required = true };
        var hook = new Option<string?>("--hook") { Description = "The hook the dictionary reads (default: its config's)" };
        var dataset = new Option<string>("--dataset", "-d") { Description = "Labelled text: brown:FOLDER (the Brown corpus, tags mapped to the 12 universal tags)", Required = true };
        var categories = new Option<string?>("--categories") { Description = "Brown categories to read, comma-separated (default: all)" };
        var maxSentences = new Option<int>("--max-sentences") { Description = "Sentences (genre: passages) sampled (seeded)", DefaultValueFactory = _ => 2000 };
        var ks = new Option<string>("--ks") { Description = "Probe sizes, ascending", DefaultValueFactory = _ => "1,2,5,10,20,50" };
        var classes = new Option<int>("--classes") { Description = "At most this many tags, the most frequent first", DefaultValueFactory = _ => 12 };
        var minExamples = new Option<int>("--min-examples") { Description = "A tag needs this many positives in each split", DefaultValueFactory = _ => 20 };
        var heldOut = new Option<double>("--held-out") { Description = "Fraction of sentences held out", DefaultValueFactory = _ => 0.2 };
        var l2 = new Option<double>("--l2") { Description = "L2 penalty of the logistic probes (on standardized features)", DefaultValueFactory = _ => 1e-3 };
        var seed = new Option<int>("--seed") { Description = "Seeds the sentence sample, the split and the balancing", DefaultValueFactory = _ => 0 };
        var task = new Option<string>("--task") { Description = "pos: each part-of-speech tag on tokens; genre: each Brown category on passages, mean-pooled (SAEBench's text classification)", DefaultValueFactory = _ => "pos" };
        task.AcceptOnlyFromAmong("pos", "genre");
        var passageTokens = new Option<int>("--passage-tokens") { Description = "genre: tokens per passage (SAEBench reads 128)", DefaultValueFactory = _ => 128 };
        var output = new Option<string>("--out", "-o") { Description = "Folder for sparse_probing.json and sparse_probing.svg", Required = true };
        var command = new Command("probe",
            "k-sparse probing (Gurnee et al. 2023; SAEBench's sparse_probing): for each part-of-speech tag, one against the rest on balanced\n" +
            "tokens, a logistic probe on the k latents whose means differ most between the classes, against the same on the k input neurons\n" +
            "and a dense probe on every input dimension. Latents that carry concepts read them with small k where neurons cannot.\n\n" +
            "Examples:\n" +
            "  loupe sae probe --model ../shared/models/stories260K --sae sae/ --dataset brown:../shared/datasets/brown-corpus --out probe/\n" +
            "  loupe sae probe --model gpt2 --sae hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre --dataset brown:brown/ --ks 1,5,20 --out probe/")
        { model, sae, hook, dataset, task, passageTokens, categories, maxSentences, ks, classes, minExamples, heldOut, l2, seed, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            var settings = new SparseProbingSettings
            {
                Categories = parse.GetValue(categories) is { } cats ? [.. cats.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)] : [],
                MaxSentences = parse.GetValue(maxSentences),
                Task = parse.GetValue(task) == "genre" ? SparseProbingTask.Genre : SparseProbingTask.PartOfSpeech,
                PassageTokens = parse.GetValue(passageTokens),
                Ks = ParseKs(parse.GetValue(ks)!),
                MaxClasses = parse.GetValue(classes),
                MinExamples = parse.GetValue(minExamples),
                HeldOutFraction = parse.GetValue(heldOut),
                Seed = parse.GetValue(seed),
                Logistic = new Loupe.Probes.Classifiers.LogisticOptions(L2: CliSupport.Double(parse, l2, 0)),
            };
            settings.Validate();
            bool genre = settings.Task == SparseProbingTask.Genre;
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            var corpus = BrownCorpus.Open(ProbeCommand.ParseDataset(parse.GetValue(dataset)!));
            string saePath = CliSupport.LocalPath(parse.GetValue(sae)!, "--sae");
            var (dictionary, cfg) = DictionaryFile.Load(saePath);
            string hookName = parse.GetValue(hook) ?? (string.IsNullOrWhiteSpace(cfg.HookName) ? throw new InputError($"{saePath} names no hook; give --hook") : cfg.HookName);
            // The model's passes run on --device; the latents are encoded and the probes fitted on the host.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            CliSupport.WarnOnProcessing(m, hookName, cfg);
            var result = CliSupport.Status.Status().Start("probing", ctx =>
                SparseProbing.Run(m, dictionary, hookName, corpus, settings, new CliSupport.SyncProgress<string>(stage => ctx.Status(stage))));
            var args = new Dictionary<string, string?>
            {
                ["model"] = m.Source, ["sae"] = Path.GetFullPath(saePath), ["hook"] = hookName, ["dataset"] = corpus.Folder,
                ["max_sentences"] = settings.MaxSentences?.ToString(CultureInfo.InvariantCulture), ["task"] = parse.GetValue(task),
                ["passage_tokens"] = genre ? settings.PassageTokens.ToString(CultureInfo.InvariantCulture) : null, ["seed"] = settings.Seed.ToString(CultureInfo.InvariantCulture),
                ["weight_processing"] = m.Processing.Describe(),
            };
            string json = SparseProbingReport.Write(folder, result, args);
            Console.WriteLine($"{result.Tokens:N0} tokens of {result.Sentences} {(genre ? "passages, mean-pooled," : "sentences")} at {result.Hook} (d_in {result.DIn}, d_sae {result.DSae}); held-out accuracy, balanced (chance 0.5):");
            int width = Math.Max(6, result.Classes.Max(c => c.Name.Length));
            Console.WriteLine($"  {(genre ? "class" : "tag").PadRight(width)} {"train+",7} {"held+",6}  " + string.Join(" ", result.Ks.Select(k => $"{"lat k=" + k,9} {"neu k=" + k,9}")) + $" {"dense",7}");
            foreach (var c in result.Classes)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {c.Name.PadRight(width)} {c.TrainPositives,7} {c.HeldOutPositives,6}  ") +
                    string.Join(" ", c.LatentAccuracy.Zip(c.NeuronAccuracy, (a, b) => string.Create(CultureInfo.InvariantCulture, $"{a,9:F3} {b,9:F3}"))) +
                    string.Create(CultureInfo.InvariantCulture, $" {c.DenseAccuracy,7:F3}"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {"mean".PadRight(width)} {"",7} {"",6}  ") +
                string.Join(" ", result.MeanLatentAccuracy.Zip(result.MeanNeuronAccuracy, (a, b) => string.Create(CultureInfo.InvariantCulture, $"{a,9:F3} {b,9:F3}"))) +
                string.Create(CultureInfo.InvariantCulture, $" {result.MeanDenseAccuracy,7:F3}"));
            Console.WriteLine($"wrote {json} and {SparseProbingReport.ChartFile}");
            return 0;
        }));
        return command;
    }

    static int[] ParseKs(string text) =>
        [.. CliSupport.IntegerList(text, "--ks", "ascending integers like 1,5,20").Select(k => k is >= int.MinValue and <= int.MaxValue ? (int)k
            : throw InputError.Expected("argument", "--ks", "ascending integers like 1,5,20", text))];
}
