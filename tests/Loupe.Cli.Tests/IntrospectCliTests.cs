using System.Text.Json.Nodes;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe introspect</c> end to end on stories260K: the rate table and files; bad sweeps refused.</summary>
[Collection("console")]
public class IntrospectCliTests
{
    [RequiresSharedFact("models/stories260K")]
    public void Introspect_writes_rates_per_layer_and_strength()
    {
        string model = SharedData.Require("models/stories260K"), dir = Directory.CreateTempSubdirectory("loupe-introspect").FullName;
        var run = RunLoupe(["introspect", "--model", model, "--words", "dog,ball", "--layers", "0.4,0.8", "--strengths", "2", "--tokens", "6", "--out", dir]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("false positives", run.Out);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "introspect.json")))!;
        Assert.Equal(2, json["cells"]!.AsArray().Count);
        Assert.Equal(2 * 3, json["trials"]!.AsArray().Count); // per cell: 2 injected + 1 control
        Assert.True(File.Exists(Path.Combine(dir, "detection.svg")));
        AssertRefused(RunLoupe(["introspect", "--model", model, "--layers", "1.5", "--out", dir]), "--layers");
        AssertRefused(RunLoupe(["introspect", "--model", model, "--words", "dog", "--out", dir]), "--words");
    }
}
