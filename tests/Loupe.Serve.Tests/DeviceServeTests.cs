using System.Text.Json;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Steering;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

/// <summary>
/// The server over a model on the emulated device (the GPU kernels run on the CPU): every endpoint answers what the same
/// server over the CPU model answers, to a tolerance, and an OpenAI completion with monitors copies only the readings out.
/// </summary>
public sealed class DeviceServeTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
    const string Hook = "blocks.2.hook_resid_post";
    static readonly int[] s_prompt = [0, 360, 480, 161, 89, 311, 293, 431];

    HookedTransformer Gpt2OnDevice() => ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"), device.Backend);

    static void Close(double expected, double actual, string what, double tolerance = 1e-4) =>
        Assert.True(Math.Abs(expected - actual) <= tolerance * (1 + Math.Abs(expected)), $"{what}: cpu {expected}, device {actual}");

    /// <summary>Every number of two JSON answers within tolerance; strings, ids and shapes equal.</summary>
    static void SameJson(JsonElement cpu, JsonElement dev, string path, double tolerance = 1e-4)
    {
        Assert.True(cpu.ValueKind == dev.ValueKind, $"{path}: {cpu.ValueKind} vs {dev.ValueKind}");
        switch (cpu.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in cpu.EnumerateObject()) SameJson(p.Value, dev.GetProperty(p.Name), $"{path}.{p.Name}", tolerance);
                break;
            case JsonValueKind.Array:
                Assert.True(cpu.GetArrayLength() == dev.GetArrayLength(), $"{path}: length {cpu.GetArrayLength()} vs {dev.GetArrayLength()}");
                int i = 0;
                foreach (var (a, b) in cpu.EnumerateArray().Zip(dev.EnumerateArray())) SameJson(a, b, $"{path}[{i++}]", tolerance);
                break;
            case JsonValueKind.Number:
                Close(cpu.GetDouble(), dev.GetDouble(), path, tolerance);
                break;
            default:
                Assert.True(cpu.ToString() == dev.ToString(), $"{path}: '{cpu}' vs '{dev}'");
                break;
        }
    }

    static async Task<(JsonElement Cpu, JsonElement Device)> Both(HookedTransformer cpu, HookedTransformer dev, ServeOptions options, Func<HttpClient, Task<JsonElement>> ask)
    {
        await using var a = await Servers.StartAsync(cpu, options);
        await using var b = await Servers.StartAsync(dev, options);
        using var ca = Servers.Client(a);
        using var cb = Servers.Client(b);
        return (await ask(ca), await ask(cb));
    }

    [Fact]
    public async Task Model_and_prompt_views_on_the_device_equal_the_cpu()
    {
        using var model = Gpt2OnDevice();
        var (cpu, dev) = await Both(Servers.Gpt2, model, new ServeOptions(), async c =>
        {
            var view = JsonDocument.Parse(await c.GetStringAsync("/api/model")).RootElement;
            var prompt = await Servers.PostJson(c, "/api/prompt", new { tokens = s_prompt, top_k = 5 });
            return JsonDocument.Parse(JsonSerializer.Serialize(new { view, prompt })).RootElement;
        });
        var view = dev.GetProperty("view");
        Assert.Equal("emulated", view.GetProperty("device").GetString());
        Assert.Equal(device.Backend.Name, view.GetProperty("backend").GetString());
        Assert.Equal("cpu", cpu.GetProperty("view").GetProperty("device").GetString());
        Assert.True(cpu.GetProperty("view").GetProperty("device_memory_bytes").GetInt64() > 0);
        Assert.True(view.TryGetProperty("device_memory_bytes", out _)); // the emulated device reports none; a GPU its memory
        // Top-k, logit lens and DLA: the same tokens, probabilities and contributions.
        SameJson(cpu.GetProperty("prompt"), dev.GetProperty("prompt"), "prompt");
    }

    [Fact]
    public async Task Attention_patterns_and_head_detection_on_the_device_equal_the_cpu()
    {
        using var model = Gpt2OnDevice();
        // Two short repeated sequences: the emulated device runs a 63-token forward in about 4 s (the CPU in ~40 ms).
        var options = new ServeOptions { HeadDetection = new Loupe.Circuits.Heads.HeadDetectionSettings { Batch = 2, RepeatLength = 8 } };
        var (cpu, dev) = await Both(Servers.Gpt2, model, options, c => Servers.PostJson(c, "/api/attention", new { tokens = s_prompt }));
        SameJson(cpu, dev, "attention");
        Assert.Equal(2, dev.GetProperty("detection").GetProperty("sequences").GetInt32());
    }

    /// <summary>
    /// A fresh folder with a persona vector file (a fixed random direction at <see cref="Hook"/>) and a randomly initialised
    /// TopK SAE there (64 → 32, k = 8) as <c>res2/</c>: the device must read what the CPU reads, trained or not.
    /// </summary>
    static string Vectors(int d)
    {
        string dir = Directory.CreateTempSubdirectory("loupe-serve-device-").FullName;
        var rng = new Random(5);
        new PersonaVector(Hook, 2, [.. Enumerable.Range(0, d).Select(_ => (float)(rng.NextDouble() * 2 - 1))], 0.0).Save(Path.Combine(dir, "happy.safetensors"));
        var sae = new SparseDictionary(SaeShape.Sae(d, 32), new TopKActivation(8));
        sae.Initialize(seed: 3);
        SaeLensFormat.Save(Path.Combine(dir, "res2"), sae, new SaeLensConfig { DIn = d, DSae = 32, DOut = d, HookName = Hook, ApplyBDecToInput = sae.Shape.ApplyBDecToInput });
        return dir;
    }

    static object Completion(int n, int feature) => new
    {
        model = "gpt2", prompt = s_prompt, max_tokens = n, temperature = 0, logprobs = 3,
        loupe = new
        {
            steer = new[] { new { vector = "happy", coefficient = 2.0 } },
            monitors = new object[]
            {
                new { vector = "happy", name = "a", action = "flag", threshold = 0.0 }, new { vector = "happy", name = "b", action = "none", threshold = 1.0 },
                new { sae = "res2", feature, name = "f", action = "none", threshold = 0.5 },
            },
        },
    };

    [Fact]
    public async Task A_steered_completion_with_monitors_and_logprobs_on_the_device_equals_the_cpu_and_copies_only_readings()
    {
        const int n = 6;
        using var model = Gpt2OnDevice();
        var options = new ServeOptions { OpenAi = OpenAiMode.Only, VectorsDir = Vectors(model.Config.DModel) };
        await using var a = await Servers.StartAsync(Servers.Gpt2, options);
        await using var b = await Servers.StartAsync(model, options);
        using var ca = Servers.Client(a);
        using var cb = Servers.Client(b);
        // The SAE feature most active on the prompt (CPU), so that its monitor reads nonzero values.
        var (sae, _) = DictionaryFile.Load(Path.Combine(options.VectorsDir, "res2"));
        var acts = sae.Encode(Servers.Gpt2.RunWithCache(TokenBatch.Single(s_prompt), Hook).Cache[Hook].ToCpu().Span, s_prompt.Length);
        int feature = Enumerable.Range(0, 32).MaxBy(f => Enumerable.Range(0, s_prompt.Length).Sum(p => acts[p * 32 + f]));
        var cpu = await Servers.PostJson(ca, "v1/completions", Completion(n, feature));
        await Servers.PostJson(cb, "v1/completions", Completion(2, feature)); // warm-up: the model's own constants go up once

        var t = device.Backend.Transfers;
        var before = t.Snapshot();
        long bytesOut = t.BytesToHost(TransferKind.Data);
        var dev = await Servers.PostJson(cb, "v1/completions", Completion(n, feature));
        var copies = t.Snapshot() - before;

        Assert.Equal(cpu.GetProperty("loupe").GetProperty("tokens").ToString(), dev.GetProperty("loupe").GetProperty("tokens").ToString());
        SameJson(cpu.GetProperty("loupe").GetProperty("monitors"), dev.GetProperty("loupe").GetProperty("monitors"), "monitors", 1e-3);
        Assert.Contains(dev.GetProperty("loupe").GetProperty("monitors")[2].GetProperty("readings").EnumerateArray(), r => r.GetDouble() != 0); // the feature fires
        SameJson(cpu.GetProperty("choices")[0], dev.GetProperty("choices")[0], "choice", 1e-3); // text and log-probabilities
        // Per generated token: one float per monitor, and the top-3 log-probabilities with the picked token's in one copy
        // (7 floats, not d_vocab logits); the picked id and the logits' finite check are scalars.
        Assert.True(copies.Out(TransferKind.Data) == 4 * n, $"three readings and one log-probability read per token: {copies}");
        Assert.Equal((3L + 7) * n * sizeof(float), t.BytesToHost(TransferKind.Data) - bytesOut);
        Assert.True(copies.Out(TransferKind.Scalars) <= 2 * n, $"only picked ids and checks come out: {copies}");
        // In: the steering vector c·v and the two monitors' unit directions, once per request (the SAE went up with the
        // warm-up request, once per server); no activations.
        Assert.True(copies.In(TransferKind.Data) == 0, $"no activations go in: {copies}");
        Assert.True(copies.In(TransferKind.Weights) == 3, $"the edit's and the monitors' directions go in once each: {copies}");
        Assert.True(copies.Out(TransferKind.Weights) == 0, copies.ToString());
    }

    [Fact]
    public async Task A_graph_job_and_interventions_on_the_device_equal_the_cpu_and_the_transcoders_go_up_once()
    {
        using var model = Gpt2OnDevice();
        async Task<JsonElement> Job(HttpClient c, string name)
        {
            // Four tokens and 16 feature nodes: the emulated device takes seconds per attribution batch.
            string id = await JobApiTests.Start(c, "graph", new { tokens = s_prompt[..4], max_feature_nodes = 16, name });
            var events = await SteeringApiTests.ReadEvents(c, $"/api/jobs/{id}/events");
            Assert.True(events[^1].Type == "result", events[^1].Data.ToString());
            var r = events[^1].Data.GetProperty("data");
            return JsonDocument.Parse(JsonSerializer.Serialize(new
            {
                active = r.GetProperty("active_features").GetInt32(), nodes = r.GetProperty("feature_nodes").GetInt32(), kept = r.GetProperty("kept_nodes").GetInt32(),
                replacement = r.GetProperty("replacement_score").GetDouble(), completeness = r.GetProperty("completeness_score").GetDouble(),
            })).RootElement;
        }
        string cpuDir = GraphFixtures.NewFolder("device-graph-cpu"), devDir = GraphFixtures.NewFolder("device-graph-dev");
        await using var a = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { GraphsDir = cpuDir, TranscodersDir = GraphFixtures.Transcoders });
        await using var b = await Servers.StartAsync(model, new ServeOptions { GraphsDir = devDir, TranscodersDir = GraphFixtures.Transcoders });
        using var ca = Servers.Client(a);
        using var cb = Servers.Client(b);
        var cpu = await Job(ca, "g");
        var first = device.Backend.Transfers.Snapshot();
        var dev = await Job(cb, "g");
        var uploads = (device.Backend.Transfers.Snapshot() - first).In(TransferKind.Weights);
        Assert.True(uploads >= 1 + 2 * model.Config.NLayers, $"the first job uploads the transcoders: {uploads} weights");
        SameJson(cpu, dev, "graph", 1e-3);
        var nodes = (File: JsonDocument.Parse(File.ReadAllText(Path.Combine(cpuDir, "graphs", "g.json"))).RootElement.GetProperty("nodes"),
            Dev: JsonDocument.Parse(File.ReadAllText(Path.Combine(devDir, "graphs", "g.json"))).RootElement.GetProperty("nodes"));
        Assert.Equal(nodes.File.GetArrayLength(), nodes.Dev.GetArrayLength());

        // The Graph page's interventions through the same transcoders (frozen and not).
        foreach (bool frozen in new[] { false, true })
        {
            var edit = new { tokens = s_prompt, frozen, edits = new object[] { new { layer = 0, position = 5, feature = 14, value = 0f }, new { layer = 1, position = 7, feature = 6, value = 8f, mode = "scale" } }, top_k = 5 };
            SameJson(await Servers.PostJson(ca, "/api/graph/intervene", edit), await Servers.PostJson(cb, "/api/graph/intervene", edit), $"intervene (frozen {frozen})", 1e-3);
        }

        // A second job reuses the transcoders already on the device: the only weight it uploads is the prompt's demeaned
        // unembedding columns (one per attribution), where the first job also uploaded every layer's encoder and decoder.
        var before = device.Backend.Transfers.Snapshot();
        SameJson(dev, await Job(cb, "h"), "second graph", 1e-6);
        var copies = device.Backend.Transfers.Snapshot() - before;
        Assert.True(copies.In(TransferKind.Weights) == 1, $"the transcoders are not uploaded again: {copies}");
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task Feature_search_and_the_steering_stream_on_the_device_equal_the_cpu()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"), device.Backend);
        const string text = "Once upon a time, there was a little girl";
        var tokens = Servers.Stories.Tokenizer!.Encode(text);
        var options = new ServeOptions { FeatureStores = [FeatureStores.Real], GraphsDir = FeatureStores.Artifacts };
        var (cpu, dev) = await Both(Servers.Stories, model, options, async c =>
        {
            var sources = JsonDocument.Parse(await c.GetStringAsync("/api/steering/sources")).RootElement;
            string store = sources.GetProperty("stores")[0].GetProperty("id").GetString()!;
            string vector = sources.GetProperty("vectors")[0].GetProperty("id").GetString()!;
            var search = await Servers.PostJson(c, $"/api/features/{store}/search-text", new { tokens, per_token = 8 });
            var byFeature = await SteeringApiTests.ReadEvents(c, $"/api/steering/stream?text={Uri.EscapeDataString(text)}&source=feature:{store}:3&coeff=8&n=6");
            var byVector = await SteeringApiTests.ReadEvents(c, $"/api/steering/stream?text={Uri.EscapeDataString(text)}&source=vector:{vector}&coeff=-6&n=6");
            return JsonDocument.Parse(JsonSerializer.Serialize(new { search, feature = byFeature[^1].Data, vector = byVector[^1].Data })).RootElement;
        });
        SameJson(cpu, dev, "search and steering", 1e-3);
        Assert.Contains(dev.GetProperty("search").GetProperty("features").EnumerateArray(), row => row.GetArrayLength() > 0);
    }
}
