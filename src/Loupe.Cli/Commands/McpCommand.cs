using System.CommandLine;
using Loupe.Mcp;
using Microsoft.Extensions.Hosting;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe mcp</c>: Loupe's tools as a Model Context Protocol server, for agents that audit a model.</summary>
static class McpCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var saes = new Option<string[]>("--sae") { Description = "An SAELens folder to serve (named by its folder; a features.db inside is served as its feature store). Repeatable", AllowMultipleArgumentsPerToken = false };
        var transcoders = new Option<string?>("--transcoders") { Description = "Transcoder folder for the attribute tool (as `loupe attribute --transcoders`)" };
        var artifacts = new Option<string[]>("--artifacts") { Description = "A folder whose *.safetensors (steering vectors, persona vectors, concept monitors) and *.db (feature stores) are served by relative name. Repeatable", AllowMultipleArgumentsPerToken = false };
        var http = new Option<int?>("--http") { Description = "Serve streamable HTTP on this loopback port (0 = any free port) instead of stdio" };
        var command = new Command("mcp",
            "Serve Loupe's tools over the Model Context Protocol (stdio by default; --http for streamable HTTP on 127.0.0.1):\n" +
            "list_artifacts, model_info, run, cache_hook, patch, attribute, feature_lookup, steer, monitor. Tools read only the\n" +
            "files named here, by name; a client never passes a path. Logs go to stderr. See docs/mcp.md for client configuration.\n\n" +
            "Examples:\n" +
            "  loupe mcp --model ../shared/models/stories260K --sae sae-l2 --artifacts monitors\n" +
            "  loupe mcp --model gpt2 --transcoders tc/ --http 8777")
        { model, saes, transcoders, artifacts, http };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            int? port = parse.GetValue(http) is int p ? Check.InRange(p, 0, 65535, "argument", "--http") : null;
            var served = McpArtifacts.Index(parse.GetValue(saes) ?? [], parse.GetValue(transcoders), parse.GetValue(artifacts) ?? []);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!);
            var tools = LoupeMcpServer.Tools(m, served);
            if (port is null)
            {
                Console.Error.WriteLine($"loupe mcp: serving {m.Source} over stdio ({served.All.Count} artifacts)");
                LoupeMcpServer.RunStdioAsync(tools).GetAwaiter().GetResult();
                return 0;
            }
            var app = LoupeMcpServer.Http(tools, port.Value);
            try
            {
                app.StartAsync().GetAwaiter().GetResult();
            }
            catch (IOException e)
            {
                throw new InputError($"argument: --http: cannot listen on 127.0.0.1:{port}: {e.Message}");
            }
            Console.Error.WriteLine($"loupe mcp: serving {m.Source} over streamable HTTP at {string.Join(", ", app.Urls)} ({served.All.Count} artifacts); Ctrl+C stops");
            app.WaitForShutdownAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        }));
        return command;
    }
}
