using System.Runtime.InteropServices;
using Loupe.Dictionaries.Features;
using Loupe.Models.Loading;
using Microsoft.Data.Sqlite;
using static Loupe.Dictionaries.Tests.Features.FeatureFixture;

namespace Loupe.Dictionaries.Tests.Features;

/// <summary>
/// A feature-store build killed at any batch of either pass continues with <see cref="FeatureBuildOptions.Resume"/> from
/// its checkpoint and writes the store an uninterrupted build writes, row for row; checkpoints of other builds, damaged
/// ones, and a checkpoint met without Resume are refused naming the file and what differs.
/// </summary>
public sealed class FeatureBuildResumeTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-features-resume-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string DbPath(string name) => Path.Combine(_dir, name);

    sealed class Killed : Exception;

    static FeatureBuildOptions Options => new() { BatchSize = 4, TopK = 5, Quantiles = 3, QuantileSamples = 2, HistogramBins = 5, Window = 2, LogitCount = 3 };

    /// <summary>A build that checkpoints after every batch and dies right after batch <paramref name="done"/> of <paramref name="pass"/>.</summary>
    void BuildAndKill(string path, int pass, int done, Loupe.Dictionaries.Harvest.HarvestContexts contexts, FeatureBuildOptions? options = null)
    {
        var (dict, cfg) = Dictionary();
        var o = (options ?? Options) with { CheckpointSeconds = 0, AfterBatch = (p, d) => { if (p == pass && d == done) throw new Killed(); } };
        Assert.Throws<Killed>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, path, o));
        Assert.True(File.Exists(FeatureDashboardBuilder.CheckpointPath(path)), "a killed build leaves its checkpoint");
        Assert.False(File.Exists(path), "a killed build leaves no store");
    }

    [Theory]
    [InlineData(1, 4)]    // after pass 1's first batch
    [InlineData(1, 23)]   // after pass 1's last batch: the checkpoint says pass 2 from context 0
    [InlineData(2, 12)]   // inside pass 2
    public void A_killed_build_resumes_to_the_store_an_uninterrupted_build_writes(int pass, int done)
    {
        var contexts = Contexts(documents: 30);
        Assert.Equal(23, contexts.Count); // batches of 4 end at 4, 8, …, 20, 23
        var (dict, cfg) = Dictionary();
        string reference = DbPath("reference.db"), resumed = DbPath("resumed.db");
        FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, reference, Options with { CheckpointSeconds = null });
        BuildAndKill(resumed, pass, done, contexts);

        var stages = new List<string>();
        var summary = FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, resumed, Options with { Resume = true, CheckpointSeconds = 0 },
            progress: new SyncProgress<FeatureBuildProgress>(p => stages.Add(p.Stage)));
        Assert.Contains(stages, s => s.StartsWith($"resumed at pass {(done == contexts.Count ? 2 : pass)}/2, context {(done == contexts.Count ? 0 : done)} ", StringComparison.Ordinal));
        Assert.False(File.Exists(FeatureDashboardBuilder.CheckpointPath(resumed)), "the checkpoint is deleted once the store is written");
        Assert.Equal(resumed, summary.Path);
        Assert.Equal(Dump(reference), Dump(resumed));
    }

    [Fact]
    public void Resume_without_a_checkpoint_builds_from_the_start()
    {
        var contexts = Contexts(documents: 30);
        var (dict, cfg) = Dictionary();
        FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath("a.db"), Options);
        FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, DbPath("b.db"), Options with { Resume = true });
        Assert.Equal(Dump(DbPath("a.db")), Dump(DbPath("b.db")));
    }

    [Fact]
    public void A_checkpoint_is_never_discarded_silently_nor_continued_with_other_settings()
    {
        var contexts = Contexts(documents: 30);
        var (dict, cfg) = Dictionary();
        string path = DbPath("features.db"), checkpoint = FeatureDashboardBuilder.CheckpointPath(path);
        BuildAndKill(path, 1, 8, contexts);

        var fresh = Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, path, Options));
        Assert.Contains(checkpoint, fresh.Message);
        Assert.Contains("--resume", fresh.Message);

        var top = Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, path, Options with { Resume = true, TopK = 6 }));
        Assert.Contains("top_k: checkpoint has 5, this build has 6", top.Message);
        var corpus = Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, Contexts(documents: 30, seed: 4), path, Options with { Resume = true }));
        Assert.Contains("contexts_sha256", corpus.Message);
        var (other, _) = Dictionary();
        other.P.BEnc[0] += 0.5f;
        Assert.Contains("dictionary_sha256", Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, other, cfg, contexts, path, Options with { Resume = true })).Message);
        Assert.True(File.Exists(checkpoint), "a refused resume leaves the checkpoint as it was");
    }

    public static TheoryData<string, string> Damage => new()
    {
        { "top.count", "'top.count' entry" },
        { "top.heap", "'top.heap' entry" },
        { "top.context", "at context" },
        { "samples.seen", "'samples.seen' entry" },
        { "max", "statistics" },
        { "top.windows", "'top.windows' holds" },
        { "histogram:dtype", "tensor 'histogram'" },
        { "sum:length", "tensor 'sum'" },
        { "n_active:missing", "tensor 'n_active' is missing" },
        { "meta:pass", "checkpoint field 'pass'" },
        { "meta:version", "format_version" },
    };

    [Theory]
    [MemberData(nameof(Damage))]
    public void A_damaged_checkpoint_is_refused_naming_the_file_and_what_is_wrong(string damage, string expected)
    {
        var contexts = Contexts(documents: 30);
        var (dict, cfg) = Dictionary();
        string path = DbPath("features.db"), checkpoint = FeatureDashboardBuilder.CheckpointPath(path);
        BuildAndKill(path, 2, 8, contexts);
        Rewrite(checkpoint, damage);
        var e = Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, path, Options with { Resume = true }));
        Assert.Contains(checkpoint, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void A_truncated_checkpoint_is_refused_naming_the_file()
    {
        var contexts = Contexts(documents: 30);
        var (dict, cfg) = Dictionary();
        string path = DbPath("features.db"), checkpoint = FeatureDashboardBuilder.CheckpointPath(path);
        BuildAndKill(path, 1, 8, contexts);
        var bytes = File.ReadAllBytes(checkpoint);
        File.WriteAllBytes(checkpoint, bytes[..(bytes.Length / 2)]);
        Assert.Contains(checkpoint, Assert.Throws<InputError>(() => FeatureDashboardBuilder.Build(Model, dict, cfg, contexts, path, Options with { Resume = true })).Message);
    }

    /// <summary>Rewrites the checkpoint with one tensor or metadata field damaged.</summary>
    static void Rewrite(string path, string damage)
    {
        var entries = new List<SafeTensorEntry>();
        Dictionary<string, string> metadata;
        using (var file = SafeTensorsFile.Open(path))
        {
            metadata = new Dictionary<string, string>(file.Metadata);
            foreach (var name in file.Names)
            {
                var info = file.GetInfo(name);
                var bytes = file.GetBytes(name).ToArray();
                var (dtype, shape) = (info.DType, info.Shape);
                string target = damage.Split(':')[0], how = damage.Contains(':') ? damage.Split(':')[1] : "value";
                if (name == target)
                {
                    if (how == "missing") continue;
                    if (how == "dtype") dtype = dtype == DType.I64 ? DType.F64 : DType.I64;
                    if (how == "length") { bytes = bytes[..^8]; shape = [shape[0] - 1]; }
                    if (how == "value")
                        switch (name)
                        {
                            case "top.count": MemoryMarshal.Cast<byte, int>(bytes.AsSpan())[0] = 99; break;
                            case "top.heap": MemoryMarshal.Cast<byte, int>(bytes.AsSpan())[0] = -3; break;
                            case "top.context": MemoryMarshal.Cast<byte, int>(bytes.AsSpan())[0] = 1_000_000; break;
                            case "samples.seen": MemoryMarshal.Cast<byte, long>(bytes.AsSpan())[0] = -1; break;
                            case "max": MemoryMarshal.Cast<byte, float>(bytes.AsSpan())[0] = float.NaN; break;
                            case "top.windows": MemoryMarshal.Cast<byte, float>(bytes.AsSpan())[1] = float.PositiveInfinity; break;
                        }
                }
                entries.Add(SafeTensorEntry.Raw(name, dtype, shape, bytes));
            }
        }
        const string key = "loupe_feature_build";
        if (damage == "meta:pass") metadata[key] = metadata[key].Replace("\"pass\":2", "\"pass\":7", StringComparison.Ordinal);
        if (damage == "meta:version") metadata[key] = metadata[key].Replace("\"format_version\":1", "\"format_version\":9", StringComparison.Ordinal);
        SafeTensorsWriter.Write(path, entries, metadata);
    }

    /// <summary>Every row of every table of a store, in rowid order (the creation time left out).</summary>
    static List<string> Dump(string path)
    {
        var rows = new List<string>();
        using var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
        connection.Open();
        var tables = new List<string>();
        using (var list = connection.CreateCommand())
        {
            list.CommandText = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name";
            using var reader = list.ExecuteReader();
            while (reader.Read()) tables.Add(reader.GetString(0));
        }
        foreach (var table in tables)
        {
            using var select = connection.CreateCommand();
            select.CommandText = $"SELECT * FROM \"{table}\" ORDER BY rowid";
            using var reader = select.ExecuteReader();
            while (reader.Read())
            {
                var values = Enumerable.Range(0, reader.FieldCount).Select(i => reader.IsDBNull(i) ? "null"
                    : reader.GetValue(i) is byte[] blob ? Convert.ToHexString(blob) : Convert.ToString(reader.GetValue(i), System.Globalization.CultureInfo.InvariantCulture)).ToArray();
                if (table == "meta" && values[0] == "created_utc") continue;
                rows.Add($"{table}: {string.Join(" | ", values)}");
            }
        }
        Assert.True(rows.Count > 100, $"{path} holds {rows.Count} rows");
        return rows;
    }

    sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
