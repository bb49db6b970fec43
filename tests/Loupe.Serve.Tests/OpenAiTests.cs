using System.ClientModel;
using System.Net;
using System.Net.Http.Json;
using System.Numerics.Tensors;
using System.Text.Json;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Serve.Endpoints;
using Loupe.Steering;
using Loupe.Testing;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Models;

namespace Loupe.Serve.Tests;

/// <summary><c>loupe serve --openai</c> driven by the official OpenAI .NET client (and raw HTTP for the legacy completions API).</summary>
public class OpenAiTests
{
    const string Hook = "blocks.2.hook_resid_post";

    static OpenAIClientOptions ClientOptions(ServeHost host) => new() { Endpoint = new Uri(host.Url!, "v1/") };

    static async Task<ServeHost> Start(HookedTransformer model, string? vectors = null) =>
        await Servers.StartAsync(model, new ServeOptions { OpenAi = OpenAiMode.Only, VectorsDir = vectors });

    /// <summary>A persona vector file with a fixed random direction at <see cref="Hook"/> (threshold 0), in a fresh folder.</summary>
    static (string Folder, PersonaVector Persona) VectorFolder(HookedTransformer model, int seed = 5)
    {
        string dir = Directory.CreateTempSubdirectory("loupe-openai-").FullName;
        var rng = new Random(seed);
        var v = Enumerable.Range(0, model.Config.DModel).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var persona = new PersonaVector(Hook, 2, v, 0.0);
        persona.Save(Path.Combine(dir, "happy.safetensors"));
        return (dir, PersonaVector.Load(Path.Combine(dir, "happy.safetensors")));
    }

    static int[] Greedy(HookedTransformer m, int[] ids, int n, RunOptions? options = null) =>
        m.Generate([ids], new GenerationOptions(n, 0f), options)[0];

    [RequiresSharedFact("models/stories260K")]
    public async Task OfficialClientListsModelsAndChatGreedyEqualsTheLibrary()
    {
        var m = Servers.Stories;
        await using var host = await Start(m);
        var models = new OpenAIModelClient(new ApiKeyCredential("unused"), ClientOptions(host));
        Assert.Equal(["stories260K"], (await models.GetModelsAsync()).Value.Select(x => x.Id));

        var chat = new ChatClient("stories260K", new ApiKeyCredential("unused"), ClientOptions(host));
        ChatMessage[] messages = [new UserChatMessage("Once upon a time")];
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 24, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 };
        var result = await chat.CompleteChatAsync(messages, options);
        var completion = result.Value;

        // Without a chat template the prompt is "role: content" lines and "assistant:".
        int[] ids = m.Tokenizer!.Encode(OpenAiEndpoints.PlainChat([("user", "Once upon a time")]));
        int[] expected = Greedy(m, ids, 24);
        string expectedText = m.Tokenizer.Decode(expected.TakeWhile(t => t != m.Config.EosTokenId).ToArray(), skipSpecialTokens: true);
        Assert.Equal(expectedText, completion.Content[0].Text);
        Assert.Equal(ids.Length, completion.Usage.InputTokenCount);
        Assert.Equal(expected.Length, completion.Usage.OutputTokenCount);
        using var raw = JsonDocument.Parse(result.GetRawResponse().Content);
        Assert.Equal(expected, raw.RootElement.GetProperty("loupe").GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));

        // Logprobs: greedy picks the most likely token, so each token's logprob is its step's top alternative.
        Assert.Equal(expected.Length, completion.ContentTokenLogProbabilities.Count);
        foreach (var lp in completion.ContentTokenLogProbabilities)
        {
            Assert.Equal(3, lp.TopLogProbabilities.Count);
            Assert.InRange(lp.LogProbability, lp.TopLogProbabilities[0].LogProbability - 1e-5, lp.TopLogProbabilities[0].LogProbability + 1e-5);
            Assert.True(lp.TopLogProbabilities[1].LogProbability <= lp.TopLogProbabilities[0].LogProbability);
            Assert.True(lp.LogProbability <= 0);
        }
        // The first token's logprob is the library's log-softmax at the prompt's last position.
        var logits = m.Run(ids).Logits.Span.Slice((ids.Length - 1) * m.Config.VocabOut, m.Config.VocabOut).ToArray();
        double logZ = logits.Max() + Math.Log(logits.Sum(x => Math.Exp(x - logits.Max())));
        Assert.InRange(completion.ContentTokenLogProbabilities[0].LogProbability, logits[expected[0]] - logZ - 1e-4, logits[expected[0]] - logZ + 1e-4);

        // Streaming gives the same text, chunk by chunk.
        var streamed = new System.Text.StringBuilder();
        ChatFinishReason? finish = null;
        int chunks = 0;
        await foreach (var update in chat.CompleteChatStreamingAsync(messages, options))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            finish ??= update.FinishReason;
            chunks++;
        }
        Assert.Equal(completion.Content[0].Text, streamed.ToString());
        Assert.Equal(completion.FinishReason, finish);
        Assert.True(chunks >= expected.Length, $"{chunks} chunks for {expected.Length} tokens");
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task LegacyCompletionsMatchLoupeRunAndGiveLogprobs()
    {
        var m = Servers.Stories;
        await using var host = await Start(m);
        using var http = Servers.Client(host);
        const string prompt = "Once upon a time, there was a little girl named Lily.";
        var body = await Servers.PostJson(http, "v1/completions", new { model = "stories260K", prompt, max_tokens = 30, temperature = 0, logprobs = 2 });
        int[] ids = m.Tokenizer!.Encode(prompt); // as `loupe run` encodes its prompt
        int[] expected = Greedy(m, ids, 30);
        var choice = body.GetProperty("choices")[0];
        Assert.Equal(m.Tokenizer.Decode(expected.TakeWhile(t => t != m.Config.EosTokenId).ToArray(), skipSpecialTokens: true), choice.GetProperty("text").GetString());
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        var lp = choice.GetProperty("logprobs");
        Assert.Equal(expected.Length, lp.GetProperty("tokens").GetArrayLength());
        Assert.All(lp.GetProperty("top_logprobs").EnumerateArray(), t => Assert.Equal(2, t.EnumerateObject().Count()));
        Assert.Equal(expected.Length, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        // Stop strings cut the text before the stop string.
        string full = choice.GetProperty("text").GetString()!;
        string stop = full.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2];
        var stopped = await Servers.PostJson(http, "v1/completions", new { model = "stories260K", prompt, max_tokens = 30, temperature = 0, stop = new[] { stop } });
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], stopped.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal("stop", stopped.GetProperty("choices")[0].GetProperty("finish_reason").GetString());

        // Seeded sampling repeats.
        var a = await Servers.PostJson(http, "v1/completions", new { model = "stories260K", prompt, max_tokens = 20, temperature = 0.9, top_p = 0.9, seed = 3 });
        var b = await Servers.PostJson(http, "v1/completions", new { model = "stories260K", prompt, max_tokens = 20, temperature = 0.9, top_p = 0.9, seed = 3 });
        Assert.Equal(a.GetProperty("choices")[0].GetProperty("text").GetString(), b.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task SteeringMatchesTheLibraryAndMonitorsReadTheCachedActivations()
    {
        var m = Servers.Stories;
        var (folder, persona) = VectorFolder(m);
        await using var host = await Start(m, folder);
        using var http = Servers.Client(host);
        const string prompt = "Once upon a time, there was a little girl named Lily. One day, she";
        int[] ids = m.Tokenizer!.Encode(prompt);
        const int n = 40;

        var steer = new[] { new { vector = "happy", coefficient = 3.0 } };
        var body = await Servers.PostJson(http, "v1/completions", new
        {
            model = "stories260K", prompt, max_tokens = n, temperature = 0,
            loupe = new { steer, monitors = new object[] { new { vector = "happy", action = "none" } } },
        });
        var steeredOptions = ActivationEdits.Options(m, persona.Steer(3f));
        int[] expected = Greedy(m, ids, n, ActivationEdits.Options(m, persona.Steer(3f)));
        var loupe = body.GetProperty("loupe");
        int[] tokens = [.. loupe.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32())];
        Assert.Equal(expected, tokens);
        Assert.NotEqual(Greedy(m, ids, n), tokens); // the edit changes the continuation

        // Reading i is the projection at the position that picked token i, under the same edit.
        var monitor = loupe.GetProperty("monitors")[0];
        double[] readings = [.. monitor.GetProperty("readings").EnumerateArray().Select(e => e.GetDouble())];
        int[] sequence = [.. ids, .. tokens[..^1]];
        var cached = m.RunWithCache(TokenBatch.Single(sequence), Hook, steeredOptions).Cache[Hook].ToCpu();
        int d = m.Config.DModel;
        Assert.Equal(tokens.Length, readings.Length);
        for (int i = 0; i < readings.Length; i++)
        {
            double want = persona.Project(cached.Span.Slice((ids.Length - 1 + i) * d, d));
            Assert.InRange(readings[i], want - 1e-3 - 1e-4 * Math.Abs(want), want + 1e-3 + 1e-4 * Math.Abs(want));
        }

        // A threshold first crossed at token k: 'flag' marks k and lets the generation run; 'stop' ends it at k.
        int k = Enumerable.Range(4, readings.Length - 4).First(i => readings[i] > readings[..i].Max());
        double threshold = (readings[..k].Max() + readings[k]) / 2;
        var flagged = await Servers.PostJson(http, "v1/completions", new
        {
            model = "stories260K", prompt, max_tokens = n, temperature = 0,
            loupe = new { steer, monitors = new object[] { new { vector = "happy", name = "h", action = "flag", threshold } } },
        });
        var fm = flagged.GetProperty("loupe").GetProperty("monitors")[0];
        Assert.Equal(k, fm.GetProperty("first_crossing").GetInt32());
        Assert.True(fm.GetProperty("flagged").GetBoolean());
        Assert.Equal(tokens.Length, flagged.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        var stopped = await Servers.PostJson(http, "v1/completions", new
        {
            model = "stories260K", prompt, max_tokens = n, temperature = 0,
            loupe = new { steer, monitors = new object[] { new { vector = "happy", name = "h", action = "stop", threshold } } },
        });
        Assert.Equal(tokens[..(k + 1)], stopped.GetProperty("loupe").GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal("content_filter", stopped.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal("h", stopped.GetProperty("loupe").GetProperty("stopped_by").GetString());

        // Streamed chunks carry each token's readings.
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = JsonContent.Create(new
            {
                model = "stories260K", prompt, max_tokens = n, temperature = 0, stream = true,
                loupe = new { steer, monitors = new object[] { new { vector = "happy", name = "h", action = "flag", threshold } } },
            }),
        };
        using var response = await http.SendAsync(request);
        string sse = await response.Content.ReadAsStringAsync();
        var events = sse.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e["data: ".Length..]).ToList();
        Assert.Equal("[DONE]", events[^1]);
        var perToken = events[..^1].Select(e => JsonDocument.Parse(e).RootElement).Where(e => e.GetProperty("loupe").ValueKind == JsonValueKind.Object && e.GetProperty("loupe").TryGetProperty("readings", out _)).ToList();
        Assert.Equal(readings.Length, perToken.Count);
        for (int i = 0; i < readings.Length; i++)
        {
            Assert.InRange(perToken[i].GetProperty("loupe").GetProperty("readings").GetProperty("h").GetDouble(), readings[i] - 1e-6, readings[i] + 1e-6);
            Assert.Equal(i == k, perToken[i].GetProperty("loupe").GetProperty("crossed").EnumerateArray().Any());
        }
    }

    [Fact]
    public async Task Gpt2FixtureCompletesTokenIdsAndBadRequestsGetOpenAiErrors()
    {
        var m = Servers.Gpt2;
        await using var host = await Start(m);
        using var http = Servers.Client(host);
        int[] prompt = [82, 87, 74, 39, 184];
        var body = await Servers.PostJson(http, "v1/completions", new { model = "gpt2", prompt, max_tokens = 6, temperature = 0 });
        Assert.Equal(Greedy(m, prompt, 6), body.GetProperty("loupe").GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));

        async Task Error(object request, HttpStatusCode status, string? param, string path = "v1/completions")
        {
            var response = await http.PostAsJsonAsync(path, request);
            string text = await response.Content.ReadAsStringAsync();
            Assert.True(status == response.StatusCode, $"{(int)response.StatusCode}: {text}");
            var error = JsonDocument.Parse(text).RootElement.GetProperty("error");
            Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
            Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
            Assert.Equal(param, error.GetProperty("param").ValueKind == JsonValueKind.Null ? null : error.GetProperty("param").GetString());
            Assert.True(error.TryGetProperty("code", out _));
        }
        await Error(new { model = "gpt-4", prompt }, HttpStatusCode.NotFound, "model");
        await Error(new { model = "gpt2", prompt, max_tokens = "six" }, HttpStatusCode.BadRequest, "max_tokens");
        await Error(new { model = "gpt2", prompt, temperature = 3 }, HttpStatusCode.BadRequest, "temperature");
        await Error(new { model = "gpt2", prompt = new[] { true } }, HttpStatusCode.BadRequest, "prompt");
        await Error(new { model = "gpt2", prompt = Enumerable.Repeat(5, 300).ToArray() }, HttpStatusCode.BadRequest, "prompt");
        await Error(new { model = "gpt2", prompt, max_tokens = 100000 }, HttpStatusCode.BadRequest, "max_tokens");
        await Error(new { model = "gpt2", prompt, loupe = new { steer = new[] { new { vector = "../etc/passwd", coefficient = 1 } } } }, HttpStatusCode.BadRequest, "loupe.steer[0].vector");
        await Error(new { model = "gpt2", prompt, loupe = new { monitors = 3 } }, HttpStatusCode.BadRequest, "loupe.monitors");
        await Error(new { model = "gpt2", messages = new[] { new { role = "user", content = "hi" } } }, HttpStatusCode.BadRequest, "messages", "v1/chat/completions");
        await Error(new { model = "gpt2", messages = "hi" }, HttpStatusCode.BadRequest, "messages", "v1/chat/completions");
        // Bodies that are not valid JSON text: invalid UTF-8 inside a string once answered 500 (found by the serve fuzzer).
        foreach (var raw in new byte[][] { [.. "{\"model\":\"gpt2\",\"messages\":[{\"role\":\"a"u8, 0xFF, .. "\",\"content\":\"hi\"}]}"u8], "{\"model\":"u8.ToArray() })
        {
            var response = await http.PostAsync("v1/chat/completions", new ByteArrayContent(raw) { Headers = { ContentType = new("application/json") } });
            string text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{(int)response.StatusCode}: {text}");
            Assert.Equal("invalid_json", JsonDocument.Parse(text).RootElement.GetProperty("error").GetProperty("code").GetString());
        }

        // The official client surfaces them as exceptions with the status.
        var chat = new ChatClient("nope", new ApiKeyCredential("unused"), ClientOptions(host));
        var e = await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync([new UserChatMessage("hi")]));
        Assert.Equal(404, e.Status);
        // --openai-only leaves nothing else reachable.
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("api/model")).StatusCode);
    }

    [Fact]
    public async Task TheTokenGuardsTheOpenAiApi()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { OpenAi = OpenAiMode.Beside, Token = "0123456789abcdef0123" });
        var models = new OpenAIModelClient(new ApiKeyCredential("wrong-token-wrong-token"), ClientOptions(host));
        Assert.Equal(401, (await Assert.ThrowsAsync<ClientResultException>(() => models.GetModelsAsync())).Status);
        var ok = new OpenAIModelClient(new ApiKeyCredential("0123456789abcdef0123"), ClientOptions(host));
        Assert.Equal("gpt2", (await ok.GetModelsAsync()).Value.Single().Id);
        using var http = Servers.Client(host, "0123456789abcdef0123");
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("api/model")).StatusCode); // the web API is still there beside /v1
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task ChatUsesTheModelFoldersTemplate()
    {
        // A copy of stories260K with a ChatML tokenizer_config.json.
        string dir = Directory.CreateTempSubdirectory("loupe-chatml-").FullName;
        foreach (var f in Directory.GetFiles(SharedData.Require("models/stories260K"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), JsonSerializer.Serialize(new { chat_template = ChatTemplateTests.ChatMl, bos_token = "<s>", eos_token = "</s>" }));
        using var m = ModelLoader.LoadFolder(dir);
        await using var host = await Start(m);
        var chat = new ChatClient(Path.GetFileName(dir), new ApiKeyCredential("unused"), ClientOptions(host));
        var result = await chat.CompleteChatAsync([new SystemChatMessage("Be kind."), new UserChatMessage("Tell me a story.")],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 8 });
        string rendered = "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n";
        using var raw = JsonDocument.Parse(result.GetRawResponse().Content);
        Assert.Equal(m.Tokenizer!.Encode(rendered, addSpecialTokens: false), raw.RootElement.GetProperty("loupe").GetProperty("prompt_tokens").EnumerateArray().Select(e => e.GetInt32()));
    }
}
