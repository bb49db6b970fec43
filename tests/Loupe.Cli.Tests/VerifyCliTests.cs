using System.Text.Json.Nodes;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe verify</c>: a certificate against Hugging Face's reference file; failures exit 1; bad arguments exit 2.</summary>
[Collection("console")]
public class VerifyCliTests
{
    [Fact]
    public void Verify_passes_against_the_reference_and_fails_against_another_models()
    {
        string gpt2 = SharedData.TestData(Path.Combine("reference", "gpt2")), dir = Directory.CreateTempSubdirectory("loupe-verify").FullName;
        var run = RunLoupe(["verify", "--model", gpt2, "--reference", Path.Combine(gpt2, "reference.safetensors"), "--out", dir]);
        Assert.True(run.Code == 0, run.Err + run.Out);
        Assert.Contains("PASSED", run.Out);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "verify.json")))!;
        Assert.True((bool)json["passed"]!);
        Assert.Contains(json["checks"]!.AsArray(), c => (string)c!["group"]! == "reference" && (string)c["name"]! == "logits");

        run = RunLoupe(["verify", "--model", gpt2, "--reference", Path.Combine(SharedData.TestData(Path.Combine("reference", "gemma3")), "reference.safetensors")]);
        Assert.Equal(1, run.Code);
        Assert.Contains("FAILED", run.Out);

        run = RunLoupe(["verify", "--model", gpt2, "--reference", Path.Combine(dir, "absent.safetensors")]);
        Assert.Equal(2, run.Code);
        Assert.Contains("--reference", run.Err);
    }
}
