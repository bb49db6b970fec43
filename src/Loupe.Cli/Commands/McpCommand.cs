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
        var saes = new Option<string[]>("--sae") { Description = "An SAELens folder to serve (named by its folder; a features.db inside is served as its feature store). Repeatable. Or hf:ORG/NAME[/PATH][@REVISION]: that folder or file of a Hugging Face hub repository, fetched into the hub cache; or saelens:RELEASE/SAE_ID, as SAE.from_pretrained names it (SAELens's registry)", AllowMultipleArgumentsPerToken = false };
        var transcoders = new Option<string?>("--transcoders") { Description = "Transcoder folder for the attribute tool (as `loupe attribute --transcoders`)" };
        var artifacts = new Option<string[]>("--artifacts") { Description = "A folder whose *.safetensors (steering vectors, persona vectors, concept monitors) and *.db (feature stores) are served by relative name, and tuned lenses (from loupe lens train) by their folder's. Repeatable", AllowMultipleArgumentsPerToken = false };
        var http = new Option<int?>("--http") { Description = "Serve streamable HTTP on this loopback port (0 = any free port) instead of stdio" };
        var explainerUrl = new Option<string?>("--explainer-url") { Description = "OpenAI-compatible base URL the explain_feature tool asks (with --explainer-model); without it explain_feature refuses" };
        var explainerModel = new Option<string?>("--explainer-model") { Description = "The explainer endpoint's model name" };
        var explainerKeyEnv = new Option<string>("--explainer-key-env") { Description = "Environment variable holding the explainer's API key (none sent when it is unset)", DefaultValueFactory = _ => "OPENAI_API_KEY" };
        var explainerConcurrency = new Option<int>("--explainer-concurrency") { Description = "Explainer requests in flight at most", DefaultValueFactory = _ => 4 };
        var command = new Command("mcp",
            "Serve Loupe's tools over the Model Context Protocol (stdio by default; --http for streamable HTTP on 127.0.0.1):\n" +
            "list_artifacts, model_info, run, lens, cache_hook, patch, attribute, feature_lookup, steer, monitor, explain_feature. Tools read only the\n" +
            "files named here, by name; a client never passes a path. With --device the model and every tool's passes run on that device\n" +
            "(as loupe serve). Logs go to stderr. See docs/mcp.md for client configuration.\n\n" +
            "Examples:\n" +
            "  loupe mcp --model ../shared/models/stories260K --sae sae-l2 --artifacts monitors\n" +
            "  loupe mcp --model gpt2 --transcoders tc/ --http 8777\n" +
            "  loupe mcp --model ../shared/models/stories260K --sae sae-l2 --explainer-url https://api.openai.com/v1 --explainer-model gpt-4o-mini")
        { model, saes, transcoders, artifacts, http, explainerUrl, explainerModel, explainerKeyEnv, explainerConcurrency };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            int? port = parse.GetValue(http) is int p ? Check.InRange(p, 0, 65535, "argument", "--http") : null;
            var served = McpArtifacts.Index([.. (parse.GetValue(saes) ?? []).Select(v => CliSupport.LocalPath(v, "--sae"))],
                parse.GetValue(transcoders) is { } tc ? CliSupport.LocalPath(tc, "--transcoders") : null, parse.GetValue(artifacts) ?? []);
            McpExplainer? explainer = null;
            string? url = parse.GetValue(explainerUrl), explainerName = parse.GetValue(explainerModel);
            if ((url is null) != (explainerName is null))
                throw new InputError("argument: give --explainer-url and --explainer-model together (the explain_feature tool's endpoint)");
            if (url is not null)
            {
                var endpoint = new Loupe.Explain.EndpointOptions
                {
                    Endpoint = url, Model = explainerName!, ApiKey = Environment.GetEnvironmentVariable(parse.GetValue(explainerKeyEnv)!),
                    Concurrency = parse.GetValue(explainerConcurrency), TopLogprobs = 5,
                };
                try
                {
                    endpoint.Validate();
                }
                catch (InputError e)
                {
                    throw new InputError($"argument: the explainer endpoint (--explainer-url {url}, --explainer-model '{explainerName}', --explainer-concurrency): {e.Message}");
                }
                explainer = new McpExplainer(endpoint);
            }
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true); // as `loupe serve --device`: every tool reads its results back explicitly
            var tools = LoupeMcpServer.Tools(m, served, explainer);
            if (port is null)
            {
                Console.Error.WriteLine($"loupe mcp: serving {m.Source} on {m.Backend.Device} over stdio ({served.All.Count} artifacts)");
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
            Console.Error.WriteLine($"loupe mcp: serving {m.Source} on {m.Backend.Device} over streamable HTTP at {string.Join(", ", app.Urls)} ({served.All.Count} artifacts); Ctrl+C stops");
            app.WaitForShutdownAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        }));
        return command;
    }
}
