using System.Text.Json.Nodes;
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Harvest;

/// <summary>One small harvest (several shards of 22 rows, d = 64) that each test copies and damages.</summary>
public sealed class SmallHarvest : IDisposable
{
    public const string Resid = "blocks.1.hook_resid_post";

    readonly string _root = Directory.CreateTempSubdirectory("loupe-manifest-src-").FullName;

    public SmallHarvest()
    {
        Model = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        Folder = Path.Combine(_root, "acts");
        var rng = new Random(3);
        var docs = Enumerable.Range(0, 12).Select(_ => Enumerable.Range(0, rng.Next(3, 20)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        var contexts = ContextBuilder.Build(docs, new ContextOptions(12, BosTokenId: 1, SeparatorTokenId: 2, Seed: 7), "random ids");
        Harvester.Run(Model, contexts, Folder, new HarvestOptions([Resid], ShardTokens: 22));
    }

    public HookedTransformer Model { get; }
    public string Folder { get; }

    public void Dispose() => Directory.Delete(_root, recursive: true);
}

/// <summary>Damaged harvest manifests and shards are refused with an <see cref="InputError"/> naming the file and the field or tensor.</summary>
public sealed class HarvestManifestTests(SmallHarvest harvest) : IClassFixture<SmallHarvest>, IDisposable
{
    const string Resid = SmallHarvest.Resid;

    readonly string _dir = Directory.CreateTempSubdirectory("loupe-manifest-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A copy of the harvest with its manifest changed by <paramref name="damage"/>.</summary>
    string Damaged(string name, Action<JsonObject> damage)
    {
        string folder = Path.Combine(_dir, name);
        Directory.CreateDirectory(folder);
        foreach (var f in Directory.GetFiles(harvest.Folder).Where(f => !OutputLock.IsLockFile(f)))
            File.Copy(f, Path.Combine(folder, Path.GetFileName(f)));
        string manifest = Path.Combine(folder, HarvestManifest.FileName);
        var json = JsonNode.Parse(File.ReadAllText(manifest))!.AsObject();
        damage(json);
        File.WriteAllText(manifest, json.ToJsonString());
        return folder;
    }

    static InputError Refused(string folder, params string[] mentions)
    {
        var e = Assert.Throws<InputError>(() => ActivationStore.Open(folder));
        Assert.DoesNotContain('\n', e.Message);
        foreach (var m in mentions) Assert.Contains(m, e.Message);
        return e;
    }

    static JsonObject Shard(JsonObject m, int k) => m["shards"]![k]!.AsObject();

    [Fact]
    public void TheUndamagedHarvestOpens()
    {
        var store = ActivationStore.Open(Damaged("ok", _ => { }));
        Assert.True(store.Manifest.Shards.Count >= 3);
        store.Validate();
    }

    [Fact]
    public void NullsWrongTypesAndMissingFields_NameTheField()
    {
        Refused(Damaged("hooks-null", m => m["hooks"] = null), "manifest.json", "hooks", "found null");
        Refused(Damaged("shard-null", m => m["shards"] = new JsonArray((JsonNode?)null)), "manifest.json", "shards[0]", "a JSON object");
        Refused(Damaged("no-total", m => m.Remove("total_tokens")), "manifest.json", "total_tokens", "missing");
        Refused(Damaged("no-file", m => Shard(m, 1).Remove("file")), "shards[1].file", "missing");
        Refused(Damaged("string-size", m => m["context_size"] = "12"), "context_size", "expected a 32-bit integer", "\"12\"");
        Refused(Damaged("fraction", m => Shard(m, 0)["tokens"] = 2.5), "shards[0].tokens", "64-bit integer", "2.5");
        Refused(Damaged("huge-int", m => m["contexts_per_shard"] = 1e30), "contexts_per_shard", "32-bit integer");
        Refused(Damaged("hooks-number", m => m["hooks"] = new JsonArray(3)), "hooks[0]", "a string");
        Refused(Damaged("d-string", m => m["d_model_by_hook"]![Resid] = "64"), $"d_model_by_hook.{Resid}", "32-bit integer");
        Refused(Damaged("skip-bool", m => m["skip_bos"] = "yes"), "skip_bos", "true or false");
        Refused(Damaged("version", m => m["format_version"] = 3), "format_version", "expected 1 to 2, found 3");
        Refused(Damaged("dtype", m => m["dtype"] = "float16"), "dtype", "float32");
    }

    [Fact]
    public void MalformedJsonOrANonObjectRoot_NameTheFile()
    {
        string folder = Damaged("malformed", _ => { });
        string manifest = Path.Combine(folder, HarvestManifest.FileName);
        File.WriteAllText(manifest, "{\"format_version\": 1,");
        Refused(folder, manifest, "expected valid JSON");
        File.WriteAllText(manifest, "[]");
        Refused(folder, manifest, "a JSON object", "array");
        File.WriteAllText(manifest, "null");
        Refused(folder, manifest, "a JSON object");
        File.WriteAllText(manifest, new string('[', 10_000) + new string(']', 10_000)); // deep nesting: refused, no stack overflow
        Refused(folder, manifest);
    }

    [Fact]
    public void CountsNearLongMaxValue_NegativeOrInconsistent_AreRefused()
    {
        Refused(Damaged("total-max", m => m["total_tokens"] = long.MaxValue), "total_tokens", "the sum over shards");
        Refused(Damaged("tokens-max", m => { Shard(m, 0)["tokens"] = long.MaxValue; Shard(m, 1)["tokens"] = long.MaxValue; }), "shards[0].tokens", "9223372036854775807");
        Refused(Damaged("total-neg", m => m["total_tokens"] = -5), "total_tokens", "-5");
        Refused(Damaged("tokens-neg", m => Shard(m, 0)["tokens"] = -22), "shards[0].tokens", "-22");
        Refused(Damaged("first", m => Shard(m, 1)["first_context"] = 0), "shards[1].first_context");
        Refused(Damaged("contexts", m => Shard(m, 1)["contexts"] = 7), "shards[1].contexts");
        Refused(Damaged("zero-cps", m => m["contexts_per_shard"] = 0), "contexts_per_shard", "found 0");
        Refused(Damaged("context-size", m => m["context_size"] = 1), "context_size");
        Refused(Damaged("total-contexts", m => m["total_contexts"] = 1), "shards", "at most 1 shards");
        Refused(Damaged("d-zero", m => m["d_model_by_hook"]![Resid] = 0), $"d_model_by_hook.{Resid}", "found 0");
        Refused(Damaged("d-missing", m => m["d_model_by_hook"] = new JsonObject()), $"d_model_by_hook.{Resid}", "missing");
        Refused(Damaged("complete-short", m => m["shards"]!.AsArray().RemoveAt(m["shards"]!.AsArray().Count - 1)), "shards", "complete harvest");
    }

    [Fact]
    public void AManifestListingShardsManyTimes_IsRefused()
    {
        Refused(Damaged("repeated", m =>
        {
            var shards = m["shards"]!.AsArray();
            var copies = Enumerable.Range(0, 200).SelectMany(_ => shards.Select(s => s!.DeepClone())).ToArray();
            m["shards"] = new JsonArray(copies);
            m["total_tokens"] = copies.Sum(s => (long)s!["tokens"]!);
        }), "manifest.json", "shards");
        // The same file under a second entry, every count otherwise consistent.
        Refused(Damaged("same-file", m => Shard(m, 1)["file"] = Shard(m, 0)["file"]!.GetValue<string>()), "shards[1].file", "listed once", "shards[0]");
        Refused(Damaged("same-file-dotted", m => Shard(m, 1)["file"] = "./" + Shard(m, 0)["file"]!.GetValue<string>()), "shards[1].file", "listed once");
    }

    [Fact]
    public void ShardFilesOutsideTheFolder_AreRefused()
    {
        Refused(Damaged("absolute", m => Shard(m, 0)["file"] = "/etc/passwd"), "shards[0].file", "/etc/passwd", "relative path");
        Refused(Damaged("climbing", m => Shard(m, 0)["file"] = "../ok/shard-00000.safetensors"), "shards[0].file", "..");
        Refused(Damaged("empty", m => Shard(m, 0)["file"] = ""), "shards[0].file");

        // A symbolic link inside the folder that points outside it.
        string outside = Path.Combine(_dir, "elsewhere.safetensors");
        File.Copy(Path.Combine(harvest.Folder, "shard-00000.safetensors"), outside);
        string folder = Damaged("linked", m => Shard(m, 0)["file"] = "link.safetensors");
        File.CreateSymbolicLink(Path.Combine(folder, "link.safetensors"), outside);
        Refused(folder, "shards[0].file", "resolves to", "elsewhere.safetensors");

        // A link to a file inside the folder is fine.
        string inside = Damaged("linked-inside", m => Shard(m, 0)["file"] = "link.safetensors");
        File.Move(Path.Combine(inside, "shard-00000.safetensors"), Path.Combine(inside, "real.safetensors"));
        File.CreateSymbolicLink(Path.Combine(inside, "link.safetensors"), "real.safetensors");
        ActivationStore.Open(inside).Validate();
    }

    [Fact]
    public void ShardTensorsThatDisagreeWithTheManifest_NameTheShardAndTensor()
    {
        // d in the manifest differs from the shard's tensors.
        Refused(Damaged("d-mismatch", m => m["d_model_by_hook"]![Resid] = 65), "shard-00000.safetensors", Resid, "[22, 65]", "[22, 64]");

        string folder = Damaged("dtype", _ => { });
        string shard = Path.Combine(folder, "shard-00001.safetensors");
        float[] rows;
        long[] ids;
        using (var f = SafeTensorsFile.Open(shard)) { rows = f.GetFloat32(Resid).ToArray(); ids = f.GetInt64(HarvestManifest.TokenIdsTensor); }
        SafeTensorsWriter.Write(shard, [SafeTensorEntry.F32(Resid, [rows.Length / 64, 64], rows), SafeTensorEntry.F32(HarvestManifest.TokenIdsTensor, [ids.Length], ids.Select(i => (float)i).ToArray())]);
        Refused(folder, "shard-00001.safetensors", HarvestManifest.TokenIdsTensor, "I64");

        SafeTensorsWriter.Write(shard, [SafeTensorEntry.F32(Resid, [rows.Length / 64, 64], rows)]);
        Refused(folder, "shard-00001.safetensors", HarvestManifest.TokenIdsTensor, "missing");

        rows[3 * 64 + 1] = float.PositiveInfinity;
        SafeTensorsWriter.Write(shard, [SafeTensorEntry.F32(Resid, [rows.Length / 64, 64], rows), SafeTensorEntry.I64(HarvestManifest.TokenIdsTensor, [ids.Length], ids)]);
        var store = ActivationStore.Open(folder);
        var e = Assert.Throws<InputError>(store.Validate);
        Assert.Contains("shard-00001.safetensors", e.Message);
        Assert.Contains("+∞ at row 3", e.Message);
        Assert.Throws<InputError>(() => store.D("blocks.0.hook_resid_post"));
    }

    /// <summary>Makes a named pipe with the system's mkfifo; false where there is none.</summary>
    internal static bool MakeFifo(string path)
    {
        if (OperatingSystem.IsWindows()) return false;
        try
        {
            using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("mkfifo", [path]) { RedirectStandardError = true });
            p!.WaitForExit();
            return p.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception) { return false; }
    }

    [Fact]
    public void APipeInPlaceOfTheManifestOrAShard_IsRefusedWithoutBlocking()
    {
        string folder = Damaged("fifo-manifest", _ => { });
        string manifest = Path.Combine(folder, HarvestManifest.FileName);
        File.Delete(manifest);
        if (!MakeFifo(manifest)) return;
        Refused(folder, manifest, "a regular file", "pipe");

        string shards = Damaged("fifo-shard", _ => { });
        string shard = Path.Combine(shards, "shard-00002.safetensors");
        File.Delete(shard);
        Assert.True(MakeFifo(shard));
        Refused(shards, shard, "a regular file");
    }

    [Fact]
    public void ResumingOverADamagedManifest_IsAnInputError()
    {
        string folder = Damaged("resume", m => m["hooks"] = null);
        var contexts = ContextBuilder.Build([Enumerable.Range(3, 40).ToArray()], new ContextOptions(12, BosTokenId: 1, SeparatorTokenId: 2), "ids");
        var e = Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, folder, new HarvestOptions([Resid], ShardTokens: 22)));
        Assert.Contains("hooks", e.Message);
    }

    [Fact]
    public void ASecondHarvestIntoALockedFolder_NamesTheOtherProcess()
    {
        string folder = Path.Combine(_dir, "locked");
        var contexts = ContextBuilder.Build([Enumerable.Range(3, 40).ToArray()], new ContextOptions(12, BosTokenId: 1, SeparatorTokenId: 2), "ids");
        using (OutputLock.Acquire(folder, "loupe harvest"))
        {
            var e = Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, folder, new HarvestOptions([Resid], ShardTokens: 22)));
            Assert.Contains($"pid {Environment.ProcessId}", e.Message);
            Assert.Contains("in use", e.Message);
            Assert.False(File.Exists(Path.Combine(folder, HarvestManifest.FileName)));
        }
        // Released: the harvest runs, and a second run over the complete folder changes nothing.
        Harvester.Run(harvest.Model, contexts, folder, new HarvestOptions([Resid], ShardTokens: 22));
        Assert.Empty(Directory.GetFiles(folder, "*.tmp-*"));
        Assert.True(ActivationStore.Open(folder).Manifest.Complete);
    }

    [Fact]
    public void OutputsThatAreNotFoldersOrRegularFiles_AreRefused()
    {
        var contexts = ContextBuilder.Build([Enumerable.Range(3, 40).ToArray()], new ContextOptions(12, BosTokenId: 1, SeparatorTokenId: 2), "ids");
        string file = Path.Combine(_dir, "a-file");
        File.WriteAllText(file, "keep");
        var e = Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, file, new HarvestOptions([Resid])));
        Assert.Contains("not a folder", e.Message);
        Assert.Equal("keep", File.ReadAllText(file));
        if (!OperatingSystem.IsWindows())
            Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, "/dev/null", new HarvestOptions([Resid])));

        // A folder where the manifest or a shard would go.
        string blocked = Path.Combine(_dir, "blocked");
        Directory.CreateDirectory(Path.Combine(blocked, HarvestManifest.FileName));
        Assert.Contains("is a folder", Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, blocked, new HarvestOptions([Resid]))).Message);
        string target = Path.Combine(_dir, "shard-as-folder.safetensors");
        Directory.CreateDirectory(target);
        Assert.Throws<InputError>(() => SafeTensorsWriter.Write(target, [SafeTensorEntry.I64("x", [1], new long[] { 1 })]));
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp-*"));
    }

    [Fact]
    public void HarvestArguments_AreInputErrors()
    {
        var contexts = ContextBuilder.Build([Enumerable.Range(3, 40).ToArray()], new ContextOptions(12, BosTokenId: 1, SeparatorTokenId: 2), "ids");
        Assert.Contains("batch size", Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, Path.Combine(_dir, "x"), new HarvestOptions([Resid], BatchSize: 0))).Message);
        Assert.Contains("shard tokens", Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, Path.Combine(_dir, "x"), new HarvestOptions([Resid], ShardTokens: -1))).Message);
        Assert.Contains("each hook once", Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, Path.Combine(_dir, "x"), new HarvestOptions([Resid, Resid]))).Message);
        Assert.Throws<InputError>(() => Harvester.Run(harvest.Model, contexts, Path.Combine(_dir, "x"), new HarvestOptions([])));
        Assert.Contains("max contexts", Assert.Throws<InputError>(() => ContextBuilder.Build([[5, 6, 7]], new ContextOptions(2, 1, 2, MaxContexts: 0), "t")).Message);
    }
}
