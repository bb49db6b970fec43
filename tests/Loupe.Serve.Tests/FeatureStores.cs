using System.Buffers.Binary;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Steering;
using Loupe.Testing;
using Microsoft.Data.Sqlite;

namespace Loupe.Serve.Tests;

/// <summary>
/// Feature stores for the Features and Steering tests, each made once per test run in a temp folder:
/// a real one from stories260K with a ReLU SAE trained in the test and saved as a SAELens folder (so the store records where it is),
/// with one explanation added; a synthetic one of 65,536 features written straight into the schema; and a
/// folder of served artifacts holding a persona vector file.
/// </summary>
static class FeatureStores
{
    public const string Hook = "blocks.2.hook_resid_post";
    public const int RealDSae = 32, BigDSae = 65_536;
    public const string ExplainedText = "the word after a name";

    static readonly string s_root = Directory.CreateTempSubdirectory("loupe-serve-features-").FullName;
    static readonly Lazy<string> s_real = new(BuildReal);
    static readonly bool s_cleanup = Cleanup();
    static readonly Lazy<string> s_big = new(BuildBig);
    static readonly Lazy<string> s_artifacts = new(BuildArtifacts);

    public static string Real => s_real.Value;
    /// <summary>The folder of the real store's SAE and store (built on first use, like <see cref="Real"/>).</summary>
    public static string SaeFolder { get { _ = Real; return RealFolder; } }
    static string RealFolder => Path.Combine(s_root, "sae");
    public static string Big => s_big.Value;
    /// <summary>The real store's SAE at the end of its training (explained variance of the last batch).</summary>
    public static double TrainedExplainedVariance { get; private set; }
    /// <summary>A --graphs folder with <c>vectors/persona.safetensors</c> (hook and direction: <see cref="PersonaDirection"/>).</summary>
    public static string Artifacts => s_artifacts.Value;
    public static float[] PersonaDirection { get; } = [.. Enumerable.Range(0, 64).Select(i => MathF.Sin(i * 0.7f))];

    // The synthetic store is ~150 MB: removed when the test process ends.
    static bool Cleanup()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(s_root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { } };
        return true;
    }

    static string BuildReal()
    {
        var model = Servers.Stories;
        // A ReLU SAE trained here on the model's own text (a few hundred steps: seconds), so dashboards, steering and
        // evaluations show what a trained dictionary gives rather than a random one's numbers.
        var dict = new SparseDictionary(SaeShape.Sae(64, RealDSae, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(seed: 7, decoderNorm: 1f);
        var training = ContextBuilder.ForModel(model, new ModelSampledSource(model, 120, 40, seed: 2), 32, seed: 2, maxContexts: 120);
        var trainer = new SaeTrainer(dict, new SaeTrainingOptions
        {
            Steps = 400, BatchSize = 256, LearningRate = 3e-3f, LrWarmupSteps = 10, SparsityCoefficient = 3e-3f, SparsityWarmupSteps = 50, Seed = 0,
        });
        trainer.Begin(new ModelRows(model, training, Hook, contextsPerWindow: 40));
        SaeStepMetrics last = trainer.Step();
        while (!trainer.IsComplete) last = trainer.Step();
        trainer.Finish();
        TrainedExplainedVariance = last.ExplainedVariance;
        var config = new SaeLensConfig { DIn = 64, DSae = RealDSae, DOut = 64, HookName = Hook, ApplyBDecToInput = false };
        SaeLensFormat.Save(RealFolder, dict, config);
        var contexts = ContextBuilder.ForModel(model, new ModelSampledSource(model, 40, 40, seed: 1), 32, seed: 1, maxContexts: 40);
        string path = Path.Combine(RealFolder, FeatureStoreSchema.DefaultFileName);
        FeatureDashboardBuilder.Build(model, dict, config, contexts, path,
            new FeatureBuildOptions { TopK = 8, Quantiles = 3, QuantileSamples = 3, Window = 6, LogitCount = 5 }, RealFolder);
        // An explanation with scores, as `loupe explain` stores it, for the densest feature.
        int densest;
        using (var store = FeatureStore.Open(path)) densest = store.Features("density", 1)[0].Feature;
        using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        db.Open();
        Exec(db, FeatureStoreSchema.CreateExplanationTables);
        Exec(db, "INSERT INTO explanations VALUES ($p0, 'test-explainer', $p1, '2026-01-01T00:00:00Z')", densest, ExplainedText);
        Exec(db, "INSERT INTO explanation_scores VALUES ($p0, 'test-explainer', 'detection', 'accuracy', 0.8)", densest);
        Exec(db, "INSERT INTO explanation_scores VALUES ($p0, 'test-explainer', 'detection', 'f1', 0.75)", densest);
        Exec(db, "INSERT INTO explanation_scores VALUES ($p0, 'test-explainer', 'fuzzing', 'accuracy', 0.6)", densest);
        Exec(db, "INSERT INTO explanation_scores VALUES ($p0, 'test-explainer', 'simulation', 'ev_correlation', 0.42)", densest);
        Exec(db, "INSERT INTO explanation_scores VALUES ($p0, 'test-explainer', 'simulation', 'n', 20)", densest);
        Exec(db, "INSERT INTO explanation_scores VALUES ($p0, 'test-explainer', 'simulation', 'similar_negatives', 1)", densest);
        return path;
    }

    static void Exec(SqliteConnection db, string sql, params object?[] args)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        for (int i = 0; i < args.Length; i++) cmd.Parameters.AddWithValue("$p" + i, args[i] ?? DBNull.Value);
        cmd.ExecuteNonQuery();
    }

    /// <summary>
    /// 65,536 features, each with 5 top examples, 2 intervals of 2 samples, a 50-bin histogram and 5 + 5 logit rows, over
    /// 2,000 shared contexts of 64 tokens (FeatureStoreWriter is internal to the library, so the rows go in directly).
    /// </summary>
    static string BuildBig()
    {
        string path = Path.Combine(s_root, "big", FeatureStoreSchema.DefaultFileName);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        const int contexts = 2000, n = 64, window = 8, vocab = 512, top = 5;
        var rng = new Random(3);
        using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        db.Open();
        Exec(db, "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;");
        Exec(db, "BEGIN");
        Exec(db, FeatureStoreSchema.CreateTables);
        foreach (var (k, v) in new[] { ("format", FeatureStoreSchema.Format), ("schema_version", FeatureStoreSchema.Version.ToString()), ("d_sae", BigDSae.ToString()),
                     ("n_tokens", (contexts * (n - 1)).ToString()), ("hook", Hook), ("sae_path", "(in memory)") })
            Exec(db, "INSERT INTO meta (key, value) VALUES ($p0, $p1)", k, v);
        for (int id = 0; id < vocab; id++) Exec(db, "INSERT INTO vocab VALUES ($p0, $p1)", id, $" w{id}");
        var ctx = new int[contexts][];
        for (int c = 0; c < contexts; c++)
        {
            ctx[c] = [0, .. Enumerable.Range(1, n - 1).Select(_ => 1 + rng.Next(vocab - 1))];
            Exec(db, "INSERT INTO contexts VALUES ($p0, $p1)", c, "[" + string.Join(",", ctx[c]) + "]");
        }
        using var feature = Prepared(db, "INSERT INTO features VALUES ($p0, $p1, $p2, $p3, $p4, $p5)", 6);
        using var example = Prepared(db, "INSERT INTO examples VALUES ($p0, $p1, $p2, $p3, $p4, $p5, $p6, $p7, $p8)", 9);
        using var interval = Prepared(db, "INSERT INTO quantile_intervals VALUES ($p0, $p1, $p2, $p3, $p4)", 5);
        using var histogram = Prepared(db, "INSERT INTO histograms VALUES ($p0, 'acts', $p1, $p2)", 3);
        using var logit = Prepared(db, "INSERT INTO logits VALUES ($p0, $p1, $p2, $p3, $p4, $p5)", 6);
        var blob = new byte[(2 * window + 1) * 4];
        for (int f = 0; f < BigDSae; f++)
        {
            float max = 1f + (f % 97) / 10f;
            long active = 10 + f % 1000;
            Run(feature, f, active, active / (double)(contexts * (n - 1)), (double)max, max / 2.0, 1.0);
            void Example(string kind, int? bin, int rank, float act)
            {
                int c = rng.Next(contexts), p = window + rng.Next(n - 2 * window);
                for (int j = 0; j < 2 * window + 1; j++)
                    BinaryPrimitives.WriteSingleLittleEndian(blob.AsSpan(j * 4), j == window ? act : rng.Next(3) == 0 ? act * 0.3f : 0f);
                Run(example, f, kind, bin, rank, c, p, (double)act, p - window, blob);
            }
            for (int r = 0; r < top; r++) Example(FeatureStoreSchema.Top, null, r, max * (1 - 0.1f * r));
            for (int b = 0; b < 2; b++)
            {
                Run(interval, f, b, b * max / 2.0, (b + 1) * max / 2.0, active / 2);
                for (int r = 0; r < 2; r++) Example(FeatureStoreSchema.Quantile, b, r, max * (b + 0.5f) / 2);
            }
            var edges = Enumerable.Range(0, 51).Select(i => Math.Round(max * i / 50.0, 4));
            var counts = Enumerable.Range(0, 50).Select(i => (active * (50 - i)) / 1275);
            Run(histogram, f, "[" + string.Join(",", edges.Select(e => e.ToString(System.Globalization.CultureInfo.InvariantCulture))) + "]", "[" + string.Join(",", counts) + "]");
            for (int r = 0; r < 5; r++)
            {
                int up = (f * 7 + r) % vocab, down = (f * 13 + r + 1) % vocab;
                Run(logit, f, FeatureStoreSchema.Promoted, r, up, $" w{up}", 1.0 - 0.1 * r);
                Run(logit, f, FeatureStoreSchema.Suppressed, r, down, $" w{down}", -1.0 + 0.1 * r);
            }
        }
        Exec(db, "CREATE INDEX examples_by_feature ON examples (feature, kind, bin, rank); CREATE INDEX features_by_density ON features (density);");
        Exec(db, "COMMIT");
        return path;
    }

    static SqliteCommand Prepared(SqliteConnection db, string sql, int parameters)
    {
        var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        for (int i = 0; i < parameters; i++) cmd.Parameters.Add(new SqliteParameter("$p" + i, null));
        cmd.Prepare();
        return cmd;
    }

    static void Run(SqliteCommand cmd, params object?[] values)
    {
        for (int i = 0; i < values.Length; i++) cmd.Parameters[i].Value = values[i] ?? DBNull.Value;
        cmd.ExecuteNonQuery();
    }

    static string BuildArtifacts()
    {
        string dir = Path.Combine(s_root, "artifacts", "vectors");
        Directory.CreateDirectory(dir);
        new PersonaVector(Hook, 2, PersonaDirection, 0).Save(Path.Combine(dir, "persona.safetensors"));
        return Path.GetDirectoryName(dir)!;
    }
}
