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

    public int FormatVersion { get; set; } = 1;
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

    /// <summary>Reads a manifest.</summary>
    /// <exception cref="FileNotFoundException">No manifest.json in the folder.</exception>
    /// <exception cref="InvalidDataException">The manifest is not valid JSON of this shape (the message names the file).</exception>
    public static HarvestManifest Load(string folder)
    {
        string path = Path.Combine(folder, FileName);
        if (!System.IO.File.Exists(path)) throw new FileNotFoundException($"no harvest manifest: {path}", path);
        try
        {
            return JsonSerializer.Deserialize<HarvestManifest>(System.IO.File.ReadAllText(path), Json)
                ?? throw new InvalidDataException($"{path}: empty manifest");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: malformed manifest: {e.Message}", e);
        }
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
