using System.CommandLine;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using Loupe.Cli.Commands;

namespace Loupe.Cli;

/// <summary>The <c>loupe</c> command line: one verb per stage of the pipeline.</summary>
public static class Program
{
    public static int Main(string[] args) => Run(args);

    /// <summary>
    /// Parses and runs a command line. Arguments the parser refuses (an unknown option, a missing required one,
    /// "abc" or 99999999999 for an integer) are bad input like any other: one <c>error:</c> line and exit code 2.
    /// </summary>
    public static int Run(string[] args, InvocationConfiguration? configuration = null)
    {
        var parse = Build().Parse(args);
        if (parse.Action is ParseErrorAction && parse.Errors.Count > 0)
        {
            var error = configuration?.Error ?? Console.Error;
            var verb = new List<string>();
            for (var c = parse.CommandResult; c.Parent is CommandResult parent; c = parent) verb.Insert(0, c.Command.Name);
            error.WriteLine($"error: {string.Join("; ", parse.Errors.Select(e => Plain(e.Message)))} (see 'loupe {string.Join(' ', verb.Append("--help"))}')");
            return CliSupport.InputErrorExitCode;
        }
        if (EmptyValue(parse) is string option)
        {
            (configuration?.Error ?? Console.Error).WriteLine($"error: {InputError.Expected("argument", option, "a non-empty value", "").Message}");
            return CliSupport.InputErrorExitCode;
        }
        try
        {
            var path = new List<string>();
            for (var c = parse.CommandResult; c.Parent is CommandResult parent; c = parent) path.Insert(0, c.Command.Name);
            CliSupport.ChooseDevice(parse.GetValue<string?>(DeviceOptionName), string.Join(' ', path));
            CliSupport.ChooseWeightType(parse.GetValue<string?>(DtypeOptionName));
            CliSupport.ChooseProcessing(parse.GetValue<string?>(ProcessOptionName));
        }
        catch (InputError e)
        {
            (configuration?.Error ?? Console.Error).WriteLine($"error: {e.Message}");
            return CliSupport.InputErrorExitCode;
        }
        int code = parse.Invoke(configuration);
        if (code == 0 && !CliSupport.Processing.IsNone && CliSupport.ModelsLoaded == 0)
            (configuration?.Error ?? Console.Error).WriteLine($"note: {ProcessOptionName} was ignored: this command loads no model");
        return code;
    }

    // Text options may be empty (the verb decides what an empty prompt means); a path, hook, source or id may not.
    static readonly HashSet<string> s_textOptions = ["--prompt", "--text", "--contrast-a", "--contrast-b", "--clean", "--corrupt", "--answer", "--wrong"];

    /// <summary>The first option given an empty or blank value where a path, name or id is expected, else null.</summary>
    static string? EmptyValue(ParseResult parse) =>
        parse.CommandResult.Children.OfType<OptionResult>()
            .Where(o => !s_textOptions.Contains(o.Option.Name) && o.Tokens.Any(t => string.IsNullOrWhiteSpace(t.Value)))
            .Select(o => o.Option.Name)
            .FirstOrDefault();

    /// <summary>A parser message in the shape of every other refusal, with .NET type names put into words.</summary>
    static string Plain(string message)
    {
        message = message.ReplaceLineEndings(" ").Trim().TrimEnd('.');
        var match = System.Text.RegularExpressions.Regex.Match(message, @"^Cannot parse argument '(.*)' for option '(.*)' as expected type '(.*)'\.?$");
        if (!match.Success) return message;
        string type = match.Groups[3].Value;
        string expected =
            type.Contains("Int32", StringComparison.Ordinal) ? "an integer in [-2147483648, 2147483647]"
            : type.Contains("Int64", StringComparison.Ordinal) ? "an integer"
            : type.Contains("Single", StringComparison.Ordinal) || type.Contains("Double", StringComparison.Ordinal) ? "a number"
            : type.Contains("Boolean", StringComparison.Ordinal) ? "true or false"
            : type;
        return InputError.Expected("argument", match.Groups[2].Value, expected, match.Groups[1].Value).Message;
    }

    /// <summary>The option every verb accepts to choose the device.</summary>
    public const string DeviceOptionName = "--device";

    /// <summary>The option every verb accepts to choose how a model's matrix weights are kept on the device.</summary>
    public const string DtypeOptionName = "--dtype";

    /// <summary>The option every verb that loads a model accepts to process its weights as TransformerLens does.</summary>
    public const string ProcessOptionName = "--process";

    /// <summary>The root command with every verb (exposed for tests).</summary>
    public static RootCommand Build()
    {
        var root = new RootCommand(
            "Loupe — look inside transformer language models.\n\n" +
            "Examples:\n" +
            "  loupe run --model ../shared/models/stories260K --prompt \"Once upon a time\"\n" +
            "  loupe info --model gpt2\n" +
            "  loupe cache --model gpt2 --prompt \"Hello\" --hooks \"blocks.*.hook_resid_pre\" --out acts.safetensors");
        root.Options.Add(new Option<string?>(DeviceOptionName)
        {
            Description = "Where models run: cpu (default), cuda, cuda:N, or emulated (the GPU kernels on the CPU, for testing). Default: $LOUPE_DEVICE, else cpu",
            Recursive = true,
        });
        root.Options.Add(new Option<string?>(DtypeOptionName)
        {
            Description = "The element type a model's matrix weights are kept in on the device: fp32 (default), bf16 or fp16 (half the memory; " +
                          "products accumulate in fp32). A GPU option (cuda, emulated): the CPU computes with fp32 weights. Dictionary training " +
                          "(sae train, clt train) keeps the dictionary's parameters in fp32 whatever --dtype says. Default: $LOUPE_DTYPE, else fp32",
            Recursive = true,
        });
        root.Options.Add(new Option<string?>(ProcessOptionName)
        {
            Description = "Process the model's weights on load as TransformerLens does (comma-separated): fold_ln, center_writing_weights, " +
                          "center_unembed, fold_value_biases, refactor_factored_attn_matrices; 'tl' for the first four (TransformerLens's from_pretrained defaults). Default: none. " +
                          "Options that would change this model's outputs are refused",
            Recursive = true,
        });
        foreach (var verb in Verbs()) root.Subcommands.Add(verb);
        return root;
    }

    /// <summary>
    /// Every verb: each static class named <c>*Command</c> in <c>Loupe.Cli.Commands</c> with a
    /// <c>static Command Create()</c>, so adding a verb is adding one file. Pipeline order first.
    /// </summary>
    static IEnumerable<Command> Verbs()
    {
        string[] order = ["run", "tokenize", "info", "cache", "harvest", "sae", "features", "grad", "patch", "attribute", "intervene", "lens", "probe", "steer", "persona"];
        return typeof(Program).Assembly.GetTypes()
            .Where(t => t.Namespace == typeof(RunCommand).Namespace && t.Name.EndsWith("Command", StringComparison.Ordinal) && t.IsAbstract && t.IsSealed)
            .Select(t => t.GetMethod("Create", System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic, Type.EmptyTypes))
            .Where(m => m is not null && m.ReturnType == typeof(Command))
            .Select(m => (Command)m!.Invoke(null, null)!)
            .OrderBy(c => Array.IndexOf(order, c.Name) is var i && i >= 0 ? i : order.Length)
            .ThenBy(c => c.Name, StringComparer.Ordinal);
    }
}
