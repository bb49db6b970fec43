using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Loupe.Causal.Lens;
using Loupe.Causal.Patching;
using Loupe.Mcp;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Testing;
using ModelContextProtocol.Client;
using static Loupe.Mcp.Tests.Mcp;

namespace Loupe.Mcp.Tests;

/// <summary><c>loupe mcp</c> as a real process: an MCP client launches it over stdio, and talks to its <c>--http</c> transport.</summary>
public sealed class McpProcessTests
{
    static readonly int[] Tokens = [0, 360, 480, 161, 89, 311, 293, 431];

    /// <summary>The CLI built beside these tests (the project references it).</summary>
    static readonly string Loupe = Path.Combine(AppContext.BaseDirectory, "loupe.dll");

    static string Dotnet => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    [Fact]
    public async Task A_client_launches_loupe_mcp_over_stdio_and_calls_tools()
    {
        var transport = new StdioClientTransport(new StdioClientTransportOptions
        {
            Name = "loupe",
            Command = Dotnet,
            Arguments = [Loupe, "mcp", "--model", McpFixture.ModelDir, "--transcoders", McpFixture.TranscodersDir],
        });
        await using var client = await McpClient.CreateAsync(transport);
        Assert.Equal("loupe", client.ServerInfo?.Name);
        var tools = await client.ListToolsAsync();
        Assert.Contains("patch", tools.Select(t => t.Name));
        Assert.True(tools.Count >= 9);

        var reply = await Call(client, "run", new() { ["tokens"] = Tokens, ["topK"] = 3 });
        using var model = ModelLoader.LoadFolder(McpFixture.ModelDir);
        var expected = NextTokens.TopK(model, Tokens, 3)[0];
        Assert.Equal(expected.Select(t => t.Token), reply.GetProperty("topNextTokens").EnumerateArray().Select(t => t.GetProperty("id").GetInt32()));
        Close(expected[0].Probability, reply.GetProperty("topNextTokens")[0].GetProperty("value").GetDouble());

        Assert.Contains("not a hook point", await CallFails(client, "cache_hook", new() { ["hook"] = "nope", ["tokens"] = Tokens }));
        reply = await Call(client, "attribute", new() { ["tokens"] = Tokens });
        Assert.Equal(38, reply.GetProperty("keptNodes").GetInt32());
    }

    [Fact]
    public async Task The_http_transport_answers_list_tools()
    {
        int port = FreePort();
        using var server = Process.Start(new ProcessStartInfo(Dotnet)
        {
            // On the emulated device: `loupe mcp --device` loads the model there (the tools' answers there: McpDeviceTests).
            ArgumentList = { Loupe, "mcp", "--model", McpFixture.ModelDir, "--http", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--device", "emulated" },
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        })!;
        try
        {
            var ready = new TaskCompletionSource();
            var log = new System.Text.StringBuilder();
            server.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); if (e.Data?.Contains("streamable HTTP", StringComparison.Ordinal) == true) ready.TrySetResult(); };
            server.BeginErrorReadLine();
            server.BeginOutputReadLine();
            await Task.WhenAny(ready.Task, server.WaitForExitAsync(), Task.Delay(TimeSpan.FromSeconds(60)));
            Assert.True(ready.Task.IsCompleted, $"the server did not start: {log}");
            await using var client = await McpClient.CreateAsync(new HttpClientTransport(new HttpClientTransportOptions { Endpoint = new Uri($"http://127.0.0.1:{port}/") }));
            var tools = await client.ListToolsAsync();
            Assert.Contains("run", tools.Select(t => t.Name));
            Assert.Contains("monitor", tools.Select(t => t.Name));
            var info = await Call(client, "model_info", []);
            Assert.Equal(3, info.GetProperty("layers").GetInt32());
            Assert.Equal("emulated", info.GetProperty("device").GetString());
            lock (log) Assert.Contains("on emulated over streamable HTTP", log.ToString());
        }
        finally
        {
            if (!server.HasExited) server.Kill();
            await server.WaitForExitAsync();
        }
    }

    [Fact]
    public async Task The_http_transport_listens_on_loopback_only()
    {
        using var model = ModelLoader.LoadFolder(McpFixture.ModelDir);
        int port = FreePort();
        await using var app = LoupeMcpServer.Http(LoupeMcpServer.Tools(model, McpArtifacts.Index([], null, [])), port);
        await app.StartAsync();
        Assert.All(app.Urls, u => Assert.StartsWith("http://127.0.0.1:", u));
        await using var client = await McpClient.CreateAsync(new HttpClientTransport(new HttpClientTransportOptions { Endpoint = new Uri(app.Urls.First()) }));
        Assert.Contains("cache_hook", (await client.ListToolsAsync()).Select(t => t.Name));
        await app.StopAsync();
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task Stories260K_prompts_run_and_patch_as_the_library_does()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        using var stop = new CancellationTokenSource();
        Task? server = null;
        await using var client = await McpFixture.Connect(LoupeMcpServer.Tools(model, McpArtifacts.Index([], null, [])), stop.Token, s => server = s);
        const string prompt = "Once upon a time, there was a little girl named Lily. One day,";
        var reply = await Call(client, "run", new() { ["prompt"] = prompt, ["topK"] = 3, ["maxNewTokens"] = 8 });
        int[] ids = model.Tokenizer!.Encode(prompt);
        Assert.Equal(ids, reply.GetProperty("tokens").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(NextTokens.TopK(model, ids, 3)[0].Select(t => t.Token), reply.GetProperty("topNextTokens").EnumerateArray().Select(t => t.GetProperty("id").GetInt32()));
        Assert.False(string.IsNullOrWhiteSpace(reply.GetProperty("continuationText").GetString()));

        const string corrupt = "Once upon a time, there was a little girl named Tim. One day,";
        reply = await Call(client, "patch", new() { ["clean"] = prompt, ["corrupt"] = corrupt, ["answer"] = "Lily", ["wrong"] = "Tim" });
        int lily = model.Tokenizer.Encode("Lily", addSpecialTokens: false).Single(), tim = model.Tokenizer.Encode("Tim", addSpecialTokens: false).Single();
        var expected = ActivationPatching.Sweep(model, TokenBatch.Single(ids), TokenBatch.Single(model.Tokenizer.Encode(corrupt)), new LogitDiff(lily, tim, -1), PatchTarget.ResidPre);
        Close(expected.CleanValue, reply.GetProperty("cleanValue").GetDouble());
        var cells = reply.GetProperty("cells").EnumerateArray().Select(c => c.GetProperty("value").GetDouble()).ToArray();
        Assert.Equal(expected.Values.Length, cells.Length);
        for (int i = 0; i < cells.Length; i++) Close(expected.Values[i], cells[i], 1e-4);
        Assert.Contains("exactly one token", await CallFails(client, "patch", new() { ["clean"] = prompt, ["corrupt"] = corrupt, ["answer"] = "Lily and Tim" }));
        await stop.CancelAsync();
    }

    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
