using System.CommandLine;
using System.Globalization;
using Loupe.Attribution;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Generation;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe intervene</c>: set or scale transcoder features and see what the model predicts (or generates) instead.</summary>
static class InterveneCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var transcoders = new Option<string>("--transcoders", "-t") { Description = "The transcoders (as for loupe attribute, hf:… included)", Required = true };
        var input = CliSupport.InputOptions.Create("The prompt (tokenized with the model's tokenizer)");
        var edits = new Option<string>("--edit")
        {
            Description = "Feature edits, comma-separated: LAYER:POS:FEATURE=VALUE sets the activation, LAYER:POS:FEATURE*FACTOR scales it (0 ablates); POS may be * for every position",
            Required = true,
        };
        var frozen = new Option<bool>("--frozen") { Description = "Freeze attention patterns, norm scales and MLP outputs at the prompt's values (direct effects only, as in the attribution graph)" };
        var top = new Option<int>("--top") { Description = "Next tokens to show (the union of the top tokens before and after)", DefaultValueFactory = _ => 10 };
        var generate = new Option<int>("--generate") { Description = "Also generate this many tokens greedily with and without the edits (free run)", DefaultValueFactory = _ => 0 };
        var decoders = CliSupport.DecodersOption();
        var deviceDecoders = CliSupport.DeviceDecodersOption();
        var command = new Command("intervene",
            "Set or scale transcoder features at positions and compare the next-token prediction (and, with --generate, a continuation) with the unedited run.\n\n" +
            "Examples:\n" +
            "  loupe intervene --model ../shared/models/stories260K --transcoders tc/ --prompt \"Once upon a time, Lily\" --edit \"3:7:120*0\"\n" +
            "  loupe intervene --model M --transcoders clt/ --tokens \"1,2,3\" --edit \"1:*:42=5\" --generate 20")
        { model, transcoders, decoders, deviceDecoders, input.Prompt, input.Tokens, edits, frozen, top, generate };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true); // ReplacementModel keeps the edits on the device
            var tc = CliSupport.LoadTranscoders(parse, transcoders, decoders, deviceDecoders, m);
            var tokens = input.Read(parse, m);
            if (tokens.Batch != 1) throw new InputError("argument: --tokens: one prompt at a time");
            var list = ParseEdits(parse.GetValue(edits)!, tc, tokens.Length);
            var replacement = new ReplacementModel(m, tc);
            var freeze = parse.GetValue(frozen) ? replacement.Freeze(tokens.Ids) : null;
            int k = CliSupport.Int(parse, top, 1, m.Config.VocabOut);
            var before = replacement.Run(tokens.Ids, frozen: freeze, topK: k);
            var after = replacement.Run(tokens.Ids, list, freeze, topK: k);
            // Δ demeaned: the logit's change minus the mean logit's — what an attribution graph's logit edges predict.
            double meanShift = after.LastLogits.Average(v => (double)v) - before.LastLogits.Average(v => (double)v);
            Console.WriteLine($"{"token",-24} {"before",10} {"after",10} {"Δ logit",10} {"Δ demeaned",11}");
            foreach (int id in before.Top.Select(t => t.Token).Union(after.Top.Select(t => t.Token)))
            {
                string p(InterventionResult r) => r.Top.FirstOrDefault(t => t.Token == id) is var x && x.Token == id ? x.Probability.ToString("0.0000", CultureInfo.InvariantCulture) : "";
                double delta = after.LastLogits[id] - before.LastLogits[id];
                Console.WriteLine($"{CliSupport.Show(m, id),-24} {p(before),10} {p(after),10} {delta.ToString("+0.000;-0.000", CultureInfo.InvariantCulture),10} {(delta - meanShift).ToString("+0.000;-0.000", CultureInfo.InvariantCulture),11}");
            }
            int n = CliSupport.Int(parse, generate, 0, m.Config.NCtx);
            if (n > 0)
            {
                var options = new GenerationOptions(MaxNewTokens: n, StopAtEos: false);
                string Text(int[] ids) => m.Tokenizer?.Decode(ids) ?? string.Join(",", ids);
                Console.WriteLine($"unedited: {Text(m.Generate([tokens.Ids], options)[0])}");
                Console.WriteLine($"edited:   {Text(replacement.Generate(tokens.Ids, list, options))}");
            }
            return 0;
        }));
        return command;
    }

    /// <exception cref="InputError">An edit is not LAYER:POS:FEATURE=VALUE or LAYER:POS:FEATURE*FACTOR, or names a layer, position or feature that does not exist.</exception>
    internal static FeatureIntervention[] ParseEdits(string text, IMlpReplacement tc, int positions)
    {
        var result = new List<FeatureIntervention>();
        foreach (var raw in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int op = raw.IndexOfAny(['=', '*'], raw.LastIndexOf(':') + 1);
            var parts = op < 0 ? [] : raw[..op].Split(':');
            if (parts.Length != 3 || !float.TryParse(raw[(op + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out float value) || !float.IsFinite(value)
                || !int.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out int layer)
                || !int.TryParse(parts[2], NumberStyles.Integer, CultureInfo.InvariantCulture, out int feature))
                throw InputError.Expected("argument", "--edit", "LAYER:POS:FEATURE=VALUE or LAYER:POS:FEATURE*FACTOR (POS may be *)", raw);
            int pos = parts[1] == "*" ? -1 : int.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int p) ? p
                : throw InputError.Expected("argument", "--edit", "a position or *", raw);
            if ((uint)layer >= (uint)tc.Layers) throw InputError.Expected("argument", "--edit", $"a layer in 0…{tc.Layers - 1}", raw);
            if ((uint)feature >= (uint)tc.Features(layer)) throw InputError.Expected("argument", "--edit", $"a feature in 0…{tc.Features(layer) - 1} of layer {layer}", raw);
            if (pos < -1 || pos >= positions) throw InputError.Expected("argument", "--edit", $"a position in 0…{positions - 1} or *", raw);
            result.Add(new FeatureIntervention(layer, pos, feature, value, raw[op] == '=' ? InterventionKind.Set : InterventionKind.Scale));
        }
        if (result.Count == 0) throw InputError.Expected("argument", "--edit", "at least one edit", text);
        return [.. result];
    }
}
