using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>--process</c>: TransformerLens's weight processing on load, for every verb that loads a model.</summary>
[Collection("console")]
public class ProcessCliTests
{
    static string Fixture(string arch) => SharedData.TestData(Path.Combine("reference", arch));

    [Fact]
    public void InfoAndRunShowTheProcessingAndRunGivesTheSameProbabilities()
    {
        var (code, stdout, err) = RunLoupe("info", "--model", Fixture("gpt2"), "--process", "tl");
        Assert.True(code == 0, err);
        Assert.Contains("processed on load: fold_ln,center_writing_weights,center_unembed,fold_value_biases", stdout);
        (code, stdout, err) = RunLoupe("info", "--model", Fixture("gpt2"));
        Assert.True(code == 0, err);
        Assert.Contains("weights:      as stored", stdout);

        var (c1, plain, e1) = RunLoupe("run", "--model", Fixture("gpt2"), "--tokens", "1,2,3,4", "-n", "0");
        var (c2, processed, e2) = RunLoupe("run", "--model", Fixture("gpt2"), "--tokens", "1,2,3,4", "-n", "0", "--process", "fold_ln,center_unembed");
        Assert.True(c1 == 0 && c2 == 0, e1 + e2);
        Assert.Contains("Weights processed on load: fold_ln,center_unembed", processed);
        // The top-token table (probabilities to two decimals) is unchanged.
        Assert.Equal(plain.Trim(), processed[(processed.IndexOf('\n') + 1)..].Trim());
    }

    [Fact]
    public void CacheRecordsTheProcessing()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-cli").FullName, "acts.safetensors");
        var (code, _, err) = RunLoupe("cache", "--model", Fixture("gpt2"), "--tokens", "1,2,3", "--hooks", "hook_embed", "--out", path, "--process", "fold_ln");
        Assert.True(code == 0, err);
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal("fold_ln", file.Metadata["weight_processing"]);
    }

    [Fact]
    public void OptionsThatAreNotExactAndUnknownNamesAreRefused()
    {
        AssertRefused(RunLoupe("info", "--model", Fixture("llama"), "--process", "center_writing_weights"), "center_writing_weights", "RMSNorm");
        AssertRefused(RunLoupe("run", "--model", Fixture("gemma2"), "--tokens", "1,2", "--process", "fold_ln"), "fold_ln", "sandwich norms");
        AssertRefused(RunLoupe("info", "--model", Fixture("gpt2"), "--process", "fold_layernorm"), "--process", "fold_layernorm", "fold_ln");
    }

    [RequiresSharedFact("models/gpt2-small-attention")]
    public void PartialCheckpointsRefuseProcessing()
    {
        AssertRefused(RunLoupe("weights", "composition", "--model", SharedData.Require("models/gpt2-small-attention"), "--process", "fold_ln"),
            "--process", "partial checkpoint");
    }
}
