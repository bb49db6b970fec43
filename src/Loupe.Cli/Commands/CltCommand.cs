using System.CommandLine;
using System.Globalization;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Reports;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe clt train|eval</c>: cross-layer transcoders (features of layer ℓ read its MLP input and write every MLP
/// output from ℓ on), trained jointly on paired activations read from the model, and evaluated with every MLP replaced.
/// </summary>
static class CltCommand
{
    public static Command Create()
    {
        var command = new Command("clt",
            "Train and evaluate cross-layer transcoders (Loupe cfg.json + clt_weights.safetensors; circuit-tracer's W_enc_ℓ/W_dec_ℓ layout).\n\n" +
            "Examples:\n" +
            "  loupe clt train --model ../shared/models/stories260K --source brown:../shared/datasets/brown-corpus --d-sae 256 --out clt/\n" +
            "  loupe clt eval --model ../shared/models/stories260K --transcoders clt/ --source brown:../shared/datasets/brown-corpus --out clt-eval/");
        command.Subcommands.Add(Train());
        command.Subcommands.Add(Eval());
        return command;
    }

    static Command Train()
    {
        var model = CliSupport.ModelOption();
        var source = new Option<string>("--source") { Description = TextSourceSpec.Help, Required = true };
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int?>("--max-contexts") { Description = "Use at most this many contexts" };
        var contextsPerWindow = new Option<int>("--contexts-per-window") { Description = "Contexts run per shuffling window", DefaultValueFactory = _ => 64 };
        var inputHook = new Option<string>("--input-hook") { Description = "Hook each layer's features read; {layer} stands for the layer", DefaultValueFactory = _ => CrossLayerTranscoder.DefaultInputHook };
        var outputHook = new Option<string>("--output-hook") { Description = "Hook each target layer's reconstruction replaces", DefaultValueFactory = _ => CrossLayerTranscoder.DefaultOutputHook };
        var architecture = new Option<string>("--architecture") { Description = "standard (ReLU + tanh/L1 penalty), topk, batchtopk or jumprelu", DefaultValueFactory = _ => "standard" };
        var k = new Option<int>("--k") { Description = "Active features per token and layer for topk / batchtopk", DefaultValueFactory = _ => 32 };
        var dSae = new Option<int?>("--d-sae") { Description = "Features per layer (default: --expansion × d_model)" };
        var expansion = new Option<int>("--expansion") { Description = "Features per layer per input dimension when --d-sae is not given", DefaultValueFactory = _ => 4 };
        var penalty = new Option<string>("--penalty") { Description = "standard's sparsity penalty: tanh (λ·Σ tanh(c·a·‖W_dec‖), Anthropic) or l1", DefaultValueFactory = _ => "tanh" };
        var tanhScale = new Option<float>("--tanh-scale") { Description = "c of the tanh penalty", DefaultValueFactory = _ => 1f };
        var steps = new Option<int>("--steps") { Description = "Training steps", DefaultValueFactory = _ => 2000 };
        var batchSize = new Option<int>("--batch-size") { Description = "Tokens per step", DefaultValueFactory = _ => 1024 };
        var lr = new Option<float>("--lr") { Description = "Adam learning rate", DefaultValueFactory = _ => 1e-3f };
        var lrWarmup = new Option<int>("--lr-warmup") { Description = "Linear learning-rate warm-up steps", DefaultValueFactory = _ => 0 };
        var sparsity = new Option<float>("--sparsity") { Description = "λ: tanh / L1 coefficient (standard) or L0 coefficient (jumprelu)", DefaultValueFactory = _ => 1e-3f };
        var sparsityWarmup = new Option<int>("--sparsity-warmup") { Description = "Steps over which λ rises from 0", DefaultValueFactory = _ => 0 };
        var seed = new Option<int>("--seed") { Description = "Seed for initialisation and batch order", DefaultValueFactory = _ => 0 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Write checkpoint.safetensors every N steps", DefaultValueFactory = _ => 200 };
        var resume = new Option<bool>("--resume") { Description = "Continue the checkpoint in --out (bit-exact with an uninterrupted run)" };
        var circuitTracer = new Option<bool>("--circuit-tracer") { Description = "Also write circuit-tracer's layout under OUT/circuit-tracer" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: cfg.json + clt_weights.safetensors, checkpoint.safetensors, training_log.jsonl", Required = true };
        var command = new Command("train",
            "Train a cross-layer transcoder jointly on every layer's MLP input → every later MLP output (sum of the per-layer MSEs plus\n" +
            "the sparsity term), with checkpoints every N steps; run again with --resume to continue exactly.\n\n" +
            "Examples:\n" +
            "  loupe clt train --model ../shared/models/stories260K --source brown:../shared/datasets/brown-corpus --architecture topk --k 16 --d-sae 256 --out clt/\n" +
            "  loupe clt train ... --out clt/ --resume")
        {
            model, source, contextSize, maxContexts, contextsPerWindow, inputHook, outputHook, architecture, k, dSae, expansion, penalty, tanhScale,
            steps, batchSize, lr, lrWarmup, sparsity, sparsityWarmup, seed, checkpointEvery, resume, circuitTracer, output,
        };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            var pen = parse.GetValue(penalty) switch
            {
                "tanh" => CltPenalty.Tanh,
                "l1" => CltPenalty.L1,
                var other => throw InputError.Expected("argument", "--penalty", "tanh or l1", other),
            };
            // On a device the model's forward passes (the harvest of the layer pairs) and the trainer's steps run there;
            // each window's rows come to the host once (LayerPairRows shuffles them there), each batch goes back up.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            int seedValue = parse.GetValue(seed);
            var text = HarvestCommand.ParseSource(m, parse.GetValue(source)!, seedValue);
            var contexts = CliSupport.Status.Status().Start("tokenizing into contexts",
                _ => ContextBuilder.ForModel(m, text, CliSupport.ContextSize(parse.GetValue(contextSize), m), seedValue, CliSupport.Int(parse, maxContexts, 1)));
            int layers = m.Config.NLayers, d = m.Config.DModel;
            int features = SaeTrainingOptions.FeatureCount(parse.GetValue(dSae), parse.GetValue(expansion), d);
            if (parse.GetValue(architecture) == "matryoshka_batchtopk")
                throw InputError.Expected("argument", "--architecture", "standard, topk, batchtopk or jumprelu (matryoshka_batchtopk is for SAEs and transcoders: loupe sae train)", "matryoshka_batchtopk");
            var act = SaeTrainingOptions.ActivationFor(parse.GetValue(architecture)!, parse.GetValue(k), features);
            if (parse.GetValue(circuitTracer) && act is TopKActivation)
                throw new InputError("argument: --circuit-tracer: circuit-tracer's cross-layer transcoders know ReLU and JumpReLU only; train standard, jumprelu or batchtopk to write its layout");
            string inPattern = parse.GetValue(inputHook)!, outPattern = parse.GetValue(outputHook)!;
            foreach (var (name, p) in new[] { ("--input-hook", inPattern), ("--output-hook", outPattern) })
                if (!p.Contains("{layer}", StringComparison.Ordinal)) throw InputError.Expected("argument", name, "a hook pattern containing {layer}", p);
            // The run against memory (the GPU's free memory when it trains there) before the transcoder is allocated.
            var trainingBackend = CliSupport.DictionaryBackendFor(act);
            long? deviceFree = CliSupport.FreeDeviceMemory(trainingBackend);
            var planned = new CltShape(layers, d, features, d);
            var options = new CltTrainingOptions
            {
                Base = new SaeTrainingOptions
                {
                    Steps = parse.GetValue(steps), BatchSize = parse.GetValue(batchSize), LearningRate = parse.GetValue(lr),
                    LrWarmupSteps = parse.GetValue(lrWarmup), SparsityWarmupSteps = parse.GetValue(sparsityWarmup),
                    SparsityCoefficient = act is TopKActivation or BatchTopKActivation ? 0 : parse.GetValue(sparsity),
                    BDecInit = BDecInit.Mean, Seed = seedValue,
                },
                Penalty = pen,
                TanhScale = parse.GetValue(tanhScale),
            };
            options.Validate(planned, parse.GetValue(dSae) is not null ? dSae.Name : expansion.Name, deviceFree);
            CliSupport.SayTrainingMemory(CltTrainingOptions.EstimateTrainingBytes(planned, options.Base.BatchSize), trainingBackend, deviceFree);
            var clt = new CrossLayerTranscoder(planned, act, inPattern, outPattern, parse.GetValue(output)!);
            var data = LayerPairRows.For(m, contexts, clt, CliSupport.Int(parse, contextsPerWindow, 1));
            if (data.LayerDIn != d || data.LayerDOut != d)
                throw InputError.Expected("argument", "--input-hook / --output-hook", $"hooks of width d_model = {d}", $"{data.LayerDIn} and {data.LayerDOut}");
            clt.Initialize(seedValue); // the widths are d_model, as planned: no second transcoder to allocate
            var trainer = new CltTrainer(clt, options, trainingBackend);
            string outFolder = parse.GetValue(output)!;
            CltStepMetrics? last = null;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var provenance = new Dictionary<string, string>
            {
                ["model"] = m.Source ?? parse.GetValue(model)!,
                ["model_fingerprint"] = HarvestManifest.Fingerprint(m),
                ["context_size"] = contexts.ContextSize.ToString(CultureInfo.InvariantCulture),
            };
            CliSupport.Status.Progress().AutoClear(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("training", maxValue: options.Base.Steps);
                    var progress = new CliSupport.SyncProgress<CltStepMetrics>(p =>
                    {
                        last = p;
                        task.Value = p.Step + 1;
                        task.Description = string.Create(CultureInfo.InvariantCulture,
                            $"step {p.Step + 1}/{options.Base.Steps}  loss {p.Loss:G4}  L0 {p.L0:F1}  EV {string.Join("/", p.ExplainedVariance.Select(e => e.ToString("F2", CultureInfo.InvariantCulture)))}");
                    });
                    CltTrainingRun.Run(trainer, data, outFolder, parse.GetValue(checkpointEvery), parse.GetValue(resume), provenance, parse.GetValue(circuitTracer), progress);
                });
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{clt.Architecture} CLT, {layers} layers × {features} features: " +
                $"{(last is null ? "already complete" : $"last step L0 {last.L0:F1}, EV {string.Join("/", last.ExplainedVariance.Select(e => e.ToString("F3", CultureInfo.InvariantCulture)))}")} " +
                $"in {clock.Elapsed.TotalSeconds:F1} s → {outFolder} (fingerprint {clt.Fingerprint})"));
            return 0;
        }));
        return command;
    }

    static Command Eval()
    {
        var model = CliSupport.ModelOption();
        var transcoders = new Option<string>("--transcoders")
        {
            Description = "A CLT folder (Loupe cfg.json or circuit-tracer W_enc_ℓ/W_dec_ℓ), circuit-tracer per-layer transcoders (layer_ℓ.safetensors), or SAELens transcoder folders (layer_0, layer_1, …). Or hf:ORG/NAME[/PATH][@REVISION]: that folder or file of a Hugging Face hub repository, fetched into the hub cache",
            Required = true,
        };
        var source = new Option<string>("--source") { Description = TextSourceSpec.Help, Required = true };
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int>("--max-contexts") { Description = "Evaluate at most this many contexts", DefaultValueFactory = _ => 64 };
        var batchSize = new Option<int>("--batch-size") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 8 };
        var seed = new Option<int>("--seed") { Description = "Seed for shuffling contexts", DefaultValueFactory = _ => 0 };
        var output = new Option<string>("--out", "-o") { Description = "Output folder for eval.json (written atomically)", Required = true };
        var decoders = CliSupport.DecodersOption();
        var deviceDecoders = CliSupport.DeviceDecodersOption();
        var command = new Command("eval",
            "Replace every MLP at once by the transcoders' reconstructions and report cross-entropy clean / replaced / all MLPs\n" +
            "zero-ablated, the loss recovered (CE_zero − CE_replaced) / (CE_zero − CE_clean), and per layer the explained variance and L0.\n\n" +
            "Examples:\n" +
            "  loupe clt eval --model ../shared/models/stories260K --transcoders clt/ --source brown:../shared/datasets/brown-corpus --out clt-eval/")
        { model, transcoders, decoders, deviceDecoders, source, contextSize, maxContexts, batchSize, seed, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            string path = CliSupport.LocalPath(parse.GetValue(transcoders)!, "--transcoders");
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true); // the evaluator keeps the replacement on the device
            IMlpReplacement replacement = MlpReplacements.Load(path, m, decoders: CliSupport.DecoderStorage(parse.GetValue(decoders)), log: line => Console.Error.WriteLine(line));
            CliSupport.PlanTranscoderUpload(m, replacement, CliSupport.DeviceDecoders(parse.GetValue(deviceDecoders)));
            int seedValue = parse.GetValue(seed);
            var text = HarvestCommand.ParseSource(m, parse.GetValue(source)!, seedValue);
            var contexts = CliSupport.Status.Status().Start("tokenizing into contexts",
                _ => ContextBuilder.ForModel(m, text, CliSupport.ContextSize(parse.GetValue(contextSize), m), seedValue, CliSupport.Int(parse, maxContexts, 1)));
            var result = CliSupport.Status.Status().Start("evaluating",
                _ => ReplacementEvaluator.Evaluate(m, replacement, contexts, new ReplacementEvalOptions { BatchSize = CliSupport.Int(parse, batchSize, 1) }));
            AtomicFile.WriteJson(Path.Combine(folder, "eval.json"), new { Model = m.Source ?? "", ModelFingerprint = HarvestManifest.Fingerprint(m), Transcoders = Path.GetFullPath(path), Seed = seedValue, Metrics = result });
            string F(double v) => double.IsNaN(v) ? "n/a" : v.ToString("F4", CultureInfo.InvariantCulture);
            Console.WriteLine($"{result.Source} (fingerprint {result.Fingerprint}), {result.Layers} layers; {result.Contexts} contexts × {result.ContextSize} tokens");
            Console.WriteLine($"  CE clean {F(result.CeLossClean)}, every MLP replaced {F(result.CeLossReplaced)}, every MLP zero {F(result.CeLossZeroAblated)}: loss recovered {F(result.LossRecovered)}");
            for (int l = 0; l < result.Layers; l++)
                Console.WriteLine($"  layer {l}: explained variance {F(result.ExplainedVariance[l])}, L0 {result.L0[l].ToString("F1", CultureInfo.InvariantCulture)}");
            Console.WriteLine($"wrote {Path.Combine(folder, "eval.json")}");
            return 0;
        }));
        return command;
    }
}
