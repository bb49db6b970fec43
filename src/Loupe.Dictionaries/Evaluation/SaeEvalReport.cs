using Loupe.Reports;

namespace Loupe.Dictionaries.Evaluation;

/// <summary>
/// The files an SAE evaluation leaves behind — <c>eval.json</c> (the run's provenance and every metric of
/// <see cref="SaeEvalResult"/>) and <c>density.svg</c> (the log10 feature-density histogram) — written the same way
/// whichever front door (CLI, web API) ran the evaluation.
/// </summary>
public static class SaeEvalReport
{
    /// <summary>The JSON document of <c>eval.json</c>: where the numbers came from, then the numbers.</summary>
    /// <param name="result">The evaluation.</param>
    /// <param name="model">The model's source (folder or hub id).</param>
    /// <param name="saeModelName">The model the dictionary's cfg.json says it was trained on.</param>
    /// <param name="sae">The dictionary's path.</param>
    /// <param name="seed">The seed that shuffled (or sampled) the contexts.</param>
    public static object Document(SaeEvalResult result, string model, string? saeModelName, string sae, int seed) =>
        new { Model = model, SaeModelName = saeModelName, Sae = sae, Seed = seed, Metrics = result };

    /// <summary>Writes <c>eval.json</c> and <c>density.svg</c> into <paramref name="folder"/> (each atomically); returns the JSON path.</summary>
    /// <param name="folder">An existing output folder.</param>
    /// <param name="result">The evaluation.</param>
    /// <param name="model">The model's source (folder or hub id).</param>
    /// <param name="saeModelName">The model the dictionary's cfg.json says it was trained on.</param>
    /// <param name="sae">The dictionary's path.</param>
    /// <param name="seed">The seed that shuffled (or sampled) the contexts.</param>
    public static string Write(string folder, SaeEvalResult result, string model, string? saeModelName, string sae, int seed)
    {
        string json = Path.Combine(folder, "eval.json");
        AtomicFile.WriteJson(json, Document(result, model, saeModelName, sae, seed));
        DensityChart(result).Save(Path.Combine(folder, "density.svg"));
        return json;
    }

    /// <summary>The feature-density histogram as a chart (dead features sit at −10).</summary>
    public static LineChart DensityChart(SaeEvalResult result)
    {
        var h = result.DensityHistogram;
        return new LineChart
        {
            Title = $"Feature density, {result.Hook} ({result.DSae} features, {result.Positions} tokens)",
            X = Enumerable.Range(0, h.Counts.Length).Select(i => (h.Log10Edges[i] + h.Log10Edges[i + 1]) / 2).ToArray(),
            Series = [("features", h.Counts.Select(c => (double)c).ToArray())],
            XAxis = "log10(density + 1e-10)  (dead features at −10)",
            YAxis = "features",
        };
    }
}
