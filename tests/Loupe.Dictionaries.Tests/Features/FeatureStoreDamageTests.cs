using Loupe.Dictionaries.Features;
using Microsoft.Data.Sqlite;
using static Loupe.Dictionaries.Tests.Features.FeatureFixture;

namespace Loupe.Dictionaries.Tests.Features;

/// <summary>
/// A damaged or foreign features.db, bad query arguments and a full disk during a build each end in one
/// clear error (an <see cref="InputError"/> naming file, table, row and column, or an <see cref="IOException"/>
/// naming the output), never a JSON, cast or SQLite exception.
/// </summary>
public sealed class FeatureStoreDamageTests(BuiltFeatureStore built) : IClassFixture<BuiltFeatureStore>, IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-features-damage-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A copy of the shared store with <paramref name="sql"/> applied.</summary>
    string Damaged(string name, string sql)
    {
        string copy = Path.Combine(_dir, name + ".db");
        File.Copy(built.Path, copy);
        using var db = new SqliteConnection($"Data Source={copy};Pooling=False");
        db.Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
        return copy;
    }

    /// <summary>A feature with examples, an interval, histograms and logits in the shared store.</summary>
    int LiveFeature()
    {
        using var store = FeatureStore.Open(built.Path);
        return store.Features("density", 1)[0].Feature;
    }

    static void AssertNames(InputError e, params string[] parts)
    {
        Assert.DoesNotContain('\n', e.Message);
        foreach (var p in parts) Assert.Contains(p, e.Message);
    }

    [Fact]
    public void MalformedJsonInAColumn_NamesFileTableColumnAndFeature()
    {
        int f = LiveFeature();
        string path = Damaged("json", $"UPDATE histograms SET bin_edges = '[0.5, 1' WHERE feature = {f} AND kind = 'acts'");
        using var store = FeatureStore.Open(path);
        var e = Assert.Throws<InputError>(() => store.Histogram(f));
        AssertNames(e, path, "table 'histograms'", $"feature {f}", "column 'bin_edges'", "valid JSON");

        string counts = Damaged("counts", $"UPDATE histograms SET counts = '[1, 2]' WHERE feature = {f} AND kind = 'acts'");
        using var store2 = FeatureStore.Open(counts);
        AssertNames(Assert.Throws<InputError>(() => store2.Histogram(f)), "column 'counts'", "one count per bin");

        string tokens = Damaged("tokens", "UPDATE contexts SET tokens = '{\"a\": 1}'");
        using var store3 = FeatureStore.Open(tokens);
        AssertNames(Assert.Throws<InputError>(() => store3.Examples(f)), "table 'examples'", "column 'tokens' of table 'contexts'");
    }

    [Fact]
    public void OutOfRangeIntegers_AreRefusedNotOverflowed()
    {
        int f = LiveFeature();
        string path = Damaged("position", $"UPDATE examples SET position = 5000000000 WHERE feature = {f}");
        using (var store = FeatureStore.Open(path))
            AssertNames(Assert.Throws<InputError>(() => store.Examples(f)), "table 'examples'", "column 'position'", "5000000000");

        string json = Damaged("json-overflow", "UPDATE contexts SET tokens = '[1, 99999999999999]'");
        using (var store = FeatureStore.Open(json))
            AssertNames(Assert.Throws<InputError>(() => store.Examples(f)), "column 'tokens'");

        string counts = Damaged("counts-overflow", $"UPDATE histograms SET counts = '[' || replace(substr(counts, 2), ']', ',99999999999999999999999]') WHERE feature = {f}");
        using (var store = FeatureStore.Open(counts))
            AssertNames(Assert.Throws<InputError>(() => store.Histogram(f)), "column 'counts'");

        string rank = Damaged("rank", $"UPDATE logits SET rank = -3 WHERE feature = {f} AND kind = 'promoted' AND rank = 0");
        using (var store = FeatureStore.Open(rank))
            AssertNames(Assert.Throws<InputError>(() => store.Logits(f, FeatureStoreSchema.Promoted)), "table 'logits'", "column 'rank'", "-3");

        string window = Damaged("window", $"UPDATE examples SET window_start = 1000 WHERE feature = {f}");
        using (var store = FeatureStore.Open(window))
            AssertNames(Assert.Throws<InputError>(() => store.Examples(f)), "column 'window_start'");

        string dSae = Damaged("dsae", "UPDATE meta SET value = '99999999999' WHERE key = 'd_sae'");
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(dSae)), "table 'meta'", "d_sae");
        string nTokens = Damaged("ntokens", "UPDATE meta SET value = 'lots' WHERE key = 'n_tokens'");
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(nTokens)), "table 'meta'", "n_tokens", "lots");
    }

    [Fact]
    public void WrongColumnTypesAndNonFiniteValues_AreRefused()
    {
        int f = LiveFeature();
        string density = Damaged("density", $"UPDATE features SET density = 'high' WHERE feature = {f}");
        using (var store = FeatureStore.Open(density))
        {
            AssertNames(Assert.Throws<InputError>(() => store.Feature(f)), "table 'features'", "column 'density'", "text \"high\"");
            Assert.Throws<InputError>(() => store.Features());
        }
        string blob = Damaged("blob", $"UPDATE examples SET window_acts = 'text' WHERE feature = {f}");
        using (var store = FeatureStore.Open(blob))
            AssertNames(Assert.Throws<InputError>(() => store.Examples(f)), "column 'window_acts'", "a blob");
        string nan = Damaged("nan", $"UPDATE examples SET window_acts = X'0000C07F' WHERE feature = {f}");
        using (var store = FeatureStore.Open(nan))
            AssertNames(Assert.Throws<InputError>(() => store.Examples(f)), "column 'window_acts'", "NaN");
        string odd = Damaged("odd", $"UPDATE examples SET window_acts = X'000000' WHERE feature = {f}");
        using (var store = FeatureStore.Open(odd))
            AssertNames(Assert.Throws<InputError>(() => store.Examples(f)), "column 'window_acts'", "3 bytes");
        // TEXT columns convert numbers to text (SQLite affinity), but a blob stays a blob.
        string vocab = Damaged("vocab", "INSERT INTO vocab (token_id, token_str) VALUES (0, X'41')");
        using (var store = FeatureStore.Open(vocab))
            AssertNames(Assert.Throws<InputError>(() => store.TokenText(0)), "table 'vocab'", "column 'token_str'", "a blob");
    }

    [Fact]
    public void MissingTablesOrColumns_AreNamedAtOpen()
    {
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(Damaged("no-logits", "DROP TABLE logits"))), "table 'logits'", "missing");
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(Damaged("no-column", "ALTER TABLE examples DROP COLUMN window_start"))), "table 'examples'", "column 'window_start'", "missing");
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(Damaged("no-meta", "DROP TABLE meta"))), "table 'meta'");
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(Damaged("format", "UPDATE meta SET value = 'other' WHERE key = 'format'"))), "not a Loupe feature store");
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(Damaged("blob-meta", "UPDATE meta SET value = X'41' WHERE key = 'hook'"))), "table 'meta'", "key \"hook\"", "column 'value'");
    }

    [Fact]
    public void NotAnSqliteFile_EmptyOrTruncated_IsAnInputError()
    {
        string empty = Path.Combine(_dir, "empty.db");
        File.WriteAllBytes(empty, []);
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(empty)), empty, "an empty file");

        // A real SQLite header, then garbage: SQLite's own "file is not a database" becomes an InputError.
        string garbage = Path.Combine(_dir, "garbage.db");
        var bytes = File.ReadAllBytes(built.Path);
        new Random(1).NextBytes(bytes.AsSpan(16));
        File.WriteAllBytes(garbage, bytes);
        AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(garbage)), garbage);

        string fifo = Path.Combine(_dir, "fifo.db");
        if (Harvest.HarvestManifestTests.MakeFifo(fifo))
            AssertNames(Assert.Throws<InputError>(() => FeatureStore.Open(fifo)), fifo, "a regular file");

        string truncated = Path.Combine(_dir, "truncated.db");
        File.WriteAllBytes(truncated, File.ReadAllBytes(built.Path)[..(bytes.Length / 3)]);
        int f = LiveFeature();
        var e = Record.Exception(() =>
        {
            using var store = FeatureStore.Open(truncated);
            store.Features();
            store.Examples(f);
            store.Histogram(f);
        });
        Assert.True(e is null or InputError, $"expected an InputError or nothing, got {e}");
    }

    [Fact]
    public void QueryArguments_AreNamed()
    {
        using var store = FeatureStore.Open(built.Path);
        AssertNames(Assert.Throws<InputError>(() => store.Feature(-1)), "argument", "feature", "[0, 39]", "-1");
        AssertNames(Assert.Throws<InputError>(() => store.Logits(int.MaxValue, FeatureStoreSchema.Promoted)), "feature", "d_sae = 40");
        AssertNames(Assert.Throws<InputError>(() => store.Features(limit: -1)), "argument", "limit", "-1");
        AssertNames(Assert.Throws<InputError>(() => store.Features(offset: -2)), "offset");
        AssertNames(Assert.Throws<InputError>(() => store.Features("loudest")), "order", "loudest");
        AssertNames(Assert.Throws<InputError>(() => store.Examples(0, limit: -5)), "limit");
        AssertNames(Assert.Throws<InputError>(() => store.Examples(0, "best")), "kind", "best");
        AssertNames(Assert.Throws<InputError>(() => store.Histogram(0, "weights")), "kind");
        AssertNames(Assert.Throws<InputError>(() => store.Logits(0, "up")), "kind");
        Assert.Empty(store.Examples(0, limit: 0));
    }

    [Fact]
    public void AFullDiskDuringABuild_RemovesTheTempFile_AndKeepsTheExistingStore()
    {
        string output = Path.Combine(_dir, "features.db");
        File.WriteAllText(output, "previous store");
        var (dict, cfg) = Dictionary();
        var e = Assert.Throws<IOException>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, Contexts(documents: 20), output,
            new FeatureBuildOptions { BatchSize = 4, MaxDatabasePages = 12 }));
        Assert.Contains(output, e.Message);
        Assert.Contains("disk is full", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal("previous store", File.ReadAllText(output));
        Assert.Equal([output], Directory.GetFileSystemEntries(_dir));
    }

    [Fact]
    public void ABuildIntoAFolderOrDevice_IsRefusedBeforeAnyWork()
    {
        var (dict, cfg) = Dictionary();
        string folder = Path.Combine(_dir, "a-folder");
        Directory.CreateDirectory(folder);
        AssertNames(Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, Contexts(documents: 10), folder)), folder, "is a folder");
        Assert.Empty(Directory.GetFileSystemEntries(folder));
        if (!OperatingSystem.IsWindows())
            AssertNames(Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, Contexts(documents: 10), "/dev/null")), "/dev/null", "not a regular file");
        Assert.Equal([folder], Directory.GetFileSystemEntries(_dir));
    }
}
