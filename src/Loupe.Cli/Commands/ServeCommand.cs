using System.CommandLine;
using Loupe.Serve;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe serve</c>: the web app (Prompt and Attention pages, JSON API) over one model and a folder of artifacts.</summary>
static class ServeCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var graphs = new Option<string?>("--graphs") { Description = "Folder of graph, circuit and patching JSON to list and serve (by id)" };
        var port = new Option<int>("--port") { Description = "TCP port", DefaultValueFactory = _ => 8765 };
        var host = new Option<string>("--host") { Description = "Address to bind; anything but loopback requires a token", DefaultValueFactory = _ => "127.0.0.1" };
        var features = new Option<string[]>("--features") { Description = "Feature stores (features.db from `loupe features build`) or folders holding them, for the Features and Steering pages and the Graph page's dashboards (matched to a layer by the store's hook)", AllowMultipleArgumentsPerToken = true };
        var crosscoder = new Option<string[]>("--crosscoder") { Description = "Crosscoders (folders `loupe crosscoder` reads) for the Diff page: latents by class, Δ histogram, links to a --features store of their latents", AllowMultipleArgumentsPerToken = true };
        var diff = new Option<string[]>("--diff") { Description = "Model diffs (`loupe diff --out` folders) for the Diff page: KL by position, the most divergent positions, activation differences per hook", AllowMultipleArgumentsPerToken = true };
        var sae = new Option<string?>("--sae") { Description = "The dictionary behind the feature stores, when a store does not record where its SAE is (a folder, or hf:ORG/NAME[/PATH][@REVISION])" };
        var token = new Option<string?>("--token") { Description = "Access token required on every request (generated and printed when binding beyond loopback without one)" };
        var openAi = new Option<bool>("--openai") { Description = "Also serve an OpenAI-compatible API under /v1 (completions, chat, streaming, logprobs, steering and monitors; docs/openai.md)" };
        var openAiOnly = new Option<bool>("--openai-only") { Description = "Serve only the OpenAI-compatible API under /v1" };
        var vectors = new Option<string?>("--vectors") { Description = "Folder of steering/persona/monitor vectors (.safetensors) and SAE folders that /v1 requests may use by id" };
        var tunedLens = new Option<string?>("--tuned") { Description = "A tuned lens (from `loupe lens train`) the Prompt page shows beside the logit lens" };
        var transcoders = new Option<string?>("--transcoders") { Description = "Transcoders (as for loupe intervene) that let the Graph page ablate or scale features" };
        var decoders = CliSupport.DecodersOption();
        var deviceDecoders = CliSupport.DeviceDecodersOption();
        var command = new Command("serve",
            "Serve the web app and its JSON API (OpenAPI at /api/openapi.json) for one model. Binds to loopback by default.\n\n" +
            "Examples:\n" +
            "  loupe serve --model ../shared/models/stories260K\n" +
            "  loupe serve --model ../shared/models/stories260K --graphs graphs-out --port 9000\n" +
            "  loupe serve --model ../shared/models/stories260K --features sae/features.db\n" +
            "  loupe serve --model ../shared/models/stories260K --crosscoder cc/ --features cc/features.db   (the Diff page)\n" +
            "  loupe serve --model ../shared/models/stories260K --diff diff-out/   (the Diff page: a `loupe diff` run)\n" +
            "  loupe serve --model ../shared/models/stories260K --host 0.0.0.0   (prints a generated token)\n" +
            "  loupe serve --model ../shared/models/stories260K --openai-only --vectors vectors/   (OpenAI-compatible API at /v1)")
        { model, graphs, features, crosscoder, diff, sae, port, host, token, openAi, openAiOnly, vectors, transcoders, decoders, deviceDecoders, tunedLens };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            int p = CliSupport.Int(parse, port, 0, 65535);
            string? t = parse.GetValue(token);
            if (t is not null && t.Length < 16) throw InputError.Expected("argument", "--token", "at least 16 characters", $"{t.Length} characters");
            var options = new ServeOptions { Host = parse.GetValue(host)!, Port = p, Token = t, GraphsDir = parse.GetValue(graphs),
                OpenAi = parse.GetValue(openAiOnly) ? OpenAiMode.Only : parse.GetValue(openAi) ? OpenAiMode.Beside : OpenAiMode.Off, VectorsDir = parse.GetValue(vectors),
                TranscodersDir = parse.GetValue(transcoders) is { } tc ? CliSupport.LocalPath(tc, "--transcoders") : null,
                TunedLensPath = parse.GetValue(tunedLens) is string tunedPath ? CliSupport.LocalPath(tunedPath, "--tuned") : null,
                Decoders = CliSupport.DecoderStorage(parse.GetValue(decoders)), DeviceDecoders = CliSupport.DeviceDecoders(parse.GetValue(deviceDecoders)), FeatureStores = parse.GetValue(features) ?? [], Crosscoders = parse.GetValue(crosscoder) ?? [], ModelDiffs = parse.GetValue(diff) ?? [],
                SaePath = parse.GetValue(sae) is { } saeValue ? CliSupport.LocalPath(saeValue, "--sae") : null };
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var server = new ServeHost(m, options);
            try
            {
                server.StartAsync().GetAwaiter().GetResult();
            }
            catch (IOException e)
            {
                throw new InputError($"argument: --port: cannot listen on {options.Host}:{p}: {e.Message}");
            }
            string url = server.Url!.ToString();
            if (!options.IsLoopback) url = $"http://{(options.Host.Contains(':') ? $"[{options.Host}]" : options.Host)}:{server.Url.Port}/";
            Console.WriteLine($"Loupe serves {m.Source} at {url}{(server.Token is { } tok ? $"?token={tok}" : "")}");
            if (server.Token is not null && t is null) Console.WriteLine("(a generated access token: every request needs it; pass --token to choose one)");
            if (options.OpenAi != OpenAiMode.Off) Console.WriteLine($"OpenAI-compatible API: {url}v1 (the API key is the access token{(server.Token is null ? "; none needed here" : "")})");
            Console.WriteLine($"workspace index: {server.Workspace.DatabasePath}; Ctrl+C stops");
            server.WaitForShutdownAsync().GetAwaiter().GetResult();
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        }));
        return command;
    }
}
