using System.Buffers.Binary;
using System.Globalization;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Loupe.Dictionaries.Features;

/// <summary>
/// One feature's row of the <c>features</c> table: active-token count, density (fraction of tokens with
/// activation &gt; 0), max activation, mean activation over active tokens (null for a dead feature) and ‖W_dec[f]‖.
/// </summary>
public sealed record FeatureSummary(int Feature, long NActive, double Density, double MaxAct, double? MeanAct, double DecoderNorm);

/// <summary>
/// An example token of a feature: its kind (<c>top</c> or <c>quantile</c>), quantile interval (null for top
/// examples), 0-based rank within its group (highest activation first), context id, position in the context,
/// activation, the whole context's token ids, and the feature's activations over a window of the context
/// starting at position <c>WindowStart</c> (0 at a skipped BOS).
/// </summary>
public sealed record FeatureExample(string Kind, int? Bin, int Rank, int ContextId, int Position, double Activation,
    int[] ContextTokens, int WindowStart, float[] WindowActs)
{
    /// <summary>Token ids of the window, aligned with <see cref="WindowActs"/>.</summary>
    public int[] WindowTokens => ContextTokens[WindowStart..(WindowStart + WindowActs.Length)];
}

/// <summary>One activation interval of a feature and how many tokens fell in it.</summary>
public sealed record QuantileInterval(int Bin, double Lower, double Upper, long NActive);

/// <summary>A histogram: <c>Counts[k]</c> tokens in (<c>Edges[k]</c>, <c>Edges[k+1]</c>].</summary>
public sealed record FeatureHistogram(double[] Edges, long[] Counts);

/// <summary>One row of a feature's logit table.</summary>
public sealed record LogitRow(int Rank, int TokenId, string? TokenStr, double Value);

/// <summary>
/// Reads a feature store written by <see cref="FeatureDashboardBuilder"/> (read-only). Every query
/// checks the feature index against d_sae.
/// </summary>
public sealed class FeatureStore : IDisposable
{
    readonly SqliteConnection _db;
    readonly Dictionary<int, string> _vocab = [];
    bool _vocabLoaded;

    FeatureStore(string path, SqliteConnection db, IReadOnlyDictionary<string, string> meta)
    {
        Path = path;
        _db = db;
        Meta = meta;
        DSae = MetaInt("d_sae");
        Tokens = long.Parse(Meta.TryGetValue("n_tokens", out var t) ? t : "0", CultureInfo.InvariantCulture);
    }

    public string Path { get; }
    /// <summary>Every key of the <c>meta</c> table.</summary>
    public IReadOnlyDictionary<string, string> Meta { get; }
    public int DSae { get; }
    /// <summary>Tokens the statistics cover.</summary>
    public long Tokens { get; }
    public string Hook => Meta.TryGetValue("hook", out var h) ? h : "";

    /// <summary>Opens a store and checks it is a Loupe feature store of <see cref="FeatureStoreSchema.Version"/>.</summary>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="InvalidDataException">Not an SQLite file, not a feature store, or another schema version (the message says which).</exception>
    public static FeatureStore Open(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (!File.Exists(full)) throw new FileNotFoundException($"feature store not found: {full}; build it with `loupe features build`", full);
        var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = full, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
        try
        {
            db.Open();
            var meta = new Dictionary<string, string>(StringComparer.Ordinal);
            using (var cmd = db.CreateCommand())
            {
                cmd.CommandText = "SELECT key, value FROM meta";
                using var r = cmd.ExecuteReader();
                while (r.Read()) meta[r.GetString(0)] = r.GetString(1);
            }
            if (!meta.TryGetValue("format", out var format) || format != FeatureStoreSchema.Format)
                throw new InvalidDataException($"{full}: not a Loupe feature store (meta 'format' is {(format is null ? "missing" : $"'{format}'")}, expected '{FeatureStoreSchema.Format}')");
            if (!meta.TryGetValue("schema_version", out var version) || version != FeatureStoreSchema.Version.ToString(CultureInfo.InvariantCulture))
                throw new InvalidDataException($"{full}: feature store schema_version is {version ?? "missing"}; this Loupe reads version {FeatureStoreSchema.Version}. Rebuild it with `loupe features build`");
            return new FeatureStore(full, db, meta);
        }
        catch (SqliteException e)
        {
            db.Dispose();
            throw new InvalidDataException($"{full}: not a readable Loupe feature store ({e.Message.TrimEnd('.')})", e);
        }
        catch
        {
            db.Dispose();
            throw;
        }
    }

    int MetaInt(string key) =>
        Meta.TryGetValue(key, out var v) && int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i) ? i
            : throw new InvalidDataException($"{Path}: meta '{key}' is {(v is null ? "missing" : $"'{v}'")}; expected an integer");

    /// <exception cref="ArgumentOutOfRangeException">The feature is outside 0..d_sae−1.</exception>
    public void CheckFeature(int feature)
    {
        if ((uint)feature >= (uint)DSae)
            throw new ArgumentOutOfRangeException(null, $"feature {feature} is out of range: this dictionary has d_sae = {DSae} features (0..{DSae - 1})");
    }

    /// <summary>The feature's statistics.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The feature is outside 0..d_sae−1.</exception>
    public FeatureSummary Feature(int feature)
    {
        CheckFeature(feature);
        return Query("SELECT feature, n_active, density, max_act, mean_act, decoder_norm FROM features WHERE feature = $f", ReadSummary, ("$f", feature))
            .SingleOrDefault() ?? throw new InvalidDataException($"{Path}: no row for feature {feature} in table 'features'");
    }

    /// <summary>Features ordered by <paramref name="orderBy"/> ("density", "max_act" or "feature"), largest first (feature ascending).</summary>
    /// <exception cref="ArgumentException">Unknown order.</exception>
    public IReadOnlyList<FeatureSummary> Features(string orderBy = "density", int limit = int.MaxValue, int offset = 0)
    {
        string order = orderBy switch
        {
            "density" => "density DESC, feature",
            "max_act" or "max" => "max_act DESC, feature",
            "feature" => "feature",
            _ => throw new ArgumentException($"unknown order '{orderBy}'; use density, max_act or feature", nameof(orderBy)),
        };
        return Query($"SELECT feature, n_active, density, max_act, mean_act, decoder_norm FROM features ORDER BY {order} LIMIT $n OFFSET $o",
            ReadSummary, ("$n", limit), ("$o", offset));
    }

    /// <summary>Number of dead features (never active).</summary>
    public int DeadFeatures() => Query("SELECT COUNT(*) FROM features WHERE n_active = 0", r => r.GetInt32(0)).Single();

    /// <summary>Examples of <paramref name="kind"/> (<c>top</c> or <c>quantile</c>), by interval then rank.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The feature is outside 0..d_sae−1.</exception>
    public IReadOnlyList<FeatureExample> Examples(int feature, string kind = FeatureStoreSchema.Top, int limit = int.MaxValue)
    {
        CheckFeature(feature);
        return Query("""
            SELECT e.kind, e.bin, e.rank, e.context_id, e.position, e.activation, c.tokens, e.window_start, e.window_acts
            FROM examples e JOIN contexts c ON c.id = e.context_id
            WHERE e.feature = $f AND e.kind = $k
            ORDER BY e.bin DESC, e.rank LIMIT $n
            """,
            r =>
            {
                var blob = (byte[])r.GetValue(8);
                var acts = new float[blob.Length / 4];
                for (int j = 0; j < acts.Length; j++) acts[j] = BinaryPrimitives.ReadSingleLittleEndian(blob.AsSpan(j * 4));
                return new FeatureExample(r.GetString(0), r.IsDBNull(1) ? null : r.GetInt32(1), r.GetInt32(2), r.GetInt32(3), r.GetInt32(4),
                    r.GetDouble(5), JsonSerializer.Deserialize<int[]>(r.GetString(6))!, r.GetInt32(7), acts);
            },
            ("$f", feature), ("$k", kind), ("$n", limit));
    }

    /// <summary>The feature's activation intervals (SAEDashboard's quantile groups), highest first.</summary>
    public IReadOnlyList<QuantileInterval> Intervals(int feature)
    {
        CheckFeature(feature);
        return Query("SELECT bin, lower, upper, n_active FROM quantile_intervals WHERE feature = $f ORDER BY bin DESC",
            r => new QuantileInterval(r.GetInt32(0), r.GetDouble(1), r.GetDouble(2), r.GetInt64(3)), ("$f", feature));
    }

    /// <summary>The feature's histogram of <paramref name="kind"/> (<c>acts</c> or <c>logits</c>), or null (dead feature / no logit effects).</summary>
    public FeatureHistogram? Histogram(int feature, string kind = FeatureStoreSchema.ActsHistogram)
    {
        CheckFeature(feature);
        return Query("SELECT bin_edges, counts FROM histograms WHERE feature = $f AND kind = $k",
            r => new FeatureHistogram(JsonSerializer.Deserialize<double[]>(r.GetString(0))!, JsonSerializer.Deserialize<long[]>(r.GetString(1))!),
            ("$f", feature), ("$k", kind)).SingleOrDefault();
    }

    /// <summary>The feature's logit table of <paramref name="kind"/> (<c>promoted</c> or <c>suppressed</c>), by rank.</summary>
    public IReadOnlyList<LogitRow> Logits(int feature, string kind)
    {
        CheckFeature(feature);
        return Query("SELECT rank, token_id, token_str, value FROM logits WHERE feature = $f AND kind = $k ORDER BY rank",
            r => new LogitRow(r.GetInt32(0), r.GetInt32(1), r.IsDBNull(2) ? null : r.GetString(2), r.GetDouble(3)), ("$f", feature), ("$k", kind));
    }

    /// <summary>A token's text from the vocab table, or null when the store has none for it.</summary>
    public string? TokenText(int tokenId)
    {
        if (!_vocabLoaded)
        {
            foreach (var (id, s) in Query("SELECT token_id, token_str FROM vocab", r => (r.GetInt32(0), r.GetString(1)))) _vocab[id] = s;
            _vocabLoaded = true;
        }
        return _vocab.TryGetValue(tokenId, out var text) ? text : null;
    }

    List<T> Query<T>(string sql, Func<SqliteDataReader, T> read, params (string Name, object Value)[] args)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = sql;
            foreach (var (name, value) in args) cmd.Parameters.AddWithValue(name, value);
            using var r = cmd.ExecuteReader();
            var result = new List<T>();
            while (r.Read()) result.Add(read(r));
            return result;
        }
        catch (SqliteException e)
        {
            throw new InvalidDataException($"{Path}: query failed ({e.Message.TrimEnd('.')}); the store may be damaged — rebuild it with `loupe features build`", e);
        }
    }

    static FeatureSummary ReadSummary(SqliteDataReader r) =>
        new(r.GetInt32(0), r.GetInt64(1), r.GetDouble(2), r.GetDouble(3), r.IsDBNull(4) ? null : r.GetDouble(4), r.GetDouble(5));

    public void Dispose() => _db.Dispose();
}
