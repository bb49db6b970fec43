using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace Loupe.Testing;

/// <summary>One request the fake hub received.</summary>
internal sealed record HubRequest(string Method, string Path, string? Range, string? Authorization);

/// <summary>
/// A real HTTP server on 127.0.0.1 that answers like the Hugging Face hub:
/// <c>/{org}/{name}/resolve/{main|commit}/{file}</c> with HEAD and GET, <c>X-Repo-Commit</c>,
/// <c>ETag</c> (weak, for small files), 404 with <c>X-Error-Code</c>; *.safetensors files are LFS
/// files: a 302 carrying <c>X-Linked-Etag</c> (sha256) and <c>X-Linked-Size</c> to
/// <c>{cdn}/cdn/{sha256}?signature=…</c>, which serves the bytes with <c>Range: bytes=N-</c>
/// support (206) and, like a GET-signed URL, refuses HEAD when it is a separate origin.
/// Every request is recorded in <see cref="Requests"/>.
/// </summary>
internal sealed class FakeHub : IDisposable
{
    readonly HttpListener _listener;
    readonly Task _loop;
    readonly HttpListener? _cdnListener;
    readonly Task? _cdnLoop;
    readonly ConcurrentDictionary<string, Repo> _repos = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<string, byte[]> _cdn = new(StringComparer.Ordinal);

    sealed record Repo(string Commit, IReadOnlyDictionary<string, byte[]> Files);

    public string Endpoint { get; }

    /// <summary>Origin of the CDN ("" when it is the hub itself).</summary>
    public string CdnEndpoint { get; }

    public ConcurrentQueue<HubRequest> Requests { get; } = new();

    /// <summary>When set, requests without <c>Authorization: Bearer {token}</c> get 401.</summary>
    public string? RequiredToken { get; set; }

    /// <summary>When true the CDN ignores <c>Range</c> and always answers 200 with the whole file.</summary>
    public bool IgnoreRange { get; set; }

    /// <summary>Files whose announced X-Linked-Size is this many bytes more than the real size.</summary>
    public ConcurrentDictionary<string, long> SizeLies { get; } = new();

    /// <param name="crossOriginCdn">
    /// True (as on the real hub): LFS bytes are served by a second listener on another port, so
    /// the redirect is cross-origin. False: a relative redirect to the same server.
    /// </param>
    public FakeHub(bool crossOriginCdn = true)
    {
        (_listener, Endpoint) = StartListener();
        _loop = Task.Run(() => LoopAsync(_listener, Handle));
        if (crossOriginCdn)
        {
            (_cdnListener, CdnEndpoint) = StartListener();
            _cdnLoop = Task.Run(() => LoopAsync(_cdnListener, Handle));
        }
        else CdnEndpoint = "";
    }

    static (HttpListener, string) StartListener()
    {
        for (int attempt = 0; ; attempt++)
        {
            int port = FreePort();
            var listener = new HttpListener();
            listener.Prefixes.Add($"http://127.0.0.1:{port}/");
            try
            {
                listener.Start();
                return (listener, $"http://127.0.0.1:{port}");
            }
            catch (HttpListenerException) when (attempt < 10)
            {
                listener.Close();
            }
        }
    }

    /// <summary>A loopback port nobody listens on (at the moment it is returned).</summary>
    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public static string Sha256(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));

    public static string GitSha(byte[] data) => Convert.ToHexStringLower(SHA1.HashData(data));

    /// <summary>Adds a repository; returns its commit hash.</summary>
    public string AddRepo(string repoId, IReadOnlyDictionary<string, byte[]> files)
    {
        string commit = GitSha(Encoding.UTF8.GetBytes(repoId + string.Join(",", files.Keys)));
        _repos[repoId] = new Repo(commit, files);
        foreach (var (name, data) in files)
            if (IsLfs(name)) _cdn[Sha256(data)] = data;
        return commit;
    }

    public int Count(string method, string pathContains) =>
        Requests.Count(r => r.Method == method && r.Path.Contains(pathContains, StringComparison.Ordinal));

    static bool IsLfs(string file) => file.EndsWith(".safetensors", StringComparison.Ordinal) || file.EndsWith(".bin", StringComparison.Ordinal)
        || file.EndsWith(".npz", StringComparison.Ordinal) || file.EndsWith(".pt", StringComparison.Ordinal) || file.EndsWith(".parquet", StringComparison.Ordinal);

    static async Task LoopAsync(HttpListener listener, Action<HttpListenerContext> handle)
    {
        while (true)
        {
            HttpListenerContext context;
            try
            {
                context = await listener.GetContextAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return; // stopped
            }
            _ = Task.Run(() => handle(context));
        }
    }

    void Handle(HttpListenerContext context)
    {
        var request = context.Request;
        var response = context.Response;
        try
        {
            string path = request.Url!.AbsolutePath;
            Requests.Enqueue(new HubRequest(request.HttpMethod, path, request.Headers["Range"], request.Headers["Authorization"]));
            bool head = request.HttpMethod == "HEAD";

            // The CDN uses signed URLs: only the hub checks the token.
            bool cdn = path.StartsWith("/cdn/", StringComparison.Ordinal);
            if (!cdn && RequiredToken is not null && request.Headers["Authorization"] != $"Bearer {RequiredToken}")
            {
                response.StatusCode = 401;
                response.AddHeader("X-Error-Code", "GatedRepo");
                Finish(response, head, Encoding.UTF8.GetBytes("Access to this model is restricted"));
                return;
            }

            if (cdn)
            {
                if (head && _cdnListener is not null)
                {
                    response.StatusCode = 403; // a URL signed for GET
                    Finish(response, head, []);
                    return;
                }
                if (!_cdn.TryGetValue(path["/cdn/".Length..], out var blob)) { NotFound(response, head, "EntryNotFound"); return; }
                response.AddHeader("ETag", $"\"{Sha256(blob)}\"");
                ServeBytes(request, response, head, blob);
                return;
            }

            // Spaces and datasets are added as "spaces/{org}/{name}" or "datasets/{org}/{name}" and answer at /api/spaces/… and
            // /spaces/{org}/{name}/resolve/… (/api/datasets/…, /datasets/…), as the hub's do.
            string kind = "";
            foreach (var k in new[] { "spaces", "datasets" })
            {
                if (path.StartsWith($"/api/{k}/", StringComparison.Ordinal)) (kind, path) = (k + "/", "/api/models/" + path[$"/api/{k}/".Length..]);
                else if (path.StartsWith($"/{k}/", StringComparison.Ordinal)) (kind, path) = (k + "/", path[$"/{k}".Length..]);
            }

            // /api/models/{org}/{name}/revision/{revision}?blobs=true: the commit and every file, with sizes (LFS files: the object's).
            if (path.StartsWith("/api/models/", StringComparison.Ordinal))
            {
                var api = path["/api/models/".Length..].Split('/', 4);
                if (api.Length != 4 || api[2] != "revision" || !_repos.TryGetValue(kind + api[0] + "/" + api[1], out var listed)) { NotFound(response, head, "RepoNotFound"); return; }
                string rev = Uri.UnescapeDataString(api[3]);
                if (rev != "main" && rev != listed.Commit) { NotFound(response, head, "RevisionNotFound"); return; }
                var siblings = listed.Files.Select(f => IsLfs(f.Key)
                    ? (object)new { rfilename = f.Key, size = 134, blobId = GitSha(f.Value), lfs = new { sha256 = Sha256(f.Value), size = f.Value.Length, pointerSize = 134 } }
                    : new { rfilename = f.Key, size = f.Value.Length, blobId = GitSha(f.Value) });
                response.StatusCode = 200;
                response.ContentType = "application/json";
                Finish(response, head, System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(new { id = api[0] + "/" + api[1], sha = listed.Commit, siblings }));
                return;
            }

            // /{org}/{name}/resolve/{revision}/{file}
            var parts = path.Trim('/').Split('/', 5);
            if (parts.Length != 5 || parts[2] != "resolve") { NotFound(response, head, "RepoNotFound"); return; }
            string repoId = kind + parts[0] + "/" + parts[1];
            string revision = Uri.UnescapeDataString(parts[3]);
            string file = Uri.UnescapeDataString(parts[4]);
            if (!_repos.TryGetValue(repoId, out var repo)) { NotFound(response, head, "RepoNotFound"); return; }
            if (revision != "main" && revision != repo.Commit) { NotFound(response, head, "RevisionNotFound"); return; }
            response.AddHeader("X-Repo-Commit", repo.Commit);
            if (!repo.Files.TryGetValue(file, out var data)) { NotFound(response, head, "EntryNotFound"); return; }

            if (IsLfs(file))
            {
                // The hub's LFS redirect: metadata on the 302, bytes at the CDN.
                long lie = SizeLies.TryGetValue(file, out var extra) ? extra : 0;
                response.StatusCode = 302;
                response.AddHeader("Location", $"{CdnEndpoint}/cdn/{Sha256(data)}?signature=abc");
                response.AddHeader("X-Linked-Etag", $"\"{Sha256(data)}\"");
                response.AddHeader("X-Linked-Size", (data.Length + lie).ToString());
                response.AddHeader("ETag", $"\"{GitSha(Encoding.UTF8.GetBytes("pointer " + file))}\"");
                Finish(response, head, []);
                return;
            }
            response.AddHeader("ETag", $"W/\"{GitSha(data)}\"");
            ServeBytes(request, response, head, data);
        }
        catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException)
        {
            // client went away
        }
        finally
        {
            try { response.Close(); } catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException or InvalidOperationException) { }
        }
    }

    void ServeBytes(HttpListenerRequest request, HttpListenerResponse response, bool head, byte[] data)
    {
        response.AddHeader("Accept-Ranges", "bytes");
        string? range = IgnoreRange ? null : request.Headers["Range"];
        if (range is not null && range.StartsWith("bytes=", StringComparison.Ordinal) && range.EndsWith('-')
            && long.TryParse(range["bytes=".Length..^1], out long from))
        {
            if (from >= data.Length)
            {
                response.StatusCode = 416;
                response.AddHeader("Content-Range", $"bytes */{data.Length}");
                Finish(response, head, []);
                return;
            }
            response.StatusCode = 206;
            response.AddHeader("Content-Range", $"bytes {from}-{data.Length - 1}/{data.Length}");
            Finish(response, head, data.AsSpan((int)from).ToArray());
            return;
        }
        response.StatusCode = 200;
        Finish(response, head, data);
    }

    static void NotFound(HttpListenerResponse response, bool head, string code)
    {
        response.StatusCode = 404;
        response.AddHeader("X-Error-Code", code);
        Finish(response, head, Encoding.UTF8.GetBytes(code));
    }

    static void Finish(HttpListenerResponse response, bool head, byte[] body)
    {
        response.ContentLength64 = body.Length;
        if (!head && body.Length > 0) response.OutputStream.Write(body);
    }

    public void Dispose()
    {
        foreach (var listener in new[] { _listener, _cdnListener })
        {
            if (listener is null) continue;
            try { listener.Stop(); } catch (ObjectDisposedException) { }
            listener.Close();
        }
        _loop.Wait(TimeSpan.FromSeconds(5));
        _cdnLoop?.Wait(TimeSpan.FromSeconds(5));
    }
}
