using System.Text.Json;
using System.Xml.Linq;
using Loupe.Causal.Lens;
using Loupe.Causal.Metrics;
using Loupe.Causal.Patching;
using Loupe.Causal.Reports;
using Loupe.Models;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Causal.Tests;

/// <summary>
/// Which components of the 1-layer modular-addition model (a + b mod 113, Nanda et al. 2023)
/// carry the answer: DLA of each component to the correct answer's logit, and zero/mean
/// ablation of each head and of the MLP, over 300 seeded (a, b) pairs. Writes a report
/// (components.json + two SVGs) and checks it.
/// </summary>
public class GrokkingTests(ITestOutputHelper output)
{
    const string ModelPath = "models/grokking-modadd-p113-main";
    const int P = 113;

    [RequiresSharedFact(ModelPath)]
    public void DlaAndAblationsShowTheMlpCarriesTheAnswer()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(ModelPath));
        var random = new Random(2023);
        var pairs = Enumerable.Range(0, 300).Select(_ => (A: random.Next(P), B: random.Next(P))).ToArray();
        var tokens = TokenBatch.FromRows(pairs.Select(x => new[] { x.A, x.B, P }).ToArray());
        var answers = pairs.Select(x => (x.A + x.B) % P).ToArray();

        // DLA to each row's own correct-answer logit (at the "=" position).
        var dla = DirectLogitAttribution.Compute(model, tokens, row => LogitDirection.Token(model, answers[row]));
        Assert.True(dla.MaxDecompositionError < 1e-3, $"decomposition error {dla.MaxDecompositionError}");
        var mean = dla.Mean;
        output.WriteLine($"mean DLA to the correct logit over {pairs.Length} pairs (Σ = {dla.Total.Average():F2}, b_U {dla.UnembedBias.Average():F2}):");
        foreach (var (name, value) in dla.Components.Zip(mean).OrderByDescending(x => Math.Abs(x.Second))) output.WriteLine($"  {name,-10} {value,9:F3}");

        var accuracy = new ArgmaxAccuracy(answers, -1, P);
        var logProb = new AnswerLogProb(answers, -1, P);
        var sweeps = new List<AblationResult>();
        var mlpWhole = PatchTarget.MlpOut with { PositionAxis = null };
        var reference = TokenBatch.FromRows(Enumerable.Range(0, 200).Select(_ => new[] { random.Next(P), random.Next(P), P }).ToArray());
        foreach (var (ablation, target) in new[] { (Ablation.Zero, PatchTarget.HeadOut), (Ablation.Zero, mlpWhole), (Ablation.Mean([reference]), PatchTarget.HeadOut), (Ablation.Mean([reference]), mlpWhole) })
            foreach (var metric in new Loupe.Models.Metrics.IMetric[] { accuracy, logProb })
                sweeps.Add(AblationSweep.Sweep(model, tokens, metric, target, ablation));
        foreach (var s in sweeps)
            output.WriteLine($"{s.Ablation,-22} {s.Target,-9} {s.Metric,-20} baseline {s.BaselineValue,8:F3}: " +
                string.Join(", ", s.Cells.Zip(s.Values).Select(x => $"{x.First} {x.Second:F3}")) + $"  [{s.ForwardPasses} passes, {s.Seconds * 1000:F0} ms]");

        var zeroMlp = sweeps.Single(s => s.Ablation == "zero" && s.Target == "mlp_out" && s.Metric == accuracy.Name);
        Assert.Equal(1.0, zeroMlp.BaselineValue);
        Assert.True(zeroMlp.Values[0] < 0.05, $"accuracy with the MLP zeroed: {zeroMlp.Values[0]}");
        // The MLP writes the answer: its direct contribution dominates every head's.
        double mlpDla = mean[Array.IndexOf(dla.Components, "L0 mlp")];
        Assert.True(mlpDla > 0 && dla.Components.Where(c => c.StartsWith("L0H", StringComparison.Ordinal)).All(c => Math.Abs(mean[Array.IndexOf(dla.Components, c)]) < mlpDla),
            "the MLP should have the largest direct effect of the layer's components");

        string dir = Directory.CreateTempSubdirectory("loupe-grokking").FullName;
        var (json, dlaSvg, ablationSvg) = CausalReports.WriteComponentReport(dir, "grokking mod-113 addition", dla, sweeps,
            new Dictionary<string, double> { ["pairs"] = pairs.Length, ["accuracy"] = zeroMlp.BaselineValue });
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        Assert.Equal(dla.Components.Length, doc.RootElement.GetProperty("mean_dla").GetArrayLength());
        Assert.Equal(8, doc.RootElement.GetProperty("ablations").GetArrayLength());
        foreach (var svg in new[] { dlaSvg, ablationSvg })
            Assert.Equal("svg", XDocument.Load(svg).Root!.Name.LocalName);
        output.WriteLine($"report: {json}, {dlaSvg}, {ablationSvg}");
    }
}
