using System.CommandLine;
using System.Globalization;
using Loupe.Models.Verification;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe verify</c>: certifies that a model computes what it should on this machine (invariants, float64 path, finite differences, a Hugging Face reference file).</summary>
static class VerifyCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var reference = new Option<string?>("--reference")
        {
            Description = "Hugging Face's outputs for this model, written by tools/make_reference.py (python tools/make_reference.py --model M --out ref.safetensors); " +
                          "its input_ids become the prompts and every tensor in it is compared",
        };
        var prompts = new Option<int>("--prompts") { Description = "Random prompts checked (without --reference)", DefaultValueFactory = _ => 2 };
        var length = new Option<int>("--length") { Description = "Tokens per random prompt (default 12, or the model's n_ctx when smaller)", DefaultValueFactory = _ => 12 };
        var seed = new Option<int>("--seed") { Description = "Seed of the random prompts and gradient probes", DefaultValueFactory = _ => 0 };
        var tolerance = new Option<double>("--tolerance") { Description = "Largest max |Δ| / max |reference| that passes, against float64 and the reference file", DefaultValueFactory = _ => 1e-4 };
        var output = new Option<string?>("--out", "-o") { Description = "Folder for verify.json" };
        var command = new Command("verify",
            "Certify a model on this machine: (a) invariants of its own run (residual bookkeeping per block, attention rows sum to 1, pattern·v = z, " +
            "greedy generation with the KV cache = full-sequence argmax); (b) the fast path against a float64 reference path over the same weights; " +
            "(c) gradients against finite differences at resid_pre of the first, middle and last block; (d) with --reference, every tensor of a " +
            "Hugging Face reference file. With --device the model's run is on that device and the checks certify its numbers. " +
            "Prints a table, writes verify.json with --out; exit code 1 when a check fails.\n\n" +
            "Examples:\n  loupe verify --model ../shared/models/stories260K\n  loupe verify --model gpt2 --reference gpt2-ref.safetensors --out verify/\n" +
            "  loupe verify --model gpt2 --reference gpt2-ref.safetensors --device cuda")
        { model, reference, prompts, length, seed, tolerance, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // A file where the folder belongs is refused before the checks run, not after them.
            string? outDir = parse.GetValue(output) is { } given ? CliSupport.OutputFolder(given) : null;
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            string? refPath = parse.GetValue(reference);
            if (refPath is not null && !File.Exists(refPath)) throw new InputError($"argument: --reference: file not found: {refPath}");
            var options = new VerifyOptions
            {
                Prompts = CliSupport.Int(parse, prompts, 1, 64),
                // An explicit length past n_ctx is refused (the verifier would clamp it, and the user would not be checking what
                // they asked for); the default shrinks to a model whose n_ctx is smaller.
                Length = parse.GetResult(length) is { Implicit: false }
                    ? Check.InRange(parse.GetValue(length), 1, Math.Min(4096, m.Config.NCtx), "argument", $"--length (at most 4096 and the model's n_ctx = {m.Config.NCtx})")
                    : Math.Min(parse.GetValue(length), m.Config.NCtx),
                Seed = parse.GetValue(seed),
                Tolerance = CliSupport.Double(parse, tolerance, 0, 1),
                ReferencePath = refPath,
            };
            var report = ModelVerifier.Run(m, options, new Progress<string>(s => Console.Error.WriteLine(s)));
            // The device and backend that computed the checked numbers (on a GPU, verify certifies the GPU's run).
            Console.WriteLine($"{report.Model} ({report.Architecture}) on {report.Device} ({report.Backend}, matrix weights in {report.WeightType}), {report.Prompts.Length} prompt(s) of {report.Prompts[0].Length} tokens");
            foreach (var group in report.Checks.GroupBy(c => c.Group))
            {
                int failed = group.Count(c => !c.Passed);
                var worst = group.OrderByDescending(c => double.IsNaN(c.Error) ? double.PositiveInfinity : c.Error / Math.Max(c.Tolerance, 1e-300)).First();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {group.Key,-11} {group.Count(),3} checks, {failed} failed; worst: {worst.Name} {worst.Error:G3} ({worst.Measure}; tolerance {worst.Tolerance:G3})"));
                foreach (var c in group.Where(c => !c.Passed))
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"    FAILED {c.Name}: {c.Error:G4} > {c.Tolerance:G3} ({c.Measure})"));
            }
            Console.WriteLine(report.Passed ? "PASSED" : "FAILED");
            if (outDir is not null)
            {
                string path = Path.Combine(outDir, "verify.json");
                Loupe.Reports.AtomicFile.WriteAllText(path, report.ToJson().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
                Console.WriteLine($"wrote {path}");
            }
            return report.Passed ? 0 : 1;
        }));
        return command;
    }
}
