using System.Text.Json.Nodes;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe verbalize</c> end to end on stories260K: a source activation and a vector file, read out at every layer; bad sources refused.</summary>
[Collection("console")]
public class VerbalizeCliTests
{
    [RequiresSharedFact("models/stories260K")]
    public void Verbalize_reads_a_source_activation_and_a_vector_out_at_every_layer()
    {
        string model = SharedData.Require("models/stories260K"), dir = Directory.CreateTempSubdirectory("loupe-verbalize").FullName;
        var run = RunLoupe(["verbalize", "--model", model, "--source-prompt", "Lily loved her cat", "--source-layer", "3", "--tokens", "4", "--out", dir]);
        Assert.True(run.Code == 0, run.Err);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "verbalize.json")))!;
        var readings = json["readings"]!.AsArray();
        Assert.Equal(5, readings.Count);
        Assert.All(readings, r => Assert.Equal(4, r!["tokens"]!.AsArray().Count));
        Assert.Contains("layer   4", run.Out);

        string vector = Path.Combine(dir, "v.safetensors");
        Loupe.Models.Loading.SafeTensorsWriter.Write(vector, [("direction", new[] { 64 }, (ReadOnlyMemory<float>)Enumerable.Range(0, 64).Select(i => (float)Math.Sin(i)).ToArray())]);
        run = RunLoupe(["verbalize", "--model", model, "--vector", vector, "--layers", "1-2", "--tokens", "2"]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("layer   2", run.Out);

        AssertRefused(RunLoupe(["verbalize", "--model", model, "--tokens", "2"]), "exactly one of");
        AssertRefused(RunLoupe(["verbalize", "--model", model, "--source-prompt", "Lily", "--source-layer", "9"]), "--source-layer");
        AssertRefused(RunLoupe(["verbalize", "--model", model, "--vector", vector, "--layers", "7"]), "--layers");
    }
}
