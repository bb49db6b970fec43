using System.Text;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Models.Tests.Loading;

/// <summary>
/// <see cref="HubClient.ResolvePathAsync"/>: one folder (or file) of a repository of dictionaries — SAELens SAEs per hook, a
/// Gemma Scope params.npz — fetched into the hub cache from <see cref="FakeHub"/>'s listing, a real HTTP server on 127.0.0.1.
/// </summary>
public class HubPathTests
{
    const string Repo = "sae-org/gpt2-saes";

    static byte[] Bytes(string text) => Encoding.UTF8.GetBytes(text);

    static byte[] Weights(int n)
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        SafeTensorsWriter.Write(path, [("W_enc", [n], (ReadOnlyMemory<float>)Enumerable.Range(0, n).Select(i => (float)i).ToArray())]);
        return File.ReadAllBytes(path);
    }

    static Dictionary<string, byte[]> SaeRepo() => new()
    {
        ["README.md"] = Bytes("# SAEs"),
        ["blocks.0.hook_resid_pre/cfg.json"] = Bytes("{\"d_in\": 4}"),
        ["blocks.0.hook_resid_pre/sae_weights.safetensors"] = Weights(10),
        ["blocks.0.hook_resid_pre/sparsity.safetensors"] = Weights(3),
        ["blocks.1.hook_resid_pre/cfg.json"] = Bytes("{\"d_in\": 5}"),
        ["blocks.1.hook_resid_pre/sae_weights.safetensors"] = Weights(12),
        ["blocks.1.hook_resid_pre/optimizer.pt"] = Bytes("a pickle"),
        ["layer_3/width_16k/params.npz"] = Bytes("PK npz bytes"),
    };

    static HubClient Client(string endpoint, TempDir cache, bool offline = false) =>
        new(new HubClientOptions { Endpoint = endpoint, CacheDir = cache.Path, Token = "", Offline = offline, RequestTimeout = TimeSpan.FromSeconds(10) });

    [Fact]
    public async Task A_folder_is_fetched_alone_into_the_snapshot_and_announced_first()
    {
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, SaeRepo());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        HubPathListing? planned = null;

        string folder = await client.ResolvePathAsync(Repo, "blocks.0.hook_resid_pre", planned: l => planned = l);

        string snapshot = Path.Combine(cache.Path, "models--sae-org--gpt2-saes", "snapshots", commit);
        Assert.Equal(Path.Combine(snapshot, "blocks.0.hook_resid_pre"), folder);
        Assert.Equal(["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"], Directory.GetFiles(folder).Select(Path.GetFileName).Order());
        Assert.Equal(SaeRepo()["blocks.0.hook_resid_pre/sae_weights.safetensors"], File.ReadAllBytes(Path.Combine(folder, "sae_weights.safetensors")));
        Assert.False(Directory.Exists(Path.Combine(snapshot, "blocks.1.hook_resid_pre"))); // other SAEs are not fetched
        Assert.Equal(commit, File.ReadAllText(Path.Combine(cache.Path, "models--sae-org--gpt2-saes", "refs", "main")));
        Assert.NotNull(planned);
        Assert.Equal(commit, planned!.Commit);
        Assert.Equal(3, planned.Files.Count);
        Assert.Equal(SaeRepo().Where(f => f.Key.StartsWith("blocks.0.", StringComparison.Ordinal)).Sum(f => (long)f.Value.Length), planned.Bytes); // LFS files by their real size
    }

    [Fact]
    public async Task Pickles_are_never_fetched_and_a_file_path_returns_the_file()
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SaeRepo());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        HubPathListing? planned = null;
        string folder = await client.ResolvePathAsync(Repo, "blocks.1.hook_resid_pre/", planned: l => planned = l);
        Assert.Equal(["blocks.1.hook_resid_pre/optimizer.pt"], planned!.Skipped);
        Assert.False(File.Exists(Path.Combine(folder, "optimizer.pt")));
        Assert.Equal(0, hub.Count("GET", "optimizer.pt") + hub.Count("HEAD", "optimizer.pt"));

        string npz = await client.ResolvePathAsync(Repo, "layer_3/width_16k/params.npz");
        Assert.Equal("params.npz", Path.GetFileName(npz));
        Assert.Equal(SaeRepo()["layer_3/width_16k/params.npz"], File.ReadAllBytes(npz));
    }

    [Fact]
    public async Task A_cached_path_needs_no_server_offline_or_at_its_commit()
    {
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, SaeRepo());
        using var cache = new TempDir();
        string first;
        using (var client = Client(hub.Endpoint, cache)) first = await client.ResolvePathAsync(Repo, "blocks.0.hook_resid_pre");
        int requests = hub.Requests.Count;
        using (var offline = Client($"http://127.0.0.1:{FakeHub.FreePort()}", cache, offline: true))
        {
            Assert.Equal(first, await offline.ResolvePathAsync(Repo, "blocks.0.hook_resid_pre"));
            var e = await Assert.ThrowsAsync<InputError>(() => offline.ResolvePathAsync(Repo, "blocks.1.hook_resid_pre"));
            Assert.Contains("HF_HUB_OFFLINE", e.Message);
        }
        using (var client = Client(hub.Endpoint, cache)) Assert.Equal(first, await client.ResolvePathAsync(Repo, "blocks.0.hook_resid_pre", commit));
        Assert.Equal(requests, hub.Requests.Count);
        // Unreachable hub: the cached copy serves.
        using (var dead = Client($"http://127.0.0.1:{FakeHub.FreePort()}", cache)) Assert.Equal(first, await dead.ResolvePathAsync(Repo, "blocks.0.hook_resid_pre"));
    }

    [Theory]
    [InlineData("blocks.9.hook_resid_pre", "README.md, blocks.0.hook_resid_pre/, blocks.1.hook_resid_pre/, layer_3/")]
    [InlineData("../escape", "not a path inside a repository")]
    [InlineData("a//b", "not a path inside a repository")]
    public async Task A_missing_or_unsafe_path_is_refused_by_name(string path, string expected)
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SaeRepo());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        var e = await Assert.ThrowsAsync<InputError>(() => client.ResolvePathAsync(Repo, path));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public async Task A_missing_repository_or_revision_is_refused_by_name()
    {
        using var hub = new FakeHub();
        hub.AddRepo(Repo, SaeRepo());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        var e = await Assert.ThrowsAsync<InputError>(() => client.ResolvePathAsync("sae-org/nothing-here", "x"));
        Assert.Contains("no repository 'sae-org/nothing-here'", e.Message);
        e = await Assert.ThrowsAsync<InputError>(() => client.ResolvePathAsync(Repo, "x", "v9"));
        Assert.Contains("revision 'v9' does not exist", e.Message);
    }
    [Fact]
    public async Task Several_files_are_fetched_with_one_listing_and_one_announcement_and_served_offline_after()
    {
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, SaeRepo());
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        var announced = new List<HubPathListing>();
        string[] wanted = ["layer_3/width_16k/params.npz", "blocks.1.hook_resid_pre/cfg.json", "blocks.0.hook_resid_pre/sae_weights.safetensors"];

        var local = await client.ResolveFilesAsync(Repo, wanted, planned: announced.Add);

        string snapshot = Path.Combine(cache.Path, "models--sae-org--gpt2-saes", "snapshots", commit);
        Assert.Equal(wanted.Select(w => Path.Combine(snapshot, w)), local);
        for (int i = 0; i < wanted.Length; i++) Assert.Equal(SaeRepo()[wanted[i]], File.ReadAllBytes(local[i]));
        Assert.Single(announced);
        Assert.Equal(wanted.Sum(w => (long)SaeRepo()[w].Length), announced[0].Bytes);
        Assert.Equal(1, hub.Count("GET", "/api/models/"));
        Assert.False(File.Exists(Path.Combine(snapshot, "blocks.1.hook_resid_pre", "sae_weights.safetensors"))); // only what was named

        using var offline = Client(hub.Endpoint, cache, offline: true);
        Assert.Equal(local, await offline.ResolveFilesAsync(Repo, wanted));
        var e = await Assert.ThrowsAsync<InputError>(() => offline.ResolveFilesAsync(Repo, [.. wanted, "blocks.1.hook_resid_pre/sae_weights.safetensors"]));
        Assert.Contains("blocks.1.hook_resid_pre/sae_weights.safetensors", e.Message);
        e = await Assert.ThrowsAsync<InputError>(() => client.ResolveFilesAsync(Repo, ["layer_9/params.npz"]));
        Assert.Contains("has no file or folder 'layer_9/params.npz'", e.Message);
        e = await Assert.ThrowsAsync<InputError>(() => client.ResolveFilesAsync(Repo, ["blocks.1.hook_resid_pre/optimizer.pt"]));
        Assert.Contains("a pickle Loupe does not read", e.Message);
    }

    [Fact]
    public async Task A_folder_of_a_space_is_fetched_into_the_spaces_cache_as_huggingface_hub_lays_it_out()
    {
        // tuned-lens's pretrained lenses live in a space: lens/{model}/params.pt + config.json.
        using var hub = new FakeHub();
        string lens = SharedData.TestData("pytorch/tuned-lens");
        string commit = hub.AddRepo("spaces/AlignmentResearch/tuned-lens", new Dictionary<string, byte[]>
        {
            ["app.py"] = Bytes("import gradio"),
            ["lens/gpt2/params.pt"] = File.ReadAllBytes(Path.Combine(lens, "params.pt")),
            ["lens/gpt2/config.json"] = File.ReadAllBytes(Path.Combine(lens, "config.json")),
        });
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        string folder = await client.ResolvePathAsync("spaces/AlignmentResearch/tuned-lens", "lens/gpt2");
        Assert.Equal(Path.Combine(cache.Path, "spaces--AlignmentResearch--tuned-lens", "snapshots", commit, "lens", "gpt2"), folder);
        Assert.Equal(["config.json", "params.pt"], Directory.GetFiles(folder).Select(Path.GetFileName).Order());
        Assert.Equal(1, hub.Count("GET", "/api/spaces/AlignmentResearch/tuned-lens/revision/main"));
        using (var f = SafeTensorsFile.Open(Path.Combine(folder, "params.pt"))) Assert.Equal(4, f.Names.Count);

        using var offline = Client(hub.Endpoint, cache, offline: true);
        Assert.Equal(folder, await offline.ResolvePathAsync("spaces/AlignmentResearch/tuned-lens", "lens/gpt2"));
        Assert.False(HubClient.IsValidRepoId("spaces/AlignmentResearch/tuned-lens")); // not a model id
        Assert.True(HubClient.IsValidRepoPathId("spaces/AlignmentResearch/tuned-lens"));
        Assert.False(HubClient.IsValidRepoPathId("spaces/tuned-lens"));
    }

    [Fact]
    public async Task A_dictionary_learning_trainer_folder_brings_its_ae_pt_and_leaves_other_pickles()
    {
        using var hub = new FakeHub();
        string commit = hub.AddRepo("sae-org/saebench", new Dictionary<string, byte[]>
        {
            ["topk/resid_post_layer_3/trainer_0/ae.pt"] = Bytes("PK torch.save zip"),
            ["topk/resid_post_layer_3/trainer_0/config.json"] = Bytes("{\"trainer\": {}}"),
            ["topk/resid_post_layer_3/trainer_0/optimizer.pt"] = Bytes("a pickle"),
            ["topk/resid_post_layer_3/trainer_0/checkpoint.ckpt"] = Bytes("a pickle"),
        });
        using var cache = new TempDir();
        using var client = Client(hub.Endpoint, cache);
        string folder = await client.ResolvePathAsync("sae-org/saebench", "topk/resid_post_layer_3/trainer_0");
        Assert.Equal(["ae.pt", "config.json"], Directory.GetFiles(folder).Select(Path.GetFileName).Order());
        Assert.Equal(0, hub.Count("GET", "optimizer.pt"));
    }
}
