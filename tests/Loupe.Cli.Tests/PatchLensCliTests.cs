using Loupe.Reports;
using System.Text.Json;
using System.Xml.Linq;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe patch</c> and <c>loupe lens</c>, run in-process with captured output.</summary>
[Collection("console")]
public sealed class PatchLensCliTests : IDisposable
{
    readonly List<string> _dirs = [];

    public void Dispose()
    {
        foreach (var dir in _dirs) Directory.Delete(dir, recursive: true);
    }


    static string Fixture(string arch) => SharedData.TestData(Path.Combine("reference", arch));

    string TempDir()
    {
        string dir = Directory.CreateTempSubdirectory("loupe-cli-patch").FullName;
        _dirs.Add(dir);
        return dir;
    }

    const string CleanIds = "82,87,74,39,184,175,214,409,305,33,71,171";
    const string CorruptIds = "82,87,74,300,184,175,214,12,305,33,71,171";

    [Theory]
    [InlineData("resid_pre", 3, 12)]
    [InlineData("head_out", 3, 4)]
    [InlineData("mlp_out", 3, 12)]
    [InlineData("head_pattern", 3, 4)]
    [InlineData("q_input", 3, 4)]
    public void PatchWritesGridsAndAHeatmap(string target, int rows, int cols)
    {
        string dir = TempDir();
        var (code, stdout, err) = RunLoupe("patch", "--model", Fixture("gpt2"), "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds,
            "--answer-id", "17", "--wrong-id", "42", "--target", target, "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("logit_diff(17,42)@-1: clean", stdout);
        Assert.Contains("forward passes", stdout);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "patch.json")));
        var root = json.RootElement;
        Assert.Equal(target, root.GetProperty("target").GetString());
        Assert.Equal(rows, root.GetProperty("values").GetArrayLength());
        Assert.Equal(cols, root.GetProperty("normalized")[0].GetArrayLength());
        Assert.Equal(cols, root.GetProperty("column_labels").GetArrayLength());
        Assert.True(root.GetProperty("forward_passes").GetInt32() >= 3);
        Assert.True(root.GetProperty("seconds").GetDouble() > 0);
        Assert.Equal(target, root.GetProperty("args").GetProperty("target").GetString());
        double clean = root.GetProperty("clean_value").GetDouble(), corrupt = root.GetProperty("corrupt_value").GetDouble();
        Assert.NotEqual(clean, corrupt);
        if (target == "resid_pre")
        {
            // Layer 0 at a position whose token differs restores most; unchanged positions before it restore nothing.
            Assert.Equal(0, root.GetProperty("normalized")[0][0].GetDouble(), 1e-4);
            Assert.Equal("3: 39", root.GetProperty("column_labels")[3].GetString());
        }
        Assert.Equal("svg", XDocument.Load(Path.Combine(dir, "patch.svg")).Root!.Name.LocalName);
    }

    [Fact]
    public void PatchRejectsBadInputsClearly()
    {
        string dir = TempDir();
        string gpt2 = Fixture("gpt2");
        var (code, _, err) = RunLoupe("patch", "--model", gpt2, "--clean-tokens", CleanIds, "--corrupt-tokens", "1,2,3", "--answer-id", "17", "--wrong-id", "42", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("same number of tokens", err);
        Assert.Contains("clean is 12 tokens", err);
        Assert.Contains("corrupt is 3 tokens", err);

        (code, _, err) = RunLoupe("patch", "--model", gpt2, "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds, "--answer-id", "17", "--target", "resid_mid_typo", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--target: expected one of", err);
        Assert.Contains("found \"resid_mid_typo\"", err);
        Assert.Contains("head_out", err);

        (code, _, err) = RunLoupe("patch", "--model", gpt2, "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds, "--answer-id", "17", "--method", "gradient", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--method: expected activation, attribution or both, found \"gradient\"", err);

        (code, _, err) = RunLoupe("patch", "--model", gpt2, "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds, "--answer-id", "999", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--answer-id: expected an integer in [0, 511], found 999", err);

        (code, _, err) = RunLoupe("patch", "--model", gpt2, "--clean-tokens", CleanIds, "--corrupt-tokens", "1,x,3", "--answer-id", "17", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--corrupt-tokens: 'x'", err);

        (code, _, err) = RunLoupe("patch", "--model", gpt2, "--clean", "hello", "--corrupt-tokens", CorruptIds, "--answer-id", "17", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("no tokenizer", err);

        (code, _, err) = RunLoupe("patch", "--model", gpt2, "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds, "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--answer", err);

        (code, _, err) = RunLoupe("patch", "--model", Fixture("llama"), "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds, "--answer-id", "17", "--target", "mlp_out",
            "--position", "12", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--position: expected an integer in [-12, 11], found 12", err);
        Assert.False(File.Exists(Path.Combine(dir, "patch.json")));
    }

    [Fact]
    public void LensWritesDlaAndTheLogitLens()
    {
        string dir = TempDir();
        var (code, stdout, err) = RunLoupe("lens", "--model", Fixture("llama"), "--tokens", CleanIds, "--answer-id", "17", "--wrong-id", "42", "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("Largest direct contributions", stdout);
        Assert.Contains("resid_post 2 (final)", stdout);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "lens.json")));
        var root = json.RootElement;
        // Σ DLA + biases = the logit difference (llama has neither bias).
        double total = root.GetProperty("dla_total").GetDouble();
        Assert.Equal(root.GetProperty("logit_diff_before_softcap").GetDouble(), total + root.GetProperty("final_norm_bias").GetDouble() + root.GetProperty("unembed_bias").GetDouble(), 1e-4);
        Assert.Equal(1 + 3 * (4 + 1 + 1), root.GetProperty("components").GetArrayLength()); // embed; per layer 4 heads, b_O, mlp
        Assert.Equal(4, root.GetProperty("logit_lens").GetArrayLength());
        foreach (var svg in new[] { "dla.svg", "logit_lens.svg" })
            Assert.Equal("svg", XDocument.Load(Path.Combine(dir, svg)).Root!.Name.LocalName);

        (code, _, err) = RunLoupe("lens", "--model", Fixture("gpt2"), "--tokens", "1,2;3,4", "--answer-id", "17", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("one sequence", err);
        (code, _, err) = RunLoupe("lens", "--model", Fixture("gpt2"), "--tokens", CleanIds, "--answer-id", "17", "--scale", "sideways", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--scale", err);
    }

    const string StoriesClean = "Once upon a time, there was a little girl named Lily. One day,";
    const string StoriesCorrupt = "Once upon a time, there was a little girl named Tim. One day,";

    [RequiresSharedFact("models/stories260K")]
    public void PatchAndLensOnStories260K()
    {
        string model = SharedData.Require("models/stories260K");
        string dir = TempDir();
        var (code, stdout, err) = RunLoupe("patch", "--model", model, "--clean", StoriesClean, "--corrupt", StoriesCorrupt, "--answer", "Lily", "--wrong", "Tim",
            "--target", "resid_pre", "--out", dir);
        Assert.True(code == 0, err);
        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "patch.json"))))
        {
            var root = json.RootElement;
            Assert.True(root.GetProperty("clean_value").GetDouble() > root.GetProperty("corrupt_value").GetDouble() + 2);
            Assert.Equal("14: Lily", root.GetProperty("column_labels")[14].GetString());
            // The name's position carries everything at layer 0; nothing else does.
            Assert.Equal(1, root.GetProperty("normalized")[0][14].GetDouble(), 1e-3);
            Assert.Equal(0, root.GetProperty("normalized")[0][18].GetDouble(), 1e-3);
        }
        Assert.Contains("L0@14", stdout);

        (code, stdout, err) = RunLoupe("patch", "--model", model, "--clean", StoriesClean, "--corrupt", StoriesCorrupt, "--answer", "Lily", "--wrong", "Tim",
            "--target", "head_out", "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("40 cells", stdout);

        (code, _, err) = RunLoupe("patch", "--model", model, "--clean", StoriesClean, "--corrupt", "Once upon a time, there was a little girl named Tom. One day,",
            "--answer", "Lily", "--wrong", "Tim", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("clean is 19 tokens", err);
        Assert.Contains("corrupt is 20 tokens", err);

        (code, _, err) = RunLoupe("patch", "--model", model, "--clean", StoriesClean, "--corrupt", StoriesCorrupt, "--answer", "Tom", "--wrong", "Tim", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--answer \"Tom\" must be exactly one token but tokenizes to 2", err);

        (code, stdout, err) = RunLoupe("lens", "--model", model, "--prompt", StoriesClean, "--answer", "Lily", "--wrong", "Tim", "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("logit(\"Lily\" (317)) − logit(\"Tim\" (326))", stdout);
        Assert.True(File.Exists(Path.Combine(dir, "dla.svg")) && File.Exists(Path.Combine(dir, "logit_lens.svg")));
    }

    [Fact]
    public void HelpShowsExamples()
    {
        foreach (var verb in new[] { "patch", "lens" })
        {
            var (_, stdout, _) = RunLoupe(verb, "--help");
            Assert.Contains("Examples:", stdout);
            Assert.Contains("loupe " + verb, stdout);
        }
    }

    [Fact]
    public void PatchWithBothMethodsReportsTheirRankCorrelation()
    {
        string dir = Directory.CreateTempSubdirectory("loupe-patch-both").FullName;
        var (code, stdout, err) = RunLoupe("patch", "--model", SharedData.TestData("reference/gpt2"), "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds,
            "--answer-id", "17", "--wrong-id", "42", "--target", "head_out", "--method", "both", "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("Spearman ρ with activation patching over 12 cells", stdout);
        Assert.True(File.Exists(Path.Combine(dir, "patch.json")));
        Assert.True(File.Exists(Path.Combine(dir, "attribution", "patch.json")));
        Assert.True(File.Exists(Path.Combine(dir, "attribution", "patch.svg")));
        Assert.Contains("spearman_attribution_vs_activation", File.ReadAllText(Path.Combine(dir, "patch.json")));

        (code, stdout, err) = RunLoupe("patch", "--model", SharedData.TestData("reference/gpt2"), "--clean-tokens", CleanIds, "--corrupt-tokens", CorruptIds,
            "--answer-id", "17", "--wrong-id", "42", "--target", "resid_pre", "--method", "attribution", "--out", dir);
        Assert.True(code == 0, err);
        Assert.Contains("in 2 forward passes", stdout);
    }
}
