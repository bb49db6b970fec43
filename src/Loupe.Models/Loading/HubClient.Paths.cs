using System.Globalization;
using System.Net;
using System.Text.Json;

namespace Loupe.Models.Loading;

/// <summary>What <see cref="HubClient.ResolvePathAsync"/> is about to fetch, reported before the first byte is downloaded.</summary>
/// <param name="RepoId">The repository.</param>
/// <param name="Path">The folder or file in it ("" for the whole repository).</param>
/// <param name="Commit">The commit the files are taken at.</param>
/// <param name="Files">Every file under the path, with its size when the hub gave one.</param>
/// <param name="Skipped">Files under the path that are not fetched: pickles Loupe does not read (training state, checkpoints).</param>
public sealed record HubPathListing(string RepoId, string Path, string Commit, IReadOnlyList<(string File, long? Size)> Files, IReadOnlyList<string> Skipped)
{
    /// <summary>The bytes the files take (those with a known size).</summary>
    public long Bytes => Files.Sum(f => f.Size ?? 0);
}

public sealed partial class HubClient
{
    /// <summary>
    /// Files a path fetch leaves behind: pickles (a training run's optimizer state, checkpoints), except the torch.save files
    /// Loupe reads by name (<see cref="TorchSaveFilesRead"/>), whose pickles it interprets without running them.
    /// </summary>
    static readonly string[] s_pickleExtensions = [".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"];

    /// <summary>
    /// torch.save files fetched with a path: dictionary_learning's <c>ae.pt</c>, tuned-lens's <c>params.pt</c>, a TransformerLens toy
    /// model's <c>model_final.pth</c>.
    /// </summary>
    public static readonly IReadOnlyList<string> TorchSaveFilesRead = ["ae.pt", "params.pt", TransformerLensFinalCheckpoint];

    static bool Skipped(string name) =>
        s_pickleExtensions.Any(e => name.EndsWith(e, StringComparison.OrdinalIgnoreCase))
        && !TorchSaveFilesRead.Contains(name[(name.LastIndexOf('/') + 1)..], StringComparer.Ordinal);

    /// <summary>Longest model-info answer read (a repository of tens of thousands of files stays far below).</summary>
    const int MaxListingBytes = 64 << 20;

    /// <summary>
    /// A folder or file of a hub repository as a local path — a dictionary that is not a model, such as a SAELens SAE
    /// (<c>org/saes</c>, path <c>blocks.8.hook_resid_pre</c>), a Gemma Scope <c>params.npz</c> or a folder of transcoders.
    /// The repository's files are listed (<c>/api/models/{repo}/revision/{revision}?blobs=true</c>), every file under
    /// <paramref name="path"/> except pickles (<see cref="TorchSaveFilesRead"/> apart) is fetched into the standard hub cache at the listed commit, and the path inside
    /// the snapshot is returned. <paramref name="planned"/> hears the listing (file count, bytes) before anything is
    /// downloaded. Offline, or when the hub cannot be reached, a cached copy of the path at the revision is used.
    /// </summary>
    /// <param name="repoId">The repository, <c>org/name</c>.</param>
    /// <param name="path">A folder of the repository ("" or "/" for all of it) or one file, '/'-separated.</param>
    /// <param name="revision">A branch, tag or commit hash.</param>
    /// <param name="planned">Called once with what will be fetched, before the first download.</param>
    /// <param name="progress">Download progress per file.</param>
    /// <param name="ct">Cancels; partial downloads are kept for resuming.</param>
    /// <exception cref="InputError">
    /// A bad id, revision or path; no such repository, revision or path (the message lists the repository's top-level
    /// folders); a gated repository without access; offline with nothing cached; an unreadable listing.
    /// </exception>
    /// <exception cref="HttpRequestException">The hub cannot be reached and nothing is cached, or it answered unexpectedly.</exception>
    /// <exception cref="IOException">A download's size differs from the size the hub announced.</exception>
    public async Task<string> ResolvePathAsync(string repoId, string path, string revision = "main", Action<HubPathListing>? planned = null,
        IProgress<DownloadProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentException.ThrowIfNullOrEmpty(revision);
        path = CheckedPath(repoId, path, revision);
        string repoFolder = RepoFolder(repoId);
        if (Offline)
            return TryGetCachedPath(repoId, path, revision) ?? throw new InputError(
                $"HF_HUB_OFFLINE is set, so the hub is not contacted, and '{repoId}/{path}' (revision '{revision}') is not cached in " +
                $"{repoFolder}. Pass a local folder instead, or unset HF_HUB_OFFLINE to download it.");
        if (CommitHashRegex().IsMatch(revision) && TryGetCachedPath(repoId, path, revision) is { } pinned) return pinned;
        try
        {
            var listing = await ListAsync(repoId, path, revision, ct).ConfigureAwait(false);
            planned?.Invoke(listing);
            string snapshot = await FetchListedAsync(repoId, revision, listing, progress, ct).ConfigureAwait(false);
            return path.Length == 0 ? snapshot : Path.Combine(snapshot, path);
        }
        catch (HubUnreachableException e)
        {
            if (TryGetCachedPath(repoId, path, revision) is { } cached) return cached;
            throw new HttpRequestException(
                $"The Hugging Face hub at {Endpoint} could not be reached ({e.Message}). Downloading '{repoId}/{path}' needs the " +
                $"network, and it is not cached (revision '{revision}') in {repoFolder}. Pass a local folder instead.", e.InnerException ?? e);
        }
    }

    /// <summary>
    /// Several files of one repository at one revision as local paths, in the order given — e.g. the per-layer files a
    /// circuit-tracer config lists — with one listing of the repository (not one per file) and one announcement of them all.
    /// Otherwise as <see cref="ResolvePathAsync"/>: cached files are not fetched again, offline or unreachable the cache serves.
    /// </summary>
    /// <exception cref="InputError">A bad id, revision or path; a path the repository lacks (named); offline with a file not cached.</exception>
    /// <exception cref="HttpRequestException">The hub cannot be reached and a file is not cached.</exception>
    public async Task<IReadOnlyList<string>> ResolveFilesAsync(string repoId, IReadOnlyList<string> paths, string revision = "main",
        Action<HubPathListing>? planned = null, IProgress<DownloadProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var wanted = paths.Select(p => CheckedPath(repoId, p, revision)).ToArray();
        string[]? Cached()
        {
            var local = new string[wanted.Length];
            for (int i = 0; i < wanted.Length; i++)
                if ((local[i] = TryGetCachedPath(repoId, wanted[i], revision)!) is null) return null;
            return local;
        }
        if (Offline)
            return Cached() ?? throw new InputError(
                $"HF_HUB_OFFLINE is set, so the hub is not contacted, and files of '{repoId}' (revision '{revision}') are not cached in {RepoFolder(repoId)}: " +
                string.Join(", ", wanted.Where(p => TryGetCachedPath(repoId, p, revision) is null).Take(5)));
        if (CommitHashRegex().IsMatch(revision) && Cached() is { } pinned) return pinned;
        try
        {
            var all = await ListAsync(repoId, "", revision, ct).ConfigureAwait(false);
            var files = new List<(string File, long? Size)>();
            foreach (var p in wanted.Distinct(StringComparer.Ordinal))
            {
                var under = all.Files.Where(f => f.File == p || f.File.StartsWith(p + "/", StringComparison.Ordinal)).ToList();
                if (under.Count == 0)
                    throw new InputError($"'{repoId}' (revision '{revision}', commit {all.Commit}) has no file or folder '{p}'" +
                        (all.Skipped.Contains(p) ? " that Loupe fetches (it is a pickle Loupe does not read)" : ""));
                files.AddRange(under);
            }
            var listing = new HubPathListing(repoId, "", all.Commit, files, []);
            planned?.Invoke(listing);
            string snapshot = await FetchListedAsync(repoId, revision, listing, progress, ct).ConfigureAwait(false);
            return [.. wanted.Select(p => Path.Combine(snapshot, p))];
        }
        catch (HubUnreachableException e)
        {
            if (Cached() is { } cached) return cached;
            throw new HttpRequestException(
                $"The Hugging Face hub at {Endpoint} could not be reached ({e.Message}). Files of '{repoId}' are needed and not all cached " +
                $"(revision '{revision}') in {RepoFolder(repoId)}.", e.InnerException ?? e);
        }
    }

    /// <summary>
    /// The tokenizer of repository <paramref name="repoId"/> as a local folder: only its tokenizer files (those of
    /// <see cref="OptionalFiles"/> it has) are fetched, never its weights — for a model whose config names its tokenizer in
    /// another repository (TransformerLens's <c>tokenizer_name</c>). Cached, it is used without the network.
    /// </summary>
    /// <exception cref="InputError">A bad id; offline and not cached; a repository with no tokenizer.json, vocab.json + merges.txt or vocab.txt.</exception>
    /// <exception cref="HttpRequestException">The hub cannot be reached and nothing is cached.</exception>
    public async Task<string> ResolveTokenizerAsync(string repoId, string revision = "main", IProgress<DownloadProgress>? progress = null, CancellationToken ct = default)
    {
        foreach (var file in new[] { "tokenizer.json", "vocab.json" })
            if (TryGetCachedPath(repoId, file, revision) is { } cached) return Path.GetDirectoryName(cached)!;
        if (Offline)
            throw new InputError($"HF_HUB_OFFLINE is set, so the hub is not contacted, and the tokenizer of '{repoId}' (revision '{revision}') is not cached in {RepoFolder(repoId)}");
        var listing = await ListPathAsync(repoId, "", revision, ct).ConfigureAwait(false);
        var present = OptionalFiles.Where(f => listing.Files.Any(x => x.File == f)).ToList();
        if (!present.Contains("tokenizer.json") && !(present.Contains("vocab.json") && present.Contains("merges.txt")))
            throw new InputError($"'{repoId}' (revision '{revision}') has no tokenizer Loupe reads: neither tokenizer.json nor vocab.json + merges.txt");
        var paths = await ResolveFilesAsync(repoId, present, revision, progress: progress, ct: ct).ConfigureAwait(false);
        return Path.GetDirectoryName(paths[0])!;
    }

    /// <summary>Fetches the listed files not yet in the snapshot, records the revision's commit, and returns the snapshot folder.</summary>
    async Task<string> FetchListedAsync(string repoId, string revision, HubPathListing listing, IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        string repoFolder = RepoFolder(repoId);
        string snapshot = Path.Combine(repoFolder, "snapshots", listing.Commit);
        foreach (var (file, _) in listing.Files)
        {
            if (IsUsableFile(Path.Combine(snapshot, file))) continue;
            var head = await HeadAsync(repoId, listing.Commit, file, ct).ConfigureAwait(false);
            if (head.Meta is null)
                throw new HttpRequestException(
                    $"the hub at {Endpoint} listed {file} in '{repoId}' at commit {listing.Commit} but answers 404 for it; run again");
            await FetchAsync(repoId, listing.Commit, repoFolder, snapshot, file, head.Meta, progress, ct).ConfigureAwait(false);
        }
        if (revision != listing.Commit || !CommitHashRegex().IsMatch(revision)) WriteRef(repoFolder, revision, listing.Commit);
        return snapshot;
    }

    /// <summary>
    /// The files of <paramref name="repoId"/> under <paramref name="path"/> at <paramref name="revision"/> (pickles apart), with
    /// sizes and the commit, from the hub's listing; nothing is downloaded (<c>loupe hub ls</c>).
    /// </summary>
    /// <exception cref="InputError">A bad id, revision or path; no such repository, revision or path (the top level listed).</exception>
    /// <exception cref="HttpRequestException">The hub cannot be reached, or answered unexpectedly.</exception>
    public async Task<HubPathListing> ListPathAsync(string repoId, string path, string revision = "main", CancellationToken ct = default)
    {
        path = CheckedPath(repoId, path, revision);
        if (Offline) throw new InputError("HF_HUB_OFFLINE is set, so the hub is not contacted; listing a repository needs it");
        try { return await ListAsync(repoId, path, revision, ct).ConfigureAwait(false); }
        catch (HubUnreachableException e)
        {
            throw new HttpRequestException($"The Hugging Face hub at {Endpoint} could not be reached ({e.Message})", e.InnerException ?? e);
        }
    }

    /// <summary>
    /// Tells <paramref name="planned"/> what a model download at <paramref name="commit"/> fetches — config.json, the tokenizer
    /// files, the weights (single file, or index and shards) — with sizes, when some of it is not cached yet. A hub
    /// without the listing API (a mirror) gets no announcement; the downloads themselves report any real problem.
    /// </summary>
    async Task AnnounceModelAsync(string repoId, string commit, string snapshot, Action<HubPathListing> planned, CancellationToken ct)
    {
        if (TryGetCachedSnapshot(repoId, commit) is not null) return; // complete: no request for an announcement of nothing
        HubPathListing listing;
        try { listing = await ListAsync(repoId, "", commit, ct).ConfigureAwait(false); }
        catch (Exception e) when (e is InputError or HttpRequestException or HubUnreachableException) { return; }
        // The first layout the repository has is the one DownloadAsync fetches.
        var (single, index) = WeightLayouts.FirstOrDefault(l => listing.Files.Any(f => f.File == l.Single || f.File == l.Index));
        bool isSingle = single is not null && listing.Files.Any(f => f.File == single);
        // Shards as the hub names them (model-00001-of-00002.safetensors, pytorch_model-00001-of-00002.bin; not training_args.bin).
        bool IsShard(string file) => index == SafeTensorsCheckpoint.IndexFileName
            ? file.EndsWith(".safetensors", StringComparison.Ordinal)
            : index is not null && file.StartsWith("pytorch_model-", StringComparison.Ordinal) && file.EndsWith(".bin", StringComparison.Ordinal);
        var fetched = listing.Files.Where(f => !f.File.Contains('/') && (f.File == "config.json" || OptionalFiles.Contains(f.File)
            || (isSingle ? f.File == single : f.File == index || IsShard(f.File)))).ToList();
        if (fetched.All(f => IsUsableFile(Path.Combine(snapshot, f.File)))) return;
        planned(listing with { Files = fetched, Skipped = [] });
    }

    /// <summary>
    /// The cached copy of a repository path at a revision (a file, or a folder holding at least one file), or null. Never
    /// touches the network.
    /// </summary>
    public string? TryGetCachedPath(string repoId, string path, string revision = "main")
    {
        if (!IsValidRepoPathId(repoId) || !IsValidRevision(revision)) return null;
        path = path.Trim('/');
        if (path.Length > 0 && !IsPlainRepoPath(path)) return null;
        string repoFolder = RepoFolder(repoId);
        string? commit = CommitHashRegex().IsMatch(revision) ? revision : ReadRef(repoFolder, revision);
        if (commit is null || !IsSafeSegment(commit)) return null;
        string local = Path.Combine(repoFolder, "snapshots", commit, path);
        if (IsUsableFile(local)) return local;
        return Directory.Exists(local) && Directory.EnumerateFileSystemEntries(local, "*", SearchOption.AllDirectories).Any(IsUsableFile) ? local : null;
    }

    /// <summary>The repository's files under <paramref name="path"/> at <paramref name="revision"/>, and the commit they belong to.</summary>
    async Task<HubPathListing> ListAsync(string repoId, string path, string revision, CancellationToken ct)
    {
        var (kind, id) = SplitKind(repoId);
        var url = new Uri($"{Endpoint}/api/{kind}/{id}/revision/{Uri.EscapeDataString(revision)}?blobs=true");
        using var response = await SendAsync(HttpMethod.Get, url, rangeStart: 0, capture: null, ct).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            string? code = FirstHeader(response, "X-Error-Code");
            throw new InputError(
                $"The hub at {Endpoint} answered 404 Not Found for {url}: " +
                (code == "RevisionNotFound" ? $"revision '{revision}' does not exist in '{repoId}'" : $"there is no repository '{repoId}' (or no revision '{revision}')") +
                ". Check the spelling (ids look like 'org/name'), or pass a local folder instead.");
        }
        ThrowForStatus(response, repoId, url);
        byte[] body;
        using var reading = CancellationTokenSource.CreateLinkedTokenSource(ct);
        reading.CancelAfter(_options.ReadTimeout);
        try { body = await ReadLimitedAsync(response, MaxListingBytes, reading.Token).ConfigureAwait(false); }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new HubUnreachableException($"the listing of '{repoId}' did not arrive within {_options.ReadTimeout.TotalSeconds:0.#} s", null);
        }
        catch (IOException e) when (e is HttpIOException || e.InnerException is System.Net.Sockets.SocketException)
        {
            throw new HubUnreachableException($"the connection broke while listing '{repoId}': {e.Message}", e);
        }
        string where = $"the hub's listing of '{repoId}' ({url})";
        using var doc = JsonInput.Parse(body, where);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("sha", out var sha) || sha.ValueKind != JsonValueKind.String
            || sha.GetString() is not { } commit || !IsSafeSegment(commit))
            throw new InputError($"{where}: expected an object with the commit as \"sha\"; {Endpoint} does not look like a Hugging Face hub");
        if (!root.TryGetProperty("siblings", out var siblings) || siblings.ValueKind != JsonValueKind.Array)
            throw new InputError($"{where}: expected the repository's files as a \"siblings\" array");

        var files = new List<(string, long?)>();
        var skipped = new List<string>();
        var topLevel = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var sibling in siblings.EnumerateArray())
        {
            if (sibling.ValueKind != JsonValueKind.Object || !sibling.TryGetProperty("rfilename", out var nameElement)
                || nameElement.ValueKind != JsonValueKind.String || nameElement.GetString() is not { } name)
                throw new InputError($"{where}: a sibling without a file name (\"rfilename\")");
            int slash = name.IndexOf('/');
            topLevel.Add(slash < 0 ? name : name[..(slash + 1)]);
            if (path.Length > 0 && name != path && !name.StartsWith(path + "/", StringComparison.Ordinal)) continue;
            if (!IsPlainRepoPath(name)) // a name that would lead outside the snapshot folder
                throw new InputError($"{where}: file name {InputError.Show(name)} is not a plain path inside the repository");
            if (Skipped(name)) { skipped.Add(name); continue; }
            files.Add((name, Size(sibling)));
        }
        if (files.Count == 0)
        {
            string shown = string.Join(", ", topLevel.Take(30)) + (topLevel.Count > 30 ? $", … ({topLevel.Count} in all)" : "");
            throw new InputError(skipped.Count > 0
                ? $"'{repoId}/{path}' (revision '{revision}') holds only pickled files ({string.Join(", ", skipped.Take(5))}), which Loupe does not fetch (it reads torch.save files only by name: {string.Join(", ", TorchSaveFilesRead)})"
                : $"'{repoId}' (revision '{revision}') has no file or folder '{path}'; its top level holds: {(shown.Length > 0 ? shown : "nothing")}");
        }
        return new HubPathListing(repoId, path, commit, files, skipped);
    }

    /// <summary>The path without its outer '/', once the repository id, revision and path are known to be well formed.</summary>
    /// <exception cref="InputError">One of them is not.</exception>
    static string CheckedPath(string repoId, string path, string revision)
    {
        if (!IsValidRepoPathId(repoId)) throw new InputError($"'{repoId}' is not a Hugging Face repository id such as 'org/name' (or spaces/org/name, datasets/org/name)");
        ValidateRevision(revision);
        path = path.Trim('/');
        if (path.Length > 0 && !IsPlainRepoPath(path))
            throw new InputError($"'{path}' is not a path inside a repository: expected names separated by '/', no '.', '..' or empty names");
        return path;
    }

    /// <summary>Names separated by '/', none empty, '.', '..', or holding a character no file name may hold (or '\\', or a control character).</summary>
    static bool IsPlainRepoPath(string path) =>
        path.Split('/').All(s => s.Length is > 0 and <= 255 && s is not ("." or "..") && s.IndexOfAny(Path.GetInvalidFileNameChars()) < 0
                                 && !s.Contains('\\') && !s.Any(char.IsControl));

    /// <summary>A sibling's size: its LFS object's when it has one (the file's real size), else its own.</summary>
    static long? Size(JsonElement sibling)
    {
        if (sibling.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object && Count(lfs, "size") is long l) return l;
        return Count(sibling, "size");

        // A size that is not a non-negative integer is unknown: the download's own size check still applies.
        static long? Count(JsonElement e, string name) =>
            e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long n) && n >= 0 ? n : null;
    }

    /// <summary>The response body, refused past <paramref name="limit"/> bytes (a listing is small; an endless one is not read to the end).</summary>
    static async Task<byte[]> ReadLimitedAsync(HttpResponseMessage response, int limit, CancellationToken ct)
    {
        await using var body = await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
        using var buffer = new MemoryStream();
        var chunk = new byte[1 << 16];
        int n;
        while ((n = await body.ReadAsync(chunk, ct).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + n > limit)
                throw new InputError($"the hub's answer at {response.RequestMessage?.RequestUri} is longer than {limit.ToString("N0", CultureInfo.InvariantCulture)} bytes; not a file listing");
            buffer.Write(chunk, 0, n);
        }
        return buffer.ToArray();
    }
}
