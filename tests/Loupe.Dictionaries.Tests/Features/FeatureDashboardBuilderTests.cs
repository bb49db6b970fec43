using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Microsoft.Data.Sqlite;
using static Loupe.Dictionaries.Tests.Features.FeatureFixture;

namespace Loupe.Dictionaries.Tests.Features;

/// <summary>One build over every context in a single batch — the brute force's exact computation — shared by the read-only tests.</summary>
public sealed class BuiltFeatureStore : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-features-shared-").FullName;

    public BuiltFeatureStore()
    {
        Contexts = FeatureFixture.Contexts();
        var (dict, cfg) = Dictionary();
        Path = System.IO.Path.Combine(_dir, "features.db");
        FeatureDashboardBuilder.Build(Model, dict, cfg, Contexts, Path,
            new FeatureBuildOptions { BatchSize = Contexts.Count, TopK = 6, Quantiles = 4, QuantileSamples = 3, HistogramBins = 8, Window = 3 });
        Acts = BruteForceActs(dict, Contexts);
    }

    public string Path { get; }
    public HarvestContexts Contexts { get; }
    /// <summary>Brute-force feature activations <c>[n_contexts·n, d_sae]</c>.</summary>
    public float[] Acts { get; }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}

public sealed class FeatureDashboardBuilderTests(BuiltFeatureStore built) : IClassFixture<BuiltFeatureStore>, IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-features-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string DbPath(string name = "features.db") => Path.Combine(_dir, name);

    [Fact]
    public void TopExamples_Density_MaxAndMean_MatchBruteForce()
    {
        var (path, contexts, acts) = (built.Path, built.Contexts, built.Acts);
        using var store = FeatureStore.Open(path);
        Assert.Equal(DSae, store.DSae);
        Assert.Equal((long)contexts.Count * (ContextSize - 1), store.Tokens);
        int dense = 0, rare = 0;
        for (int f = 0; f < DSae; f++)
        {
            var active = ActiveTokens(acts, contexts.Count, f);
            var s = store.Feature(f);
            Assert.Equal(active.Count, s.NActive);
            Assert.Equal((double)active.Count / store.Tokens, s.Density, 1e-12);
            if (active.Count == 0)
            {
                Assert.Null(s.MeanAct);
                Assert.Empty(store.Examples(f));
                continue;
            }
            if (s.Density > 0.2) dense++;
            if (active.Count < 20) rare++;
            Assert.Equal(active[0].Act, (float)s.MaxAct);
            Assert.Equal(active.Average(t => (double)t.Act), s.MeanAct!.Value, 1e-5);

            var top = store.Examples(f, FeatureStoreSchema.Top);
            Assert.Equal(Math.Min(6, active.Count), top.Count);
            for (int r = 0; r < top.Count; r++)
            {
                Assert.Equal(r, top[r].Rank);
                Assert.Equal((active[r].Context, active[r].Position), (top[r].ContextId, top[r].Position));
                Assert.Equal(active[r].Act, (float)top[r].Activation);
                Assert.Equal(contexts.Contexts[top[r].ContextId], top[r].ContextTokens);
                // Window: the feature's activation at each position around the example, 0 at BOS.
                int start = Math.Max(0, top[r].Position - 3), end = Math.Min(ContextSize - 1, top[r].Position + 3);
                Assert.Equal(start, top[r].WindowStart);
                Assert.Equal(end - start + 1, top[r].WindowActs.Length);
                for (int p = start; p <= end; p++)
                    Assert.Equal(p == 0 ? 0f : acts[(top[r].ContextId * ContextSize + p) * DSae + f], top[r].WindowActs[p - start]);
            }
        }
        Assert.Equal(0, store.Feature(Dead).NActive);
        Assert.Equal(1, store.DeadFeatures());
        Assert.True(dense > 0 && rare > 0, $"fixture should span dense and rare features ({dense} dense, {rare} rare)");
    }

    [Fact]
    public void Histograms_CountEveryActiveTokenInItsBin()
    {
        var (path, contexts, acts) = (built.Path, built.Contexts, built.Acts);
        using var store = FeatureStore.Open(path);
        for (int f = 0; f < DSae; f++)
        {
            var active = ActiveTokens(acts, contexts.Count, f);
            var h = store.Histogram(f);
            if (active.Count == 0)
            {
                Assert.Null(h);
                continue;
            }
            Assert.NotNull(h);
            Assert.Equal(8, h.Counts.Length);
            Assert.Equal(9, h.Edges.Length);
            Assert.Equal(0, h.Edges[0]);
            Assert.Equal(active[0].Act, (float)h.Edges[^1]);
            Assert.Equal(active.Count, h.Counts.Sum());
            for (int k = 0; k < 8; k++)
                Assert.Equal(active.Count(t => t.Act > h.Edges[k] && t.Act <= h.Edges[k + 1]), h.Counts[k]);
        }
    }

    [Fact]
    public void QuantileSamples_LieInTheirIntervals_AndIntervalCountsMatchBruteForce()
    {
        var (path, contexts, acts) = (built.Path, built.Contexts, built.Acts);
        using var store = FeatureStore.Open(path);
        int sampled = 0;
        for (int f = 0; f < DSae; f++)
        {
            var active = ActiveTokens(acts, contexts.Count, f);
            var intervals = store.Intervals(f);
            var samples = store.Examples(f, FeatureStoreSchema.Quantile);
            if (active.Count == 0)
            {
                Assert.Empty(intervals);
                continue;
            }
            Assert.Equal(4, intervals.Count);
            Assert.Equal(active.Count, intervals.Sum(i => i.NActive));
            foreach (var i in intervals)
            {
                Assert.Equal(active[0].Act * (i.Bin + 1) / 4.0, i.Upper, 1e-5);
                var inside = active.Where(t => t.Act > i.Lower && t.Act <= i.Upper).ToList();
                Assert.Equal(inside.Count, i.NActive);
                var chosen = samples.Where(e => e.Bin == i.Bin).ToList();
                Assert.Equal(Math.Min(3, inside.Count), chosen.Count);
                Assert.Equal(chosen.Count, chosen.Select(e => (e.ContextId, e.Position)).Distinct().Count());
                foreach (var e in chosen)
                {
                    Assert.Contains((e.ContextId, e.Position), inside.Select(t => (t.Context, t.Position)));
                    Assert.Equal(acts[(e.ContextId * ContextSize + e.Position) * DSae + f], (float)e.Activation);
                }
                Assert.Equal(chosen.OrderByDescending(e => e.Activation).Select(e => e.Activation), chosen.Select(e => e.Activation));
                sampled += chosen.Count;
            }
        }
        Assert.True(sampled > 50);
    }

    [Fact]
    public void SmallBatches_GiveTheSameStatistics_AndTheSameSeedTheSameSamples()
    {
        var contexts = Contexts(documents: 30);
        var (dict, cfg) = Dictionary();
        var options = new FeatureBuildOptions { BatchSize = 4, TopK = 5, Quantiles = 3, QuantileSamples = 2, HistogramBins = 5, Window = 2, LogitCount = 0 };
        FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath("a.db"), options);
        FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath("b.db"), options);
        var acts = BruteForceActs(dict, contexts);
        using var a = FeatureStore.Open(DbPath("a.db"));
        using var b = FeatureStore.Open(DbPath("b.db"));
        for (int f = 0; f < DSae; f++)
        {
            var active = ActiveTokens(acts, contexts.Count, f);
            Assert.InRange(a.Feature(f).NActive, active.Count - 1, active.Count + 1); // batch size only changes float rounding
            var top = a.Examples(f);
            for (int r = 0; r < top.Count; r++) Assert.Equal(active[r].Act, (float)top[r].Activation, 1e-4f);
            Assert.Equal(a.Examples(f, FeatureStoreSchema.Quantile).Select(e => (e.ContextId, e.Position)),
                b.Examples(f, FeatureStoreSchema.Quantile).Select(e => (e.ContextId, e.Position)));
            Assert.Empty(a.Logits(f, FeatureStoreSchema.Promoted));
            Assert.Null(a.Histogram(f, FeatureStoreSchema.LogitsHistogram));
        }
        Assert.Equal("0", a.Meta["logit_count"]);
    }

    [Fact]
    public void LogitEffects_EqualDecoderRowThroughFinalNormWeightIntoUnembedding()
    {
        string path = built.Path;
        using var store = FeatureStore.Open(path);
        var (dict, _) = Dictionary();
        var model = Model;
        var norm = model.FinalNormLayer!;
        int D = model.Config.DModel, V = model.Config.VocabOut;
        var columns = Enumerable.Range(0, V).Select(model.UnembedDirection).ToArray();
        foreach (int f in new[] { 0, 3, Dead, DSae - 1 })
        {
            // expected[t] = Σ_d W_dec[f, d] · w_ln_final[d] · W_U[d, t]   (RMSNorm: no centring)
            var expected = new double[V];
            for (int t = 0; t < V; t++)
                for (int d = 0; d < D; d++) expected[t] += (double)dict.P.WDec[f * D + d] * (norm.Weight.Span[d] + norm.WeightOffset) * columns[t][d];
            var order = Enumerable.Range(0, V).OrderByDescending(t => expected[t]).ToArray();
            var promoted = store.Logits(f, FeatureStoreSchema.Promoted);
            var suppressed = store.Logits(f, FeatureStoreSchema.Suppressed);
            Assert.Equal(10, promoted.Count);
            Assert.Equal(10, suppressed.Count);
            for (int r = 0; r < 10; r++)
            {
                Assert.Equal(order[r], promoted[r].TokenId);
                Assert.Equal(expected[order[r]], promoted[r].Value, 1e-4);
                Assert.Equal(order[V - 1 - r], suppressed[r].TokenId);
                Assert.Equal(expected[order[V - 1 - r]], suppressed[r].Value, 1e-4);
                Assert.Null(promoted[r].TokenStr); // the fixture has no tokenizer
            }
            var h = store.Histogram(f, FeatureStoreSchema.LogitsHistogram)!;
            Assert.Equal(V, h.Counts.Sum());
            Assert.Equal(expected.Min(), h.Edges[0], 1e-4);
            Assert.Equal(expected.Max(), h.Edges[^1], 1e-4);
        }
    }

    [Fact]
    public void Cancellation_LeavesNoStoreAndNoTemporaryFile_AndKeepsAnExistingStore()
    {
        var contexts = Contexts(documents: 30);
        var (dict, cfg) = Dictionary();
        foreach (string stage in new[] { "pass 2/2", "writing" })
        {
            using var cts = new CancellationTokenSource();
            var progress = new SyncProgress<FeatureBuildProgress>(p => { if (p.Stage == stage) cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() =>
                FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath(), new FeatureBuildOptions { BatchSize = 4 }, progress: progress, cancellationToken: cts.Token));
            Assert.Empty(Directory.GetFileSystemEntries(_dir));
        }

        File.WriteAllText(DbPath(), "previous store");
        using (var cts = new CancellationTokenSource())
        {
            var progress = new SyncProgress<FeatureBuildProgress>(p => { if (p.Stage == "writing") cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() =>
                FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath(), progress: progress, cancellationToken: cts.Token));
        }
        Assert.Equal("previous store", File.ReadAllText(DbPath()));
        Assert.Single(Directory.GetFileSystemEntries(_dir));

        var summary = FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath(), new FeatureBuildOptions { BatchSize = 4 });
        Assert.Equal(DbPath(), summary.Path);
        Assert.Single(Directory.GetFileSystemEntries(_dir));
        using var store = FeatureStore.Open(DbPath());
        Assert.Equal(FeatureFixture.Hook, store.Hook);
    }

    [Fact]
    public void Store_RecordsProvenance_AndRejectsOutOfRangeFeatures_OtherVersions_AndOtherFiles()
    {
        var (path, contexts) = (built.Path, built.Contexts);
        using (var store = FeatureStore.Open(path))
        {
            Assert.Equal("1", store.Meta["schema_version"]);
            Assert.Equal("loupe-features", store.Meta["format"]);
            Assert.Equal(contexts.Sha256(), store.Meta["contexts_sha256"]);
            Assert.Equal("40", store.Meta["d_sae"]);
            Assert.Equal("standard", store.Meta["architecture"]);
            Assert.Contains("RMSNorm", store.Meta["logit_effects"]);
            var e = Assert.Throws<InputError>(() => store.Feature(40));
            Assert.Contains("d_sae = 40", e.Message);
            Assert.Throws<InputError>(() => store.Examples(-1));
            Assert.Equal(store.Features().Select(s => s.Density), store.Features().Select(s => s.Density).OrderDescending());
            Assert.Equal(5, store.Features("max_act", limit: 5).Count);
        }

        string copy = DbPath("old.db");
        File.Copy(path, copy);
        using (var db = new SqliteConnection($"Data Source={copy};Pooling=False"))
        {
            db.Open();
            using var cmd = db.CreateCommand();
            cmd.CommandText = "UPDATE meta SET value = '99' WHERE key = 'schema_version'";
            Assert.Equal(1, cmd.ExecuteNonQuery());
        }
        var version = Assert.Throws<InputError>(() => FeatureStore.Open(copy));
        Assert.Contains("schema_version is 99", version.Message);
        Assert.Contains("reads version 1", version.Message);

        File.WriteAllText(DbPath("text.db"), "not a database at all, just some text that is long enough to have a header");
        Assert.Contains("not a readable Loupe feature store", Assert.Throws<InputError>(() => FeatureStore.Open(DbPath("text.db"))).Message);
        Assert.Contains("build it with", Assert.Throws<FileNotFoundException>(() => FeatureStore.Open(DbPath("missing.db"))).Message);
    }

    [Fact]
    public void Build_RejectsAWrongWidth_AnUnknownHook_AndAMissingHookName()
    {
        var contexts = Contexts(documents: 10);
        var (narrow, narrowCfg) = Dictionary(dIn: 32);
        var width = Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, narrow, narrowCfg, contexts, DbPath()));
        Assert.Contains("d_in = 32", width.Message);
        Assert.Contains("64 wide", width.Message);
        Assert.Contains(FeatureFixture.Hook, width.Message);

        var (dict, cfg) = Dictionary();
        var unknown = Assert.Throws<InputError>(() =>
            FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath(), new FeatureBuildOptions { Hook = "blocks.1.hook_resid_pots" }));
        Assert.Contains("blocks.1.hook_resid_pots", unknown.Message);
        Assert.Contains("blocks.1.hook_resid_post", unknown.Message); // suggested
        var none = Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg with { HookName = "" }, contexts, DbPath()));
        Assert.Contains("hook_name", none.Message);
        Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath(), new FeatureBuildOptions { TopK = 0 }));
        Assert.Empty(Directory.GetFileSystemEntries(_dir));
    }

    sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
