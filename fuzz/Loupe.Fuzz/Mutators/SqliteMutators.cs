using Microsoft.Data.Sqlite;

namespace Loupe.Fuzz.Mutators;

/// <summary>
/// SQLite database mutations: bytes flipped inside a page (the page size read from the header), and
/// column values set to garbage (NULL, wrong types, boundary numbers, broken JSON, blobs) with SQL UPDATE,
/// rows deleted or tables dropped — the corrupt-but-openable databases a byte flip rarely makes.
/// </summary>
public static class SqliteMutators
{
    static readonly string[] s_garbage =
        ["NULL", "-1", "0", "2147483648", "9223372036854775807", "-9223372036854775808", "1e308", "-1e308", "'NaN'", "'garbage'", "X'00FF'",
         "'['", "'{\"a\":1}'", "'[1e400]'", "'[null]'", "'" + new string('[', 5000) + "'", "zeroblob(3)", "''", "0.5", "'-1'"];

    public static IReadOnlyList<NamedMutator> All { get; } =
    [
        new("sqlite-page-bytes", PageBytes),
        new("sqlite-update", Update),
        new("sqlite-update", Update), // twice: the structured change is the one that reaches the reader's checks
        new("sqlite-delete-rows", DeleteRows),
        new("sqlite-drop-table", DropTable),
    ];

    static (byte[], string)? PageBytes(byte[] b, Random rng)
    {
        if (b.Length < 100) return null;
        int pageSize = (b[16] << 8) | b[17];
        if (pageSize == 1) pageSize = 65536;
        if (pageSize < 512 || b.Length < pageSize) pageSize = 4096;
        int pages = Math.Max(1, b.Length / pageSize);
        int page = rng.Next(pages);
        var r = (byte[])b.Clone();
        int flips = 1 + rng.Next(8);
        for (int i = 0; i < flips; i++)
        {
            int at = Math.Min(r.Length - 1, page * pageSize + rng.Next(pageSize));
            r[at] = rng.Next(2) == 0 ? (byte)(r[at] ^ (1 << rng.Next(8))) : (byte)rng.Next(256);
        }
        return (r, $"{flips} bytes changed in page {page + 1} of {pages}");
    }

    /// <summary>Runs <paramref name="edit"/> on a copy of the database in a temporary file and returns the new bytes.</summary>
    static (byte[], string)? WithDatabase(byte[] b, Func<SqliteConnection, string?> edit)
    {
        var path = Path.Combine(Path.GetTempPath(), $"loupe-fuzz-{Environment.ProcessId}-{Guid.NewGuid():N}.db");
        try
        {
            File.WriteAllBytes(path, b);
            string? what;
            using (var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString()))
            {
                db.Open();
                what = edit(db);
            }
            return what is null ? null : (File.ReadAllBytes(path), what);
        }
        catch (SqliteException) { return null; } // the input is already too damaged for SQL edits
        finally
        {
            foreach (var p in new[] { path, path + "-journal", path + "-wal", path + "-shm" }) File.Delete(p);
        }
    }

    static List<string> Tables(SqliteConnection db)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name";
        using var r = cmd.ExecuteReader();
        var list = new List<string>();
        while (r.Read()) list.Add(r.GetString(0));
        return list;
    }

    static List<string> Columns(SqliteConnection db, string table)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = $"SELECT name FROM pragma_table_info('{table}') ORDER BY cid";
        using var r = cmd.ExecuteReader();
        var list = new List<string>();
        while (r.Read()) list.Add(r.GetString(0));
        return list;
    }

    static long Count(SqliteConnection db, string table)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = $"SELECT COUNT(*) FROM \"{table}\"";
        return (long)cmd.ExecuteScalar()!;
    }

    static void Exec(SqliteConnection db, string sql)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    static (byte[], string)? Update(byte[] b, Random rng) => WithDatabase(b, db =>
    {
        var tables = Tables(db);
        if (tables.Count == 0) return null;
        var table = tables[rng.Next(tables.Count)];
        var columns = Columns(db, table);
        long rows = Count(db, table);
        if (columns.Count == 0 || rows == 0) return null;
        var column = columns[rng.Next(columns.Count)];
        var value = s_garbage[rng.Next(s_garbage.Length)];
        bool all = rng.Next(4) == 0;
        long row = rng.NextInt64(rows);
        Exec(db, all ? $"UPDATE \"{table}\" SET \"{column}\" = {value}"
            : $"UPDATE \"{table}\" SET \"{column}\" = {value} WHERE rowid = (SELECT rowid FROM \"{table}\" ORDER BY rowid LIMIT 1 OFFSET {row})");
        return $"{table}.{column} = {JsonMutators.Describe(value)} ({(all ? "all rows" : $"row {row}")})";
    });

    static (byte[], string)? DeleteRows(byte[] b, Random rng) => WithDatabase(b, db =>
    {
        var tables = Tables(db);
        if (tables.Count == 0) return null;
        var table = tables[rng.Next(tables.Count)];
        bool all = rng.Next(2) == 0;
        Exec(db, all ? $"DELETE FROM \"{table}\"" : $"DELETE FROM \"{table}\" WHERE rowid % 2 = 0");
        return $"{table}: {(all ? "all rows" : "every second row")} deleted";
    });

    static (byte[], string)? DropTable(byte[] b, Random rng) => WithDatabase(b, db =>
    {
        var tables = Tables(db);
        if (tables.Count == 0) return null;
        var table = tables[rng.Next(tables.Count)];
        Exec(db, $"DROP TABLE \"{table}\"");
        return $"table {table} dropped";
    });
}
