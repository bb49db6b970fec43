using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Loupe.Models.Loading;

/// <summary>Progress of one file download.</summary>
/// <param name="FileName">File name in the repository, e.g. <c>model.safetensors</c>.</param>
/// <param name="BytesDone">Bytes on disk so far (including a resumed partial download).</param>
/// <param name="BytesTotal">Expected size, or null when the hub did not say.</param>
public sealed record DownloadProgress(string FileName, long BytesDone, long? BytesTotal);

/// <summary>
/// Settings of a <see cref="HubClient"/>. Every null value falls back to the environment variable
/// huggingface_hub reads, so that the cache is shared with Python tools.
/// </summary>
public sealed record HubClientOptions
{
    /// <summary>Hub URL; default <c>$HF_ENDPOINT</c>, else <c>https://huggingface.co</c>.</summary>
    public string? Endpoint { get; init; }

    /// <summary>Cache folder; default <c>$HF_HUB_CACHE</c>, else <see cref="HfHome"/><c>/hub</c>.</summary>
    public string? CacheDir { get; init; }

    /// <summary>HF home; default <c>$HF_HOME</c>, else <c>~/.cache/huggingface</c>. Used only for the cache folder.</summary>
    public string? HfHome { get; init; }

    /// <summary>
    /// Access token sent as <c>Authorization: Bearer</c> to the endpoint (never to the CDN it
    /// redirects to); default <c>$HF_TOKEN</c>; an empty string sends none even when HF_TOKEN is set.
    /// </summary>
    public string? Token { get; init; }

    /// <summary>Never touch the network; default true when <c>$HF_HUB_OFFLINE</c> is 1/true/yes/on.</summary>
    public bool? Offline { get; init; }

    /// <summary>Limit for connecting and receiving response headers, per request.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Longest pause allowed between two chunks of a download body.</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How long to wait for another process downloading the same blob.</summary>
    public TimeSpan LockTimeout { get; init; } = TimeSpan.FromMinutes(10);
}

/// <summary>
/// Resolves a Hugging Face model id to a local folder holding <c>config.json</c>, the tokenizer
/// files and safetensors weights, downloading into the standard hub cache layout:
/// <code>
/// {cache}/models--{org}--{name}/blobs/{etag}                  file contents
/// {cache}/models--{org}--{name}/snapshots/{commit}/{filename} relative symlink to the blob (or a copy)
/// {cache}/models--{org}--{name}/refs/{revision}               the commit hash
/// {cache}/models--{org}--{name}/.no_exist/{commit}/{filename} optional files the repo lacks
/// </code>
/// Steps per file: HEAD <c>{endpoint}/{repo}/resolve/{revision}/{file}</c> (same-origin
/// redirects followed by hand; the hub's <c>X-Repo-Commit</c>, <c>X-Linked-Etag</c>,
/// <c>X-Linked-Size</c> are read off its LFS redirect to the CDN); GET (following that redirect,
/// without the token) into <c>blobs/{etag}.incomplete</c>, resuming with a
/// <c>Range</c> request; check the size; rename to the blob; link the snapshot entry.
/// Weights are <c>model.safetensors</c> or its shards; a repository without them gives <c>pytorch_model.bin</c> or its
/// shards, whose pickles are read without running them (<see cref="SafeTensorsFile.Format"/>).
/// </summary>
public sealed partial class HubClient : IDisposable
{
    /// <summary>The hub used when neither the options nor <c>$HF_ENDPOINT</c> name one.</summary>
    public const string DefaultEndpoint = "https://huggingface.co";

    /// <summary>Files downloaded when the repository has them.</summary>
    public static readonly IReadOnlyList<string> OptionalFiles =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.json", "merges.txt", "generation_config.json",
    ];

    const string LocalFolderExample = "--model ../shared/models/stories260K";
    const int MaxRedirects = 10;

    readonly HttpClient _http;
    readonly bool _ownsHttp;
    readonly HubClientOptions _options;
    readonly Uri _endpointUri;
    readonly string? _token;

    /// <summary>Hub URL without a trailing slash.</summary>
    public string Endpoint { get; }

    /// <summary>The hub cache folder (may not exist yet).</summary>
    public string CacheDir { get; }

    /// <summary>True when the client never touches the network.</summary>
    public bool Offline { get; }

    /// <summary>A client with its own HTTP stack (redirects followed by hand).</summary>
    public HubClient(HubClientOptions? options = null)
        : this(CreateDefaultHttpClient(options ?? new HubClientOptions()), ownsHttp: true, options) { }

    /// <summary>
    /// A client sending through <paramref name="handler"/> (for tests and proxies). The handler
    /// should not follow redirects itself (<c>AllowAutoRedirect = false</c>), or the metadata on
    /// the hub's LFS redirect is lost and downloads fail with a clear error.
    /// </summary>
    public HubClient(HttpMessageHandler handler, HubClientOptions? options = null, bool disposeHandler = false)
        : this(new HttpClient(handler, disposeHandler) { Timeout = Timeout.InfiniteTimeSpan }, ownsHttp: true, options) { }

    /// <summary>
    /// A client using <paramref name="httpClient"/>, which it does not dispose. Give it a handler
    /// with automatic redirects off so that LFS metadata on the hub's redirect is seen, and an
    /// infinite <see cref="HttpClient.Timeout"/> (this class applies its own).
    /// </summary>
    public HubClient(HttpClient httpClient, HubClientOptions? options = null)
        : this(httpClient, ownsHttp: false, options) { }

    HubClient(HttpClient http, bool ownsHttp, HubClientOptions? options)
    {
        ArgumentNullException.ThrowIfNull(http);
        _http = http;
        _ownsHttp = ownsHttp;
        _options = options ?? new HubClientOptions();
        Endpoint = (NonEmpty(_options.Endpoint) ?? NonEmpty(Environment.GetEnvironmentVariable("HF_ENDPOINT")) ?? DefaultEndpoint)
            .TrimEnd('/');
        if (!Uri.TryCreate(Endpoint, UriKind.Absolute, out var endpointUri) || endpointUri.Scheme is not ("http" or "https"))
            throw new InputError($"hub endpoint '{Endpoint}' (HF_ENDPOINT or the endpoint option) is not an http(s) URL");
        _endpointUri = endpointUri;
        CacheDir = Path.GetFullPath(NonEmpty(_options.CacheDir) ?? DefaultCacheDir(_options.HfHome));
        _token = NonEmpty(_options.Token ?? Environment.GetEnvironmentVariable("HF_TOKEN"))?.Trim();
        Offline = _options.Offline ?? IsTrue(Environment.GetEnvironmentVariable("HF_HUB_OFFLINE"));
    }

    static HttpClient CreateDefaultHttpClient(HubClientOptions options)
    {
        var handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            ConnectTimeout = options.RequestTimeout,
            PooledConnectionLifetime = TimeSpan.FromMinutes(5),
        };
        return new HttpClient(handler, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
    }

    /// <summary>
    /// The cache folder from the environment: <c>$HF_HUB_CACHE</c>, else <c>$HF_HOME/hub</c>,
    /// else <c>~/.cache/huggingface/hub</c>. <paramref name="hfHome"/> replaces <c>$HF_HOME</c>
    /// (and then <c>$HF_HUB_CACHE</c> is ignored).
    /// </summary>
    public static string DefaultCacheDir(string? hfHome = null)
    {
        if (NonEmpty(hfHome) is { } home) return Path.Combine(home, "hub");
        if (NonEmpty(Environment.GetEnvironmentVariable("HF_HUB_CACHE")) is { } hub) return hub;
        if (NonEmpty(Environment.GetEnvironmentVariable("HF_HOME")) is { } envHome) return Path.Combine(envHome, "hub");
        string user = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(user, ".cache", "huggingface", "hub");
    }

    /// <summary>
    /// The cache folder of one repository: <c>{CacheDir}/models--{org}--{name}</c>, or <c>spaces--…</c> / <c>datasets--…</c> for an
    /// id that starts <c>spaces/</c> or <c>datasets/</c> (as huggingface_hub lays them out).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="repoId"/> is not a valid repository id.</exception>
    public string RepoFolder(string repoId)
    {
        if (!IsValidRepoPathId(repoId)) throw new ArgumentException($"'{repoId}' is not a valid Hugging Face repository id", nameof(repoId));
        var (kind, id) = SplitKind(repoId);
        return Path.Combine(CacheDir, kind + "--" + id.Replace("/", "--", StringComparison.Ordinal));
    }

    /// <summary>
    /// A model id (see <see cref="IsValidRepoId"/>), or <c>spaces/org/name</c> or <c>datasets/org/name</c>: a repository whose
    /// files a path fetch reads (tuned-lens's pretrained lenses live in a space). Models are loaded only by plain ids.
    /// </summary>
    public static bool IsValidRepoPathId(string? repoId)
    {
        if (repoId is null) return false;
        var (kind, id) = SplitKind(repoId);
        return IsValidRepoId(id) && (kind == "models" || id.Contains('/'));
    }

    /// <summary>The repository's kind as the hub's API spells it (<c>models</c>, <c>spaces</c>, <c>datasets</c>) and its plain id.</summary>
    static (string Kind, string Id) SplitKind(string repoId) =>
        repoId.StartsWith("spaces/", StringComparison.Ordinal) ? ("spaces", repoId["spaces/".Length..])
        : repoId.StartsWith("datasets/", StringComparison.Ordinal) ? ("datasets", repoId["datasets/".Length..])
        : ("models", repoId);

    /// <summary>True for <c>name</c> or <c>org/name</c> made of letters, digits, '.', '_', '-' (no '--' or '..').</summary>
    public static bool IsValidRepoId(string? repoId) =>
        repoId is { Length: > 0 and <= 96 } && RepoIdRegex().IsMatch(repoId)
        && !repoId.Contains("--", StringComparison.Ordinal) && !repoId.Contains("..", StringComparison.Ordinal)
        && !repoId.EndsWith(".git", StringComparison.Ordinal);

    [GeneratedRegex(@"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")]
    private static partial Regex RepoIdRegex();

    [GeneratedRegex(@"^[0-9a-f]{40}$")]
    private static partial Regex CommitHashRegex();

    [GeneratedRegex(@"^[A-Za-z0-9._-]+$")]
    private static partial Regex SafeSegmentRegex();

    /// <summary>
    /// Returns a local folder with the model's files. An existing local folder is returned
    /// unchanged without touching the network. Otherwise <paramref name="modelIdOrPath"/> is a hub
    /// model id: <c>config.json</c> (required), the optional tokenizer files
    /// (<see cref="OptionalFiles"/>), and <c>model.safetensors</c> or
    /// <c>model.safetensors.index.json</c> with every shard are fetched into the cache (files
    /// already there are not fetched again), and the snapshot folder is returned.
    /// When the hub cannot be reached, or in offline mode, a complete cached snapshot of the
    /// revision is used.
    /// </summary>
    /// <exception cref="InputError">
    /// Neither an existing folder nor a valid model id; a bad revision; offline mode with nothing
    /// complete cached (the message names the cache folder and suggests passing a local folder);
    /// 401/403 (gated or private repo: set HF_TOKEN); 404 on config.json (no such repo or revision);
    /// the repo has no safetensors weights; a malformed or empty weights index.
    /// </exception>
    /// <exception cref="HttpRequestException">
    /// The hub cannot be reached and nothing complete is cached (the message names the endpoint and
    /// the cache folder and suggests passing a local folder); any other unexpected answer of the hub.
    /// </exception>
    /// <exception cref="IOException">A download's size differs from the size the hub announced (the partial file is deleted).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="ct"/> was cancelled (partial files are kept for resuming).</exception>
    /// <remarks>
    /// <c>planned</c> hears what the download takes (the files a model download fetches, with their sizes from the repository's
    /// listing) before the first weight is fetched; it is not called when the hub gives no listing (a mirror without the API)
    /// or everything is cached.
    /// </remarks>
    public async Task<string> ResolveAsync(string modelIdOrPath, string revision = "main",
        IProgress<DownloadProgress>? progress = null, CancellationToken ct = default, Action<HubPathListing>? planned = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelIdOrPath);
        ArgumentException.ThrowIfNullOrEmpty(revision);
        if (Directory.Exists(modelIdOrPath)) return modelIdOrPath;
        if (File.Exists(modelIdOrPath))
            throw new InputError(
                $"'{modelIdOrPath}' is a file; pass the folder that holds config.json and the *.safetensors weights");
        if (!IsValidRepoId(modelIdOrPath))
            throw new InputError(
                $"'{modelIdOrPath}' is neither an existing folder (looked at {Path.GetFullPath(modelIdOrPath)}) " +
                "nor a Hugging Face model id such as 'org/name'");
        ValidateRevision(revision);

        string repoId = modelIdOrPath;
        string repoFolder = RepoFolder(repoId);
        if (Offline)
        {
            return TryGetCachedSnapshot(repoId, revision) ?? throw new InputError(
                $"HF_HUB_OFFLINE is set, so the hub is not contacted, and '{repoId}' (revision '{revision}') is not completely " +
                $"cached in {repoFolder}. Pass a local folder that contains config.json, the *.safetensors weights and the " +
                $"tokenizer files instead, e.g. {LocalFolderExample}, or unset HF_HUB_OFFLINE to download it.");
        }

        // A commit hash names immutable content: a complete snapshot needs no network at all.
        if (CommitHashRegex().IsMatch(revision) && TryGetCachedSnapshot(repoId, revision) is { } pinned) return pinned;

        try
        {
            return await DownloadAsync(repoId, revision, repoFolder, progress, planned, ct).ConfigureAwait(false);
        }
        catch (HubUnreachableException e)
        {
            if (TryGetCachedSnapshot(repoId, revision) is { } cached) return cached;
            throw new HttpRequestException(
                $"The Hugging Face hub at {Endpoint} could not be reached ({e.Message}). Downloading '{repoId}' needs the " +
                $"network, and no complete copy of it (revision '{revision}') is cached in {repoFolder}. Pass a local folder " +
                $"that contains config.json, the *.safetensors weights and the tokenizer files instead, e.g. {LocalFolderExample}",
                e.InnerException ?? e);
        }
    }

    /// <summary>
    /// The snapshot folder of a fully cached revision (config.json plus all safetensors weights
    /// present), or null. Never touches the network.
    /// </summary>
    public string? TryGetCachedSnapshot(string repoId, string revision = "main")
    {
        if (!IsValidRepoId(repoId) || !IsValidRevision(revision)) return null;
        string repoFolder = RepoFolder(repoId);
        string? commit = CommitHashRegex().IsMatch(revision) ? revision : ReadRef(repoFolder, revision);
        if (commit is null || !IsSafeSegment(commit)) return null;
        string snapshot = Path.Combine(repoFolder, "snapshots", commit);
        if (!IsUsableFile(Path.Combine(snapshot, "config.json"))) return null;
        foreach (var (single, indexName) in WeightLayouts)
        {
            if (IsUsableFile(Path.Combine(snapshot, single))) return snapshot;
            if (indexName is null) continue;
            string index = Path.Combine(snapshot, indexName);
            if (!IsUsableFile(index)) continue;
            try
            {
                var shards = ReadShardNames(index);
                return shards.Count > 0 && shards.All(s => IsUsableFile(Path.Combine(snapshot, s))) ? snapshot : null;
            }
            catch (Exception e) when (e is InputError or IOException or UnauthorizedAccessException)
            {
                return null;
            }
        }
        return null;
    }

    async Task<string> DownloadAsync(string repoId, string revision, string repoFolder,
        IProgress<DownloadProgress>? progress, Action<HubPathListing>? planned, CancellationToken ct)
    {
        // 1. config.json at the requested revision: tells the commit every other file is taken at.
        var config = await HeadAsync(repoId, revision, "config.json", ct).ConfigureAwait(false);
        if (config.Meta is null)
        {
            string what = config.ErrorCode switch
            {
                "RevisionNotFound" => $"revision '{revision}' does not exist in '{repoId}'",
                "EntryNotFound" => $"'{repoId}' exists but has no config.json at revision '{revision}', so it is not a transformers model",
                _ => $"the model id '{repoId}' does not exist (or revision '{revision}' does not)",
            };
            throw new InputError(
                $"The hub at {Endpoint} answered 404 Not Found for {FileUrl(repoId, revision, "config.json")}: {what}. " +
                "Check the spelling (ids look like 'org/name'), or pass a local folder instead.");
        }
        string commit = config.Meta.Commit;
        // A branch or tag always gets its ref, even when the hub names the commit as the branch itself ("main"): without the ref
        // an offline run would not find the snapshot this run downloads.
        if (revision != commit || !CommitHashRegex().IsMatch(revision)) WriteRef(repoFolder, revision, commit);
        string snapshot = Path.Combine(repoFolder, "snapshots", commit);
        if (planned is not null) await AnnounceModelAsync(repoId, commit, snapshot, planned, ct).ConfigureAwait(false);
        await FetchAsync(repoId, commit, repoFolder, snapshot, "config.json", config.Meta, progress, ct).ConfigureAwait(false);

        // 2. Optional tokenizer / generation files (a 404 is recorded in .no_exist, as huggingface_hub does).
        foreach (var file in OptionalFiles)
            await FetchOptionalAsync(repoId, commit, repoFolder, snapshot, file, progress, ct).ConfigureAwait(false);

        // 3. Weights: model.safetensors, else its index and every shard it names; a repository from before safetensors,
        //    pytorch_model.bin or its index (their pickles are read, never run: SafeTensorsFile.Format).
        foreach (var (single, indexName) in WeightLayouts)
        {
            if (await FetchOptionalAsync(repoId, commit, repoFolder, snapshot, single, progress, ct).ConfigureAwait(false))
                return snapshot;
            if (indexName is null || !await FetchOptionalAsync(repoId, commit, repoFolder, snapshot, indexName, progress, ct).ConfigureAwait(false))
                continue;
            string index = Path.Combine(snapshot, indexName);
            var shards = ReadShardNames(index);
            if (shards.Count == 0) throw new InputError($"{index}: weight_map: expected at least one tensor, found an empty object");
            foreach (var shard in shards)
            {
                if (IsUsableFile(Path.Combine(snapshot, shard))) continue;
                var meta = await HeadAsync(repoId, commit, shard, ct).ConfigureAwait(false);
                if (meta.Meta is null)
                    throw new InputError(
                        $"{indexName} of '{repoId}' names shard '{shard}', but the hub at {Endpoint} " +
                        $"has no such file (404 for {FileUrl(repoId, commit, shard)})");
                await FetchAsync(repoId, commit, repoFolder, snapshot, shard, meta.Meta, progress, ct).ConfigureAwait(false);
            }
            return snapshot;
        }
        throw new InputError(
            $"'{repoId}' (revision '{revision}') has no weights Loupe reads: none of " +
            string.Join(", ", WeightLayouts.SelectMany(l => new[] { l.Single, l.Index }).OfType<string>()) +
            ". Use a repository (or revision) that has them, or pass a local folder.");
    }

    /// <summary>
    /// Where a repository's weights are, in order of preference: a single file, or an index of shards. Last, TransformerLens's
    /// NeelNanda toy models (gelu-2l, attn-only-2l, …): <c>model_final.pth</c> beside a config.json of their own, the file
    /// TransformerLens picks (the one ending in "final.pth"; their checkpoints/ folder of earlier steps is left behind).
    /// </summary>
    internal static readonly (string Single, string? Index)[] WeightLayouts =
    [
        (SafeTensorsCheckpoint.SingleFileName, SafeTensorsCheckpoint.IndexFileName),
        (SafeTensorsCheckpoint.PyTorchFileName, SafeTensorsCheckpoint.PyTorchIndexFileName),
        (TransformerLensFinalCheckpoint, null),
    ];

    /// <summary>The state dict of a NeelNanda toy model's last training step (what TransformerLens loads).</summary>
    public const string TransformerLensFinalCheckpoint = "model_final.pth";

    /// <summary>Fetches a file the repo may lack; false (and a .no_exist marker) on 404.</summary>
    async Task<bool> FetchOptionalAsync(string repoId, string commit, string repoFolder, string snapshot, string file,
        IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        if (IsUsableFile(Path.Combine(snapshot, file))) return true;
        string noExist = Path.Combine(repoFolder, ".no_exist", commit, file);
        if (File.Exists(noExist)) return false;
        var head = await HeadAsync(repoId, commit, file, ct).ConfigureAwait(false);
        if (head.Meta is null)
        {
            try
            {
                Directory.CreateDirectory(Path.GetDirectoryName(noExist)!);
                File.WriteAllBytes(noExist, []);
            }
            catch (IOException) { }          // only a cache hint
            catch (UnauthorizedAccessException) { }
            return false;
        }
        await FetchAsync(repoId, commit, repoFolder, snapshot, file, head.Meta, progress, ct).ConfigureAwait(false);
        return true;
    }

    sealed record FileMeta(string Commit, string Etag, long? Size);

    sealed record HeadResult(FileMeta? Meta, string? ErrorCode);

    /// <summary>
    /// HEAD a file; <see cref="HeadResult.Meta"/> is null on 404. Like huggingface_hub, only
    /// same-origin redirects are followed: the hub's LFS redirect to its CDN carries the metadata
    /// itself, and a signed CDN URL may refuse HEAD.
    /// </summary>
    async Task<HeadResult> HeadAsync(string repoId, string revision, string file, CancellationToken ct)
    {
        var url = FileUrl(repoId, revision, file);
        var capture = new HeaderCapture();
        using var response = await SendAsync(HttpMethod.Head, url, rangeStart: 0, capture, ct, followCrossOrigin: false)
            .ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound)
            return new HeadResult(null, FirstHeader(response, "X-Error-Code"));
        bool redirect = IsRedirect(response);
        if (!redirect) ThrowForStatus(response, repoId, url);

        string commit = capture.Commit ?? throw new HttpRequestException(
            $"{url} answered without an X-Repo-Commit header: {Endpoint} does not look like a Hugging Face hub " +
            "(check HF_ENDPOINT and any proxy in between)");
        if (!IsSafeSegment(commit))
            throw new HttpRequestException($"{url} answered X-Repo-Commit '{commit}', which is not a usable commit id");
        string etag = capture.LinkedEtag ?? capture.Etag ?? throw new HttpRequestException(
            $"{url} answered without an ETag or X-Linked-Etag header, so the file cannot be cached");
        // The Content-Length of a redirect is that of its own (empty) body, not the file's.
        long? size = capture.LinkedSize ?? (redirect ? null : response.Content.Headers.ContentLength);
        return new HeadResult(new FileMeta(commit, etag, size), null);
    }

    static bool IsRedirect(HttpResponseMessage response) =>
        (int)response.StatusCode is 301 or 302 or 303 or 307 or 308 && response.Headers.Location is not null;

    /// <summary>Makes sure the blob exists (downloading it if needed) and links the snapshot entry to it.</summary>
    async Task FetchAsync(string repoId, string commit, string repoFolder, string snapshot, string file, FileMeta meta,
        IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        string blobName = BlobName(meta.Etag);
        string blobs = Path.Combine(repoFolder, "blobs");
        string blob = Path.Combine(blobs, blobName);
        string pointer = Path.Combine(snapshot, file);
        Directory.CreateDirectory(blobs);

        string lockPath = Path.Combine(CacheDir, ".locks", Path.GetFileName(repoFolder), blobName + ".lock");
        using (await AcquireLockAsync(lockPath, ct).ConfigureAwait(false))
        {
            bool have = File.Exists(blob) && (meta.Size is not long size || new FileInfo(blob).Length == size);
            if (!have)
            {
                if (File.Exists(blob)) File.Delete(blob); // wrong size: corrupt, fetch again
                await DownloadBlobAsync(FileUrl(repoId, commit, file), repoId, file, blob, meta.Size, progress, ct)
                    .ConfigureAwait(false);
            }
            else
            {
                long length = new FileInfo(blob).Length;
                progress?.Report(new DownloadProgress(file, length, length));
            }
            LinkPointer(pointer, blob);
        }
    }

    async Task DownloadBlobAsync(Uri url, string repoId, string file, string blob, long? expected,
        IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        string incomplete = blob + ".incomplete";
        long have = File.Exists(incomplete) ? new FileInfo(incomplete).Length : 0;
        if (expected is long e0 && have > e0)
        {
            File.Delete(incomplete);
            have = 0;
        }

        // Two tries at most: the second without Range, when the server rejects the resume.
        for (int attempt = 0; attempt < 2 && !(expected is long e1 && have == e1 && have > 0); attempt++)
        {
            using var response = await SendAsync(HttpMethod.Get, url, have, capture: null, ct).ConfigureAwait(false);
            bool append;
            if (response.StatusCode == HttpStatusCode.PartialContent && have > 0)
            {
                long? from = response.Content.Headers.ContentRange?.From;
                if (from is long f && f != have)
                {
                    File.Delete(incomplete);
                    have = 0;
                    continue;
                }
                append = true;
            }
            else if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable && have > 0)
            {
                File.Delete(incomplete);
                have = 0;
                continue;
            }
            else
            {
                if (response.StatusCode == HttpStatusCode.NotFound)
                    throw new HttpRequestException($"{url} was found by HEAD but answered 404 to GET");
                ThrowForStatus(response, repoId, url);
                append = false; // 200: the server sent the whole file
                have = 0;
            }

            await CopyBodyAsync(response, incomplete, append, have, file, expected, progress, ct).ConfigureAwait(false);
            break;
        }

        if (!File.Exists(incomplete))
            throw new HttpRequestException($"{url} did not send {file}: it refused the resumed and the fresh request");
        long got = new FileInfo(incomplete).Length;
        if (expected is long e2 && got != e2)
        {
            TryDelete(incomplete);
            throw new IOException(
                $"downloading {file} from {url}: expected {e2} bytes (as the hub announced) but got {got}; " +
                "the partial file was deleted, run again to retry");
        }
        OutputFiles.Replace(incomplete, blob);
    }

    async Task CopyBodyAsync(HttpResponseMessage response, string incomplete, bool append, long have, string file,
        long? expected, IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        var buffer = new byte[1 << 17];
        using var idle = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            await using var body = await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
            await using var output = new FileStream(incomplete, append ? FileMode.Append : FileMode.Create,
                FileAccess.Write, FileShare.None, bufferSize: 1, FileOptions.Asynchronous);
            long done = have;
            progress?.Report(new DownloadProgress(file, done, expected));
            while (true)
            {
                idle.CancelAfter(_options.ReadTimeout);
                int n = await body.ReadAsync(buffer, idle.Token).ConfigureAwait(false);
                if (n == 0) break;
                await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                done += n;
                progress?.Report(new DownloadProgress(file, done, expected));
                if (expected is long e && done > e) break; // too long: the size check reports it
            }
            output.Flush(flushToDisk: true);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new HubUnreachableException(
                $"the download of {file} stalled for {_options.ReadTimeout.TotalSeconds:0.#} s", null);
        }
        catch (IOException ex) when (ex is HttpIOException || ex.InnerException is SocketException)
        {
            throw new HubUnreachableException($"the connection broke while downloading {file}: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// Sends a request, following redirects by hand (cross-origin ones only when
    /// <paramref name="followCrossOrigin"/>); the token is sent only to the endpoint's origin.
    /// </summary>
    async Task<HttpResponseMessage> SendAsync(HttpMethod method, Uri url, long rangeStart, HeaderCapture? capture,
        CancellationToken ct, bool followCrossOrigin = true)
    {
        for (int hop = 0; ; hop++)
        {
            using var request = new HttpRequestMessage(method, url);
            request.Headers.UserAgent.ParseAdd("loupe/0.1");
            request.Headers.AcceptEncoding.ParseAdd("identity");
            if (_token is not null && SameOrigin(url, _endpointUri))
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
            if (rangeStart > 0) request.Headers.Range = new RangeHeaderValue(rangeStart, null);

            HttpResponseMessage response;
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                timeout.CancelAfter(_options.RequestTimeout);
                try
                {
                    response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token)
                        .ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    throw new HubUnreachableException(
                        $"no answer from {url.GetLeftPart(UriPartial.Authority)} within {_options.RequestTimeout.TotalSeconds:0.#} s", null);
                }
                catch (HttpRequestException e)
                {
                    throw new HubUnreachableException(e.Message, e);
                }
            }

            capture?.Add(response);
            if (IsRedirect(response))
            {
                var location = response.Headers.Location!;
                var next = location.IsAbsoluteUri ? location : new Uri(url, location);
                if (!followCrossOrigin && !SameOrigin(next, url)) return response;
                response.Dispose();
                if (hop >= MaxRedirects)
                    throw new HttpRequestException($"more than {MaxRedirects} redirects starting from {url}");
                url = next;
                continue;
            }
            return response;
        }
    }

    void ThrowForStatus(HttpResponseMessage response, string repoId, Uri url)
    {
        int status = (int)response.StatusCode;
        if (status is >= 200 and < 300) return;
        string answered = $"{status} {response.ReasonPhrase}";
        var final = response.RequestMessage?.RequestUri ?? url;
        if (!SameOrigin(final, _endpointUri) && status is >= 400 and < 500)
            throw new HttpRequestException(
                $"The download server {final.GetLeftPart(UriPartial.Authority)} (redirected to from {url}) answered {answered}");
        if (status is 401 or 403)
            throw new InputError(
                $"The hub at {Endpoint} answered {answered} for {url}: '{repoId}' is gated or private (or does not exist). " +
                (_token is null
                    ? "Set HF_TOKEN to an access token of an account that may read it (and accept the model's license on its page)."
                    : "The token in HF_TOKEN does not grant access: accept the model's license on its page, or use another token."));
        if (status is 429 or >= 500)
            throw new HubUnreachableException($"it answered {answered} for {url}", null);
        throw new HttpRequestException($"The hub at {Endpoint} answered {answered} for {url}");
    }

    Uri FileUrl(string repoId, string revision, string file) =>
        new($"{Endpoint}/{repoId}/resolve/{Uri.EscapeDataString(revision)}/" +
            string.Join('/', file.Split('/').Select(Uri.EscapeDataString)));

    static bool SameOrigin(Uri a, Uri b) =>
        string.Equals(a.Scheme, b.Scheme, StringComparison.OrdinalIgnoreCase)
        && string.Equals(a.Host, b.Host, StringComparison.OrdinalIgnoreCase) && a.Port == b.Port;

    /// <summary>Header values of one redirect chain: the first occurrence of each wins.</summary>
    sealed class HeaderCapture
    {
        public string? Commit, LinkedEtag, Etag;
        public long? LinkedSize;

        public void Add(HttpResponseMessage r)
        {
            Commit ??= FirstHeader(r, "X-Repo-Commit")?.Trim();
            LinkedEtag ??= StripEtag(FirstHeader(r, "X-Linked-Etag"));
            Etag ??= StripEtag(FirstHeader(r, "ETag"));
            if (LinkedSize is null && long.TryParse(FirstHeader(r, "X-Linked-Size"), out long s) && s >= 0) LinkedSize = s;
        }
    }

    static string? FirstHeader(HttpResponseMessage r, string name) =>
        r.Headers.TryGetValues(name, out var values) ? values.FirstOrDefault() : null;

    /// <summary><c>W/"abc"</c> → <c>abc</c>.</summary>
    internal static string? StripEtag(string? etag)
    {
        if (etag is null) return null;
        var s = etag.Trim();
        if (s.StartsWith("W/", StringComparison.OrdinalIgnoreCase)) s = s[2..];
        s = s.Trim('"');
        return s.Length == 0 ? null : s;
    }

    /// <summary>The etag itself when it is a safe file name (as on the real hub), else its SHA-256.</summary>
    static string BlobName(string etag) =>
        IsSafeSegment(etag) ? etag : Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(etag)));

    static bool IsSafeSegment(string s) => SafeSegmentRegex().IsMatch(s) && s.Trim('.').Length > 0;

    static bool IsValidRevision(string revision) =>
        revision.Split('/').All(IsSafeSegment) && !revision.Contains("..", StringComparison.Ordinal);

    static void ValidateRevision(string revision)
    {
        if (!IsValidRevision(revision))
            throw new InputError($"'{revision}' is not a valid revision (a branch, tag or commit hash)");
    }

    static string? ReadRef(string repoFolder, string revision)
    {
        try
        {
            string path = Path.Combine(repoFolder, "refs", revision);
            return File.Exists(path) ? NonEmpty(File.ReadAllText(path).Trim()) : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    static void WriteRef(string repoFolder, string revision, string commit)
    {
        string path = Path.Combine(repoFolder, "refs", revision);
        if (ReadRef(repoFolder, revision) == commit) return;
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string tmp = path + ".tmp-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        File.WriteAllText(tmp, commit);
        OutputFiles.Replace(tmp, path);
    }

    static List<string> ReadShardNames(string indexPath)
    {
        try { return ReadShardNamesOf(indexPath); }
        catch (InvalidOperationException e)
        {
            // A string JsonElement cannot transcode (invalid UTF-8, or an escaped lone surrogate).
            throw new InputError($"{indexPath}: holds a string that is not valid Unicode ({e.Message})", e);
        }
    }

    static List<string> ReadShardNamesOf(string indexPath)
    {
        using var doc = ParseJson(indexPath);
        if (doc.RootElement.ValueKind != JsonValueKind.Object
            || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
            throw new InputError($"{indexPath}: expected an object with a \"weight_map\" object");
        var shards = new List<string>();
        foreach (var p in map.EnumerateObject())
        {
            string? shard = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString() : null;
            if (shard is null || !SafeTensorsCheckpoint.IsPlainFileName(shard))
                throw new InputError(
                    $"{indexPath}: weight_map maps tensor '{p.Name}' to {p.Value.GetRawText()}; expected a file name in the same folder");
            if (!shards.Contains(shard)) shards.Add(shard);
        }
        return shards;
    }

    static JsonDocument ParseJson(string path)
    {
        try { return JsonInput.Parse(File.ReadAllBytes(path), path); }
        catch (JsonException e) { throw new InputError($"{path} is not valid JSON: {e.Message.Split('\n')[0]}", e); }
    }

    /// <summary>True when the path is a file, or a symlink whose final target is a file.</summary>
    static bool IsUsableFile(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is null) return info.Exists;
        try
        {
            return info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo { Exists: true };
        }
        catch (IOException) { return false; }
    }

    /// <summary>Points <c>snapshots/{commit}/{file}</c> at the blob: relative symlink, or a copy where links fail.</summary>
    static void LinkPointer(string pointer, string blob)
    {
        string dir = Path.GetDirectoryName(pointer)!;
        Directory.CreateDirectory(dir);
        string relative = Path.GetRelativePath(dir, blob);
        var info = new FileInfo(pointer);
        if (info.LinkTarget is { } target)
        {
            if (target == relative && IsUsableFile(pointer)) return;
            File.Delete(pointer);
        }
        else if (info.Exists)
        {
            if (info.Length == new FileInfo(blob).Length) return;
            File.Delete(pointer);
        }
        try
        {
            File.CreateSymbolicLink(pointer, relative);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            string tmp = pointer + ".tmp-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
            try
            {
                File.Copy(blob, tmp);
                OutputFiles.Replace(tmp, pointer);
            }
            finally { TryDelete(tmp); }
        }
    }

    /// <summary>An exclusive lock file (flock on Unix), so two processes never write one blob at once.</summary>
    async Task<FileStream> AcquireLockAsync(string path, CancellationToken ct)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var deadline = DateTime.UtcNow + _options.LockTimeout;
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(100, ct).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                throw new IOException(
                    $"{path} stayed locked for {_options.LockTimeout.TotalSeconds:0} s (another download of the same file?)", e);
            }
        }
    }

    static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    static string? NonEmpty(string? s) => string.IsNullOrWhiteSpace(s) ? null : s;

    static bool IsTrue(string? s) =>
        s?.Trim().ToLowerInvariant() is "1" or "true" or "yes" or "on";

    /// <summary>Disposes the HTTP client when this instance created it.</summary>
    public void Dispose()
    {
        if (_ownsHttp) _http.Dispose();
    }

    /// <summary>The hub could not be reached: connection refused, DNS, timeout, 5xx.</summary>
    sealed class HubUnreachableException(string message, Exception? inner) : Exception(message, inner);
}
