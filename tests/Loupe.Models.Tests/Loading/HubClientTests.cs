using System.Net;
using System.Net.Sockets;
using System.Text;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Models.Tests.Loading;

/// <summary>Downloads against <see cref="FakeHub"/>, a real HTTP server on 127.0.0.1.</summary>
public class HubClientTests
{
    const string Repo = "tiny-org/tiny-model";

    static readonly byte[] Config = Encoding.UTF8.GetBytes("{\"model_type\": \"gpt2\", \"n_embd\": 4}");
    static readonly byte[] Tokenizer = Encoding.UTF8.GetBytes("{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}");

    static byte[] SafeTensorsBytes(string name, int n, float offset = 0)
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        SafeTensorsWriter.Write(path, [(name, [n], (ReadOnlyMemory<float>)Enumerable.Range(0, n).Select(i => i + offset).ToArray())]);
        return File.ReadAllBytes(path);
    }

    static readonly byte[] Weights = SafeTensorsBytes("transformer.wte.weight", 1000);

    static Dictionary<string, byte[]> SmallModel() => new()
    {
        ["config.json"] = Config,
        ["tokenizer.json"] = Tokenizer,
        ["model.safetensors"] = Weights,
    };

    static HubClient Client(string endpoint, TempDir cache, string? token = "", bool offline = false, double timeoutSeconds = 10) =>
        new(new HubClientOptions
        {
            Endpoint = endpoint,
            CacheDir = cache.Path,
            Token = token,
            Offline = offline,
            RequestTimeout = TimeSpan.FromSeconds(timeoutSeconds),
            ReadTimeout = TimeSpan.FromSeconds(timeoutSeconds),
            LockTimeout = TimeSpan.FromSeconds(10),
        });

    static string RepoFolder(TempDir cache, string repo = Repo) => Path.Combine(cache.Path, "models--" + repo.Replace("/", "--"));

    sealed class RecordingProgress : IProgress<DownloadProgress>
    {
        public readonly List<DownloadProgress> Reports = [];
        public void Report(DownloadProgress value) { lock (Reports) Reports.Add(value); }
    }

    [Fact]
    public async Task DownloadsASmallModel_IntoTheStandardCacheLayout()
    {
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        var progress = new RecordingProgress();

        string snapshot = await client.ResolveAsync(Repo, progress: progress);

        string repoFolder = RepoFolder(cache);
        Assert.Equal(Path.Combine(repoFolder, "snapshots", commit), snapshot);
        Assert.Equal(commit, File.ReadAllText(Path.Combine(repoFolder, "refs", "main")));

        // Blobs are named by etag: sha256 for LFS files, the git sha for small files.
        string weightsBlob = Path.Combine(repoFolder, "blobs", FakeHub.Sha256(Weights));
        Assert.Equal(Weights, File.ReadAllBytes(weightsBlob));
        Assert.Equal(Config, File.ReadAllBytes(Path.Combine(repoFolder, "blobs", FakeHub.GitSha(Config))));
        Assert.Empty(Directory.GetFiles(Path.Combine(repoFolder, "blobs"), "*.incomplete"));

        // Snapshot entries are relative symlinks to the blobs.
        var link = new FileInfo(Path.Combine(snapshot, "model.safetensors"));
        Assert.Equal(Path.Combine("..", "..", "blobs", FakeHub.Sha256(Weights)), link.LinkTarget);
        Assert.Equal(Config, File.ReadAllBytes(Path.Combine(snapshot, "config.json")));
        Assert.Equal(Tokenizer, File.ReadAllBytes(Path.Combine(snapshot, "tokenizer.json")));
        Assert.False(File.Exists(Path.Combine(snapshot, "vocab.json")));
        Assert.True(File.Exists(Path.Combine(repoFolder, ".no_exist", commit, "vocab.json")));

        using (var weights = SafeTensorsCheckpoint.Open(snapshot))
            Assert.Equal(999f, weights.GetFloat32("transformer.wte.weight").Span[999]);

        // The LFS file went through the redirect; HEAD before GET; progress ends at the full size.
        Assert.Equal(1, hub.Count("HEAD", "/resolve/main/config.json"));
        Assert.Equal(1, hub.Count("HEAD", $"/resolve/{commit}/model.safetensors"));
        Assert.Equal(1, hub.Count("GET", "/cdn/" + FakeHub.Sha256(Weights)));
        Assert.Equal(0, hub.Count("HEAD", "/cdn/")); // metadata comes from the redirect itself
        Assert.Equal(0, hub.Count("GET", "pytorch_model.bin") + hub.Count("HEAD", "pytorch_model.bin"));
        var last = progress.Reports.Last(r => r.FileName == "model.safetensors");
        Assert.Equal(Weights.Length, last.BytesDone);
        Assert.Equal(Weights.Length, last.BytesTotal);
    }

    [Fact]
    public async Task WhatADownloadTakesIsAnnouncedBeforeTheWeights_AndNotWhenCached()
    {
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        var announced = new List<HubPathListing>();
        using (var client = Client(hub.Endpoint, cache))
            await client.ResolveAsync(Repo, planned: announced.Add);
        var listing = Assert.Single(announced);
        Assert.Equal(commit, listing.Commit);
        Assert.Equal(["config.json", "model.safetensors", "tokenizer.json"], listing.Files.Select(f => f.File).Order());
        Assert.Equal(Config.Length + Tokenizer.Length + Weights.Length, listing.Bytes);
        using (var client = Client(hub.Endpoint, cache))
            await client.ResolveAsync(Repo, planned: announced.Add);
        Assert.Single(announced); // everything cached: nothing to announce
    }

    [Fact]
    public async Task SecondResolve_UsesTheCache_AndOfflineModeNeedsNoServer()
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        string first;
        using (var client = Client(hub.Endpoint, cache))
            first = await client.ResolveAsync(Repo);
        int getsBefore = hub.Count("GET", "");
        int requestsBefore = hub.Requests.Count;

        using (var client = Client(hub.Endpoint, cache))
            Assert.Equal(first, await client.ResolveAsync(Repo));
        Assert.Equal(getsBefore, hub.Count("GET", ""));          // nothing downloaded again
        Assert.Equal(requestsBefore + 1, hub.Requests.Count);    // one HEAD: where does main point now?

        // Offline: no request at all, even to a dead endpoint.
        using (var offline = Client($"http://127.0.0.1:{FakeHub.FreePort()}", cache, offline: true))
            Assert.Equal(first, await offline.ResolveAsync(Repo));
        // A pinned commit that is fully cached needs no request either.
        string commit = Path.GetFileName(first);
        using (var client = Client(hub.Endpoint, cache))
            Assert.Equal(first, await client.ResolveAsync(Repo, revision: commit));
        Assert.Equal(requestsBefore + 1, hub.Requests.Count);
    }

    [Fact]
    public async Task ShardedModel_DownloadsTheIndexAndEveryShard()
    {
        byte[] shard1 = SafeTensorsBytes("a.weight", 300);
        byte[] shard2 = SafeTensorsBytes("b.weight", 200, offset: 0.5f);
        byte[] index = Encoding.UTF8.GetBytes(
            "{\"metadata\": {\"total_size\": 2000}, \"weight_map\": {" +
            "\"a.weight\": \"model-00001-of-00002.safetensors\", \"b.weight\": \"model-00002-of-00002.safetensors\"}}");
        using var hub = new FakeHub();
        string commit = hub.AddRepo("org/sharded", new Dictionary<string, byte[]>
        {
            ["config.json"] = Config,
            ["model.safetensors.index.json"] = index,
            ["model-00001-of-00002.safetensors"] = shard1,
            ["model-00002-of-00002.safetensors"] = shard2,
        });
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);

        string snapshot = await client.ResolveAsync("org/sharded");

        Assert.EndsWith(commit, snapshot);
        // model.safetensors was tried first (404), then the index.
        Assert.Single(hub.Requests, r => r.Method == "HEAD" && r.Path.EndsWith("/model.safetensors", StringComparison.Ordinal));
        Assert.Single(hub.Requests, r => r.Method == "GET" && r.Path.EndsWith("/model.safetensors.index.json", StringComparison.Ordinal));
        using var c = SafeTensorsCheckpoint.Open(snapshot);
        Assert.True(c.IsSharded);
        Assert.Equal(299f, c.GetFloat32("a.weight").Span[299]);
        Assert.Equal(0.5f, c.GetFloat32("b.weight").Span[0]);
        Assert.Equal(snapshot, client.TryGetCachedSnapshot("org/sharded"));

        // Losing a shard makes the cached snapshot incomplete.
        File.Delete(Path.Combine(snapshot, "model-00002-of-00002.safetensors"));
        Assert.Null(client.TryGetCachedSnapshot("org/sharded"));
    }

    [Fact]
    public async Task PartialDownload_IsResumedWithARangeRequest()
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        string blobs = Path.Combine(RepoFolder(cache), "blobs");
        Directory.CreateDirectory(blobs);
        string sha = FakeHub.Sha256(Weights);
        File.WriteAllBytes(Path.Combine(blobs, sha + ".incomplete"), Weights.AsSpan(0, 1234).ToArray());
        using var client = Client(hub.Endpoint, cache);
        var progress = new RecordingProgress();

        string snapshot = await client.ResolveAsync(Repo, progress: progress);

        var get = Assert.Single(hub.Requests, r => r.Method == "GET" && r.Path == "/cdn/" + sha);
        Assert.Equal("bytes=1234-", get.Range);
        Assert.Equal(Weights, File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.False(File.Exists(Path.Combine(blobs, sha + ".incomplete")));
        Assert.Equal(1234, progress.Reports.First(r => r.FileName == "model.safetensors").BytesDone);
    }

    [Fact]
    public async Task ServerIgnoringRange_RestartsFromZero_AndAStaleOversizedPartialIsDiscarded()
    {
        using var hub = new FakeHub { IgnoreRange = true };
        hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        string blobs = Path.Combine(RepoFolder(cache), "blobs");
        Directory.CreateDirectory(blobs);
        // A partial file with wrong bytes: the server's 200 answer must replace it, not be appended.
        File.WriteAllBytes(Path.Combine(blobs, FakeHub.Sha256(Weights) + ".incomplete"), new byte[500]);
        // A partial longer than the file itself (another upload of a different size).
        File.WriteAllBytes(Path.Combine(blobs, FakeHub.GitSha(Config) + ".incomplete"), new byte[Config.Length + 50]);
        using var client = Client(hub.Endpoint, cache);

        string snapshot = await client.ResolveAsync(Repo);

        Assert.Equal("bytes=500-", Assert.Single(hub.Requests, r => r.Method == "GET" && r.Path.StartsWith("/cdn/", StringComparison.Ordinal)).Range);
        Assert.Equal(Weights, File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.Equal(Config, File.ReadAllBytes(Path.Combine(snapshot, "config.json")));
        Assert.Null(Assert.Single(hub.Requests, r => r.Method == "GET" && r.Path.EndsWith("/config.json", StringComparison.Ordinal)).Range);
    }

    [Fact]
    public async Task SizeMismatch_IsAnErrorNamingTheFileAndBothSizes_AndLeavesNoBlob()
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SmallModel());
        hub.SizeLies["model.safetensors"] = 10;
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);

        var e = await Assert.ThrowsAsync<IOException>(() => client.ResolveAsync(Repo));

        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains($"expected {Weights.Length + 10} bytes", e.Message);
        Assert.Contains($"got {Weights.Length}", e.Message);
        string blobs = Path.Combine(RepoFolder(cache), "blobs");
        Assert.DoesNotContain(Directory.GetFiles(blobs), f => Path.GetFileName(f).StartsWith(FakeHub.Sha256(Weights), StringComparison.Ordinal));
        Assert.Null(client.TryGetCachedSnapshot(Repo));
    }

    [Fact]
    public async Task ServerDown_SaysTheHubIsUnreachable_NamesTheCacheFolder_AndSuggestsALocalFolder()
    {
        using var cache = new TempDir();
        string endpoint = $"http://127.0.0.1:{FakeHub.FreePort()}";
        using var client = Client(endpoint, cache);

        var e = await Assert.ThrowsAsync<HttpRequestException>(() => client.ResolveAsync(Repo));

        Assert.Contains($"hub at {endpoint} could not be reached", e.Message);
        Assert.Contains($"Downloading '{Repo}' needs the network", e.Message);
        Assert.Contains(RepoFolder(cache), e.Message);
        Assert.Contains("config.json", e.Message);
        Assert.Contains("--model ../shared/models/stories260K", e.Message);
        Assert.IsAssignableFrom<HttpRequestException>(e.InnerException);
    }

    [Fact]
    public async Task ServerDown_ButACompleteSnapshotIsCached_UsesTheCache()
    {
        using var cache = new TempDir();
        string first;
        using (var hub = new FakeHub())
        {
            hub.AddRepo(Repo, SmallModel());
            using var client = Client(hub.Endpoint, cache);
            first = await client.ResolveAsync(Repo);
        }
        using (var client = Client($"http://127.0.0.1:{FakeHub.FreePort()}", cache))
            Assert.Equal(first, await client.ResolveAsync(Repo));
    }

    [Fact]
    public async Task ServerThatNeverAnswers_TimesOutWithTheUnreachableMessage()
    {
        var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start();
        var accepted = new List<TcpClient>();
        var acceptLoop = Task.Run(async () =>
        {
            try { while (true) accepted.Add(await silent.AcceptTcpClientAsync()); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        });
        try
        {
            using var cache = new TempDir();
            string endpoint = $"http://127.0.0.1:{((IPEndPoint)silent.LocalEndpoint).Port}";
            using var client = Client(endpoint, cache, timeoutSeconds: 1);
            var e = await Assert.ThrowsAsync<HttpRequestException>(() => client.ResolveAsync(Repo));
            Assert.Contains("could not be reached", e.Message);
            Assert.Contains("within 1 s", e.Message);
        }
        finally
        {
            silent.Stop();
            await acceptLoop.WaitAsync(TimeSpan.FromSeconds(5));
            foreach (var c in accepted) c.Dispose();
        }
    }

    [Fact]
    public async Task Offline_WithNothingCached_NamesTheCacheFolder()
    {
        using var cache = new TempDir();
        using var client = Client($"http://127.0.0.1:{FakeHub.FreePort()}", cache, offline: true);
        var e = await Assert.ThrowsAsync<InputError>(() => client.ResolveAsync(Repo));
        Assert.Contains("HF_HUB_OFFLINE", e.Message);
        Assert.Contains(RepoFolder(cache), e.Message);
        Assert.Contains("--model ../shared/models/stories260K", e.Message);
    }

    [Fact]
    public async Task UnknownRepo_404OnConfig_SaysTheIdDoesNotExist()
    {
        using var hub = new FakeHub();
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        var e = await Assert.ThrowsAsync<InputError>(() => client.ResolveAsync("nobody/nothing"));
        Assert.Contains("404", e.Message);
        Assert.Contains("'nobody/nothing' does not exist", e.Message);
    }

    [Fact]
    public async Task GatedRepo_401_AsksForHfToken_AndTheTokenIsSent()
    {
        using var hub = new FakeHub { RequiredToken = "hf_test_token" };
        hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        using (var anonymous = Client(hub.Endpoint, cache))
        {
            var e = await Assert.ThrowsAsync<InputError>(() => anonymous.ResolveAsync(Repo));
            Assert.Contains("401", e.Message);
            Assert.Contains("gated or private", e.Message);
            Assert.Contains("HF_TOKEN", e.Message);
        }
        using (var authorised = Client(hub.Endpoint, cache, token: "hf_test_token"))
        {
            string snapshot = await authorised.ResolveAsync(Repo);
            Assert.Equal(Weights, File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        }
        // The token goes to the hub, never to the (cross-origin) CDN.
        Assert.Contains(hub.Requests, r => r.Authorization == "Bearer hf_test_token" && r.Path.Contains("/resolve/", StringComparison.Ordinal));
        var cdn = Assert.Single(hub.Requests, r => r.Path.StartsWith("/cdn/", StringComparison.Ordinal));
        Assert.Null(cdn.Authorization);
    }

    [Fact]
    public async Task SameOriginRedirect_IsFollowed_AndTheTokenKept()
    {
        using var hub = new FakeHub(crossOriginCdn: false) { RequiredToken = "tok" };
        hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache, token: "tok");
        string snapshot = await client.ResolveAsync(Repo);
        Assert.Equal(Weights, File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.Equal(1, hub.Count("HEAD", "/cdn/"));
        Assert.All(hub.Requests, r => Assert.Equal("Bearer tok", r.Authorization));
    }

    [Fact]
    public async Task ConcurrentResolves_OfOneModel_DownloadEachBlobOnce()
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        using var a = Client(hub.Endpoint, cache);
        using var b = Client(hub.Endpoint, cache);
        var results = await Task.WhenAll(a.ResolveAsync(Repo), b.ResolveAsync(Repo), a.ResolveAsync(Repo))
            .WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(results[0], results[1]);
        Assert.Equal(results[0], results[2]);
        Assert.Equal(1, hub.Count("GET", "/cdn/"));
        Assert.Equal(Weights, File.ReadAllBytes(Path.Combine(results[0], "model.safetensors")));
    }

    [Fact]
    public async Task RepoWithOnlyPytorchModelBin_GetsItsShards_AndTheModelReadsThem()
    {
        using var hub = new FakeHub();
        string bin = SharedData.TestData("pytorch/stories260K-bin");
        var files = Directory.GetFiles(bin).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);
        files["training_args.bin"] = [0x80, 0x02, 0x7D, 0x71, 0x00, 0x2E];
        hub.AddRepo("org/pickled", files);
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        string snapshot = await client.ResolveAsync("org/pickled");
        Assert.Equal(1, hub.Count("GET", "pytorch_model.bin.index.json"));
        Assert.Equal(0, hub.Count("GET", "training_args.bin"));
        using (var weights = SafeTensorsCheckpoint.Open(snapshot))
        {
            Assert.Equal("pytorch", weights.FileOf("model.norm.weight").Format);
            Assert.Equal(2, weights.Files.Count);
        }
        Assert.Equal(snapshot, client.TryGetCachedSnapshot("org/pickled"));
    }

    [Fact]
    public async Task A_transformer_lens_toy_model_gets_model_final_pth_and_its_tokenizer_from_tokenizer_name()
    {
        using var hub = new FakeHub();
        string tl = SharedData.TestData("transformer_lens/shortformer-attn-only-2l");
        hub.AddRepo("NeelNanda/Toy_2L", new Dictionary<string, byte[]>
        {
            ["config.json"] = File.ReadAllBytes(Path.Combine(tl, "config.json")),
            ["model_final.pth"] = File.ReadAllBytes(Path.Combine(tl, "model_final.pth")),
            ["checkpoints/model_100.pth"] = File.ReadAllBytes(Path.Combine(tl, "checkpoints", "model_100.pth")),
        });
        string tokenizer = SharedData.TestData("pytorch/stories260K-bin/tokenizer.json");
        hub.AddRepo("NeelNanda/gpt-neox-tokenizer-digits", new Dictionary<string, byte[]>
        {
            ["tokenizer.json"] = File.ReadAllBytes(tokenizer),
            ["model.safetensors"] = Weights,                       // a tokenizer fetch never takes weights
        });
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        string snapshot = await client.ResolveAsync("NeelNanda/Toy_2L");
        Assert.Equal(1, hub.Count("GET", "model_final.pth"));
        Assert.Equal(0, hub.Count("GET", "checkpoints/"));
        Assert.Equal(snapshot, client.TryGetCachedSnapshot("NeelNanda/Toy_2L"));
        using (var model = ModelLoader.LoadFolder(snapshot))
            Assert.True(model.Config.ShortformerPositions);

        string tokenizerFolder = await client.ResolveTokenizerAsync("NeelNanda/gpt-neox-tokenizer-digits");
        Assert.True(File.Exists(Path.Combine(tokenizerFolder, "tokenizer.json")));
        Assert.Equal(0, hub.Count("GET", "model.safetensors"));
        Assert.Equal(tokenizerFolder, await client.ResolveTokenizerAsync("NeelNanda/gpt-neox-tokenizer-digits")); // cached: no listing
        Assert.NotNull(Loupe.Tokenizers.TokenizerLoader.FromFolder(tokenizerFolder));

        var e = await Assert.ThrowsAsync<InputError>(() => client.ResolveTokenizerAsync("NeelNanda/Toy_2L"));
        Assert.Contains("no tokenizer", e.Message);
    }

    [Fact]
    public async Task RepoWithoutWeights_NamesWhatItLookedFor()
    {
        using var hub = new FakeHub();
        hub.AddRepo("org/empty", new Dictionary<string, byte[]> { ["config.json"] = Config });
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        var e = await Assert.ThrowsAsync<InputError>(() => client.ResolveAsync("org/empty"));
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains("pytorch_model.bin.index.json", e.Message);
        Assert.Contains("model_final.pth", e.Message);
    }

    [Fact]
    public async Task Cancellation_IsAnOperationCanceledException()
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SmallModel());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.ResolveAsync(Repo, ct: cts.Token));
    }

    [Fact]
    public async Task ExistingLocalFolder_IsReturnedUnchanged_WithoutNetwork()
    {
        using var local = new TempDir();
        using var cache = new TempDir();
        using var client = Client($"http://127.0.0.1:{FakeHub.FreePort()}", cache);
        Assert.Equal(local.Path, await client.ResolveAsync(local.Path));
    }

    [Theory]
    [InlineData("../no/such/folder")]
    [InlineData("org/name/extra")]
    [InlineData("bad--id")]
    public async Task NeitherAFolderNorAModelId_IsAnInputError(string text)
    {
        using var cache = new TempDir();
        using var client = Client($"http://127.0.0.1:{FakeHub.FreePort()}", cache);
        var e = await Assert.ThrowsAsync<InputError>(() => client.ResolveAsync(text));
        Assert.Contains(text, e.Message);
    }

    [Fact]
    public void CacheDir_ComesFromHfHomeWhenGiven()
    {
        Assert.Equal(Path.Combine("/x/hf", "hub"), HubClient.DefaultCacheDir("/x/hf"));
        using var client = new HubClient(new HubClientOptions { HfHome = "/x/hf", Endpoint = "http://127.0.0.1:9" });
        Assert.Equal("/x/hf/hub", client.CacheDir);
        Assert.Equal("http://127.0.0.1:9", client.Endpoint);
        Assert.Equal("/x/hf/hub/models--openai-community--gpt2", client.RepoFolder("openai-community/gpt2"));
    }

    [Theory]
    [InlineData("\"abc\"", "abc")]
    [InlineData("W/\"abc\"", "abc")]
    [InlineData("  abc ", "abc")]
    public void Etags_AreStripped(string raw, string expected) => Assert.Equal(expected, HubClient.StripEtag(raw));
}
