using System.Text.Json;
using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Sae;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe sae probe</c> on the real TinyStories model and the Brown corpus, in-process.</summary>
[Collection("console")]
public sealed class SaeProbeCliTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("loupe-cli-sae-probe").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void Probe_writes_the_table_json_and_chart_and_refuses_bad_settings()
    {
        string model = SharedData.Require("models/stories260K"), brown = "brown:" + SharedData.Require("datasets/brown-corpus");
        string sae = Path.Combine(_root, "sae");
        var dictionary = new SparseDictionary(SaeShape.Sae(64, 128), new TopKActivation(8));
        dictionary.Initialize(seed: 2);
        SaeLensFormat.Save(sae, dictionary, new SaeLensConfig { HookName = "blocks.1.hook_resid_post" });
        string outDir = Path.Combine(_root, "out");
        var (code, stdout, err) = RunLoupe("sae", "probe", "--model", model, "--sae", sae, "--dataset", brown, "--max-sentences", "200", "--ks", "1,4",
            "--classes", "3", "--out", outDir);
        Assert.True(code == 0, err);
        Assert.Contains("at blocks.1.hook_resid_post (d_in 64, d_sae 128)", stdout);
        Assert.Contains("NOUN", stdout);
        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, SparseProbingReport.JsonFile))))
        {
            var root = json.RootElement;
            Assert.Equal(3, root.GetProperty("classes").GetArrayLength());
            Assert.Equal(2, root.GetProperty("mean").GetProperty("latents").GetArrayLength());
            Assert.InRange(root.GetProperty("mean").GetProperty("dense").GetDouble(), 0.6, 1.0);
        }
        Assert.True(File.Exists(Path.Combine(outDir, SparseProbingReport.ChartFile)));

        (code, _, err) = RunLoupe("sae", "probe", "--model", model, "--sae", sae, "--dataset", brown, "--ks", "5,1", "--out", outDir);
        Assert.Equal(2, code);
        Assert.Contains("--ks", err);
        (code, _, err) = RunLoupe("sae", "probe", "--model", model, "--sae", sae, "--dataset", brown, "--hook", "blocks.9.hook_resid_post", "--max-sentences", "20", "--out", outDir);
        Assert.Equal(2, code);
        Assert.Contains("blocks.9.hook_resid_post", err);

        // SAEBench's text classification: Brown categories on mean-pooled passages.
        string genreDir = Path.Combine(_root, "genre");
        (code, stdout, err) = RunLoupe("sae", "probe", "--model", model, "--sae", sae, "--dataset", brown, "--task", "genre", "--categories", "news,romance,hobbies",
            "--max-sentences", "200", "--passage-tokens", "64", "--ks", "1,8", "--min-examples", "5", "--out", genreDir);
        Assert.True(code == 0, err);
        Assert.Contains("200 passages, mean-pooled, at blocks.1.hook_resid_post", stdout);
        Assert.Contains("romance", stdout);
        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(genreDir, SparseProbingReport.JsonFile))))
        {
            Assert.Equal("genre", json.RootElement.GetProperty("task").GetString());
            Assert.Equal("64", json.RootElement.GetProperty("args").GetProperty("passage_tokens").GetString());
        }
        (code, _, err) = RunLoupe("sae", "probe", "--model", model, "--sae", sae, "--dataset", brown, "--task", "topic", "--out", genreDir);
        Assert.Equal(2, code);
        Assert.Contains("topic", err);
    }
}
