using System.Diagnostics;
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Harvest;

public sealed class Stories260KHarvestTests(ITestOutputHelper output) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-harvest-260k-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static HookedTransformer Load() => ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));

    [RequiresSharedFact("models/stories260K")]
    public void ModelSamples_AreSeededText()
    {
        using var model = Load();
        var source = new ModelSampledSource(model, count: 3, maxNewTokens: 24, seed: 5);
        var a = source.Documents().ToList();
        Assert.Equal(a, source.Documents().ToList());
        Assert.Equal(3, a.Count);
        Assert.All(a, d => Assert.True(d.Trim().Length > 0));
        Assert.NotEqual(a, new ModelSampledSource(model, 3, 24, seed: 6).Documents().ToList());
        output.WriteLine(a[0]);
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void BrownHarvest_RoundTripsThroughTheStore_AndReportsThroughput()
    {
        using var model = Load();
        var tokenizer = model.Tokenizer!;
        var contexts = ContextBuilder.ForModel(model, new BrownCorpusSource(SharedData.Require("datasets/brown-corpus")), contextSize: 128, seed: 0, maxContexts: 64);
        Assert.Equal(64, contexts.Count);
        Assert.All(contexts.Contexts, c => Assert.Equal(1, c[0]));
        Assert.Contains(contexts.Contexts, c => c.Skip(1).Contains(2)); // EOS separates documents
        const string hook = "blocks.2.hook_resid_post";

        // Plain forward over the same batches, for comparison: full logits, and last-position logits
        // only (what the harvester asks for). One warm-up batch first so JIT time is not counted.
        TokenBatch Batch(int c) => new(contexts.Contexts.Skip(c).Take(16).SelectMany(x => x).ToArray(), 16, 128);
        model.Run(Batch(0));
        double Rate(RunOptions? o)
        {
            var clock = Stopwatch.StartNew();
            for (int c = 0; c < contexts.Count; c += 16) model.Run(Batch(c), o);
            return contexts.Count * 128 / clock.Elapsed.TotalSeconds;
        }
        double plainRate = Rate(null), lastOnlyRate = Rate(new RunOptions { LastPositionLogitsOnly = true });

        double lastRate = 0;
        var harvest = Stopwatch.StartNew();
        var m = Harvester.Run(model, contexts, _dir, new HarvestOptions([hook], BatchSize: 16, ShardTokens: 16 * 127, SkipBos: true),
            new SyncProgress<HarvestProgress>(p => lastRate = p.TokensPerSecond));
        double harvestRate = m.TotalTokens / harvest.Elapsed.TotalSeconds;
        double lastOnlyAfter = Rate(new RunOptions { LastPositionLogitsOnly = true }); // tiered JIT warms up as the test runs
        output.WriteLine($"plain forward: {plainRate:F0} tokens/s (last-position logits only: {lastOnlyRate:F0} before, {lastOnlyAfter:F0} after the harvest); harvest ({hook}, write included): {harvestRate:F0} tokens/s (progress said {lastRate:F0})");

        Assert.Equal(64L * 127, m.TotalTokens);
        Assert.Equal(4, m.Shards.Count);
        Assert.StartsWith("Brown corpus", m.Source);
        var store = ActivationStore.Open(_dir);
        store.Validate();
        Assert.Equal(64, store.D(hook));
        Assert.Equal(m.TotalTokens, store.Batches(hook, 256, seed: 0).Sum(b => b.Length / 64));
        // Token ids decode back to Brown text.
        var ids = store.ReadTokenIds(0).Take(20).Select(x => (int)x).ToArray();
        output.WriteLine(tokenizer.Decode(ids));
    }
}
