using System.Net;
using System.Text.Json;
using Loupe.Causal.Lens;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

public class ApiTests
{
    // The model's own argmax at the last position, read from the raw logits (what `loupe run` prints first).
    static int ArgMaxLast(HookedTransformer model, int[] ids)
    {
        var logits = model.Run(ids).Logits.ToCpu().Span;
        int V = model.Config.VocabOut, offset = (ids.Length - 1) * V, best = 0;
        for (int i = 1; i < V; i++) if (logits[offset + i] > logits[offset + best]) best = i;
        return best;
    }

    [Fact]
    public async Task Prompt_top_token_matches_the_library_on_the_reference_gpt2()
    {
        var model = Servers.Gpt2;
        await using var host = await Servers.StartAsync(model);
        using var client = Servers.Client(host);
        int[] ids = [82, 87, 74, 39, 5];
        var r = await Servers.PostJson(client, "/api/prompt", new { tokens = ids, top_k = 5 });
        int shown = r.GetProperty("top_k")[ids.Length - 1][0].GetProperty("id").GetInt32();
        Assert.Equal(ArgMaxLast(model, ids), shown);
        Assert.Equal(NextTokens.TopK(model, ids, 1)[0][0].Token, shown);
        double p = r.GetProperty("top_k")[ids.Length - 1][0].GetProperty("prob").GetDouble();
        Assert.InRange(p, NextTokens.TopK(model, ids, 1)[0][0].Probability - 1e-6, NextTokens.TopK(model, ids, 1)[0][0].Probability + 1e-6);
        // The lens's final stage is the model itself, and DLA explains that same token.
        var lens = r.GetProperty("lens");
        int stages = lens.GetProperty("stages").GetArrayLength();
        Assert.Equal(model.Config.NLayers + 1, stages);
        Assert.Equal(shown, lens.GetProperty("top_token")[stages - 1][ids.Length - 1].GetInt32());
        Assert.Equal(shown, r.GetProperty("dla").GetProperty("token").GetProperty("id").GetInt32());
        var dla = DirectLogitAttribution.Compute(model, TokenBatch.Single(ids), LogitDirection.Token(model, shown));
        double logit = r.GetProperty("dla").GetProperty("logit").GetDouble();
        Assert.InRange(logit, dla.PreCapLogitDiff[0] - 1e-6 - 1e-6 * Math.Abs(dla.PreCapLogitDiff[0]), dla.PreCapLogitDiff[0] + 1e-6 + 1e-6 * Math.Abs(dla.PreCapLogitDiff[0]));
    }

    [Fact]
    public async Task Prompt_shows_the_servers_tuned_lens()
    {
        var model = Servers.Gpt2;
        int d = model.Config.DModel, layers = model.Config.NLayers;
        var random = new Random(8);
        var lens = TunedLens.FromTranslators(
            [.. Enumerable.Range(0, layers).Select(_ => Enumerable.Range(0, d * d).Select(_ => (float)(random.NextDouble() - 0.5) * 0.1f).ToArray())],
            [.. Enumerable.Range(0, layers).Select(_ => Enumerable.Range(0, d).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray())]);
        string dir = Directory.CreateTempSubdirectory("loupe-serve-tuned").FullName;
        try
        {
            lens.Save(dir);
            int[] ids = [82, 87, 74, 39, 5];
            await using (var host = await Servers.StartAsync(model, new ServeOptions { TunedLensPath = dir }))
            {
                using var client = Servers.Client(host);
                var r = await Servers.PostJson(client, "/api/prompt", new { tokens = ids, top_k = 3 });
                var expected = LogitLens.Grid(model, TokenBatch.Single(ids), tuned: TunedLens.Load(dir));
                var tuned = r.GetProperty("tuned_lens");
                for (int s = 0; s <= layers; s++)
                    for (int p = 0; p < ids.Length; p++)
                    {
                        Assert.Equal(expected.TopToken[s][p], tuned.GetProperty("top_token")[s][p].GetInt32());
                        Assert.Equal(expected.TopProb[s][p], tuned.GetProperty("top_prob")[s][p].GetDouble(), 1e-9);
                    }
                // The logit lens beside it is untouched.
                Assert.Equal(LogitLens.Grid(model, TokenBatch.Single(ids)).TopToken[0][1], r.GetProperty("lens").GetProperty("top_token")[0][1].GetInt32());
            }
            await using (var host = await Servers.StartAsync(model))
            {
                using var client = Servers.Client(host);
                var r = await Servers.PostJson(client, "/api/prompt", new { tokens = ids, top_k = 3 });
                Assert.Equal(JsonValueKind.Null, r.GetProperty("tuned_lens").ValueKind);
            }
            // A lens for another model stops the server before it listens, naming the lens.
            TunedLens.FromTranslators([new float[d * d]], [new float[d]]).Save(dir);
            var error = await Assert.ThrowsAsync<InputError>(() => Servers.StartAsync(model, new ServeOptions { TunedLensPath = dir }));
            Assert.Contains("1 translators", error.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Lens_grid_agrees_with_the_single_position_lens_at_every_stage()
    {
        var model = Servers.Gpt2;
        var batch = TokenBatch.Single(82, 87, 74, 39, 5, 17);
        var grid = LogitLens.Grid(model, batch);
        for (int p = 0; p < batch.Length; p++)
        {
            var one = LogitLens.Run(model, batch, grid.FinalTopToken[p], position: p);
            for (int s = 0; s < one.Stages.Length; s++)
            {
                Assert.Equal(one.Stages[s].TopToken, grid.TopToken[s][p]);
                Assert.InRange(grid.FinalTopProb[s][p], one.Stages[s].AnswerProb - 1e-9, one.Stages[s].AnswerProb + 1e-9);
            }
            Assert.Equal(0, one.Stages[^1].AnswerRank);
        }
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task Prompt_top_token_matches_the_library_on_stories260K()
    {
        var model = Servers.Stories;
        await using var host = await Servers.StartAsync(model);
        using var client = Servers.Client(host);
        const string text = "Once upon a time, there was a little girl named Lily. She";
        var r = await Servers.PostJson(client, "/api/prompt", new { text, top_k = 10 });
        int[] ids = model.Tokenizer!.Encode(text);
        Assert.Equal(ids, r.GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("id").GetInt32()));
        var top = r.GetProperty("top_k")[ids.Length - 1];
        Assert.Equal(10, top.GetArrayLength());
        Assert.Equal(ArgMaxLast(model, ids), top[0].GetProperty("id").GetInt32());
        // Every position's list is a distribution's head: decreasing, within [0, 1].
        foreach (var row in r.GetProperty("top_k").EnumerateArray())
        {
            var probs = row.EnumerateArray().Select(x => x.GetProperty("prob").GetDouble()).ToArray();
            Assert.All(probs, p => Assert.InRange(p, 0, 1));
            Assert.True(probs.Zip(probs.Skip(1)).All(x => x.First >= x.Second));
        }
        var model_ = JsonDocument.Parse(await client.GetStringAsync("/api/model")).RootElement;
        Assert.Equal("llama", model_.GetProperty("family").GetString());
        Assert.Equal(model.Config.NLayers, model_.GetProperty("layers").GetInt32());
    }

    [Fact]
    public async Task Attention_rows_sum_to_one_and_detection_scores_cover_every_head()
    {
        var model = Servers.Gpt2;
        await using var host = await Servers.StartAsync(model);
        using var client = Servers.Client(host);
        int[] ids = [3, 14, 15, 92, 65, 35, 3, 14];
        var r = await Servers.PostJson(client, "/api/attention", new { tokens = ids });
        var patterns = r.GetProperty("patterns");
        Assert.Equal(model.Config.NLayers, patterns.GetArrayLength());
        foreach (var layer in patterns.EnumerateArray())
        {
            Assert.Equal(model.Config.NHeads, layer.GetArrayLength());
            foreach (var head in layer.EnumerateArray())
            {
                int q = 0;
                foreach (var row in head.EnumerateArray())
                {
                    var w = row.EnumerateArray().Select(x => x.GetDouble()).ToArray();
                    Assert.Equal(ids.Length, w.Length);
                    Assert.InRange(w.Sum(), 1 - 1e-4, 1 + 1e-4);
                    Assert.All(w.Skip(q + 1), v => Assert.Equal(0, v)); // causal
                    q++;
                }
            }
        }
        var detection = r.GetProperty("detection");
        Assert.Equal(3, detection.GetProperty("kinds").GetArrayLength());
        Assert.Equal(model.Config.NLayers, detection.GetProperty("scores")[2].GetArrayLength());
    }

    [Fact]
    public async Task Prompt_errors_are_400_with_a_message()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2);
        using var client = Servers.Client(host);
        foreach (var body in new object[] { new { text = "hi" }, new { tokens = new[] { 999999 } }, new { }, new { tokens = Enumerable.Range(0, 300).ToArray() } })
        {
            var response = await client.PostAsync("/api/prompt", JsonContent(body));
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            Assert.Contains("error", await response.Content.ReadAsStringAsync());
        }
    }

    static StringContent JsonContent(object body) => new(JsonSerializer.Serialize(body), System.Text.Encoding.UTF8, "application/json");

    [Fact]
    public async Task Jobs_stream_progress_and_a_result_and_can_be_cancelled()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2);
        using var client = Servers.Client(host);
        var started = await client.PostAsync("/api/jobs/head-detection", JsonContent(new { sequences = 3, repeat_length = 5 }));
        Assert.Equal(HttpStatusCode.Accepted, started.StatusCode);
        string id = JsonDocument.Parse(await started.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString()!;
        var events = await ReadEvents(client, id);
        Assert.Equal(["progress", "progress", "progress", "result"], events.Select(e => e.Type));
        Assert.Equal(3, events[^1].Data.GetProperty("data").GetProperty("sequences").GetInt32());

        // A long job, cancelled after its first progress event. Its 256 forwards of a tiny model can finish before the cancel
        // lands on a loaded CI machine (a "result" then): up to three tries. JobManagerTests checks cancelling without the race.
        List<Sse> cancelled = [];
        for (int attempt = 0; attempt < 3; attempt++)
        {
            var longJob = await client.PostAsync("/api/jobs/head-detection", JsonContent(new { sequences = 256, repeat_length = 20 }));
            string longId = JsonDocument.Parse(await longJob.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString()!;
            cancelled = await ReadEvents(client, longId, cancelAfterFirst: true);
            if (cancelled[^1].Type == "cancelled") break;
        }
        Assert.Equal("cancelled", cancelled[^1].Type);
        Assert.True(cancelled.Count(e => e.Type == "progress") < 256);
        Assert.Equal(HttpStatusCode.NotFound, (await client.DeleteAsync("/api/jobs/0123456789abcdef")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await client.PostAsync("/api/jobs/nope", JsonContent(new { }))).StatusCode);
    }

    [Fact]
    public async Task Running_jobs_are_bounded()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { MaxRunningJobs = 1 });
        using var client = Servers.Client(host);
        var first = await client.PostAsync("/api/jobs/head-detection", JsonContent(new { sequences = 256, repeat_length = 20 }));
        var second = await client.PostAsync("/api/jobs/head-detection", JsonContent(new { sequences = 1 }));
        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        Assert.Equal((HttpStatusCode)429, second.StatusCode);
        string id = JsonDocument.Parse(await first.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString()!;
        await client.DeleteAsync($"/api/jobs/{id}");
    }

    internal sealed record Sse(string Type, JsonElement Data);

    static async Task<List<Sse>> ReadEvents(HttpClient client, string id, bool cancelAfterFirst = false)
    {
        using var response = await client.GetAsync($"/api/jobs/{id}/events", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<Sse>();
        string? type = null;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.StartsWith("event: ")) type = line[7..];
            else if (line.StartsWith("data: "))
            {
                events.Add(new Sse(type!, JsonDocument.Parse(line[6..]).RootElement));
                if (type is "result" or "error" or "cancelled") break;
                if (cancelAfterFirst && events.Count == 1) Assert.Equal(HttpStatusCode.Accepted, (await client.DeleteAsync($"/api/jobs/{id}")).StatusCode);
            }
        }
        return events;
    }

    [Fact]
    public async Task OpenApi_document_lists_the_endpoints()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2);
        using var client = Servers.Client(host);
        var doc = JsonDocument.Parse(await client.GetStringAsync("/api/openapi.json")).RootElement;
        var paths = doc.GetProperty("paths").EnumerateObject().Select(p => p.Name).ToHashSet();
        foreach (var p in new[] { "/api/model", "/api/prompt", "/api/attention", "/api/artifacts", "/api/artifacts/{id}", "/api/jobs/{kind}", "/api/jobs/{id}/events" })
            Assert.Contains(p, paths);
    }
}
