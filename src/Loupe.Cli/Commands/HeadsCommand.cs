using System.CommandLine;
using Loupe.Circuits.Heads;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe heads</c>: previous-token, duplicate-token and induction scores for every head.</summary>
static class HeadsCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var seqLen = new Option<int?>("--seq-len") { Description = "n, the length of the random block that is repeated once (default min(50, (n_ctx − BOS) / 2))" };
        var batch = new Option<int>("--batch") { Description = "How many random sequences to average over", DefaultValueFactory = _ => 10 };
        var seed = new Option<int>("--seed") { Description = "Seed of the random blocks", DefaultValueFactory = _ => 0 };
        var measure = new Option<string>("--measure") { Description = "TransformerLens error measure for its detect_head scores: mul or abs", DefaultValueFactory = _ => "mul" };
        var output = new Option<string>("--out", "-o") { Description = "Folder for heads.json and previous_token.svg, duplicate_token.svg, induction.svg", Required = true };
        var command = new Command("heads",
            "Head detection from behaviour: run the model on random sequences of BOS (when it has one) + n distinct tokens + the " +
            "same n tokens again, and score every head. Previous token: mean attention from q to q−1 (q after the first real token). " +
            "Duplicate token: mean attention from each repeated position q to its earlier occurrence q−n. Induction: mean attention " +
            "from each repeated position q to q−n+1, the token after the earlier occurrence. heads.json also holds TransformerLens's " +
            "detect_head scores (the detection pattern against the whole pattern, every query row).\n\n" +
            "Examples:\n" +
            "  loupe heads --model ../shared/models/induction-attn-only-2l --out heads-out\n" +
            "  loupe heads --model tests/data/reference/gpt2 --seq-len 20 --batch 4 --seed 1 --measure abs --out heads-out")
        { model, seqLen, batch, seed, measure, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            var errorMeasure = parse.GetValue(measure) switch
            {
                "mul" => ErrorMeasure.Mul,
                "abs" => ErrorMeasure.Abs,
                var s => throw InputError.Expected("argument", "--measure", "mul or abs", s),
            };
            int? n = CliSupport.Int(parse, seqLen, 2);
            int rows = CliSupport.Int(parse, batch, 1, 100_000);
            string outDir = parse.GetValue(output)!;
            CliSupport.OutputFolder(outDir);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            // Checked before the run so the refusal names the option rather than the library's "repeat length n".
            int prefix = m.Config.BosTokenId is int b && b >= 0 && b < m.Config.DVocab ? 1 : 0;
            if (n is int given && prefix + 2L * given > m.Config.NCtx)
                throw InputError.Expected("argument", "--seq-len",
                    $"at most {(m.Config.NCtx - prefix) / 2} ({(prefix == 1 ? "BOS + " : "")}2 × n tokens must fit the model's context, n_ctx = {m.Config.NCtx})", given);
            var settings = new HeadDetectionSettings { RepeatLength = n, Batch = rows, Seed = parse.GetValue(seed), Measure = errorMeasure };
            var result = CliSupport.Status.Status().Start("Scoring heads", _ => HeadDetector.Detect(m, settings));

            Console.WriteLine($"{result.Tokens.Rows.Length} sequences of {result.Tokens.Length} tokens ({(result.Tokens.HasBos ? "BOS + " : "")}2 × {result.Tokens.RepeatLength}), seed {settings.Seed}, {result.Passes} forward pass(es)");
            foreach (var s in result.Scores)
            {
                string name = HeadReports.Name(s.Kind).Replace('_', ' ');
                Console.WriteLine();
                Console.Write(HeadReports.Table($"{name} score — {s.QueryPositions}", s.Score));
                Console.WriteLine("  top: " + string.Join(", ", result.Top(s.Kind, Math.Min(3, result.NLayers * result.NHeads)).Select(t => $"L{t.Layer}H{t.Head} {CliSupport.Num(t.Score, "F3")}")));
            }
            var files = HeadReports.Write(result, outDir, m.Source, m.Processing.Describe());
            Console.WriteLine();
            Console.WriteLine($"wrote {string.Join(", ", files)} (TransformerLens detect_head scores, error measure {parse.GetValue(measure)}, are in heads.json)");
            return 0;
        }));
        return command;
    }
}
