using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

namespace Loupe.Mcp;

/// <summary>A file or folder the server may read, known to clients only by its name.</summary>
/// <param name="Name">What a client passes to a tool.</param>
/// <param name="Kind">sae, transcoders, feature_store, vector, persona_vector, concept_monitor or tuned_lens.</param>
/// <param name="Description">What the artifact holds (hook, sizes, concept), for an agent choosing one.</param>
public sealed record Artifact(string Name, string Kind, string Description)
{
    /// <summary>Where it is on disk; never sent to a client.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string Path { get; init; } = "";
}

/// <summary>
/// The files the operator served on the command line: SAE folders, a transcoder folder, and folders of vectors,
/// monitors and feature stores. Tools name them; a client never gives a path, so it reads only what was served.
/// </summary>
public sealed class McpArtifacts
{
    public const string Sae = "sae", Transcoders = "transcoders", FeatureStore = "feature_store",
        Vector = "vector", PersonaVector = "persona_vector", ConceptMonitor = "concept_monitor", TunedLens = "tuned_lens";

    readonly Dictionary<string, Artifact> _byName = new(StringComparer.Ordinal);

    /// <summary>Every artifact, by name.</summary>
    public IReadOnlyList<Artifact> All => [.. _byName.Values.OrderBy(a => a.Kind, StringComparer.Ordinal).ThenBy(a => a.Name, StringComparer.Ordinal)];

    /// <summary>Indexes the served folders (their files are looked at once, here).</summary>
    /// <param name="saeFolders">SAELens folders (a <c>features.db</c> inside is served as a feature store of the same name).</param>
    /// <param name="transcoders">The transcoder folder for attribution graphs, if any.</param>
    /// <param name="artifactFolders">Folders whose <c>*.safetensors</c> (vectors, persona vectors, monitors), <c>*.db</c> (feature stores) and tuned
    /// lenses (a folder's <c>params.safetensors</c> or <c>params.pt</c> beside a tuned-lens <c>config.json</c>, served by the folder's name) are served.</param>
    /// <exception cref="InputError">A folder is missing, or an SAE folder cannot be read.</exception>
    public static McpArtifacts Index(IEnumerable<string> saeFolders, string? transcoders, IEnumerable<string> artifactFolders)
    {
        var index = new McpArtifacts();
        foreach (var folder in saeFolders)
        {
            if (!Directory.Exists(folder)) throw new InputError($"argument: --sae: folder not found: {folder}");
            var (dict, cfg) = DictionaryFile.Load(folder);
            string name = System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(folder)));
            index.Add(new Artifact(name, Sae, $"SAE at {cfg.HookName}: d_in {dict.Shape.DIn}, d_sae {dict.Shape.DSae}, {dict.Architecture}") { Path = folder });
            string db = System.IO.Path.Combine(folder, FeatureStoreSchema.DefaultFileName);
            if (File.Exists(db)) index.Add(new Artifact(name, FeatureStore, $"feature store of SAE {name}") { Path = db });
        }
        if (transcoders is not null)
        {
            if (!Directory.Exists(transcoders)) throw new InputError($"argument: --transcoders: folder not found: {transcoders}");
            index.Add(new Artifact("transcoders", Transcoders, "the transcoders that replace the MLPs in attribution graphs") { Path = transcoders });
        }
        foreach (var folder in artifactFolders)
        {
            if (!Directory.Exists(folder)) throw new InputError($"argument: --artifacts: folder not found: {folder}");
            foreach (var file in Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            {
                string name = System.IO.Path.GetRelativePath(folder, file).Replace('\\', '/');
                if (file.EndsWith(".db", StringComparison.OrdinalIgnoreCase))
                    index.Add(new Artifact(name, FeatureStore, "feature store") { Path = file });
                else if (TunedLensFolder(file) is { } lensFolder)
                {
                    string lensName = System.IO.Path.GetRelativePath(folder, lensFolder).Replace('\\', '/');
                    index.Add(new Artifact(lensName == "." ? System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(folder))) : lensName,
                        TunedLens, DescribeLens(lensFolder)) { Path = lensFolder });
                }
                else if (file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) && Describe(file) is var (kind, description))
                    index.Add(new Artifact(name, kind, description) { Path = file });
            }
        }
        return index;
    }

    // A tuned lens is a folder: params.safetensors (or tuned-lens's own params.pt, when there is no params.safetensors) beside a
    // config.json that says lens_type (tuned-lens's layout).
    static string? TunedLensFolder(string file)
    {
        string fileName = System.IO.Path.GetFileName(file), folder = System.IO.Path.GetDirectoryName(file)!;
        bool lensFile = fileName == Loupe.Causal.Lens.TunedLens.ParamsFile
            || (fileName == Loupe.Causal.Lens.TunedLens.TorchParamsFile && !File.Exists(System.IO.Path.Combine(folder, Loupe.Causal.Lens.TunedLens.ParamsFile)));
        if (!lensFile) return null;
        string config = System.IO.Path.Combine(folder, Loupe.Causal.Lens.TunedLens.ConfigFile);
        try { return File.Exists(config) && File.ReadAllText(config).Contains("\"lens_type\"", StringComparison.Ordinal) ? folder : null; }
        catch (IOException) { return null; }
    }

    static string DescribeLens(string folder)
    {
        try
        {
            var lens = Loupe.Causal.Lens.TunedLens.Load(folder);
            return $"tuned lens: {lens.Layers} translators, d_model {lens.DModel}" + (lens.BaseModel is { Length: > 0 } b ? $", tuned for {b}" : "");
        }
        catch (Exception e) when (e is InputError or IOException)
        {
            return "tuned lens (unreadable: " + e.Message + ")";
        }
    }

    /// <summary>The kind of a safetensors file from its metadata; an unreadable file is served as a plain vector (its tool reports why it fails).</summary>
    static (string Kind, string Description) Describe(string file)
    {
        try
        {
            using var st = SafeTensorsFile.Open(file);
            var meta = st.Metadata;
            string hook = meta.GetValueOrDefault("hook_name") ?? meta.GetValueOrDefault("hook") ?? "";
            string at = hook.Length > 0 ? $" at {hook}" : "";
            if (meta.GetValueOrDefault("kind") == Loupe.Steering.Monitors.ConceptMonitor.Kind)
                return (ConceptMonitor, $"concept monitor '{meta.GetValueOrDefault("concept")}'{at}");
            if (st.Names.Contains("persona"))
                return (PersonaVector, $"persona vector{(meta.GetValueOrDefault("trait") is { } t ? $" '{t}'" : "")}{at}");
            return (Vector, $"vector file ({string.Join(", ", st.Names.Take(4))}){at}");
        }
        catch (Exception e) when (e is InputError or IOException)
        {
            return (Vector, "safetensors file (unreadable: " + e.Message + ")");
        }
    }

    void Add(Artifact artifact)
    {
        string key = Key(artifact.Kind, artifact.Name);
        if (!_byName.TryAdd(key, artifact))
            throw new InputError($"two served {artifact.Kind} artifacts are both named '{artifact.Name}'; rename one of the folders");
    }

    static string Key(string kind, string name) => KindGroup(kind) + "\n" + name;

    // Vectors, persona vectors and monitors share one namespace (all safetensors); each other kind has its own.
    static string KindGroup(string kind) => kind is Vector or PersonaVector or ConceptMonitor ? Vector : kind;

    /// <summary>The served artifact of one of <paramref name="kinds"/> called <paramref name="name"/>.</summary>
    /// <exception cref="InputError">None is served under that name (the message lists those that are).</exception>
    public Artifact Get(string name, string parameter, params string[] kinds)
    {
        foreach (var kind in kinds)
            if (_byName.TryGetValue(Key(kind, name ?? ""), out var a) && kinds.Contains(a.Kind)) return a;
        var served = All.Where(a => kinds.Contains(a.Kind)).Select(a => a.Name).ToArray();
        throw new InputError($"{parameter}: no {string.Join(" or ", kinds)} named '{name}' is served" +
            (served.Length == 0 ? $"; the server was started without any (see list_artifacts)" : $"; served: {string.Join(", ", served)}"));
    }
}
