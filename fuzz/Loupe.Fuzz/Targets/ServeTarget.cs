using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Fuzz.Engine;
using Loupe.Models;
using Loupe.Serve;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>loupe serve</c>'s HTTP API as a client can call it: one real server (Kestrel on a free port) over the llama fixture
/// with a tokenizer, an SAE, its feature store, per-layer transcoders, a steering vector and the OpenAI-compatible API;
/// each input is one request (request.json: method and path with its query; body.json: the body, sent as its bytes are)
/// with the body, the path or the query abused. Any status but a 5xx is acceptable (503, busy, excepted); a 5xx is an exception the server did not
/// turn into a clear 4xx, and a dropped connection or no answer in 15 s means the server is gone or stuck. A job the server
/// accepted (202) is followed to its end: one that fails with an exception no message explains (the job runner writes
/// "TypeException: …" for anything but an InputError) is a failure too; one still running after 10 s is cancelled.
/// </summary>
public sealed class ServeTarget : FuzzTarget
{
    public override string Name => "serve";
    public override int DefaultIterations => 1500;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(20);

    ServeHost? _host;
    HookedTransformer? _model;
    HttpClient? _client;
    string _store = "";

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string root = Directory.CreateDirectory(Path.Combine(context.Scratch, "serve")).FullName;
        string modelFolder = TokenizerJsonTarget.ModelWithTokenizer(context, "llama", Path.Combine(root, "model"));
        _model = ModelLoader.LoadFolder(modelFolder);

        var (dict, cfg) = PipelineFixtures.Dictionary();
        string sae = Path.Combine(root, "sae");
        SaeLensFormat.Save(sae, dict, cfg);
        string features = Path.Combine(root, "features.db");
        FeatureDashboardBuilder.Build(_model, dict, cfg, PipelineFixtures.Contexts(12, 8), features,
            new FeatureBuildOptions { BatchSize = 4, TopK = 3, Quantiles = 2, QuantileSamples = 2, HistogramBins = 4, Window = 2, LogitCount = 3 });
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        string transcoders = Path.Combine(root, "transcoders");
        // one per layer of the 3-layer model (a set for another layer count is refused when the server starts)
        new CircuitTracerTranscoders([.. Enumerable.Range(0, 3).Select(l => DictionaryChecks.Make(SaeShape.Transcoder(64, 16, 64), new ReluActivation(), 3 + l))])
            .Save(transcoders, "fuzz");
        // A steering vector both among the served artifacts (the Steering page) and in the OpenAI API's vector folder.
        string vectors = Directory.CreateDirectory(Path.Combine(root, "vectors")).FullName, graphs = Directory.CreateDirectory(Path.Combine(root, "graphs")).FullName;
        foreach (var dir in new[] { vectors, graphs })
            Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(dir, "calm.safetensors"),
                [("direction", new[] { 64 }, (ReadOnlyMemory<float>)SeedFiles.Floats(64, 31))], new Dictionary<string, string> { ["hook"] = PipelineFixtures.Hook });

        _host = new ServeHost(_model, new ServeOptions
        {
            Port = 0, GraphsDir = graphs, TranscodersDir = transcoders,
            FeatureStores = [features], SaePath = sae, OpenAi = OpenAiMode.Beside, VectorsDir = vectors, MaxRunningJobs = 4,
            HeadDetection = new Loupe.Circuits.Heads.HeadDetectionSettings { Batch = 1, RepeatLength = 3 },
        });
        _host.StartAsync().GetAwaiter().GetResult();
        _client = new HttpClient { BaseAddress = _host.Url, Timeout = TimeSpan.FromSeconds(15) };
        _store = JsonDocument.Parse(_client.GetStringAsync("/api/features/stores").GetAwaiter().GetResult()).RootElement[0].GetProperty("id").GetString()!;
        var sources = JsonDocument.Parse(_client.GetStringAsync("/api/steering/sources").GetAwaiter().GetResult()).RootElement;
        string vector = sources.EnumerateObject().First().Value[0].GetProperty("id").GetString()!;
        string token = Uri.EscapeDataString(_model.Tokenizer!.Decode([17]));

        int[] ids = [1, 17, 42, 99, 3, 8];
        (string Id, string Method, string Path, object? Body)[] requests =
        [
            ("prompt-text", "POST", "/api/prompt", new { text = "The world is 3 and", top_k = 5 }),
            ("prompt-tokens", "POST", "/api/prompt", new { tokens = ids, top_k = 3 }),
            ("attention", "POST", "/api/attention", new { tokens = ids }),
            ("patching-sweep", "POST", "/api/jobs/patching-sweep", new { clean_tokens = ids, corrupt_tokens = new[] { 1, 17, 43, 99, 3, 8 }, answer_id = 5, wrong_id = 6, target = "resid_pre", max_rows = 4 }),
            ("head-detection", "POST", "/api/jobs/head-detection", new { sequences = 1, repeat_length = 3 }),
            ("sae-eval", "POST", "/api/jobs/sae-eval", new { texts = new[] { "The cat sat on the mat.", "The world is 7." }, context_size = 8, max_contexts = 2, batch_size = 2, seed = 1, name = "fuzz-eval" }),
            ("feature-store", "POST", "/api/jobs/feature-store", new { texts = new[] { "The cat sat on the mat." }, context_size = 8, max_contexts = 2, top = 2, name = "fuzz-store" }),
            ("graph-job", "POST", "/api/jobs/graph", new { tokens = ids[..4], max_feature_nodes = 16, node_threshold = 0.8, edge_threshold = 0.98, max_logits = 3, name = "fuzz-graph" }),
            ("intervene", "POST", "/api/graph/intervene", new { tokens = ids, edits = new[] { new { layer = 0, position = 2, feature = 3, value = 0f, mode = "set" } }, top_k = 3, frozen = false }),
            ("graph-feature", "GET", "/api/graph/feature/1/3", null),
            ("search-text", "POST", $"/api/features/{{store}}/search-text", new { text = "The cat", per_token = 3 }),
            ("store-page", "GET", "/api/features/{store}?order=max_act&offset=0&limit=5", null),
            ("store-feature", "GET", "/api/features/{store}/3?top=2", null),
            ("search-token", "GET", $"/api/features/{{store}}/search-token?token={token}&limit=3", null),
            ("steering-stream", "GET", $"/api/steering/stream?text=The%20cat&source={Uri.EscapeDataString("vector:" + vector)}&hook=blocks.1.hook_resid_post&coeff=2&n=2", null),
            ("completions", "POST", "/v1/completions", new { model = "model", prompt = "The cat", max_tokens = 2, temperature = 0.7, top_p = 0.9, logprobs = 2, seed = 1 }),
            ("chat", "POST", "/v1/chat/completions", new { model = "model", messages = new[] { new { role = "user", content = "Hello" } }, max_tokens = 2, logprobs = true, top_logprobs = 2 }),
            ("chat-stream", "POST", "/v1/chat/completions", new { model = "model", messages = new[] { new { role = "user", content = "Hi" } }, max_tokens = 2, stream = true }),
        ];
        // The body is a file of its own, sent as its bytes are: invalid UTF-8, repeated keys or a cut document reach the server.
        return [.. requests.Select(r => new Seed($"generated:serve-{r.Id}",
        [
            new SeedFile("request.json", Encoding.UTF8.GetBytes(new JsonObject { ["method"] = r.Method, ["path"] = r.Path }.ToJsonString()), FileKind.Script),
            .. r.Body is null ? Array.Empty<SeedFile>() : [new SeedFile("body.json", JsonSerializer.SerializeToUtf8Bytes(r.Body), FileKind.Json)],
        ]))];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var client = _client ?? throw new InvalidOperationException("seeds not built");
        // The request as a client would send it: a mutation that leaves no method or path is not a request.
        var request = JsonInput.ParseNode(File.ReadAllBytes(Path.Combine(folder, "request.json")), "request.json") as JsonObject ?? throw new InputError("request.json: not an object");
        if (!(request["method"] is JsonValue m && m.TryGetValue(out string? method) && method is "GET" or "POST")) throw new InputError("request.json: no method");
        if (!(request["path"] is JsonValue p && p.TryGetValue(out string? path)) || !Uri.TryCreate(path.Replace("{store}", _store), UriKind.Relative, out var uri))
            throw new InputError("request.json: no relative path");
        string bodyPath = Path.Combine(folder, "body.json");
        byte[]? body = File.Exists(bodyPath) ? File.ReadAllBytes(bodyPath) : null;

        using var message = new HttpRequestMessage(new HttpMethod(method), uri);
        if (body is not null)
        {
            message.Content = new ByteArrayContent(body);
            message.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json") { CharSet = "utf-8" };
        }
        HttpResponseMessage response;
        try { response = client.Send(message, HttpCompletionOption.ResponseContentRead); }
        catch (HttpRequestException e)
        {
            // Kestrel answers an over-long body (413) and closes the connection while the client is still sending: fine if the server lives on.
            if (Alive(client)) throw new InputError($"connection closed while sending {body?.Length ?? 0} characters: {e.Message}");
            throw new OracleViolation("server-error", $"the server dropped the connection and answers no more: {e.Message}");
        }
        catch (TaskCanceledException) { throw new OracleViolation("hang", "no answer in 15 s"); }
        using (response)
        {
            int status = (int)response.StatusCode;
            string text = new StreamReader(response.Content.ReadAsStream()).ReadToEnd();
            if (status is 429 or 503) return; // busy (jobs or model requests at their limit): a correct answer, not a refusal of the input
            if (status >= 500)
                throw new OracleViolation("server-error", $"{method} {uri.OriginalString[..Math.Min(120, uri.OriginalString.Length)]}: {status} {text[..Math.Min(300, text.Length)]}");
            if (status >= 400) throw new InputError($"{status}: {text[..Math.Min(200, text.Length)]}");
            if (status == 202 && method == "POST" && uri.OriginalString.StartsWith("/api/jobs/", StringComparison.Ordinal)) FollowJob(client, text);
        }
    }

    static readonly System.Text.RegularExpressions.Regex s_unexplained = new(@"^(?<type>[A-Za-z.]*Exception): ");

    /// <summary>Reads the job's events to its end; a failure whose message is an exception's type and text is a bug's.</summary>
    static void FollowJob(HttpClient client, string accepted)
    {
        string id = JsonNode.Parse(accepted)?["id"]?.GetValue<string>() ?? throw new OracleViolation("server-error", $"a job was accepted without an id: {accepted}");
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        string events;
        try
        {
            using var response = client.GetAsync($"/api/jobs/{id}/events", HttpCompletionOption.ResponseHeadersRead, wait.Token).GetAwaiter().GetResult();
            events = response.Content.ReadAsStringAsync(wait.Token).GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
            client.DeleteAsync($"/api/jobs/{id}").GetAwaiter().GetResult().Dispose(); // a long job (the input asked for much) is no bug
            return;
        }
        var last = events.Split('\n').LastOrDefault(l => l.StartsWith("data: ", StringComparison.Ordinal));
        if (last is null || JsonNode.Parse(last["data: ".Length..]) is not JsonObject e || e["type"]?.GetValue<string>() != "error") return;
        string message = e["message"]?.GetValue<string>() ?? "";
        var match = s_unexplained.Match(message);
        if (match.Success && match.Groups["type"].Value is not ("IOException" or "UnauthorizedAccessException" or "FileNotFoundException" or "DirectoryNotFoundException"))
            throw new OracleViolation("job-error", $"job {id} failed with {message[..Math.Min(300, message.Length)]}");
    }

    static bool Alive(HttpClient client)
    {
        try { return client.GetAsync("/api/model").GetAwaiter().GetResult().IsSuccessStatusCode; }
        catch (HttpRequestException) { return false; }
    }

    public override void Cleanup()
    {
        _client?.Dispose();
        _host?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _model?.Dispose();
        (_client, _host, _model) = (null, null, null);
    }
}
