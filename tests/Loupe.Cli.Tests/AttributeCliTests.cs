using System.Text.Json.Nodes;
using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe attribute</c> on the circuit-tracer fixture: the pruned graph circuit-tracer made, in its files; bad input refused.</summary>
[Collection("console")]
public class AttributeCliTests
{
    static readonly string Model = SharedData.TestData(Path.Combine("reference", "gpt2"));
    static readonly string Transcoders = SharedData.TestData(Path.Combine("attribution", "transcoders"));
    const string Tokens = "0,360,480,161,89,311,293,431";

    [Fact]
    public void Writes_the_pruned_graph_circuit_tracer_made()
    {
        string folder = Directory.CreateTempSubdirectory("loupe-attr").FullName;
        var run = RunLoupe(["attribute", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--out", folder, "--slug", "fixture", "--per-head"]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("pruned: 38 nodes, 351 edges", run.Out);
        Assert.Contains("memory ≈", run.Err); // the estimate comes before the work
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "fixture.json")))!;
        var expected = JsonNode.Parse(File.ReadAllText(SharedData.TestData(Path.Combine("attribution", "v0.5.0", "loupe-gpt2-fixture-relu-tc32.json"))))!;
        Assert.Equal(expected["nodes"]!.AsArray().Select(n => (string)n!["node_id"]!).Order(), json["nodes"]!.AsArray().Select(n => (string)n!["node_id"]!).Order());
        Assert.Equal(351, json["links"]!.AsArray().Count);
        Assert.NotNull(json["metadata"]!["loupe"]);
        using var raw = SafeTensorsFile.Open(Path.Combine(folder, "fixture.safetensors"));
        Assert.Equal(197 * 197, raw.GetFloat32("adjacency_matrix").Length);
        Assert.True(File.Exists(Path.Combine(folder, "graph-metadata.json")));
        var headsFile = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "fixture.heads.json")))!;
        Assert.NotNull(headsFile["loupe"]!["transcoder_fingerprint"]);
        var heads = headsFile["edges"]!.AsArray();
        Assert.Equal(351, heads.Count);
        foreach (var e in heads)
        {
            double sum = (double)e!["direct"]! + e["heads"]!.AsArray().Sum(h => (double)h!["weight"]!);
            Assert.InRange(sum, (double)e["weight"]! - 1e-5, (double)e["weight"]! + 1e-5);
        }
    }

    [Fact]
    public void On_the_emulated_device_prints_and_writes_what_the_cpu_does()
    {
        string cpu = Directory.CreateTempSubdirectory("loupe-attr").FullName, device = Directory.CreateTempSubdirectory("loupe-attr").FullName;
        string[] args = ["attribute", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--slug", "fixture", "--batch-size", "32", "--max-feature-nodes", "32"];
        var a = RunLoupe([.. args, "--out", cpu]);
        Assert.True(a.Code == 0, a.Err);
        var b = RunLoupe([.. args, "--out", device, "--device", "emulated"]);
        Assert.True(b.Code == 0, b.Err);
        // Every printed line but the timing and the paths: the same text, the same numbers to their printed precision.
        var number = new System.Text.RegularExpressions.Regex(@"[-+]?\d+(\.\d+)?");
        string[] Lines(string output) => [.. output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Where(l => !l.StartsWith("cost:", StringComparison.Ordinal) && !l.StartsWith("wrote", StringComparison.Ordinal))];
        string[] x = Lines(a.Out), y = Lines(b.Out);
        Assert.Equal(x.Length, y.Length);
        for (int i = 0; i < x.Length; i++)
        {
            Assert.Equal(number.Replace(x[i], "#"), number.Replace(y[i], "#"));
            var p = number.Matches(x[i]).Select(m => double.Parse(m.Value, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
            var q = number.Matches(y[i]).Select(m => double.Parse(m.Value, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
            for (int j = 0; j < p.Length; j++) Assert.True(Math.Abs(p[j] - q[j]) <= 1e-3 * Math.Max(1, Math.Abs(p[j])), $"line '{x[i]}': cpu {p[j]}, emulated {q[j]}");
        }
        using var ga = SafeTensorsFile.Open(Path.Combine(cpu, "fixture.safetensors"));
        using var gb = SafeTensorsFile.Open(Path.Combine(device, "fixture.safetensors"));
        var ea = ga.GetFloat32("adjacency_matrix").ToArray();
        var eb = gb.GetFloat32("adjacency_matrix").ToArray();
        Assert.Equal(ea.Length, eb.Length);
        float largest = ea.Max(Math.Abs);
        for (int i = 0; i < ea.Length; i++) Assert.True(Math.Abs(ea[i] - eb[i]) <= 1e-4 * largest, $"adjacency {i}: cpu {ea[i]}, emulated {eb[i]}");
    }

    [Fact]
    public void Explains_named_targets_and_a_logit_difference()
    {
        string folder = Directory.CreateTempSubdirectory("loupe-attr").FullName;
        var run = RunLoupe(["attribute", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--out", folder, "--slug", "targets",
            "--target", "#42", "--logit-diff", "#42", "#17"]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("2 logits", run.Out);
        Assert.Contains("logit targets: 42 ", run.Out);
        Assert.Contains("\"logit(<42>)-logit(<17>)\"", run.Out);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "targets.json")))!;
        var logits = json["nodes"]!.AsArray().Where(n => (string)n!["feature_type"]! == "logit").ToList();
        Assert.Equal([42L, 512L + 1], logits.Select(n => (long)n!["feature"]!).Order());
        Assert.Contains("\"attribution_targets\": \"#42, #42-#17\"", File.ReadAllText(Path.Combine(folder, "targets.json")));   // the settings, recorded

        foreach (var (args, expected) in new[]
        {
            (new[] { "--target", "#512" }, "--target"),
            (new[] { "--target", "nope" }, "no tokenizer"),
            (new[] { "--logit-diff", "#1" }, "--logit-diff"),
        })
        {
            run = RunLoupe(["attribute", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--out", folder, "--slug", "bad", .. args]);
            Assert.Equal(2, run.Code);
            Assert.Contains(expected, run.Err);
        }
    }

    [Fact]
    public void Refuses_transcoders_that_do_not_fit_and_bad_arguments()
    {
        string folder = Directory.CreateTempSubdirectory("loupe-attr").FullName;
        // Transcoders for the 3-layer GPT-2 fixture on the 4-layer Gemma 2 fixture.
        var run = RunLoupe(["attribute", "--model", SharedData.TestData(Path.Combine("reference", "gemma2")), "--transcoders", Transcoders, "--tokens", "1,2,3", "--out", folder]);
        Assert.Equal(2, run.Code);
        Assert.Contains("no transcoder for layer 3", run.Err);
        run = RunLoupe(["attribute", "--model", Model, "--transcoders", Path.Combine(folder, "missing"), "--tokens", Tokens, "--out", folder]);
        Assert.Equal(2, run.Code);
        Assert.Contains("transcoder folder not found", run.Err);
        run = RunLoupe(["attribute", "--model", Model, "--transcoders", Transcoders, "--tokens", string.Join(',', Enumerable.Repeat("1", 2000)), "--out", folder]);
        Assert.Equal(2, run.Code);
        Assert.Contains("n_ctx", run.Err);
        run = RunLoupe(["attribute", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--out", folder, "--max-memory", "lots"]);
        Assert.Equal(2, run.Code);
        Assert.Contains("--max-memory", run.Err);
        Assert.Empty(Directory.GetFiles(folder)); // nothing half-written
    }

    [Fact]
    public void Intervene_shows_the_prediction_change_and_refuses_bad_edits()
    {
        var run = RunLoupe(["intervene", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--edit", "2:7:3*0,1:*:5=2", "--top", "3", "--generate", "3"]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("Δ logit", run.Out);
        Assert.Contains("edited:", run.Out);
        foreach (var (edit, expected) in new[] { ("2:7:99=1", "a feature in 0…31"), ("5:1:0=1", "a layer in 0…2"), ("1:9:0=1", "a position in 0…7"), ("1:1:1", "LAYER:POS:FEATURE=VALUE") })
        {
            run = RunLoupe(["intervene", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--edit", edit]);
            Assert.Equal(2, run.Code);
            Assert.Contains(expected, run.Err);
        }
    }

    [RequiresSharedFact("models/stories260K")]
    public void A_cross_layer_transcoder_from_training_to_graph_and_intervention_on_stories260K()
    {
        string model = SharedData.Require("models/stories260K"), dir = Directory.CreateTempSubdirectory("loupe-clt-cli").FullName;
        string clt = Path.Combine(dir, "clt"), graphs = Path.Combine(dir, "graphs");
        var run = RunLoupe(["clt", "train", "--model", model, "--source", "generate:24", "--context-size", "32", "--architecture", "topk",
            "--k", "4", "--d-sae", "64", "--steps", "30", "--batch-size", "128", "--out", clt]);
        Assert.True(run.Code == 0, run.Err);
        run = RunLoupe(["clt", "eval", "--model", model, "--transcoders", clt, "--source", "generate:8", "--context-size", "32", "--out", Path.Combine(dir, "eval")]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("loss recovered", run.Out);
        run = RunLoupe(["attribute", "--model", model, "--transcoders", clt, "--prompt", "Once upon a time, Lily", "--out", graphs, "--per-head"]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("scores: replacement", run.Out);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(graphs, "graph.json")))!;
        Assert.Contains(json["nodes"]!.AsArray(), n => (string?)n!["feature_type"] == "cross layer transcoder");
        run = RunLoupe(["intervene", "--model", model, "--transcoders", clt, "--prompt", "Once upon a time, Lily", "--edit", "0:*:1*0", "--frozen"]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("Δ demeaned", run.Out);
    }
}
