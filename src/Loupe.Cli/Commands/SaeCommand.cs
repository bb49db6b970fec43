using System.CommandLine;
using System.Reflection;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe sae</c>: the dictionary verbs (<c>train</c>, <c>eval</c>, …). Each subcommand is a static class
/// named <c>Sae*Verb</c> with a <c>static Command Create()</c>, so adding one is adding one file.
/// </summary>
static class SaeCommand
{
    public static Command Create()
    {
        var command = new Command("sae",
            "Train, evaluate and inspect sparse autoencoders and transcoders (SAELens cfg.json + sae_weights.safetensors; Gemma Scope params.npz).\n\n" +
            "Examples:\n" +
            "  loupe sae train --activations acts/ --hook blocks.2.hook_resid_post --architecture topk --k 32 --d-sae 2048 --out sae/\n" +
            "  loupe sae eval --model ../shared/models/stories260K --sae sae/ --source brown:../shared/datasets/brown-corpus");
        string[] order = ["train", "eval"];
        var verbs = typeof(SaeCommand).Assembly.GetTypes()
            .Where(t => t.Namespace == typeof(SaeCommand).Namespace && t.Name.StartsWith("Sae", StringComparison.Ordinal)
                && t.Name.EndsWith("Verb", StringComparison.Ordinal) && t.IsAbstract && t.IsSealed)
            .Select(t => t.GetMethod("Create", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic, Type.EmptyTypes))
            .Where(m => m is not null && m.ReturnType == typeof(Command))
            .Select(m => (Command)m!.Invoke(null, null)!)
            .OrderBy(c => Array.IndexOf(order, c.Name) is var i && i >= 0 ? i : order.Length)
            .ThenBy(c => c.Name, StringComparer.Ordinal);
        foreach (var verb in verbs) command.Subcommands.Add(verb);
        return command;
    }
}
