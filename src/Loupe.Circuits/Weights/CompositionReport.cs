using Loupe.Reports;

namespace Loupe.Circuits.Weights;

/// <summary>A later head and how strongly it composes with an earlier one.</summary>
/// <param name="Head">TransformerLens label, e.g. <c>L5H5</c>.</param>
/// <param name="Layer">The partner's layer.</param>
/// <param name="HeadIndex">The partner's head index.</param>
/// <param name="Score">The composition score in [0, 1].</param>
public sealed record CompositionPartner(string Head, int Layer, int HeadIndex, double Score);

/// <summary>A head found to attend to the previous position, with its strongest K-composition partners.</summary>
/// <param name="Head">TransformerLens label, e.g. <c>L4H11</c>.</param>
/// <param name="Layer">Its layer.</param>
/// <param name="HeadIndex">Its head index.</param>
/// <param name="PreviousTokenScore">Mean attention on q − 1 among keys before q (positions alone).</param>
/// <param name="PreviousTokenScoreWithSelf">The same with the query's own position among the keys.</param>
/// <param name="KPartners">Later heads whose keys read this head's output most, best first.</param>
public sealed record PreviousTokenHead(string Head, int Layer, int HeadIndex, double PreviousTokenScore, double PreviousTokenScoreWithSelf, IReadOnlyList<CompositionPartner> KPartners);

/// <summary>
/// Weight-based circuit report for one set of attention weights. Steps: (1) composition scores on the
/// weights with TransformerLens's default processing (fold_ln, center_writing_weights — as Elhage et al.
/// fold LayerNorm); (2) previous-token scores from positions alone (<see cref="PositionalAttention"/>,
/// on the unprocessed weights with ln1 applied explicitly — the same function); (3) the heads whose
/// score (self excluded) passes the threshold, each with its top K-composition partners.
/// </summary>
public sealed class CompositionReport
{
    public required string Source { get; init; }
    public required CompositionScores Scores { get; init; }
    public PositionalAttention? Positional { get; init; }
    public required IReadOnlyList<PreviousTokenHead> PreviousTokenHeads { get; init; }
    public required double Threshold { get; init; }
    /// <summary>OV copying scores <c>[layer·head]</c> (<see cref="OvCopying"/>), or null without token embeddings.</summary>
    public double[]? CopyingScores { get; init; }

    public static string Label(int layer, int head) => $"L{layer}H{head}";

    /// <summary>Builds the report (see the class steps).</summary>
    /// <param name="weights">Unprocessed weights as read.</param>
    /// <param name="threshold">Previous-token score (self excluded) a head needs.</param>
    /// <param name="partners">How many K-composition partners to list per head.</param>
    /// <param name="positions">Positions for the positional patterns.</param>
    /// <param name="copying">OV copying scores to include, when the embeddings were available.</param>
    public static CompositionReport Build(AttentionWeights weights, double threshold = 0.6, int partners = 5, int positions = 128, double[]? copying = null)
    {
        var scores = CompositionScores.Compute(weights.FoldLayerNorm());
        PositionalAttention? positional = weights.Positions is null ? null : PositionalAttention.Compute(weights, positions);
        var heads = new List<PreviousTokenHead>();
        if (positional is not null)
            for (int i = 0; i < weights.NLayers * weights.NHeads; i++)
            {
                int l = i / weights.NHeads, h = i % weights.NHeads;
                if (positional.PreviousAmongEarlierScores[i] <= threshold) continue;
                var top = scores.TopPartners(CompositionKind.K, l, h, partners)
                    .Select(p => new CompositionPartner(Label(p.Layer, p.Head), p.Layer, p.Head, p.Score)).ToArray();
                heads.Add(new PreviousTokenHead(Label(l, h), l, h, positional.PreviousAmongEarlierScores[i], positional.PreviousTokenScores[i], top));
            }
        return new CompositionReport
        {
            Source = weights.Source, Scores = scores, Positional = positional, Threshold = threshold, CopyingScores = copying,
            PreviousTokenHeads = [.. heads.OrderByDescending(x => x.PreviousTokenScore)],
        };
    }

    /// <summary>The JSON projection: every pairwise score per kind as <c>[src head][dst head]</c> (heads ordered L0H0, L0H1, …), positional scores and the previous-token heads.</summary>
    public object ToJson()
    {
        int L = Scores.NLayers, H = Scores.NHeads, n = L * H;
        double[][] Matrix(CompositionKind kind) =>
            [.. Enumerable.Range(0, n).Select(s => Scores.Of(kind).AsSpan(s * n, n).ToArray())];
        return new
        {
            Source,
            Method = "Elhage et al. 2021 composition scores, TransformerLens all_composition_scores order (row vectors): " +
                     "Q = |OV_A·QK_B|/(|OV_A||QK_B|), K = |OV_A·QK_Bᵀ|/(…), V = |OV_A·OV_B|/(…); zero unless layer(A) < layer(B)",
            Processing = Scores.Processing,
            NLayers = L,
            NHeads = H,
            Heads = Enumerable.Range(0, n).Select(i => Label(i / H, i % H)).ToArray(),
            Composition = new { Q = Matrix(CompositionKind.Q), K = Matrix(CompositionKind.K), V = Matrix(CompositionKind.V) },
            Positional = Positional is null ? null : new
            {
                Mode = Positional.Mode.ToString(),
                Description = PositionalAttention.Describe(Positional.Mode),
                Positions = Positional.Positions,
                PreviousToken = Enumerable.Range(0, L).Select(l => Positional.PreviousAmongEarlierScores.AsSpan(l * H, H).ToArray()).ToArray(),
                PreviousTokenWithSelf = Enumerable.Range(0, L).Select(l => Positional.PreviousTokenScores.AsSpan(l * H, H).ToArray()).ToArray(),
            },
            OvCopying = CopyingScores is null ? null : Enumerable.Range(0, L).Select(l => CopyingScores.AsSpan(l * H, H).ToArray()).ToArray(),
            OvCopyingMethod = "Σ Re λ / Σ |λ| over the eigenvalues of W_E·W_V·W_O·W_U (no norms, unprocessed weights)",
            PreviousTokenThreshold = Threshold,
            PreviousTokenHeads = PreviousTokenHeads,
        };
    }

    /// <summary>Writes <c>composition.json</c> and <c>k_composition.svg</c> into <paramref name="folder"/>; returns their paths.</summary>
    public (string Json, string Svg) Write(string folder)
    {
        Directory.CreateDirectory(folder);
        string json = Path.Combine(folder, "composition.json"), svg = Path.Combine(folder, "k_composition.svg");
        AtomicFile.WriteJson(json, ToJson());
        int L = Scores.NLayers, H = Scores.NHeads, n = L * H;
        var labels = Enumerable.Range(0, n).Select(i => Label(i / H, i % H)).ToArray();
        var map = new Heatmap
        {
            Title = $"K-composition (fold_ln, centred W_O): {Path.GetFileName(Source)}",
            Values = [.. Enumerable.Range(0, n).Select(s => Scores.KScores.AsSpan(s * n, n).ToArray())],
            RowLabels = labels,
            ColumnLabels = labels,
            RowAxis = "earlier head A (writes)",
            ColumnAxis = "later head B (keys read)",
        };
        AtomicFile.WriteAllText(svg, map.ToSvg());
        return (json, svg);
    }
}
