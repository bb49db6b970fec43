using System.Text.Json;
using Loupe.Mcp;
using Loupe.Models;
using Loupe.Tensors.Backends;
using Loupe.Testing;
using static Loupe.Mcp.Tests.Mcp;

namespace Loupe.Mcp.Tests;

/// <summary>
/// The server over the fixture model on the emulated device (the GPU kernels run on the CPU), as <c>loupe mcp --device</c>
/// serves it: every tool that runs the model answers what the CPU server answers, to a tolerance. (feature_lookup and
/// explain_feature read a feature store and ask an endpoint; they run no model.)
/// </summary>
[Collection("mcp")]
public sealed class McpDeviceTests(McpFixture f) : IClassFixture<McpFixture>
{
    static readonly int[] Tokens = [0, 360, 480, 161, 89, 311];

    [Fact]
    public async Task Every_model_tool_on_the_emulated_device_answers_what_the_cpu_server_answers()
    {
        using var device = new EmulatedDevice();
        using var model = ModelLoader.LoadFolder(McpFixture.ModelDir, device.Backend);
        using var stop = new CancellationTokenSource();
        Task? server = null;
        var artifacts = McpArtifacts.Index([f.SaeDir], McpFixture.TranscodersDir, [f.ArtifactsDir]);
        await using var client = await McpFixture.Connect(LoupeMcpServer.Tools(model, artifacts), stop.Token, s => server = s);
        try
        {
            var info = await Call(client, "model_info", []);
            Assert.Equal("emulated", info.GetProperty("device").GetString());
            Assert.Equal(device.Backend.Name, info.GetProperty("backend").GetString());
            Assert.Equal("cpu", (await Call(f.Client, "model_info", [])).GetProperty("device").GetString());

            int[] corrupt = [.. Tokens[..3], 300];
            (string Tool, Dictionary<string, object?> Args)[] calls =
            [
                ("run", new() { ["tokens"] = Tokens, ["topK"] = 5, ["maxNewTokens"] = 3 }),
                ("cache_hook", new() { ["hook"] = "blocks.1.hook_resid_post", ["tokens"] = Tokens, ["position"] = -1 }),
                ("cache_hook", new() { ["hook"] = "blocks.1.attn.hook_pattern", ["tokens"] = Tokens }),
                // Short prompts where the emulated device is slow (a sweep is a pass per cell; a graph a backward per batch of rows).
                ("patch", new() { ["cleanTokens"] = Tokens[..4], ["corruptTokens"] = corrupt, ["answerId"] = 17, ["wrongId"] = 42, ["top"] = 4 }),
                ("attribute", new() { ["tokens"] = Tokens[..3], ["top"] = 4 }),
                ("steer", new() { ["tokens"] = Tokens, ["sae"] = "sae-l1", ["feature"] = 2, ["coefficient"] = 40f, ["maxNewTokens"] = 3 }),
                ("steer", new() { ["tokens"] = Tokens, ["vector"] = "persona.safetensors", ["coefficient"] = -30f, ["maxNewTokens"] = 3 }),
                ("monitor", new() { ["monitor"] = "monitors/wobble.safetensors", ["tokens"] = Tokens }),
                ("monitor", new() { ["monitor"] = "persona.safetensors", ["tokens"] = Tokens, ["generate"] = 2 }),
            ];
            long firstGraphWeights = 0;
            foreach (var (tool, args) in calls)
            {
                long before = device.Backend.Transfers.BytesToDevice(TransferKind.Weights);
                SameJson(await Call(f.Client, tool, args), await Call(client, tool, args), tool);
                if (tool == "attribute") firstGraphWeights = device.Backend.Transfers.BytesToDevice(TransferKind.Weights) - before;
            }
            // A second graph reuses the transcoders uploaded by the first: it uploads only the prompt's unembedding columns.
            long again = device.Backend.Transfers.BytesToDevice(TransferKind.Weights);
            await Call(client, "attribute", new() { ["tokens"] = Tokens[..3], ["top"] = 4 });
            again = device.Backend.Transfers.BytesToDevice(TransferKind.Weights) - again;
            Assert.True(again > 0 && again < firstGraphWeights / 4, $"the second graph uploaded {again} bytes of weights, the first {firstGraphWeights}");
        }
        finally
        {
            await stop.CancelAsync();
            if (server is not null) await server.WaitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => { });
        }
    }


    static bool Close(double x, double y) => Math.Abs(x - y) <= 1e-4 * (1 + Math.Abs(x));

    /// <summary>
    /// A ranking (cells by value, descending effect): the same values rank by rank. Which cell holds a value may differ only
    /// where the value ties — with another listed cell, or with the last one (then with cells the cut left out): patching
    /// a position the answer does not read gives the clean value exactly, so such cells tie in exact arithmetic and their
    /// order is the rounding's (it differed between OpenBLAS's kernels and the device's).
    /// </summary>
    static void SameRanking(JsonElement cpu, JsonElement dev, string path)
    {
        var c = cpu.EnumerateArray().ToArray();
        var d = dev.EnumerateArray().ToArray();
        Assert.True(c.Length == d.Length, $"{path}: length {c.Length} on the cpu, {d.Length} on the device");
        var values = c.Select(cell => cell.GetProperty("value").GetDouble()).ToArray();
        for (int i = 0; i < c.Length; i++)
        {
            SameJson(c[i].GetProperty("value"), d[i].GetProperty("value"), $"{path}[{i}].value");
            bool tied = Close(values[i], values[^1]) || values.Where((v, j) => j != i && Close(values[i], v)).Any();
            if (!tied) SameJson(c[i], d[i], $"{path}[{i}]");
        }
    }

    /// <summary>Every number within 1e-4 relative (absolute near 0); strings, ids, booleans and shapes equal.</summary>
    static void SameJson(JsonElement cpu, JsonElement dev, string path)
    {
        Assert.True(cpu.ValueKind == dev.ValueKind, $"{path}: {cpu.ValueKind} on the cpu, {dev.ValueKind} on the device");
        switch (cpu.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in cpu.EnumerateObject()) SameJson(p.Value, dev.GetProperty(p.Name), $"{path}.{p.Name}");
                break;
            case JsonValueKind.Array when path.EndsWith(".topCells", StringComparison.Ordinal):
                SameRanking(cpu, dev, path);
                break;
            case JsonValueKind.Array:
                Assert.True(cpu.GetArrayLength() == dev.GetArrayLength(), $"{path}: length {cpu.GetArrayLength()} on the cpu, {dev.GetArrayLength()} on the device");
                int i = 0;
                foreach (var (a, b) in cpu.EnumerateArray().Zip(dev.EnumerateArray())) SameJson(a, b, $"{path}[{i++}]");
                break;
            case JsonValueKind.Number:
                double x = cpu.GetDouble(), y = dev.GetDouble();
                Assert.True(Close(x, y), $"{path}: cpu {x}, device {y}");
                break;
            default:
                Assert.True(cpu.ToString() == dev.ToString(), $"{path}: '{cpu}' on the cpu, '{dev}' on the device");
                break;
        }
    }
}
