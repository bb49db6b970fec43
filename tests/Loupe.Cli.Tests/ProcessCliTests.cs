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
    [Fact]
    public void A_dictionary_trained_under_other_processing_at_its_hook_is_warned_about()
    {
        // SAELens's training default: center_writing_weights off. Here the model is loaded with it on: the stream is centred.
        string folder = Directory.CreateTempSubdirectory("loupe-process-sae-").FullName;
        try
        {
            var sae = new Loupe.Dictionaries.Sae.SparseDictionary(Loupe.Dictionaries.Sae.SaeShape.Sae(64, 32), new Loupe.Dictionaries.Sae.ReluActivation());
            sae.Initialize(1, decoderNorm: 1f);
            Loupe.Dictionaries.Sae.SaeLensFormat.Save(folder, sae, new Loupe.Dictionaries.Sae.SaeLensConfig { HookName = "blocks.1.hook_resid_pre" });
            string cfg = Path.Combine(folder, "cfg.json");
            File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"metadata\": {", "\"metadata\": {\n    \"model_from_pretrained_kwargs\": {\"center_writing_weights\": false},", StringComparison.Ordinal));
            string[] cache = ["cache", "--model", Fixture("gpt2"), "--tokens", "1,2,3", "--sae", folder, "--hooks", "blocks.1.hook_resid_pre.hook_sae_acts_post", "--out", Path.Combine(folder, "acts.safetensors")];
            var warned = RunLoupe([.. cache, "--process", "center_writing_weights"]);
            Assert.True(warned.Code == 0, warned.Err);
            Assert.Contains("warning: the dictionary on 'blocks.1.hook_resid_pre' was trained on a model loaded with other weight processing (center_writing_weights off in training, on here", warned.Err);
            Assert.Contains("--process none", warned.Err);
            var quiet = RunLoupe(cache);
            Assert.True(quiet.Code == 0, quiet.Err);
            Assert.DoesNotContain("warning:", quiet.Err);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
