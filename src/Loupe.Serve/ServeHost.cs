using System.Net;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Loupe.Circuits.Heads;
using Loupe.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Loupe.Serve;

/// <summary>Parameters of a head-detection job.</summary>
/// <param name="Sequences">Repeated-token sequences to score (1–256, default 16), one per progress step.</param>
/// <param name="RepeatLength">Length of each repeated half (default: the library's).</param>
public sealed record HeadDetectionJobRequest(int? Sequences, int? RepeatLength);

/// <summary><c>loupe serve</c>: the JSON API and the embedded single-page app over one model and a folder of artifacts.</summary>
public sealed class ServeHost : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly ServedStores _featureStores;

    public ServeOptions Options { get; }
    /// <summary>The token requests must carry; null when none is required (loopback without --token).</summary>
    public string? Token { get; }
    public Workspace Workspace { get; }

    /// <summary>The URL the server listens on (known after <see cref="StartAsync"/>).</summary>
    public Uri? Url { get; private set; }

    internal static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <exception cref="InputError">The host is not an address, or the graphs folder does not exist.</exception>
    public ServeHost(HookedTransformer model, ServeOptions options)
    {
        if (!options.IsLoopback && !IPAddress.TryParse(options.Host, out _))
            throw new InputError($"argument: --host: '{options.Host}' is not an IP address (use 127.0.0.1, ::1, 0.0.0.0 or a local interface's address)");
        Options = options;
        Token = options.Token ?? (options.IsLoopback ? null : Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));
        var crosscoders = new ServedCrosscoders(options.Crosscoders); // first: a bad --crosscoder or --diff is refused before anything is opened
        var modelDiffs = new ServedModelDiffs(options.ModelDiffs);
        Workspace = new Workspace(options.GraphsDir);
        var gate = new ModelGate(model, options.MaxQueuedModelRequests);
        _featureStores = new ServedStores(options.FeatureStores, options.SaePath);
        var jobs = new JobManager(options.MaxRunningJobs);
        var detection = new Lazy<Task<DetectionView>>(() => gate.RunAsync(m => Analyses.Detection(HeadDetector.Detect(m, options.HeadDetection))));

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            k.Limits.MaxRequestHeadersTotalSize = 32 * 1024;
            k.AddServerHeader = false;
            var address = options.Host.Equals("localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback : IPAddress.Parse(options.Host);
            k.Listen(address, options.Port);
        });
        builder.Services.ConfigureHttpJsonOptions(o =>
        {
            o.SerializerOptions.PropertyNamingPolicy = Json.PropertyNamingPolicy;
            o.SerializerOptions.NumberHandling = Json.NumberHandling;
        });
        builder.Services.AddOpenApi(o => o.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Info.Title = "Loupe";
            doc.Info.Description = "The JSON API of `loupe serve`. Every request needs the access token (Authorization: Bearer, or the token cookie) when the server was started with one.";
            return Task.CompletedTask;
        }));
        _app = builder.Build();
        _app.Use(SecurityHeaders);
        _app.Use(Errors);
        _app.Use(CheckToken);
        Endpoints.OpenAiEndpoints.Map(_app, gate, options);

        // A tuned lens (--tuned) is read once, at start: a bad file stops the server before it listens.
        var tunedLens = options.TunedLensPath is { } lensPath ? Analyses.LoadTunedLens(lensPath, model) : null;
        var api = _app.MapGroup("/api");
        api.MapGet("/model", () => Analyses.Describe(model, options)).WithSummary("The served model");
        api.MapPost("/prompt", async (PromptRequest body, CancellationToken cancel) =>
        {
            int k = Math.Clamp(body.TopK ?? 10, 1, 50);
            int[] ids = Analyses.Tokens(model, body.Text, body.Tokens, options);
            return await gate.RunAsync(m => Analyses.Prompt(m, ids, k, tunedLens), cancel);
        }).WithSummary("Tokens, top-k next tokens per position, logit lens (stage × position), direct logit attribution of the last position's top token, and the tuned lens when the server has one (--tuned)");
        api.MapPost("/attention", async (PromptRequest body, CancellationToken cancel) =>
        {
            int[] ids = Analyses.Tokens(model, body.Text, body.Tokens, options);
            var patterns = await gate.RunAsync(m => Analyses.Patterns(m, ids), cancel);
            var scores = await detection.Value;
            return new AttentionResponse([.. ids.Select(id => new TokenView(id, Analyses.Text(model, id)))], model.Config.NLayers, model.Config.NHeads, patterns, scores);
        }).WithSummary("Every head's attention pattern [layer][head][query][key] and the model's head-detection scores");
        api.MapGet("/artifacts", () =>
        {
            Workspace.Scan();
            return Workspace.List();
        }).WithSummary("The workspace index: graph, circuit and patching JSON under --graphs, by id");
        api.MapGet("/artifacts/{id}", (string id) =>
            Workspace.OpenById(id) is { } stream ? Results.Stream(stream, "application/json") : Results.NotFound(new { error = "no artifact with that id" }))
            .WithSummary("One artifact's JSON, by id");
        api.MapPost("/jobs/{kind}", async (string kind, HttpRequest request) =>
        {
            if (kind != "head-detection") return Results.NotFound(new { error = $"no job kind '{kind}'; kinds: head-detection, patching-sweep, feature-store" });
            var body = request.ContentLength is > 0 ? await request.ReadFromJsonAsync<HeadDetectionJobRequest>(Json) : null;
            int sequences = Math.Clamp(body?.Sequences ?? 16, 1, 256);
            int? repeat = body?.RepeatLength is int r ? Math.Clamp(r, 1, 1024) : null;
            var job = jobs.Start(kind, async (job, cancel) =>
            {
                var runs = new List<HeadDetectionResult>();
                for (int i = 0; i < sequences; i++)
                {
                    cancel.ThrowIfCancellationRequested();
                    var settings = new HeadDetectionSettings { Batch = 1, Seed = i, RepeatLength = repeat };
                    runs.Add(await gate.RunAsync(m => HeadDetector.Detect(m, settings), cancel));
                    job.Report(new JobEvent("progress", i + 1, sequences, $"scored sequence {i + 1} of {sequences}"));
                }
                return Analyses.Average(runs);
            });
            return job is null
                ? Results.Json(new { error = $"{options.MaxRunningJobs} jobs are already running; cancel one or wait" }, Json, statusCode: 429)
                : Results.Json(new JobView(job.Id, job.Kind, job.State), Json, statusCode: 202);
        }).WithSummary("Starts a job (kinds: head-detection); progress at /api/jobs/{id}/events");
        api.MapGet("/jobs/{id}", (string id) => jobs.Find(id) is { } job ? Results.Json(new JobView(job.Id, job.Kind, job.State), Json) : Results.NotFound())
            .WithSummary("A job's state");
        api.MapGet("/jobs/{id}/events", async (string id, HttpContext context) =>
        {
            if (jobs.Find(id) is not { } job) { context.Response.StatusCode = 404; return; }
            context.Response.ContentType = "text/event-stream";
            context.Response.Headers.CacheControl = "no-cache";
            try { await JobManager.StreamAsync(job, context.Response, Json, context.RequestAborted); }
            catch (OperationCanceledException) { }
        }).WithSummary("A job's events as server-sent events: progress, then result, error or cancelled");
        api.MapDelete("/jobs/{id}", (string id) =>
        {
            if (jobs.Find(id) is not { } job) return Results.NotFound();
            job.Cancel.Cancel();
            return Results.Json(new JobView(job.Id, job.Kind, job.State), Json, statusCode: 202);
        }).WithSummary("Cancels a job");
        // The transcoders (--transcoders) are loaded once: the Graph page's interventions and the graph job share them.
        var replacement = options.TranscodersDir is { } tcDir ? new Loupe.Attribution.ReplacementModel(model, LoadTranscoders(tcDir, model, options)) : null;
        Endpoints.GraphEndpoints.Map(_app, gate, options, Workspace, _featureStores, replacement);
        Endpoints.CircuitEndpoints.Map(_app, Workspace);
        JobEndpoints.Map(_app, gate, jobs, options, Workspace, _featureStores, replacement);
        FeatureEndpoints.Map(_app, gate, _featureStores, options);
        SteeringEndpoints.Map(_app, gate, _featureStores, options);
        CrosscoderEndpoints.Map(_app, crosscoders, _featureStores);
        ModelDiffEndpoints.Map(_app, modelDiffs);
        _app.MapOpenApi("/api/openapi.json");
        api.MapFallback("{*path}", () => Results.NotFound(new { error = "no such API endpoint" }));
        _app.MapFallback("{*path}", StaticAssets.Serve);
    }

    static readonly string s_csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

    static Task SecurityHeaders(HttpContext context, RequestDelegate next)
    {
        var h = context.Response.Headers;
        h.ContentSecurityPolicy = s_csp;
        h.XContentTypeOptions = "nosniff";
        h["Referrer-Policy"] = "no-referrer";
        h.XFrameOptions = "DENY";
        h["Cross-Origin-Opener-Policy"] = "same-origin";
        h["Cross-Origin-Resource-Policy"] = "same-origin";
        return next(context);
    }

    static async Task Errors(HttpContext context, RequestDelegate next)
    {
        try { await next(context); }
        catch (Exception e) when (!context.Response.HasStarted && e is InputError or ServerBusyException or BadHttpRequestException or JsonException or NoPlaceException)
        {
            context.Response.StatusCode = e switch
            {
                ServerBusyException => 503,
                NoPlaceException => 409,
                BadHttpRequestException b => b.StatusCode,
                _ => 400,
            };
            await context.Response.WriteAsJsonAsync(new { error = e is BadHttpRequestException { StatusCode: 413 } ? "the request body is too large" : e.Message }, Json);
        }
    }

    async Task CheckToken(HttpContext context, RequestDelegate next)
    {
        if (Token is null) { await next(context); return; }
        var request = context.Request;
        string? given = request.Headers.Authorization.ToString() is { } auth && auth.StartsWith("Bearer ", StringComparison.Ordinal) ? auth[7..].Trim()
            : request.Cookies.TryGetValue("token", out var cookie) ? cookie : null;
        if (Matches(given)) { await next(context); return; }
        // First visit with ?token=: set the cookie and drop the token from the address bar (and from any Referer).
        if (request.Method == "GET" && request.Query.TryGetValue("token", out var query) && Matches(query.ToString()))
        {
            context.Response.Cookies.Append("token", Token, new CookieOptions { HttpOnly = true, SameSite = SameSiteMode.Strict, Path = "/", Secure = request.IsHttps });
            var rest = request.Query.Where(q => q.Key != "token").Select(q => $"{Uri.EscapeDataString(q.Key)}={Uri.EscapeDataString(q.Value.ToString())}");
            string qs = string.Join("&", rest);
            context.Response.Redirect(request.PathBase + request.Path + (qs.Length > 0 ? "?" + qs : ""));
            return;
        }
        context.Response.StatusCode = 401;
        context.Response.Headers.WWWAuthenticate = "Bearer";
        await context.Response.WriteAsJsonAsync(new { error = "this server needs its access token: Authorization: Bearer <token>, or open the URL printed at start-up (?token=…)" }, Json);
    }

    bool Matches(string? given) =>
        given is not null && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(Token!));

    // The transcoders, where their decoders go on a GPU set and what they take there said (or refused) before the upload.
    static Loupe.Dictionaries.Transcoders.IMlpReplacement LoadTranscoders(string path, HookedTransformer model, ServeOptions options)
    {
        var transcoders = Loupe.Dictionaries.Transcoders.MlpReplacements.Load(path, model, decoders: options.Decoders, log: Console.Error.WriteLine);
        Loupe.Dictionaries.Transcoders.DeviceMlpReplacement.SetDecodersOnDevice(transcoders, options.DeviceDecoders);
        if (Loupe.Dictionaries.Transcoders.DeviceMlpReplacement.Plan(transcoders, model.Backend) is { } line) Console.Error.WriteLine(line);
        return transcoders;
    }

    public async Task StartAsync(CancellationToken cancel = default)
    {
        await _app.StartAsync(cancel);
        string address = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        Url = new Uri(address.Replace("0.0.0.0", "127.0.0.1").Replace("[::]", "[::1]") + "/");
    }

    /// <summary>Runs until the process is asked to stop (Ctrl+C).</summary>
    public Task WaitForShutdownAsync() => _app.WaitForShutdownAsync();

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        _featureStores.Dispose();
    }
}

/// <summary>The single-page app embedded in this assembly (built from web/ into wwwroot/).</summary>
static class StaticAssets
{
    static readonly Assembly s_assembly = typeof(StaticAssets).Assembly;
    static readonly HashSet<string> s_names = [.. s_assembly.GetManifestResourceNames().Where(n => n.StartsWith("wwwroot/", StringComparison.Ordinal))];

    static readonly Dictionary<string, string> s_types = new(StringComparer.OrdinalIgnoreCase)
    {
        [".html"] = "text/html; charset=utf-8", [".js"] = "text/javascript; charset=utf-8", [".css"] = "text/css; charset=utf-8",
        [".svg"] = "image/svg+xml", [".png"] = "image/png", [".ico"] = "image/x-icon", [".json"] = "application/json", [".woff2"] = "font/woff2",
    };

    public static bool Built => s_names.Contains("wwwroot/index.html");

    // Paths are looked up in the assembly's resource table, never on disk; anything unknown without an extension is an
    // app route and gets index.html.
    public static async Task Serve(HttpContext context)
    {
        if (context.Request.Method is not ("GET" or "HEAD")) { context.Response.StatusCode = 405; return; }
        string path = context.Request.Path.Value ?? "/";
        string name = "wwwroot" + path;
        if (!s_names.Contains(name))
        {
            if (Path.HasExtension(path)) { context.Response.StatusCode = 404; return; }
            name = "wwwroot/index.html";
        }
        if (!s_names.Contains(name))
        {
            context.Response.ContentType = "text/plain; charset=utf-8";
            await context.Response.WriteAsync("The Loupe front end is not built into this server. Run scripts/setup.sh (needs npm), then rebuild. The API is at /api/.");
            return;
        }
        context.Response.ContentType = s_types.GetValueOrDefault(Path.GetExtension(name), "application/octet-stream");
        // Vite names assets by content hash, so they can be cached for good; index.html must be re-read.
        context.Response.Headers.CacheControl = name.StartsWith("wwwroot/assets/", StringComparison.Ordinal) ? "public, max-age=31536000, immutable" : "no-cache";
        await using var stream = s_assembly.GetManifestResourceStream(name)!;
        context.Response.ContentLength = stream.Length;
        if (context.Request.Method == "GET") await stream.CopyToAsync(context.Response.Body, context.RequestAborted);
    }
}
