using System.CommandLine;
using System.Text;
using System.Text.Json;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Mutators;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// The <c>loupe</c> CLI in-process (<c>global::Loupe.Cli.Program.Run</c>, as <c>Main</c> calls it): working command lines for every verb
/// with one option's value replaced by an abused one (NaN, −1, 0, 2^31−1, huge, empty, unicode, a folder where a
/// file belongs), options dropped, repeated or unknown. Acceptable: exit 0 with no NaN in the output, exit 2 (a
/// one-line refusal), or a parse error. An exception escaping, exit 1 or a NaN printed with exit 0 is a failure.
/// The input file is a JSON array of arguments; {fixtures} and {case} stand for the fixture and case folders.
/// </summary>
public sealed class CliTarget : FuzzTarget
{
    public override string Name => "cli";
    public override int DefaultIterations => 1000;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(20);

    string _fixtures = "";

    /// <summary>Options whose huge values are legitimately long jobs (not a validation gap): those keep their small range.</summary>
    static readonly HashSet<string> s_workOptions = ["--steps", "--max-contexts", "--max-sentences", "--max-iterations", "--samples", "--seeds", "--dead-window",
        "--lr-warmup", "--sparsity-warmup", "--max-new-tokens", "--n", "--checkpoint-every", "--tokens-per-step"];

    static readonly string[] s_ints = ["0", "-1", "1", "2147483647", "2147483648", "-2147483648", "99999999999999", "NaN", "", "1e3", "٣", "0x10", " 7"];
    static readonly string[] s_floats = ["NaN", "-NaN", "Infinity", "-Infinity", "1e308", "-1", "0", "-0", "1e-45", "3.4e39", "", "nan", "1e-30"];
    static readonly string[] s_strings = ["", " ", "ü☃𝄞", "NaN", "-1", "0", "1,2,3;4", ";;", ",", "-", "{case}/missing/x", "{case}/a-folder", "{case}/link-to-folder",
        "{case}/../../escape", "blocks.99.hook_resid_post", "blocks.*.attn.hook_pattern", "2147483647", "1,-5,3", "1,2147483647", "999999", "1,1", "x,x"];
    /// <summary>Options that name a fixture: they also get another fixture (a CLT where SAELens transcoders were, the GPT-2 fixture's graph for the llama's stores).</summary>
    static readonly HashSet<string> s_fixtureOptions = ["--transcoders", "--sae", "--monitor", "--vector", "--stores", "--graph", "--activations", "--db", "--positive", "--negative", "--dataset", "--tuned"];
    static readonly string[] s_fixtureSwaps = ["{fixtures}/model", "{fixtures}/gpt2", "{fixtures}/sae", "{fixtures}/sae/cfg.json", "{fixtures}/clt", "{fixtures}/transcoders",
        "{fixtures}/transcoders/layer_1", "{fixtures}/features.db", "{fixtures}/tc-stores", "{fixtures}/monitor.safetensors", "{fixtures}/graph/graph.json",
        "{fixtures}/graph/graph.safetensors", "{fixtures}/acts", "{fixtures}/text.txt", "brown:{fixtures}/text.txt", "brown:{fixtures}/brown", "{fixtures}/tuned", "{fixtures}/tuned/params.safetensors"];
    /// <summary>--process values: each processing alone (some are not exact for the llama fixture's RMSNorm or rotary attention), repeated, all.</summary>
    static readonly string[] s_processing = ["tl", "fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices", "tl,tl",
        "fold_ln,center_writing_weights,center_unembed,fold_value_biases,refactor_factored_attn_matrices"];
    static readonly string[] s_big = ["2147483647", "2147483648", "99999999999999", "1e308", "3.4e39", "999999"];

    static readonly string[][] s_base =
    [
        ["info", "--model", "{fixtures}/model"],
        ["tokenize", "--model", "{fixtures}/model", "--text", "Hello world"],
        ["run", "--model", "{fixtures}/model", "--prompt", "Hello the world", "-n", "2", "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9", "--seed", "1", "--top", "3"],
        ["run", "--model", "{fixtures}/model", "--tokens", "1,2,3", "-n", "1"],
        ["cache", "--model", "{fixtures}/model", "--tokens", "1,2,3", "--hooks", "blocks.0.hook_resid_post", "--out", "{case}/cache.safetensors"],
        ["grad", "--model", "{fixtures}/model", "--tokens", "1,2,3", "--metric", "logit_diff:5,6", "--hooks", "blocks.0.hook_resid_pre", "--out", "{case}/grad.safetensors"],
        ["lens", "--model", "{fixtures}/model", "--tokens", "1,2,3,4", "--answer-id", "5", "--wrong-id", "6", "--position", "-1", "--out", "{case}/lens"],
        ["patch", "--model", "{fixtures}/model", "--clean-tokens", "1,2,3", "--corrupt-tokens", "1,4,3", "--answer-id", "5", "--wrong-id", "6", "--out", "{case}/patch"],
        ["steer", "--model", "{fixtures}/model", "--prompt", "Hello", "--hook", "blocks.1.hook_resid_post", "--contrast-a", "happy", "--contrast-b", "sad", "--coeff", "2", "--max-new-tokens", "2"],
        ["harvest", "--model", "{fixtures}/model", "--source", "text:{fixtures}/text.txt", "--hooks", "blocks.1.hook_resid_post", "--context-size", "8", "--max-contexts", "6", "--batch-size", "3", "--shard-tokens", "14", "--out", "{case}/acts"],
        ["sae", "train", "--activations", "{fixtures}/acts", "--hook", "blocks.1.hook_resid_post", "--architecture", "topk", "--k", "4", "--d-sae", "32", "--steps", "4", "--batch-size", "8", "--lr", "0.001", "--out", "{case}/sae"],
        ["sae", "eval", "--model", "{fixtures}/model", "--sae", "{fixtures}/sae", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "4", "--batch-size", "2", "--out", "{case}/eval"],
        ["sae", "eval", "--model", "{fixtures}/model", "--sae", "{fixtures}/sae", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "2", "--levels", "2,5", "--level-losses", "--out", "{case}/eval-levels"],
        ["features", "build", "--model", "{fixtures}/model", "--sae", "{fixtures}/sae", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "6", "--top", "3", "--quantiles", "2", "--bins", "4", "--window", "2", "--out", "{case}/features.db"],
        ["features", "top", "--db", "{fixtures}/features.db", "-f", "3", "--n", "3"],
        ["features", "list", "--db", "{fixtures}/features.db", "--n", "5", "--sort", "max_act", "--json"],
        ["persona", "--model", "{fixtures}/model", "--positive", "{fixtures}/happy.txt", "--negative", "{fixtures}/sad.txt", "--layer", "1", "--prompt", "Hello", "--coeffs", "0,2", "--seeds", "1", "--max-new-tokens", "2", "--out", "{case}/persona"],
        // Appended, never inserted: a seed's id holds its index, and the reproducers in Regressions/ name seeds by id.
        ["patch", "--model", "{fixtures}/model", "--clean-tokens", "1,2,3,4", "--corrupt-tokens", "1,5,3,4", "--answer-id", "5", "--wrong-id", "6", "--target", "head_out", "--method", "both", "--max-rows", "8", "--out", "{case}/patch"],
        ["patch", "--model", "{fixtures}/model", "--clean", "Hello the world", "--corrupt", "Hello world the", "--answer-id", "5", "--wrong-id", "6", "--target", "head_pattern", "--method", "attribution", "--noising", "--position", "-2", "--out", "{case}/patch"],
        ["attribute", "--model", "{fixtures}/gpt2", "--transcoders", "{fixtures}/transcoders", "--tokens", "0,360,480,161,89,311,293,431", "--max-logits", "5", "--logit-prob", "0.9", "--max-feature-nodes", "24", "--batch-size", "32", "--node-threshold", "0.8", "--edge-threshold", "0.98", "--per-head", "--slug", "fuzz", "--out", "{case}/graph"],
        ["attribute", "--model", "{fixtures}/model", "--transcoders", "{fixtures}/clt", "--prompt", "Hello the world", "--max-logits", "4", "--max-memory", "64MB", "--out", "{case}/graph"],
        ["intervene", "--model", "{fixtures}/gpt2", "--transcoders", "{fixtures}/transcoders", "--tokens", "0,360,480,161,89,311,293,431", "--edit", "2:7:3*0,1:*:5=2", "--top", "3", "--generate", "2"],
        ["intervene", "--model", "{fixtures}/model", "--transcoders", "{fixtures}/clt", "--prompt", "Hello the world", "--edit", "0:*:1*0,2:-1:3=1.5", "--frozen", "--top", "3"],
        ["probe", "--model", "{fixtures}/model", "--dataset", "brown:{fixtures}/brown", "--categories", "news,fiction", "--max-sentences", "24", "--hooks", "blocks.1.hook_resid_post", "--probe", "both", "--seed", "1", "--held-out", "0.25", "--l2", "0.01", "--max-iterations", "20", "--out", "{case}/probe"],
        ["circuit", "--model", "{fixtures}/gpt2", "--clean", "1,2,3,4,5,6;7,8,9,10,11,12", "--corrupt", "1,2,3,4,5,9;7,8,9,10,11,3", "--answer", "17", "--wrong", "42", "--method", "eap", "--select", "top", "--top", "10", "--out", "{case}/circuit"],
        ["circuit", "--model", "{fixtures}/gpt2", "--clean", "1,2,3,4,5,6", "--corrupt", "1,2,3,4,5,9", "--answer", "17", "--wrong", "42", "--method", "acdc", "--threshold", "0.005", "--out", "{case}/circuit"],
        ["circuit", "--model", "{fixtures}/gpt2", "--clean", "1,2,3,4,5,6", "--corrupt", "1,2,3,4,5,9", "--answer", "17", "--wrong", "42", "--method", "eap-ig", "--steps", "2", "--select", "greedy", "--top", "15", "--prune", "--faithfulness", "--out", "{case}/circuit"],
        ["clt", "train", "--model", "{fixtures}/model", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "6", "--contexts-per-window", "3", "--architecture", "standard", "--penalty", "tanh", "--tanh-scale", "2", "--d-sae", "16", "--steps", "3", "--batch-size", "16", "--lr", "0.001", "--sparsity", "0.001", "--checkpoint-every", "2", "--out", "{case}/clt"],
        ["clt", "eval", "--model", "{fixtures}/model", "--transcoders", "{fixtures}/clt", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "4", "--batch-size", "2", "--seed", "1", "--out", "{case}/clt-eval"],
        ["fourier", "--model", "{fixtures}/model", "--p", "7", "--equals", "7", "--out", "{case}/fourier"],
        ["heads", "--model", "{fixtures}/model", "--seq-len", "8", "--batch", "3", "--seed", "1", "--measure", "abs", "--out", "{case}/heads"],
        ["introspect", "--model", "{fixtures}/model", "--words", "dog,ball", "--layers", "0.4,0.8", "--strengths", "2", "--prompt", "Do you notice a thought?", "--trials", "1", "--tokens", "3", "--out", "{case}/introspect"],
        ["monitor", "train", "--model", "{fixtures}/model", "--concept", "joy", "--positive", "{fixtures}/happy.txt", "--negative", "{fixtures}/sad.txt", "--recall", "0.8", "--held-out", "0.25", "--out", "{case}/monitor.safetensors"],
        ["monitor", "read", "--model", "{fixtures}/model", "--monitor", "{fixtures}/monitor.safetensors", "--prompt", "Hello the world", "--generate", "2", "--steer", "2"],
        ["toy", "--steps", "100", "--seed", "1", "--out", "{case}/toy"],
        ["verbalize", "--model", "{fixtures}/model", "--source-prompt", "The cat sat", "--source-layer", "1", "--source-position", "-1", "--layers", "0-1", "--tokens", "2", "--out", "{case}/verbalize"],
        ["verbalize", "--model", "{fixtures}/model", "--sae", "{fixtures}/sae", "--feature", "3", "--scale", "2", "--target", "cat -> cat; ?", "--target-position", "-1", "--layers", "1", "--tokens", "2"],
        ["verbalize", "--model", "{fixtures}/model", "--vector", "{fixtures}/monitor.safetensors", "--layers", "0,2", "--tokens", "2"],
        ["weights", "composition", "--model", "{fixtures}/gpt2", "--threshold", "0.5", "--partners", "2", "--positions", "16", "--out", "{case}/weights"],
        ["weights", "full", "--model", "{fixtures}/gpt2", "--tokens", "64", "--out", "{case}/weights"],
        ["weights", "full", "--model", "{fixtures}/model", "--layer", "1", "--head", "2", "--token", "5", "--no-fold"],
        ["verify", "--model", "{fixtures}/model", "--prompts", "1", "--length", "4", "--seed", "1", "--tolerance", "0.0001", "--out", "{case}/verify"],
        ["features", "neuronpedia", "--stores", ",{fixtures}/features.db", "--scan", "fuzz-scan", "--flavor", "d797c82", "--out", "{case}/np"],
        ["features", "neuronpedia", "--graph", "{fixtures}/graph/graph.json", "--stores", "{fixtures}/tc-stores", "--out", "{case}/np"],
        ["sae", "train", "--model", "{fixtures}/model", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "4", "--contexts-per-window", "2", "--hook", "blocks.0.ln2.hook_normalized", "--target-hook", "blocks.0.hook_mlp_out", "--skip", "--architecture", "jumprelu", "--d-sae", "16", "--steps", "3", "--batch-size", "8", "--sparsity", "0.1", "--out", "{case}/tc"],
        ["sae", "train", "--activations", "{fixtures}/acts", "--architecture", "batchtopk", "--k", "3", "--expansion", "1", "--steps", "3", "--batch-size", "8", "--lr-decay", "0.5", "--aux-k", "0.1", "--dead-window", "16", "--normalize", "--checkpoint-every", "1", "--out", "{case}/sae"],
        ["sae", "train", "--activations", "{fixtures}/acts", "--architecture", "matryoshka_batchtopk", "--matryoshka-widths", "4,16", "--k", "3", "--d-sae", "32", "--steps", "3", "--batch-size", "8", "--out", "{case}/sae"],
        ["lens", "train", "--model", "{fixtures}/model", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "8", "--held-out", "2", "--steps", "3",
            "--tokens-per-step", "16", "--batch-contexts", "2", "--lr-scale", "0.5", "--momentum", "0.8", "--weight-decay", "0.01", "--clip-norm", "2", "--checkpoint-every", "2", "--out", "{case}/tuned"],
        ["lens", "eval", "--model", "{fixtures}/model", "--tuned", "{fixtures}/tuned", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "4", "--batch-contexts", "3", "--out", "{case}/tuned-eval"],
        ["lens", "--model", "{fixtures}/model", "--tokens", "1,2,3,4", "--answer-id", "5", "--tuned", "{fixtures}/tuned", "--out", "{case}/lens"],
        ["sae", "probe", "--model", "{fixtures}/model", "--sae", "{fixtures}/sae", "--dataset", "brown:{fixtures}/brown", "--max-sentences", "24", "--ks", "1,3",
            "--classes", "2", "--min-examples", "3", "--held-out", "0.25", "--l2", "0.01", "--seed", "1", "--out", "{case}/sae-probe"],
        ["sae", "convert", "--sae", "{fixtures}/sae", "--out", "{case}/converted"],
    ];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        _fixtures = Directory.CreateDirectory(Path.Combine(context.Scratch, "cli-fixtures")).FullName;
        // An abused --model value that is not a folder is a hub id: never contact the hub, and look only in an empty cache.
        Environment.SetEnvironmentVariable("HF_HUB_OFFLINE", "1");
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", Directory.CreateDirectory(Path.Combine(context.Scratch, "empty-hf-cache")).FullName);
        CliFixtures.Build(context, _fixtures, args => Invoke(args, _fixtures));
        return [.. s_base.Select(args => new Seed($"generated:cli-{string.Join("-", args.TakeWhile(a => !a.StartsWith('-')))}-{Array.IndexOf(s_base, args)}",
            [new SeedFile("args.json", Encoding.UTF8.GetBytes(JsonSerializer.Serialize(args)), FileKind.Args)]))];
    }

    public override IReadOnlyList<NamedMutator> ExtraMutators(SeedFile file) => [new("cli-value", AbuseValue), new("cli-value", AbuseValue), new("cli-option", AbuseOption)];

    static List<string>? Args(byte[] b)
    {
        try { return JsonSerializer.Deserialize<List<string>>(b); }
        catch (JsonException) { return null; }
    }

    static byte[] Bytes(List<string> args) => Encoding.UTF8.GetBytes(JsonSerializer.Serialize(args));

    /// <summary>The options the verb named by <paramref name="args"/> declares (name → value type).</summary>
    static List<Option> OptionsOf(List<string> args)
    {
        Command root = global::Loupe.Cli.Program.Build(), command = root;
        foreach (var a in args.TakeWhile(a => !a.StartsWith('-')))
            if (command.Subcommands.FirstOrDefault(c => c.Name == a) is { } sub) command = sub;
        // Every verb also takes the root's --process; --device and --dtype are left out (a GPU, or the emulated device's slow kernels).
        return [.. command.Options.Where(o => o.Name.StartsWith("--", StringComparison.Ordinal) && o.Name != "--help" && o.Name != "--version"),
            .. root.Options.Where(o => o.Recursive && o.Name == global::Loupe.Cli.Program.ProcessOptionName)];
    }

    static string AbusiveValue(Option option, Random rng)
    {
        var type = Nullable.GetUnderlyingType(option.ValueType) ?? option.ValueType;
        string[] pool = type == typeof(int) || type == typeof(long) ? s_ints
            : type == typeof(float) || type == typeof(double) ? s_floats
            : type == typeof(bool) ? ["maybe", "", "true", "false"]
            : s_strings;
        if (s_workOptions.Contains(option.Name)) pool = [.. pool.Except(s_big)];
        if (s_fixtureOptions.Contains(option.Name)) pool = [.. pool, .. s_fixtureSwaps];
        if (option.Name == global::Loupe.Cli.Program.ProcessOptionName) pool = [.. pool, .. s_processing];
        if (option.Name == "--model") pool = ["", " ", "{case}/missing/x", "{case}/a-folder", "{case}/link-to-folder", "{fixtures}/sae", "{fixtures}/text.txt", "{fixtures}/model", "{fixtures}/gpt2"];
        return pool[rng.Next(pool.Length)];
    }

    /// <summary>One option of the command line gets an abused value.</summary>
    static (byte[], string)? AbuseValue(byte[] b, Random rng)
    {
        if (Args(b) is not { } args) return null;
        var options = OptionsOf(args);
        var present = Enumerable.Range(0, args.Count - 1)
            .Where(i => options.Any(o => o.Name == args[i] || o.Aliases.Contains(args[i])) && !args[i + 1].StartsWith("--", StringComparison.Ordinal)).ToList();
        if (present.Count == 0 || rng.Next(4) == 0)
        {
            // An option the line does not use yet.
            var option = options[rng.Next(options.Count)];
            var value = AbusiveValue(option, rng);
            args.AddRange(option.ValueType == typeof(bool) && rng.Next(2) == 0 ? [option.Name] : [option.Name, value]);
            return (Bytes(args), $"added {option.Name} '{JsonMutators.Describe(value)}'");
        }
        int at = present[rng.Next(present.Count)];
        var opt = options.First(o => o.Name == args[at] || o.Aliases.Contains(args[at]));
        var abused = AbusiveValue(opt, rng);
        args[at + 1] = abused;
        return (Bytes(args), $"{opt.Name} = '{JsonMutators.Describe(abused)}'");
    }

    /// <summary>An option dropped (with its value), repeated, or an unknown one added.</summary>
    static (byte[], string)? AbuseOption(byte[] b, Random rng)
    {
        if (Args(b) is not { } args) return null;
        var names = Enumerable.Range(0, args.Count).Where(i => args[i].StartsWith('-') && args[i].Length > 1).ToList();
        // A dropped work option takes its default, which may be a long job (toy's 3000 steps per model) rather than a finding.
        var droppable = names.Where(i => !s_workOptions.Contains(args[i])).ToList();
        switch (rng.Next(3))
        {
            case 0 when droppable.Count > 0:
            {
                int at = droppable[rng.Next(droppable.Count)];
                bool hasValue = at + 1 < args.Count && !args[at + 1].StartsWith("--", StringComparison.Ordinal);
                var name = args[at];
                args.RemoveRange(at, hasValue ? 2 : 1);
                return (Bytes(args), $"dropped {name}");
            }
            case 1 when names.Count > 0:
            {
                int at = names[rng.Next(names.Count)];
                bool hasValue = at + 1 < args.Count && !args[at + 1].StartsWith("--", StringComparison.Ordinal);
                args.AddRange(hasValue ? [args[at], args[at + 1]] : [args[at]]);
                return (Bytes(args), $"repeated {args[at]}");
            }
            default:
                args.AddRange(["--no-such-option", "1"]);
                return (Bytes(args), "unknown option added");
        }
    }

    public override void Execute(string folder, FuzzInput input)
    {
        Directory.CreateDirectory(Path.Combine(folder, "a-folder"));
        if (!File.Exists(Path.Combine(folder, "link-to-folder"))) Directory.CreateSymbolicLink(Path.Combine(folder, "link-to-folder"), Path.Combine(folder, "a-folder"));
        var args = (JsonSerializer.Deserialize<List<string>>(input.Bytes) ?? [])
            .Select(a => a.Replace("{fixtures}", _fixtures).Replace("{case}", folder)).ToArray();
        var (code, stdout, stderr) = Invoke(args, folder);
        string err = stderr.ReplaceLineEndings(" ").Trim();
        if (code == 2) throw new InputError($"exit 2: {err}");
        if (code != 0 && !IsFailedCertification(args, code, stdout)) throw new OracleViolation("exit-code", $"exit {code}: {(err.Length > 300 ? err[..300] : err)}");
        // NaN in the output counts only when it was not typed in: an --out of "NaN" or a prompt "NaN" is echoed back.
        string output = args.Where(a => a.Length >= 3).OrderByDescending(a => a.Length).Aggregate(stdout, (o, a) => o.Replace(a, ""));
        // ∞ is how the current culture prints an infinity, "Infinity" how the invariant culture (most of Loupe's output) does.
        if (output.Contains("NaN", StringComparison.Ordinal) || output.Contains('∞') || output.Contains("Infinity", StringComparison.Ordinal))
            throw new OracleViolation("non-finite", $"exit {code} with NaN/∞ in the output: {output[..Math.Min(200, output.Length)].ReplaceLineEndings(" ")}");
    }

    /// <summary>
    /// <c>loupe verify</c>'s documented verdict: exit 1 with its table ending in FAILED when a check misses its tolerance (a
    /// --tolerance of 0 or 1e-30 fails float32 against float64 by design). Exit 1 without that verdict is still a failure.
    /// </summary>
    static bool IsFailedCertification(string[] args, int code, string stdout) =>
        code == 1 && args.FirstOrDefault() == "verify" && stdout.Split('\n', StringSplitOptions.TrimEntries).Contains("FAILED");

    /// <summary>
    /// Runs <c>Program.Run</c> (the real entry point: parser refusals and empty values are exit 2 there) in <paramref name="workingDirectory"/>,
    /// with the console captured. Relative paths in abused values ("NaN", "ü☃𝄞" as --out) land there, not in the repository.
    /// </summary>
    internal static (int Code, string Out, string Err) Invoke(string[] args, string workingDirectory)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        lock (ConsoleLock)
        {
            var (oldOut, oldErr, oldDirectory) = (Console.Out, Console.Error, Environment.CurrentDirectory);
            Environment.CurrentDirectory = workingDirectory;
            Console.SetOut(stdout);
            Console.SetError(stderr);
            try
            {
                int code = global::Loupe.Cli.Program.Run(args, new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
                return (code, stdout.ToString(), stderr.ToString());
            }
            finally
            {
                Console.SetOut(oldOut);
                Console.SetError(oldErr);
                Environment.CurrentDirectory = oldDirectory;
            }
        }
    }

    static readonly object ConsoleLock = new();
}
