// The Diff page's model diffs: diff.json files `loupe diff` wrote, given with --diff (a folder or the file), each read and
// checked once at start (ModelDiffFile.Read), listed by id and served whole (KL by position and histogram, the most
// divergent positions with their windows, the activation differences per hook and the token texts they name).
using System.Security.Cryptography;
using System.Text;
using Loupe.Dictionaries.Diffing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Loupe.Serve;

/// <summary>A served model diff as the API lists it.</summary>
/// <param name="Id">Its id (16 hex digits of a SHA-256 of its full path); the only way requests name it.</param>
/// <param name="Name">Its folder name, for a person.</param>
/// <param name="ModelA">The base model's label.</param>
/// <param name="ModelB">The fine-tune's label.</param>
/// <param name="SourceA">Where the base model was read from.</param>
/// <param name="SourceB">Where the fine-tune was read from.</param>
/// <param name="Contexts">Contexts compared.</param>
/// <param name="ContextSize">Tokens per context.</param>
/// <param name="MeanKl">Mean KL(p_B ‖ p_A) in nats.</param>
/// <param name="Hooks">The hooks with activation differences.</param>
public sealed record ModelDiffView(string Id, string Name, string ModelA, string ModelB, string SourceA, string SourceB, int Contexts, int ContextSize, double MeanKl, IReadOnlyList<string> Hooks);

/// <summary>A whole model diff: its listing, the result and the token texts (id → text).</summary>
public sealed record ModelDiffDetailView(ModelDiffView Diff, ModelDiffResult Result, IReadOnlyDictionary<int, string> TokenStrings);

/// <summary>The model diffs given with --diff, by id.</summary>
public sealed class ServedModelDiffs
{
    readonly Dictionary<string, (ModelDiffView View, ModelDiffFile File)> _byId = new(StringComparer.Ordinal);

    /// <exception cref="InputError">A path is missing or not a diff Loupe reads (the message names the file and why).</exception>
    public ServedModelDiffs(IReadOnlyList<string> paths)
    {
        foreach (string given in paths)
        {
            string full = Path.GetFullPath(given);
            if (!File.Exists(full) && !Directory.Exists(full)) throw new InputError($"argument: --diff: '{given}' does not exist");
            string id = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(full)))[..16];
            if (_byId.ContainsKey(id)) continue;
            var file = ModelDiffFile.Read(full);
            string folder = Directory.Exists(full) ? full : Path.GetDirectoryName(full)!;
            var r = file.Result;
            var view = new ModelDiffView(id, Path.GetFileName(folder.TrimEnd(Path.DirectorySeparatorChar)), file.LabelA, file.LabelB, r.ModelA, r.ModelB,
                r.Contexts, r.ContextSize, r.MeanKl, [.. r.Differences.Select(d => d.Hook).Distinct()]);
            _byId[id] = (view, file);
        }
    }

    public IEnumerable<ModelDiffView> All => _byId.Values.Select(v => v.View);

    /// <summary>The diff with that id, or null (answered 404).</summary>
    public ModelDiffDetailView? Find(string id) => _byId.TryGetValue(id, out var d) ? new ModelDiffDetailView(d.View, d.File.Result, d.File.TokenStrings) : null;
}

/// <summary>The model-diff endpoints (see the top of this file).</summary>
public static class ModelDiffEndpoints
{
    public static void Map(WebApplication app, ServedModelDiffs diffs)
    {
        var api = app.MapGroup("/api/diffs");
        api.MapGet("", () => Results.Json(diffs.All.ToArray(), ServeHost.Json))
            .WithSummary("The served model diffs (--diff, from `loupe diff`): the two models, contexts, mean KL, hooks");
        api.MapGet("/{id}", (string id) => diffs.Find(id) is { } d ? Results.Json(d, ServeHost.Json) : Results.NotFound(new { error = $"no model diff '{id}'" }))
            .WithSummary("A model diff: KL by position and its histogram, the most divergent positions with their windows, the activation differences per hook, token texts");
    }
}
