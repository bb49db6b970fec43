using System.Text.Json.Nodes;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe bench circuits</c>: the known-circuit benchmark's table and JSON.</summary>
[Collection("console")]
public class BenchCliTests
{
    [Fact]
    public void Quick_bench_scores_the_planted_circuits_and_writes_the_json()
    {
        string dir = Directory.CreateTempSubdirectory("loupe-bench").FullName;
        var run = RunLoupe(["bench", "circuits", "--quick", "--methods", "eap,eap-ig", "--out", dir]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("planted-induction", run.Out);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "circuit-bench.json")))!;
        var rows = json["rows"]!.AsArray();
        Assert.Equal(16, rows.Count); // (2 planted tasks + 5 RASP programs + sort at coldness 100) × 2 methods
        foreach (var row in rows)
        {
            Assert.Equal("construction", (string)row!["ground_truth"]!);
            // Gradient methods see nothing behind a RASP lookup-table MLP (a step function: derivative 0), which hides part of
            // sort's, hist's and dyck's circuits, and at coldness 100 saturated attention hides one more of sort's edges. Those
            // scores are 0 in exact arithmetic and fp32 rounding residue otherwise: the same AUC on every machine (noise floor).
            if ((string)row["circuit"]! is "rasp-sort" or "rasp-hist" or "rasp-dyck" or "rasp-sort.coldness100")
                Assert.InRange((double)row["auc"]!, 0.6, 0.85);
            else Assert.InRange((double)row["auc"]!, 0.99, 1.0);
            Assert.InRange((double)row["precision_at_k"]!, 0.0, 1.0);
            Assert.True((int)row["true_edges"]! > 0 && (int)row["true_edges"]! < (int)row["edges"]!);
        }
        Assert.Equal(["EAP", "EAP-IG-inputs.steps5"], rows.Select(r => (string)r!["method"]!).Distinct().ToArray());
        var circuits = json["circuits"]!.AsArray();
        Assert.Contains(circuits, c => (string)c!["name"]! == "planted-previous-token" && c["true_edges"]!.AsArray().Count == 2);
        Assert.True(File.Exists(Path.Combine(dir, "planted", "planted-induction", "config.json")));
        Assert.Contains(circuits, c => (string)c!["name"]! == "rasp-reverse");
    }

    [Fact]
    public void Unknown_method_and_missing_induction_model_are_refused()
    {
        string dir = Directory.CreateTempSubdirectory("loupe-bench").FullName;
        AssertRefused(RunLoupe(["bench", "circuits", "--quick", "--methods", "eap,magic", "--out", dir]), "--methods", "magic");
        AssertRefused(RunLoupe(["bench", "circuits", "--induction", Path.Combine(dir, "absent"), "--out", dir]), "--induction");
    }
}
