using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Features;

/// <summary>A feature active on one token of a text, and its activation there.</summary>
/// <param name="Feature">The feature index.</param>
/// <param name="Activation">Its activation (&gt; 0).</param>
public sealed record ActiveFeature(int Feature, double Activation);

/// <summary>"Which features fire here?": a text through the model and a dictionary, as the store's build encodes it.</summary>
public static class FeatureSearch
{
    /// <summary>
    /// The features active (activation &gt; 0, as in the store) at each position of <paramref name="tokens"/>, the
    /// <paramref name="perToken"/> strongest first; reads <paramref name="hook"/> and encodes it exactly as
    /// <see cref="FeatureDashboardBuilder.Build"/> does, so a token of a stored example shows the stored activation.
    /// </summary>
    /// <param name="model">The model the dictionary belongs to.</param>
    /// <param name="dictionary">The dictionary (SAE or transcoder) whose features are listed.</param>
    /// <param name="hook">The hook point the dictionary reads.</param>
    /// <param name="tokens">The text's token ids (BOS included when the model's template adds one).</param>
    /// <param name="perToken">At most this many features per position.</param>
    /// <exception cref="InputError">The hook's width is not the dictionary's d_in, or the tokens do not fit the model.</exception>
    public static ActiveFeature[][] ActiveFeatures(HookedTransformer model, SparseDictionary dictionary, string hook, int[] tokens, int perToken)
    {
        var result = model.Run(TokenBatch.Single(tokens), new RunOptions { CacheFilter = h => h == hook, LastPositionLogitsOnly = true });
        var cached = result.Cache[hook];
        int n = tokens.Length, dSae = dictionary.Shape.DSae;
        if (cached.Length != n * dictionary.Shape.DIn)
            throw new InputError($"hook '{hook}' gave {cached.ShapeString} for {n} tokens; the dictionary reads d_in = {dictionary.Shape.DIn}");
        if (!cached.IsHost && DeviceSaeTraining.Supports(dictionary.Activation))
            return OnDevice(DeviceSaeEncoder.Shared(model.Backend, dictionary).EncodeSparse(cached, n, (_, _, _) => { }), perToken);
        var acts = dictionary.Encode(cached.ToCpu().Span, n); // [pos, d_sae]
        var rows = new ActiveFeature[n][];
        for (int p = 0; p < n; p++)
        {
            var row = acts.AsSpan(p * dSae, dSae);
            var active = new List<ActiveFeature>();
            for (int f = 0; f < dSae; f++) if (row[f] > 0) active.Add(new ActiveFeature(f, row[f]));
            rows[p] = [.. active.OrderByDescending(a => a.Activation).ThenBy(a => a.Feature).Take(perToken)];
        }
        return rows;
    }

    // The device encodes with the dictionary's weights uploaded once and sends back only the nonzero activations (as a
    // feature-store build does); the host keeps the positive ones, strongest first, as above.
    static ActiveFeature[][] OnDevice(SparseActivations sparse, int perToken) =>
        [.. Enumerable.Range(0, sparse.Rows).Select(p => Enumerable.Range(sparse.RowStart[p], sparse.RowStart[p + 1] - sparse.RowStart[p])
            .Where(i => sparse.Value[i] > 0).Select(i => new ActiveFeature(sparse.Feature[i], sparse.Value[i]))
            .OrderByDescending(a => a.Activation).ThenBy(a => a.Feature).Take(perToken).ToArray())];
}
