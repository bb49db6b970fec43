using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Loupe.Serve;

/// <summary>An artifact as the index lists it.</summary>
/// <param name="Id">Its id (the only way the API names it).</param>
/// <param name="Name">Its path relative to the served folder, for a person to read.</param>
/// <param name="Kind">graph, circuit, patching, json, or text (a .txt corpus a feature-store build can read).</param>
/// <param name="Bytes">Its size.</param>
/// <param name="Modified">Last write time, UTC, ISO 8601.</param>
public sealed record ArtifactView(string Id, string Name, string Kind, long Bytes, string Modified);

/// <summary>
/// The workspace index: the JSON artifacts under the served folder, listed in SQLite by id. Files are found by
/// walking the folder (symbolic links skipped) and opened only through the index, re-checked on every open,
/// so no request path reaches the file system.
/// </summary>
public sealed class Workspace
{
    readonly string? _root;
    readonly string _connection;
    readonly object _scanLock = new();

    public string DatabasePath { get; }

    /// <summary>The served folder (full path), or null when none is served.</summary>
    public string? Root => _root;

    public Workspace(string? root)
    {
        _root = root is null ? null : Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        if (_root is not null && !Directory.Exists(_root)) throw new InputError($"argument: --graphs: '{root}' is not a folder");
        DatabasePath = ChooseDatabase(_root);
        _connection = new SqliteConnectionStringBuilder { DataSource = DatabasePath, Pooling = false }.ToString();
        using var db = Open();
        Execute(db, "CREATE TABLE IF NOT EXISTS artifacts (id TEXT PRIMARY KEY, rel_path TEXT NOT NULL, kind TEXT NOT NULL, bytes INTEGER NOT NULL, modified TEXT NOT NULL)");
        Scan();
    }

    // In the served folder when it can be written (so the index travels with it), else a temp folder.
    static string ChooseDatabase(string? root)
    {
        if (root is not null)
        {
            string path = Path.Combine(root, ".loupe-workspace.db");
            try
            {
                using (File.Open(path, FileMode.OpenOrCreate, FileAccess.ReadWrite)) { }
                return path;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        string dir = Path.Combine(Path.GetTempPath(), "loupe-serve-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return Path.Combine(dir, ".loupe-workspace.db");
    }

    SqliteConnection Open()
    {
        var db = new SqliteConnection(_connection);
        db.Open();
        return db;
    }

    static void Execute(SqliteConnection db, string sql)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    /// <summary>Re-reads the served folder into the index.</summary>
    public void Scan()
    {
        if (_root is null) return;
        lock (_scanLock)
        {
            var found = new List<ArtifactView>();
            Walk(_root, found, depth: 0);
            using var db = Open();
            using var tx = db.BeginTransaction();
            Execute(db, "DELETE FROM artifacts");
            foreach (var a in found)
            {
                using var cmd = db.CreateCommand();
                cmd.CommandText = "INSERT OR REPLACE INTO artifacts (id, rel_path, kind, bytes, modified) VALUES ($id, $path, $kind, $bytes, $modified)";
                cmd.Parameters.AddWithValue("$id", a.Id);
                cmd.Parameters.AddWithValue("$path", a.Name);
                cmd.Parameters.AddWithValue("$kind", a.Kind);
                cmd.Parameters.AddWithValue("$bytes", a.Bytes);
                cmd.Parameters.AddWithValue("$modified", a.Modified);
                cmd.ExecuteNonQuery();
            }
            tx.Commit();
        }
    }

    void Walk(string dir, List<ArtifactView> found, int depth)
    {
        if (depth > 16) return;
        var info = new DirectoryInfo(dir);
        foreach (var file in info.EnumerateFiles())
        {
            bool json = file.Name.EndsWith(".json", StringComparison.OrdinalIgnoreCase), text = file.Name.EndsWith(".txt", StringComparison.OrdinalIgnoreCase);
            if (file.LinkTarget is not null || !json && !text) continue;
            string rel = Path.GetRelativePath(_root!, file.FullName);
            found.Add(new ArtifactView(IdOf(rel), rel, json ? Classify(file.FullName) : "text", file.Length, file.LastWriteTimeUtc.ToString("O")));
        }
        foreach (var sub in info.EnumerateDirectories())
            if (sub.LinkTarget is null && !sub.Name.StartsWith('.')) Walk(sub.FullName, found, depth + 1);
    }

    static string IdOf(string rel) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(rel)))[..16];

    // The kind from the top-level keys of the JSON (read only as far as the first few keys).
    static string Classify(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            var buffer = new byte[Math.Min(stream.Length, 64 * 1024)];
            int n = stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            var reader = new Utf8JsonReader(buffer.AsSpan(0, n), isFinalBlock: n == stream.Length, default);
            var keys = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return "json";
            while (reader.Read())
            {
                if (reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == 1) keys.Add(reader.GetString()!);
                // A large graph's nodes run past the buffer: classify from the keys seen so far.
                else if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray && !reader.TrySkip()) break;
            }
            return Kind(keys, path);
        }
        catch (JsonException) { return "json"; }
        catch (InvalidOperationException) { return "json"; }
    }

    static string Kind(HashSet<string> keys, string path)
    {
        string name = Path.GetFileName(path).ToLowerInvariant();
        // circuit-tracer/Neuronpedia graphs: metadata, qParams, nodes, links; EAP-IG circuits: cfg, nodes, edges; patch.json: row_axis, normalized.
        if (keys.Contains("cfg") && keys.Contains("nodes")) return "circuit";
        if (keys.Contains("nodes") && (keys.Contains("links") || keys.Contains("edges") || keys.Contains("qParams")) && !name.Contains("circuit")) return "graph";
        if (name.Contains("circuit") || keys.Contains("circuit")) return "circuit";
        if (keys.Contains("normalized") && keys.Contains("row_axis") || name.Contains("patch") || keys.Contains("sweep") || keys.Contains("patching")) return "patching";
        return "json";
    }

    /// <summary>The artifact at this path relative to the served folder (after a <see cref="Scan"/>), or null.</summary>
    public ArtifactView? FindByName(string relativePath) => List().FirstOrDefault(a => a.Name == relativePath);

    public IReadOnlyList<ArtifactView> List()
    {
        using var db = Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = "SELECT id, rel_path, kind, bytes, modified FROM artifacts ORDER BY rel_path";
        using var r = cmd.ExecuteReader();
        var list = new List<ArtifactView>();
        while (r.Read()) list.Add(new ArtifactView(r.GetString(0), r.GetString(1), r.GetString(2), r.GetInt64(3), r.GetString(4)));
        return list;
    }

    /// <summary>The largest artifact a page parses (graph pages of 20,000 nodes are tens of megabytes).</summary>
    public const long MaxParsedBytes = 512L << 20;

    /// <summary>
    /// The artifact with this id parsed as JSON, or null when there is none. Strings are checked as the JSON is (invalid
    /// UTF-8 and lone surrogates would otherwise surface, as an exception naming nothing, when a page reads them).
    /// </summary>
    /// <exception cref="InputError">The file is not valid JSON, or is larger than <see cref="MaxParsedBytes"/>; the message names it.</exception>
    public async Task<JsonDocument?> ReadJsonAsync(string id, string name, CancellationToken cancel)
    {
        if (OpenById(id) is not { } stream) return null;
        byte[] bytes;
        await using (stream)
        {
            if (stream.Length > MaxParsedBytes) throw new InputError($"{name}: {stream.Length:N0} bytes; the pages read artifacts of at most {MaxParsedBytes:N0}");
            bytes = new byte[stream.Length];
            await stream.ReadExactlyAsync(bytes, cancel);
        }
        return JsonInput.Parse(bytes, name);
    }

    /// <summary>Opens the artifact with this id, or null: unknown id, or a file that is no longer a plain file inside the folder.</summary>
    public FileStream? OpenById(string id)
    {
        if (_root is null || id.Length != 16 || !id.All(char.IsAsciiHexDigitLower)) return null;
        string? rel;
        using (var db = Open())
        using (var cmd = db.CreateCommand())
        {
            cmd.CommandText = "SELECT rel_path FROM artifacts WHERE id = $id";
            cmd.Parameters.AddWithValue("$id", id);
            rel = cmd.ExecuteScalar() as string;
        }
        if (rel is null) return null;
        // The file may have changed since the scan: every component must still be a plain folder or file inside the root.
        string full = Path.GetFullPath(Path.Combine(_root, rel));
        if (!full.StartsWith(_root + Path.DirectorySeparatorChar, StringComparison.Ordinal)) return null;
        for (string? p = full; p is not null && p.Length > _root.Length; p = Path.GetDirectoryName(p))
        {
            FileSystemInfo fsi = p == full ? new FileInfo(p) : new DirectoryInfo(p);
            if (!fsi.Exists || fsi.LinkTarget is not null) return null;
        }
        return new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 64 * 1024, FileOptions.Asynchronous | FileOptions.SequentialScan);
    }
}
