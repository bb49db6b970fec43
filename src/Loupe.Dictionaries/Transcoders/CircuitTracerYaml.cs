// circuit-tracer's config.yaml, the part of YAML it uses: top-level "key: value" scalars and top-level lists
// ("transcoders:" followed by "- item" lines, or "[a, b]" on one line). Examples:
//   model_kind: transcoder_set                      (or cross_layer_transcoder)
//   feature_input_hook: "mlp.hook_in"               feature_output_hook: "mlp.hook_out"
//   activation: topk    k: 64
//   transcoders:                                    per layer, in layer order: a local path (relative to the file)
//     - "hf://google/gemma-scope-2b-pt-transcoders/layer_0/width_16k/average_l0_76/params.npz"
// Anything else (nested maps, anchors, multi-line strings) is outside what circuit-tracer's configs hold; such lines are
// skipped, not misread as values.
using System.Text.Json;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>A circuit-tracer <c>config.yaml</c>: scalars and lists (see the file header).</summary>
public sealed class CircuitTracerYaml
{
    /// <summary>Largest config.yaml read (real ones are a few kilobytes).</summary>
    const long MaxBytes = 4 << 20;

    CircuitTracerYaml(string path, Dictionary<string, string> scalars, Dictionary<string, List<string>> lists)
    {
        Path = path;
        Scalars = scalars;
        Lists = lists;
    }

    /// <summary>The file read (it may not exist: then everything is empty).</summary>
    public string Path { get; }

    /// <summary>Top-level scalars, unquoted.</summary>
    public IReadOnlyDictionary<string, string> Scalars { get; }

    /// <summary>Top-level lists of scalars, unquoted.</summary>
    public IReadOnlyDictionary<string, List<string>> Lists { get; }

    /// <summary>The <c>transcoders:</c> list (one file per layer), or null when the file has none.</summary>
    public IReadOnlyList<string>? Transcoders => Lists.TryGetValue("transcoders", out var list) ? list : null;

    /// <summary>A scalar, or null.</summary>
    public string? this[string key] => Scalars.TryGetValue(key, out var v) ? v : null;

    /// <summary>Reads <paramref name="path"/>; a missing file reads as empty.</summary>
    /// <exception cref="InputError">The file is larger than a config can be, or not UTF-8 text.</exception>
    public static CircuitTracerYaml Read(string path)
    {
        var scalars = new Dictionary<string, string>(StringComparer.Ordinal);
        var lists = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        if (!File.Exists(path)) return new(path, scalars, lists);
        string text;
        try { text = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true).GetString(InputFiles.ReadAllBytes(path, MaxBytes)); }
        catch (System.Text.DecoderFallbackException) { throw new InputError($"{path}: not UTF-8 text (a circuit-tracer config.yaml is)"); }
        List<string>? open = null;                      // the list the "- item" lines belong to
        foreach (var line in text.Split('\n'))
        {
            string raw = line.TrimEnd('\r');
            if (raw.Trim().Length == 0 || raw.TrimStart().StartsWith('#')) continue;
            string trimmed = raw.TrimStart();
            if (trimmed.StartsWith("- ", StringComparison.Ordinal) || trimmed == "-")
            {
                if (open is not null && (raw[0] == '-' || char.IsWhiteSpace(raw[0]))) open.Add(Unquote(StripComment(trimmed[1..].Trim())));
                continue;
            }
            open = null;
            if (char.IsWhiteSpace(raw[0])) continue;   // nested maps: not part of circuit-tracer's configs
            int colon = raw.IndexOf(':');
            if (colon <= 0) continue;
            string key = raw[..colon].Trim(), value = StripComment(raw[(colon + 1)..].Trim());
            if (value.Length == 0)
            {
                lists[key] = open = [];
                continue;
            }
            if (value.StartsWith('[') && value.EndsWith(']'))
            {
                lists[key] = [.. value[1..^1].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(Unquote)];
                continue;
            }
            value = Unquote(value);
            if (value.Length > 0) scalars[key] = value;
        }
        // "key:" with no items and no value is an empty scalar, not a list
        foreach (var key in lists.Where(kv => kv.Value.Count == 0).Select(kv => kv.Key).ToList()) lists.Remove(key);
        return new(path, scalars, lists);
    }

    static string StripComment(string value)
    {
        if (value.StartsWith('"') || value.StartsWith('\'')) return value;
        int hash = value.IndexOf(" #", StringComparison.Ordinal);
        return hash >= 0 ? value[..hash].Trim() : value;
    }

    static string Unquote(string value)
    {
        if (value.Length >= 2 && value[0] == '"' && value[^1] == '"')
        {
            try { return JsonSerializer.Deserialize<string>(value) ?? ""; }
            catch (JsonException) { return value[1..^1]; }
        }
        if (value.Length >= 2 && value[0] == '\'' && value[^1] == '\'') return value[1..^1].Replace("''", "'", StringComparison.Ordinal);
        return value;
    }

    /// <summary>
    /// circuit-tracer's <c>hf://ORG/NAME/PATH[?revision=REV]</c> as its parts, or null when <paramref name="uri"/> does not start
    /// with <c>hf://</c>.
    /// </summary>
    /// <exception cref="InputError">It starts with hf:// but has no repository and file.</exception>
    public static (string Repo, string Path, string Revision)? ParseHfUri(string uri, string where)
    {
        if (!uri.StartsWith("hf://", StringComparison.Ordinal)) return null;
        string rest = uri["hf://".Length..], revision = "main";
        int q = rest.IndexOf('?');
        if (q >= 0)
        {
            foreach (var pair in rest[(q + 1)..].Split('&'))
                if (pair.StartsWith("revision=", StringComparison.Ordinal) && pair.Length > "revision=".Length) revision = Uri.UnescapeDataString(pair["revision=".Length..]);
            rest = rest[..q];
        }
        var parts = rest.Split('/', 3);
        if (parts.Length < 3 || parts[0].Length == 0 || parts[1].Length == 0 || parts[2].Trim('/').Length == 0)
            throw InputError.Expected(where, $"entry '{uri}'", "hf://ORG/NAME/PATH/TO/FILE[?revision=REV]", uri);
        return (parts[0] + "/" + parts[1], parts[2].Trim('/'), revision);
    }
}
