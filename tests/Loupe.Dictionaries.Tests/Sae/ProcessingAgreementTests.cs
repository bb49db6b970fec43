using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Processing;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// A dictionary's training processing (SAELens's model_from_pretrained_kwargs) against the model's: reported only for options
/// set explicitly that change the values at the dictionary's hook for that model.
/// </summary>
public sealed class ProcessingAgreementTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-processing-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static HookedTransformer Load(string arch, string processing = "none") =>
        ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", arch)), processing: WeightProcessing.Parse(processing));

    static SaeLensConfig Trained(params (string Option, bool On)[] options) =>
        new() { TrainingProcessing = string.Join(',', options.Select(o => $"{o.Option}={(o.On ? "true" : "false")}")) };

    [Fact]
    public void Center_writing_weights_matters_on_a_layer_norm_models_residual_stream_only()
    {
        using var plain = Load("gpt2");
        using var centered = Load("gpt2", "center_writing_weights");
        var sae = Trained(("center_writing_weights", false)); // SAELens's training default
        Assert.Null(ProcessingAgreement.Mismatch(plain, "blocks.1.hook_resid_pre", sae));
        string? message = ProcessingAgreement.Mismatch(centered, "blocks.1.hook_resid_pre", sae);
        Assert.NotNull(message);
        Assert.Contains("center_writing_weights off in training, on here", message);
        Assert.Contains("--process none", message);
        Assert.Null(ProcessingAgreement.Mismatch(centered, "blocks.1.attn.hook_pattern", sae)); // attention patterns do not move
        using var llama = Load("llama");
        Assert.Null(ProcessingAgreement.Mismatch(llama, "blocks.1.hook_resid_pre", Trained(("center_writing_weights", true)))); // RMSNorm: never applied
    }

    [Fact]
    public void Fold_ln_matters_at_a_layer_norms_hook_normalized_and_fold_value_biases_at_z_where_there_are_value_biases()
    {
        using var gpt2 = Load("gpt2");
        var folded = Trained(("fold_ln", true), ("fold_value_biases", true));
        Assert.Contains("fold_ln on in training, off here", ProcessingAgreement.Mismatch(gpt2, "blocks.0.ln2.hook_normalized", folded));
        Assert.Contains("--process fold_ln,fold_value_biases", ProcessingAgreement.Mismatch(gpt2, "blocks.0.ln2.hook_normalized", folded));
        Assert.Null(ProcessingAgreement.Mismatch(gpt2, "blocks.0.hook_resid_post", folded));
        Assert.Contains("fold_value_biases on in training, off here", ProcessingAgreement.Mismatch(gpt2, "blocks.1.attn.hook_z", folded));
        using var llama = Load("llama"); // RMSNorm's hook_normalized is x/σ either way; no value biases
        Assert.Null(ProcessingAgreement.Mismatch(llama, "blocks.0.ln2.hook_normalized", folded));
        Assert.Null(ProcessingAgreement.Mismatch(llama, "blocks.1.attn.hook_z", folded));
        using var processed = Load("gpt2", "fold_ln,fold_value_biases");
        Assert.Null(ProcessingAgreement.Mismatch(processed, "blocks.1.attn.hook_z", folded));
        Assert.Null(ProcessingAgreement.Mismatch(gpt2, "blocks.1.attn.hook_z", new SaeLensConfig())); // nothing recorded: nothing guessed
    }

    [Fact]
    public void Cfg_json_records_only_the_processing_options_it_sets_to_true_or_false()
    {
        var sae = new SparseDictionary(SaeShape.Sae(8, 12), new ReluActivation());
        sae.Initialize(1, decoderNorm: 0.5f);
        foreach (bool inMetadata in new[] { false, true })
        {
            string folder = Path.Combine(_dir, inMetadata ? "v6" : "v5");
            SaeLensFormat.Save(folder, sae, new SaeLensConfig { HookName = "blocks.0.hook_resid_pre" });
            string cfg = Path.Combine(folder, "cfg.json");
            var json = JsonNode.Parse(File.ReadAllText(cfg))!.AsObject();
            var kwargs = new JsonObject { ["center_writing_weights"] = false, ["fold_ln"] = "yes", ["dtype"] = "bfloat16", ["fold_value_biases"] = true };
            if (inMetadata) json["metadata"]!["model_from_pretrained_kwargs"] = kwargs;
            else json["model_from_pretrained_kwargs"] = kwargs;
            File.WriteAllText(cfg, json.ToJsonString());
            var config = SaeLensFormat.Load(folder).Config;
            Assert.Equal("center_writing_weights=false,fold_value_biases=true", config.TrainingProcessing);
            Assert.Equal(config, SaeLensFormat.Load(folder).Config); // configs compare by value
            var read = config.TrainingProcessingOptions();
            Assert.Equal(2, read.Count);
            Assert.False(read["center_writing_weights"]);
            Assert.True(read["fold_value_biases"]);
        }
    }
}
