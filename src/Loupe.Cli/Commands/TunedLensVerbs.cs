using System.CommandLine;
using System.Globalization;
using Loupe.Causal.Lens;
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe lens train</c> and <c>loupe lens eval</c>: the tuned lens (Belrose et al. 2023), trained and measured.</summary>
static class TunedLensVerbs
{
    const int DefaultHeldOut = 16;

    public static Command Train()
    {
        var model = CliSupport.ModelOption();
        var source = new Option<string>("--source") { Description = "Training text: " + TextSourceSpec.Help, Required = true };
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int?>("--max-contexts") { Description = "Use at most this many contexts (held-out ones included)" };
        var heldOut = new Option<int>("--held-out") { Description = "Contexts set aside (the shuffled list's last) to measure the lens against the logit lens", DefaultValueFactory = _ => DefaultHeldOut };
        var seed = new Option<int>("--seed") { Description = "Seeds the context shuffle and generate:N sampling", DefaultValueFactory = _ => 0 };
        var steps = new Option<int>("--steps") { Description = "Training steps (tuned-lens: 250)", DefaultValueFactory = _ => 250 };
        var tokensPerStep = new Option<int>("--tokens-per-step") { Description = "Tokens per step, rounded up to whole contexts (tuned-lens: 262,144; a CPU wants far fewer)", DefaultValueFactory = _ => 1 << 18 };
        var batchContexts = new Option<int>("--batch-contexts") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 4 };
        var lrScale = new Option<double>("--lr-scale") { Description = "Scales the rate: SGD lr = scale × (1 − momentum), decayed linearly to 0", DefaultValueFactory = _ => 1.0 };
        var momentum = new Option<double>("--momentum") { Description = "Nesterov momentum", DefaultValueFactory = _ => 0.9 };
        var weightDecay = new Option<double>("--weight-decay") { Description = "Weight decay (toward the identity: translators are added residually)", DefaultValueFactory = _ => 1e-3 };
        var clipNorm = new Option<double>("--clip-norm") { Description = "Clip the gradient's global norm to this", DefaultValueFactory = _ => 1.0 };
        var noBias = new Option<bool>("--no-bias") { Description = "Translators without a bias" };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Write checkpoint.safetensors every N steps", DefaultValueFactory = _ => 25 };
        var resume = new Option<bool>("--resume") { Description = "Continue the checkpoint in --out (the same lens, bit for bit, as an uninterrupted run)" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: config.json + params.safetensors (tuned-lens's layout), checkpoint.safetensors, training.json, kl.svg", Required = true };
        var command = new Command("train",
            "Train a tuned lens: per block input resid_pre ℓ an affine translator, added residually, so that the final norm and unembedding\n" +
            "of the translated residual match the model's own next-token distribution (KL at the same position), as tuned-lens's `train`\n" +
            "does by default (SGD with Nesterov momentum, linear decay, gradient clipping, weight decay). The held-out contexts then give the\n" +
            "KL and top-1 agreement per layer for the logit lens and the tuned lens.\n\n" +
            "Examples:\n" +
            "  loupe lens train --model ../shared/models/stories260K --source brown:../shared/datasets/brown-corpus --context-size 64 --steps 100 --tokens-per-step 2048 --out tuned/\n" +
            "  loupe lens train --model gpt2 --source jsonl:pile-val.jsonl --context-size 1024 --device cuda --out gpt2-lens/\n" +
            "  loupe lens train ... --out tuned/ --resume")
        {
            model, source, contextSize, maxContexts, heldOut, seed, steps, tokensPerStep, batchContexts, lrScale, momentum, weightDecay, clipNorm, noBias,
            checkpointEvery, resume, output,
        };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            var options = new TunedLensTrainingOptions
            {
                Steps = parse.GetValue(steps), TokensPerStep = parse.GetValue(tokensPerStep), BatchContexts = parse.GetValue(batchContexts),
                LearningRateScale = parse.GetValue(lrScale), Momentum = parse.GetValue(momentum), WeightDecay = parse.GetValue(weightDecay),
                ClipNorm = parse.GetValue(clipNorm), Bias = !parse.GetValue(noBias), CheckpointEvery = parse.GetValue(checkpointEvery),
            };
            options.Validate();
            int held = Check.InRange(parse.GetValue(heldOut), 1, int.MaxValue, "argument", "--held-out");
            string outFolder = parse.GetValue(output)!;
            // The forward passes and the translators' products run where the model is (--device); a step reads back its sums.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var contexts = Contexts(m, parse, source, contextSize, maxContexts, seed);
            if (contexts.Count <= held)
                throw new InputError($"argument: --source gives {contexts.Count} contexts of {contexts.ContextSize} tokens; --held-out {held} leaves none to train on (more text, a smaller --context-size or a smaller --held-out)");
            var train = contexts.Contexts.Take(contexts.Count - held).ToArray();
            var test = contexts.Contexts.Skip(contexts.Count - held).ToArray();
            Console.WriteLine(TunedLensRun.Estimate(m, options, contexts.ContextSize));
            var provenance = Provenance(m, parse.GetValue(model)!, contexts);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            (TunedLensTrainingResult Result, TunedLensEvaluation Evaluation)? run = null;
            CliSupport.Status.Progress().AutoClear(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("training", maxValue: options.Steps);
                    run = TunedLensRun.Train(m, train, test, options, outFolder, parse.GetValue(resume), provenance, s =>
                    {
                        task.Value = s.Step + 1;
                        task.Description = string.Create(CultureInfo.InvariantCulture, $"step {s.Step + 1}/{options.Steps}  mean KL {s.Kl.Average():F3}");
                    });
                });
            var done = run!.Value;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{(done.Result.ResumedFrom == options.Steps ? "already complete" : $"{options.Steps - done.Result.ResumedFrom} steps")} on {train.Length} contexts in {clock.Elapsed.TotalSeconds:F1} s → {outFolder}"));
            PrintEvaluation(done.Evaluation, $"held out ({test.Length} contexts, {done.Evaluation.Tokens:N0} tokens)");
            Console.WriteLine($"wrote {Path.Combine(outFolder, TunedLens.ParamsFile)}, {TunedLens.ConfigFile}, {TunedLensRun.TrainingFile} and {TunedLensRun.KlChart}");
            return 0;
        }));
        return command;
    }

    public static Command Eval()
    {
        var model = CliSupport.ModelOption();
        var tuned = new Option<string>("--tuned") { Description = "The tuned lens: a folder with params.safetensors or params.pt (+ config.json), the file, or hf:[spaces/]ORG/NAME/PATH", Required = true };
        var source = new Option<string>("--source") { Description = "Text: " + TextSourceSpec.Help, Required = true };
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int?>("--max-contexts") { Description = "Use at most this many contexts" };
        var seed = new Option<int>("--seed") { Description = "Seeds the context shuffle and generate:N sampling", DefaultValueFactory = _ => 0 };
        var batchContexts = new Option<int>("--batch-contexts") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 4 };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: evaluation.json, kl.svg", Required = true };
        var command = new Command("eval",
            "Measure a tuned lens against the logit lens: per block input resid_pre ℓ, the mean KL(model ‖ lens) over every token of the\n" +
            "contexts and how often the lens ranks the model's top token first.\n\n" +
            "Examples:\n" +
            "  loupe lens eval --model ../shared/models/stories260K --tuned tuned/ --source brown:../shared/datasets/brown-corpus --max-contexts 64 --out tuned-eval/")
        { model, tuned, source, contextSize, maxContexts, seed, batchContexts, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            int batch = Check.InRange(parse.GetValue(batchContexts), 1, 1 << 20, "argument", "--batch-contexts");
            string tunedPath = CliSupport.LocalPath(parse.GetValue(tuned)!, "--tuned");
            var lens = TunedLens.Load(tunedPath);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            lens.CheckFits(m, tunedPath);
            string? warning = lens.ProcessingWarning(m);
            if (warning is not null) Console.Error.WriteLine(warning);
            var contexts = Contexts(m, parse, source, contextSize, maxContexts, seed);
            var provenance = Provenance(m, parse.GetValue(model)!, contexts);
            provenance["tuned"] = parse.GetValue(tuned);
            provenance["warning"] = warning;
            string outFolder = parse.GetValue(output)!;
            var evaluation = CliSupport.Status.Status().Start("evaluating", _ => TunedLensRun.Evaluate(m, lens, contexts.Contexts, batch, outFolder, provenance));
            PrintEvaluation(evaluation, $"{contexts.Count} contexts, {evaluation.Tokens:N0} tokens");
            Console.WriteLine($"wrote {Path.Combine(outFolder, TunedLensRun.EvaluationFile)} and {TunedLensRun.KlChart}");
            return 0;
        }));
        return command;
    }

    static HarvestContexts Contexts(HookedTransformer m, ParseResult parse, Option<string> source, Option<int?> contextSize, Option<int?> maxContexts, Option<int> seed)
    {
        int seedValue = parse.GetValue(seed);
        var text = HarvestCommand.ParseSource(m, parse.GetValue(source)!, seedValue);
        return CliSupport.Status.Status().Start("tokenizing into contexts",
            _ => ContextBuilder.ForModel(m, text, CliSupport.ContextSize(parse.GetValue(contextSize), m), seedValue, CliSupport.Int(parse, maxContexts, 1)));
    }

    static Dictionary<string, string?> Provenance(HookedTransformer m, string modelArg, HarvestContexts contexts) => new()
    {
        ["model"] = m.Source ?? modelArg,
        ["model_fingerprint"] = HarvestManifest.Fingerprint(m),
        ["weight_processing"] = m.Processing.Describe(),
        ["source"] = contexts.SourceDescription,
        ["contexts_sha256"] = contexts.Sha256(),
    };

    static void PrintEvaluation(TunedLensEvaluation evaluation, string what)
    {
        Console.WriteLine($"KL(model ‖ lens) in nats and top-1 agreement, {what}:");
        Console.WriteLine($"  {"",-14} {"logit lens",12} {"tuned lens",12} {"top-1 logit",12} {"top-1 tuned",12}");
        foreach (var l in evaluation.Layers)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {l.Label,-14} {l.LogitLensKl,12:F4} {l.TunedLensKl,12:F4} {l.LogitLensTop1,12:P1} {l.TunedLensTop1,12:P1}"));
    }
}
