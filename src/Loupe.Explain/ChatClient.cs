using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Loupe.Explain;

/// <summary>One chat message (<c>system</c>, <c>user</c> or <c>assistant</c>).</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>One generated token with its log-probability and the most likely alternatives at its position.</summary>
public sealed record TokenLogprob(string Token, double Logprob, IReadOnlyDictionary<string, double> Top);

/// <summary>
/// An answer: the message text, the <c>usage</c> token counts, the per-token logprobs when asked for and
/// returned, and whether it came from the cache (no request made).
/// </summary>
public sealed record ChatResult(string Content, int PromptTokens, int CompletionTokens, IReadOnlyList<TokenLogprob>? Logprobs, bool Cached);

/// <summary>
/// How to talk to an OpenAI-compatible endpoint. <c>Endpoint</c> is the API base (<c>http://host/v1</c>) or the
/// full <c>…/chat/completions</c> URL; <c>TopLogprobs</c> &gt; 0 asks for logprobs with that many alternatives.
/// Retries (429, 500, 502, 503, timeouts, dropped connections) wait <c>BaseDelay</c>·2^attempt with jitter, or the
/// server's <c>Retry-After</c> when it sends one.
/// </summary>
public sealed record EndpointOptions
{
    public required string Endpoint { get; init; }
    public required string Model { get; init; }
    public string? ApiKey { get; init; }
    public double Temperature { get; init; }
    public int MaxTokens { get; init; } = 500;
    public int TopLogprobs { get; init; }
    public int Concurrency { get; init; } = 4;
    public int MaxRetries { get; init; } = 6;
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(120);
    public TimeSpan BaseDelay { get; init; } = TimeSpan.FromSeconds(1);
    public TimeSpan MaxDelay { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>The chat-completions URL the requests go to.</summary>
    public Uri ChatUrl
    {
        get
        {
            if (!Uri.TryCreate(Endpoint, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
                throw new InputError($"--endpoint: expected an http(s) URL such as http://localhost:8000/v1, found {InputError.Show(Endpoint)}");
            string s = uri.ToString().TrimEnd('/');
            return new Uri(s.EndsWith("/chat/completions", StringComparison.Ordinal) ? s : s + "/chat/completions");
        }
    }

    /// <exception cref="InputError">A value out of range.</exception>
    public void Validate()
    {
        _ = ChatUrl;
        if (string.IsNullOrWhiteSpace(Model)) throw new InputError("--model: expected a model name, found an empty one");
        if (Concurrency < 1) throw InputError.Expected("argument", "concurrency", "1 or more", Concurrency);
        if (MaxTokens < 1) throw InputError.Expected("argument", "max-tokens", "1 or more", MaxTokens);
        if (TopLogprobs is < 0 or > 20) throw InputError.Expected("argument", "top-logprobs", "0 to 20", TopLogprobs);
        if (MaxRetries < 0) throw InputError.Expected("argument", "retries", "0 or more", MaxRetries);
        if (!(Temperature >= 0 && Temperature <= 2)) throw InputError.Expected("argument", "temperature", "0 to 2", Temperature);
        if (RequestTimeout <= TimeSpan.Zero) throw InputError.Expected("argument", "timeout", "a positive duration", RequestTimeout);
    }
}

/// <summary>A request the endpoint refused or answered with something that is not a chat completion; not retried.</summary>
public sealed class EndpointError(string message, HttpStatusCode? status = null, Exception? inner = null) : HttpRequestException(message, inner, status);

/// <summary>
/// A chat-completions client over <see cref="HttpClient"/>: at most <c>Concurrency</c> requests in flight, retries
/// with exponential backoff and jitter, a per-request timeout, and an optional <see cref="RequestCache"/> consulted
/// before any request (so a repeated or resumed run asks nothing twice). Cancellation stops new requests and
/// retries at once but lets a request already sent finish (within the timeout) so its answer is cached.
/// </summary>
public sealed class ChatClient : IDisposable
{
    readonly EndpointOptions _options;
    readonly HttpClient _http;
    readonly SemaphoreSlim _slots;
    readonly RequestCache? _cache;
    readonly Random _jitter;
    readonly Uri _url;

    public ChatClient(EndpointOptions options, RequestCache? cache = null, HttpMessageHandler? handler = null, int jitterSeed = 0)
    {
        options.Validate();
        _options = options;
        _url = options.ChatUrl;
        // Timeouts are per attempt (below), so HttpClient's own is switched off.
        _http = new HttpClient(handler ?? new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(5) }) { Timeout = Timeout.InfiniteTimeSpan };
        _slots = new SemaphoreSlim(options.Concurrency, options.Concurrency);
        _cache = cache;
        _jitter = new Random(jitterSeed);
    }

    public EndpointOptions Options => _options;

    /// <summary>Requests actually sent (retries included) and retries made, for the run summary.</summary>
    public int Sent => _sent;
    public int Retries => _retries;
    int _sent, _retries;

    /// <summary>The request body as sent; also the cache key's content (with the URL).</summary>
    internal string RequestBody(IReadOnlyList<ChatMessage> messages)
    {
        var body = new JsonObject
        {
            ["model"] = _options.Model,
            ["messages"] = new JsonArray(messages.Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray()),
            ["temperature"] = _options.Temperature,
            ["max_tokens"] = _options.MaxTokens,
        };
        if (_options.TopLogprobs > 0)
        {
            body["logprobs"] = true;
            body["top_logprobs"] = _options.TopLogprobs;
        }
        return body.ToJsonString();
    }

    /// <summary>Asks for one completion (or returns the cached answer to the identical request).</summary>
    /// <exception cref="EndpointError">A 4xx other than 429, a malformed answer, or retries exhausted (the message names the URL, status and the start of the body).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public async Task<ChatResult> CompleteAsync(IReadOnlyList<ChatMessage> messages, CancellationToken cancellationToken = default)
    {
        string body = RequestBody(messages);
        string key = RequestCache.Key(_url.ToString(), body);
        if (_cache?.Get(key) is { } cached) return Parse(cached, HttpStatusCode.OK) with { Cached = true };

        await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            string answer = await SendWithRetriesAsync(body, cancellationToken).ConfigureAwait(false);
            var result = Parse(answer, HttpStatusCode.OK);
            _cache?.Put(key, answer);
            return result;
        }
        finally
        {
            _slots.Release();
        }
    }

    async Task<string> SendWithRetriesAsync(string body, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            string failure;
            TimeSpan? retryAfter = null;
            ct.ThrowIfCancellationRequested();
            // Deliberately not linked to ct: a request already sent is waited for (at most the timeout) and its
            // answer cached, so a cancelled run never pays for an answer it then throws away and asks again.
            using var attemptCts = new CancellationTokenSource(_options.RequestTimeout);
            try
            {
                using var request = new HttpRequestMessage(HttpMethod.Post, _url) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
                if (!string.IsNullOrEmpty(_options.ApiKey)) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _options.ApiKey);
                Interlocked.Increment(ref _sent);
                using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseContentRead, attemptCts.Token).ConfigureAwait(false);
                string text = await response.Content.ReadAsStringAsync(attemptCts.Token).ConfigureAwait(false);
                int code = (int)response.StatusCode;
                if (response.IsSuccessStatusCode) return text;
                if (code is not (429 or 500 or 502 or 503 or 504))
                    throw new EndpointError($"{_url}: HTTP {code} {response.ReasonPhrase}: {Head(text)}", response.StatusCode);
                failure = $"HTTP {code}: {Head(text)}";
                retryAfter = RetryAfter(response);
            }
            catch (OperationCanceledException) when (attemptCts.IsCancellationRequested)
            {
                failure = $"no answer within {_options.RequestTimeout.TotalSeconds.ToString("G4", CultureInfo.InvariantCulture)} s";
            }
            catch (HttpRequestException e) when (e is not EndpointError)
            {
                failure = $"connection failed ({e.Message})";
            }
            if (attempt >= _options.MaxRetries)
                throw new EndpointError($"{_url}: giving up after {attempt + 1} attempts; last: {failure}");
            Interlocked.Increment(ref _retries);
            await Task.Delay(retryAfter ?? Backoff(attempt), ct).ConfigureAwait(false);
        }
    }

    TimeSpan Backoff(int attempt)
    {
        double scale;
        lock (_jitter) scale = 0.5 + 0.5 * _jitter.NextDouble();
        double ms = Math.Min(_options.MaxDelay.TotalMilliseconds, _options.BaseDelay.TotalMilliseconds * Math.Pow(2, attempt));
        return TimeSpan.FromMilliseconds(ms * scale);
    }

    TimeSpan? RetryAfter(HttpResponseMessage response)
    {
        var header = response.Headers.RetryAfter;
        TimeSpan? wait = header?.Delta ?? (header?.Date is { } date ? date - DateTimeOffset.UtcNow : null);
        if (wait is null) return null;
        return wait < TimeSpan.Zero ? TimeSpan.Zero : wait > _options.MaxDelay ? _options.MaxDelay : wait;
    }

    static string Head(string text)
    {
        string one = text.ReplaceLineEndings(" ");
        return one.Length == 0 ? "(empty body)" : one.Length <= 200 ? one : one[..200] + "…";
    }

    /// <exception cref="EndpointError">Not JSON, or no <c>choices[0].message.content</c>.</exception>
    ChatResult Parse(string text, HttpStatusCode status)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(text);
        }
        catch (JsonException e)
        {
            throw new EndpointError($"{_url}: HTTP {(int)status}: expected a JSON chat completion, found malformed JSON ({e.Message.ReplaceLineEndings(" ")}): {Head(text)}", status, e);
        }
        try
        {
            var choice = root?["choices"]?[0] ?? throw new FormatException("no choices[0]");
            string content = choice["message"]?["content"]?.GetValue<string>() ?? throw new FormatException("no choices[0].message.content");
            var usage = root!["usage"];
            int prompt = usage?["prompt_tokens"]?.GetValue<int>() ?? 0, completion = usage?["completion_tokens"]?.GetValue<int>() ?? 0;
            List<TokenLogprob>? logprobs = null;
            if (choice["logprobs"]?["content"] is JsonArray tokens)
            {
                logprobs = [];
                foreach (var t in tokens)
                {
                    var top = new Dictionary<string, double>(StringComparer.Ordinal);
                    if (t?["top_logprobs"] is JsonArray alternatives)
                        foreach (var a in alternatives)
                            top.TryAdd(a!["token"]!.GetValue<string>(), a["logprob"]!.GetValue<double>());
                    logprobs.Add(new TokenLogprob(t!["token"]!.GetValue<string>(), t["logprob"]!.GetValue<double>(), top));
                }
            }
            return new ChatResult(content, prompt, completion, logprobs, false);
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException or NullReferenceException or JsonException)
        {
            throw new EndpointError($"{_url}: HTTP {(int)status}: not a chat completion ({e.Message}): {Head(text)}", status, e);
        }
    }

    public void Dispose()
    {
        _http.Dispose();
        _slots.Dispose();
    }
}
