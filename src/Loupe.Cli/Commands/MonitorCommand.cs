using System.CommandLine;
using System.Globalization;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Steering;
using Loupe.Steering.Monitors;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe monitor</c>: concept monitors — train one from contrastive texts, read a text or a generation with it.</summary>
static class MonitorCommand
{
    public static Command Create()
    {
        var command = new Command("monitor",
            "Concept monitors: a residual-stream direction separating texts that express a concept from texts that do not, with a threshold\n" +
            "for a chosen recall; held-out AUROC and false-positive rate reported. Saved in the persona-vector format (usable wherever\n" +
            "persona vectors are, e.g. as a live monitor of the OpenAI endpoint).\n\n" +
            "Examples:\n" +
            "  loupe monitor train --model ../shared/models/stories260K --concept sadness --positive src/Loupe.Steering/Data/sad.txt \\\n" +
            "      --negative src/Loupe.Steering/Data/happy.txt,tests/data/monitors/neutral.txt --recall 0.75 --out sadness.safetensors\n" +
            "  loupe monitor read --model ../shared/models/stories260K --monitor sadness.safetensors --prompt \"Tom lost his ball.\" --generate 24");
        command.Subcommands.Add(Train());
        command.Subcommands.Add(Read());
        return command;
    }

    static Command Train()
    {
        var model = CliSupport.ModelOption();
        var concept = new Option<string>("--concept") { Description = "What the monitor watches for (a name stored in the file)", Required = true };
        var positive = new Option<string?>("--positive") { Description = "Texts expressing the concept, one per line (comma-separate several files)" };
        var negative = new Option<string?>("--negative") { Description = "Texts that do not: its opposite and ordinary text, one per line (comma-separate several files)" };
        var describe = new Option<string?>("--describe") { Description = "Instead of text files: the concept's description; an endpoint writes the texts and a judge filters them (with --endpoint)" };
        var endpoint = new Option<string?>("--endpoint") { Description = "OpenAI-compatible base URL that writes and judges the texts (with --describe)" };
        var endpointModel = new Option<string>("--endpoint-model") { Description = "The endpoint's model name", DefaultValueFactory = _ => "gpt-4o-mini" };
        var keyEnv = new Option<string>("--api-key-env") { Description = "Environment variable holding the endpoint's API key", DefaultValueFactory = _ => "OPENAI_API_KEY" };
        var count = new Option<int>("--texts") { Description = "With --describe: texts requested per side", DefaultValueFactory = _ => 40 };
        var recall = new Option<double>("--recall") { Description = "Share of the concept's training texts the threshold must catch", DefaultValueFactory = _ => 0.9 };
        var layer = new Option<int?>("--layer") { Description = "Layer read (hook_resid_post); default: the best cross-validated held-out AUROC" };
        var heldOut = new Option<double>("--held-out") { Description = "Share of each set held out (layer choice by folds; the last fold measures recall and false positives)", DefaultValueFactory = _ => 0.25 };
        var calibration = new Option<string?>("--calibration") { Description = "Openings the model continues greedily, one per line (comma-separate several files): the threshold is raised until at most --max-fpr of these ordinary generations would be flagged" };
        var calibrationTokens = new Option<int>("--calibration-tokens") { Description = "Tokens generated per calibration opening (the length the monitor will watch)", DefaultValueFactory = _ => 24 };
        var maxFpr = new Option<double>("--max-fpr") { Description = "With --calibration: the largest false-positive rate allowed on the model's ordinary generations (empirical, and of a normal fitted to their readings)", DefaultValueFactory = _ => 0.01 };
        var output = new Option<string>("--out", "-o") { Description = "The monitor file (.safetensors)", Required = true };
        var command = new Command("train", "Train a concept monitor from contrastive texts; print held-out AUROC, recall and false-positive rate.")
        { model, concept, positive, negative, describe, endpoint, endpointModel, keyEnv, count, recall, layer, heldOut, calibration, calibrationTokens, maxFpr, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string outPath = CliSupport.OutputFile(parse.GetValue(output)!);
            List<string> pos, neg;
            var source = new Dictionary<string, string>();
            if (parse.GetValue(describe) is { } description)
            {
                if (parse.GetValue(positive) is not null || parse.GetValue(negative) is not null) throw new InputError("argument: give --describe (with --endpoint) or --positive and --negative, not both");
                string url = parse.GetValue(endpoint) ?? throw new InputError("argument: --describe needs --endpoint (an OpenAI-compatible base URL)");
                using var client = new Loupe.Explain.ChatClient(new Loupe.Explain.EndpointOptions
                {
                    Endpoint = url, Model = parse.GetValue(endpointModel)!, ApiKey = Environment.GetEnvironmentVariable(parse.GetValue(keyEnv)!), Temperature = 0.7,
                });
                var set = Loupe.Explain.ContrastiveTexts.GenerateAsync(client, client, description, CliSupport.Int(parse, count, 2, 1000)).GetAwaiter().GetResult();
                (pos, neg) = ([.. set.Positive], [.. set.Negative]);
                Console.WriteLine($"the endpoint wrote texts for \"{description}\": kept {pos.Count} concept and {neg.Count} other texts, rejected {set.Rejected.Count} the judge disagreed with");
                string stem = Path.ChangeExtension(outPath, null);
                Loupe.Reports.AtomicFile.WriteAllText(stem + ".positive.txt", string.Join('\n', pos) + "\n");
                Loupe.Reports.AtomicFile.WriteAllText(stem + ".negative.txt", string.Join('\n', neg) + "\n");
                source["description"] = description;
                if (pos.Count < 2 || neg.Count < 2) throw new InputError($"the endpoint's texts left {pos.Count} concept and {neg.Count} other texts after judging; at least two each are needed");
            }
            else
            {
                pos = ReadTexts(parse.GetValue(positive) ?? throw new InputError("argument: give --positive and --negative text files, or --describe with --endpoint"), "--positive");
                neg = ReadTexts(parse.GetValue(negative) ?? throw new InputError("argument: --negative is missing"), "--negative");
                source["positive"] = parse.GetValue(positive)!;
                source["negative"] = parse.GetValue(negative)!;
            }
            double r = CliSupport.Double(parse, recall, 1e-9, 1);
            double h = CliSupport.Double(parse, heldOut, 0, 0.99);
            double fpr = CliSupport.Double(parse, maxFpr, 0, 1);
            int calTokens = parse.GetValue(calibrationTokens);
            if (calTokens < 2) throw InputError.Expected("argument", "--calibration-tokens", "at least 2", calTokens);
            var openings = parse.GetValue(calibration) is string calFiles ? ReadTexts(calFiles, "--calibration") : null;
            if (openings is not null) source["calibration"] = parse.GetValue(calibration)!;
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            int? l = parse.GetValue(layer);
            if (l is int chosen && (chosen < 0 || chosen >= m.Config.NLayers)) throw InputError.Expected("argument", "--layer", $"0..{m.Config.NLayers - 1}", chosen);
            var monitor = CliSupport.Status.Status().Start($"Reading {pos.Count} + {neg.Count} texts",
                _ => ConceptMonitor.Train(m, parse.GetValue(concept)!, pos, neg, new ConceptMonitorOptions
                {
                    Recall = r, Layer = l, HeldOutFraction = h, CalibrationOpenings = openings, CalibrationTokens = calTokens, MaxFalsePositiveRate = fpr,
                }));
            // Held-out scores are NaN when --held-out 0 holds nothing out: shown as n/a, as persona shows them.
            Console.WriteLine("layer  held-out AUROC  held-out d");
            foreach (var s in monitor.Direction.Layers)
                Console.WriteLine($"{s.Layer,5}  {CliSupport.Num(s.HeldOutAuroc, "F3"),14}  {CliSupport.Num(s.HeldOutEffectSize, "F2"),10}{(s.Layer == monitor.Direction.Layer ? "   ← chosen" : "")}");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{monitor.Name} at {monitor.Direction.HookName}: threshold {monitor.Direction.Threshold:G4} on the mean projection (for recall {monitor.TargetRecall:P0} on the training texts)"));
            Console.WriteLine($"  training: recall {CliSupport.Num(monitor.TrainRecall, "P1")}, false positives {CliSupport.Num(monitor.TrainFalsePositiveRate, "P1")}; " +
                              $"held out: AUROC {CliSupport.Num(monitor.HeldOutAuroc, "F3")}, recall {CliSupport.Num(monitor.HeldOutRecall, "P1")}, false positives {CliSupport.Num(monitor.HeldOutFalsePositiveRate, "P1")}");
            if (monitor.CalibrationGenerations > 0)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  calibration: {monitor.CalibrationGenerations} ordinary generations, threshold {monitor.RecallThreshold:G4} for the recall, {monitor.Direction.Threshold:G4} for false positives ≤ {monitor.MaxFalsePositiveRate:P2}; flags {monitor.CalibrationFalsePositiveRate:P1} of them"));
            source["model"] = m.Source ?? "";
            monitor.Save(outPath, source);
            Console.WriteLine($"wrote {outPath}");
            return 0;
        }));
        return command;
    }

    static Command Read()
    {
        var model = CliSupport.ModelOption();
        var monitorPath = new Option<string>("--monitor") { Description = "A monitor file written by `loupe monitor train` (or hf:ORG/NAME/FILE[@REVISION] on the hub)", Required = true };
        var prompt = new Option<string>("--prompt", "-p") { Description = "The text to read (or the prompt to continue with --generate)", Required = true };
        var generate = new Option<int>("--generate") { Description = "Generate this many tokens greedily and read them live (0: read the prompt)", DefaultValueFactory = _ => 0 };
        var steer = new Option<double>("--steer") { Description = "With --generate: also generate steered along the monitor's own direction × this coefficient, for comparison", DefaultValueFactory = _ => 0 };
        var command = new Command("read", "Read a text, or a greedy generation live, with a concept monitor.") { model, monitorPath, prompt, generate, steer };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string path = CliSupport.LocalFile(parse.GetValue(monitorPath)!, "--monitor");
            if (!File.Exists(path)) throw new InputError($"argument: --monitor: file not found: {path}");
            var monitor = ConceptMonitor.Load(path);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            if (monitor.Direction.Vector.Length != m.Config.DModel)
                throw new InputError($"{path}: the monitor has {monitor.Direction.Vector.Length} dimensions; the model's d_model is {m.Config.DModel}");
            var ids = CliSupport.Encode(m, parse.GetValue(prompt)!);
            int n = CliSupport.Int(parse, generate, 0, 4096);
            string F(double x) => x.ToString("F3", CultureInfo.InvariantCulture);
            if (n == 0)
            {
                var reading = monitor.Read(m, ids);
                Console.WriteLine($"{monitor.Name}: mean projection {F(reading.Mean)} vs threshold {F(monitor.Direction.Threshold)} → {(reading.ExpressesTrait ? "FLAGGED" : "not flagged")}");
                for (int i = 0; i < ids.Length; i++) Console.WriteLine($"  {F(reading.Projections[i]),8}  {CliSupport.Show(m, ids[i])}");
                return 0;
            }
            var greedy = new GenerationOptions(MaxNewTokens: n, Temperature: 0, StopAtEos: false);
            // Bounded as introspect's --strengths are: the edit scales the direction in fp32, where 1e308 is already ∞.
            double steering = CliSupport.Double(parse, steer, -1e6, 1e6);
            foreach (double coefficient in steering != 0 ? new[] { 0, steering } : [0])
            {
                var options = new Loupe.Models.Hooks.RunOptions();
                if (coefficient != 0) { var edit = monitor.Direction.Steer((float)coefficient); options.AddHook(edit.HookName, edit.Apply); }
                var live = monitor.Watch(options);
                var generated = m.Generate([ids], greedy, options)[0];
                // The monitor reads each generated token as it is fed back: the last one never is, so one generated token leaves no reading.
                string mean = live.Projections.Count == 0 ? "n/a (no generated token was fed back to read; generate 2 or more)" : F(live.Mean);
                Console.WriteLine($"{(coefficient == 0 ? "unsteered" : $"steered × {coefficient.ToString(CultureInfo.InvariantCulture)}")}: live mean {mean} vs threshold {F(monitor.Direction.Threshold)} → {(live.Flagged ? "FLAGGED" : "not flagged")}");
                Console.WriteLine($"  {(m.Tokenizer?.Decode(generated) ?? string.Join(",", generated))}");
            }
            return 0;
        }));
        return command;
    }

    static List<string> ReadTexts(string files, string option)
    {
        var texts = new List<string>();
        foreach (var file in files.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!File.Exists(file)) throw new InputError($"argument: {option}: file not found: {file}");
            texts.AddRange(WordScore.ReadList(file));
        }
        if (texts.Count < 2) throw InputError.Expected("argument", option, "at least two texts, one a line", texts.Count);
        return texts;
    }
}
