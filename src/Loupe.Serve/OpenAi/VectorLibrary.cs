using System.Collections.Concurrent;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using Loupe.Steering;

namespace Loupe.Serve.OpenAi;

/// <summary>One file the server lets requests use, by id.</summary>
/// <param name="Id">The id requests name it by: the path under --vectors without extension, with '/' separators.</param>
/// <param name="Kind">"vector" (a safetensors vector: persona, concept monitor or steering vector) or "sae" (a SAELens folder).</param>
/// <param name="Hook">The hook it belongs to (from its metadata or cfg.json).</param>
/// <param name="Threshold">A persona/monitor file's calibrated threshold; null for plain vectors and SAEs.</param>
public sealed record ServedVector(string Id, string Kind, string Hook, double? Threshold);

/// <summary>
/// The steering vectors, persona/monitor vectors and SAEs under <c>--vectors DIR</c>, named by id. Requests never give a
/// path: an id is looked up in the index built by walking the folder (without following links), so nothing outside it
/// can be opened.
/// </summary>
public sealed class VectorLibrary
{
    readonly Dictionary<string, (string Path, ServedVector Info)> _entries = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<string, object> _loaded = new(StringComparer.Ordinal);

    /// <exception cref="InputError">The folder does not exist.</exception>
    public VectorLibrary(string? folder)
    {
        if (folder is null) return;
        if (!Directory.Exists(folder)) throw new InputError($"argument: --vectors: no folder '{folder}'");
        var root = Path.GetFullPath(folder);
        Walk(root, root, 0);
    }

    public IReadOnlyList<ServedVector> List() => [.. _entries.Values.Select(e => e.Info).OrderBy(v => v.Id, StringComparer.Ordinal)];

    void Walk(string root, string dir, int depth)
    {
        if (depth > 8) return;
        var info = new DirectoryInfo(dir);
        if (File.Exists(Path.Combine(dir, SaeLensFormat.ConfigFile)) && File.Exists(Path.Combine(dir, SaeLensFormat.WeightsFile)) && dir != root)
        {
            TryAdd(dir, Id(root, dir), "sae");
            return;
        }
        foreach (var entry in info.EnumerateFileSystemInfos())
        {
            if (entry.LinkTarget is not null) continue;
            if (entry is DirectoryInfo d) Walk(root, d.FullName, depth + 1);
            else if (entry.Name.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                TryAdd(entry.FullName, Id(root, entry.FullName[..^".safetensors".Length]), "vector");
        }
    }

    static string Id(string root, string path) => Path.GetRelativePath(root, path).Replace(Path.DirectorySeparatorChar, '/');

    void TryAdd(string path, string id, string kind)
    {
        try
        {
            if (kind == "sae")
            {
                var (_, config) = DictionaryFile.Load(path);
                _entries[id] = (path, new ServedVector(id, kind, config.HookName, null));
                return;
            }
            using var file = SafeTensorsFile.Open(path);
            if (!file.Metadata.TryGetValue("hook", out var hook)) return; // a vector without a hook cannot be placed
            double? threshold = file.Contains("persona") && file.Metadata.ContainsKey("threshold") ? PersonaVector.Load(path).Threshold : null;
            _entries[id] = (path, new ServedVector(id, kind, hook, threshold));
        }
        catch (Exception e) when (e is InputError or IOException or FormatException or InvalidDataException)
        {
            // Unreadable files are left out of the index rather than failing the server.
        }
    }

    /// <exception cref="OpenAiError">No entry of that kind has this id.</exception>
    public ServedVector Find(string id, string kind, string param) =>
        _entries.TryGetValue(id, out var e) && e.Info.Kind == kind ? e.Info
            : throw OpenAiError.Invalid($"no served {kind} '{id}'" + (_entries.Count == 0 ? " (the server was started without --vectors)" : $"; GET /v1/loupe/vectors lists them"), param, "not_found");

    /// <summary>The direction of a vector file (its <c>persona</c>/<c>direction</c>/only tensor) at its hook.</summary>
    public SteeringVector Vector(string id, string param)
    {
        Find(id, "vector", param);
        return (SteeringVector)_loaded.GetOrAdd("v:" + id, _ => SteeringVector.Load(_entries[id].Path));
    }

    /// <summary>A persona/monitor file (PersonaVector format), or null when the vector is a plain steering vector.</summary>
    public PersonaVector? Persona(string id, string param) =>
        Find(id, "vector", param).Threshold is null ? null : (PersonaVector)_loaded.GetOrAdd("p:" + id, _ => PersonaVector.Load(_entries[id].Path));

    public (SparseDictionary Dictionary, SaeLensConfig Config) Sae(string id, string param)
    {
        Find(id, "sae", param);
        return ((SparseDictionary, SaeLensConfig))_loaded.GetOrAdd("s:" + id, _ => DictionaryFile.Load(_entries[id].Path));
    }
}
