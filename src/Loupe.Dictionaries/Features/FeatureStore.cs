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

/// <summary>
/// A feature's explanation by one explainer model (<c>loupe explain</c>), with each scorer's metrics
/// (scorer → metric → value, e.g. <c>detection</c> → <c>accuracy</c>).
/// </summary>
public sealed record FeatureExplanation(string ExplainerModel, string Text, string Created, IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> Scores);

/// <summary>One row of a feature's logit table.</summary>
public sealed record LogitRow(int Rank, int TokenId, string? TokenStr, double Value);

/// <summary>
/// Reads a feature store written by <see cref="FeatureDashboardBuilder"/> (read-only). The file comes from
/// outside, so <see cref="Open"/> checks it is SQLite, a Loupe feature store of this schema version with every
/// table and column, and every value read is checked for its type and range: a damaged store fails with an
/// <see cref="InputError"/> naming the file, table, row and column, never with a JSON or cast exception. Every
/// query checks its arguments (feature index against d_sae, counts non-negative).
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
        DSae = Check.InRange(MetaLong("d_sae"), 1, int.MaxValue, MetaWhere, "d_sae");
        Tokens = Meta.ContainsKey("n_tokens") ? MetaLong("n_tokens") : 0;
        Check.InRange(Tokens, 0, long.MaxValue, MetaWhere, "n_tokens");
    }

    public string Path { get; }
    /// <summary>Every key of the <c>meta</c> table.</summary>
    public IReadOnlyDictionary<string, string> Meta { get; }
    public int DSae { get; }
    /// <summary>Tokens the statistics cover.</summary>
    public long Tokens { get; }
    public string Hook => Meta.TryGetValue("hook", out var h) ? h : "";

    string MetaWhere => $"{Path}: table 'meta'";

    /// <summary>SQLite's 16-byte file header, checked before SQLite is given the file.</summary>
    static ReadOnlySpan<byte> SqliteMagic => "SQLite format 3\0"u8;

    /// <summary>Opens a store and checks it is a Loupe feature store of <see cref="FeatureStoreSchema.Version"/> with every table and column.</summary>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="InputError">Not an SQLite file, not a feature store, another schema version, or a table or column missing (the message says which).</exception>
    /// <exception cref="IOException">The file could not be read.</exception>
    public static FeatureStore Open(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new InputError("feature store path: expected a file name, found an empty path");
        string full = System.IO.Path.GetFullPath(path);
        if (!File.Exists(full)) throw new FileNotFoundException($"feature store not found: {full}; build it with `loupe features build`", full);
        InputFiles.EnsureRegularFile(full); // a FIFO would block the header read for ever
        CheckSqliteHeader(full);
        var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = full, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
        try
        {
            db.Open();
            var meta = new Dictionary<string, string>(StringComparer.Ordinal);
            try
            {
                using var cmd = db.CreateCommand();
                cmd.CommandText = "SELECT key, value FROM meta";
                using var r = cmd.ExecuteReader();
                for (int row = 0; r.Read(); row++)
                {
                    var at = new Row(r, $"{full}: table 'meta', row {row}");
                    string key = at.Text(0, "key");
                    meta[key] = new Row(r, $"{full}: table 'meta', key {InputError.Show(key)}").Text(1, "value");
                }
            }
            catch (SqliteException e)
            {
                throw Refusal(full, "meta", e);
            }
            if (!meta.TryGetValue("format", out var format) || format != FeatureStoreSchema.Format)
                throw new InputError($"{full}: not a Loupe feature store (meta 'format' is {(format is null ? "missing" : InputError.Show(format))}, expected '{FeatureStoreSchema.Format}')");
            if (!meta.TryGetValue("schema_version", out var version) || version != FeatureStoreSchema.Version.ToString(CultureInfo.InvariantCulture))
                throw new InputError($"{full}: feature store schema_version is {version ?? "missing"}; this Loupe reads version {FeatureStoreSchema.Version}. Rebuild it with `loupe features build`");
            CheckTables(db, full);
            return new FeatureStore(full, db, meta);
        }
        catch (SqliteException e)
        {
            db.Dispose();
            throw Refusal(full, null, e);
        }
        catch
        {
            db.Dispose();
            throw;
        }
    }

    static void CheckSqliteHeader(string full)
    {
        Span<byte> head = stackalloc byte[16];
        int got;
        using (var f = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
            got = f.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (got < head.Length || !head.SequenceEqual(SqliteMagic))
            throw new InputError($"{full}: not a readable Loupe feature store: expected an SQLite file (header \"SQLite format 3\"), found {(got == 0 ? "an empty file" : "other bytes")}; build it with `loupe features build`");
    }

    /// <summary>Every table and column this reader queries, so a damaged schema is named at open and not as a failed query later.</summary>
    static void CheckTables(SqliteConnection db, string full)
    {
        foreach (var (table, columns) in FeatureStoreSchema.Columns)
        {
            var present = new HashSet<string>(StringComparer.Ordinal);
            using (var cmd = db.CreateCommand())
            {
                cmd.CommandText = $"SELECT name FROM pragma_table_info('{table}')";
                using var r = cmd.ExecuteReader();
                while (r.Read()) if (!r.IsDBNull(0)) present.Add(r.GetString(0));
            }
            if (present.Count == 0) throw new InputError($"{full}: table '{table}': missing; the store is damaged — rebuild it with `loupe features build`");
            foreach (var c in columns)
                if (!present.Contains(c)) throw new InputError($"{full}: table '{table}': column '{c}' missing; the store is damaged — rebuild it with `loupe features build`");
        }
    }

    /// <summary>
    /// An SQLite failure as the CLI reports it: a damaged or foreign file is bad input (<see cref="InputError"/>);
    /// a failing disk, a lock or memory is the environment (<see cref="IOException"/>).
    /// </summary>
    static Exception Refusal(string full, string? table, SqliteException e)
    {
        string where = table is null ? full : $"{full}: table '{table}'";
        string what = e.Message.ReplaceLineEndings(" ").TrimEnd('.');
        return (e.SqliteErrorCode & 0xFF) switch
        {
            // SQLITE_PERM, BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN
            3 or 5 or 6 or 7 or 8 or 10 or 13 or 14 => new IOException($"{where}: reading the feature store failed ({what})", e),
            _ => new InputError($"{where}: not a readable Loupe feature store ({what}); it may be damaged — rebuild it with `loupe features build`", e),
        };
    }

    long MetaLong(string key) =>
        Meta.TryGetValue(key, out var v) && long.TryParse(v, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long i) ? i
            : throw new InputError($"{MetaWhere}: key '{key}': expected an integer, found {(v is null ? "nothing (missing)" : InputError.Show(v))}");

    /// <summary>Refuses a feature index outside 0..d_sae−1.</summary>
    /// <exception cref="InputError">The feature is outside 0..d_sae−1 (the message names the argument and d_sae).</exception>
    public void CheckFeature(int feature)
    {
        if ((uint)feature >= (uint)DSae)
            throw InputError.Expected("argument", "feature", $"an index in [0, {DSae - 1}] (this dictionary has d_sae = {DSae} features)", feature);
    }

    static void CheckCount(int value, string name)
    {
        if (value < 0) throw InputError.Expected("argument", name, "0 or more", value);
    }

    static void CheckKind(string kind, string name, params string[] allowed)
    {
        if (!allowed.Contains(kind))
            throw InputError.Expected("argument", name, string.Join(" or ", allowed.Select(a => $"'{a}'")), kind);
    }

    /// <summary>The feature's statistics.</summary>
    /// <exception cref="InputError">The feature is outside 0..d_sae−1, or its row is missing or damaged.</exception>
    public FeatureSummary Feature(int feature)
    {
        CheckFeature(feature);
        return Query("features", $"feature {feature}", "SELECT feature, n_active, density, max_act, mean_act, decoder_norm FROM features WHERE feature = $f", ReadSummary, ("$f", feature))
            .SingleOrDefault() ?? throw new InputError($"{Path}: table 'features': no row for feature {feature}; the store is damaged — rebuild it with `loupe features build`");
    }

    /// <summary>Features ordered by <paramref name="orderBy"/> ("density", "max_act" or "feature"), largest first (feature ascending).</summary>
    /// <exception cref="InputError">Unknown order, a negative limit or offset, or a damaged row.</exception>
    public IReadOnlyList<FeatureSummary> Features(string orderBy = "density", int limit = int.MaxValue, int offset = 0)
    {
        string order = orderBy switch
        {
            "density" => "density DESC, feature",
            "max_act" or "max" => "max_act DESC, feature",
            "feature" => "feature",
            _ => throw InputError.Expected("argument", "order", "density, max_act or feature", orderBy),
        };
        CheckCount(limit, "limit");
        CheckCount(offset, "offset");
        return Query("features", "ordered", $"SELECT feature, n_active, density, max_act, mean_act, decoder_norm FROM features ORDER BY {order} LIMIT $n OFFSET $o",
            ReadSummary, ("$n", limit), ("$o", offset));
    }

    /// <summary>Number of dead features (never active).</summary>
    public int DeadFeatures() => Query("features", "count", "SELECT COUNT(*) FROM features WHERE n_active = 0", r => r.Int(0, "COUNT(*)", 0, int.MaxValue)).Single();

    /// <summary>Examples of <paramref name="kind"/> (<c>top</c> or <c>quantile</c>), by interval then rank.</summary>
    /// <exception cref="InputError">The feature is outside 0..d_sae−1, the kind is unknown, the limit negative, or a row is damaged.</exception>
    public IReadOnlyList<FeatureExample> Examples(int feature, string kind = FeatureStoreSchema.Top, int limit = int.MaxValue)
    {
        CheckFeature(feature);
        CheckKind(kind, "kind", FeatureStoreSchema.Top, FeatureStoreSchema.Quantile);
        CheckCount(limit, "limit");
        return Query("examples", $"feature {feature}, kind '{kind}'", """
            SELECT e.kind, e.bin, e.rank, e.context_id, e.position, e.activation, c.tokens, e.window_start, e.window_acts
            FROM examples e JOIN contexts c ON c.id = e.context_id
            WHERE e.feature = $f AND e.kind = $k
            ORDER BY e.bin DESC, e.rank LIMIT $n
            """,
            r =>
            {
                int contextId = r.Int(3, "context_id", 0, int.MaxValue);
                int[] tokens = r.Json<int[]>(6, "tokens", $"table 'contexts', id {contextId}");
                int position = r.Int(4, "position", 0, tokens.Length - 1);
                var blob = r.Blob(8, "window_acts");
                if (blob.Length % 4 != 0) throw r.Bad("window_acts", "a blob of float32 values (a multiple of 4 bytes)", $"{blob.Length} bytes");
                int windowStart = r.Int(7, "window_start", 0, position);
                var acts = new float[blob.Length / 4];
                if (acts.Length > tokens.Length - windowStart)
                    throw r.Bad("window_acts", $"at most {tokens.Length - windowStart} values (the context has {tokens.Length} tokens from window_start {windowStart})", acts.Length);
                for (int j = 0; j < acts.Length; j++)
                {
                    acts[j] = BinaryPrimitives.ReadSingleLittleEndian(blob.AsSpan(j * 4));
                    if (!float.IsFinite(acts[j])) throw r.Bad("window_acts", "finite activations", $"{InputError.Show(acts[j])} at index {j}");
                }
                return new FeatureExample(r.Text(0, "kind"), r.NullableInt(1, "bin", 0, int.MaxValue), r.Int(2, "rank", 0, int.MaxValue), contextId, position,
                    r.Finite(5, "activation"), tokens, windowStart, acts);
            },
            ("$f", feature), ("$k", kind), ("$n", limit));
    }

    /// <summary>The feature's activation intervals (SAEDashboard's quantile groups), highest first.</summary>
    /// <exception cref="InputError">The feature is outside 0..d_sae−1, or a row is damaged.</exception>
    public IReadOnlyList<QuantileInterval> Intervals(int feature)
    {
        CheckFeature(feature);
        return Query("quantile_intervals", $"feature {feature}", "SELECT bin, lower, upper, n_active FROM quantile_intervals WHERE feature = $f ORDER BY bin DESC",
            r => new QuantileInterval(r.Int(0, "bin", 0, int.MaxValue), r.Finite(1, "lower"), r.Finite(2, "upper"), r.Long(3, "n_active", 0, long.MaxValue)), ("$f", feature));
    }

    /// <summary>The feature's histogram of <paramref name="kind"/> (<c>acts</c> or <c>logits</c>), or null (dead feature / no logit effects).</summary>
    /// <exception cref="InputError">The feature is outside 0..d_sae−1, the kind is unknown, or the row is damaged (malformed JSON, counts not matching the edges).</exception>
    public FeatureHistogram? Histogram(int feature, string kind = FeatureStoreSchema.ActsHistogram)
    {
        CheckFeature(feature);
        CheckKind(kind, "kind", FeatureStoreSchema.ActsHistogram, FeatureStoreSchema.LogitsHistogram);
        return Query("histograms", $"feature {feature}, kind '{kind}'", "SELECT bin_edges, counts FROM histograms WHERE feature = $f AND kind = $k",
            r =>
            {
                var edges = r.Json<double[]>(0, "bin_edges");
                var counts = r.Json<long[]>(1, "counts");
                if (edges.Length < 2 || counts.Length != edges.Length - 1)
                    throw r.Bad("counts", $"one count per bin (bin_edges has {edges.Length} edges)", $"{counts.Length} counts");
                for (int i = 0; i < edges.Length; i++)
                    if (!double.IsFinite(edges[i]) || (i > 0 && edges[i] < edges[i - 1]))
                        throw r.Bad("bin_edges", "finite, non-decreasing edges", $"{InputError.Show(edges[i])} at index {i}");
                for (int i = 0; i < counts.Length; i++)
                    if (counts[i] < 0) throw r.Bad("counts", "counts ≥ 0", $"{counts[i]} at index {i}");
                return new FeatureHistogram(edges, counts);
            },
            ("$f", feature), ("$k", kind)).SingleOrDefault();
    }

    /// <summary>The feature's logit table of <paramref name="kind"/> (<c>promoted</c> or <c>suppressed</c>), by rank.</summary>
    /// <exception cref="InputError">The feature is outside 0..d_sae−1, the kind is unknown, or a row is damaged.</exception>
    public IReadOnlyList<LogitRow> Logits(int feature, string kind)
    {
        CheckFeature(feature);
        CheckKind(kind, "kind", FeatureStoreSchema.Promoted, FeatureStoreSchema.Suppressed);
        return Query("logits", $"feature {feature}, kind '{kind}'", "SELECT rank, token_id, token_str, value FROM logits WHERE feature = $f AND kind = $k ORDER BY rank",
            r => new LogitRow(r.Int(0, "rank", 0, int.MaxValue), r.Int(1, "token_id", 0, int.MaxValue), r.NullableText(2, "token_str"), r.Finite(3, "value")),
            ("$f", feature), ("$k", kind));
    }

    /// <summary>
    /// Features whose top examples sit on <paramref name="tokenId"/> (the example token itself), with how many of
    /// their top examples do and the largest such activation; most examples first.
    /// </summary>
    /// <exception cref="InputError">A negative token id or limit, or a damaged row.</exception>
    public IReadOnlyList<(int Feature, int Examples, double MaxActivation)> FeaturesWithTopToken(int tokenId, int limit)
    {
        CheckCount(tokenId, "token");
        CheckCount(limit, "limit");
        return Query("examples", $"token {tokenId}", """
            SELECT e.feature, COUNT(*), MAX(e.activation)
            FROM examples e JOIN contexts c ON c.id = e.context_id
            WHERE e.kind = 'top' AND json_extract(c.tokens, '$[' || e.position || ']') = $t
            GROUP BY e.feature ORDER BY COUNT(*) DESC, MAX(e.activation) DESC, e.feature LIMIT $n
            """,
            r => (r.Int(0, "feature", 0, int.MaxValue), r.Int(1, "COUNT(*)", 0, int.MaxValue), r.Finite(2, "activation")), ("$t", tokenId), ("$n", limit));
    }

    /// <summary>A token's text from the vocab table, or null when the store has none for it.</summary>
    public string? TokenText(int tokenId)
    {
        if (!_vocabLoaded)
        {
            foreach (var (id, s) in Query("vocab", "vocabulary", "SELECT token_id, token_str FROM vocab", r => (r.Int(0, "token_id", 0, int.MaxValue), r.Text(1, "token_str")))) _vocab[id] = s;
            _vocabLoaded = true;
        }
        return _vocab.TryGetValue(tokenId, out var text) ? text : null;
    }

    /// <summary>
    /// The feature's explanations (one per explainer model, by model name) with their scores; empty when the store
    /// has none (stores written before <c>loupe explain</c> have no explanation tables).
    /// </summary>
    /// <exception cref="InputError">The feature is outside 0..d_sae−1, or a row is damaged.</exception>
    public IReadOnlyList<FeatureExplanation> Explanations(int feature)
    {
        CheckFeature(feature);
        if (!HasTable("explanations")) return [];
        var scores = new Dictionary<string, Dictionary<string, Dictionary<string, double>>>(StringComparer.Ordinal);
        if (HasTable("explanation_scores"))
            foreach (var (model, scorer, metric, value) in Query("explanation_scores", $"feature {feature}",
                "SELECT explainer_model, scorer, metric, value FROM explanation_scores WHERE feature = $f ORDER BY explainer_model, scorer, metric",
                r => (r.Text(0, "explainer_model"), r.Text(1, "scorer"), r.Text(2, "metric"), r.Finite(3, "value")), ("$f", feature)))
            {
                if (!scores.TryGetValue(model, out var byScorer)) scores[model] = byScorer = new(StringComparer.Ordinal);
                if (!byScorer.TryGetValue(scorer, out var metrics)) byScorer[scorer] = metrics = new(StringComparer.Ordinal);
                metrics[metric] = value;
            }
        return Query("explanations", $"feature {feature}", "SELECT explainer_model, text, created FROM explanations WHERE feature = $f ORDER BY explainer_model",
            r =>
            {
                string model = r.Text(0, "explainer_model");
                IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> s = scores.TryGetValue(model, out var byScorer)
                    ? byScorer.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, double>)kv.Value, StringComparer.Ordinal)
                    : new Dictionary<string, IReadOnlyDictionary<string, double>>();
                return new FeatureExplanation(model, r.Text(1, "text"), r.Text(2, "created"), s);
            },
            ("$f", feature));
    }

    bool HasTable(string table) =>
        Query("sqlite_master", "tables", "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $t", r => r.Long(0, "COUNT(*)", 0, long.MaxValue), ("$t", table)).Single() > 0;

    List<T> Query<T>(string table, string rows, string sql, Func<Row, T> read, params (string Name, object Value)[] args)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = sql;
            foreach (var (name, value) in args) cmd.Parameters.AddWithValue(name, value);
            using var r = cmd.ExecuteReader();
            var result = new List<T>();
            for (int i = 0; r.Read(); i++) result.Add(read(new Row(r, $"{Path}: table '{table}', {rows}, row {i}")));
            return result;
        }
        catch (SqliteException e)
        {
            throw Refusal(Path, table, e);
        }
    }

    static FeatureSummary ReadSummary(Row r) =>
        new(r.Int(0, "feature", 0, int.MaxValue), r.Long(1, "n_active", 0, long.MaxValue), r.Finite(2, "density", 0, 1), r.Finite(3, "max_act"),
            r.IsNull(4) ? null : r.Finite(4, "mean_act"), r.Finite(5, "decoder_norm", 0, double.PositiveInfinity));

    public void Dispose() => _db.Dispose();

    /// <summary>
    /// One result row, read with its SQLite storage class checked (SQLite converts silently otherwise: text
    /// read as an integer is 0) and each value's range checked; failures name the file, table, row and column.
    /// </summary>
    readonly struct Row(SqliteDataReader r, string where)
    {
        public InputError Bad(string column, string expected, object? found) =>
            new($"{where}, column '{column}': expected {expected}, found {(found is string s ? s : InputError.Show(found))}");

        public bool IsNull(int i) => r.IsDBNull(i);

        string Found(int i) => r.IsDBNull(i) ? "NULL" : r.GetFieldType(i) switch
        {
            var t when t == typeof(string) => "text " + InputError.Show(r.GetString(i)),
            var t when t == typeof(byte[]) => "a blob",
            var t when t == typeof(double) => "real " + InputError.Show(r.GetDouble(i)),
            _ => "integer " + InputError.Show(r.GetInt64(i)),
        };

        public long Long(int i, string column, long min, long max)
        {
            if (r.IsDBNull(i) || r.GetFieldType(i) != typeof(long)) throw Bad(column, "an integer", Found(i));
            long v = r.GetInt64(i);
            if (v < min || v > max) throw Bad(column, max == long.MaxValue ? $"an integer ≥ {min}" : $"an integer in [{min}, {max}]", v);
            return v;
        }

        public int Int(int i, string column, long min, long max) => (int)Long(i, column, min, Math.Min(max, int.MaxValue));

        public int? NullableInt(int i, string column, long min, long max) => r.IsDBNull(i) ? null : Int(i, column, min, max);

        public double Finite(int i, string column, double min = double.NegativeInfinity, double max = double.PositiveInfinity)
        {
            var type = r.IsDBNull(i) ? null : r.GetFieldType(i);
            if (type != typeof(double) && type != typeof(long)) throw Bad(column, "a number", Found(i));
            double v = r.GetDouble(i);
            if (!double.IsFinite(v) || v < min || v > max)
                throw Bad(column, (double.IsNegativeInfinity(min), double.IsPositiveInfinity(max)) switch
                {
                    (true, true) => "a finite number",
                    (false, true) => $"a finite number ≥ {InputError.Show(min)}",
                    _ => $"a finite number in [{InputError.Show(min)}, {InputError.Show(max)}]",
                }, v);
            return v;
        }

        public string Text(int i, string column)
        {
            if (r.IsDBNull(i) || r.GetFieldType(i) != typeof(string)) throw Bad(column, "text", Found(i));
            return r.GetString(i);
        }

        public string? NullableText(int i, string column) => r.IsDBNull(i) ? null : Text(i, column);

        public byte[] Blob(int i, string column)
        {
            if (r.IsDBNull(i) || r.GetFieldType(i) != typeof(byte[])) throw Bad(column, "a blob", Found(i));
            return (byte[])r.GetValue(i);
        }

        /// <summary>A JSON array in a text column; <paramref name="source"/> names the table when the column was joined from another.</summary>
        public T Json<T>(int i, string column, string? source = null) where T : class
        {
            string text = Text(i, column);
            string at = source is null ? $"{where}, column '{column}'" : $"{where}, column '{column}' of {source}";
            string expected = typeof(T) == typeof(double[]) ? "a JSON array of numbers" : "a JSON array of integers";
            try
            {
                JsonInput.Validate(System.Text.Encoding.UTF8.GetBytes(text), at, maxDepth: 4);
                return JsonSerializer.Deserialize<T>(text, s_json) ?? throw new InputError($"{at}: expected {expected}, found null");
            }
            catch (JsonException e)
            {
                throw new InputError($"{at}: expected {expected}, found malformed JSON or an out-of-range value ({e.Message.ReplaceLineEndings(" ")})", e);
            }
        }
    }

    static readonly JsonSerializerOptions s_json = new() { MaxDepth = 4 };
}
