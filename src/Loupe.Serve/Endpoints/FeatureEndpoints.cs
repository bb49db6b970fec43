using System.Security.Cryptography;
using System.Text;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Loupe.Serve;

/// <summary>A feature store as the API lists it.</summary>
/// <param name="Id">Its id (16 hex digits of a SHA-256 of its full path); the only way requests name it.</param>
/// <param name="Name">Its file name with its folder, for a person.</param>
/// <param name="Hook">The hook its dictionary reads.</param>
/// <param name="DSae">Features in the dictionary.</param>
/// <param name="NTokens">Tokens the statistics cover.</param>
/// <param name="Dead">Features never active.</param>
/// <param name="HasSae">Whether the dictionary can be loaded (needed for text search and feature steering).</param>
/// <param name="Sae">Where the dictionary is, or why it is not available.</param>
public sealed record FeatureStoreView(string Id, string Name, string Hook, int DSae, long NTokens, int Dead, bool HasSae, string Sae);

/// <summary>One row of the feature list.</summary>
/// <param name="Feature">The feature index.</param>
/// <param name="NActive">Tokens with activation &gt; 0.</param>
/// <param name="Density">n_active / n_tokens.</param>
/// <param name="MaxAct">The largest activation.</param>
/// <param name="MeanAct">Mean activation when active (null when dead).</param>
/// <param name="TopPromoted">The token its decoder direction promotes most, if stored.</param>
/// <param name="Explanation">The first stored explanation, if any.</param>
public sealed record FeatureRowView(int Feature, long NActive, double Density, double MaxAct, double? MeanAct, string? TopPromoted, string? Explanation);

/// <summary>A page of the feature list.</summary>
/// <param name="Total">Features in the store.</param>
/// <param name="Offset">The first row's index in the order.</param>
/// <param name="Order">density, max_act or feature.</param>
/// <param name="Rows">The rows.</param>
public sealed record FeatureListView(int Total, int Offset, string Order, FeatureRowView[] Rows);

/// <summary>A feature active on a token.</summary>
/// <param name="Feature">The feature index.</param>
/// <param name="Activation">Its activation there.</param>
public sealed record ActiveFeatureView(int Feature, double Activation);

/// <summary>"Which features fire here?": the text's tokens and the features active at each.</summary>
/// <param name="Tokens">The tokens.</param>
/// <param name="Features">Per position, the strongest active features first.</param>
public sealed record TextSearchView(TokenView[] Tokens, ActiveFeatureView[][] Features);

/// <summary>A feature whose top examples sit on the searched token.</summary>
/// <param name="Feature">The feature index.</param>
/// <param name="Examples">How many of its top examples do.</param>
/// <param name="MaxActivation">The largest of their activations.</param>
public sealed record TokenHitView(int Feature, int Examples, double MaxActivation);

/// <summary>Features by token.</summary>
/// <param name="Tokens">The token ids the query matched.</param>
/// <param name="Features">The features, most examples first.</param>
public sealed record TokenSearchView(TokenView[] Tokens, TokenHitView[] Features);

/// <summary>A text to search features in.</summary>
/// <param name="Text">The text (tokenized as prompts are).</param>
/// <param name="Tokens">Or token ids.</param>
/// <param name="PerToken">Features listed per token (1–50, default 10).</param>
public sealed record FeatureTextRequest(string? Text, int[]? Tokens, int? PerToken);

/// <summary>One served feature store: opened once, queried under a lock (one SQLite connection); its dictionary loaded on first need.</summary>
public sealed class ServedStore(string id, string name, FeatureStore store, string? saePath)
{
    readonly Lazy<(SparseDictionary Dictionary, SaeLensConfig Config)?> _dictionary = new(() => saePath is null ? null : LoadDictionary(saePath, store.Hook));

    public string Id => id;
    public string Name => name;
    public FeatureStore Store => store;
    public string? SaePath => saePath;

    /// <summary>The dictionary behind the store.</summary>
    /// <exception cref="InputError">The store does not record where its dictionary is and none was given with --sae.</exception>
    public SparseDictionary Dictionary => _dictionary.Value?.Dictionary
        ?? throw new InputError($"the dictionary of feature store '{name}' is not available (the store records none; start the server with --sae DIR)");

    public T Read<T>(Func<FeatureStore, T> query)
    {
        lock (store) return query(store);
    }

    // A Gemma Scope .npz does not name its hook (so the store's is passed); a SAELens cfg.json does and refuses a second one.
    static (SparseDictionary, SaeLensConfig)? LoadDictionary(string path, string hook)
    {
        bool npz = path.EndsWith(".npz", StringComparison.OrdinalIgnoreCase)
            || (Directory.Exists(path) && !File.Exists(Path.Combine(path, SaeLensFormat.ConfigFile)));
        return DictionaryFile.Load(path, npz ? hook : null);
    }
}

/// <summary>The feature stores given with --features: files, or folders searched (without following links) for features.db.</summary>
public sealed class ServedStores : IDisposable
{
    readonly Lock _adding = new();
    volatile Dictionary<string, ServedStore> _stores = new(StringComparer.Ordinal);

    /// <exception cref="InputError">A path names neither a store nor a folder holding one, or a store does not open.</exception>
    public ServedStores(IReadOnlyList<string> paths, string? saePath)
    {
        foreach (string given in paths)
        {
            string full = Path.GetFullPath(given);
            var files = File.Exists(full) ? [full] : Directory.Exists(full) ? Search(full, 0).ToList()
                : throw new InputError($"argument: --features: '{given}' is neither a feature store nor a folder");
            if (files.Count == 0) throw new InputError($"argument: --features: no {FeatureStoreSchema.DefaultFileName} under '{given}'");
            foreach (string file in files) Add(file, saePath);
        }
    }

    /// <summary>Opens the store at <paramref name="file"/> (a full path) and serves it; a store already served is returned as it is.</summary>
    /// <param name="file">The features.db file.</param>
    /// <param name="saePath">The dictionary behind it when the store's recorded sae_path is not at hand.</param>
    public ServedStore Add(string file, string? saePath)
    {
        string id = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(file)))[..16];
        lock (_adding)
        {
            if (_stores.TryGetValue(id, out var served)) return served;
            var store = FeatureStore.Open(file);
            string? recorded = store.Meta.TryGetValue("sae_path", out var p) && (File.Exists(p) || Directory.Exists(p)) ? p : null;
            string name = Path.Combine(Path.GetFileName(Path.GetDirectoryName(file)) ?? "", Path.GetFileName(file));
            // Copy on write: readers enumerate a snapshot while a job adds a store it built.
            var next = new Dictionary<string, ServedStore>(_stores, StringComparer.Ordinal) { [id] = new ServedStore(id, name, store, saePath ?? recorded) };
            _stores = next;
            return next[id];
        }
    }

    static IEnumerable<string> Search(string dir, int depth)
    {
        if (depth > 8) yield break;
        var info = new DirectoryInfo(dir);
        foreach (var f in info.EnumerateFiles("*.db"))
            if (f.LinkTarget is null && (f.Name == FeatureStoreSchema.DefaultFileName || f.Name.EndsWith("." + FeatureStoreSchema.DefaultFileName, StringComparison.Ordinal))) yield return f.FullName;
        foreach (var sub in info.EnumerateDirectories())
            if (sub.LinkTarget is null && !sub.Name.StartsWith('.'))
                foreach (var f in Search(sub.FullName, depth + 1)) yield return f;
    }

    public IReadOnlyCollection<ServedStore> All => _stores.Values;

    /// <summary>The store with that id, or null (answered 404).</summary>
    public ServedStore? Find(string id) => _stores.GetValueOrDefault(id);

    public void Dispose()
    {
        foreach (var s in _stores.Values) s.Store.Dispose();
    }
}

/// <summary>The Features page's API: store list, feature list, a feature's dashboard, search by text and by token.</summary>
public static class FeatureEndpoints
{
    public static void Map(WebApplication app, ModelGate gate, ServedStores stores, ServeOptions options)
    {
        var model = gate.Model;
        var api = app.MapGroup("/api/features");
        api.MapGet("/stores", () => stores.All.Select(s => s.Read(st => new FeatureStoreView(s.Id, s.Name, st.Hook, st.DSae, st.Tokens, st.DeadFeatures(),
            s.SaePath is not null, s.SaePath ?? "not recorded; give --sae")))).WithSummary("The served feature stores, by id");

        api.MapGet("/{store}", (string store, string? order, int? offset, int? limit) =>
        {
            if (stores.Find(store) is not { } s) return NoStore();
            string by = order ?? "density";
            int from = Math.Max(0, offset ?? 0), n = Math.Clamp(limit ?? 100, 1, 500);
            return Results.Json(s.Read(st =>
            {
                var rows = st.Features(by, n, from).Select(r => new FeatureRowView(r.Feature, r.NActive, r.Density, r.MaxAct, r.MeanAct,
                    st.Logits(r.Feature, FeatureStoreSchema.Promoted).FirstOrDefault() is { } p ? p.TokenStr ?? $"<{p.TokenId}>" : null,
                    st.Explanations(r.Feature).FirstOrDefault()?.Text)).ToArray();
                return new FeatureListView(st.DSae, from, by, rows);
            }), ServeHost.Json);
        }).WithSummary("A page of the store's features, ordered by density, max_act or feature (largest first)");

        api.MapGet("/{store}/{feature:int}", (string store, int feature, int? top) =>
        {
            if (stores.Find(store) is not { } s) return NoStore();
            var json = s.Read(st => FeatureDashboardJson.Build(st, feature, Math.Clamp(top ?? 20, 0, 1000)));
            return Results.Text(json.ToJsonString(), "application/json");
        }).WithSummary("One feature's dashboard: statistics, histograms, logit tables, top and interval examples, explanations (as `loupe features top --json`)");

        api.MapPost("/{store}/search-text", async (string store, FeatureTextRequest body, CancellationToken cancel) =>
        {
            if (stores.Find(store) is not { } s) return NoStore();
            int perToken = Math.Clamp(body.PerToken ?? 10, 1, 50);
            int[] ids = Analyses.Tokens(model, body.Text, body.Tokens, options);
            var dictionary = s.Dictionary;
            string hook = s.Read(st => st.Hook);
            var rows = await gate.RunAsync(m => FeatureSearch.ActiveFeatures(m, dictionary, hook, ids, perToken), cancel);
            return Results.Json(new TextSearchView([.. ids.Select(id => new TokenView(id, Analyses.Text(model, id)))],
                [.. rows.Select(r => r.Select(a => new ActiveFeatureView(a.Feature, a.Activation)).ToArray())]), ServeHost.Json);
        }).WithSummary("Which features fire here? The model and the store's dictionary over a text: the features active at each token");

        api.MapGet("/{store}/search-token", (string store, string token, int? limit) =>
        {
            if (stores.Find(store) is not { } s) return NoStore();
            int n = Math.Clamp(limit ?? 50, 1, 500);
            int[] ids = TokenIds(model, token);
            var hits = s.Read(st => ids.SelectMany(id => st.FeaturesWithTopToken(id, n))
                .GroupBy(h => h.Feature).Select(g => new TokenHitView(g.Key, g.Sum(h => h.Examples), g.Max(h => h.MaxActivation)))
                .OrderByDescending(h => h.Examples).ThenByDescending(h => h.MaxActivation).ThenBy(h => h.Feature).Take(n).ToArray());
            return Results.Json(new TokenSearchView([.. ids.Select(id => new TokenView(id, Analyses.Text(model, id)))], hits), ServeHost.Json);
        }).WithSummary("Features whose top examples sit on a token (given as its text, with or without a leading space, or as id:N)");
    }

    static IResult NoStore() => Results.NotFound(new { error = "no feature store with that id" });

    /// <summary>The ids whose text is <paramref name="token"/> (exactly, else with a leading space, else trimmed), or id:N.</summary>
    /// <exception cref="InputError">Nothing in the vocabulary reads so.</exception>
    static int[] TokenIds(HookedTransformer model, string token)
    {
        if (token.StartsWith("id:", StringComparison.Ordinal) && int.TryParse(token.AsSpan(3), out int id))
            return (uint)id < (uint)model.Config.DVocab ? [id] : throw new InputError($"token id {id} is outside the vocabulary");
        var texts = Enumerable.Range(0, model.Config.DVocab).Select(i => (Id: i, Text: Analyses.Text(model, i))).ToArray();
        foreach (var match in new Func<string, bool>[] { t => t == token, t => t == " " + token, t => t.Trim() == token.Trim() })
        {
            int[] ids = [.. texts.Where(x => match(x.Text)).Select(x => x.Id)];
            if (ids.Length > 0) return ids;
        }
        throw new InputError($"no token reads {InputError.Show(token)}");
    }
}
