using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Fuzz.Engine;
using Loupe.Models;
using Loupe.Models.Loading;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>HubClient.ResolveAsync</c> — what <c>--model org/name</c> does — against a hub whose answers are the fuzzed input: hub.json
/// scripts, per file of the repository, the status, headers and body length of the hub's answer and, for LFS files, of the CDN
/// it redirects to (headers are sent as given, unvalidated, as a misbehaving mirror or proxy at HF_ENDPOINT could send them).
/// Then the snapshot is loaded and run, and resolved again offline from the cache. Refusals are InputError, IOException and
/// HttpRequestException (the client's documented answers to a hub it cannot use). Failures besides exceptions: a file in the
/// snapshot that is not the bytes the hub sent for it, a file written outside the cache folder, an offline resolve that does
/// not find what the online one returned.
/// </summary>
public sealed class HubTarget : FuzzTarget
{
    public override string Name => "hub";
    public override int DefaultIterations => 800; // stalls and timeouts make an input ~40 ms
    public override TimeSpan Timeout => TimeSpan.FromSeconds(10);

    const string Repo = "org/model", Endpoint = "https://hub.test", Cdn = "https://cdn.test";
    static readonly string[] s_bodies = ["config.json", "tokenizer.json", "model.safetensors"];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var tokenizer = TokenizerJsonTarget.Generated(context);
        var bodies = new Dictionary<string, byte[]>
        {
            ["config.json"] = File.ReadAllBytes(context.Repo("tests/data/reference/llama/config.json")),
            ["tokenizer.json"] = tokenizer,
            ["model.safetensors"] = File.ReadAllBytes(context.Repo("tests/data/reference/llama/model.safetensors")),
        };
        string commit = Convert.ToHexStringLower(SHA1.HashData(Encoding.UTF8.GetBytes("fuzz-commit")));
        var seeds = new List<Seed>
        {
            Script("hub-single-file", bodies, Answers(bodies, commit, sharded: false)),
            Script("hub-resume", bodies, Answers(bodies, commit, sharded: false, partial: 1000)),
        };
        // The weights as an index and two shards (the shards are halves of the single file's tensors).
        var sharded = new Dictionary<string, byte[]>(bodies);
        sharded.Remove("model.safetensors");
        using (var full = SafeTensorsFile.Open(context.Repo("tests/data/reference/llama/model.safetensors")))
        {
            var names = full.Names.ToList();
            var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = 0 }, ["weight_map"] = new JsonObject() };
            for (int s = 0; s < 2; s++)
            {
                string shard = $"model-0000{s + 1}-of-00002.safetensors", path = Path.Combine(Directory.CreateDirectory(Path.Combine(context.Scratch, "hub-shards")).FullName, shard);
                var part = names.Where((_, i) => i % 2 == s).ToList();
                SafeTensorsWriter.Write(path, part.Select(n => (n, full.GetInfo(n).Shape.Select(d => (int)d).ToArray(), (ReadOnlyMemory<float>)full.GetFloat32(n).ToArray())).ToList());
                sharded[shard] = File.ReadAllBytes(path);
                foreach (var n in part) index["weight_map"]![n] = shard;
            }
            sharded["model.safetensors.index.json"] = Encoding.UTF8.GetBytes(index.ToJsonString());
        }
        seeds.Add(Script("hub-sharded", sharded, Answers(sharded, commit, sharded: true)));

        // A repository of dictionaries (what --sae hf:org/model/saes/blocks.1.hook_resid_post fetches): the listing, then one folder.
        string saeFolder = Path.Combine(context.Scratch, "hub-sae");
        var (dict, cfg) = PipelineFixtures.Dictionary();
        SaeLensFormat.Save(saeFolder, dict, cfg);
        var saes = new Dictionary<string, byte[]> { ["README.md"] = "# SAEs"u8.ToArray(), ["saes/optimizer.pt"] = "a pickle"u8.ToArray() };
        foreach (var file in Directory.GetFiles(saeFolder)) saes[$"saes/{PipelineFixtures.Hook}/{Path.GetFileName(file)}"] = File.ReadAllBytes(file);
        var saeScript = Answers(saes, commit, sharded: false);
        saeScript["resolve_path"] = $"saes/{PipelineFixtures.Hook}";
        saeScript["listing"] = new JsonObject
        {
            ["status"] = 200, ["headers"] = new JsonObject { ["Content-Type"] = "application/json" },
            ["json"] = new JsonObject
            {
                ["id"] = Repo, ["sha"] = commit,
                ["siblings"] = new JsonArray([.. saes.Select(f => (JsonNode)(f.Key.EndsWith(".safetensors", StringComparison.Ordinal)
                    ? new JsonObject { ["rfilename"] = f.Key, ["size"] = 134, ["lfs"] = new JsonObject { ["sha256"] = Convert.ToHexStringLower(SHA256.HashData(f.Value)), ["size"] = f.Value.Length, ["pointerSize"] = 134 } }
                    : new JsonObject { ["rfilename"] = f.Key, ["size"] = f.Value.Length }))]),
            },
        };
        seeds.Add(Script("hub-sae-folder", saes, saeScript));
        return seeds;
    }

    /// <summary>A body's seed file name: the repository path with '/' as "__" (a seed file lies directly in the case folder).</summary>
    static string BodyFile(string repoPath) => "body-" + repoPath.Replace("/", "__", StringComparison.Ordinal);

    static Seed Script(string id, Dictionary<string, byte[]> bodies, JsonObject script) =>
        new($"generated:{id}",
        [
            new SeedFile("hub.json", Encoding.UTF8.GetBytes(script.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true })), FileKind.Script),
            .. bodies.Select(b => new SeedFile(BodyFile(b.Key), b.Value, FileKind.Binary, Mutable: false)),
        ]);

    /// <summary>What the real hub answers: small files with a weak ETag; LFS files as a 302 with X-Linked-* to a CDN that serves ranges.</summary>
    static JsonObject Answers(Dictionary<string, byte[]> bodies, string commit, bool sharded, int partial = 0)
    {
        var script = new JsonObject();
        foreach (var (file, data) in bodies)
        {
            string sha256 = Convert.ToHexStringLower(SHA256.HashData(data)), git = Convert.ToHexStringLower(SHA1.HashData(data));
            if (file.EndsWith(".safetensors", StringComparison.Ordinal))
                script[file] = new JsonObject
                {
                    ["status"] = 302,
                    ["headers"] = new JsonObject
                    {
                        ["X-Repo-Commit"] = commit, ["Location"] = $"{Cdn}/cdn/{sha256}?signature=abc", ["X-Linked-Etag"] = $"\"{sha256}\"",
                        ["X-Linked-Size"] = data.Length.ToString(), ["ETag"] = $"\"{git}\"",
                    },
                    ["cdn"] = new JsonObject { ["status"] = 200, ["headers"] = new JsonObject { ["ETag"] = $"\"{sha256}\"" }, ["body"] = data.Length, ["ranges"] = true },
                    ["partial"] = partial,
                };
            else
                script[file] = new JsonObject
                {
                    ["status"] = 200, ["headers"] = new JsonObject { ["X-Repo-Commit"] = commit, ["ETag"] = $"W/\"{git}\"" }, ["body"] = data.Length,
                };
        }
        script["*"] = new JsonObject { ["status"] = 404, ["headers"] = new JsonObject { ["X-Repo-Commit"] = commit, ["X-Error-Code"] = "EntryNotFound" } };
        if (sharded) script["model.safetensors"] = script["*"]!.DeepClone();
        return script;
    }

    static readonly int[] s_statuses = [200, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 410, 416, 429, 500, 502, 503];

    static readonly Dictionary<string, string[]> s_hostileHeaders = new()
    {
        ["X-Repo-Commit"] = ["", " ", "main", "..", "../../../tmp", "a/b", "ü", new string('f', 41), "0123456789abcdef0123456789abcdef01234567", "a\\b"],
        ["ETag"] = ["", "W/", "\"\"", "W/\"\"", "\"../../escape\"", "\"a/b\"", "\"..\"", "\".\"", "\"" + new string('e', 300) + "\"", "\"ü\"", "unquoted"],
        ["X-Linked-Etag"] = ["", "\"\"", "\"../../escape\"", "\"a/b\"", "\"..\"", "\"sha\"", "W/\"x\""],
        ["X-Linked-Size"] = ["-1", "0", "1", "100", "99999999999999999999", "9223372036854775807", "abc", "", "1e3", " 12 "],
        ["Location"] = ["", "::", "/relative/path", "relative", "//cdn.test/cdn/x", "https://cdn.test/", "ftp://cdn.test/x", "https://hub.test/org/model/resolve/main/config.json",
            "https://other.test/x", "http://[::1", "https://hub.test/org/model/resolve/main/model.safetensors", "file:///etc/passwd"],
        ["Content-Length"] = ["-1", "0", "abc", "99999999999", ""],
        ["Content-Range"] = ["bytes 0-0/1", "bytes */100", "bytes 5-2/10", "garbage", "bytes 1000-1999/2000", ""],
        ["X-Error-Code"] = ["RevisionNotFound", "RepoNotFound", "GatedRepo", "EntryNotFound", ""],
    };

    public override IReadOnlyList<Mutators.NamedMutator> ExtraMutators(SeedFile file) =>
        file.Kind == FileKind.Script ? [new("hub-status", Status), new("hub-header", Header), new("hub-header", Header), new("hub-drop-header", DropHeader), new("hub-body", Body)] : [];

    /// <summary>One answer of the script (a file's, its CDN's, or the fallback's), picked at random.</summary>
    static (JsonObject Root, JsonObject Answer, string Path)? PickAnswer(byte[] bytes, Random rng)
    {
        if (Mutators.JsonMutators.Parse(bytes) is not JsonObject root) return null;
        var answers = new List<(JsonObject, string)>();
        foreach (var (file, node) in root)
            if (node is JsonObject answer)
            {
                answers.Add((answer, file));
                if (answer["cdn"] is JsonObject cdn) answers.Add((cdn, file + ".cdn"));
            }
        if (answers.Count == 0) return null;
        var (picked, path) = answers[rng.Next(answers.Count)];
        return (root, picked, path);
    }

    static byte[] Bytes(JsonObject root) => Encoding.UTF8.GetBytes(root.ToJsonString());

    static (byte[], string)? Status(byte[] bytes, Random rng)
    {
        if (PickAnswer(bytes, rng) is not var (root, answer, path)) return null;
        int status = s_statuses[rng.Next(s_statuses.Length)];
        answer["status"] = status;
        return (Bytes(root), $"{path}.status = {status}");
    }

    static (byte[], string)? Header(byte[] bytes, Random rng)
    {
        if (PickAnswer(bytes, rng) is not var (root, answer, path)) return null;
        var name = s_hostileHeaders.Keys.ElementAt(rng.Next(s_hostileHeaders.Count));
        var values = s_hostileHeaders[name];
        string value = values[rng.Next(values.Length)];
        if (answer["headers"] is not JsonObject headers) answer["headers"] = headers = new JsonObject();
        headers[name] = value;
        return (Bytes(root), $"{path}.headers.{name} = {Mutators.JsonMutators.Describe(value)}");
    }

    static (byte[], string)? DropHeader(byte[] bytes, Random rng)
    {
        if (PickAnswer(bytes, rng) is not var (root, answer, path) || answer["headers"] is not JsonObject { Count: > 0 } headers) return null;
        string name = headers.ElementAt(rng.Next(headers.Count)).Key;
        headers.Remove(name);
        return (Bytes(root), $"{path}.headers.{name} removed");
    }

    /// <summary>The body cut or padded, a stall before the answer, a partial download left from a killed run, ranges refused.</summary>
    static (byte[], string)? Body(byte[] bytes, Random rng)
    {
        if (PickAnswer(bytes, rng) is not var (root, answer, path)) return null;
        int length = answer["body"] is JsonValue v && v.TryGetValue<int>(out int n) ? n : 1000;
        (string key, JsonNode value) = rng.Next(6) switch
        {
            0 => ("body", (JsonNode)0),
            1 => ("body", length - 1 - rng.Next(Math.Max(1, length / 2))),
            2 => ("body", length + 1 + rng.Next(100)),
            3 => ("stall_ms", rng.Next(2) == 0 ? 100 : 1500),
            4 => ("partial", rng.Next(2) == 0 ? 1 : 1 + rng.Next(Math.Max(1, length + 10))),
            _ => ("ranges", false),
        };
        answer[key] = value;
        return (Bytes(root), $"{path}.{key} = {value.ToJsonString()}");
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var script = JsonInputOrRefuse(Path.Combine(folder, "hub.json"));
        var bodies = Directory.GetFiles(folder, "body-*").ToDictionary(p => Path.GetFileName(p)["body-".Length..].Replace("__", "/", StringComparison.Ordinal), File.ReadAllBytes);
        string cache = Path.Combine(folder, "cache");
        var hub = new ScriptedHub(script, bodies);
        var options = new HubClientOptions
        {
            Endpoint = Endpoint, CacheDir = cache, Token = "", Offline = false,
            RequestTimeout = TimeSpan.FromMilliseconds(500), ReadTimeout = TimeSpan.FromMilliseconds(300), LockTimeout = TimeSpan.FromMilliseconds(300),
        };
        using (var planter = new HubClient(hub, options)) hub.PlantPartialDownloads(planter.RepoFolder(Repo));

        if (script["resolve_path"] is JsonValue resolve && resolve.TryGetValue(out string? repoPath))
        {
            ResolveDictionary(folder, cache, hub, options, repoPath);
            return;
        }
        string snapshot;
        try
        {
            using var client = new HubClient(hub, options);
            snapshot = client.ResolveAsync(Repo).GetAwaiter().GetResult();
        }
        catch (HttpRequestException e) { throw new InputError("hub: " + e.Message); } // the client's answer to a hub it cannot use
        finally { RequireNothingOutside(folder, cache); }

        // Every file is the bytes the hub sent for it (a blob shared by two files with one ETag excepted: the cache is content-addressed).
        foreach (var path in Directory.GetFiles(snapshot))
        {
            string file = Path.GetFileName(path);
            if (hub.Sent.TryGetValue(file, out var sent) && !hub.SharesEtag(file))
                Require.That(File.ReadAllBytes(path).AsSpan().SequenceEqual(sent), $"snapshot file {file} is not the {sent.Length} bytes the hub sent");
        }
        using (var offline = new HubClient(hub, options with { Offline = true }))
            Require.That(offline.TryGetCachedSnapshot(Repo) == snapshot, "the cached snapshot is not found offline after a complete download");
        using var model = ModelLoader.LoadFolder(snapshot);
        Require.Finite(model.Run([1, 17, 42, 99]).Logits.Span, "logits of the downloaded model");
    }

    /// <summary>
    /// A folder of dictionaries, as <c>--sae hf:…</c> resolves one: every fetched file is the bytes the hub sent, the copy is found
    /// offline after, and the SAE loads and encodes (finite).
    /// </summary>
    static void ResolveDictionary(string folder, string cache, ScriptedHub hub, HubClientOptions options, string repoPath)
    {
        string local;
        try
        {
            using var client = new HubClient(hub, options);
            local = client.ResolvePathAsync(Repo, repoPath).GetAwaiter().GetResult();
        }
        catch (HttpRequestException e) { throw new InputError("hub: " + e.Message); }
        finally { RequireNothingOutside(folder, cache); }
        string snapshot = local[..^repoPath.Trim('/').Length].TrimEnd('/');
        foreach (var path in Directory.EnumerateFiles(local, "*", SearchOption.AllDirectories).Append(local).Where(File.Exists))
        {
            string file = Path.GetRelativePath(snapshot, path).Replace(Path.DirectorySeparatorChar, '/');
            Require.That(!file.EndsWith(".pt", StringComparison.Ordinal) || Loupe.Models.Loading.HubClient.TorchSaveFilesRead.Contains(Path.GetFileName(file)), $"a pickle ({file}) was fetched");
            if (hub.Sent.TryGetValue(file, out var sent) && !hub.SharesEtag(file))
                Require.That(File.ReadAllBytes(path).AsSpan().SequenceEqual(sent), $"{file} is not the {sent.Length} bytes the hub sent");
        }
        using (var offline = new HubClient(hub, options with { Offline = true }))
            Require.That(offline.TryGetCachedPath(Repo, repoPath) == local, "the fetched path is not found offline");
        if (!Directory.Exists(local)) return;
        var (dictionary, _) = SaeLensFormat.Load(local);
        Require.Finite(dictionary.Encode(SeedFiles.Floats(dictionary.Shape.DIn, 3), 1), "the fetched SAE's feature activations");
    }

    /// <summary>The script, or a refusal: a script the fake hub cannot read is no input to the client.</summary>
    static JsonObject JsonInputOrRefuse(string path) =>
        Mutators.JsonMutators.Parse(File.ReadAllBytes(path)) as JsonObject ?? throw new InputError("hub.json: not a JSON object the fake hub can serve");

    /// <summary>The client writes only under its cache folder (an ETag or commit of "../.." must not lead it elsewhere).</summary>
    static void RequireNothingOutside(string folder, string cache)
    {
        foreach (var path in Directory.EnumerateFileSystemEntries(folder, "*", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(folder, path);
            bool seedFile = !relative.Contains(Path.DirectorySeparatorChar) && (relative == "hub.json" || relative.StartsWith("body-", StringComparison.Ordinal));
            Require.That(seedFile || relative == "cache" || relative.StartsWith("cache" + Path.DirectorySeparatorChar, StringComparison.Ordinal),
                $"the client wrote {relative} outside its cache folder");
        }
    }

    /// <summary>An in-memory hub answering from the script; unreadable script values count as absent.</summary>
    sealed class ScriptedHub(JsonObject script, Dictionary<string, byte[]> bodies) : HttpMessageHandler
    {
        /// <summary>Per file, the bytes of its last complete answer (a resumed answer counts from the partial file's bytes on).</summary>
        public Dictionary<string, byte[]> Sent { get; } = [];

        public bool SharesEtag(string file)
        {
            string? Etag(string f) => Entry(f)?["headers"] is JsonObject h ? (Text(h["X-Linked-Etag"]) ?? Text(h["ETag"]))?.Trim().TrimStart('W', '/').Trim('"') : null;
            string? mine = Etag(file);
            return mine is null || bodies.Keys.Any(other => other != file && Etag(other) == mine);
        }

        JsonObject? Entry(string file) => (script[file] ?? script["*"]) as JsonObject;

        static string? Text(JsonNode? node) => node switch
        {
            null => null,
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            _ => node.ToJsonString(),
        };

        static int? Int(JsonNode? node) => node is JsonValue v && v.TryGetValue<double>(out var d) && d is >= 0 and <= int.MaxValue ? (int)d : null;

        /// <summary>Writes the first <c>partial</c> bytes of each LFS body as the client's leftover <c>.incomplete</c> download.</summary>
        public void PlantPartialDownloads(string repoFolder)
        {
            foreach (var (file, data) in bodies)
            {
                if (Entry(file) is not { } entry || Int(entry["partial"]) is not int n || n <= 0 || entry["headers"] is not JsonObject h) continue;
                string? etag = Text(h["X-Linked-Etag"])?.Trim('"');
                if (etag is null || etag.Length == 0 || !etag.All(char.IsAsciiLetterOrDigit)) continue;
                Directory.CreateDirectory(Path.Combine(repoFolder, "blobs"));
                File.WriteAllBytes(Path.Combine(repoFolder, "blobs", etag + ".incomplete"), data.AsSpan(0, Math.Min(n, data.Length)).ToArray());
            }
        }

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var url = request.RequestUri!;
            string path = Uri.UnescapeDataString(url.AbsolutePath);
            bool head = request.Method == HttpMethod.Head;
            string? file;
            JsonObject? answer;
            if (url.Host == "cdn.test")
            {
                // The CDN serves the file whose X-Linked-Etag names this blob.
                file = bodies.Keys.FirstOrDefault(f => Entry(f) is { } e && e["headers"] is JsonObject h && Text(h["Location"]) is { } loc
                                                       && Uri.TryCreate(loc, UriKind.Absolute, out var u) && u.AbsolutePath == url.AbsolutePath);
                answer = file is null ? null : Entry(file)!["cdn"] as JsonObject;
            }
            else if (path.StartsWith("/api/models/" + Repo + "/revision/", StringComparison.Ordinal))
            {
                // The listing (what a dictionary folder's resolution asks first): the script's JSON as the body, whole unless cut.
                file = null;
                answer = script["listing"] as JsonObject;
            }
            else
            {
                const string prefix = "/" + Repo + "/resolve/";
                file = path.StartsWith(prefix, StringComparison.Ordinal) && path[prefix.Length..].IndexOf('/') is int slash and >= 0 ? path[(prefix.Length + slash + 1)..] : null;
                answer = file is null ? null : Entry(file);
            }
            var response = new HttpResponseMessage((HttpStatusCode)(answer is null ? 404 : Math.Clamp(Int(answer["status"]) ?? 200, 100, 599))) { RequestMessage = request };
            byte[] data = file is not null && bodies.TryGetValue(file, out var b) ? b
                : answer?["json"] is { } listing ? Encoding.UTF8.GetBytes(listing.ToJsonString()) : [];
            int length = answer is null ? 0 : Int(answer["body"]) ?? (answer["json"] is not null ? data.Length : 0);
            byte[] body = new byte[Math.Min(length, data.Length + 4096)]; // cut, or padded with zeros
            data.AsSpan(0, Math.Min(data.Length, body.Length)).CopyTo(body);
            long from = 0;
            if (request.Headers.Range?.Ranges.FirstOrDefault()?.From is long start && answer?["ranges"] is JsonValue r && r.TryGetValue<bool>(out bool ranges) && ranges
                && (int)response.StatusCode == 200 && start < body.Length)
            {
                from = start;
                response.StatusCode = HttpStatusCode.PartialContent;
                body = body[(int)start..];
            }
            response.Content = new ByteArrayContent(head ? [] : body);
            if (head) response.Content.Headers.ContentLength = length;
            if (response.StatusCode == HttpStatusCode.PartialContent)
                response.Content.Headers.TryAddWithoutValidation("Content-Range", $"bytes {from}-{from + body.Length - 1}/{from + body.Length}");
            if (answer?["headers"] is JsonObject headers)
                foreach (var (name, value) in headers)
                {
                    if (Text(value) is not { } text) continue;
                    try
                    {
                        if (!response.Headers.TryAddWithoutValidation(name, text)) response.Content.Headers.TryAddWithoutValidation(name, text);
                    }
                    catch (Exception e) when (e is FormatException or InvalidOperationException) { } // a name HTTP cannot carry
                }
            if (answer is not null && Int(answer["stall_ms"]) is int stall) await Task.Delay(Math.Min(stall, 2000), cancellationToken).ConfigureAwait(false);
            if (!head && file is not null && (int)response.StatusCode is 200 or 206)
                Sent[file] = from == 0 ? body : [.. data.AsSpan(0, (int)Math.Min(from, data.Length)), .. body];
            return response;
        }
    }
}
