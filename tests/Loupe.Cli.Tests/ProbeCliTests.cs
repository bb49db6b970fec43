using System.Text.Json;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe probe</c>, run in-process with captured output.</summary>
[Collection("console")]
public class ProbeCliTests
{
    const string Model = "models/stories260K", Brown = "datasets/brown-corpus";


    static string TempDir() => Directory.CreateTempSubdirectory("loupe-probe-cli").FullName;


    [Fact]
    public void HelpShowsAnExample()
    {
        var (code, stdout, _) = RunLoupe("probe", "--help");
        Assert.Equal(0, code);
        Assert.Contains("Examples:", stdout);
        Assert.Contains("loupe probe --model", stdout);
        Assert.Contains("--max-sentences", stdout);
    }

    [RequiresSharedFact(Model, Brown)]
    public void ProbeWritesAccuraciesPerLayerAndAChart()
    {
        string output = TempDir();
        var (code, stdout, stderr) = RunLoupe("probe", "--model", SharedData.Require(Model), "--dataset", "brown:" + SharedData.Require(Brown),
            "--categories", "news,fiction", "--max-sentences", "300", "--seed", "2", "--out", output);
        Assert.True(code == 0, stderr);
        Assert.Contains("blocks.4.hook_resid_post", stdout);
        Assert.Contains("baseline", stdout);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "probe.json")));
        var root = doc.RootElement;
        var layers = root.GetProperty("layers").EnumerateArray().ToArray();
        Assert.Equal(6, layers.Length);
        double baseline = root.GetProperty("baseline").GetProperty("held_out_accuracy").GetDouble();
        double best = layers.Max(l => l.GetProperty("logistic").GetProperty("held_out_accuracy").GetDouble());
        Assert.True(best > baseline + 0.3, $"best logistic {best:F3} vs baseline {baseline:F3}");
        Assert.Equal(2, root.GetProperty("settings").GetProperty("seed").GetInt32());
        Assert.Equal(12, root.GetProperty("best").GetProperty("confusion").GetProperty("matrix").GetArrayLength());
        Assert.True(root.GetProperty("seconds").GetProperty("total").GetDouble() > 0);
        Assert.StartsWith("<svg", File.ReadAllText(Path.Combine(output, "probe_accuracy.svg")));
    }

    /// <summary>On a device the model's forwards and the probes' products run there: the CPU's accuracies, a stop reason per probe.</summary>
    [RequiresSharedFact(Model, Brown)]
    public void ProbesTrainOnTheDeviceWithTheCpusAccuracies()
    {
        JsonElement[] Layers(params string[] extra)
        {
            string output = TempDir();
            var (code, _, stderr) = RunLoupe([.. new[] { "probe", "--model", SharedData.Require(Model), "--dataset", "brown:" + SharedData.Require(Brown),
                "--categories", "news", "--max-sentences", "12", "--hooks", "blocks.1.hook_resid_post,blocks.3.hook_resid_post", "--seed", "4",
                "--max-iterations", "60", "--out", output }, .. extra]); // 60 L-BFGS steps: each is a few emulated kernel launches per hook
            Assert.True(code == 0, stderr);
            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "probe.json")));
            return doc.RootElement.GetProperty("layers").EnumerateArray().Select(l => l.Clone()).ToArray();
        }
        var cpu = Layers();
        var gpu = Layers("--device", "emulated");
        Assert.Equal(2, gpu.Length);
        for (int i = 0; i < cpu.Length; i++)
        {
            double Held(JsonElement l, string probe) => l.GetProperty(probe).GetProperty("held_out_accuracy").GetDouble();
            // ~50 held-out tokens: one token is 0.02; fp32 products on either side may flip a near-tie or two.
            Assert.Equal(Held(cpu[i], "logistic"), Held(gpu[i], "logistic"), 0.05);
            Assert.Equal(Held(cpu[i], "diffmeans"), Held(gpu[i], "diffmeans"), 0.05);
            Assert.Contains(gpu[i].GetProperty("logistic").GetProperty("stop").GetString(), new[] { "gradient", "decrease", "budget", "line_search" });
        }
    }

    [Fact]
    public void MissingDatasetFolderIsAClearError()
    {
        string missing = Path.Combine(TempDir(), "no-brown-here");
        var (code, _, stderr) = RunLoupe("probe", "--model", "unused-model", "--dataset", "brown:" + missing, "--out", TempDir());
        Assert.Equal(2, code);
        Assert.Contains("Brown corpus folder not found", stderr);
        Assert.Contains(missing, stderr);
    }

    [Fact]
    public void UnknownProbeKindAndDatasetKindAreClearErrors()
    {
        var (code, _, stderr) = RunLoupe("probe", "--model", "unused-model", "--dataset", "brown:x", "--probe", "svm", "--out", TempDir());
        Assert.Equal(2, code);
        Assert.Contains("--probe", stderr);
        Assert.Contains("found \"svm\"", stderr);
        Assert.Contains("logistic, diffmeans or both", stderr);
        (code, _, stderr) = RunLoupe("probe", "--model", "unused-model", "--dataset", "conll:somewhere", "--out", TempDir());
        Assert.Equal(2, code);
        Assert.Contains("brown:FOLDER", stderr);
    }

    [RequiresSharedFact(Model, Brown)]
    public void UnknownHookNameAndCategoryAreClearErrors()
    {
        var (code, _, stderr) = RunLoupe("probe", "--model", SharedData.Require(Model), "--dataset", "brown:" + SharedData.Require(Brown),
            "--hooks", "blocks.*.hook_nope", "--max-sentences", "20", "--out", TempDir());
        Assert.Equal(2, code);
        Assert.Contains("blocks.*.hook_nope", stderr);
        (code, _, stderr) = RunLoupe("probe", "--model", SharedData.Require(Model), "--dataset", "brown:" + SharedData.Require(Brown),
            "--categories", "news,poetry", "--out", TempDir());
        Assert.Equal(2, code);
        Assert.Contains("'poetry'", stderr);
    }
}
