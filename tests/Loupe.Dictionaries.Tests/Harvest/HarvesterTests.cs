using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Harvest;

/// <summary>An <see cref="IProgress{T}"/> that reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

public sealed class HarvesterTests : IDisposable
{
    const string Resid = "blocks.1.hook_resid_post";
    const string Normalized = "blocks.1.ln2.hook_normalized";
    const string MlpOut = "blocks.1.hook_mlp_out";

    readonly string _dir = Directory.CreateTempSubdirectory("loupe-harvest-").FullName;
    static readonly Lazy<HookedTransformer> s_model = new(() => ModelLoader.LoadFolder(SharedData.TestData("reference/llama")));

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static HarvestContexts Contexts(int documents = 40, int contextSize = 12, int seed = 7)
    {
        var rng = new Random(11);
        var docs = Enumerable.Range(0, documents).Select(_ => Enumerable.Range(0, rng.Next(3, 20)).Select(_ => rng.Next(3, 512)).ToArray());
        return ContextBuilder.Build(docs.ToArray(), new ContextOptions(contextSize, BosTokenId: 1, SeparatorTokenId: 2, Seed: seed), "random ids");
    }

    string Folder(string name) => Path.Combine(_dir, name);

    [Fact]
    public void Harvest_ShardsHoldExactlyTheCachedActivations()
    {
        var model = s_model.Value;
        var contexts = Contexts();
        var options = new HarvestOptions([Normalized, MlpOut], BatchSize: 3, ShardTokens: 44, SkipBos: true);
        var manifest = Harvester.Run(model, contexts, Folder("h"), options);

        Assert.True(manifest.Complete);
        Assert.Equal(4, manifest.ContextsPerShard); // 44 rows / 11 per context
        Assert.Equal((long)contexts.Count * 11, manifest.TotalTokens);
        Assert.Equal((contexts.Count + 3) / 4, manifest.Shards.Count);
        Assert.Equal(64, manifest.DModelByHook[MlpOut]);
        Assert.True(File.Exists(Path.Combine(Folder("h"), "shard-00000.safetensors")));

        // Context 5 is shard 1, local context 1: rows 11..21 of that shard.
        var direct = model.Run(TokenBatch.Single(contexts.Contexts[5]), new RunOptions { CacheFilter = n => n is Normalized or MlpOut });
        using var shard = SafeTensorsFile.Open(Path.Combine(Folder("h"), "shard-00001.safetensors"));
        foreach (var hook in new[] { Normalized, MlpOut })
        {
            var rows = shard.GetFloat32(hook).Span.Slice(11 * 64, 11 * 64);
            var expected = direct.Cache[hook].Span.Slice(64, 11 * 64); // positions 1..11 (BOS skipped)
            for (int i = 0; i < rows.Length; i++) Assert.Equal(expected[i], rows[i], 1e-5f);
        }
        var ids = shard.GetInt64(HarvestManifest.TokenIdsTensor);
        Assert.Equal(contexts.Contexts[5].Skip(1).Select(t => (long)t), ids.Skip(11).Take(11));

        var reread = HarvestManifest.Load(Folder("h"));
        Assert.Equal(manifest.ContextsSha256, reread.ContextsSha256);
        Assert.Contains("\"d_model_by_hook\"", File.ReadAllText(Path.Combine(Folder("h"), "manifest.json")));
    }

    [Fact]
    public void A_format_one_harvest_offers_ln2_as_the_mlp_input_it_held_and_refuses_other_norm_hooks_by_name()
    {
        // Format 1 was written while Loupe's RMSNorm hook_normalized was after the weight: ln2's values are mlp.hook_in's.
        var model = s_model.Value;
        var contexts = Contexts(documents: 8);
        Harvester.Run(model, contexts, Folder("v1"), new HarvestOptions([Normalized, "blocks.0.ln1.hook_normalized", MlpOut], ShardTokens: 44));
        string manifest = Path.Combine(Folder("v1"), HarvestManifest.FileName);
        Assert.Contains("\"format_version\": 2", File.ReadAllText(manifest));
        File.WriteAllText(manifest, File.ReadAllText(manifest).Replace("\"format_version\": 2", "\"format_version\": 1"));
        var store = ActivationStore.Open(Folder("v1"));
        Assert.Equal(["blocks.1.mlp.hook_in", MlpOut], store.Hooks);
        var stored = ActivationStore.Open(Folder("v1")).Manifest;
        Assert.Equal(64, store.D("blocks.1.mlp.hook_in"));
        using (var file = SafeTensorsFile.Open(Path.Combine(Folder("v1"), stored.Shards[0].File)))
            Assert.Equal(file.GetFloat32(Normalized).ToArray(), store.ReadShard(0, "blocks.1.mlp.hook_in"));
        var e = Assert.Throws<InputError>(() => store.D("blocks.0.ln1.hook_normalized"));
        Assert.Contains("format_version 1", e.Message);
        Assert.Contains("Harvest again", e.Message);
        Assert.Contains("format_version 1", Assert.Throws<InputError>(() => new Loupe.Dictionaries.Sae.StoreRows(store, Normalized, MlpOut)).Message);
    }

    [Fact]
    public void Harvest_KeepsBosWhenAsked_AndRejectsUnknownHook()
    {
        var contexts = Contexts(documents: 10);
        var m = Harvester.Run(s_model.Value, contexts, Folder("bos"), new HarvestOptions([Resid], ShardTokens: 1000, SkipBos: false));
        Assert.Equal((long)contexts.Count * 12, m.TotalTokens);
        using var shard = SafeTensorsFile.Open(Path.Combine(Folder("bos"), m.Shards[0].File));
        Assert.Equal(1L, shard.GetInt64(HarvestManifest.TokenIdsTensor)[0]);

        var e = Assert.Throws<InputError>(() => Harvester.Run(s_model.Value, contexts, Folder("bad"), new HarvestOptions(["blocks.1.hook_resid_pots"])));
        Assert.Contains("blocks.1.hook_resid_pots", e.Message);
        var pattern = Assert.Throws<InputError>(() => Harvester.Run(s_model.Value, contexts, Folder("bad"), new HarvestOptions(["blocks.0.attn.hook_pattern"])));
        Assert.Contains("per-position", pattern.Message);
    }

    [Fact]
    public void Harvest_CancelledThenResumed_IsByteIdenticalToUninterrupted()
    {
        var model = s_model.Value;
        var contexts = Contexts();
        var options = new HarvestOptions([Normalized, MlpOut], BatchSize: 2, ShardTokens: 33, SkipBos: true);
        Harvester.Run(model, contexts, Folder("full"), options);

        using var cts = new CancellationTokenSource();
        var progress = new SyncProgress<HarvestProgress>(p => { if (p.ShardsDone == 3) cts.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() => Harvester.Run(model, contexts, Folder("resumed"), options, progress, cts.Token));
        var partial = HarvestManifest.Load(Folder("resumed"));
        Assert.Equal(3, partial.Shards.Count);
        Assert.False(partial.Complete);
        Assert.Throws<InputError>(() => ActivationStore.Open(Folder("resumed")));

        // A stray temp file from a killed write is removed on resume.
        File.WriteAllText(Path.Combine(Folder("resumed"), "shard-00003.safetensors.tmp-dead0000"), "partial");
        var reports = new List<HarvestProgress>();
        var final = Harvester.Run(model, contexts, Folder("resumed"), options, new SyncProgress<HarvestProgress>(reports.Add));
        Assert.True(final.Complete);
        Assert.Equal(3, reports[0].ShardsDone);
        Assert.All(reports, r => Assert.True(r.TokensPerSecond > 0));

        var a = Directory.GetFiles(Folder("full")).Where(f => !OutputLock.IsLockFile(f)).Select(Path.GetFileName).Order().ToArray();
        var b = Directory.GetFiles(Folder("resumed")).Where(f => !OutputLock.IsLockFile(f)).Select(Path.GetFileName).Order().ToArray();
        Assert.Equal(a, b);
        foreach (var f in a) Assert.Equal(File.ReadAllBytes(Path.Combine(Folder("full"), f!)), File.ReadAllBytes(Path.Combine(Folder("resumed"), f!)));

        // Running again on a complete folder changes nothing.
        Harvester.Run(model, contexts, Folder("resumed"), options);
        Assert.Equal(File.ReadAllBytes(Path.Combine(Folder("full"), "manifest.json")), File.ReadAllBytes(Path.Combine(Folder("resumed"), "manifest.json")));
    }

    [Fact]
    public void Harvest_EstimatesItsShards_AndRefusesADiskWithoutRoomForWhatIsLeft()
    {
        var model = s_model.Value;
        var contexts = Contexts();
        var options = new HarvestOptions([Normalized, MlpOut], BatchSize: 2, ShardTokens: 33, SkipBos: true);
        const long perToken = 4 * (64 + 64) + 8; // two d_model rows as float32 and the token id
        long estimate = Harvester.EstimateBytes(model, contexts, options)!.Value;
        Assert.Equal(contexts.Count * 11L * perToken, estimate);
        var manifest = Harvester.Run(model, contexts, Folder("full"), options);
        long written = manifest.Shards.Sum(s => new FileInfo(Path.Combine(Folder("full"), s.File)).Length);
        Assert.InRange(written - estimate, 0, manifest.Shards.Count * 1024L); // the safetensors headers only

        // Too little room: refused before the first forward pass, naming the folder, the need and the free space.
        var e = Assert.Throws<InputError>(() => Harvester.Run(model, contexts, Folder("small"), options with { FreeSpace = _ => estimate - 1 }));
        Assert.Contains(Folder("small"), e.Message);
        Assert.Contains("needs ≈", e.Message);
        Assert.Contains("free", e.Message);
        Assert.DoesNotContain(Directory.GetFiles(Folder("small")), f => !OutputLock.IsLockFile(f));

        // A resumed harvest needs room only for the shards it has left.
        using (var cts = new CancellationTokenSource())
        {
            var progress = new SyncProgress<HarvestProgress>(p => { if (p.ShardsDone == 3) cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() => Harvester.Run(model, contexts, Folder("resumed"), options, progress, cts.Token));
        }
        long left = (manifest.TotalTokens - HarvestManifest.Load(Folder("resumed")).TotalTokens) * perToken;
        Assert.Throws<InputError>(() => Harvester.Run(model, contexts, Folder("resumed"), options with { FreeSpace = _ => left - 1 }));
        Assert.True(Harvester.Run(model, contexts, Folder("resumed"), options with { FreeSpace = _ => left }).Complete);
        Assert.True(Harvester.FreeBytes(Folder("resumed")) > 0);
        Assert.True(Harvester.FreeBytes(Path.Combine(Folder("not-yet"), "deeper")) > 0); // the nearest existing folder's disk
    }

    [Fact]
    public void Harvest_ResumeWithDifferentSettings_IsAClearError()
    {
        var contexts = Contexts(documents: 10);
        Harvester.Run(s_model.Value, contexts, Folder("m"), new HarvestOptions([Resid], ShardTokens: 22));
        var e = Assert.Throws<InputError>(() => Harvester.Run(s_model.Value, contexts, Folder("m"), new HarvestOptions([Resid], ShardTokens: 44)));
        Assert.Contains("contexts_per_shard", e.Message);
        var e2 = Assert.Throws<InputError>(() => Harvester.Run(s_model.Value, Contexts(documents: 10, seed: 8), Folder("m"), new HarvestOptions([Resid], ShardTokens: 22)));
        Assert.Contains("contexts_sha256", e2.Message);
    }

    [Fact]
    public void Store_BatchesCoverEveryRowOnce_AndAreSeeded()
    {
        var contexts = Contexts();
        var m = Harvester.Run(s_model.Value, contexts, Folder("s"), new HarvestOptions([Resid], BatchSize: 4, ShardTokens: 55));
        var store = ActivationStore.Open(Folder("s"));
        Assert.Equal(64, store.D(Resid));
        store.Validate();

        var batches = store.Batches(Resid, batchSize: 16, seed: 1, shardsInBuffer: 2).ToList();
        Assert.All(batches.SkipLast(1), b => Assert.Equal(16 * 64, b.Length));
        var seen = batches.SelectMany(b => b.Chunk(64)).Select(r => string.Join(",", r)).Order().ToList();
        var all = Enumerable.Range(0, m.Shards.Count).SelectMany(s => store.ReadShard(s, Resid).Chunk(64)).Select(r => string.Join(",", r)).Order().ToList();
        Assert.Equal(all, seen);

        var again = store.Batches(Resid, 16, seed: 1, shardsInBuffer: 2).ToList();
        Assert.Equal(batches[0], again[0]);
        Assert.NotEqual(batches[0], store.Batches(Resid, 16, seed: 2, shardsInBuffer: 2).First());
        Assert.Equal(m.TotalTokens / 16, store.Batches(Resid, 16, seed: 1, dropLast: true).Count());
    }

    [Fact]
    public void Store_TruncatedOrMissingShard_NamesTheFile()
    {
        Harvester.Run(s_model.Value, Contexts(documents: 10), Folder("t"), new HarvestOptions([Resid], ShardTokens: 22));
        string shard = Path.Combine(Folder("t"), "shard-00001.safetensors");
        var bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes[..(bytes.Length - 100)]);
        var e = Assert.Throws<InputError>(() => ActivationStore.Open(Folder("t")));
        Assert.Contains("shard-00001.safetensors", e.Message);

        File.Delete(shard);
        var missing = Assert.Throws<FileNotFoundException>(() => ActivationStore.Open(Folder("t")));
        Assert.Contains("shard-00001.safetensors", missing.Message);
    }

    [Fact]
    public void Store_NaN_NamesShardAndRow()
    {
        Harvester.Run(s_model.Value, Contexts(documents: 10), Folder("n"), new HarvestOptions([Resid], ShardTokens: 22));
        string shard = Path.Combine(Folder("n"), "shard-00001.safetensors");
        float[] rows;
        long[] ids;
        using (var f = SafeTensorsFile.Open(shard))
        {
            rows = f.GetFloat32(Resid).ToArray();
            ids = f.GetInt64(HarvestManifest.TokenIdsTensor);
        }
        rows[5 * 64 + 3] = float.NaN;
        SafeTensorsWriter.Write(shard, [SafeTensorEntry.F32(Resid, [rows.Length / 64, 64], rows), SafeTensorEntry.I64(HarvestManifest.TokenIdsTensor, [ids.Length], ids)]);

        var store = ActivationStore.Open(Folder("n"));
        var e = Assert.Throws<InputError>(store.Validate);
        Assert.Contains("shard-00001.safetensors", e.Message);
        Assert.Contains("row 5", e.Message);
        Assert.Throws<InputError>(() => store.Batches(Resid, 8, 0).ToList());
    }
}
