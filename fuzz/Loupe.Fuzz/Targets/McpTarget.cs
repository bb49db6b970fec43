using System.IO.Pipelines;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Fuzz.Engine;
using Loupe.Mcp;
using Loupe.Models;
using Loupe.Steering;
using Loupe.Steering.Monitors;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>loupe mcp</c>'s tools as an agent calls them: an MCP server over in-process pipes (the GPT-2 fixture with an SAE and its
/// feature store, a persona vector, a concept monitor and circuit-tracer transcoders) and a client; each input is one tool
/// call (call.json: tool and arguments) with the arguments abused. A tool may answer or refuse (an error result with a
/// message, or a protocol error for arguments of the wrong type); an exception the tools did not turn into a message — the
/// SDK's bare "An error occurred invoking 'tool'." — fails, and so does a server that stops answering.
/// </summary>
public sealed class McpTarget : FuzzTarget
{
    public override string Name => "mcp";
    public override int DefaultIterations => 1200;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(20);

    readonly CancellationTokenSource _stop = new();
    McpClient? _client;
    HookedTransformer? _model;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string root = Directory.CreateDirectory(Path.Combine(context.Scratch, "mcp")).FullName;
        string modelDir = context.Repo("tests/data/reference/gpt2");
        _model = ModelLoader.LoadFolder(modelDir);
        int d = _model.Config.DModel;
        string sae = Path.Combine(root, "sae-l1"), served = Path.Combine(root, "served");
        var dict = DictionaryChecks.Make(SaeShape.Sae(d, 16, applyBDecToInput: false), new ReluActivation(), 3);
        SaeLensFormat.Save(sae, dict, new SaeLensConfig { HookName = "blocks.1.hook_resid_post" });
        var (loaded, loadedCfg) = DictionaryFile.Load(sae);
        var rng = new Random(1);
        var docs = Enumerable.Range(0, 20).Select(_ => Enumerable.Range(0, rng.Next(4, 14)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        FeatureDashboardBuilder.Build(_model, loaded, loadedCfg, ContextBuilder.Build(docs, new ContextOptions(16, BosTokenId: 0, SeparatorTokenId: 1), "random ids"),
            Path.Combine(sae, FeatureStoreSchema.DefaultFileName), new FeatureBuildOptions { TopK = 3, Window = 2 }, sae);
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.CreateDirectory(Path.Combine(served, "monitors"));
        var direction = Enumerable.Range(0, d).Select(i => MathF.Sin(i * 0.7f)).ToArray();
        var persona = new PersonaVector("blocks.1.hook_resid_post", 1, direction, threshold: 0.1);
        persona.Save(Path.Combine(served, "persona.safetensors"));
        new ConceptMonitor("wobble", new PersonaVector("blocks.2.hook_resid_post", 2, [.. direction.Reverse()], threshold: -0.05), 0.9, 0.9, 0.1, 0.8, 0.2, 0.85)
            .Save(Path.Combine(served, "monitors", "wobble.safetensors"));
        Loupe.Causal.Lens.TunedLens.FromTranslators(
            [.. Enumerable.Range(0, _model.Config.NLayers).Select(l => direction.SelectMany(x => direction.Select(y => 0.01f * x * y)).ToArray())],
            [.. Enumerable.Range(0, _model.Config.NLayers).Select(_ => direction)]).Save(Path.Combine(served, "lens"));
        var artifacts = McpArtifacts.Index([sae], context.Repo("tests/data/attribution/transcoders"), [served]);

        var toServer = new Pipe();
        var toClient = new Pipe();
        _ = LoupeMcpServer.RunStreamsAsync(LoupeMcpServer.Tools(ModelLoader.LoadFolder(modelDir), artifacts), toServer.Reader.AsStream(), toClient.Writer.AsStream(), _stop.Token,
            Microsoft.Extensions.Logging.LogLevel.None);
        _client = McpClient.CreateAsync(new StreamClientTransport(toServer.Writer.AsStream(), toClient.Reader.AsStream()), cancellationToken: _stop.Token).GetAwaiter().GetResult();

        int[] tokens = [5, 17, 42, 99, 3, 8];
        (string Id, string Tool, object Arguments)[] calls =
        [
            ("model-info", "model_info", new { }),
            ("list-artifacts", "list_artifacts", new { }),
            ("run", "run", new { tokens, topK = 5, maxNewTokens = 3 }),
            ("cache-hook", "cache_hook", new { hook = "blocks.1.hook_resid_post", tokens, position = -1 }),
            ("cache-pattern", "cache_hook", new { hook = "blocks.1.attn.hook_pattern", tokens }),
            ("patch", "patch", new { cleanTokens = tokens, corruptTokens = new[] { 5, 17, 43, 99, 3, 8 }, answerId = 17, wrongId = 42 }),
            ("attribute", "attribute", new { tokens, top = 3 }),
            ("feature-lookup", "feature_lookup", new { store = "sae-l1", feature = 2, examples = 2 }),
            ("steer-sae", "steer", new { tokens, sae = "sae-l1", feature = 2, coefficient = 4f, maxNewTokens = 3 }),
            ("steer-vector", "steer", new { tokens, vector = "persona.safetensors", coefficient = -3f, maxNewTokens = 3 }),
            ("monitor", "monitor", new { monitor = "monitors/wobble.safetensors", tokens, generate = 2 }),
            ("lens", "lens", new { tokens, answerId = 17, wrongId = 42, position = -2, tunedLens = "lens" }),
        ];
        return [.. calls.Select(c => new Seed($"generated:mcp-{c.Id}", [new SeedFile("call.json",
            Encoding.UTF8.GetBytes(new JsonObject { ["tool"] = c.Tool, ["arguments"] = JsonSerializer.SerializeToNode(c.Arguments) }.ToJsonString()), FileKind.Script)]))];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var client = _client ?? throw new InvalidOperationException("seeds not built");
        var call = JsonInput.ParseNode(File.ReadAllBytes(Path.Combine(folder, "call.json")), "call.json") as JsonObject ?? throw new InputError("call.json: not an object");
        if (!(call["tool"] is JsonValue t && t.TryGetValue(out string? tool))) throw new InputError("call.json: no tool name");
        var arguments = (call["arguments"] as JsonObject ?? throw new InputError("call.json: no arguments object"))
            .ToDictionary(kv => kv.Key, kv => (object?)(kv.Value is null ? null : JsonSerializer.SerializeToElement(kv.Value)));
        CallToolResult result;
        try { result = client.CallToolAsync(tool, arguments, cancellationToken: CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(15)).GetAwaiter().GetResult(); }
        catch (McpException e) { throw new InputError($"protocol error: {e.Message}"); } // unknown tool, arguments of the wrong type
        catch (TimeoutException) { throw new OracleViolation("hang", $"{tool}: no answer in 15 s"); }
        string text = string.Concat(result.Content.OfType<TextContentBlock>().Select(c => c.Text));
        if (result.IsError is not true) return;
        // The SDK writes "An error occurred invoking 'tool': message" for a tool's McpException, and the bare sentence for anything else.
        if (!text.Contains("': ", StringComparison.Ordinal) && text.StartsWith("An error occurred invoking", StringComparison.Ordinal))
            throw new OracleViolation("exception", $"{tool}: an exception the tool did not explain: {text}");
        throw new InputError($"{tool}: {text[..Math.Min(200, text.Length)]}");
    }

    public override void Cleanup()
    {
        _client?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _stop.Cancel();
        _model?.Dispose();
        (_client, _model) = (null, null);
    }
}
