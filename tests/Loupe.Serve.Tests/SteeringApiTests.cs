using System.Net;
using System.Text.Json;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Steering;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

public class SteeringApiTests
{
    const string Text = "Once upon a time, there was a little girl named Lily. She";

    /// <summary>Reads server-sent events until the stream ends or <paramref name="stop"/> says so.</summary>
    internal static async Task<List<(string Type, JsonElement Data)>> ReadEvents(HttpClient client, string url, Func<string, bool>? stop = null)
    {
        using var response = await client.GetAsync(url, HttpCompletionOption.ResponseHeadersRead);
        Assert.True(response.IsSuccessStatusCode, $"{url}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<(string, JsonElement)>();
        string? type = null;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) type = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                events.Add((type!, JsonDocument.Parse(line[6..]).RootElement.Clone()));
                if (stop?.Invoke(type!) == true) break;
            }
        }
        return events;
    }

    static int[] Side(List<(string Type, JsonElement Data)> events, string side) =>
        [.. events.Where(e => e.Type == "token" && e.Data.GetProperty("side").GetString() == side).Select(e => e.Data.GetProperty("id").GetInt32())];

    [RequiresSharedFact("models/stories260K")]
    public async Task Streamed_tokens_equal_the_library_steered_and_unsteered_generations()
    {
        var model = Servers.Stories;
        _ = FeatureStores.Real;
        await using var host = await Servers.StartAsync(model, new ServeOptions { FeatureStores = [FeatureStores.Real], GraphsDir = FeatureStores.Artifacts });
        using var client = Servers.Client(host);
        var sources = JsonDocument.Parse(await client.GetStringAsync("/api/steering/sources")).RootElement;
        string store = sources.GetProperty("stores")[0].GetProperty("id").GetString()!;
        var vector = Assert.Single(sources.GetProperty("vectors").EnumerateArray());
        Assert.Equal(FeatureStores.Hook, vector.GetProperty("hook").GetString());
        Assert.Equal(Path.Combine("vectors", "persona.safetensors"), vector.GetProperty("name").GetString());

        int[] input = model.Tokenizer!.Encode(Text);
        const int n = 20, feature = 3;
        var events = await ReadEvents(client, $"/api/steering/stream?text={Uri.EscapeDataString(Text)}&source=feature:{store}:{feature}&coeff=8&n={n}");
        Assert.Equal("start", events[0].Type);
        Assert.Equal("done", events[^1].Type);

        // Unsteered: `loupe run`'s greedy continuation. Steered: the library's run with W_dec[feature] × 8 at the store's hook.
        Assert.Equal(model.Generate([input], new GenerationOptions(n))[0], Side(events, "unsteered"));
        var (dict, _) = DictionaryFile.Load(FeatureStores.SaeFolder);
        float[] direction = dict.P.WDec.AsSpan(feature * 64, 64).ToArray();
        int[] steered = SteeringRun.Continue(model, input, new GenerationOptions(n), SteeringRun.Edit(FeatureStores.Hook, direction, 8f, false, SteeringPositions.All));
        Assert.Equal(steered, Side(events, "steered"));
        Assert.Equal(steered, events[^1].Data.GetProperty("steered").EnumerateArray().Select(t => t.GetInt32()));
        // The pieces add up to the decoded continuation.
        string pieces = string.Concat(events.Where(e => e.Type == "token" && e.Data.GetProperty("side").GetString() == "steered").Select(e => e.Data.GetProperty("text").GetString()));
        Assert.Equal(SteeringRun.Decode(model, [.. input, .. steered]), SteeringRun.Decode(model, input) + pieces);

        // A persona vector file by id.
        string vid = vector.GetProperty("id").GetString()!;
        var byVector = await ReadEvents(client, $"/api/steering/stream?text={Uri.EscapeDataString(Text)}&source=vector:{vid}&coeff=-6&n=12");
        int[] expected = SteeringRun.Continue(model, input, new GenerationOptions(12), SteeringRun.Edit(FeatureStores.Hook, FeatureStores.PersonaDirection, -6f, false, SteeringPositions.All));
        Assert.Equal(expected, Side(byVector, "steered"));
        // Scored as `loupe persona` scores its sweep.
        var persona = PersonaVector.Load(Path.Combine(FeatureStores.Artifacts, "vectors", "persona.safetensors"));
        var trait = byVector[^1].Data.GetProperty("trait");
        double want = PersonaReport.TraitProjection(model, persona, input, expected);
        Assert.InRange(trait.GetProperty("steered").GetDouble(), want - 1e-9 - 1e-9 * Math.Abs(want), want + 1e-9 + 1e-9 * Math.Abs(want));
        Assert.Equal(JsonValueKind.Null, events[^1].Data.GetProperty("trait").ValueKind); // an SAE feature has no trait

        // Never a path: anything but a known id is refused before the stream starts.
        foreach (string bad in new[] { "vector:../../etc/passwd", "vector:" + Uri.EscapeDataString("/etc/passwd"), $"feature:{store}:99999", "file:/etc/passwd" })
        {
            var response = await client.GetAsync($"/api/steering/stream?text=Hi&source={Uri.EscapeDataString(bad)}&coeff=1");
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        }
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task Closing_the_stream_cancels_the_generation()
    {
        var model = Servers.Stories;
        await using var host = await Servers.StartAsync(model, new ServeOptions { FeatureStores = [FeatureStores.Real] });
        using var client = Servers.Client(host);
        string store = JsonDocument.Parse(await client.GetStringAsync("/api/features/stores")).RootElement[0].GetProperty("id").GetString()!;
        string url = $"/api/steering/stream?text=Once&source=feature:{store}:1&coeff=4&n=256";
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var first = await ReadEvents(client, url, type => type == "token");
        Assert.Equal("token", first[^1].Type);
        // The model is free again at once: the next stream runs to its end (it would wait behind 2 × 256 tokens otherwise).
        var next = await ReadEvents(client, $"/api/steering/stream?text=Once&source=feature:{store}:1&coeff=4&n=3");
        Assert.Equal("done", next[^1].Type);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60));
    }
}
