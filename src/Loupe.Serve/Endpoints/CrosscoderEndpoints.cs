// The Diff page's API: the crosscoders given with --crosscoder, each read once at start and its decoder diff
// (CrosscoderDiff.Compute: per latent the decoder norm in each source, relative norm, Δ, cosine, class) computed once on
// first request; latents are listed a page at a time, filtered by class and ordered on the server. A served feature store
// built from the crosscoder (`loupe crosscoder features`: its recorded sae_path is the crosscoder's folder) is named, so
// the page links a latent to its dashboard.
using System.Security.Cryptography;
using System.Text;
using Loupe.Dictionaries.Crosscoders;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Loupe.Serve;

/// <summary>A served crosscoder as the API lists it.</summary>
/// <param name="Id">Its id (16 hex digits of a SHA-256 of its full path); the only way requests name it.</param>
/// <param name="Name">Its folder or file name, for a person.</param>
/// <param name="Architecture">relu or batchtopk.</param>
/// <param name="Sources">Short labels of its sources (the model labels when they differ).</param>
/// <param name="Hooks">The hook each source reads.</param>
/// <param name="DSae">Latents.</param>
/// <param name="Counts">Latents per class.</param>
/// <param name="Store">The id of a served feature store of its latents, or null.</param>
public sealed record CrosscoderView(string Id, string Name, string Architecture, IReadOnlyList<string> Sources, IReadOnlyList<string> Hooks, int DSae,
    IReadOnlyDictionary<string, int> Counts, string? Store);

/// <summary>A crosscoder's diff without its latents: thresholds, counts and histograms.</summary>
/// <param name="Crosscoder">The crosscoder.</param>
/// <param name="Thresholds">The Δ thresholds of the classes.</param>
/// <param name="NormDiffHistogram">Δ of the live latents over [0, 1] (two sources).</param>
/// <param name="RelativeNormHistogram">The relative norm of the live latents over [0, 1] (two sources).</param>
/// <param name="SharedCosineHistogram">Decoder cosines of the shared latents over [−1, 1] (two sources).</param>
/// <param name="Classes">The classes in the order the page shows them: first-only, shared, other, second-only, then the rest.</param>
public sealed record CrosscoderSummaryView(CrosscoderView Crosscoder, CrosscoderDiffOptions Thresholds, CrosscoderHistogram? NormDiffHistogram,
    CrosscoderHistogram? RelativeNormHistogram, CrosscoderHistogram? SharedCosineHistogram, IReadOnlyList<string> Classes);

/// <summary>A page of latents.</summary>
/// <param name="Total">Latents matching the filter.</param>
/// <param name="Offset">The first row's index in the order.</param>
/// <param name="Order">norm_diff, relative_norm, cosine, peak_share or index.</param>
/// <param name="Descending">Whether the order is largest first.</param>
/// <param name="Class">The class filter, or null for all.</param>
/// <param name="Rows">The rows.</param>
public sealed record CrosscoderLatentPageView(int Total, int Offset, string Order, bool Descending, string? Class, IReadOnlyList<CrosscoderLatentDiff> Rows);

/// <summary>One crosscoder given with --crosscoder: read at start; its diff computed on first need.</summary>
public sealed class ServedCrosscoder(string id, string name, string path, Crosscoder crosscoder)
{
    readonly Lazy<CrosscoderDiffResult> _diff = new(() => CrosscoderDiff.Compute(crosscoder));

    public string Id => id;
    public string Name => name;
    /// <summary>The full path it was read from (what a feature store of it records as its sae_path).</summary>
    public string Path => path;
    public Crosscoder Crosscoder => crosscoder;
    public CrosscoderDiffResult Diff => _diff.Value;

    /// <summary>The classes in display order: the first source's own, shared, other, the second's own, then any other (dead last).</summary>
    public IReadOnlyList<string> Classes()
    {
        var present = Diff.Counts.Keys.ToList();
        var labels = Diff.Sources;
        string[] preferred = labels.Count == 2 ? [$"{labels[0]} only", "shared", "other", $"{labels[1]} only"] : [];
        return [.. preferred.Where(present.Contains), .. present.Where(c => !preferred.Contains(c) && c != "dead").Order(StringComparer.Ordinal), .. present.Where(c => c == "dead")];
    }

    public CrosscoderView View(ServedStores stores) =>
        new(id, name, crosscoder.Architecture, Diff.Sources, Diff.Hooks, crosscoder.DSae, Diff.Counts, StoreOf(stores)?.Id);

    /// <summary>A served feature store built from this crosscoder (its recorded sae_path is this crosscoder's path), or null.</summary>
    public ServedStore? StoreOf(ServedStores stores) =>
        stores.All.FirstOrDefault(s => s.Read(st => st.Meta.TryGetValue("sae_path", out var p) && string.Equals(System.IO.Path.GetFullPath(p), path, StringComparison.Ordinal)));
}

/// <summary>The crosscoders given with --crosscoder, by id.</summary>
public sealed class ServedCrosscoders
{
    readonly Dictionary<string, ServedCrosscoder> _byId = new(StringComparer.Ordinal);

    /// <exception cref="InputError">A path is not a crosscoder Loupe reads (the message names it and why).</exception>
    public ServedCrosscoders(IReadOnlyList<string> paths)
    {
        foreach (string given in paths)
        {
            string full = System.IO.Path.GetFullPath(given);
            if (!File.Exists(full) && !Directory.Exists(full)) throw new InputError($"argument: --crosscoder: '{given}' does not exist");
            string id = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(full)))[..16];
            if (_byId.ContainsKey(id)) continue;
            var crosscoder = CrosscoderFiles.Load(full);
            string name = System.IO.Path.GetFileName(full.TrimEnd(System.IO.Path.DirectorySeparatorChar));
            _byId[id] = new ServedCrosscoder(id, name, full, crosscoder);
        }
    }

    public IReadOnlyCollection<ServedCrosscoder> All => _byId.Values;

    /// <summary>The crosscoder with that id, or null (answered 404).</summary>
    public ServedCrosscoder? Find(string id) => _byId.GetValueOrDefault(id);
}

/// <summary>The Diff page's endpoints (see the top of this file).</summary>
public static class CrosscoderEndpoints
{
    const int MaxPage = 500;
    static readonly string[] s_orders = ["norm_diff", "relative_norm", "cosine", "peak_share", "index"];

    public static void Map(WebApplication app, ServedCrosscoders crosscoders, ServedStores stores)
    {
        var api = app.MapGroup("/api/crosscoders");
        api.MapGet("", () => Results.Json(crosscoders.All.Select(c => c.View(stores)).ToArray(), ServeHost.Json))
            .WithSummary("The served crosscoders (--crosscoder): sources, hooks, latents, counts per class, the feature store of their latents");
        api.MapGet("/{id}", (string id) =>
        {
            if (crosscoders.Find(id) is not { } c) return Results.NotFound(new { error = $"no crosscoder '{id}'" });
            var d = c.Diff;
            return Results.Json(new CrosscoderSummaryView(c.View(stores), d.Thresholds, d.NormDiffHistogram, d.RelativeNormHistogram, d.SharedCosineHistogram, c.Classes()), ServeHost.Json);
        }).WithSummary("A crosscoder's diff: thresholds, counts per class and the Δ, relative-norm and shared-cosine histograms");
        api.MapGet("/{id}/latents", (string id, string? @class, string? order, bool? desc, int? offset, int? limit) =>
        {
            if (crosscoders.Find(id) is not { } c) return Results.NotFound(new { error = $"no crosscoder '{id}'" });
            string by = order ?? "norm_diff";
            if (!s_orders.Contains(by)) return Results.BadRequest(new { error = $"order: expected one of {string.Join(", ", s_orders)}, got '{by}'" });
            if (@class is not null && !c.Diff.Counts.ContainsKey(@class))
                return Results.BadRequest(new { error = $"class: expected one of {string.Join(", ", c.Diff.Counts.Keys)}, got '{@class}'" });
            int from = offset ?? 0, count = limit ?? 100;
            if (from < 0) return Results.BadRequest(new { error = "offset: expected 0 or more" });
            if (count is < 1 or > MaxPage) return Results.BadRequest(new { error = $"limit: expected 1 to {MaxPage}" });
            bool descending = desc ?? by != "index";
            var rows = c.Diff.Latents.Where(l => @class is null || l.Class == @class);
            // Latents without the statistic (dead, or more than two sources) sort last either way; ties by index.
            Func<CrosscoderLatentDiff, double?> key = by switch
            {
                "norm_diff" => l => l.NormDiff,
                "relative_norm" => l => l.RelativeNorm,
                "cosine" => l => l.Cosine,
                "peak_share" => l => l.PeakShare,
                _ => l => l.Index,
            };
            var ordered = rows.OrderBy(l => key(l) is null ? 1 : 0)
                .ThenBy(l => descending ? -(key(l) ?? 0) : key(l) ?? 0).ThenBy(l => l.Index).ToArray();
            return Results.Json(new CrosscoderLatentPageView(ordered.Length, from, by, descending, @class, ordered.Skip(from).Take(count).ToArray()), ServeHost.Json);
        }).WithSummary("A page of latents (≤ 500): filtered by class, ordered by norm_diff (default), relative_norm, cosine, peak_share or index");
    }
}
