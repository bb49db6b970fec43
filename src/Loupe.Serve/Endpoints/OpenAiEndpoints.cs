using System.Security.Cryptography;
using System.Text.Json;
using System.Threading.Channels;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Serve.OpenAi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Loupe.Serve.Endpoints;

/// <summary>
/// An OpenAI-compatible API over the served model (<c>loupe serve --openai</c>): <c>GET /v1/models</c>,
/// <c>POST /v1/completions</c>, <c>POST /v1/chat/completions</c> (streaming, logprobs), plus a <c>loupe</c> object per
/// request for steering edits and per-token monitors (docs/openai.md). Behind the same token check as the rest of serve.
/// </summary>
public static class OpenAiEndpoints
{
    static readonly JsonSerializerOptions s_json = new(ServeHost.Json) { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };

    public static void Map(WebApplication app, ModelGate gate, ServeOptions options)
    {
        if (options.OpenAi == OpenAiMode.Off) return;
        var model = gate.Model;
        string modelId = options.ModelId ?? (model.Source is { } s ? Path.GetFileName(s.TrimEnd('/', '\\')) : null) ?? "loupe";
        var library = new VectorLibrary(options.VectorsDir);
        var template = new Lazy<object?>(() =>
        {
            try { return ChatTemplate.FromModelFolder(model.Source); }
            catch (UnsupportedTemplateException e) { return e; }
            catch (InputError e) { return e; } // an unreadable tokenizer_config.json: every chat request says why, none crashes
        });
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

        if (options.OpenAi == OpenAiMode.Only)
            app.Use((context, next) => context.Request.Path.StartsWithSegments("/v1") ? next(context)
                : Write(context, new OpenAiError(404, "this server only serves the OpenAI-compatible API under /v1 (started with --openai-only)", "invalid_request_error", null, "not_found")));

        app.MapGet("/v1/models", () => Results.Json(new
        {
            @object = "list",
            data = new[] { new { id = modelId, @object = "model", created, owned_by = "loupe" } },
        }, s_json));
        app.MapGet("/v1/models/{id}", (string id) => id == modelId
            ? Results.Json(new { id = modelId, @object = "model", created, owned_by = "loupe" }, s_json)
            : Results.Json(NoModel(id).Body, s_json, statusCode: 404));
        app.MapGet("/v1/loupe/vectors", () => Results.Json(new { @object = "list", data = library.List() }, s_json));
        app.MapPost("/v1/completions", context => Handle(context, body =>
        {
            var prompt = Fields.Get(body, "prompt") ?? throw OpenAiError.Invalid("'prompt' is required", "prompt", "missing_field");
            if (Fields.Bool(body, "echo") == true) throw OpenAiError.Invalid("'echo' is not supported", "echo", "unsupported");
            int[] ids = prompt.ValueKind switch
            {
                JsonValueKind.String => Tokens(model, prompt.GetString(), null, options, "prompt"),
                JsonValueKind.Array when prompt.GetArrayLength() == 1 && prompt[0].ValueKind == JsonValueKind.String => Tokens(model, prompt[0].GetString(), null, options, "prompt"),
                JsonValueKind.Array when prompt.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out _)) =>
                    Tokens(model, null, [.. prompt.EnumerateArray().Select(e => e.GetInt32())], options, "prompt"),
                _ => throw Fields.Wrong("prompt", "a string, one string in an array, or an array of token ids", prompt),
            };
            int? logprobs = Fields.Int(body, "logprobs", 0, 20);
            return (ids, logprobs, 16);
        }, chat: false));
        app.MapPost("/v1/chat/completions", context => Handle(context, body =>
        {
            var messages = ChatMessages(body);
            string text;
            bool special;
            if (template.Value is InputError unreadable)
                throw new OpenAiError(500, $"the model's chat template cannot be read: {unreadable.Message}", "server_error", "messages", "invalid_template");
            if (template.Value is UnsupportedTemplateException unsupported)
                throw OpenAiError.Invalid($"the model's chat template uses Jinja outside the supported subset: {unsupported.Message}", "messages", "unsupported_template");
            if (template.Value is ValueTuple<ChatTemplate, string?, string?> t)
            {
                try { text = t.Item1.Render(messages, addGenerationPrompt: true, t.Item2, t.Item3); }
                catch (TemplateRaisedException e) { throw OpenAiError.Invalid($"the chat template refused the conversation: {e.Message}", "messages", "template_error"); }
                catch (UnsupportedTemplateException e) { throw OpenAiError.Invalid($"the model's chat template uses Jinja outside the supported subset: {e.Message}", "messages", "unsupported_template"); }
                special = false; // the template writes BOS itself where it wants one
            }
            else
            {
                text = PlainChat(messages);
                special = true;
            }
            if (model.Tokenizer is null) throw OpenAiError.Invalid("this model has no tokenizer, so chat messages cannot be encoded; use /v1/completions with token ids", "messages", "no_tokenizer");
            if (text.Length > options.MaxPromptChars * 4) throw OpenAiError.Invalid($"the conversation has {text.Length} characters; at most {options.MaxPromptChars * 4} are accepted", "messages", "context_length_exceeded");
            int[] ids = Tokens(model, null, model.Tokenizer.Encode(text, special), options, "messages");
            bool wantLogprobs = Fields.Bool(body, "logprobs") ?? false;
            int? top = Fields.Int(body, "top_logprobs", 0, 20);
            if (top is not null && !wantLogprobs) throw OpenAiError.Invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs", "invalid_value");
            return (ids, wantLogprobs ? top ?? 0 : null, int.MaxValue);
        }, chat: true));

        async Task Handle(HttpContext context, Func<JsonElement, (int[] Ids, int? Logprobs, int DefaultMax)> prepare, bool chat)
        {
            try
            {
                using var doc = await ReadBody(context);
                var body = doc.RootElement;
                if (body.ValueKind != JsonValueKind.Object) throw OpenAiError.Invalid("the body must be a JSON object", null, "invalid_json");
                string requested = Fields.String(body, "model") ?? throw OpenAiError.Invalid("'model' is required", "model", "missing_field");
                if (requested != modelId) throw NoModel(requested);
                if (Fields.Int(body, "n", 1, 1) is null && Fields.Get(body, "n") is not null) throw OpenAiError.Invalid("only n = 1 is supported", "n");
                var (ids, logprobs, defaultMax) = prepare(body);
                int room = model.Config.NCtx - ids.Length;
                int? asked = Fields.Int(body, "max_completion_tokens", 0, int.MaxValue) ?? Fields.Int(body, "max_tokens", 0, int.MaxValue);
                if (asked > room)
                    throw OpenAiError.Invalid($"the prompt has {ids.Length} tokens and {asked} more were asked for, beyond the model's context of {model.Config.NCtx}", chat ? "max_completion_tokens" : "max_tokens", "context_length_exceeded");
                int maxTokens = asked ?? Math.Min(defaultMax, room);
                float temperature = (float)(Fields.Number(body, "temperature", 0, 2) ?? 1);
                float topP = (float)(Fields.Number(body, "top_p", 0, 1) ?? 1);
                if (topP <= 0) throw OpenAiError.Invalid("'top_p' must be greater than 0", "top_p", "invalid_value");
                int seed = Fields.Int(body, "seed", int.MinValue, int.MaxValue) ?? RandomNumberGenerator.GetInt32(int.MaxValue);
                var stops = Stops(body);
                bool stream = Fields.Bool(body, "stream") ?? false;
                bool includeUsage = Fields.Get(body, "stream_options") is { ValueKind: JsonValueKind.Object } so && (Fields.Bool(so, "include_usage", "stream_options.include_usage") ?? false);
                var loupe = LoupeRequest.Parse(Fields.Get(body, "loupe"), library, model);
                var generation = new GenerationOptions(maxTokens, temperature, 0, topP, seed, StopAtEos: true);
                var response = new Response(chat, "cmpl-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12)), modelId, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), ids, loupe);
                if (!stream)
                {
                    var run = new CompletionRun(model, ids, generation, stops, logprobs, loupe, null, context.RequestAborted);
                    await gate.RunAsync(_ => { run.Run(); return run; }, context.RequestAborted);
                    await Results.Json(response.Final(run), s_json).ExecuteAsync(context);
                    return;
                }
                var channel = Channel.CreateUnbounded<TokenEvent>(new UnboundedChannelOptions { SingleReader = true });
                var streamed = new CompletionRun(model, ids, generation, stops, logprobs, loupe, e => channel.Writer.TryWrite(e), context.RequestAborted);
                var work = gate.RunAsync(_ => { try { streamed.Run(); } finally { channel.Writer.TryComplete(); } return streamed; }, context.RequestAborted);
                context.Response.ContentType = "text/event-stream";
                context.Response.Headers.CacheControl = "no-cache";
                if (chat) await Sse(context, response.Chunk(null, null, role: true));
                try
                {
                    await foreach (var e in channel.Reader.ReadAllAsync(context.RequestAborted))
                        await Sse(context, response.Chunk(e, null));
                    await work;
                    await Sse(context, response.Chunk(null, streamed));
                    if (includeUsage) await Sse(context, response.UsageChunk(streamed));
                }
                catch (Exception e) when (e is InputError or OpenAiError or ServerBusyException)
                {
                    var error = e as OpenAiError ?? OpenAiError.Invalid(e.Message);
                    await Sse(context, error.Body);
                }
                await context.Response.WriteAsync("data: [DONE]\n\n", context.RequestAborted);
            }
            catch (OpenAiError e) when (!context.Response.HasStarted) { await Write(context, e); }
            catch (InputError e) when (!context.Response.HasStarted) { await Write(context, OpenAiError.Invalid(e.Message)); }
            catch (ServerBusyException e) when (!context.Response.HasStarted) { await Write(context, new OpenAiError(503, e.Message, "server_error", null, "overloaded")); }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested) { }
        }
    }

    static OpenAiError NoModel(string id) => new(404, $"The model '{id}' does not exist; this server serves one model (GET /v1/models)", "invalid_request_error", "model", "model_not_found");

    static async Task<JsonDocument> ReadBody(HttpContext context)
    {
        using var buffer = new MemoryStream();
        try { await context.Request.Body.CopyToAsync(buffer, context.RequestAborted); }
        catch (BadHttpRequestException e) when (e.StatusCode == 413) { throw new OpenAiError(413, "the request body is too large", "invalid_request_error", null, "request_too_large"); }
        // Checked whole (UTF-8, lone surrogates, depth): JsonDocument meets a bad string only when it is read, deep in a handler,
        // where it threw InvalidOperationException (a 500) instead of this 400.
        try { return JsonInput.Parse(buffer.ToArray(), "the body"); }
        catch (InputError e) { throw OpenAiError.Invalid(e.Message, null, "invalid_json"); }
    }

    static Task Write(HttpContext context, OpenAiError error)
    {
        context.Response.StatusCode = error.Status;
        return context.Response.WriteAsJsonAsync(error.Body, s_json);
    }

    static async Task Sse(HttpContext context, object payload)
    {
        await context.Response.WriteAsync("data: " + JsonSerializer.Serialize(payload, s_json) + "\n\n", context.RequestAborted);
        await context.Response.Body.FlushAsync(context.RequestAborted);
    }

    static int[] Tokens(HookedTransformer model, string? text, int[]? tokens, ServeOptions options, string param)
    {
        try { return Analyses.Tokens(model, text, tokens, options); }
        catch (InputError e) { throw OpenAiError.Invalid(e.Message, param, e.Message.Contains("at most", StringComparison.Ordinal) ? "context_length_exceeded" : "invalid_value"); }
    }

    static List<string> Stops(JsonElement body)
    {
        if (Fields.Get(body, "stop") is not { } stop) return [];
        var list = stop.ValueKind switch
        {
            JsonValueKind.String => [stop.GetString()!],
            JsonValueKind.Array when stop.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String) => stop.EnumerateArray().Select(e => e.GetString()!).ToList(),
            _ => throw Fields.Wrong("stop", "a string or an array of strings", stop),
        };
        if (list.Count > 4) throw OpenAiError.Invalid("at most 4 stop sequences", "stop", "invalid_value");
        if (list.Any(s => s.Length == 0 || s.Length > 256)) throw OpenAiError.Invalid("stop sequences must have 1 to 256 characters", "stop", "invalid_value");
        return list;
    }

    static List<(string Role, string Content)> ChatMessages(JsonElement body)
    {
        var messages = Fields.Get(body, "messages") ?? throw OpenAiError.Invalid("'messages' is required", "messages", "missing_field");
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0) throw Fields.Wrong("messages", "a non-empty array", messages);
        var list = new List<(string, string)>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string path = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw Fields.Wrong(path, "an object", m);
            string role = Fields.String(m, "role", path + ".role") ?? throw OpenAiError.Invalid($"'{path}.role' is required", path + ".role", "missing_field");
            if (role == "developer") role = "system";
            var content = Fields.Get(m, "content");
            string text = content switch
            {
                null => "",
                { ValueKind: JsonValueKind.String } c => c.GetString()!,
                { ValueKind: JsonValueKind.Array } c when c.EnumerateArray().All(p => p.ValueKind == JsonValueKind.Object && p.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String)
                    => string.Concat(c.EnumerateArray().Select(p => p.GetProperty("text").GetString())),
                { } c => throw Fields.Wrong(path + ".content", "a string or an array of text parts", c),
            };
            list.Add((role, text));
        }
        return list;
    }

    /// <summary>Without a chat template: one "role: content" line per message, then "assistant:" for the reply.</summary>
    public static string PlainChat(IEnumerable<(string Role, string Content)> messages) =>
        string.Concat(messages.Select(m => $"{m.Role}: {m.Content}\n")) + "assistant:";

    /// <summary>Builds OpenAI's response and chunk objects (legacy completion or chat) with the <c>loupe</c> extension.</summary>
    sealed record Response(bool Chat, string Id, string Model, long Created, int[] PromptIds, LoupeRequest Loupe)
    {
        string Object => Chat ? "chat.completion" : "text_completion";

        public object Final(CompletionRun run)
        {
            object choice = Chat
                ? new { index = 0, message = new { role = "assistant", content = run.Text, refusal = (string?)null }, logprobs = ChatLogprobs(run.Logprobs), finish_reason = run.FinishReason }
                : new { text = run.Text, index = 0, logprobs = LegacyLogprobs(run.Logprobs), finish_reason = run.FinishReason };
            return new Dictionary<string, object?>
            {
                ["id"] = Id, ["object"] = Object, ["created"] = Created, ["model"] = Model, ["system_fingerprint"] = null,
                ["choices"] = new[] { choice }, ["usage"] = Usage(run), ["loupe"] = Summary(run),
            };
        }

        object Usage(CompletionRun run) => new { prompt_tokens = PromptIds.Length, completion_tokens = run.Tokens.Count, total_tokens = PromptIds.Length + run.Tokens.Count };

        object Summary(CompletionRun run) => new
        {
            prompt_tokens = PromptIds,
            tokens = run.Tokens,
            steer = Loupe.EditViews,
            monitors = Loupe.Monitors.Select(m => new
            {
                name = m.Name, hook = m.Hook, threshold = m.Threshold, action = m.Action.ToString().ToLowerInvariant(), direction = m.Below ? "below" : "above",
                readings = m.Readings, first_crossing = m.FirstCrossing, flagged = m.FirstCrossing is not null && m.Action != MonitorAction.None,
            }),
            stopped_by = run.StoppedBy,
        };

        /// <summary>A streamed chunk: a token (<paramref name="e"/>), the role opener (chat), or the final chunk with finish_reason (<paramref name="end"/>).</summary>
        public object Chunk(TokenEvent? e, CompletionRun? end, bool role = false)
        {
            object? logprobs = e?.Logprob is { } lp ? (Chat ? ChatLogprobs([lp]) : LegacyLogprobs([lp])) : null;
            string? finish = end?.FinishReason;
            object choice = Chat
                ? new { index = 0, delta = role ? new { role = (string?)"assistant", content = (string?)"" } : new { role = (string?)null, content = e is null ? null : (string?)e.Text }, logprobs, finish_reason = finish }
                : new { text = e?.Text ?? "", index = 0, logprobs, finish_reason = finish };
            object? loupe = e is not null && e.Id >= 0
                ? new
                {
                    token_index = e.Index, token = e.Id,
                    readings = Loupe.Monitors.Select((m, i) => (m.Name, e.Readings[i])).ToDictionary(x => x.Name, x => x.Item2),
                    crossed = e.Crossed,
                }
                : end is not null ? Summary(end) : null;
            return new Dictionary<string, object?>
            {
                ["id"] = Id, ["object"] = Chat ? "chat.completion.chunk" : "text_completion", ["created"] = Created, ["model"] = Model, ["system_fingerprint"] = null,
                ["choices"] = new[] { choice }, ["loupe"] = loupe,
            };
        }

        public object UsageChunk(CompletionRun run) => new Dictionary<string, object?>
        {
            ["id"] = Id, ["object"] = Chat ? "chat.completion.chunk" : "text_completion", ["created"] = Created, ["model"] = Model,
            ["choices"] = Array.Empty<object>(), ["usage"] = Usage(run),
        };

        static object? ChatLogprobs(IReadOnlyList<TokenLogprob> items) => items.Count == 0 ? null : new
        {
            content = items.Select(t => new
            {
                token = t.Token, logprob = t.Logprob, bytes = CompletionRun.Bytes(t.Token),
                top_logprobs = t.Top.Select(a => new { token = a.Token, logprob = a.Logprob, bytes = CompletionRun.Bytes(a.Token) }),
            }),
            refusal = (object?)null,
        };

        static object? LegacyLogprobs(IReadOnlyList<TokenLogprob> items)
        {
            if (items.Count == 0) return null;
            var offsets = new List<int>();
            int at = 0;
            foreach (var t in items) { offsets.Add(at); at += t.Token.Length; }
            return new
            {
                tokens = items.Select(t => t.Token),
                token_logprobs = items.Select(t => t.Logprob),
                top_logprobs = items.Select(t => t.Top.GroupBy(a => a.Token).ToDictionary(g => g.Key, g => g.First().Logprob)),
                text_offset = offsets,
            };
        }
    }
}
