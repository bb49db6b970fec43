using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Loupe.Dictionaries.Diffing;
using Loupe.Models;
using Loupe.Models.Loading;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe diff</c>: a base model and its fine-tune on the same tokens — where their next-token distributions differ
/// (KL by position, the most divergent positions) and the mean activation differences per hook (the Activation Difference
/// Lens: norms, the tokens each difference promotes through each model's unembedding, the vectors as steering files).
/// </summary>
static class DiffCommand
{
    public static Command Create()
    {
        var model = CrosscoderCommand.ModelListOption();
        model.Description = "LABEL=MODEL for the base model, then for the fine-tune: --model base=gpt2 --model chat=./gpt2-chat (exactly two; the second is compared against the first)";
        var hooks = new Option<string>("--hooks") { Description = "Per-position hooks whose mean differences are measured (patterns allowed)", DefaultValueFactory = _ => "blocks.*.hook_resid_post" };
        var source = CrosscoderCommand.SourceOption();
        var contextSize = CliSupport.ContextSizeOption();
        var maxContexts = new Option<int>("--max-contexts") { Description = "Compare on at most this many contexts", DefaultValueFactory = _ => 128 };
        var seed = new Option<int>("--seed") { Description = "Seed for the contexts", DefaultValueFactory = _ => 0 };
        var positions = new Option<int>("--positions") { Description = "k: the leading positions whose differences are kept one by one (the Activation Difference Lens reads the first few)", DefaultValueFactory = _ => 5 };
        var top = new Option<int>("--top") { Description = "The most divergent positions listed", DefaultValueFactory = _ => 20 };
        var batchSize = new Option<int>("--batch-size") { Description = "Contexts per forward pass", DefaultValueFactory = _ => 8 };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: diff.json and vectors/HOOK.safetensors (steering vectors: pos_J and all)", Required = true };
        var command = new Command("diff",
            "Compare a fine-tuned model with its base model on the same tokens, without a dictionary:\n" +
            "  KL(p_fine-tune ‖ p_base) of the next-token distributions at every position (mean, by position, the largest with both top tokens);\n" +
            "  per hook the mean activation difference h_fine-tune − h_base at each of the first k positions and over every position past 0\n" +
            "  (Minder et al.'s Activation Difference Lens), its norm against the base's, and the tokens it promotes through each model's\n" +
            "  final norm and unembedding. The vectors are written as steering vectors (`loupe steer --vector OUT/vectors/HOOK.safetensors:all`).\n" +
            "For dictionary-based diffing see `loupe crosscoder`.\n\n" +
            "Example:\n  loupe diff --model base=gpt2 --model chat=./gpt2-chat --source text:corpus/ --hooks blocks.6.hook_resid_post --out diff/")
        { model, hooks, source, contextSize, maxContexts, seed, positions, top, batchSize, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            var options = new ModelDiffOptions
            {
                BatchSize = parse.GetValue(batchSize), Positions = parse.GetValue(positions), TopPositions = parse.GetValue(top),
            };
            options.Validate();
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            return CrosscoderCommand.WithModels(parse, model, loaded =>
            {
                if (loaded.Count != 2) throw new InputError($"argument: --model: a diff compares two models (base, then fine-tune); got {loaded.Count}");
                var (labelA, a) = (loaded.Keys.First(), loaded.Values.First());
                var (labelB, b) = (loaded.Keys.Last(), loaded.Values.Last());
                var selected = CliSupport.SelectHooks(a, parse.GetValue(hooks)!).ToArray();
                if (selected.Length == 0) throw new InputError($"argument: --hooks: '{parse.GetValue(hooks)}' matches no hook point of model {labelA}");
                var contexts = CrosscoderCommand.Contexts(parse, a, source, contextSize, maxContexts, seed);
                Console.Error.WriteLine($"{contexts.Count} contexts × {contexts.ContextSize} tokens; {selected.Length} hooks");
                ModelDiffResult? result = null;
                CliSupport.Status.Status().Start("running both models", _ => result = ModelDiffing.Compute(a, b, contexts, selected, options));
                var r = result!;
                var tokenizer = a.Tokenizer;
                var quoted = new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
                string Tok(int id) => tokenizer is null ? $"#{id}" : JsonSerializer.Serialize(tokenizer.Decode([id]), quoted);
                Console.WriteLine($"{labelB} vs {labelA}: mean KL(p_{labelB} ‖ p_{labelA}) {r.MeanKl:G4} nats over {r.Contexts * r.ContextSize:N0} positions");
                Console.WriteLine($"  by position: {string.Join(" ", r.MeanKlByPosition.Take(8).Select(v => v.ToString("G3", CultureInfo.InvariantCulture)))}{(r.ContextSize > 8 ? " …" : "")}");
                foreach (var p in r.TopPositions.Take(5))
                    Console.WriteLine($"  KL {p.Kl,8:G4}  context {p.Context}, position {p.Position} ({Tok(p.Token)}): {labelA} → {Tok(p.TopA)}, {labelB} → {Tok(p.TopB)} (p {p.ProbAOfTopB:G3} → {p.ProbBOfTopB:G3})");
                foreach (var d in r.Differences.Where(d => d.Position < 0))
                    Console.WriteLine($"  {d.Hook,-32} ‖δ‖ {d.Norm,9:G4} ({d.Relative:P1} of ‖h_{labelA}‖)" +
                                      (d.PromotedB.Count > 0 ? $"  promotes {string.Join(" ", d.PromotedB.Take(5).Select(t => Tok(t.Token)))}" : ""));
                Directory.CreateDirectory(folder);
                var written = ModelDiffing.SaveVectors(Path.Combine(folder, "vectors"), r);
                string json = Path.Combine(folder, "diff.json");
                ModelDiffFile.Of(r, labelA, labelB, tokenizer).Write(json);
                Console.WriteLine($"wrote {json} and {written.Count} vector file(s) under {Path.Combine(folder, "vectors")}; `loupe serve --diff {folder}` shows it");
                return 0;
            });
        }));
        return command;
    }
}
