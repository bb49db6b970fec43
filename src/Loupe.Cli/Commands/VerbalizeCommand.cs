using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Loupe.Causal.Patchscopes;
using Loupe.Dictionaries.Sae;
using Loupe.Models;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe verbalize</c>: Patchscopes — a residual activation, an SAE feature's decoder direction or any vector, read out in words.</summary>
static class VerbalizeCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var sourcePrompt = new Option<string?>("--source-prompt") { Description = "Read the vector from this prompt's residual stream (with --source-layer and --source-position)" };
        var sourceLayer = new Option<int?>("--source-layer") { Description = "The block whose resid_pre is read (n_layers reads the final resid_post)" };
        var sourcePosition = new Option<int>("--source-position") { Description = "Position read from the source prompt (negative counts from the end)", DefaultValueFactory = _ => -1 };
        var sae = new Option<string?>("--sae") { Description = "A SAELens / Gemma Scope / Loupe SAE: verbalize a feature's decoder direction (with --feature). Or hf:ORG/NAME[/PATH][@REVISION]: that folder or file of a Hugging Face hub repository, fetched into the hub cache; or saelens:RELEASE/SAE_ID, as SAE.from_pretrained names it (SAELens's registry)" };
        var feature = new Option<int?>("--feature") { Description = "The SAE feature" };
        var vector = new Option<string?>("--vector") { Description = "A direction in a safetensors file (FILE or FILE:tensor, or hf:ORG/NAME/FILE[@REVISION][:TENSOR] on the hub), e.g. a probe, steering or persona vector" };
        var scale = new Option<double>("--scale") { Description = "A direction (--sae, --vector) is scaled to this many times the typical resid_pre norm of the target layer", DefaultValueFactory = _ => 1.0 };
        var target = new Option<string>("--target") { Description = "The target prompt; the vector replaces resid_pre at --target-position", DefaultValueFactory = _ => Patchscope.IdentityPrompt };
        var targetPosition = new Option<int>("--target-position") { Description = "Position patched in the target prompt (negative counts from the end)", DefaultValueFactory = _ => -1 };
        var layers = new Option<string?>("--layers") { Description = "Target layers, e.g. 0,2,4 or 1-3 (default: every layer)" };
        var tokens = new Option<int>("--tokens") { Description = "Tokens generated greedily after the patched prompt", DefaultValueFactory = _ => 8 };
        var output = new Option<string?>("--out", "-o") { Description = "Folder for verbalize.json" };
        var command = new Command("verbalize",
            "Patchscopes / SelfIE: place a vector in another prompt's residual stream (resid_pre of each target layer, at one position, prompt pass only) " +
            "and let the model say what it is. The vector is a source prompt's activation (--source-prompt/--source-layer), an SAE feature's decoder " +
            "direction (--sae/--feature) or a vector from a file (--vector); directions are scaled to the layer's typical norm. The default target is the " +
            "identity prompt \"" + Patchscope.IdentityPrompt + "\" patched at its last token.\n\n" +
            "Examples:\n  loupe verbalize --model M --source-prompt \"The capital of France is Paris\" --source-layer 3 --source-position -1\n" +
            "  loupe verbalize --model M --sae sae/ --feature 123 --layers 1-3 --out verbalize/")
        { model, sourcePrompt, sourceLayer, sourcePosition, sae, feature, vector, scale, target, targetPosition, layers, tokens, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // A file where the folder belongs is refused before the model loads, not after the work.
            string? outDir = parse.GetValue(output) is { } given ? CliSupport.OutputFolder(given) : null;
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            int L = m.Config.NLayers, D = m.Config.DModel;
            var targetIds = CliSupport.Encode(m, parse.GetValue(target)!, "--target");
            CliSupport.CheckTokens(m, TokenBatch.Single(targetIds), "--target");
            int patched = parse.GetValue(targetPosition);
            if (patched >= targetIds.Length || patched < -targetIds.Length)
                throw InputError.Expected("argument", "--target-position", $"a position of the {targetIds.Length}-token target prompt", patched.ToString(CultureInfo.InvariantCulture));
            int[] targetLayers = ParseLayers(parse.GetValue(layers), L);
            int sources = new[] { parse.GetValue(sourcePrompt) is not null, parse.GetValue(sae) is not null, parse.GetValue(vector) is not null }.Count(x => x);
            if (sources != 1) throw new InputError("argument: give exactly one of --source-prompt, --sae (with --feature) or --vector");
            double factor = CliSupport.Double(parse, scale, 0, 1e6);
            string described;
            float[]? raw = null, direction = null;
            if (parse.GetValue(sourcePrompt) is { } text)
            {
                int layer = parse.GetValue(sourceLayer) ?? throw new InputError("argument: --source-prompt needs --source-layer");
                if (layer < 0 || layer > L) throw InputError.Expected("argument", "--source-layer", $"0..{L}", layer.ToString(CultureInfo.InvariantCulture));
                var ids = CliSupport.Encode(m, text, "--source-prompt");
                int position = parse.GetValue(sourcePosition);
                if (position >= ids.Length || position < -ids.Length)
                    throw InputError.Expected("argument", "--source-position", $"a position of the {ids.Length}-token source prompt", position.ToString(CultureInfo.InvariantCulture));
                raw = Patchscope.Read(m, ids, layer, position);
                described = $"resid_pre.{layer} of \"{text}\" at position {position}";
            }
            else if (parse.GetValue(sae) is { } saePath)
            {
                int f = parse.GetValue(feature) ?? throw new InputError("argument: --sae needs --feature");
                var (dictionary, config) = DictionaryFile.Load(CliSupport.LocalPath(saePath, "--sae"));
                if (dictionary.Shape.DOut != D) throw new InputError($"argument: --sae: the decoder writes {dictionary.Shape.DOut} values; the model's d_model is {D}");
                if (f < 0 || f >= dictionary.Shape.DSae) throw InputError.Expected("argument", "--feature", $"0..{dictionary.Shape.DSae - 1}", f.ToString(CultureInfo.InvariantCulture));
                direction = dictionary.P.WDec.AsSpan(f * D, D).ToArray();
                described = $"decoder direction of feature {f} of {saePath} ({config.HookName})";
            }
            else
            {
                string spec = parse.GetValue(vector)!;
                var (file, tensor) = SteerCommand.SplitVectorSpec(spec);
                var steering = Loupe.Steering.SteeringVector.Load(file, tensor, hookName: HookNamesFor(0));
                if (steering.Direction.Length != D) throw new InputError($"argument: --vector: {steering.Direction.Length} values; the model's d_model is {D}");
                direction = steering.Direction.ToArray();
                described = $"vector {spec}";
            }
            var results = new List<PatchscopeReading>();
            foreach (int layer in targetLayers)
            {
                float[] v = raw ?? Scaled(direction!, factor * Patchscope.TypicalNorm(m, targetIds, layer));
                results.AddRange(Patchscope.Run(m, targetIds, patched, v, [layer], CliSupport.Int(parse, tokens, 0, 256)));
            }
            Console.WriteLine($"verbalizing {described}, in \"{parse.GetValue(target)}\" at position {parse.GetValue(targetPosition)}:");
            foreach (var r in results)
                Console.WriteLine($"  layer {r.TargetLayer,3}: {Quote(r.Text ?? string.Join(",", r.Tokens))}   next: " +
                    string.Join(", ", r.TopNext.Select(t => $"{CliSupport.Show(m, t.Token)} {t.Probability.ToString("P1", CultureInfo.InvariantCulture)}")));
            if (outDir is not null)
            {
                string path = Path.Combine(outDir, "verbalize.json");
                var json = new JsonObject
                {
                    ["model"] = m.Source,
                    ["source"] = described,
                    ["target"] = parse.GetValue(target),
                    ["target_position"] = parse.GetValue(targetPosition),
                    ["scale"] = raw is null ? factor : null,
                    ["readings"] = new JsonArray([.. results.Select(r => (JsonNode)new JsonObject
                    {
                        ["layer"] = r.TargetLayer,
                        ["tokens"] = new JsonArray([.. r.Tokens.Select(t => (JsonNode)t)]),
                        ["text"] = r.Text,
                        ["top_next"] = new JsonArray([.. r.TopNext.Select(t => (JsonNode)new JsonObject { ["token"] = t.Token, ["probability"] = t.Probability })]),
                    })]),
                };
                Loupe.Reports.AtomicFile.WriteAllText(path, json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
                Console.WriteLine($"wrote {path}");
            }
            return 0;
        }));
        return command;
    }

    static string HookNamesFor(int layer) => Loupe.Models.Hooks.HookNames.ResidPre(layer);

    static float[] Scaled(float[] direction, double norm)
    {
        double length = Math.Sqrt(direction.Sum(x => (double)x * x));
        if (length == 0) throw new InputError("argument: the direction is all zeros; there is nothing to verbalize");
        return [.. direction.Select(x => (float)(x / length * norm))];
    }

    static string Quote(string s) => "\"" + s.Replace("\n", "\\n") + "\"";

    /// <summary>"0,2,4" or "1-3" or null (every layer).</summary>
    static int[] ParseLayers(string? text, int layers)
    {
        if (string.IsNullOrWhiteSpace(text)) return [.. Enumerable.Range(0, layers)];
        var result = new List<int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var range = part.Split('-');
            if (range.Length is 1 or 2 && range.All(x => int.TryParse(x, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v >= 0 && v < layers))
            {
                int a = int.Parse(range[0], CultureInfo.InvariantCulture), b = int.Parse(range[^1], CultureInfo.InvariantCulture);
                if (a <= b) { result.AddRange(Enumerable.Range(a, b - a + 1)); continue; }
            }
            throw InputError.Expected("argument", "--layers", $"layers in 0..{layers - 1}, as 0,2,4 or 1-3", part);
        }
        return [.. result.Distinct()];
    }
}
