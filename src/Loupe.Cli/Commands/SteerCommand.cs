using System.CommandLine;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Reports;
using Loupe.Steering;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe steer</c>: generate with and without a steering vector (or a projected-out direction) at one hook.</summary>
static class SteerCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var prompt = new Option<string>("--prompt", "-p") { Description = "Text to continue", Required = true };
        var hook = new Option<string?>("--hook") { Description = "Hook point to edit, e.g. blocks.3.hook_resid_post (optional with a --vector file that records its hook)" };
        var vector = new Option<string?>("--vector") { Description = "A steering vector from a safetensors file: FILE or FILE:TENSOR (e.g. persona.safetensors:persona), or one on the hub: hf:ORG/NAME/FILE[@REVISION][:TENSOR]" };
        var contrastA = new Option<string?>("--contrast-a") { Description = "CAA: prompts of the side to steer towards, separated by '|'" };
        var contrastB = new Option<string?>("--contrast-b") { Description = "CAA: prompts of the side to steer away from, separated by '|'" };
        var reduction = new Option<string>("--reduction") { Description = "CAA: reduce each prompt by its 'last' token or the 'mean' over its non-BOS tokens", DefaultValueFactory = _ => "last" };
        var normalize = new Option<bool>("--normalize") { Description = "CAA: divide the vector by its norm, so --coeff is in residual-stream units" };
        var coeff = new Option<float?>("--coeff", "-c") { Description = "Adds coeff × vector at the hook (negative steers the other way); with --project-out, how much of the component to remove (default 1 = all)" };
        var projectOut = new Option<bool>("--project-out") { Description = "Remove the component along the vector (x − c·(x·v̂)v̂) instead of adding it" };
        var positions = new Option<string>("--positions") { Description = "Where to edit: all, new (generated tokens only) or from:N", DefaultValueFactory = _ => "all" };
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens to generate", DefaultValueFactory = _ => 48 };
        var temperature = new Option<float>("--temperature", "-t") { Description = "0 = greedy; otherwise sample at this temperature", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "Sample only among the k most likely tokens (0 = all)", DefaultValueFactory = _ => 0 };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling: smallest set with this total probability", DefaultValueFactory = _ => 1f };
        var seed = new Option<int>("--seed") { Description = "Seed of the first sample; sample i uses seed + i", DefaultValueFactory = _ => 0 };
        var samples = new Option<int>("--samples", "-k") { Description = "Continuations per side (use with --temperature > 0)", DefaultValueFactory = _ => 1 };
        var output = new Option<string?>("--out", "-o") { Description = "Folder to write steer.json into" };
        var command = new Command("steer",
            "Continue a prompt with and without an edit at one hook: add coeff × a steering vector (from a file, or contrastive\n" +
            "activation addition: mean activation of --contrast-a prompts minus that of --contrast-b), or project its direction out.\n" +
            "The edit is active on the prompt pass and on every generated token (KV-cache steps).\n\n" +
            "Examples:\n" +
            "  loupe steer --model ../shared/models/stories260K --prompt \"Once upon a time, there was a little girl named Lily. One day, she\" \\\n" +
            "      --hook blocks.2.hook_resid_post --contrast-a \"She was very happy|They laughed and smiled\" --contrast-b \"She was very sad|They cried and frowned\" \\\n" +
            "      --reduction mean --coeff 2 -t 0.9 --top-k 40 --samples 3\n" +
            "  loupe steer --model ../shared/models/stories260K --prompt \"One day, Lily\" --vector persona-happy/persona.safetensors:persona --coeff -3\n" +
            "  loupe steer --model gpt2 --prompt \"I think that\" --vector dirs.safetensors:refusal --hook blocks.6.hook_resid_pre --project-out --out steer-out")
        { model, prompt, hook, vector, contrastA, contrastB, reduction, normalize, coeff, projectOut, positions, maxNew, temperature, topK, topP, seed, samples, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // Cheap checks first, so a typo fails before the model loads.
            var where = SteeringPositions.Parse(parse.GetValue(positions)!, positions.Name);
            bool remove = parse.GetValue(projectOut);
            float? c = parse.GetValue(coeff);
            if (c is null && !remove) throw new InputError("argument: give --coeff (or --project-out)");
            float coefficient = (float)Check.Finite(c ?? 1f, float.MinValue, float.MaxValue, "argument", coeff.Name);
            int k = CliSupport.Int(parse, samples, 1);
            int firstSeed = CliSupport.Int(parse, seed, int.MinValue, int.MaxValue - (k - 1L)); // sample i uses seed + i
            int maxNewTokens = CliSupport.Int(parse, maxNew, 0);
            var (temp, topKValue, topPValue) = CliSupport.Sampling(parse, temperature, topK, topP);
            string? dir = parse.GetValue(output) is string o ? CliSupport.OutputFolder(o) : null;

            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            string text = parse.GetValue(prompt)!;
            int[] input = CliSupport.Encode(m, text);
            CliSupport.CheckTokens(m, Loupe.Models.TokenBatch.Single(input), prompt.Name);

            var (direction, hookName, source) = ReadVector(m, parse.GetValue(vector), parse.GetValue(hook), parse.GetValue(contrastA), parse.GetValue(contrastB),
                parse.GetValue(reduction)!, parse.GetValue(normalize));
            IActivationEdit edit = SteeringRun.Edit(hookName, direction, coefficient, remove, where);
            ActivationEdits.Validate(m, edit);
            float norm = SteeringRun.Norm(direction);
            string what = SteeringRun.Describe(direction, coefficient, remove, source);
            Console.WriteLine($"Steering at {hookName}: {what}, positions {where}");

            int n = SteeringRun.NewTokens(m, input, maxNewTokens);
            if (k > 1 && temp == 0f) Console.Error.WriteLine("note: greedy decoding (--temperature 0) gives the same continuation for every sample");
            var rows = new List<SteerSample>();
            for (int i = 0; i < k; i++)
            {
                int s = firstSeed + i;
                var generation = new GenerationOptions(n, temp, topKValue, topPValue, s);
                int[] plain = SteeringRun.Continue(m, input, generation, null), edited = SteeringRun.Continue(m, input, generation, edit);
                rows.Add(new SteerSample(s, Decode(m, plain), Decode(m, edited)));
                Console.WriteLine();
                Console.WriteLine($"[seed {s}] unsteered: {Decode(m, [.. input, .. plain])}");
                Console.WriteLine($"[seed {s}] steered:   {Decode(m, [.. input, .. edited])}");
            }
            if (dir is not null)
            {
                string path = Path.Combine(dir, "steer.json");
                AtomicFile.WriteJson(path, new SteerReport(m.Source ?? "", text, hookName, source, remove ? "project_out" : "add", coefficient, norm,
                    where.ToString(), n, temp, topKValue, topPValue, direction, rows));
                CliSupport.Status.WriteLine($"wrote {path}");
            }
            return 0;
        }));
        return command;
    }

    /// <summary>The direction from a file or from two contrast sets, with the hook it belongs to and a description.</summary>
    static (float[] Direction, string Hook, string Source) ReadVector(HookedTransformer m, string? vectorSpec, string? hook, string? a, string? b, string reduction, bool normalize)
    {
        bool contrast = a is not null || b is not null;
        if ((vectorSpec is null) == !contrast) throw new InputError("argument: give either --vector FILE[:TENSOR] or --contrast-a and --contrast-b");
        if (vectorSpec is not null)
        {
            var (path, tensor) = SplitVectorSpec(vectorSpec);
            var loaded = SteeringVector.Load(path, tensor, hook);
            return (loaded.Direction.ToArray(), loaded.HookName, $"vector from {vectorSpec}");
        }
        if (hook is null) throw new InputError("argument: --hook is required with --contrast-a/--contrast-b (e.g. blocks.2.hook_resid_post)");
        var setA = SplitSet(a, "--contrast-a");
        var setB = SplitSet(b, "--contrast-b");
        var r = reduction.Trim().ToLowerInvariant() switch
        {
            "last" => TokenReduction.LastToken,
            "mean" => TokenReduction.MeanOverTokens,
            _ => throw InputError.Expected("argument", "--reduction", "last or mean", reduction),
        };
        ActivationEdits.RequireHook(m, hook);
        var caa = ContrastiveActivationAddition.Compute(m, hook, setA, setB, r, normalize);
        return (caa.Vector, hook, $"CAA vector ({setA.Length} vs {setB.Length} prompts, {(r == TokenReduction.LastToken ? "last token" : "mean over tokens")}{(normalize ? ", unit norm" : "")})");
    }

    /// <summary>
    /// FILE or FILE:TENSOR (a path that exists as given wins, so drive letters and colons in names work), or
    /// <c>hf:ORG/NAME/FILE[@REVISION][:TENSOR]</c>: one safetensors file of a hub repository, fetched into the hub cache.
    /// </summary>
    internal static (string Path, string? Tensor) SplitVectorSpec(string spec, string option = "--vector")
    {
        if (spec.StartsWith("hf:", StringComparison.Ordinal))
        {
            int at = spec.IndexOf(':', 3);
            if (at == spec.Length - 1) throw InputError.Expected("argument", option, "hf:ORG/NAME/FILE[@REVISION][:TENSOR]", spec);
            return at < 0 ? (CliSupport.LocalFile(spec, option), null) : (CliSupport.LocalFile(spec[..at], option), spec[(at + 1)..]);
        }
        if (File.Exists(spec)) return (spec, null);
        int colon = spec.LastIndexOf(':');
        if (colon > 0 && File.Exists(spec[..colon])) return (spec[..colon], spec[(colon + 1)..]);
        throw new FileNotFoundException($"vector file not found: {(colon > 0 ? spec[..colon] : spec)}");
    }

    static string[] SplitSet(string? texts, string option)
    {
        var set = (texts ?? "").Split('|', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (set.Length == 0) throw new InputError($"argument: {option} is empty; give one or more prompts separated by '|'");
        return set;
    }

    static string Decode(HookedTransformer m, int[] ids) => SteeringRun.Decode(m, ids);
}
