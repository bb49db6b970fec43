using System.Security.Cryptography;
using System.Text;
using Microsoft.Data.Sqlite;

namespace Loupe.Explain;

/// <summary>
/// Answers already received, keyed by SHA-256 of (chat URL, request body) — the body holds the model, messages and
/// every sampling parameter — in an SQLite file, so a repeated or resumed run asks nothing twice. Each answer is
/// committed as soon as it arrives (a killed run keeps every answer it paid for). Thread-safe.
/// </summary>
public sealed class RequestCache : IDisposable
{
    readonly SqliteConnection _db;
    readonly Lock _lock = new();

    public RequestCache(string path)
    {
        Path = System.IO.Path.GetFullPath(path);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        _db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path, Mode = SqliteOpenMode.ReadWriteCreate, Pooling = false }.ToString());
        try
        {
            _db.Open();
            using var cmd = _db.CreateCommand();
            cmd.CommandText = """
                PRAGMA journal_mode = WAL;
                CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL, created TEXT NOT NULL);
                """;
            cmd.ExecuteNonQuery();
        }
        catch (SqliteException e)
        {
            _db.Dispose();
            throw new InputError($"{Path}: not a usable request cache ({e.Message.ReplaceLineEndings(" ").TrimEnd('.')}); give another --cache file", e);
        }
    }

    public string Path { get; }

    /// <summary>The cache key of a request: hex SHA-256 of the URL, a separator and the body.</summary>
    public static string Key(string url, string body) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(url + "\n" + body)));

    public string? Get(string key)
    {
        lock (_lock)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT response FROM responses WHERE key = $k";
            cmd.Parameters.AddWithValue("$k", key);
            return cmd.ExecuteScalar() as string;
        }
    }

    public void Put(string key, string response)
    {
        lock (_lock)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "INSERT OR REPLACE INTO responses (key, response, created) VALUES ($k, $r, $t)";
            cmd.Parameters.AddWithValue("$k", key);
            cmd.Parameters.AddWithValue("$r", response);
            cmd.Parameters.AddWithValue("$t", DateTimeOffset.UtcNow.ToString("O"));
            cmd.ExecuteNonQuery();
        }
    }

    public int Count
    {
        get
        {
            lock (_lock)
            {
                using var cmd = _db.CreateCommand();
                cmd.CommandText = "SELECT COUNT(*) FROM responses";
                return Convert.ToInt32(cmd.ExecuteScalar());
            }
        }
    }

    public void Dispose() => _db.Dispose();
}
