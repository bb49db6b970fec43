using Loupe.Causal.Lens;
using Loupe.Causal.Patching;
using Loupe.Reports;

namespace Loupe.Causal.Reports;

/// <summary>
/// Files for the causal analyses: JSON with every number (snake_case, written atomically) and SVG
/// figures beside it. Grids are <c>[row][column]</c> in the orientation the labels give.
/// </summary>
public static class CausalReports
{
    /// <summary>The content of patch.json.</summary>
    public sealed record PatchJson(
        string Target, string Metric, bool Noising, double CleanValue, double CorruptValue,
        int[] Layers, int[]? Heads, int[]? Positions, string RowAxis, string ColumnAxis, string[] RowLabels, string[] ColumnLabels,
        double[][] Values, double[][] Normalized, int ForwardPasses, int CellsPerPass, double Seconds,
        IReadOnlyList<string>? Tokens, IReadOnlyDictionary<string, string?>? Args);

    /// <summary>Writes <c>dir/patch.json</c> and <c>dir/patch.svg</c> (the normalized metric as a heatmap).</summary>
    /// <param name="result">The sweep.</param>
    /// <param name="dir">The output folder (created if absent).</param>
    /// <param name="tokenLabels">One label per position (e.g. the decoded clean tokens) for the columns.</param>
    /// <param name="args">The command line or settings that produced the result, recorded verbatim.</param>
    public static (string Json, string Svg) WritePatching(PatchingResult result, string dir, IReadOnlyList<string>? tokenLabels = null, IReadOnlyDictionary<string, string?>? args = null)
    {
        var rows = result.RowLabels();
        var cols = result.ColumnLabels(tokenLabels);
        var json = new PatchJson(result.Target, result.Metric, result.Noising, result.CleanValue, result.CorruptValue,
            result.Layers, result.Heads, result.Positions, result.RowAxis, result.ColumnAxis, rows, cols,
            result.Grid(result.Values), result.Grid(result.Normalized), result.ForwardPasses, result.CellsPerPass, result.Seconds, tokenLabels, args);
        string jsonPath = Path.Combine(dir, "patch.json"), svgPath = Path.Combine(dir, "patch.svg");
        AtomicFile.WriteJson(jsonPath, json);
        new Heatmap
        {
            Title = $"{(result.Noising ? "Noising" : "Denoising")} {result.Target}: normalized {result.Metric} (clean {result.CleanValue:G4}, corrupt {result.CorruptValue:G4})",
            Values = result.Grid(result.Normalized),
            RowLabels = rows,
            ColumnLabels = cols,
            RowAxis = result.RowAxis,
            ColumnAxis = result.ColumnAxis,
        }.Save(svgPath);
        return (jsonPath, svgPath);
    }

    /// <summary>One component's DLA in lens.json.</summary>
    public sealed record ComponentJson(string Name, string Kind, int Layer, int Head, double Dla);

    /// <summary>The content of lens.json.</summary>
    public sealed record LensJson(
        string Direction, int Position, IReadOnlyList<string>? Tokens, ComponentJson[] Components, double DlaTotal, double LogitDiffBeforeSoftcap,
        double FinalNormBias, double UnembedBias, double DecompositionError, string Note, string LensScale, LensStage[] LogitLens,
        IReadOnlyDictionary<string, string?>? Args, LensStage[]? TunedLens = null);

    /// <summary>
    /// Writes <c>dir/lens.json</c>, <c>dir/dla.svg</c> (rows = layers, columns = heads, b_O, mlp) and
    /// <c>dir/logit_lens.svg</c> (the answer's logit, and logit difference, over layers) for row 0 of <paramref name="dla"/>.
    /// </summary>
    public static (string Json, string Dla, string Lens) WriteLens(DlaResult dla, LogitLensResult lens, string dir, IReadOnlyList<string>? tokenLabels = null, IReadOnlyDictionary<string, string?>? args = null,
        LogitLensResult? tuned = null)
    {
        var values = dla.Values[0];
        var components = dla.ComponentInfo.Select((c, i) => new ComponentJson(c.Name, c.Kind, c.Layer, c.Head, values[i])).ToArray();
        var json = new LensJson(dla.Directions[0], dla.Position, tokenLabels, components, dla.Total[0], dla.PreCapLogitDiff[0], dla.NormBias[0], dla.UnembedBias[0],
            dla.MaxDecompositionError,
            "DLA: each component through ln_final with the scale frozen at the cached ln_final.hook_scale, dotted with the direction; " +
            "Σ dla = logit_diff_before_softcap − final_norm_bias − unembed_bias. b_O is a separate component per layer. " +
            "Final-logit soft-capping (Gemma 2) is nonlinear and is not included.",
            lens.Scale.ToString().ToLowerInvariant(), lens.Stages, args, tuned?.Stages);
        string jsonPath = Path.Combine(dir, "lens.json"), dlaPath = Path.Combine(dir, "dla.svg"), lensPath = Path.Combine(dir, "logit_lens.svg");
        AtomicFile.WriteJson(jsonPath, json);
        var (grid, rows, cols) = DlaGrid(dla.ComponentInfo, values);
        string embeds = string.Join(", ", components.Where(c => c.Layer < 0).Select(c => $"{c.Name} {c.Dla:+0.###;-0.###}"));
        new Heatmap
        {
            Title = $"Direct logit attribution to {dla.Directions[0]} ({embeds})",
            Values = grid,
            RowLabels = rows,
            ColumnLabels = cols,
            RowAxis = "layer",
            ColumnAxis = "component",
        }.Save(dlaPath);
        var series = new List<(string, double[])> { ("answer logit", lens.Stages.Select(s => s.AnswerLogit).ToArray()) };
        if (lens.Wrong is not null) series.Add(("logit diff", lens.Stages.Select(s => s.LogitDiff).ToArray()));
        if (tuned is not null)
        {
            series.Add(("tuned: answer logit", tuned.Stages.Select(s => s.AnswerLogit).ToArray()));
            if (tuned.Wrong is not null) series.Add(("tuned: logit diff", tuned.Stages.Select(s => s.LogitDiff).ToArray()));
        }
        new LineChart
        {
            Title = $"Logit lens ({lens.Scale.ToString().ToLowerInvariant()} final-norm scale){(tuned is null ? "" : " and tuned lens")}, answer {lens.Answer}",
            X = lens.Stages.Select(s => (double)s.Layer).ToArray(),
            Series = series,
            XAxis = "blocks applied (0 = embeddings; last = final residual)",
            YAxis = "logit",
        }.Save(lensPath);
        return (jsonPath, dlaPath, lensPath);
    }

    /// <summary>The layer components as a grid: rows = layers; columns = heads, then b_O (or attn for post-norm layers), then mlp.</summary>
    public static (double[][] Grid, string[] Rows, string[] Columns) DlaGrid(IReadOnlyList<ResidualComponent> components, IReadOnlyList<double> values)
    {
        var layered = components.Select((c, i) => (c, v: values[i])).Where(x => x.c.Layer >= 0).ToList();
        int layers = layered.Select(x => x.c.Layer).DefaultIfEmpty(-1).Max() + 1;
        var columns = layered.Select(x => x.c.Kind == "head" ? $"H{x.c.Head}" : x.c.Kind == "attn_bias" ? "b_O" : x.c.Kind).Distinct()
            .OrderBy(c => c.StartsWith('H') ? 0 : c == "b_O" || c == "attn" ? 1 : 2).ThenBy(c => c.Length).ThenBy(c => c, StringComparer.Ordinal).ToArray();
        var grid = Enumerable.Range(0, layers).Select(_ => Enumerable.Repeat(double.NaN, columns.Length).ToArray()).ToArray();
        foreach (var (c, v) in layered)
        {
            string col = c.Kind == "head" ? $"H{c.Head}" : c.Kind == "attn_bias" ? "b_O" : c.Kind;
            grid[c.Layer][Array.IndexOf(columns, col)] = v;
        }
        return (grid, Enumerable.Range(0, layers).Select(l => $"L{l}").ToArray(), columns);
    }

    /// <summary>The content of components.json.</summary>
    public sealed record ComponentReportJson(string Title, string[] Components, double[] MeanDla, string DlaDirection, int Rows,
        AblationJson[] Ablations, double DecompositionError, IReadOnlyDictionary<string, double>? Extra);

    /// <summary>One ablation sweep in components.json.</summary>
    public sealed record AblationJson(string Ablation, string Target, string Metric, double Baseline, string[] Cells, double[] Values, int ForwardPasses, double Seconds);

    /// <summary>
    /// A per-component summary over many inputs: mean DLA per component and each ablation sweep's
    /// metric per cell. Writes <c>dir/components.json</c>, <c>dir/components_dla.svg</c> (one row of
    /// mean DLA per component) and <c>dir/components_ablation.svg</c> (rows = ablation sweeps, columns = their cells).
    /// </summary>
    public static (string Json, string DlaSvg, string AblationSvg) WriteComponentReport(string dir, string title, DlaResult dla, IReadOnlyList<AblationResult> ablations,
        IReadOnlyDictionary<string, double>? extra = null)
    {
        var mean = dla.Mean;
        var json = new ComponentReportJson(title, dla.Components, mean, dla.Directions.Distinct().Count() == 1 ? dla.Directions[0] : "per-row answer", dla.Values.Length,
            ablations.Select(a => new AblationJson(a.Ablation, a.Target, a.Metric, a.BaselineValue, a.Cells.Select(c => c.ToString()).ToArray(), a.Values, a.ForwardPasses, a.Seconds)).ToArray(),
            dla.MaxDecompositionError, extra);
        string jsonPath = Path.Combine(dir, "components.json"), dlaPath = Path.Combine(dir, "components_dla.svg"), ablPath = Path.Combine(dir, "components_ablation.svg");
        AtomicFile.WriteJson(jsonPath, json);
        new Heatmap
        {
            Title = $"{title}: mean direct logit attribution over {dla.Values.Length} inputs",
            Values = [mean],
            RowLabels = ["mean DLA"],
            ColumnLabels = dla.Components,
            ColumnAxis = "component",
        }.Save(dlaPath);
        var cells = ablations.SelectMany(a => a.Cells.Select(c => $"{a.Target} {c}")).Distinct().ToArray();
        new Heatmap
        {
            Title = $"{title}: metric after ablating each component",
            Values = ablations.Select(a =>
            {
                var row = Enumerable.Repeat(double.NaN, cells.Length).ToArray();
                for (int i = 0; i < a.Cells.Length; i++) row[Array.IndexOf(cells, $"{a.Target} {a.Cells[i]}")] = a.Values[i];
                return row;
            }).ToArray(),
            RowLabels = ablations.Select(a => $"{a.Ablation} ({a.Metric})").ToArray(),
            ColumnLabels = cells,
            RowAxis = "ablation",
            ColumnAxis = "component",
        }.Save(ablPath);
        return (jsonPath, dlaPath, ablPath);
    }
}
