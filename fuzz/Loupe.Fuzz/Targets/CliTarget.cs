using System.CommandLine;
using System.Text;
using System.Text.Json;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Mutators;
using Loupe.Models;

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
        "--lr-warmup", "--sparsity-warmup", "--max-new-tokens", "--n", "--checkpoint-every"];

    static readonly string[] s_ints = ["0", "-1", "1", "2147483647", "2147483648", "-2147483648", "99999999999999", "NaN", "", "1e3", "٣", "0x10", " 7"];
    static readonly string[] s_floats = ["NaN", "-NaN", "Infinity", "-Infinity", "1e308", "-1", "0", "-0", "1e-45", "3.4e39", "", "nan", "1e-30"];
    static readonly string[] s_strings = ["", " ", "ü☃𝄞", "NaN", "-1", "0", "1,2,3;4", ";;", ",", "-", "{case}/missing/x", "{case}/a-folder", "{case}/link-to-folder",
        "{case}/../../escape", "blocks.99.hook_resid_post", "blocks.*.attn.hook_pattern", "2147483647", "1,-5,3", "1,2147483647", "999999"];
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
        ["features", "build", "--model", "{fixtures}/model", "--sae", "{fixtures}/sae", "--source", "text:{fixtures}/text.txt", "--context-size", "8", "--max-contexts", "6", "--top", "3", "--quantiles", "2", "--bins", "4", "--window", "2", "--out", "{case}/features.db"],
        ["features", "top", "--db", "{fixtures}/features.db", "-f", "3", "--n", "3"],
        ["features", "list", "--db", "{fixtures}/features.db", "--n", "5", "--sort", "max_act", "--json"],
        ["persona", "--model", "{fixtures}/model", "--positive", "{fixtures}/happy.txt", "--negative", "{fixtures}/sad.txt", "--layer", "1", "--prompt", "Hello", "--coeffs", "0,2", "--seeds", "1", "--max-new-tokens", "2", "--out", "{case}/persona"],
    ];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        _fixtures = Directory.CreateDirectory(Path.Combine(context.Scratch, "cli-fixtures")).FullName;
        // An abused --model value that is not a folder is a hub id: never contact the hub, and look only in an empty cache.
        Environment.SetEnvironmentVariable("HF_HUB_OFFLINE", "1");
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", Directory.CreateDirectory(Path.Combine(context.Scratch, "empty-hf-cache")).FullName);
        // A model with a tokenizer and no ../shared: the llama fixture's weights and the generated byte-level BPE, padded to the model's 512 ids.
        var model = Directory.CreateDirectory(Path.Combine(_fixtures, "model")).FullName;
        foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(context.Repo($"tests/data/reference/llama/{f}"), Path.Combine(model, f), true);
        var tokenizer = new TokenizerJsonTarget().BuildSeeds(new SeedContext(null, context.RepoRoot, context.Scratch))[0].Files[0];
        File.WriteAllBytes(Path.Combine(model, "tokenizer.json"), tokenizer.Bytes);
        string text = string.Join("\n\n", Enumerable.Range(0, 40).Select(i => $"The world is {i} and the cat sat on the mat with another {i * 7} things."));
        File.WriteAllText(Path.Combine(_fixtures, "text.txt"), text);
        // Twelve lines a side: with four, persona's held-out split has one example and prints "held-out d NaN" (a finding of its own).
        string[] things = ["day", "song", "cat", "meal", "walk", "book", "game", "trip", "film", "gift", "party", "garden"];
        File.WriteAllLines(Path.Combine(_fixtures, "happy.txt"), things.Select((t, i) => $"I love this wonderful {t}, it is great number {i}."));
        File.WriteAllLines(Path.Combine(_fixtures, "sad.txt"), things.Select((t, i) => $"I hate this awful {t}, it is bad number {i}."));
        var (dict, cfg) = PipelineFixtures.Dictionary();
        SaeLensFormat.Save(Path.Combine(_fixtures, "sae"), dict, cfg);
        using (var m = ModelLoader.LoadFolder(model))
        {
            Harvester.Run(m, PipelineFixtures.Contexts(10, 8), Path.Combine(_fixtures, "acts"), new HarvestOptions([PipelineFixtures.Hook], BatchSize: 4, ShardTokens: 28));
            FeatureDashboardBuilder.Build(m, dict, cfg, PipelineFixtures.Contexts(12, 8), Path.Combine(_fixtures, "features.db"),
                new FeatureBuildOptions { BatchSize = 4, TopK = 3, Quantiles = 2, QuantileSamples = 2, HistogramBins = 4, Window = 2, LogitCount = 3 });
        }
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
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
        Command command = global::Loupe.Cli.Program.Build();
        foreach (var a in args.TakeWhile(a => !a.StartsWith('-')))
            if (command.Subcommands.FirstOrDefault(c => c.Name == a) is { } sub) command = sub;
        return [.. command.Options.Where(o => o.Name.StartsWith("--", StringComparison.Ordinal) && o.Name != "--help" && o.Name != "--version")];
    }

    static string AbusiveValue(Option option, Random rng)
    {
        var type = Nullable.GetUnderlyingType(option.ValueType) ?? option.ValueType;
        string[] pool = type == typeof(int) || type == typeof(long) ? s_ints
            : type == typeof(float) || type == typeof(double) ? s_floats
            : type == typeof(bool) ? ["maybe", "", "true", "false"]
            : s_strings;
        if (s_workOptions.Contains(option.Name)) pool = [.. pool.Except(s_big)];
        if (option.Name == "--model") pool = ["", " ", "{case}/missing/x", "{case}/a-folder", "{case}/link-to-folder", "{fixtures}/sae", "{fixtures}/text.txt"];
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
        switch (rng.Next(3))
        {
            case 0 when names.Count > 0:
            {
                int at = names[rng.Next(names.Count)];
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
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        int code;
        var oldDirectory = Environment.CurrentDirectory;
        lock (ConsoleLock)
        {
            // Relative paths in abused values ("NaN", "ü☃𝄞" as --out) land in the case folder, not in the repository.
            Environment.CurrentDirectory = folder;
            Console.SetOut(stdout);
            Console.SetError(stderr);
            // Program.Run is the real entry point: parser refusals and empty values are exit 2 there.
            try { code = global::Loupe.Cli.Program.Run(args, new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false }); }
            finally
            {
                Console.SetOut(oldOut);
                Console.SetError(oldErr);
                Environment.CurrentDirectory = oldDirectory;
            }
        }
        string err = stderr.ToString().ReplaceLineEndings(" ").Trim();
        if (code == 2) throw new InputError($"exit 2: {err}");
        if (code != 0) throw new OracleViolation("exit-code", $"exit {code}: {(err.Length > 300 ? err[..300] : err)}");
        // NaN in the output counts only when it was not typed in: an --out of "NaN" or a prompt "NaN" is echoed back.
        string output = args.Where(a => a.Length >= 3).OrderByDescending(a => a.Length).Aggregate(stdout.ToString(), (o, a) => o.Replace(a, ""));
        if (output.Contains("NaN", StringComparison.Ordinal) || output.Contains('∞'))
            throw new OracleViolation("non-finite", $"exit 0 with NaN/∞ in the output: {output[..Math.Min(200, output.Length)].ReplaceLineEndings(" ")}");
    }

    static readonly object ConsoleLock = new();
}
