using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Loupe.Dictionaries.Crosscoders;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe crosscoder</c>: model diffing and cross-layer features with crosscoders — <c>diff</c> (which latents write to
/// which model, from the decoder alone), <c>eval</c> (reconstruction and spliced losses per model) and <c>train</c>.
/// </summary>
static class CrosscoderCommand
{
    const string LayoutHelp = "A crosscoder folder: dictionary_learning's (ae.pt + config.json, or model.safetensors + config.json, as " +
                              "CrossCoder / BatchTopKCrossCoder save them), Kissane's ({N}.pt + {N}_cfg.json), or Loupe's (loupe crosscoder train). " +
                              "Or hf:ORG/NAME[/PATH][@REVISION] for a hub folder in the safetensors layout";

    public static Command Create()
    {
        var command = new Command("crosscoder",
            "Crosscoders: one dictionary over the same hook of several models (model diffing: a base model and its fine-tune) or\n" +
            "several layers of one model. Reads dictionary_learning's and Kissane's crosscoders; writes dictionary_learning's hub layout.\n\n" +
            "Examples:\n" +
            "  loupe crosscoder diff --crosscoder cc/ --models base,chat --out diff.json\n" +
            "  loupe crosscoder eval --crosscoder cc/ --model base=gpt2 --model chat=./gpt2-chat --source brown:../shared/datasets/brown-corpus --out eval.json\n" +
            "  loupe crosscoder train --model base=gpt2 --model chat=./gpt2-chat --hook blocks.6.hook_resid_post --d-sae 4096 --source text:corpus/ --out cc/\n" +
            "  loupe crosscoder features --crosscoder cc/ --model base=gpt2 --model chat=./gpt2-chat --source text:corpus/ --out cc/features.db");
        command.Subcommands.Add(Diff());
        command.Subcommands.Add(Eval());
        command.Subcommands.Add(Train());
        command.Subcommands.Add(Features());
        command.Subcommands.Add(Vector());
        return command;
    }

    static Option<string> CrosscoderOption() => new("--crosscoder", "-c") { Description = LayoutHelp, Required = true };
    static Option<string?> ModelsOption() => new("--models") { Description = "Labels of the sources, comma-separated (base,chat), or one label for a one-model crosscoder over several layers (default: the file's, else A, B, …)" };
    static Option<string?> HooksOption() => new("--hooks") { Description = "The hook each source reads, comma-separated, or one for all (default: the file's: submodule_name, hook_point, or blocks.{layer}.hook_resid_post for dictionary_learning's layer)" };
    static Option<string?> ScalesOption() => new("--input-scales") { Description = "The factor each source's activations were multiplied by in training, comma-separated (Kissane's runs normalised each model and did not save the factors; default: the file's, else 1)" };

    static CrosscoderSourceOptions SourceOptions(ParseResult parse, Option<string?> models, Option<string?> hooks, Option<string?> scales) => new()
    {
        Models = List(parse.GetValue(models)),
        Hooks = List(parse.GetValue(hooks)),
        InputScales = List(parse.GetValue(scales))?.Select(v => float.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out float c) ? c
            : throw InputError.Expected("argument", "--input-scales", "numbers like 0.5,1.2", v)).ToArray(),
    };

    static string[]? List(string? text) => text is null ? null : text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);

    static Crosscoder Load(ParseResult parse, Option<string> crosscoder, CrosscoderSourceOptions sources)
    {
        string path = CliSupport.LocalPath(parse.GetValue(crosscoder)!, "--crosscoder");
        return CliSupport.Status.Status().Start("reading the crosscoder", _ => CrosscoderFiles.Load(path, sources, Console.Error.WriteLine));
    }

    static Command Diff()
    {
        var crosscoder = CrosscoderOption();
        var (models, hooks, scales) = (ModelsOption(), HooksOption(), ScalesOption());
        var top = new Option<int>("--top") { Description = "Latents listed per class, most extreme first", DefaultValueFactory = _ => 20 };
        var bins = new Option<int>("--bins") { Description = "Histogram bins", DefaultValueFactory = _ => 50 };
        var onlyAbove = new Option<double>("--only-second-above") { Description = "Relative norm difference Δ above which only the second source uses a latent (Minder et al.)", DefaultValueFactory = _ => 0.9 };
        var onlyBelow = new Option<double>("--only-first-below") { Description = "Δ below which only the first source uses it", DefaultValueFactory = _ => 0.1 };
        var output = new Option<string?>("--out", "-o") { Description = "Write the whole diff (every latent) as JSON here (atomically)" };
        var command = new Command("diff",
            "Which latents write to which source, from the decoder alone: per latent the decoder norm in each source, the relative\n" +
            "norm n_B / (n_A + n_B) (Anthropic 2024), the relative norm difference Δ = ½((n_B − n_A) / max + 1) (Minder et al. 2025),\n" +
            "the decoder cosine, and a class: B only (Δ > 0.9), A only (Δ < 0.1), shared (0.4 ≤ Δ ≤ 0.6), other, dead.\n" +
            "With more than two sources, each latent's peak source and its share of the summed norm.\n\n" +
            "Example:\n  loupe crosscoder diff --crosscoder cc/ --models base,chat --out diff.json")
        { crosscoder, models, hooks, scales, top, bins, onlyAbove, onlyBelow, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            var options = new CrosscoderDiffOptions
            {
                Top = parse.GetValue(top), Bins = parse.GetValue(bins),
                OnlySecondAbove = parse.GetValue(onlyAbove), OnlyFirstBelow = parse.GetValue(onlyBelow),
            };
            options.Validate();
            string? outPath = parse.GetValue(output) is { } o ? CliSupport.OutputFile(o) : null;
            var cc = Load(parse, crosscoder, SourceOptions(parse, models, hooks, scales));
            var diff = CrosscoderDiff.Compute(cc, options);
            Console.WriteLine($"{cc.Architecture} crosscoder, {cc.DSae.ToString("N0", CultureInfo.InvariantCulture)} latents over {cc.Sources.Count} sources of width {cc.Width}: " +
                              string.Join(", ", cc.Sources.Select(s => s.ToString())));
            Console.WriteLine($"  {cc.Origin}");
            foreach (var (cls, count) in diff.Counts)
                Console.WriteLine($"  {cls,-24} {count,8:N0}  ({100.0 * count / cc.DSae:F1}%)" +
                                  (diff.Top.TryGetValue(cls, out var ids) && ids.Count > 0 ? $"   e.g. {string.Join(", ", ids.Take(8))}" : ""));
            if (diff.NormDiffHistogram is { } h)
                Console.WriteLine($"  {"Δ histogram [0 … 1]",-24} {SaeEvalVerb.Sparkline(h.Counts)}");
            if (diff.SharedCosineHistogram is { } c && c.Counts.Sum() > 0)
                Console.WriteLine($"  {"shared cosines [−1 … 1]",-24} {SaeEvalVerb.Sparkline(c.Counts)}");
            if (outPath is not null)
            {
                string json = diff.ToJson();
                OutputFiles.WriteAtomic(outPath, s => s.Write(System.Text.Encoding.UTF8.GetBytes(json)));
                Console.WriteLine($"wrote {outPath}");
            }
            return 0;
        }));
        return command;
    }

    internal static Option<string[]> ModelListOption() => new("--model", "-m")
    {
        Description = "LABEL=MODEL for each model the crosscoder reads (a folder or hub id), repeated: --model base=gpt2 --model chat=./gpt2-chat. " +
                      "A one-model crosscoder takes one. With --device the models and the crosscoder run there (train: the rows are held in host memory, a batch goes up per step)",
        Required = true, AllowMultipleArgumentsPerToken = false,
    };

    // Loads the models, checks they read the same token ids, runs body with them, and disposes them.
    internal static int WithModels(ParseResult parse, Option<string[]> option, Func<Dictionary<string, HookedTransformer>, int> body)
    {
        var loaded = LoadModels(parse, option);
        try
        {
            CheckSameTokens(loaded);
            return body(loaded);
        }
        finally
        {
            foreach (var m in loaded.Values) m.Dispose();
        }
    }

    // Loads each LABEL=MODEL once; the contexts are tokenised with the first model's tokenizer.
    static Dictionary<string, HookedTransformer> LoadModels(ParseResult parse, Option<string[]> option)
    {
        var models = new Dictionary<string, HookedTransformer>(StringComparer.Ordinal);
        foreach (var spec in parse.GetValue(option)!)
        {
            int eq = spec.IndexOf('=');
            if (eq <= 0 || eq == spec.Length - 1) throw InputError.Expected("argument", "--model", "LABEL=MODEL, e.g. base=gpt2", spec);
            string label = spec[..eq], path = spec[(eq + 1)..];
            if (models.ContainsKey(label)) throw new InputError($"argument: --model: label '{label}' is given twice");
            models[label] = CliSupport.LoadModel(path, onDevice: true, option: $"--model {label}=");
        }
        return models;
    }

    static void CheckSameTokens(IReadOnlyDictionary<string, HookedTransformer> models)
    {
        const string probe = "The quick brown fox, 1984 — naïve café.";
        var encodings = models.Where(kv => kv.Value.Tokenizer is not null).Select(kv => (kv.Key, Ids: kv.Value.Tokenizer!.Encode(probe, addSpecialTokens: false))).ToArray();
        for (int i = 1; i < encodings.Length; i++)
            if (!encodings[i].Ids.SequenceEqual(encodings[0].Ids))
                throw new InputError($"models {encodings[0].Key} and {encodings[i].Key} tokenise text differently; a crosscoder's models must read the same token ids");
    }

    internal static HarvestContexts Contexts(ParseResult parse, HookedTransformer first, Option<string> source, Option<int?> contextSize, Option<int> maxContexts, Option<int> seed)
    {
        int seedValue = parse.GetValue(seed);
        var text = HarvestCommand.ParseSource(first, parse.GetValue(source)!, seedValue);
        return CliSupport.Status.Status().Start("tokenizing into contexts",
            _ => ContextBuilder.ForModel(first, text, CliSupport.ContextSize(parse.GetValue(contextSize), first), seedValue, CliSupport.Int(parse, maxContexts, 1)));
    }

    internal static Option<string> SourceOption() => new("--source")
    {
        Description = "Where the text comes from: " + TextSourceSpec.Help + " (N samples from the first model)",
        Required = true,
    };

    static Command Eval()
    {
        var crosscoder = CrosscoderOption();
        var (models, hooks, scales) = (ModelsOption(), HooksOption(), ScalesOption());
        var model = ModelListOption();
        var source = SourceOption();
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int>("--max-contexts") { Description = "Evaluate at most this many contexts", DefaultValueFactory = _ => 64 };
        var batchSize = new Option<int>("--batch-size") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 8 };
        var seed = new Option<int>("--seed") { Description = "Seed for shuffling contexts", DefaultValueFactory = _ => 0 };
        var noLosses = new Option<bool>("--no-losses") { Description = "Skip the spliced runs (reconstruction metrics only)" };
        var latentScaling = new Option<string?>("--latent-scaling")
        {
            Description = "Latent Scaling (Minder et al. 2025) of these latents: 'exclusive' (every latent `diff` classes as one model's only), or indices like 12,40; " +
                          "ν^ε near 0 and ν^r near 0: the latent is really absent from the other model",
        };
        var output = new Option<string?>("--out", "-o") { Description = "Write the evaluation as JSON here (atomically)" };
        var command = new Command("eval",
            "Evaluate a crosscoder on the models it reads, on the same tokens: per source the fraction of variance unexplained and\n" +
            "the cosine of reconstruction and activation; per model the next-token loss clean, with its sources replaced by their\n" +
            "reconstructions (position 0 kept) and zero-ablated, and the loss recovered; L0, dead latents and each latent's density.\n\n" +
            "Example:\n  loupe crosscoder eval --crosscoder cc/ --model base=gpt2 --model chat=./gpt2-chat --source brown:../shared/datasets/brown-corpus")
        { crosscoder, models, hooks, scales, model, source, contextSize, maxContexts, batchSize, seed, noLosses, latentScaling, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            int batch = CliSupport.Int(parse, batchSize, 1);
            string? outPath = parse.GetValue(output) is { } o ? CliSupport.OutputFile(o) : null;
            var cc = Load(parse, crosscoder, SourceOptions(parse, models, hooks, scales));
            int[] scaled = parse.GetValue(latentScaling) is not { } which ? []
                : which.Trim() == "exclusive" ? [.. CrosscoderDiff.Compute(cc).Latents.Where(l => l.Class.EndsWith(" only", StringComparison.Ordinal)).Select(l => l.Index)]
                : [.. CliSupport.IntegerList(which, "--latent-scaling", "'exclusive' or latent indices like 12,40").Select(v => (int)Math.Clamp(v, -1, int.MaxValue))];
            if (scaled.Length > 0 && cc.Sources.Count != 2) throw new InputError($"argument: --latent-scaling: compares two sources; this crosscoder has {cc.Sources.Count}");
            return WithModels(parse, model, loaded =>
            {
                var first = loaded[cc.Sources[0].Model is var m && loaded.ContainsKey(m) ? m : loaded.Keys.First()];
                var contexts = Contexts(parse, first, source, contextSize, maxContexts, seed);
                CrosscoderEvalResult? result = null;
                CliSupport.Status.Progress().AutoClear(true)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("evaluating", maxValue: contexts.Count);
                        result = CrosscoderEvaluator.Evaluate(cc, loaded, contexts, new CrosscoderEvalOptions { BatchSize = batch, Losses = !parse.GetValue(noLosses), LatentScaling = scaled },
                            new CliSupport.SyncProgress<int>(done => task.Value = done));
                    });
                var r = result!;
                Console.WriteLine($"{cc.Architecture} crosscoder, {cc.DSae:N0} latents; {r.Contexts} contexts × {r.ContextSize} tokens, {r.Rows:N0} positions (position 0 left out)");
                Console.WriteLine($"  L0 {r.L0:F2}   dead latents {r.DeadLatents:N0} ({100.0 * r.DeadLatents / r.DSae:F1}%)");
                foreach (var s in r.Sources)
                    Console.WriteLine($"  source {s.Source,-36} explained variance {s.ExplainedVariance:F4}   FVU {s.Fvu:F4}   cosine {s.CosineSimilarity:F4}");
                foreach (var l in r.Models)
                    Console.WriteLine($"  model {l.Model,-12} CE clean {l.CeClean:F4}   spliced {l.CeSpliced:F4}   zero-ablated {l.CeZeroAblated:F4}   loss recovered {l.LossRecovered:F4}");
                if (r.LatentScales.Count > 0)
                {
                    Console.WriteLine($"  latent scaling of {r.LatentScales.Count} latents (ν^ε = β(ε other) / β(ε own), ν^r likewise on reconstructions; most exclusive first):");
                    foreach (var l in r.LatentScales.Where(l => l.ActiveRows > 0).OrderBy(l => Math.Max(l.NuError, l.NuReconstruction)).Take(12))
                        Console.WriteLine($"    latent {l.Index,7} ({l.Owner} only, {l.ActiveRows:N0} rows)   ν^ε {l.NuError,7:F3}   ν^r {l.NuReconstruction,7:F3}");
                    if (r.LatentScales.Count(l => l.ActiveRows == 0) is > 0 and var silent) Console.WriteLine($"    {silent} never fired on this text");
                }
                if (outPath is not null)
                {
                    string json = JsonSerializer.Serialize(r, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals });
                    OutputFiles.WriteAtomic(outPath, s => s.Write(System.Text.Encoding.UTF8.GetBytes(json)));
                    Console.WriteLine($"wrote {outPath}");
                }
                return 0;
            });
        }));
        return command;
    }

    static Command Train()
    {
        var model = ModelListOption();
        var hook = new Option<string>("--hook") { Description = "The hook every model's source reads (model diffing), or several comma-separated hooks of one model (a cross-layer crosscoder)", Required = true };
        var source = SourceOption();
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int>("--max-contexts") { Description = "Train on at most this many contexts (held in memory; the size is printed first)", DefaultValueFactory = _ => 256 };
        var dSae = new Option<int>("--d-sae") { Description = "Latents", Required = true };
        var steps = new Option<int>("--steps") { Description = "Training steps", DefaultValueFactory = _ => 2000 };
        var batchSize = new Option<int>("--batch-size") { Description = "Rows per step", DefaultValueFactory = _ => 256 };
        var lr = new Option<float>("--lr") { Description = "Adam learning rate", DefaultValueFactory = _ => 1e-3f };
        var architecture = new Option<string>("--architecture") { Description = "relu (L1 on the summed decoder norms; Anthropic, Kissane) or batchtopk (the k·batch largest f_i·Σ_s‖W_dec^s[i]‖ kept; Minder et al., fewer false exclusive latents)", DefaultValueFactory = _ => "relu" };
        var k = new Option<int>("--k") { Description = "batchtopk: latents kept per row on average", DefaultValueFactory = _ => 32 };
        var l1 = new Option<float>("--l1") { Description = "relu: λ of the L1 penalty λ·Σ_i f_i·Σ_s ‖W_dec^s[i]‖", DefaultValueFactory = _ => 1f };
        var l1Warmup = new Option<int>("--l1-warmup") { Description = "Steps over which λ ramps up from 0", DefaultValueFactory = _ => 0 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Write checkpoint.safetensors (and append training_log.jsonl) every N steps", DefaultValueFactory = _ => 200 };
        var resume = new Option<bool>("--resume") { Description = "Continue the checkpoint in --out (bit-exact with an uninterrupted run; same command otherwise)" };
        var onTheFly = new Option<bool>("--on-the-fly") { Description = "Read the rows from the models window by window while training (one window in memory; the models run again every epoch) instead of holding every row" };
        var contextsPerWindow = new Option<int>("--contexts-per-window") { Description = "With --on-the-fly: contexts run per shuffling window", DefaultValueFactory = _ => 64 };
        var noNormalize = new Option<bool>("--no-normalize") { Description = "Train on the raw activations (default: each source scaled to mean norm √d, the factors kept in the crosscoder)" };
        var seed = new Option<int>("--seed") { Description = "Seed for the initialisation, the batches and the contexts", DefaultValueFactory = _ => 0 };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: model.safetensors + config.json (dictionary_learning's hub layout), written atomically", Required = true };
        var command = new Command("train",
            "Train a crosscoder on the same tokens through every model: ReLU (Anthropic 2024; dictionary_learning's CrossCoderTrainer),\n" +
            "loss = Σ_s ‖x_s − x̂_s‖² + λ·Σ_i f_i·Σ_s ‖W_dec^s[i]‖; or BatchTopK (--architecture batchtopk --k K; Minder et al. 2025),\n" +
            "the k·batch largest f_i·Σ_s‖W_dec^s[i]‖ kept, saved as BatchTopKCrossCoder with its learned threshold.\n" +
            "Position 0 (BOS) is left out; the activations are held in memory.\n\n" +
            "Examples:\n" +
            "  loupe crosscoder train --model base=gpt2 --model chat=./gpt2-chat --hook blocks.6.hook_resid_post --d-sae 4096 --source text:corpus/ --out cc/\n" +
            "  loupe crosscoder train --model gpt2=gpt2 --hook blocks.4.hook_resid_post,blocks.5.hook_resid_post,blocks.6.hook_resid_post --d-sae 4096 --source text:corpus/ --out xl/")
        { model, hook, source, contextSize, maxContexts, dSae, architecture, k, steps, batchSize, lr, l1, l1Warmup, onTheFly, contextsPerWindow, checkpointEvery, resume, noNormalize, seed, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string arch = parse.GetValue(architecture)!;
            if (arch is not ("relu" or "batchtopk")) throw InputError.Expected("argument", "--architecture", "relu or batchtopk", arch);
            var training = new SaeTrainingOptions
            {
                Steps = CliSupport.Int(parse, steps, 1), BatchSize = CliSupport.Int(parse, batchSize, 1), LearningRate = parse.GetValue(lr),
                SparsityCoefficient = arch == "relu" ? parse.GetValue(l1) : 0, SparsityWarmupSteps = CliSupport.Int(parse, l1Warmup, 0), BDecInit = BDecInit.Zeros,
                Seed = parse.GetValue(seed),
            };
            training.Validate();
            int features = CliSupport.Int(parse, dSae, 1);
            int kValue = arch == "batchtopk" ? CliSupport.Int(parse, k, 1, features) : 1;
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            var hooks = List(parse.GetValue(hook)) ?? [];
            return WithModels(parse, model, loaded =>
            {
                CrosscoderSource[] sources = loaded.Count > 1
                    ? hooks.Length == 1 ? [.. loaded.Keys.Select(l => new CrosscoderSource(l, hooks[0]))]
                        : throw new InputError($"argument: --hook: model diffing reads one hook in every model; got {hooks.Length} for {loaded.Count} models")
                    : hooks.Length >= 2 ? [.. hooks.Select(h => new CrosscoderSource(loaded.Keys.First(), h))]
                        : throw new InputError("argument: --hook: a one-model crosscoder reads at least two hooks (comma-separated); for two models give --model twice");
                var first = loaded[sources[0].Model];
                int width = Width(first, sources[0].Hook);
                foreach (var s in sources)
                    if (Width(loaded[s.Model], s.Hook) is var w && w != width)
                        throw new InputError($"source {s}: width {w}, but {sources[0]} has {width}; a crosscoder's sources share one width");
                var paired = new PairedActivations(sources, width, loaded);
                var options = new CrosscoderTrainingOptions { DSae = features, Architecture = arch, K = kValue, Training = training, NormalizeSources = !parse.GetValue(noNormalize) };
                // the crosscoder trains on --device (or $LOUPE_DEVICE) with its models: parameters, moments and step buffers there
                var trainingBackend = CliSupport.DictionaryBackendFor(CrosscoderTraining.ActivationFor(options, sources.Length));
                CliSupport.SayTrainingMemory(CrosscoderTraining.EstimateTrainingBytes(options, sources.Length, width), trainingBackend, CliSupport.FreeDeviceMemory(trainingBackend));
                var contexts = Contexts(parse, first, source, contextSize, maxContexts, seed);
                // Rows read by windows of contexts; without --on-the-fly one window holds every context and is computed once.
                bool streamed = parse.GetValue(onTheFly);
                int perWindow = streamed ? Math.Min(CliSupport.Int(parse, contextsPerWindow, 1), contexts.Count) : contexts.Count;
                long bytes = CrosscoderTraining.EstimateRowBytes(perWindow, contexts.ContextSize, sources.Length, width) / 2;
                Console.Error.WriteLine(streamed
                    ? $"{contexts.Count} contexts read on the fly, {perWindow} per window × {contexts.ContextSize - 1} positions × {sources.Length} sources × d {width}: {CliSupport.FormatBytes(bytes)} of activations in memory"
                    : $"{contexts.Count} contexts × {contexts.ContextSize - 1} positions × {sources.Length} sources × d {width}: {CliSupport.FormatBytes(bytes)} of activations in memory");
                // on at most the first 64 contexts: an extra pass over them, not over every context
                var scales = CliSupport.Status.Status().Start("estimating the input scales", _ => CrosscoderTraining.EstimateScales(paired, contexts, options));
                var data = new PairedRows(paired, contexts, scales, perWindow, options.BatchSize, keepLastWindow: !streamed);
                SaeStepMetrics? last = null;
                var provenance = new Dictionary<string, string>
                {
                    ["models"] = string.Join(",", loaded.Select(kv => $"{kv.Key}={kv.Value.Source}")),
                    ["contexts"] = $"{contexts.Count} × {contexts.ContextSize} from {contexts.SourceDescription} ({contexts.Sha256()})",
                    ["steps"] = training.Steps.ToString(CultureInfo.InvariantCulture), ["l1"] = training.SparsityCoefficient.ToString(CultureInfo.InvariantCulture),
                };
                var crosscoderTrained = CliSupport.Status.Status().Start($"training {features:N0} latents for {training.Steps:N0} steps on {trainingBackend.Device}",
                    _ => CrosscoderTraining.TrainInFolder(sources, width, data, options, scales, folder, CliSupport.Int(parse, checkpointEvery, 1), parse.GetValue(resume),
                        provenance, trainingBackend, new CliSupport.SyncProgress<SaeTrainingProgress>(p => last = p.Metrics)));
                if (last is { } m)
                    Console.WriteLine($"trained on {trainingBackend.Device}: mse {m.Mse:G4}, L0 {m.L0:F1}, explained variance {m.ExplainedVariance:F4}; input scales {string.Join(", ", crosscoderTrained.InputScales.Select(c => c.ToString("G4", CultureInfo.InvariantCulture)))}");
                var diff = CrosscoderDiff.Compute(crosscoderTrained);
                Console.WriteLine("  " + string.Join(", ", diff.Counts.Select(kv => $"{kv.Key}: {kv.Value}")));
                Console.WriteLine($"wrote {folder}");
                return 0;
            });
        }));
        return command;
    }

    static Command Features()
    {
        var crosscoder = CrosscoderOption();
        var (models, hooks, scales) = (ModelsOption(), HooksOption(), ScalesOption());
        var model = ModelListOption();
        var source = SourceOption();
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int>("--max-contexts") { Description = "Read at most this many contexts", DefaultValueFactory = _ => 1000 };
        var seed = new Option<int>("--seed") { Description = "Seed for shuffling contexts and the interval samples", DefaultValueFactory = _ => 0 };
        var batchSize = new Option<int>("--batch-size") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 8 };
        var top = new Option<int>("--top") { Description = "Top activating contexts kept per latent", DefaultValueFactory = _ => 20 };
        var window = new Option<int>("--window") { Description = "Tokens kept either side of each example", DefaultValueFactory = _ => 16 };
        var resume = new Option<bool>("--resume") { Description = "Continue a killed build from its checkpoint OUT.checkpoint (same models, crosscoder, corpus and settings)" };
        var output = new Option<string>("--out", "-o") { Description = "The feature store to write (SQLite, atomically)", Required = true };
        var command = new Command("features",
            "Build a feature store for a crosscoder: per latent its density, top activating contexts, interval samples and\n" +
            "activation histogram, from every model on the same tokens; read it with `loupe features top --store OUT`, explain it\n" +
            "with `loupe explain --store OUT`, serve it with `loupe serve --features OUT`.\n\n" +
            "Example:\n  loupe crosscoder features --crosscoder cc/ --model base=gpt2 --model chat=./gpt2-chat --source text:corpus/ --out cc/features.db")
        { crosscoder, models, hooks, scales, model, source, contextSize, maxContexts, seed, batchSize, top, window, resume, output };
        command.SetAction((parse, cancellationToken) => Task.FromResult(CliSupport.Guard(() =>
        {
            var options = new Loupe.Dictionaries.Features.FeatureBuildOptions
            {
                BatchSize = parse.GetValue(batchSize), TopK = parse.GetValue(top), Window = parse.GetValue(window), Seed = parse.GetValue(seed),
                Resume = parse.GetValue(resume), LogitCount = 0,
            };
            options.Validate();
            string outPath = CliSupport.OutputFile(parse.GetValue(output)!);
            string path = CliSupport.LocalPath(parse.GetValue(crosscoder)!, "--crosscoder");
            var cc = CliSupport.Status.Status().Start("reading the crosscoder", _ => CrosscoderFiles.Load(path, SourceOptions(parse, models, hooks, scales), Console.Error.WriteLine));
            return WithModels(parse, model, loaded =>
            {
                var paired = new PairedActivations(cc.Sources, cc.Width, loaded);
                var contexts = Contexts(parse, paired.First, source, contextSize, maxContexts, seed);
                long state = Loupe.Dictionaries.Features.FeatureDashboardBuilder.EstimateStateBytes(cc.DSae, options);
                Console.Error.WriteLine($"memory: ≈ {CliSupport.FormatBytes(state)} of per-latent state (top {options.TopK}, ±{options.Window} windows)");
                Loupe.Dictionaries.Features.FeatureBuildSummary? summary = null;
                CliSupport.Status.Progress().AutoClear(true)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var tasks = new Dictionary<string, ProgressTask>();
                        var progress = new CliSupport.SyncProgress<Loupe.Dictionaries.Features.FeatureBuildProgress>(p =>
                        {
                            if (!tasks.TryGetValue(p.Stage, out var task)) tasks[p.Stage] = task = ctx.AddTask(p.Stage, maxValue: Math.Max(1, p.Total));
                            task.MaxValue = Math.Max(1, p.Total);
                            task.Value = p.Done;
                        });
                        summary = CrosscoderFeatures.Build(cc, paired, contexts, outPath, options, path, progress, cancellationToken);
                    });
                var r = summary!;
                Console.WriteLine($"{r.DSae:N0} latents over {r.Tokens:N0} tokens: {r.DeadFeatures:N0} never fired; {r.Examples:N0} examples from {r.ContextsStored:N0} contexts");
                Console.WriteLine($"wrote {r.Path}");
                return 0;
            });
        })));
        return command;
    }

    static Command Vector()
    {
        var crosscoder = CrosscoderOption();
        var (models, hooks, scales) = (ModelsOption(), HooksOption(), ScalesOption());
        var latent = new Option<int>("--latent", "-f") { Description = "The latent", Required = true };
        var source = new Option<string>("--source") { Description = "Whose decoder vector: a source's label (chat) or index (1)", Required = true };
        var unit = new Option<bool>("--unit") { Description = "Write it at unit length (default: in the model's units, W_dec / input scale)" };
        var output = new Option<string>("--out", "-o") { Description = "The steering vector file (safetensors: tensor 'direction', the source's hook in the metadata)", Required = true };
        var command = new Command("vector",
            "Write a latent's decoder vector in one source as a steering vector: add what a chat-only latent writes to the base\n" +
            "model (`loupe steer --vector`) and see whether it makes the base model act like the fine-tune.\n\n" +
            "Example:\n" +
            "  loupe crosscoder vector --crosscoder cc/ --latent 128 --source chat --out chat-128.safetensors\n" +
            "  loupe steer --model base-model/ --vector chat-128.safetensors --coeff 8 --prompt \"Once upon a time\"")
        { crosscoder, models, hooks, scales, latent, source, unit, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string outPath = CliSupport.OutputFile(parse.GetValue(output)!);
            var cc = Load(parse, crosscoder, SourceOptions(parse, models, hooks, scales));
            string which = parse.GetValue(source)!;
            var labels = cc.SourceLabels();
            int s = Enumerable.Range(0, labels.Count).FirstOrDefault(i => labels[i] == which || cc.Sources[i].ToString() == which, -1);
            if (s < 0 && int.TryParse(which, NumberStyles.None, CultureInfo.InvariantCulture, out int index)) s = index;
            if (s < 0 || s >= labels.Count) throw InputError.Expected("argument", "--source", $"one of {string.Join(", ", labels)} or an index below {labels.Count}", which);
            CrosscoderFiles.SaveDecoderVector(outPath, cc, parse.GetValue(latent), s, parse.GetValue(unit));
            float norm = System.Numerics.Tensors.TensorPrimitives.Norm(cc.DecoderVector(parse.GetValue(latent), s));
            Console.WriteLine($"latent {parse.GetValue(latent)} in {cc.Sources[s]}: ‖W_dec‖ {norm:G4}; wrote {outPath} (hook {cc.Sources[s].Hook})");
            return 0;
        }));
        return command;
    }

    // The per-position width of a hook, from the model's declared hook points.
    static int Width(HookedTransformer model, string hook)
    {
        var point = model.HookPoints.FirstOrDefault(p => p.Name == hook)
            ?? throw new InputError($"argument: --hook: '{hook}' is not a hook point of this model; closest names: {string.Join(", ", Loupe.Models.Hooks.HookNames.Closest(hook, model.HookPointNames))}");
        if (point.Axes.Count != 3 || point.Sizes[^1] is not int d)
            throw new InputError($"argument: --hook: '{hook}' has axes [{string.Join(", ", point.Axes)}]; a crosscoder reads per-position vectors [batch, pos, d]");
        return d;
    }
}
