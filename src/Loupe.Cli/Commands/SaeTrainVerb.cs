using System.CommandLine;
using System.Globalization;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe sae train</c>: train an SAE or transcoder from a harvest folder or straight from the model, with checkpoints and exact resume.</summary>
static class SaeTrainVerb
{
    public static Command Create()
    {
        var activations = new Option<string?>("--activations") { Description = "Harvest folder (from `loupe harvest`) to train on" };
        var model = new Option<string?>("--model", "-m") { Description = "Model folder or hub id, to read activations on the fly (with --source) instead of from disk" };
        var source = new Option<string?>("--source") { Description = "With --model: " + TextSourceSpec.Help };
        var contextSize = CliSupport.ContextSizeOption("With --model: tokens per context, BOS included");
        var maxContexts = new Option<int?>("--max-contexts") { Description = "With --model: use at most this many contexts" };
        var contextsPerWindow = new Option<int>("--contexts-per-window") { Description = "With --model: contexts run per shuffling window", DefaultValueFactory = _ => 64 };
        var hook = new Option<string?>("--hook") { Description = "Input hook, e.g. blocks.2.hook_resid_post (default: the harvest's only hook)" };
        var targetHook = new Option<string?>("--target-hook") { Description = "Transcoder: the hook to reconstruct, e.g. blocks.1.hook_mlp_out (input: --hook = the MLP's input)" };
        var skip = new Option<bool>("--skip") { Description = "Transcoder with a linear skip connection (skip-transcoder)" };
        var architecture = new Option<string>("--architecture") { Description = "standard (ReLU + L1), topk, batchtopk, matryoshka_batchtopk or jumprelu", DefaultValueFactory = _ => "topk" };
        var matryoshkaWidths = new Option<string?>("--matryoshka-widths") { Description = "matryoshka_batchtopk: nested level widths, ascending, e.g. 128,512,2048 (d_sae is added as the last level when missing)" };
        var k = new Option<int>("--k") { Description = "Active features per token for topk / batchtopk / matryoshka_batchtopk", DefaultValueFactory = _ => 32 };
        var dSae = new Option<int?>("--d-sae") { Description = "Number of features (default: --expansion × d_in)" };
        var expansion = new Option<int>("--expansion") { Description = "Features per input dimension when --d-sae is not given", DefaultValueFactory = _ => 8 };
        var steps = new Option<int>("--steps") { Description = "Training steps", DefaultValueFactory = _ => 2000 };
        var batchSize = new Option<int>("--batch-size") { Description = "Tokens per step", DefaultValueFactory = _ => 4096 };
        var lr = new Option<float>("--lr") { Description = "Adam learning rate", DefaultValueFactory = _ => 4e-4f };
        var lrWarmup = new Option<int>("--lr-warmup") { Description = "Linear learning-rate warm-up steps", DefaultValueFactory = _ => 0 };
        var lrDecay = new Option<float>("--lr-decay") { Description = "Fraction of steps at the end over which the learning rate decays to 0", DefaultValueFactory = _ => 0.2f };
        var sparsity = new Option<float>("--sparsity") { Description = "L1 coefficient (standard) or L0 coefficient (jumprelu)", DefaultValueFactory = _ => 5f };
        var sparsityWarmup = new Option<int>("--sparsity-warmup") { Description = "Steps over which the sparsity coefficient rises from 0", DefaultValueFactory = _ => 0 };
        var auxK = new Option<float>("--aux-k") { Description = "Auxiliary-k loss coefficient on dead features (topk / batchtopk)", DefaultValueFactory = _ => 1f / 32 };
        var deadWindow = new Option<int>("--dead-window") { Description = "A feature is dead when it has not fired in this many tokens", DefaultValueFactory = _ => 1_000_000 };
        var normalize = new Option<bool>("--normalize") { Description = "Scale inputs to mean norm √d_in while training (SAELens expected_average_only_in), folded into the saved weights" };
        var seed = new Option<int>("--seed") { Description = "Seed for initialisation and batch order", DefaultValueFactory = _ => 0 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Write checkpoint.safetensors every N steps", DefaultValueFactory = _ => 200 };
        var resume = new Option<bool>("--resume") { Description = "Continue the checkpoint in --out (bit-exact with an uninterrupted run)" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: cfg.json + sae_weights.safetensors (SAELens), checkpoint.safetensors, training_log.jsonl", Required = true };
        var command = new Command("train",
            "Train a sparse autoencoder or transcoder (Adam, warm-up/decay, aux-k, unit-norm decoder) with checkpoints every N steps.\n" +
            "Kill it at any moment; run the same command with --resume to continue exactly where the last checkpoint left off.\n\n" +
            "Examples:\n" +
            "  loupe sae train --activations acts/ --architecture topk --k 32 --d-sae 512 --steps 3000 --out sae/\n" +
            "  loupe sae train --model ../shared/models/stories260K --source brown:../shared/datasets/brown-corpus --hook blocks.2.hook_resid_post --out sae/\n" +
            "  loupe sae train --activations tc/ --hook blocks.1.mlp.hook_in --target-hook blocks.1.hook_mlp_out --architecture topk --out tc-sae/\n" +
            "  loupe sae train --activations acts/ --architecture matryoshka_batchtopk --k 32 --d-sae 2048 --matryoshka-widths 128,512 --out msae/\n" +
            "  loupe sae train ... --out sae/ --resume\n" +
            "  loupe sae train --activations acts/ --architecture topk --device cuda --out sae/   (every architecture trains on a GPU)")
        {
            activations, model, source, contextSize, maxContexts, contextsPerWindow, hook, targetHook, skip, architecture, matryoshkaWidths, k, dSae, expansion,
            steps, batchSize, lr, lrWarmup, lrDecay, sparsity, sparsityWarmup, auxK, deadWindow, normalize, seed, checkpointEvery, resume, output,
        };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string? store = parse.GetValue(activations), modelPath = parse.GetValue(model);
            if ((store is null) == (modelPath is null)) throw new InputError("argument: give either --activations FOLDER or --model M with --source S");
            HookedTransformer? m = null;
            try
            {
                IRowWindows data;
                string inputHook;
                string? outHook = parse.GetValue(targetHook);
                int seedValue = parse.GetValue(seed);
                string modelName;
                int ctxSize;
                if (store is not null)
                {
                    var opened = ActivationStore.Open(store);
                    inputHook = parse.GetValue(hook) ?? (opened.Hooks.Count == 1 ? opened.Hooks[0]
                        : throw new InputError($"argument: --hook: {store} holds several hooks ({string.Join(", ", opened.Hooks)}); choose one with --hook"));
                    data = new StoreRows(opened, inputHook, outHook, seed: seedValue);
                    modelName = opened.Manifest.Model;
                    ctxSize = opened.Manifest.ContextSize;
                }
                else
                {
                    // The model's forward passes run on --device too (a 1–8B model's harvest is the slow half of the job);
                    // each batch's hook activations come to the host once, where the window is shuffled.
                    m = CliSupport.LoadModel(modelPath!, onDevice: true);
                    inputHook = parse.GetValue(hook) ?? throw new InputError("argument: --hook is required with --model");
                    string spec = parse.GetValue(source) ?? throw new InputError("argument: --source is required with --model");
                    var text = HarvestCommand.ParseSource(m, spec, seedValue);
                    var contexts = CliSupport.Status.Status().Start("tokenizing into contexts",
                        _ => ContextBuilder.ForModel(m, text, CliSupport.ContextSize(parse.GetValue(contextSize), m), seedValue, CliSupport.Int(parse, maxContexts, 1)));
                    data = new ModelRows(m, contexts, inputHook, outHook, CliSupport.Int(parse, contextsPerWindow, 1));
                    modelName = m.Source ?? modelPath!;
                    ctxSize = contexts.ContextSize;
                }

                bool featuresGiven = parse.GetValue(dSae) is not null;
                int features = SaeTrainingOptions.FeatureCount(parse.GetValue(dSae), parse.GetValue(expansion), data.DIn);
                SaeActivation act = SaeTrainingOptions.ActivationFor(parse.GetValue(architecture)!, parse.GetValue(k), features,
                    parse.GetValue(matryoshkaWidths) is { } widths ? CliSupport.IntegerList(widths, "--matryoshka-widths", "ascending integers like 128,512,2048") : null);
                if (outHook is null && parse.GetValue(skip)) throw new InputError("argument: --skip needs --target-hook (a skip connection belongs to a transcoder)");
                var shape = outHook is null ? SaeShape.Sae(data.DIn, features) : SaeShape.Transcoder(data.DIn, features, data.DOut, parse.GetValue(skip));
                var options = new SaeTrainingOptions
                {
                    Steps = parse.GetValue(steps), BatchSize = parse.GetValue(batchSize), LearningRate = parse.GetValue(lr),
                    LrWarmupSteps = parse.GetValue(lrWarmup), LrDecayFraction = parse.GetValue(lrDecay),
                    SparsityCoefficient = act is TopKActivation or BatchTopKActivation ? 0 : parse.GetValue(sparsity),
                    SparsityWarmupSteps = parse.GetValue(sparsityWarmup), AuxKCoefficient = parse.GetValue(auxK),
                    DeadWindowTokens = parse.GetValue(deadWindow), NormalizeExpectedAverage = parse.GetValue(normalize), Seed = seedValue,
                };
                // Every size and range before anything large is allocated — on a GPU against its free memory, where the
                // parameters, Adam moments and [batch, d_sae] buffers live — then the estimate, so a long run says what it holds.
                var trainingBackend = CliSupport.DictionaryBackendFor(act);
                long? deviceFree = CliSupport.FreeDeviceMemory(trainingBackend);
                options.Validate(shape, act, featuresGiven ? dSae.Name : expansion.Name, memoryLimitBytes: deviceFree);
                CliSupport.SayTrainingMemory(SaeTrainingOptions.EstimateTrainingBytes(shape, options.BatchSize), trainingBackend, deviceFree);
                var dict = new SparseDictionary(shape, act);
                dict.Initialize(seedValue);
                // The dictionary trains on --device (or $LOUPE_DEVICE) when its architecture has device kernels.
                var trainer = new SaeTrainer(dict, options, trainingBackend);
                var template = new SaeLensConfig
                {
                    HookName = inputHook, HookNameOut = outHook ?? "", ModelName = modelName, ContextSize = ctxSize,
                    HookLayer = SaeLensFormat.LayerOf(inputHook) ?? 0,
                };
                string outFolder = parse.GetValue(output)!;
                SaeStepMetrics? last = null;
                var clock = System.Diagnostics.Stopwatch.StartNew();
                CliSupport.Status.Progress().AutoClear(false)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("training", maxValue: options.Steps);
                        var progress = new CliSupport.SyncProgress<SaeTrainingProgress>(p =>
                        {
                            last = p.Metrics;
                            task.Value = p.Metrics.Step + 1;
                            task.Description = string.Create(CultureInfo.InvariantCulture,
                                $"step {p.Metrics.Step + 1}/{p.Steps}{(p.Resumed ? " (resumed)" : "")}  loss {p.Metrics.Loss:G4}  L0 {p.Metrics.L0:F1}  EV {p.Metrics.ExplainedVariance:F3}  dead {p.Metrics.DeadFraction:P1}  {p.TokensPerSecond:F0} tok/s");
                        });
                        SaeTrainingRun.Run(trainer, data, outFolder, parse.GetValue(checkpointEvery), parse.GetValue(resume), template, progress);
                    });
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{dict.Architecture}{(dict.Activation is MatryoshkaBatchTopKActivation levels ? $" (levels {levels})" : "")} d_in {shape.DIn} → d_sae {shape.DSae}{(outHook is null ? "" : $" → d_out {shape.DOut}")}: " +
                    $"{(last is null ? "already complete" : $"last step L0 {last.L0:F1}, explained variance {last.ExplainedVariance:F3}, dead {last.DeadFraction:P1}")} " +
                    $"in {clock.Elapsed.TotalSeconds:F1} s → {outFolder}"));
                return 0;
            }
            finally
            {
                m?.Dispose();
            }
        }));
        return command;
    }
}
