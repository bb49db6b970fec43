using System.CommandLine;
using System.Globalization;
using Loupe.Models;
using Loupe.Reports;
using Loupe.Steering;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe persona</c>: extract a persona vector from two contrastive text sets, choose its layer,
/// monitor a prompt with it, and sweep the steering coefficient over seeded samples.
/// </summary>
static class PersonaCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var positive = new Option<string>("--positive") { Description = "Texts expressing the trait, one per line", Required = true };
        var negative = new Option<string>("--negative") { Description = "Texts expressing the opposite, one per line", Required = true };
        var layer = new Option<string>("--layer") { Description = "Layer whose residual stream (hook_resid_post) gives the vector, or 'auto' (best cross-validated separation)", DefaultValueFactory = _ => "auto" };
        var heldOut = new Option<double>("--held-out") { Description = "Share of each set held out: folds for the layer choice; the last fold measures the vector's accuracy", DefaultValueFactory = _ => 0.25 };
        var prompt = new Option<string>("--prompt", "-p") { Description = "Prompt to monitor and to continue in the sweep", Required = true };
        var coeffs = new Option<string>("--coeffs") { Description = "Comma-separated steering coefficients: coeff × the raw persona vector (mean difference) is added", DefaultValueFactory = _ => "-4,-2,-1,0,1,2,4" };
        var seeds = new Option<int>("--seeds") { Description = "Samples per coefficient (seeds 0..N-1, the same at every coefficient)", DefaultValueFactory = _ => 8 };
        var scoreWords = new Option<string?>("--score-words") { Description = "TRAIT.txt,OPPOSITE.txt word lists: score = trait words − opposite words in each continuation (default: the continuation's mean projection on the persona)" };
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens per sample", DefaultValueFactory = _ => 60 };
        var temperature = new Option<float>("--temperature", "-t") { Description = "Sampling temperature", DefaultValueFactory = _ => 0.9f };
        var topK = new Option<int>("--top-k") { Description = "Sample among the k most likely tokens (0 = all)", DefaultValueFactory = _ => 40 };
        var positions = new Option<string>("--positions") { Description = "Where to steer: all, new (generated tokens only) or from:N", DefaultValueFactory = _ => "all" };
        var output = new Option<string>("--out", "-o") { Description = "Folder for persona.safetensors, persona.json, separation.svg, monitor.json, sweep.json, sweep.svg", Required = true };
        var command = new Command("persona",
            "Persona vectors (Chen et al. 2025): the difference of mean residual activations between texts that express a trait and texts\n" +
            "that express its opposite. Picks the layer that best separates held-out texts, calibrates a monitoring threshold, projects\n" +
            "the prompt's tokens onto the direction, and sweeps the steering coefficient (coeff × vector added at every position and step).\n\n" +
            "Examples:\n" +
            "  loupe persona --model ../shared/models/stories260K --positive src/Loupe.Steering/Data/happy.txt --negative src/Loupe.Steering/Data/sad.txt \\\n" +
            "      --prompt \"Once upon a time, there was a little girl named Lily. One day, she\" --coeffs \"-8,-4,-2,0,2,4,8\" --seeds 32 \\\n" +
            "      --score-words src/Loupe.Steering/Data/happy-words.txt,src/Loupe.Steering/Data/sad-words.txt --out persona-happy\n" +
            "  loupe persona --model ../shared/models/stories260K --positive happy.txt --negative sad.txt --layer 3 --prompt \"Once upon a time\" --out persona-l3")
        { model, positive, negative, layer, heldOut, prompt, coeffs, seeds, scoreWords, maxNew, temperature, topK, positions, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // Cheap checks first, so a typo fails before the model loads.
            string dir = CliSupport.OutputFolder(parse.GetValue(output)!);
            var coefficients = ParseCoefficients(parse.GetValue(coeffs)!);
            int? fixedLayer = ParseLayer(parse.GetValue(layer)!);
            var where = SteeringPositions.Parse(parse.GetValue(positions)!, positions.Name);
            double heldOutFraction = CliSupport.Double(parse, heldOut, 0, 1);
            if (heldOutFraction >= 1) throw InputError.Expected("argument", heldOut.Name, "a number in [0, 1)", heldOutFraction);
            int seedCount = CliSupport.Int(parse, seeds, 1);
            int maxNewTokens = CliSupport.Int(parse, maxNew, 0);
            var (temp, topKValue, _) = CliSupport.Sampling(parse, temperature, topK, null);
            string positivePath = parse.GetValue(positive)!, negativePath = parse.GetValue(negative)!;
            var traitTexts = WordScore.ReadList(positivePath);
            var oppositeTexts = WordScore.ReadList(negativePath);
            if (traitTexts.Count < 2) throw InputError.Expected(positivePath, "--positive texts", "at least two texts, one a line", traitTexts.Count);
            if (oppositeTexts.Count < 2) throw InputError.Expected(negativePath, "--negative texts", "at least two texts, one a line", oppositeTexts.Count);
            var words = parse.GetValue(scoreWords) is string spec ? ParseWordLists(spec) : null;

            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            if (fixedLayer is int l) Check.InRange(l, 0, m.Config.NLayers - 1, "argument", layer.Name);
            string text = parse.GetValue(prompt)!;
            int[] input = CliSupport.Encode(m, text);
            CliSupport.CheckTokens(m, Loupe.Models.TokenBatch.Single(input), prompt.Name);

            // 1. Extract and choose the layer.
            var persona = CliSupport.Status.Status().Start($"Reading {traitTexts.Count} + {oppositeTexts.Count} texts at {m.Config.NLayers} layers",
                _ => PersonaVectors.Extract(m, traitTexts, oppositeTexts, new PersonaOptions { Layer = fixedLayer, HeldOutFraction = heldOutFraction }));
            OutputFiles.EnsureFolder(dir);
            PrintSeparation(persona, fixedLayer is null);
            persona.Save(Path.Combine(dir, "persona.safetensors"), new Dictionary<string, string>
            {
                ["model"] = m.Source ?? "",
                ["positive"] = positivePath,
                ["negative"] = negativePath,
            });
            new LineChart
            {
                Title = $"Persona separation per layer (chosen: {persona.Layer})",
                X = persona.Layers.Select(s => (double)s.Layer).ToArray(),
                Series =
                [
                    ("held-out gap / pooled sd (cross-validated)", persona.Layers.Select(s => s.HeldOutEffectSize).ToArray()),
                    ("training gap / pooled sd", persona.Layers.Select(s => s.TrainEffectSize).ToArray()),
                ],
                XAxis = "layer (hook_resid_post)",
                YAxis = "projection gap / pooled sd",
            }.Save(Path.Combine(dir, "separation.svg"));
            AtomicFile.WriteJson(Path.Combine(dir, "persona.json"), PersonaReport.Summary(persona, m.Source, fixedLayer is null));

            // 2. Monitor the prompt.
            var reading = persona.Monitor(m, input);
            Console.WriteLine();
            Console.WriteLine($"Monitor: \"{text}\" mean projection {CliSupport.Num(reading.Mean, "F3")} vs threshold {CliSupport.Num(reading.Threshold, "F3")} → {(reading.ExpressesTrait ? "expresses the trait" : "does not express the trait")}");
            AtomicFile.WriteJson(Path.Combine(dir, "monitor.json"), PersonaReport.Monitor(m, persona, text, reading));

            // 3. Sweep the coefficient.
            var options = new SweepOptions(Math.Min(maxNewTokens, m.Config.NCtx - input.Length), temp, topKValue, 1f, seedCount);
            Func<int[], string, double> score = words is not null
                ? (_, t) => words.Score(t)
                : (ids, _) => PersonaReport.TraitProjection(m, persona, input, ids);
            IReadOnlyList<SweepPoint> points = [];
            CliSupport.Status.Progress().AutoClear(true).Start(ctx =>
            {
                var task = ctx.AddTask("Sampling", maxValue: coefficients.Length * options.Seeds);
                points = CoefficientSweep.Run(m, input, coefficients, c => persona.Steer(c, where), score, options,
                    new SyncProgress(done => task.Value = done));
            });
            var rows = points.Select(p => PersonaSweepRow.From(p, words, m, persona, input)).ToArray();
            PrintSweep(rows, words is not null, options);
            double trend = CoefficientSweep.Trend(points);
            Console.WriteLine($"Trend (Spearman of mean score vs coefficient): {(double.IsFinite(trend) ? CliSupport.Num(trend, "F2") : "n/a (needs two or more coefficients whose mean scores differ)")}");
            AtomicFile.WriteJson(Path.Combine(dir, "sweep.json"), PersonaReport.Sweep(persona, text, where, words is not null, options, trend, rows, CliSupport.Num(persona.Norm, "G4")));
            var x = rows.Select(r => (double)r.Coefficient).ToArray();
            new LineChart
            {
                Title = $"Steering along the persona at {persona.HookName}",
                X = x,
                Series =
                [
                    ("mean score", rows.Select(r => r.Mean).ToArray()),
                    ("mean + sd", rows.Select(r => r.Mean + r.Sd).ToArray()),
                    ("mean − sd", rows.Select(r => r.Mean - r.Sd).ToArray()),
                ],
                XAxis = "coefficient (× persona vector)",
                YAxis = words is not null ? "trait words − opposite words" : "projection on persona",
            }.Save(Path.Combine(dir, "sweep.svg"));
            CliSupport.Status.WriteLine($"wrote 6 files to {dir}");
            return 0;
        }));
        return command;
    }

    static void PrintSeparation(PersonaVector persona, bool auto)
    {
        Console.WriteLine("layer  ‖v‖      train d  held-out d  held-out AUROC  held-out acc   (d = projection gap / pooled sd; held-out = cross-validated)");
        foreach (var s in persona.Layers)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{s.Layer,5}  {CliSupport.Num(s.Norm, "F3"),7}  {CliSupport.Num(s.TrainEffectSize, "F2"),7}  {CliSupport.Num(s.HeldOutEffectSize, "F2"),10}  {CliSupport.Num(s.HeldOutAuroc, "F3"),14}  {CliSupport.Num(s.HeldOutAccuracy, "P1"),12}{(s.Layer == persona.Layer ? "  ←" : "")}"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Persona: {persona.HookName} ({(auto ? "chosen" : "given")}), ‖v‖ = {CliSupport.Num(persona.Norm, "F3")}, threshold {CliSupport.Num(persona.Threshold, "F3")} (midpoint {CliSupport.Num(persona.MidpointThreshold, "F3")}); " +
            $"train accuracy {CliSupport.Num(persona.TrainAccuracy, "P1")}, held-out accuracy {CliSupport.Num(persona.HeldOutAccuracy, "P1")} ({persona.HeldOutPositive.Length} + {persona.HeldOutNegative.Length} texts), held-out AUROC {CliSupport.Num(persona.HeldOutAuroc, "F3")}"));
    }

    static void PrintSweep(IReadOnlyList<PersonaSweepRow> rows, bool words, SweepOptions options)
    {
        Console.WriteLine();
        Console.WriteLine($"Coefficient sweep: {options.Seeds} seeds × {options.MaxNewTokens} tokens, temperature {options.Temperature}, top-k {options.TopK}");
        Console.WriteLine(words
            ? " coeff    score mean ± sd   trait words  opposite words  projection  log-prob/token  sample (seed 0)"
            : " coeff    score mean ± sd   log-prob/token  sample (seed 0)");
        foreach (var r in rows)
        {
            string sample = r.Samples[0].Text.ReplaceLineEndings(" ");
            if (sample.Length > 90) sample = sample[..90] + "…";
            Console.WriteLine(words
                ? string.Create(CultureInfo.InvariantCulture, $"{CliSupport.Num(r.Coefficient, "G4"),6}  {CliSupport.Num(r.Mean, "F2"),8} ± {CliSupport.Num(r.Sd, "F2"),-5}  {CliSupport.Num(r.TraitWords, "F2"),11}  {CliSupport.Num(r.OppositeWords, "F2"),14}  {CliSupport.Num(r.Projection, "F3"),10}  {CliSupport.Num(r.LogProb, "F2"),14}  {sample}")
                : string.Create(CultureInfo.InvariantCulture, $"{CliSupport.Num(r.Coefficient, "G4"),6}  {CliSupport.Num(r.Mean, "F3"),8} ± {CliSupport.Num(r.Sd, "F3"),-5}  {CliSupport.Num(r.LogProb, "F2"),14}  {sample}"));
        }
    }

    internal static float[] ParseCoefficients(string text)
    {
        var values = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(v => float.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out float c) && float.IsFinite(c) ? c
                : throw InputError.Expected("argument", "--coeffs", "finite numbers, e.g. \"-4,-2,0,2,4\"", v))
            .ToArray();
        if (values.Length == 0) throw InputError.Expected("argument", "--coeffs", "one or more numbers, e.g. \"-4,-2,0,2,4\"", text);
        return values;
    }

    static int? ParseLayer(string text) =>
        text.Trim().Equals("auto", StringComparison.OrdinalIgnoreCase) ? null
        : int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int l) && l >= 0 ? l
        : throw InputError.Expected("argument", "--layer", "a layer index (0, 1, …) or 'auto'", text);

    static WordScore ParseWordLists(string spec)
    {
        var parts = spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length != 2) throw InputError.Expected("argument", "--score-words", "TRAIT.txt,OPPOSITE.txt", spec);
        return WordScore.FromFiles(parts[0], parts[1]);
    }

    /// <summary>Reports on the caller's thread so the bar moves in order.</summary>
    sealed class SyncProgress(Action<int> report) : IProgress<int>
    {
        public void Report(int value) => report(value);
    }
}
