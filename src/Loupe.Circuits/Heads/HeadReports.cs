using System.Globalization;
using System.Text;
using Loupe.Reports;

namespace Loupe.Circuits.Heads;

/// <summary>The head detector's files and table: <c>heads.json</c> and one layer × head heat map per kind.</summary>
public static class HeadReports
{
    /// <summary>The file-name stem of a kind: previous_token, duplicate_token, induction.</summary>
    public static string Name(HeadKind kind) => kind switch
    {
        HeadKind.PreviousToken => "previous_token",
        HeadKind.DuplicateToken => "duplicate_token",
        HeadKind.Induction => "induction",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not a head kind"),
    };

    /// <summary>
    /// A layer × head table of one score, rows = layers, columns = heads.
    /// </summary>
    /// <param name="title">The line above the table.</param>
    /// <param name="values"><c>[layer][head]</c>.</param>
    public static string Table(string title, double[][] values)
    {
        var text = new StringBuilder(title).Append('\n');
        int heads = values.Length == 0 ? 0 : values[0].Length;
        text.Append("layer");
        for (int h = 0; h < heads; h++) text.Append(CultureInfo.InvariantCulture, $" {"H" + h,7}");
        text.Append('\n');
        for (int l = 0; l < values.Length; l++)
        {
            text.Append(CultureInfo.InvariantCulture, $"{"L" + l,5}");
            foreach (var v in values[l]) text.Append(CultureInfo.InvariantCulture, $" {v,7:F3}");
            text.Append('\n');
        }
        return text.ToString();
    }

    /// <summary>
    /// Writes <c>heads.json</c> (settings, the query positions of each score, every score as <c>[layer][head]</c>,
    /// the top heads and the tokens) and <c>{kind}.svg</c> heat maps of <see cref="HeadScores.Score"/> (colour 0 … 1)
    /// into <paramref name="folder"/>.
    /// </summary>
    /// <param name="result">The detector's result.</param>
    /// <param name="folder">Output folder (created when absent).</param>
    /// <param name="model">Where the model came from (recorded as provenance).</param>
    /// <param name="weightProcessing">The weight processing applied on load (TransformerLens's options), recorded with it.</param>
    /// <returns>The files written, JSON first.</returns>
    public static IReadOnlyList<string> Write(HeadDetectionResult result, string folder, string? model, string weightProcessing = "none")
    {
        var files = new List<string>();
        string json = Path.Combine(folder, "heads.json");
        var measure = result.Settings.Measure == ErrorMeasure.Mul ? "mul" : "abs";
        AtomicFile.WriteJson(json, new
        {
            Model = model,
            WeightProcessing = weightProcessing,
            NLayers = result.NLayers,
            NHeads = result.NHeads,
            Sequences = new
            {
                Batch = result.Tokens.Rows.Length,
                RepeatLength = result.Tokens.RepeatLength,
                SeqLen = result.Tokens.Length,
                Bos = result.Tokens.HasBos,
                Seed = result.Settings.Seed,
                Layout = "BOS (when the model has one), n distinct random tokens, the same n tokens again",
                result.Passes,
            },
            TransformerLens = new
            {
                ErrorMeasure = measure,
                result.Settings.ExcludeBos,
                result.Settings.ExcludeCurrentToken,
                Definition = "detect_head: per row, the detection pattern compared with the head's whole [q, k] pattern " +
                    (measure == "mul" ? "(Σ A⊙D / Σ A)" : "(1 − Σ|A − D| / seq_len)") + ", averaged over rows",
            },
            Scores = result.Scores.ToDictionary(s => Name(s.Kind), s => new
            {
                s.QueryPositions,
                s.Score,
                s.TransformerLens,
                Top = result.Top(s.Kind, Math.Min(5, result.NLayers * result.NHeads)).Select(t => new { t.Layer, t.Head, t.Score }),
            }),
            Tokens = result.Tokens.Rows,
        });
        files.Add(json);
        foreach (var s in result.Scores)
        {
            string svg = Path.Combine(folder, Name(s.Kind) + ".svg");
            new Heatmap
            {
                Title = $"{Name(s.Kind).Replace('_', ' ')} score (n = {result.Tokens.RepeatLength}, {result.Tokens.Rows.Length} sequences)",
                Values = s.Score,
                RowLabels = [.. Enumerable.Range(0, result.NLayers).Select(l => $"L{l}")],
                ColumnLabels = [.. Enumerable.Range(0, result.NHeads).Select(h => $"H{h}")],
                RowAxis = "layer",
                ColumnAxis = "head",
                Limit = 1,
            }.Save(svg);
            files.Add(svg);
        }
        return files;
    }
}
