using System.IO.Pipelines;
using System.Text.Json;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Mcp;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Steering;
using Loupe.Steering.Monitors;
using Loupe.Testing;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;

namespace Loupe.Mcp.Tests;

/// <summary>
/// The tiny GPT-2 fixture with a seeded SAE (and its feature store), a persona vector and a concept monitor in a served
/// folder, the circuit-tracer transcoders, and an in-process MCP server over pipes with a client connected to it.
/// </summary>
public sealed class McpFixture : IAsyncLifetime
{
    public const string SaeHook = "blocks.1.hook_resid_post";
    public const int DSae = 16;
    public static readonly string ModelDir = SharedData.TestData(Path.Combine("reference", "gpt2"));
    public static readonly string TranscodersDir = SharedData.TestData(Path.Combine("attribution", "transcoders"));

    readonly CancellationTokenSource _stop = new();
    Task? _server;

    public string Root { get; } = Directory.CreateTempSubdirectory("loupe-mcp").FullName;
    public string SaeDir => Path.Combine(Root, "sae-l1");
    public string ArtifactsDir => Path.Combine(Root, "served");
    public HookedTransformer Model { get; } = ModelLoader.LoadFolder(ModelDir);
    public McpClient Client { get; private set; } = null!;
    public PersonaVector Persona { get; private set; } = null!;
    public ConceptMonitor Monitor { get; private set; } = null!;
    public Loupe.Causal.Lens.TunedLens Lens { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var dict = new SparseDictionary(SaeShape.Sae(Model.Config.DModel, DSae, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(seed: 3, decoderNorm: 1f);
        for (int f = 0; f < DSae; f++) dict.P.BEnc[f] = -0.05f * f;
        SaeLensFormat.Save(SaeDir, dict, new SaeLensConfig { HookName = SaeHook });
        var rng = new Random(1);
        var docs = Enumerable.Range(0, 30).Select(_ => Enumerable.Range(0, rng.Next(4, 18)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        var contexts = ContextBuilder.Build(docs, new ContextOptions(16, BosTokenId: 0, SeparatorTokenId: 1), "random ids");
        var (loaded, loadedCfg) = DictionaryFile.Load(SaeDir);
        FeatureDashboardBuilder.Build(Model, loaded, loadedCfg, contexts, Path.Combine(SaeDir, FeatureStoreSchema.DefaultFileName),
            new FeatureBuildOptions { TopK = 5, Window = 4 }, SaeDir);

        Directory.CreateDirectory(Path.Combine(ArtifactsDir, "monitors"));
        var direction = Enumerable.Range(0, Model.Config.DModel).Select(i => MathF.Sin(i * 0.7f)).ToArray();
        Persona = new PersonaVector(SaeHook, 1, direction, threshold: 0.1);
        Persona.Save(Path.Combine(ArtifactsDir, "persona.safetensors"));
        Monitor = new ConceptMonitor("wobble", new PersonaVector("blocks.2.hook_resid_post", 2, [.. direction.Reverse()], threshold: -0.05), 0.9, 0.9, 0.1, 0.8, 0.2, 0.85);
        Monitor.Save(Path.Combine(ArtifactsDir, "monitors", "wobble.safetensors"));
        Monitor = ConceptMonitor.Load(Path.Combine(ArtifactsDir, "monitors", "wobble.safetensors"));

        // A tuned lens (random translators) served from the folder as lenses/gpt2-lens.
        int d = Model.Config.DModel;
        var lensRandom = new Random(6);
        Loupe.Causal.Lens.TunedLens.FromTranslators(
            [.. Enumerable.Range(0, Model.Config.NLayers).Select(_ => Enumerable.Range(0, d * d).Select(_ => (float)(lensRandom.NextDouble() - 0.5) * 0.2f).ToArray())],
            [.. Enumerable.Range(0, Model.Config.NLayers).Select(_ => Enumerable.Range(0, d).Select(_ => (float)(lensRandom.NextDouble() - 0.5)).ToArray())],
            baseModel: "gpt2 fixture").Save(Path.Combine(ArtifactsDir, "lenses", "gpt2-lens"));
        Lens = Loupe.Causal.Lens.TunedLens.Load(Path.Combine(ArtifactsDir, "lenses", "gpt2-lens"));

        var artifacts = McpArtifacts.Index([SaeDir], TranscodersDir, [ArtifactsDir]);
        Client = await Connect(LoupeMcpServer.Tools(ModelLoader.LoadFolder(ModelDir), artifacts), _stop.Token, s => _server = s);
    }

    /// <summary>A server over pipes in this process and a client connected to it.</summary>
    public static async Task<McpClient> Connect(LoupeTools tools, CancellationToken stop, Action<Task> serverTask)
    {
        var toServer = new Pipe();
        var toClient = new Pipe();
        serverTask(LoupeMcpServer.RunStreamsAsync(tools, toServer.Reader.AsStream(), toClient.Writer.AsStream(), stop));
        return await McpClient.CreateAsync(new StreamClientTransport(toServer.Writer.AsStream(), toClient.Reader.AsStream()), cancellationToken: stop);
    }

    public async Task DisposeAsync()
    {
        if (Client is not null) await Client.DisposeAsync();
        await _stop.CancelAsync();
        if (_server is not null) await _server.WaitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => { });
        Model.Dispose();
        Directory.Delete(Root, recursive: true);
    }
}

static class Mcp
{
    /// <summary>Calls a tool and parses its JSON reply; asserts it succeeded.</summary>
    public static async Task<JsonElement> Call(McpClient client, string tool, Dictionary<string, object?> args)
    {
        var result = await client.CallToolAsync(tool, args, cancellationToken: CancellationToken.None);
        string text = string.Concat(result.Content.OfType<TextContentBlock>().Select(c => c.Text));
        Assert.True(result.IsError is not true, $"{tool} failed: {text}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    /// <summary>Calls a tool that must fail and returns its error message.</summary>
    public static async Task<string> CallFails(McpClient client, string tool, Dictionary<string, object?> args)
    {
        var result = await client.CallToolAsync(tool, args, cancellationToken: CancellationToken.None);
        string text = string.Concat(result.Content.OfType<TextContentBlock>().Select(c => c.Text));
        Assert.True(result.IsError is true, $"{tool} should have failed but returned {text}");
        return text;
    }

    public static void Close(double expected, double actual, double tolerance = 1e-5) =>
        Assert.InRange(actual, expected - tolerance * (1 + Math.Abs(expected)), expected + tolerance * (1 + Math.Abs(expected)));
}
