using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Loupe.Models;

namespace Loupe.Dictionaries.Harvest;

/// <summary>One shard: rows <c>[tokens, d]</c> per hook, from contexts <c>[first_context, first_context + contexts)</c>.</summary>
public sealed class HarvestShard
{
    public string File { get; set; } = "";
    public long Tokens { get; set; }
    public int FirstContext { get; set; }
    public int Contexts { get; set; }
}

/// <summary>
/// <c>manifest.json</c> of a harvest folder (snake_case JSON). Rewritten atomically after every shard,
/// so it always lists exactly the complete shards. Rows in a shard are ordered context by context,
/// position by position (BOS rows left out when <see cref="SkipBos"/>).
/// </summary>
public sealed class HarvestManifest
{
    public const string FileName = "manifest.json";
    public const string TokenIdsTensor = "token_ids";

    /// <summary>2: hooks hold TransformerLens's values (an RMSNorm's hook_normalized before its weight); 1: older (<see cref="ActivationStore"/> reads it).</summary>
    public int FormatVersion { get; set; } = CurrentFormatVersion;

    public const int CurrentFormatVersion = 2;
    public string Model { get; set; } = "";
    /// <summary>SHA-256 over config.json and the names and sizes of the weight files.</summary>
    public string ModelFingerprint { get; set; } = "";
    public List<string> Hooks { get; set; } = [];
    public Dictionary<string, int> DModelByHook { get; set; } = [];
    public string Dtype { get; set; } = "float32";
    public int ContextSize { get; set; }
    public bool SkipBos { get; set; }
    public int ContextsPerShard { get; set; }
    public int TotalContexts { get; set; }
    public string ContextsSha256 { get; set; } = "";
    public string Source { get; set; } = "";
    public int Seed { get; set; }
    public long TotalTokens { get; set; }
    public bool Complete { get; set; }
    public List<HarvestShard> Shards { get; set; } = [];

    /// <summary>Rows each context contributes.</summary>
    public int RowsPerContext => SkipBos ? ContextSize - 1 : ContextSize;

    internal static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Largest d per hook a manifest may declare (one row must fit an array many times over).</summary>
    const long MaxD = 1 << 24;

    /// <summary>
    /// Reads and validates a manifest: every field present with its JSON type, counts in range and
    /// consistent (shard k covers contexts [k·contexts_per_shard, …) with contexts × rows_per_context
    /// tokens, total_tokens is their sum), and every shard file a distinct path inside the folder.
    /// </summary>
    /// <exception cref="FileNotFoundException">No manifest.json in the folder.</exception>
    /// <exception cref="InputError">The manifest is not valid JSON of this shape, or a field is out of range or inconsistent (the message names the file and the field).</exception>
    public static HarvestManifest Load(string folder)
    {
        string path = Path.Combine(folder, FileName);
        if (!System.IO.File.Exists(path)) throw new FileNotFoundException($"no harvest manifest: {path}", path);
        InputFiles.EnsureRegularFile(path);
        HarvestManifest manifest;
        try
        {
            byte[] bytes = System.IO.File.ReadAllBytes(path);
            using (var doc = JsonInput.Parse(bytes, path, maxDepth: 16))
                CheckJsonShape(doc.RootElement, path);
            manifest = JsonSerializer.Deserialize<HarvestManifest>(bytes, Json)
                ?? throw new InputError($"{path}: expected a JSON object, found null");
        }
        catch (JsonException e)
        {
            throw new InputError($"{path}: malformed manifest{(e.Path is { } p ? $" at {p}" : "")}: {e.Message.ReplaceLineEndings(" ")}", e);
        }
        manifest.CheckConsistency(folder, path);
        return manifest;
    }

    enum Kind { String, Int, Long, Bool, StringArray, IntObject, ShardArray }

    static readonly (string Name, Kind Kind)[] s_fields =
    [
        ("format_version", Kind.Int), ("model", Kind.String), ("model_fingerprint", Kind.String), ("hooks", Kind.StringArray),
        ("d_model_by_hook", Kind.IntObject), ("dtype", Kind.String), ("context_size", Kind.Int), ("skip_bos", Kind.Bool),
        ("contexts_per_shard", Kind.Int), ("total_contexts", Kind.Int), ("contexts_sha256", Kind.String), ("source", Kind.String),
        ("seed", Kind.Int), ("total_tokens", Kind.Long), ("complete", Kind.Bool), ("shards", Kind.ShardArray),
    ];

    static readonly (string Name, Kind Kind)[] s_shardFields =
        [("file", Kind.String), ("tokens", Kind.Long), ("first_context", Kind.Int), ("contexts", Kind.Int)];

    /// <summary>Every field present with the JSON type the reader expects (so deserialization cannot fail on a null or a wrong type).</summary>
    static void CheckJsonShape(JsonElement root, string path)
    {
        CheckFields(root, path, "", s_fields);
        int i = 0;
        foreach (var shard in root.GetProperty("shards").EnumerateArray())
            CheckFields(shard, path, $"shards[{i++}].", s_shardFields);
    }

    static void CheckFields(JsonElement obj, string path, string prefix, (string Name, Kind Kind)[] fields)
    {
        if (obj.ValueKind != JsonValueKind.Object)
            throw Bad(path, prefix.Length == 0 ? "manifest" : prefix.TrimEnd('.'), "a JSON object", obj.ValueKind.ToString().ToLowerInvariant());
        foreach (var (name, kind) in fields)
        {
            string field = prefix + name;
            if (!obj.TryGetProperty(name, out var v)) throw new InputError($"{path}: {field}: missing (every field of a Loupe harvest manifest is required)");
            CheckValue(v, path, field, kind);
        }
    }

    static void CheckValue(JsonElement v, string path, string field, Kind kind)
    {
        string Found() => v.ValueKind switch
        {
            JsonValueKind.Number => v.GetRawText(),
            JsonValueKind.String => InputError.Show(v.GetString()),
            _ => v.ValueKind.ToString().ToLowerInvariant(),
        };
        switch (kind)
        {
            case Kind.String when v.ValueKind != JsonValueKind.String:
                throw Bad(path, field, "a string", Found());
            case Kind.Bool when v.ValueKind is not (JsonValueKind.True or JsonValueKind.False):
                throw Bad(path, field, "true or false", Found());
            case Kind.Int when v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out _):
                throw Bad(path, field, "a 32-bit integer", Found());
            case Kind.Long when v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out _):
                throw Bad(path, field, "a 64-bit integer", Found());
            case Kind.StringArray:
                if (v.ValueKind != JsonValueKind.Array) throw Bad(path, field, "an array of strings", Found());
                int i = 0;
                foreach (var item in v.EnumerateArray()) CheckValue(item, path, $"{field}[{i++}]", Kind.String);
                break;
            case Kind.IntObject:
                if (v.ValueKind != JsonValueKind.Object) throw Bad(path, field, "an object of hook name → integer", Found());
                foreach (var p in v.EnumerateObject()) CheckValue(p.Value, path, $"{field}.{p.Name}", Kind.Int);
                break;
            case Kind.ShardArray when v.ValueKind != JsonValueKind.Array:
                throw Bad(path, field, "an array of shard objects", Found());
        }
    }

    /// <summary>"path: field: expected …, found …" with <paramref name="found"/> already formatted for reading.</summary>
    static InputError Bad(string path, string field, string expected, string found) => new($"{path}: {field}: expected {expected}, found {found}");

    /// <summary>Ranges and cross-field consistency, after the JSON shape is known to be right.</summary>
    void CheckConsistency(string folder, string path)
    {
        if (FormatVersion is < 1 or > CurrentFormatVersion) throw InputError.Expected(path, "format_version", $"1 to {CurrentFormatVersion}", FormatVersion);
        if (Dtype != "float32") throw InputError.Expected(path, "dtype", "\"float32\"", Dtype);
        if (Hooks.Count == 0) throw Bad(path, "hooks", "at least one hook", "[]");
        var seenHooks = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < Hooks.Count; i++)
        {
            if (Hooks[i].Length == 0) throw InputError.Expected(path, $"hooks[{i}]", "a hook name", Hooks[i]);
            if (!seenHooks.Add(Hooks[i])) throw Bad(path, $"hooks[{i}]", "each hook once", $"{InputError.Show(Hooks[i])} again");
            if (!DModelByHook.TryGetValue(Hooks[i], out int d)) throw new InputError($"{path}: d_model_by_hook.{Hooks[i]}: missing (every hook needs its row width)");
            Check.InRange(d, 1, MaxD, path, $"d_model_by_hook.{Hooks[i]}");
        }
        Check.InRange(ContextSize, SkipBos ? 2 : 1, int.MaxValue, path, "context_size");
        Check.InRange(ContextsPerShard, 1, int.MaxValue, path, "contexts_per_shard");
        Check.InRange(TotalContexts, 1, int.MaxValue, path, "total_contexts");
        Check.InRange(TotalTokens, 0, long.MaxValue, path, "total_tokens");
        int totalShards = (int)((TotalContexts + (long)ContextsPerShard - 1) / ContextsPerShard);
        if (Shards.Count > totalShards)
            throw InputError.Expected(path, "shards", $"at most {totalShards} shards (total_contexts {TotalContexts} / contexts_per_shard {ContextsPerShard})", Shards.Count);
        if (Complete && Shards.Count != totalShards)
            throw InputError.Expected(path, "shards", $"{totalShards} shards in a complete harvest", Shards.Count);

        string root = Path.GetFullPath(folder);
        var files = new Dictionary<string, int>(StringComparer.Ordinal);
        long sum = 0;
        for (int k = 0; k < Shards.Count; k++)
        {
            var shard = Shards[k];
            string at = $"shards[{k}]";
            string full = ShardPath(root, shard.File, path, at + ".file");
            if (files.TryGetValue(full, out int earlier))
                throw Bad(path, at + ".file", "each shard file listed once", $"{InputError.Show(shard.File)} again (also shards[{earlier}])");
            files[full] = k;
            long first = (long)k * ContextsPerShard;
            if (shard.FirstContext != first) throw InputError.Expected(path, at + ".first_context", $"{first} (shard {k} × contexts_per_shard {ContextsPerShard})", shard.FirstContext);
            long count = Math.Min(ContextsPerShard, TotalContexts - first);
            if (shard.Contexts != count) throw InputError.Expected(path, at + ".contexts", $"{count}", shard.Contexts);
            long rows = count * RowsPerContext;
            if (shard.Tokens != rows) throw InputError.Expected(path, at + ".tokens", $"{rows} (contexts {count} × {RowsPerContext} rows per context)", shard.Tokens);
            foreach (var h in Hooks) Check.Product(path, $"{at}: tokens × d_model_by_hook.{h}", Check.MaxArrayElements, rows, DModelByHook[h]);
            sum += rows; // rows ≤ 2^31 per shard and ≤ 2^31 shards: no overflow
        }
        if (sum != TotalTokens) throw InputError.Expected(path, "total_tokens", $"the sum over shards, {sum}", TotalTokens);
    }

    /// <summary>
    /// The full path of a shard file, refusing one that is absolute, climbs with "..", or resolves
    /// (through symbolic links) outside the harvest folder.
    /// </summary>
    static string ShardPath(string root, string file, string path, string field)
    {
        if (file.Length == 0 || file.Contains('\0'))
            throw InputError.Expected(path, field, "a file name inside the harvest folder", file);
        if (Path.IsPathRooted(file) || file.Split('/', '\\').Any(part => part == ".."))
            throw InputError.Expected(path, field, "a relative path inside the harvest folder (no absolute path, no \"..\")", file);
        string full = Path.GetFullPath(Path.Combine(root, file));
        if (!full.StartsWith(Path.TrimEndingDirectorySeparator(root) + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw InputError.Expected(path, field, "a relative path inside the harvest folder", file);
        // A link inside the folder may still point elsewhere: compare the resolved paths.
        if (!OperatingSystem.IsWindows() && InputFiles.RealPath(full) is { } real && InputFiles.RealPath(root) is { } realRoot
            && !real.StartsWith(Path.TrimEndingDirectorySeparator(realRoot) + "/", StringComparison.Ordinal))
            throw Bad(path, field, "a file inside the harvest folder", $"{InputError.Show(file)}, which resolves to {real}");
        return full;
    }


    /// <summary>Fingerprint of a model folder: SHA-256 of config.json, then each <c>*.safetensors</c> name and size.</summary>
    public static string Fingerprint(HookedTransformer model)
    {
        string? folder = model.Source is string s && Directory.Exists(s) ? s : null;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        if (folder is null)
        {
            // No folder on disk: fall back to the config record's text.
            sha.AppendData(Encoding.UTF8.GetBytes(model.Config.ToString()));
        }
        else
        {
            string config = Path.Combine(folder, "config.json");
            if (System.IO.File.Exists(config)) sha.AppendData(System.IO.File.ReadAllBytes(config));
            foreach (var f in Directory.GetFiles(folder, "*.safetensors").Order(StringComparer.Ordinal))
                sha.AppendData(Encoding.UTF8.GetBytes($"\n{Path.GetFileName(f)}:{new FileInfo(f).Length}"));
        }
        // Processed weights (--process) give other activations; unprocessed fingerprints stay as they were.
        if (!model.Processing.IsNone) sha.AppendData(Encoding.UTF8.GetBytes($"\nweight_processing:{model.Processing.Describe()}"));
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>The settings that differ from <paramref name="other"/>'s (empty when a resume may continue).</summary>
    internal List<string> SettingDifferences(HarvestManifest other)
    {
        var diffs = new List<string>();
        void Check<T>(string name, T a, T b) { if (!EqualityComparer<T>.Default.Equals(a, b)) diffs.Add($"{name}: folder has {b}, this run has {a}"); }
        Check("format_version", FormatVersion, other.FormatVersion);
        Check("model", Model, other.Model);
        Check("model_fingerprint", ModelFingerprint, other.ModelFingerprint);
        Check("hooks", string.Join(",", Hooks), string.Join(",", other.Hooks));
        Check("d_model_by_hook", string.Join(",", DModelByHook.OrderBy(k => k.Key, StringComparer.Ordinal)), string.Join(",", other.DModelByHook.OrderBy(k => k.Key, StringComparer.Ordinal)));
        Check("dtype", Dtype, other.Dtype);
        Check("context_size", ContextSize, other.ContextSize);
        Check("skip_bos", SkipBos, other.SkipBos);
        Check("contexts_per_shard", ContextsPerShard, other.ContextsPerShard);
        Check("total_contexts", TotalContexts, other.TotalContexts);
        Check("contexts_sha256", ContextsSha256, other.ContextsSha256);
        Check("source", Source, other.Source);
        Check("seed", Seed, other.Seed);
        return diffs;
    }
}
