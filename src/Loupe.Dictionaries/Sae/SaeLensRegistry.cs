// SAELens's registry of pretrained dictionaries (sae_lens/pretrained_saes.yaml, shipped inside the sae-lens package), read
// so that `--sae saelens:RELEASE/SAE_ID` names a dictionary the way SAE.from_pretrained(release, sae_id) does:
//   gpt2-small-res-jb:                       one release per top-level key
//     repo_id: jbloom/GPT2-Small-SAEs-Reformatted
//     model: gpt2
//     conversion_func: gemma_2                (absent for SAELens's own layout)
//     saes:
//     - id: blocks.8.hook_resid_pre            the SAE id, as SAE.from_pretrained takes it
//       path: blocks.8.hook_resid_pre          the folder (or file) in the hub repository
//       l0: 57.2
// Only that much is read: releases, their repo_id / model / conversion_func scalars, and each listed SAE's id and path;
// other keys (neuronpedia ids, links, config overrides, nested maps) are skipped. The file is SAELens's and is not copied into
// Loupe: LOUPE_SAELENS_REGISTRY names it, or an installed sae-lens package is found (site-packages/sae_lens).
namespace Loupe.Dictionaries.Sae;

/// <summary>One SAELens release: the hub repository its dictionaries are in and each dictionary's path there, by SAE id.</summary>
public sealed record SaeLensRelease(string Name, string RepoId, string? Model, string? ConversionFunc, IReadOnlyDictionary<string, string> Saes);

/// <summary>SAELens's <c>pretrained_saes.yaml</c> (see the file header).</summary>
public sealed class SaeLensRegistry
{
    public const string EnvironmentVariable = "LOUPE_SAELENS_REGISTRY";
    public const string FileName = "pretrained_saes.yaml";
    /// <summary>The registry is a few MB; a file far larger is not it.</summary>
    const long MaxBytes = 64L << 20;
    /// <summary>
    /// The conversions whose results Loupe reads: SAELens's own layout (none), Gemma Scope's params.npz, Gemma Scope 2, EleutherAI's
    /// sparsify, saprmarks/dictionary_learning's ae.pt (SAEBench's baselines).
    /// </summary>
    static readonly HashSet<string> s_readable = ["", "gemma_2", "gemma_3", "sparsify", "dictionary_learning_1"];

    readonly Dictionary<string, SaeLensRelease> _releases;

    SaeLensRegistry(string path, Dictionary<string, SaeLensRelease> releases)
    {
        Path = path;
        _releases = releases;
    }

    public string Path { get; }

    public IReadOnlyCollection<string> Releases => _releases.Keys;

    /// <summary>A release by name, or null.</summary>
    public SaeLensRelease? this[string name] => _releases.GetValueOrDefault(name);

    /// <summary>
    /// The registry file: <see cref="EnvironmentVariable"/>, else the first <c>sae_lens/pretrained_saes.yaml</c> under the Python
    /// site-packages of an active virtual environment, the user's and the system's; null when none is found.
    /// </summary>
    public static string? Locate()
    {
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } given) return given;
        var roots = new List<string>();
        if (Environment.GetEnvironmentVariable("VIRTUAL_ENV") is { Length: > 0 } venv) roots.Add(System.IO.Path.Combine(venv, "lib"));
        if (Environment.GetEnvironmentVariable("CONDA_PREFIX") is { Length: > 0 } conda) roots.Add(System.IO.Path.Combine(conda, "lib"));
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (home.Length > 0) roots.Add(System.IO.Path.Combine(home, ".local", "lib"));
        roots.AddRange(["/usr/local/lib", "/usr/lib"]);
        foreach (var root in roots.Where(Directory.Exists))
            foreach (var python in SafeDirectories(root, "python3*").Order(StringComparer.Ordinal))
                foreach (var packages in new[] { "site-packages", "dist-packages" })
                {
                    string candidate = System.IO.Path.Combine(python, packages, "sae_lens", FileName);
                    if (File.Exists(candidate)) return candidate;
                }
        return null;
    }

    static IEnumerable<string> SafeDirectories(string root, string pattern)
    {
        try { return Directory.GetDirectories(root, pattern); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }

    /// <summary>Reads the registry at <paramref name="path"/>.</summary>
    /// <exception cref="InputError">The file is missing, too large, not UTF-8, or holds a release without <c>repo_id</c> or an SAE without <c>id</c> or <c>path</c> (naming the line).</exception>
    public static SaeLensRegistry Read(string path)
    {
        if (!File.Exists(path)) throw new InputError($"SAELens registry not found: {path} ({EnvironmentVariable})");
        string text;
        try { text = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true).GetString(InputFiles.ReadAllBytes(path, MaxBytes)); }
        catch (System.Text.DecoderFallbackException) { throw new InputError($"{path}: not UTF-8 text (SAELens's {FileName} is)"); }

        var releases = new Dictionary<string, SaeLensRelease>(StringComparer.Ordinal);
        string? release = null;
        int releaseLine = 0, fieldIndent = -1, itemIndent = -1;
        Dictionary<string, string> scalars = new(StringComparer.Ordinal);
        Dictionary<string, string> saes = new(StringComparer.Ordinal);
        bool inSaes = false;
        (string? Id, string? Path, int Line)? sae = null;
        var lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string raw = lines[i].TrimEnd('\r');
            string trimmed = raw.TrimStart();
            if (trimmed.Length == 0 || trimmed.StartsWith('#')) continue;
            int indent = raw.Length - trimmed.Length;
            if (indent == 0)
            {
                Finish();
                if (!trimmed.EndsWith(':')) throw new InputError($"{path}:{i + 1}: expected a release name followed by ':' at the start of the line, found \"{Clip(trimmed)}\"");
                release = Unquote(trimmed[..^1].Trim());
                releaseLine = i + 1;
                continue;
            }
            if (release is null) continue;
            if (fieldIndent < 0) fieldIndent = indent;
            bool item = trimmed.StartsWith("- ", StringComparison.Ordinal) || trimmed == "-";
            if (inSaes)
            {
                // "- id: …" starts an SAE (at the list's indent, which may be the "saes:" key's own); its "key: value" lines
                // sit two columns further; anything deeper (nested maps or lists) is skipped.
                if (item && (itemIndent < 0 || indent == itemIndent))
                {
                    itemIndent = indent;
                    EndSae();
                    sae = (null, null, i + 1);
                    if (KeyValue(trimmed[1..].Trim()) is var (k0, v0)) Assign(k0, v0);
                    continue;
                }
                if (itemIndent >= 0 && indent > itemIndent)
                {
                    if (!item && indent == itemIndent + 2 && KeyValue(trimmed) is var (k1, v1)) Assign(k1, v1);
                    continue;
                }
                EndSae();
                inSaes = false;
            }
            if (indent != fieldIndent || KeyValue(trimmed) is not var (k, v)) continue;
            if (k == "saes" && v.Length == 0) { inSaes = true; itemIndent = -1; continue; }
            if (v.Length > 0) scalars[k] = v;
        }
        Finish();
        return new SaeLensRegistry(path, releases);

        void Assign(string key, string value)
        {
            if (sae is not { } open) return;
            if (key == "id") sae = open with { Id = value };
            else if (key == "path") sae = open with { Path = value };
        }

        void EndSae()
        {
            if (sae is not { } s) return;
            if (s.Id is null || s.Path is null)
                throw new InputError($"{path}:{s.Line}: an SAE of release {release} without {(s.Id is null ? "an id" : "a path")}");
            saes[s.Id] = s.Path;
            sae = null;
        }

        void Finish()
        {
            EndSae();
            inSaes = false;
            if (release is not null)
            {
                if (!scalars.TryGetValue("repo_id", out var repo) || repo.Length == 0)
                    throw new InputError($"{path}:{releaseLine}: release {release} has no repo_id");
                releases[release] = new SaeLensRelease(release, repo, scalars.GetValueOrDefault("model"), scalars.GetValueOrDefault("conversion_func"), saes);
            }
            release = null;
            fieldIndent = -1;
            scalars = new(StringComparer.Ordinal);
            saes = new(StringComparer.Ordinal);
        }
    }

    /// <summary>
    /// <c>RELEASE/SAE_ID</c> (the release is the part before the first '/') as a hub spec <c>hf:REPO/PATH</c>, and a note when the
    /// release's conversion is not one Loupe reads (the download would then be refused at load).
    /// </summary>
    /// <exception cref="InputError">No such release or SAE id (naming close ones).</exception>
    public (string HubSpec, SaeLensRelease Release, string? Note) Resolve(string releaseAndId)
    {
        int slash = releaseAndId.IndexOf('/');
        if (slash <= 0 || slash == releaseAndId.Length - 1)
            throw InputError.Expected("argument", "saelens:", "saelens:RELEASE/SAE_ID, e.g. saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre", "saelens:" + releaseAndId);
        string name = releaseAndId[..slash], id = releaseAndId[(slash + 1)..];
        if (!_releases.TryGetValue(name, out var release))
            throw new InputError($"{Path}: no release '{name}' among SAELens's {_releases.Count} releases{Suggest(name, _releases.Keys)}");
        if (!release.Saes.TryGetValue(id, out var folder))
            throw new InputError($"{Path}: release {name} has no SAE id '{id}' among its {release.Saes.Count}" +
                (Suggest(id, release.Saes.Keys) is { Length: > 0 } near ? near : $"; they start {string.Join(", ", release.Saes.Keys.Take(8))}{(release.Saes.Count > 8 ? ", …" : "")}"));
        string? note = s_readable.Contains(release.ConversionFunc ?? "") ? null
            : $"note: release {name} is converted by SAELens's {release.ConversionFunc}, a layout Loupe may not read; if loading fails, convert it with SAELens and save it in SAELens's layout";
        return ($"hf:{release.RepoId}/{folder.Trim('/')}", release, note);
    }

    // "; did you mean …" with up to five names sharing the longest prefix with (or containing) the one asked for.
    static string Suggest(string asked, IEnumerable<string> names)
    {
        static int Common(string a, string b)
        {
            int n = 0;
            while (n < a.Length && n < b.Length && a[n] == b[n]) n++;
            return n;
        }
        var near = names.Select(n => (Name: n, Score: n.Contains(asked, StringComparison.Ordinal) ? asked.Length : Common(asked, n)))
            .Where(x => x.Score >= Math.Max(3, asked.Length / 2)).OrderByDescending(x => x.Score).ThenBy(x => x.Name, StringComparer.Ordinal)
            .Take(5).Select(x => x.Name).ToList();
        return near.Count == 0 ? "" : "; did you mean " + string.Join(", ", near) + "?";
    }

    static (string Key, string Value)? KeyValue(string line)
    {
        int colon = line.IndexOf(':');
        if (colon <= 0) return null;
        string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
        int comment = value.IndexOf(" #", StringComparison.Ordinal);
        if (comment >= 0 && !value.StartsWith('"') && !value.StartsWith('\'')) value = value[..comment].TrimEnd();
        return (Unquote(key), value is "null" or "~" ? "" : Unquote(value)); // YAML's null: no value
    }

    static string Unquote(string s) =>
        s.Length >= 2 && (s[0] == '"' && s[^1] == '"' || s[0] == '\'' && s[^1] == '\'') ? s[1..^1] : s;

    static string Clip(string s) => s.Length <= 60 ? s : s[..60] + "…";
}
