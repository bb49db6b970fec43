using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Loupe.Explain.Tests;

/// <summary>Failure modes the scripted server serves on demand, one per request, in order.</summary>
public enum Fault { RateLimit, ServerError, Timeout, MalformedJson, BadRequest }

/// <summary>One request the server received: its body, messages, Authorization header and the fault it got (null: answered).</summary>
public sealed record LoggedRequest(string Body, string System, string User, string? Authorization, Fault? Fault);

/// <summary>
/// A real OpenAI-compatible HTTP server on loopback (HttpListener) that answers chat completions
/// deterministically: an explainer prompt gets "the token X" where X is the most frequent span marked
/// &lt;&lt;X&gt;&gt;; a detection prompt gets 1 for each example containing X; a fuzzing prompt gets 1 for each
/// example whose marked spans are all X; a simulation prompt gets 10 for each token that is X (trimmed) and 0 for
/// the others. With logprobs requested, each 0/1 token gets P = 0.9 and the other digit 0.1 as alternatives, and
/// each 10 gets P = 0.8 with 0 at 0.2. Usage counts words. Faults queued with <see cref="Enqueue"/> are served first.
/// </summary>
public sealed partial class ScriptedServer : IDisposable
{
    readonly HttpListener _listener = new();
    readonly ConcurrentQueue<Fault> _faults = new();
    readonly CancellationTokenSource _stop = new();
    long _promptTokens, _completionTokens, _answered;

    public ScriptedServer()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        BaseUrl = $"http://127.0.0.1:{port}/v1";
        _listener.Prefixes.Add($"http://127.0.0.1:{port}/");
        _listener.Start();
        _ = Task.Run(AcceptLoop);
    }

    public string BaseUrl { get; }
    public ConcurrentQueue<LoggedRequest> Log { get; } = new();
    public long PromptTokens => Interlocked.Read(ref _promptTokens);
    public long CompletionTokens => Interlocked.Read(ref _completionTokens);
    public long Answered => Interlocked.Read(ref _answered);
    public TimeSpan TimeoutDelay { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>Called with every request before it is answered (tests use it to block or count).</summary>
    public Func<LoggedRequest, Task>? BeforeAnswer { get; set; }
    /// <summary>An answer for requests other than the explainer's and scorers' (system, user) → content; null falls back to those.</summary>
    public Func<string, string, string?>? CustomAnswer { get; set; }

    public void Enqueue(params Fault[] faults)
    {
        foreach (var f in faults) _faults.Enqueue(f);
    }

    async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception) when (_stop.IsCancellationRequested || !_listener.IsListening)
            {
                return;
            }
            catch (HttpListenerException)
            {
                continue;
            }
            _ = Task.Run(() => Handle(context));
        }
    }

    async Task Handle(HttpListenerContext context)
    {
        try
        {
            string body;
            using (var reader = new StreamReader(context.Request.InputStream, Encoding.UTF8)) body = await reader.ReadToEndAsync();
            var json = JsonNode.Parse(body)!;
            var messages = json["messages"]!.AsArray();
            string system = messages.FirstOrDefault(m => (string)m!["role"]! == "system")?["content"]?.GetValue<string>() ?? "";
            string user = messages.LastOrDefault(m => (string)m!["role"]! == "user")?["content"]?.GetValue<string>() ?? "";
            Fault? fault = _faults.TryDequeue(out var f) ? f : null;
            var logged = new LoggedRequest(body, system, user, context.Request.Headers["Authorization"], fault);
            Log.Enqueue(logged);
            if (BeforeAnswer is { } hook) await hook(logged);
            var response = context.Response;
            switch (fault)
            {
                case Fault.RateLimit:
                    response.StatusCode = 429;
                    response.AddHeader("Retry-After", "1");
                    await Write(response, """{"error":{"message":"rate limited"}}""");
                    return;
                case Fault.ServerError:
                    response.StatusCode = 500;
                    await Write(response, """{"error":{"message":"internal error"}}""");
                    return;
                case Fault.Timeout:
                    await Task.Delay(TimeoutDelay);
                    response.StatusCode = 500;
                    await Write(response, "late");
                    return;
                case Fault.MalformedJson:
                    await Write(response, """{"choices": [{"message": {"content": "[1, 0""");
                    return;
                case Fault.BadRequest:
                    response.StatusCode = 400;
                    await Write(response, """{"error":{"message":"model 'nope' does not exist"}}""");
                    return;
            }
            bool logprobs = json["logprobs"]?.GetValue<bool>() ?? false;
            string content = CustomAnswer?.Invoke(system, user) ?? Answer(system, user);
            long prompt = Words(system) + Words(user), completion = Words(content);
            Interlocked.Add(ref _promptTokens, prompt);
            Interlocked.Add(ref _completionTokens, completion);
            Interlocked.Increment(ref _answered);
            var choice = new JsonObject
            {
                ["index"] = 0,
                ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = content },
                ["finish_reason"] = "stop",
                ["logprobs"] = logprobs ? Logprobs(content) : null,
            };
            await Write(response, new JsonObject
            {
                ["id"] = "chatcmpl-scripted", ["object"] = "chat.completion", ["model"] = json["model"]!.GetValue<string>(),
                ["choices"] = new JsonArray(choice),
                ["usage"] = new JsonObject { ["prompt_tokens"] = prompt, ["completion_tokens"] = completion, ["total_tokens"] = prompt + completion },
            }.ToJsonString());
        }
        catch (Exception) when (_stop.IsCancellationRequested)
        {
        }
        catch (HttpListenerException)
        {
            // the client gave up (timeout test)
        }
        catch (IOException)
        {
        }
    }

    static async Task Write(HttpListenerResponse response, string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        response.ContentType = "application/json";
        response.ContentLength64 = bytes.Length;
        await response.OutputStream.WriteAsync(bytes);
        response.Close();
    }

    static long Words(string s) => s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;

    /// <summary>The explanation's token: "the token X" → X.</summary>
    public static string? ExplainedToken(string explanation)
    {
        var m = Regex.Match(explanation, "the token \"(.*)\"");
        return m.Success ? m.Groups[1].Value : null;
    }

    static string Answer(string system, string user)
    {
        if (system == SimulationScorer.System)
        {
            string explained = ExplainedToken(user.Split('\n').First(l => l.StartsWith("Explanation: ", StringComparison.Ordinal))) ?? "\u0000";
            var levels = user.Split('\n').Select(l => Regex.Match(l, "^[0-9]+\t(\".*\")$")).Where(m => m.Success)
                .Select(m => System.Text.Json.JsonSerializer.Deserialize<string>(m.Groups[1].Value)!.Trim() == explained ? 10 : 0);
            return "[" + string.Join(", ", levels) + "]";
        }
        if (system.Contains("[EXPLANATION]", StringComparison.Ordinal))
        {
            var spans = Marked().Matches(user).Select(m => m.Groups[1].Value.Trim()).ToList();
            string token = spans.GroupBy(s => s).OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).Select(g => g.Key).FirstOrDefault() ?? "";
            return $"The marked spans are mostly one word.\n[EXPLANATION]: the token \"{token}\"";
        }
        string explanationLine = user.Split('\n').First(l => l.StartsWith("Explanation: ", StringComparison.Ordinal));
        string x = ExplainedToken(explanationLine) ?? "\u0000";
        bool fuzzing = system.Contains("chosen at random", StringComparison.Ordinal);
        var answers = new List<int>();
        foreach (var line in user.Split('\n').Where(l => l.StartsWith("Example ", StringComparison.Ordinal)))
        {
            string text = line[(line.IndexOf(": ", StringComparison.Ordinal) + 2)..];
            if (fuzzing)
            {
                var spans = Marked().Matches(text).Select(m => m.Groups[1].Value.Trim()).ToList();
                answers.Add(spans.Count > 0 && spans.All(s => s == x) ? 1 : 0);
            }
            else answers.Add(Regex.IsMatch(text, $@"\b{Regex.Escape(x)}\b") ? 1 : 0);
        }
        return "[" + string.Join(", ", answers) + "]";
    }

    /// <summary>Tokens "[", "1", ", ", "0", …, "]" with P(answer) = 0.9 and the other digit at 0.1; "10" at 0.8 with "0" at 0.2.</summary>
    static JsonObject Logprobs(string content)
    {
        var tokens = new JsonArray();
        foreach (Match m in Regex.Matches(content, @"\d+|[^\d]+"))
        {
            string t = m.Value;
            var top = new JsonArray();
            double lp = 0;
            if (t is "0" or "1")
            {
                lp = Math.Log(0.9);
                top.Add(new JsonObject { ["token"] = t, ["logprob"] = lp });
                top.Add(new JsonObject { ["token"] = t == "1" ? "0" : "1", ["logprob"] = Math.Log(0.1) });
            }
            else if (t == "10")
            {
                lp = Math.Log(0.8);
                top.Add(new JsonObject { ["token"] = t, ["logprob"] = lp });
                top.Add(new JsonObject { ["token"] = "0", ["logprob"] = Math.Log(0.2) });
            }
            else top.Add(new JsonObject { ["token"] = t, ["logprob"] = 0.0 });
            tokens.Add(new JsonObject { ["token"] = t, ["logprob"] = lp, ["top_logprobs"] = top });
        }
        return new JsonObject { ["content"] = tokens };
    }

    [GeneratedRegex("<<(.*?)>>")]
    private static partial Regex Marked();

    public void Dispose()
    {
        _stop.Cancel();
        try
        {
            _listener.Stop();
            _listener.Close();
        }
        catch (ObjectDisposedException)
        {
        }
    }
}
