using System.Text.Json.Nodes;

namespace Loupe.Dictionaries.Features;

/// <summary>
/// One feature's dashboard as JSON: everything the store holds for it (statistics, histograms, logit tables, top
/// examples, interval samples, explanations). <c>loupe features top --json</c> prints it and <c>loupe serve</c>'s
/// Features page shows it, so the terminal and the page read the same numbers.
/// </summary>
public static class FeatureDashboardJson
{
    /// <summary>The dashboard of <paramref name="feature"/> with at most <paramref name="topExamples"/> top examples.</summary>
    /// <param name="store">The open feature store.</param>
    /// <param name="feature">The feature index (0..d_sae−1).</param>
    /// <param name="topExamples">How many top examples to include.</param>
    /// <exception cref="InputError">The feature is out of range or a row is damaged.</exception>
    public static JsonObject Build(FeatureStore store, int feature, int topExamples)
    {
        int f = feature;
        var s = store.Feature(f);
        JsonArray Examples(IEnumerable<FeatureExample> examples) => new(examples.Select(e => (JsonNode)new JsonObject
        {
            ["rank"] = e.Rank, ["activation"] = e.Activation, ["context_id"] = e.ContextId, ["position"] = e.Position,
            ["window_start"] = e.WindowStart,
            ["tokens"] = new JsonArray(e.WindowTokens.Select(t => (JsonNode)t).ToArray()),
            ["token_strs"] = new JsonArray(e.WindowTokens.Select(t => (JsonNode?)store.TokenText(t)).ToArray()),
            ["acts"] = new JsonArray(e.WindowActs.Select(a => (JsonNode)a).ToArray()),
        }).ToArray());
        JsonNode? Histogram(string kind) => store.Histogram(f, kind) is { } h
            ? new JsonObject { ["bin_edges"] = new JsonArray(h.Edges.Select(v => (JsonNode)v).ToArray()), ["counts"] = new JsonArray(h.Counts.Select(v => (JsonNode)v).ToArray()) }
            : null;
        JsonArray Logits(string kind) => new(store.Logits(f, kind).Select(r => (JsonNode)new JsonObject
        { ["token_id"] = r.TokenId, ["token_str"] = r.TokenStr, ["value"] = r.Value }).ToArray());
        var quantile = store.Examples(f, FeatureStoreSchema.Quantile);
        return new JsonObject
        {
            ["feature"] = f, ["d_sae"] = store.DSae, ["hook"] = store.Hook, ["n_tokens"] = store.Tokens,
            ["explanations"] = new JsonArray(store.Explanations(f).Select(x => (JsonNode)new JsonObject
            {
                ["explainer_model"] = x.ExplainerModel, ["text"] = x.Text,
                ["scores"] = new JsonObject(x.Scores.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)new JsonObject(kv.Value.Select(m => KeyValuePair.Create(m.Key, (JsonNode?)m.Value)))))),
            }).ToArray()),
            ["n_active"] = s.NActive, ["density"] = s.Density, ["max_act"] = s.MaxAct, ["mean_act"] = s.MeanAct, ["decoder_norm"] = s.DecoderNorm,
            ["acts_histogram"] = Histogram(FeatureStoreSchema.ActsHistogram),
            ["logits_histogram"] = Histogram(FeatureStoreSchema.LogitsHistogram),
            ["promoted"] = Logits(FeatureStoreSchema.Promoted),
            ["suppressed"] = Logits(FeatureStoreSchema.Suppressed),
            ["top"] = Examples(store.Examples(f, FeatureStoreSchema.Top, topExamples)),
            ["quantiles"] = new JsonArray(store.Intervals(f).Select(i => (JsonNode)new JsonObject
            {
                ["bin"] = i.Bin, ["lower"] = i.Lower, ["upper"] = i.Upper, ["n_active"] = i.NActive,
                ["examples"] = Examples(quantile.Where(e => e.Bin == i.Bin)),
            }).ToArray()),
        };
    }
}
