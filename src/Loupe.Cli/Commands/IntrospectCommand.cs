using System.CommandLine;
using System.Globalization;
using Loupe.Explain;
using Loupe.Explain.Introspection;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe introspect</c>: the concept-injection experiment — does the model notice, and name, a thought injected into its residual stream?</summary>
static class IntrospectCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var words = new Option<string>("--words") { Description = "Concepts, comma-separated (each gets a vector: its \"Tell me about {word}\" activation minus the mean over the words)", DefaultValueFactory = _ => "dog,ocean,bread,music,winter,fire" };
        var layers = new Option<string>("--layers") { Description = "Injection depths as fractions of n_layers, comma-separated", DefaultValueFactory = _ => "0.33,0.5,0.67" };
        var strengths = new Option<string>("--strengths") { Description = "Multipliers of the concept vector, comma-separated", DefaultValueFactory = _ => "1,2,4,8" };
        var prompt = new Option<string?>("--prompt") { Description = "The trial prompt (default: asks whether the model detects an injected thought and what it is about)" };
        var trials = new Option<int>("--trials") { Description = "Trials per word and cell, seeds 0..N−1 (with --temperature 0 one is enough)", DefaultValueFactory = _ => 1 };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature of the answers", DefaultValueFactory = _ => 0f };
        var tokens = new Option<int>("--tokens") { Description = "Tokens per answer", DefaultValueFactory = _ => 24 };
        var judge = new Option<string?>("--judge") { Description = "An OpenAI-compatible endpoint (base URL) whose model grades the answers; default: string matching" };
        var judgeModel = new Option<string>("--judge-model") { Description = "The judge's model name", DefaultValueFactory = _ => "gpt-4o-mini" };
        var keyEnv = new Option<string>("--api-key-env") { Description = "Environment variable holding the judge's API key", DefaultValueFactory = _ => "OPENAI_API_KEY" };
        var output = new Option<string>("--out", "-o") { Description = "Folder for introspect.json, detection.svg, identification.svg", Required = true };
        var command = new Command("introspect",
            "Concept injection (Lindsey 2025): add a concept vector, times a strength, to resid_pre of a layer from the trial prompt's last token on,\n" +
            "while the model answers whether it detects an injected thought; control trials inject nothing. Detection, identification and\n" +
            "false-positive rates per layer × strength, graded by string matching or a judge endpoint. Small models are not expected to introspect.\n\n" +
            "Examples:\n  loupe introspect --model ../shared/models/stories260K --words dog,ball,tree --strengths 2,8 --out introspect/\n" +
            "  loupe introspect --model M --judge https://api.openai.com --judge-model gpt-4o-mini --trials 4 --temperature 0.7 --out introspect/")
        { model, words, layers, strengths, prompt, trials, temperature, tokens, judge, judgeModel, keyEnv, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string dir = CliSupport.OutputFolder(parse.GetValue(output)!);
            var wordList = parse.GetValue(words)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (wordList.Length < 2) throw InputError.Expected("argument", "--words", "at least two words", wordList.Length);
            if (wordList.GroupBy(w => w, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } repeated)
                throw InputError.Expected("argument", "--words", "distinct words (each names its own concept vector)", $"'{repeated.Key}' {repeated.Count()} times");
            double[] Numbers(string text, string option, double min, double max)
            {
                double[] values = [.. text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(x => double.TryParse(x, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v >= min && v <= max ? v
                        : throw InputError.Expected("argument", option, $"numbers in [{min}, {max}]", x))];
                // No layer or no strength is no cell at all: an empty table, not a result.
                return values.Length > 0 ? values : throw InputError.Expected("argument", option, $"one or more comma-separated numbers in [{min}, {max}]", text);
            }
            var options = new IntrospectionOptions
            {
                Words = wordList,
                LayerFractions = Numbers(parse.GetValue(layers)!, "--layers", 0, 1),
                Strengths = Numbers(parse.GetValue(strengths)!, "--strengths", -1e6, 1e6),
                Trials = CliSupport.Int(parse, trials, 1, 1000),
                Temperature = CliSupport.Float(parse, temperature, 0, 10),
                NewTokens = CliSupport.Int(parse, tokens, 1, 512),
            };
            if (parse.GetValue(prompt) is { } p) options = options with { TrialPrompt = p };
            // Checked before the model loads, and here because the client's own refusal names --endpoint, the option of the other verbs.
            if (parse.GetValue(judge) is { } judgeUrl && !(Uri.TryCreate(judgeUrl, UriKind.Absolute, out var judgeUri) && judgeUri.Scheme is "http" or "https"))
                throw InputError.Expected("argument", "--judge", "an http(s) URL such as https://api.openai.com/v1", judgeUrl);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            // Checked here so that the refusal names the option (the forward pass would only say the sequence is too long or empty).
            if (m.Tokenizer?.Encode(options.TrialPrompt).Length is int promptTokens && (promptTokens == 0 || promptTokens > m.Config.NCtx))
                throw InputError.Expected("argument", "--prompt", $"a trial prompt of 1 to n_ctx = {m.Config.NCtx} tokens" +
                    (parse.GetValue(prompt) is null ? " (the default prompt is longer than this model's context: give a shorter --prompt)" : ""), $"{promptTokens} tokens");
            ChatClient? client = parse.GetValue(judge) is { } url
                ? new ChatClient(new EndpointOptions { Endpoint = url, Model = parse.GetValue(judgeModel)!, ApiKey = Environment.GetEnvironmentVariable(parse.GetValue(keyEnv)!) })
                : null;
            using var _ = client;
            IIntrospectionGrader grader = client is null ? new StringMatchGrader() : new JudgeGrader(client);
            var result = ConceptInjection.RunAsync(m, options, grader, new Progress<string>(s => Console.Error.WriteLine(s))).GetAwaiter().GetResult();
            Console.WriteLine($"graded by {(client is null ? "string matching" : $"judge {parse.GetValue(judgeModel)}")}; {result.Trials.Count} trials");
            Console.WriteLine("layer  strength  detection  identification  false positives");
            foreach (var c in result.Cells)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{c.Layer,5}  {c.Strength,8:G4}  {c.Detection,9:P0}  {c.Identification,14:P0}  {c.FalsePositives,15:P0}"));
            Loupe.Reports.AtomicFile.WriteAllText(Path.Combine(dir, "introspect.json"), result.ToJson().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            var layerRows = result.Cells.Select(c => c.Layer).Distinct().ToArray();
            var strengthCols = result.Cells.Select(c => c.Strength).Distinct().ToArray();
            foreach (var (name, pick) in new (string, Func<IntrospectionCell, double>)[] { ("detection", c => c.Detection), ("identification", c => c.Identification) })
                new Loupe.Reports.Heatmap
                {
                    Title = $"Injected-thought {name} rate",
                    Values = [.. layerRows.Select(l => strengthCols.Select(s => pick(result.Cells.First(c => c.Layer == l && c.Strength == s))).ToArray())],
                    RowLabels = [.. layerRows.Select(l => $"layer {l}")],
                    ColumnLabels = [.. strengthCols.Select(s => s.ToString("G4", CultureInfo.InvariantCulture))],
                    RowAxis = "injection layer",
                    ColumnAxis = "strength",
                    Limit = 1,
                }.Save(Path.Combine(dir, $"{name}.svg"));
            Console.WriteLine($"wrote {dir}/introspect.json, detection.svg, identification.svg");
            return 0;
        }));
        return command;
    }
}
