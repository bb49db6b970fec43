using System.Diagnostics;

namespace Loupe.Explain.Tests;

public class ClientTests
{
    static ChatClient Client(ScriptedServer server, RequestCache? cache = null, int retries = 4, double timeoutSeconds = 5) => new(new EndpointOptions
    {
        Endpoint = server.BaseUrl, Model = "scripted-model", ApiKey = "test-key", MaxRetries = retries,
        BaseDelay = TimeSpan.FromMilliseconds(20), RequestTimeout = TimeSpan.FromSeconds(timeoutSeconds), TopLogprobs = 2,
    }, cache);

    static readonly List<ChatMessage> Detection =
        [new("system", Prompts.DetectionSystem), new("user", "Explanation: the token \"apple\"\n\nExample 1: an apple\nExample 2: a pear\n")];

    [Fact]
    public async Task Answers_parsed_with_usage_logprobs_and_the_key_sent()
    {
        using var server = new ScriptedServer();
        using var client = Client(server);
        var r = await client.CompleteAsync(Detection);
        Assert.Equal("[1, 0]", r.Content);
        Assert.Equal(new[] { 1, 0 }, Prompts.ParseAnswers(r.Content, 2)!);
        var p = Prompts.AnswerProbabilities(r.Logprobs, 2)!;
        Assert.InRange(p[0], 0.9 - 1e-9, 0.9 + 1e-9);
        Assert.InRange(p[1], 0.1 - 1e-9, 0.1 + 1e-9);
        Assert.Equal(server.PromptTokens, r.PromptTokens);
        Assert.Equal(server.CompletionTokens, r.CompletionTokens);
        var logged = Assert.Single(server.Log);
        Assert.Equal("Bearer test-key", logged.Authorization);
        Assert.Contains("\"top_logprobs\":2", logged.Body);
    }

    [Fact]
    public async Task Rate_limit_waits_for_retry_after_then_succeeds()
    {
        using var server = new ScriptedServer();
        using var client = Client(server);
        server.Enqueue(Fault.RateLimit);
        var clock = Stopwatch.StartNew();
        var r = await client.CompleteAsync(Detection);
        Assert.Equal("[1, 0]", r.Content);
        Assert.True(clock.Elapsed >= TimeSpan.FromSeconds(0.9), $"waited {clock.Elapsed}, Retry-After was 1 s");
        Assert.Equal(2, server.Log.Count);
        Assert.Equal(1, client.Retries);
    }

    [Fact]
    public async Task Server_errors_and_timeouts_are_retried()
    {
        // The client's timeout is a hang guard far above an ordinary answer's time on a loaded machine (0.4 s, then 2 s, once
        // timed out an answer that was not scripted to hang — with MiniLM scoring and the browser tests beside it — and the
        // client retried once more), and the scripted hang well above the timeout.
        using var server = new ScriptedServer { TimeoutDelay = TimeSpan.FromSeconds(25) };
        using var client = Client(server, timeoutSeconds: 10);
        server.Enqueue(Fault.ServerError, Fault.Timeout, Fault.ServerError);
        var r = await client.CompleteAsync(Detection);
        Assert.Equal("[1, 0]", r.Content);
        Assert.Equal(4, server.Log.Count);
        Assert.Equal(3, client.Retries);
    }

    [Fact]
    public async Task Retries_exhausted_report_the_url_and_last_failure()
    {
        using var server = new ScriptedServer();
        using var client = Client(server, retries: 1);
        server.Enqueue(Fault.ServerError, Fault.ServerError);
        var e = await Assert.ThrowsAsync<EndpointError>(() => client.CompleteAsync(Detection));
        Assert.Contains(server.BaseUrl + "/chat/completions", e.Message);
        Assert.Contains("giving up after 2 attempts", e.Message);
        Assert.Contains("HTTP 500", e.Message);
        Assert.Contains("internal error", e.Message);
    }

    [Fact]
    public async Task Malformed_json_is_reported_with_the_body_and_not_cached()
    {
        using var folder = new TestFolder();
        using var server = new ScriptedServer();
        using var cache = new RequestCache(folder.File("cache.db"));
        using var client = Client(server, cache);
        server.Enqueue(Fault.MalformedJson);
        var e = await Assert.ThrowsAsync<EndpointError>(() => client.CompleteAsync(Detection));
        Assert.Contains(server.BaseUrl + "/chat/completions", e.Message);
        Assert.Contains("malformed JSON", e.Message);
        Assert.Contains("{\"choices\": [{\"message\"", e.Message);
        Assert.Equal(0, cache.Count);
        Assert.Equal("[1, 0]", (await client.CompleteAsync(Detection)).Content);
    }

    [Fact]
    public async Task Bad_request_is_not_retried_and_names_status_and_body()
    {
        using var server = new ScriptedServer();
        using var client = Client(server);
        server.Enqueue(Fault.BadRequest);
        var e = await Assert.ThrowsAsync<EndpointError>(() => client.CompleteAsync(Detection));
        Assert.Contains("HTTP 400", e.Message);
        Assert.Contains("does not exist", e.Message);
        Assert.Contains(server.BaseUrl, e.Message);
        Assert.Single(server.Log);
    }

    [Fact]
    public async Task Cache_answers_a_repeated_request_without_asking()
    {
        using var folder = new TestFolder();
        using var server = new ScriptedServer();
        using (var cache = new RequestCache(folder.File("cache.db")))
        using (var client = Client(server, cache))
            Assert.False((await client.CompleteAsync(Detection)).Cached);
        using (var cache = new RequestCache(folder.File("cache.db")))
        using (var client = Client(server, cache))
        {
            var again = await client.CompleteAsync(Detection);
            Assert.True(again.Cached);
            Assert.Equal("[1, 0]", again.Content);
            Assert.Equal(server.PromptTokens, again.PromptTokens);
        }
        Assert.Single(server.Log);
    }

    [Fact]
    public async Task Concurrency_limit_holds()
    {
        using var server = new ScriptedServer();
        int inFlight = 0, peak = 0;
        server.BeforeAnswer = async _ =>
        {
            int now = Interlocked.Increment(ref inFlight);
            lock (server) peak = Math.Max(peak, now);
            await Task.Delay(50);
            Interlocked.Decrement(ref inFlight);
        };
        using var client = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "m", Concurrency = 2 });
        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => client.CompleteAsync([new("system", Prompts.DetectionSystem), new("user", $"Explanation: x\n\nExample 1: {i}\n")])));
        Assert.InRange(peak, 1, 2);
        Assert.Equal(8, server.Log.Count);
    }
}
