using System.Buffers.Binary;
using Loupe.Dictionaries.Features;
using Microsoft.Data.Sqlite;

namespace Loupe.Explain.Tests;

/// <summary>
/// A small feature store written straight into the schema: feature f fires on one word of its own
/// (<see cref="Words"/>[f]) wherever that word occurs and nowhere else; its contexts are filler words with the
/// word inserted 1–3 times. <see cref="Dead"/> never fires. Features 0 and 1 have promoted tokens.
/// </summary>
static class SyntheticStore
{
    public static readonly string[] Words = [" apple", " river", " seven", " purple", " castle", " lantern"];
    public const int DSae = 7, Dead = 6, ContextSize = 24, Top = 8, PerBin = 3, Bins = 2, Window = 5;

    public static readonly string[] Filler = [" the", " a", " and", " went", " to", " big", " small", " house", " over", " it", " was", " day", " she", " he", " ran", " sat", " on", " mat", " with", " friend"];

    public static string Write(string path)
    {
        var vocab = new List<string> { "<s>" };
        vocab.AddRange(Filler);
        vocab.AddRange(Words);
        int WordId(int f) => 1 + Filler.Length + f;
        var rng = new Random(42);
        using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        db.Open();
        using var tx = db.BeginTransaction();
        void Exec(string sql, params object?[] args)
        {
            using var cmd = db.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = sql;
            for (int i = 0; i < args.Length; i++) cmd.Parameters.AddWithValue("$p" + i, args[i] ?? DBNull.Value);
            cmd.ExecuteNonQuery();
        }
        Exec(FeatureStoreSchema.CreateTables);
        foreach (var (k, v) in new[] { ("format", FeatureStoreSchema.Format), ("schema_version", FeatureStoreSchema.Version.ToString()), ("d_sae", DSae.ToString()), ("n_tokens", "10000"), ("hook", "blocks.0.hook_resid_post") })
            Exec("INSERT INTO meta (key, value) VALUES ($p0, $p1)", k, v);
        for (int id = 0; id < vocab.Count; id++) Exec("INSERT INTO vocab (token_id, token_str) VALUES ($p0, $p1)", id, vocab[id]);

        int contextId = 0;
        for (int f = 0; f < DSae; f++)
        {
            if (f == Dead)
            {
                Exec("INSERT INTO features VALUES ($p0, 0, 0.0, 0.0, NULL, 1.0)", f);
                continue;
            }
            int examples = Top + PerBin * Bins;
            Exec("INSERT INTO features VALUES ($p0, $p1, $p2, 5.0, 3.0, 1.0)", f, examples * 2, examples * 2 / 10000.0);
            for (int e = 0; e < examples; e++)
            {
                var tokens = new int[ContextSize];
                tokens[0] = 0;
                for (int p = 1; p < ContextSize; p++) tokens[p] = 1 + rng.Next(Filler.Length);
                int position = 3 + rng.Next(ContextSize - 6);
                tokens[position] = WordId(f);
                if (rng.Next(2) == 0) tokens[Math.Min(ContextSize - 1, position + 2)] = WordId(f);
                Exec("INSERT INTO contexts (id, tokens) VALUES ($p0, $p1)", contextId, "[" + string.Join(",", tokens) + "]");
                bool top = e < Top;
                float act = top ? 5f - 0.2f * e : (e - Top) / PerBin == 0 ? 2f : 1f;
                int start = Math.Max(0, position - Window), end = Math.Min(ContextSize - 1, position + Window);
                var blob = new byte[(end - start + 1) * 4];
                for (int p = start; p <= end; p++)
                    BinaryPrimitives.WriteSingleLittleEndian(blob.AsSpan((p - start) * 4), tokens[p] == WordId(f) ? act : 0f);
                int? bin = top ? null : Bins - 1 - (e - Top) / PerBin;
                int rank = top ? e : (e - Top) % PerBin;
                Exec("INSERT INTO examples VALUES ($p0, $p1, $p2, $p3, $p4, $p5, $p6, $p7, $p8)",
                    f, top ? FeatureStoreSchema.Top : FeatureStoreSchema.Quantile, bin, rank, contextId, position, (double)act, start, blob);
                contextId++;
            }
            for (int q = 0; q < Bins; q++) Exec("INSERT INTO quantile_intervals VALUES ($p0, $p1, $p2, $p3, $p4)", f, q, q * 2.5, (q + 1) * 2.5, 10);
            if (f < 2)
                for (int r = 0; r < 3; r++)
                    Exec("INSERT INTO logits VALUES ($p0, 'promoted', $p1, $p2, $p3, $p4)", f, r, 1 + r, vocab[1 + r], 1.0 - 0.1 * r);
        }
        Exec(FeatureStoreSchema.CreateIndexes);
        tx.Commit();
        return path;
    }
}
