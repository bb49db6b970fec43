using System.CommandLine;
using Loupe.Cli.Commands;

namespace Loupe.Cli;

/// <summary>The <c>loupe</c> command line: one verb per stage of the pipeline.</summary>
public static class Program
{
    public static int Main(string[] args) => Build().Parse(args).Invoke();

    /// <summary>The root command with every verb (exposed for tests).</summary>
    public static RootCommand Build()
    {
        var root = new RootCommand(
            "Loupe — look inside transformer language models.\n\n" +
            "Examples:\n" +
            "  loupe run --model ../shared/models/stories260K --prompt \"Once upon a time\"\n" +
            "  loupe info --model gpt2\n" +
            "  loupe cache --model gpt2 --prompt \"Hello\" --hooks \"blocks.*.hook_resid_pre\" --out acts.safetensors");
        root.Subcommands.Add(RunCommand.Create());
        root.Subcommands.Add(TokenizeCommand.Create());
        root.Subcommands.Add(CacheCommand.Create());
        root.Subcommands.Add(InfoCommand.Create());
        return root;
    }
}
