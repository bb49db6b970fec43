using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Fuzz.Engine;
using Loupe.Models;

namespace Loupe.Fuzz.Targets;

/// <summary>Seeds made with Loupe's own writers from the HF-checked llama fixture (tests/data, no ../shared needed).</summary>
static class PipelineFixtures
{
    public const string Hook = "blocks.1.hook_resid_post", MlpOut = "blocks.1.hook_mlp_out";

    public static HookedTransformer LoadModel(SeedContext context) => ModelLoader.LoadFolder(context.Repo("tests/data/reference/llama"));

    public static HarvestContexts Contexts(int documents, int contextSize)
    {
        var rng = new Random(11);
        var docs = Enumerable.Range(0, documents).Select(_ => Enumerable.Range(0, rng.Next(3, 20)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        return ContextBuilder.Build(docs, new ContextOptions(contextSize, BosTokenId: 1, SeparatorTokenId: 2, Seed: 3), "random ids");
    }

    /// <summary>A ReLU SAE on <see cref="Hook"/> (d_in 64, d_sae 24) with biases that spread densities, one feature dead.</summary>
    public static (SparseDictionary, SaeLensConfig) Dictionary()
    {
        var dict = new SparseDictionary(SaeShape.Sae(64, 24, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(seed: 5, decoderNorm: 1f);
        for (int f = 0; f < 24; f++) dict.P.BEnc[f] = -0.05f * f;
        dict.P.BEnc[7] = -1e4f;
        return (dict, new SaeLensConfig { DIn = 64, DSae = 24, DOut = 64, HookName = Hook, ApplyBDecToInput = false });
    }
}

/// <summary><c>ActivationStore.Open</c> + Validate + every shard read + a few training batches, on a harvest folder (manifest.json + shards).</summary>
public sealed class HarvestTarget : FuzzTarget
{
    public override string Name => "harvest";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var folder = Path.Combine(context.Scratch, "harvest");
        using (var model = PipelineFixtures.LoadModel(context))
            Harvester.Run(model, PipelineFixtures.Contexts(12, 8), folder,
                new HarvestOptions([PipelineFixtures.Hook, PipelineFixtures.MlpOut], BatchSize: 4, ShardTokens: 28, SkipBos: true));
        // A format-1 harvest with norm hooks: ln2's is offered as mlp.hook_in, ln1's refused (ActivationStore.StoredNames).
        var legacy = Path.Combine(context.Scratch, "harvest-v1");
        using (var model = PipelineFixtures.LoadModel(context))
            Harvester.Run(model, PipelineFixtures.Contexts(12, 8), legacy,
                new HarvestOptions(["blocks.1.ln2.hook_normalized", "blocks.0.ln1.hook_normalized", PipelineFixtures.MlpOut], BatchSize: 4, ShardTokens: 28, SkipBos: true));
        string manifest = Path.Combine(legacy, HarvestManifest.FileName);
        File.WriteAllText(manifest, File.ReadAllText(manifest).Replace("\"format_version\": 2", "\"format_version\": 1", StringComparison.Ordinal));
        return [SeedFiles.AllOf("generated:harvest-llama-2hooks", folder), SeedFiles.AllOf("generated:harvest-v1-norm-hooks", legacy)];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var store = ActivationStore.Open(folder);
        store.Validate();
        for (int s = 0; s < store.Manifest.Shards.Count; s++)
        {
            foreach (var hook in store.Hooks) Require.Finite(store.ReadShard(s, hook), $"shard {s} {hook}");
            _ = store.ReadTokenIds(s);
        }
        foreach (var hook in store.Hooks)
            foreach (var batch in store.Batches(hook, batchSize: 8, seed: 1).Take(4))
                Require.Finite(batch, $"training batch of {hook}");
    }
}

/// <summary><c>FeatureStore.Open</c> and every query the CLI and web UI make, on a features.db built by FeatureDashboardBuilder.</summary>
public sealed class FeatureStoreTarget : FuzzTarget
{
    public override string Name => "featurestore";
    public override int DefaultIterations => 1200;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "features")).FullName;
        var path = Path.Combine(folder, "features.db");
        var (dict, cfg) = PipelineFixtures.Dictionary();
        using (var model = PipelineFixtures.LoadModel(context))
            FeatureDashboardBuilder.Build(model, dict, cfg, PipelineFixtures.Contexts(24, 12), path,
                new FeatureBuildOptions { BatchSize = 8, TopK = 4, Quantiles = 3, QuantileSamples = 2, HistogramBins = 6, Window = 3, LogitCount = 4 });
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        return [SeedFiles.FromFolder("generated:features-llama-relu24", folder, "features.db")];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        using var store = FeatureStore.Open(Path.Combine(folder, "features.db"));
        Require.That(store.DSae > 0, $"d_sae {store.DSae} accepted");
        foreach (var s in store.Features())
        {
            Require.Finite(s.Density, $"feature {s.Feature} density");
            Require.Finite(s.MaxAct, $"feature {s.Feature} max_act");
            Require.Finite(s.DecoderNorm, $"feature {s.Feature} decoder_norm");
            if (s.MeanAct is double mean) Require.Finite(mean, $"feature {s.Feature} mean_act");
        }
        _ = store.DeadFeatures();
        for (int f = 0; f < Math.Min(store.DSae, 32); f++)
        {
            _ = store.Feature(f);
            foreach (var kind in new[] { FeatureStoreSchema.Top, FeatureStoreSchema.Quantile })
                foreach (var e in store.Examples(f, kind))
                {
                    Require.Finite(e.Activation, $"feature {f} example activation");
                    _ = e.WindowTokens;
                }
            foreach (var interval in store.Intervals(f)) { Require.Finite(interval.Lower, "interval lower"); Require.Finite(interval.Upper, "interval upper"); }
            foreach (var kind in new[] { FeatureStoreSchema.ActsHistogram, FeatureStoreSchema.LogitsHistogram })
                if (store.Histogram(f, kind) is { } h) foreach (var edge in h.Edges) Require.Finite(edge, "histogram edge");
            foreach (var kind in new[] { FeatureStoreSchema.Promoted, FeatureStoreSchema.Suppressed })
                foreach (var row in store.Logits(f, kind)) Require.Finite(row.Value, $"feature {f} logit value");
        }
        _ = store.TokenText(0);
    }

    public override void Cleanup() => Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
}

/// <summary>
/// Resuming a feature-store build (<c>loupe features build --resume</c>): <c>FeatureDashboardBuilder.Build</c> with
/// Resume on a folder holding a cancelled build's <c>features.db.checkpoint</c>, which it must continue (to a store that
/// opens with finite statistics) or refuse by name. The seeds are builds cancelled inside pass 1 and inside pass 2.
/// </summary>
public sealed class FeatureResumeTarget : FuzzTarget
{
    public override string Name => "features-resume";
    public override int DefaultIterations => 800;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(10);

    static readonly FeatureBuildOptions Options = new() { BatchSize = 4, TopK = 4, Quantiles = 3, QuantileSamples = 2, HistogramBins = 6, Window = 3, LogitCount = 2 };
    HookedTransformer? _model;
    HarvestContexts? _contexts;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        _model = PipelineFixtures.LoadModel(context);
        _contexts = PipelineFixtures.Contexts(24, 12);
        var (dict, cfg) = PipelineFixtures.Dictionary();
        var seeds = new List<Seed>();
        foreach (var stage in new[] { "pass 1/2", "pass 2/2" })
        {
            string folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "features-resume", stage[5..6])).FullName;
            string store = Path.Combine(folder, "features.db");
            // Checkpoints after every batch; cancelled on the third report of the stage (its third batch).
            using var kill = new CancellationTokenSource();
            int reports = 0;
            var progress = new Stop(p => { if (p.Stage == stage && ++reports == 3) kill.Cancel(); });
            try
            {
                FeatureDashboardBuilder.Build(_model, dict, cfg, _contexts, store, Options with { CheckpointSeconds = 0 }, progress: progress, cancellationToken: kill.Token);
                throw new InvalidOperationException($"the seed build was not cancelled in {stage}");
            }
            catch (OperationCanceledException) { }
            seeds.Add(SeedFiles.FromFolder($"generated:features-resume-{stage[5..6]}", folder, Path.GetFileName(FeatureDashboardBuilder.CheckpointPath(store))));
        }
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var (dict, cfg) = PipelineFixtures.Dictionary();
        string path = Path.Combine(folder, "features.db");
        FeatureDashboardBuilder.Build(_model!, dict, cfg, _contexts!, path, Options with { Resume = true, CheckpointSeconds = null });
        Require.That(!File.Exists(FeatureDashboardBuilder.CheckpointPath(path)), "the checkpoint was left after the store was written");
        using var store = FeatureStore.Open(path);
        foreach (var s in store.Features())
        {
            Require.Finite(s.Density, $"feature {s.Feature} density");
            Require.Finite(s.MaxAct, $"feature {s.Feature} max_act");
            if (s.MeanAct is double mean) Require.Finite(mean, $"feature {s.Feature} mean_act");
            foreach (var kind in new[] { FeatureStoreSchema.Top, FeatureStoreSchema.Quantile })
                foreach (var e in store.Examples(s.Feature, kind)) Require.Finite(e.Activation, $"feature {s.Feature} example activation");
        }
    }

    public override void Cleanup() => Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();

    sealed class Stop(Action<FeatureBuildProgress> report) : IProgress<FeatureBuildProgress>
    {
        public void Report(FeatureBuildProgress value) => report(value);
    }
}
