using System.Buffers.Binary;
using System.Text.Json;
using Loupe.Tokenizers;
using Microsoft.Data.Sqlite;

namespace Loupe.Dictionaries.Features;

/// <summary>
/// Writes a <see cref="CollectedFeatures"/> into a SQLite feature store, atomically:
/// 1. create <c>&lt;out&gt;.tmp-XXXXXXXX</c> beside the output (no journal: the file is private until renamed);
/// 2. in one transaction, insert meta, features, the contexts the examples cite, the examples, interval
///    counts, histograms, logit tables and the vocabulary strings, then build the indexes;
/// 3. flush the file to disk and rename it over the output (only ever over a regular file).
/// On any failure or cancellation the temporary file is deleted and an existing output is untouched; a
/// full disk or a failing write is reported as one <see cref="IOException"/> naming the output.
/// </summary>
static class FeatureStoreWriter
{
    /// <summary>
    /// Writes the store; returns the number of contexts and example rows written. <paramref name="maxPages"/> is a
    /// test seam: it caps the database at that many pages, so SQLite fails with SQLITE_FULL as on a full disk.
    /// </summary>
    /// <exception cref="InputError">The output path names something other than a regular file.</exception>
    /// <exception cref="IOException">The disk is full or a write failed; nothing was left behind.</exception>
    public static (int Contexts, long Examples) Write(string outputPath, CollectedFeatures data, CancellationToken cancellationToken, long? maxPages = null)
    {
        string full = Path.GetFullPath(outputPath);
        OutputFiles.EnsureReplaceable(full);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string temp = OutputFiles.TempPathFor(full);
        try
        {
            (int, long) counts;
            var cs = new SqliteConnectionStringBuilder { DataSource = temp, Mode = SqliteOpenMode.ReadWriteCreate, Pooling = false }.ToString();
            using (var db = new SqliteConnection(cs))
            {
                db.Open();
                Exec(db, "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = MEMORY;");
                if (maxPages is long pages) Exec(db, $"PRAGMA max_page_count = {pages}");
                using var tx = db.BeginTransaction();
                Exec(db, FeatureStoreSchema.CreateTables);
                counts = Insert(db, data, cancellationToken);
                Exec(db, FeatureStoreSchema.CreateIndexes);
                tx.Commit();
            }
            using (var fs = new FileStream(temp, FileMode.Open, FileAccess.ReadWrite)) fs.Flush(flushToDisk: true);
            cancellationToken.ThrowIfCancellationRequested();
            OutputFiles.Replace(temp, full);
            return counts;
        }
        catch (SqliteException e) when (e.SqliteErrorCode is 13 or 10) // SQLITE_FULL, SQLITE_IOERR
        {
            throw new IOException($"{full}: writing the feature store failed: {(e.SqliteErrorCode == 13 ? "the disk is full" : "a write failed")} ({e.Message.ReplaceLineEndings(" ").TrimEnd('.')}); " +
                "the partial file was removed and any existing store is unchanged", e);
        }
        catch (IOException e) when (!e.Message.StartsWith(full, StringComparison.Ordinal))
        {
            throw new IOException($"{full}: writing the feature store failed ({e.Message.TrimEnd('.')}); the partial file was removed and any existing store is unchanged", e);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    static void Exec(SqliteConnection db, string sql)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    /// <summary>A prepared INSERT with positional parameters $p0…$pN.</summary>
    sealed class Insertion : IDisposable
    {
        readonly SqliteCommand _cmd;
        readonly SqliteParameter[] _p;

        public Insertion(SqliteConnection db, string table, params string[] columns)
        {
            _cmd = db.CreateCommand();
            _cmd.CommandText = $"INSERT INTO {table} ({string.Join(", ", columns)}) VALUES ({string.Join(", ", columns.Select((_, i) => "$p" + i))})";
            _p = columns.Select((_, i) => _cmd.Parameters.Add(new SqliteParameter("$p" + i, null))).ToArray();
            _cmd.Prepare();
        }

        public void Run(params object?[] values)
        {
            for (int i = 0; i < _p.Length; i++) _p[i].Value = values[i] ?? DBNull.Value;
            _cmd.ExecuteNonQuery();
        }

        public void Dispose() => _cmd.Dispose();
    }

    static (int Contexts, long Examples) Insert(SqliteConnection db, CollectedFeatures d, CancellationToken ct)
    {
        using (var meta = new Insertion(db, "meta", "key", "value"))
            foreach (var (k, v) in d.Meta.OrderBy(kv => kv.Key, StringComparer.Ordinal)) meta.Run(k, v);

        using (var features = new Insertion(db, "features", "feature", "n_active", "density", "max_act", "mean_act", "decoder_norm"))
            for (int f = 0; f < d.DSae; f++)
            {
                long n = d.NActive[f];
                features.Run(f, n, d.Tokens == 0 ? 0.0 : (double)n / d.Tokens, (double)d.Max[f], n == 0 ? null : d.Sum[f] / n, (double)d.DecoderNorm[f]);
            }

        // The contexts the examples cite, stored before the examples that reference them.
        var cited = new SortedSet<int>();
        foreach (var slots in new[] { d.Top.Slots, d.Samples.Slots })
            for (int g = 0; g < slots.Count.Length; g++)
                for (int i = 0; i < slots.Count[g]; i++) cited.Add(slots.Context[g * slots.Capacity + i]);
        using (var contexts = new Insertion(db, "contexts", "id", "tokens"))
            foreach (int c in cited) contexts.Run(c, "[" + string.Join(",", d.Contexts.Contexts[c]) + "]");

        long examples = 0;
        int W = 2 * d.Window + 1, Q = d.Quantiles, B = d.Bins;
        using (var ex = new Insertion(db, "examples", "feature", "kind", "bin", "rank", "context_id", "position", "activation", "window_start", "window_acts"))
        using (var intervals = new Insertion(db, "quantile_intervals", "feature", "bin", "lower", "upper", "n_active"))
        using (var hist = new Insertion(db, "histograms", "feature", "kind", "bin_edges", "counts"))
        {
            for (int f = 0; f < d.DSae; f++)
            {
                if ((f & 255) == 0) ct.ThrowIfCancellationRequested();
                var top = d.Top.Slots.Sorted(f);
                for (int r = 0; r < top.Length; r++) Example(ex, d.Top.Slots, top[r], f, FeatureStoreSchema.Top, null, r);
                if (d.NActive[f] == 0 || d.Max[f] == 0) continue;
                var qEdges = ActivationBins.Edges(d.Max[f], Q);
                for (int q = 0; q < Q; q++)
                {
                    int g = f * Q + q;
                    intervals.Run(f, q, qEdges[q], qEdges[q + 1], d.Samples.Seen[g]);
                    var sampled = d.Samples.Slots.Sorted(g);
                    for (int r = 0; r < sampled.Length; r++) Example(ex, d.Samples.Slots, sampled[r], f, FeatureStoreSchema.Quantile, q, r);
                }
                hist.Run(f, FeatureStoreSchema.ActsHistogram, JsonSerializer.Serialize(ActivationBins.Edges(d.Max[f], B)),
                    JsonSerializer.Serialize(d.Histogram.AsSpan(f * B, B).ToArray()));
            }
            if (d.Logits is not null)
                for (int f = 0; f < d.DSae; f++)
                    hist.Run(f, FeatureStoreSchema.LogitsHistogram, JsonSerializer.Serialize(d.Logits[f].HistogramEdges), JsonSerializer.Serialize(d.Logits[f].HistogramCounts));
        }

        ct.ThrowIfCancellationRequested();
        // Every token id's text, once (null where the tokenizer has no such id, or no tokenizer).
        var text = new string?[d.VocabSize];
        if (d.Tokenizer is not null)
            for (int id = 0; id < text.Length; id++) text[id] = TokenText(d.Tokenizer, id);
        string? Text(int id) => (uint)id < (uint)text.Length ? text[id] : null;

        if (d.Logits is not null)
            using (var logits = new Insertion(db, "logits", "feature", "kind", "rank", "token_id", "token_str", "value"))
                for (int f = 0; f < d.DSae; f++)
                {
                    if ((f & 255) == 0) ct.ThrowIfCancellationRequested();
                    var (promoted, suppressed) = (d.Logits[f].Promoted, d.Logits[f].Suppressed);
                    for (int r = 0; r < promoted.Length; r++) logits.Run(f, FeatureStoreSchema.Promoted, r, promoted[r].TokenId, Text(promoted[r].TokenId), (double)promoted[r].Value);
                    for (int r = 0; r < suppressed.Length; r++) logits.Run(f, FeatureStoreSchema.Suppressed, r, suppressed[r].TokenId, Text(suppressed[r].TokenId), (double)suppressed[r].Value);
                }

        using (var vocab = new Insertion(db, "vocab", "token_id", "token_str"))
            for (int id = 0; id < text.Length; id++)
                if (text[id] is { } s) vocab.Run(id, s);
        return (cited.Count, examples);

        void Example(Insertion ex, ExampleSlots slots, int slot, int f, string kind, int? bin, int rank)
        {
            int ctx = slots.Context[slot], pos = slots.Position[slot];
            int start = Math.Max(0, pos - d.Window), end = Math.Min(d.ContextSize - 1, pos + d.Window);
            var window = slots.Window(slot).Slice(start - (pos - d.Window), end - start + 1);
            var blob = new byte[window.Length * 4];
            for (int j = 0; j < window.Length; j++) BinaryPrimitives.WriteSingleLittleEndian(blob.AsSpan(j * 4), window[j]);
            ex.Run(f, kind, bin, rank, ctx, pos, (double)slots.Act[slot], start, blob);
            examples++;
        }
    }

    /// <summary>
    /// A token's text as it reads inside a sequence: decode(id, id) minus decode(id), so tokenizers that
    /// strip a leading space from the first token (SentencePiece) still show " the"; falls back to
    /// decode(id). Null when the tokenizer has no such id.
    /// </summary>
    internal static string? TokenText(ITokenizer tokenizer, int id)
    {
        try
        {
            string one = tokenizer.Decode([id]);
            string two = tokenizer.Decode([id, id]);
            return two.Length > one.Length && two.StartsWith(one, StringComparison.Ordinal) ? two[one.Length..] : one;
        }
        catch (InputError)
        {
            return null;
        }
    }
}
