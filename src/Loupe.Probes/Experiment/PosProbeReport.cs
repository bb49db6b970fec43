using Loupe.Reports;

namespace Loupe.Probes.Experiment;

/// <summary>
/// The files an experiment leaves: <c>probe.json</c> (settings, counts, baseline, per-hook accuracies,
/// the best hook's held-out confusion matrix with rows = true class and columns = predicted class,
/// seconds per stage) and <c>probe_accuracy.svg</c> (held-out accuracy per hook for each probe, with the
/// majority baseline as a flat line).
/// </summary>
public static class PosProbeReport
{
    /// <summary>Writes both files (atomically) and returns their paths.</summary>
    public static (string Json, string Chart) Save(string folder, PosProbeResult result)
    {
        Directory.CreateDirectory(folder);
        string json = Path.Combine(folder, "probe.json"), chart = Path.Combine(folder, "probe_accuracy.svg");
        AtomicFile.WriteJson(json, ToDocument(result));
        ToChart(result.Run).Save(chart);
        return (json, chart);
    }

    /// <summary>The line chart: x is the hook's index in forward order.</summary>
    public static LineChart ToChart(ProbeRun run)
    {
        var x = run.Hooks.Select(h => (double)h.Index).ToArray();
        var series = new List<(string, double[])>();
        if (run.Hooks[0].Logistic is not null) series.Add(("logistic (held-out)", run.Hooks.Select(h => h.Logistic!.HeldOutAccuracy).ToArray()));
        if (run.Hooks[0].DiffMeans is not null) series.Add(("diff-of-means (held-out)", run.Hooks.Select(h => h.DiffMeans!.HeldOutAccuracy).ToArray()));
        series.Add(($"baseline ({run.Classes[run.MajorityClass]})", x.Select(_ => run.BaselineAccuracy).ToArray()));
        string first = run.Hooks[0].Hook, last = run.Hooks[^1].Hook;
        return new LineChart
        {
            Title = "Part-of-speech probe accuracy by hook",
            X = x,
            Series = series,
            XAxis = run.Hooks.Count == 1 ? $"hook 0 = {first}" : $"hook index (0 = {first}, {run.Hooks.Count - 1} = {last})",
            YAxis = "held-out accuracy",
        };
    }

    static object ToDocument(PosProbeResult r)
    {
        var run = r.Run;
        var best = run.Best;
        string bestProbe = best.Logistic is not null ? "logistic" : "diffmeans";
        var s = r.Settings;
        return new
        {
            Model = r.Model,
            Dataset = "brown:" + r.Corpus,
            Settings = new
            {
                Categories = s.Categories,
                s.MaxSentences,
                s.Hooks,
                Probes = s.Probes switch { ProbeKinds.Logistic => "logistic", ProbeKinds.DiffMeans => "diffmeans", _ => "both" },
                s.Seed,
                s.HeldOutFraction,
                s.Logistic.L2,
                s.Logistic.MaxIterations,
                s.Logistic.GradientTolerance,
                LabelPolicy = s.LabelPolicy.ToString(),
                s.BatchSize,
            },
            Classes = run.Classes,
            Counts = new
            {
                SentencesRead = r.SentencesRead,
                SentencesSampled = r.Alignment.Sentences,
                SentencesAligned = r.Alignment.Aligned,
                SkippedTooLong = r.Alignment.TooLong,
                SkippedUnalignable = r.Alignment.Unalignable,
                Words = r.Alignment.Words,
                WordsWithoutToken = r.Alignment.UnlabelledWords,
                TrainSentences = run.Split.TrainCount,
                HeldOutSentences = run.Split.HeldOutCount,
                TrainTokens = run.TrainTokens,
                HeldOutTokens = run.HeldOutTokens,
                TrainByClass = ByClass(run, run.TrainCounts),
                HeldOutByClass = ByClass(run, run.HeldOutCounts),
            },
            Baseline = new { Class = run.Classes[run.MajorityClass], HeldOutAccuracy = run.BaselineAccuracy },
            Layers = run.Hooks.Select(h => new
            {
                h.Hook,
                h.Index,
                h.Width,
                Logistic = h.Logistic is null ? null : new { h.Logistic.HeldOutAccuracy, h.Logistic.TrainAccuracy, h.Logistic.Iterations, h.Logistic.Converged, h.Logistic.Stop },
                Diffmeans = h.DiffMeans is null ? null : new { h.DiffMeans.HeldOutAccuracy, h.DiffMeans.TrainAccuracy },
                Baseline = run.BaselineAccuracy,
            }).ToArray(),
            Best = new
            {
                best.Hook,
                Probe = bestProbe,
                HeldOutAccuracy = best.RankingAccuracy,
                Confusion = new
                {
                    Rows = "true class",
                    Columns = "predicted class",
                    Order = run.Classes,
                    Matrix = (best.Logistic ?? best.DiffMeans)!.Confusion,
                },
            },
            Seconds = r.Seconds,
        };
    }

    static Dictionary<string, int> ByClass(ProbeRun run, int[] counts)
    {
        var map = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int k = 0; k < counts.Length; k++) map[run.Classes[k]] = counts[k];
        return map;
    }
}
