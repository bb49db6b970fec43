using System.CommandLine;
using Loupe.Circuits.Weights;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe weights</c>: circuit analysis from the weights alone (no forward pass on text).</summary>
static class WeightsCommand
{
    public static Command Create()
    {
        var command = new Command("weights",
            "Weight-based circuit analysis (Elhage et al. 2021): composition scores between heads, positional attention.\n\n" +
            "Examples:\n" +
            "  loupe weights composition --model ../shared/models/gpt2-small-attention --out composition-out\n" +
            "  loupe weights composition --model tests/data/reference/gpt2");
        command.Subcommands.Add(Composition());
        return command;
    }

    static Command Composition()
    {
        var model = new Option<string>("--model", "-m")
        {
            Description = "A model folder or hub id, or a GPT-2-layout checkpoint (a .safetensors file or its folder) holding at least every layer's attention and ln_1",
            Required = true,
        };
        var output = new Option<string?>("--out", "-o") { Description = "Folder for composition.json and k_composition.svg" };
        var threshold = new Option<double>("--threshold") { Description = "Previous-token score (self excluded) a head needs to be listed", DefaultValueFactory = _ => 0.6 };
        var partners = new Option<int>("--partners") { Description = "K-composition partners listed per previous-token head", DefaultValueFactory = _ => 5 };
        var positions = new Option<int>("--positions") { Description = "Positions used for the positional patterns", DefaultValueFactory = _ => 128 };
        var command = new Command("composition",
            "Q-, K- and V-composition scores for every pair of heads (TransformerLens's all_composition_scores, on weights with fold_ln and " +
            "center_writing_weights), OV copying scores when the token embedding is there, previous-token heads found from learned positions alone (residual = W_pos passed through the attention " +
            "layers, token embedding and MLPs zero), and each such head's strongest K-composition partners in later layers. Works on checkpoints " +
            "that hold only attention (e.g. GPT-2 small without MLPs or token embedding).\n\n" +
            "Examples:\n" +
            "  loupe weights composition --model ../shared/models/gpt2-small-attention --out composition-out\n" +
            "  loupe weights composition --model ../shared/models/gpt2-small-attention/gpt2_partial.safetensors --threshold 0.8 --partners 3")
        { model, output, threshold, partners, positions };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string m = parse.GetValue(model)!;
            double minScore = CliSupport.Double(parse, threshold, 0, 1);
            int partnerCount = CliSupport.Int(parse, partners, 1, 10_000);
            int positionCount = CliSupport.Int(parse, positions, 2, 1 << 16);
            string? outDir = parse.GetValue(output);
            if (outDir is not null) CliSupport.OutputFolder(outDir);
            AttentionWeights weights;
            double[]? copying = null;
            if (AttentionWeights.IsModelFolder(m) || !(File.Exists(m) || Directory.Exists(m)))
            {
                using var loaded = CliSupport.LoadModel(m);
                weights = AttentionWeights.FromModel(loaded);
                copying = CliSupport.Status.Status().Start("OV copying scores", _ => OvCopying.Compute(loaded, weights));
            }
            else if (!CliSupport.Processing.IsNone)
                throw new InputError($"argument: --process: '{m}' is a partial checkpoint read without loading a model; weight processing needs a model folder Loupe can load");
            else weights = CliSupport.Status.Status().Start($"Reading {m}", _ => AttentionWeights.FromGpt2Checkpoint(m));
            var report = CliSupport.Status.Status().Start("Scoring", _ => CompositionReport.Build(weights, minScore, partnerCount, positionCount, copying));

            Console.WriteLine($"{weights.Source}: {weights.NLayers} layers × {weights.NHeads} heads, d_model {weights.DModel}, d_head {weights.DHead}; " +
                              $"composition on {string.Join(" + ", report.Scores.Processing)}");
            if (report.Positional is null)
                Console.WriteLine("no learned positions: previous-token heads not searched");
            else if (report.PreviousTokenHeads.Count == 0)
                Console.WriteLine($"no head has a positional previous-token score above {minScore} (over {report.Positional.Positions} positions)");
            else
            {
                Console.WriteLine($"Previous-token heads (positions alone, score > {minScore}) and their strongest K-composition partners:");
                foreach (var head in report.PreviousTokenHeads)
                    Console.WriteLine($"  {head.Head,-7} {head.PreviousTokenScore:F3}  → " +
                                      string.Join("  ", head.KPartners.Select(p => $"{p.Head} {p.Score:F3}")));
            }
            if (copying is null) Console.WriteLine("OV copying scores: skipped (no token embedding / unembedding in these weights)");
            else
                Console.WriteLine("Highest OV copying scores: " + string.Join("  ", Enumerable.Range(0, copying.Length).OrderByDescending(i => copying[i]).Take(5)
                    .Select(i => $"{CompositionReport.Label(i / weights.NHeads, i % weights.NHeads)} {copying[i]:F3}")));
            if (outDir is not null)
            {
                var (json, svg) = report.Write(outDir);
                Console.WriteLine($"wrote {json} and {svg}");
            }
            return 0;
        }));
        return command;
    }
}
