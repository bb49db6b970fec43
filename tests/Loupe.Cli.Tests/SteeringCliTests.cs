using System.Text.Json;
using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe steer</c> and <c>loupe persona</c>, run in-process with captured output.</summary>
[Collection("console")]
public class SteeringCliTests
{

    static string TempDir() => Directory.CreateTempSubdirectory("loupe-steer-cli").FullName;

    static string DataFile(string name) => Path.Combine(SharedData.RepoRoot, "src", "Loupe.Steering", "Data", name);

    [Fact]
    public void HelpShowsExamples()
    {
        foreach (var verb in new[] { "steer", "persona" })
        {
            var (_, stdout, _) = RunLoupe(verb, "--help");
            Assert.Contains("Examples:", stdout);
            Assert.Contains("loupe " + verb, stdout);
        }
    }

    [RequiresSharedFact("models/stories260K")]
    public void SteerWithAContrastPrintsBothContinuationsAndWritesJson()
    {
        string model = SharedData.Require("models/stories260K"), dir = TempDir();
        var (code, stdout, err) = RunLoupe("steer", "--model", model, "--prompt", "Once upon a time", "--hook", "blocks.2.hook_resid_post",
            "--contrast-a", "She was very happy|They laughed and smiled", "--contrast-b", "She was very sad|They cried and frowned",
            "--reduction", "mean", "--coeff", "2", "-n", "16", "--samples", "2", "-t", "0.9", "--top-k", "40", "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("Steering at blocks.2.hook_resid_post: add 2 × the CAA vector (2 vs 2 prompts, mean over tokens", stdout);
        Assert.Contains("[seed 0] unsteered: Once upon a time", stdout);
        Assert.Contains("[seed 1] steered:   Once upon a time", stdout);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "steer.json")));
        Assert.Equal("add", json.RootElement.GetProperty("mode").GetString());
        Assert.Equal(64, json.RootElement.GetProperty("direction").GetArrayLength());
        Assert.Equal(2, json.RootElement.GetProperty("samples").GetArrayLength());

        // Greedy and projected out: still two continuations, and the mode is recorded.
        (code, stdout, err) = RunLoupe("steer", "--model", model, "--prompt", "Once upon a time", "--hook", "blocks.2.hook_resid_post",
            "--contrast-a", "She was very happy", "--contrast-b", "She was very sad", "--project-out", "-n", "8");
        Assert.True(code == 0, err);
        Assert.Contains("project out 1 × the component along the CAA vector", stdout);
    }

    [RequiresSharedFact("models/stories260K")]
    public void SteerRejectsBadVectorsHooksAndSets()
    {
        string model = SharedData.Require("models/stories260K"), dir = TempDir();
        string shortVector = Path.Combine(dir, "short.safetensors");
        SafeTensorsWriter.Write(shortVector, [("direction", [10], new float[10])], new Dictionary<string, string> { ["hook"] = "blocks.2.hook_resid_post" });

        var (code, _, err) = RunLoupe("steer", "--model", model, "--prompt", "Hi", "--vector", shortVector, "--coeff", "2");
        Assert.Equal(2, code);
        Assert.Contains("blocks.2.hook_resid_post", err);
        Assert.Contains("10 entries", err);
        Assert.Contains("d_model = 64", err);

        (code, _, err) = RunLoupe("steer", "--model", model, "--prompt", "Hi", "--hook", "blocks.9.hook_resid_post", "--contrast-a", "a", "--contrast-b", "b", "--coeff", "2");
        Assert.Equal(2, code);
        Assert.Contains("unknown hook 'blocks.9.hook_resid_post'", err);
        Assert.Contains("blocks.{0..4}.hook_resid_post", err);

        (code, _, err) = RunLoupe("steer", "--model", model, "--prompt", "Hi", "--hook", "blocks.1.hook_resid_post", "--contrast-a", " | ", "--contrast-b", "b", "--coeff", "2");
        Assert.Equal(2, code);
        Assert.Contains("--contrast-a is empty", err);

        (code, _, err) = RunLoupe("steer", "--model", model, "--prompt", "Hi", "--hook", "blocks.1.hook_resid_post", "--coeff", "2");
        Assert.Equal(2, code);
        Assert.Contains("give either --vector", err);

        (code, _, err) = RunLoupe("steer", "--model", model, "--prompt", "Hi", "--vector", shortVector + ":nope", "--coeff", "2");
        Assert.Equal(2, code);
        Assert.Contains("no tensor 'nope'", err);

        (code, _, err) = RunLoupe("steer", "--model", model, "--prompt", "Hi", "--hook", "blocks.1.hook_resid_post", "--contrast-a", "a", "--contrast-b", "b");
        Assert.Equal(2, code);
        Assert.Contains("give --coeff", err);
    }

    [RequiresSharedFact("models/stories260K")]
    public void PersonaWritesTheVectorChartsMonitorAndSweep()
    {
        string model = SharedData.Require("models/stories260K"), dir = TempDir();
        var (code, stdout, err) = RunLoupe("persona", "--model", model, "--positive", DataFile("happy.txt"), "--negative", DataFile("sad.txt"),
            "--prompt", "Once upon a time, there was a little girl named Lily. One day, she", "--coeffs", "-4,0,4", "--seeds", "2", "-n", "20",
            "--score-words", $"{DataFile("happy-words.txt")},{DataFile("sad-words.txt")}", "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("Persona: blocks.", stdout);
        Assert.Contains("held-out accuracy", stdout);
        Assert.Contains("Monitor:", stdout);
        Assert.Contains("Coefficient sweep: 2 seeds × 20 tokens", stdout);
        foreach (var file in new[] { "persona.safetensors", "persona.json", "separation.svg", "monitor.json", "sweep.json", "sweep.svg" })
            Assert.True(File.Exists(Path.Combine(dir, file)), file);

        using (var vector = SafeTensorsFile.Open(Path.Combine(dir, "persona.safetensors")))
        {
            Assert.Equal([64L], vector.GetInfo("persona").Shape);
            Assert.Equal([5L, 64], vector.GetInfo("persona.layers").Shape);
            Assert.StartsWith("blocks.", vector.Metadata["hook"]);
            Assert.True(int.TryParse(vector.Metadata["layer"], out _));
            Assert.True(double.Parse(vector.Metadata["norm"], System.Globalization.CultureInfo.InvariantCulture) > 0);
        }
        using (var sweep = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "sweep.json"))))
        {
            var points = sweep.RootElement.GetProperty("points");
            Assert.Equal(3, points.GetArrayLength());
            Assert.Equal(2, points[0].GetProperty("samples").GetArrayLength());
        }
        using (var monitor = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "monitor.json"))))
            Assert.True(monitor.RootElement.GetProperty("tokens").GetArrayLength() > 5);
        Assert.Contains("<svg", File.ReadAllText(Path.Combine(dir, "sweep.svg")));

        // The saved vector steers through `loupe steer`, its hook read from the file.
        (code, stdout, err) = RunLoupe("steer", "--model", model, "--prompt", "Once upon a time", "--vector", Path.Combine(dir, "persona.safetensors") + ":persona", "--coeff", "3", "-n", "8");
        Assert.True(code == 0, err);
        Assert.Contains("Steering at blocks.", stdout);

        (code, _, err) = RunLoupe("persona", "--model", model, "--positive", DataFile("happy.txt"), "--negative", DataFile("sad.txt"),
            "--prompt", "Hi", "--coeffs", "-4,x", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--coeffs: expected finite numbers", err);
        Assert.Contains("found \"x\"", err);
    }
}
