using Loupe.Dictionaries.Sae;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// saprmarks/dictionary_learning trainer folders (ae.pt + config.json) written by tests/data/pytorch/make_files.py as
/// torch.save writes them, with each class's encode and decode transcribed into plain Python from dictionary_learning's
/// code; expected.json holds their latents and reconstructions.
/// </summary>
public sealed class DictionaryLearningFormatTests
{
    static string Folder(string name) => SharedData.TestData(Path.Combine("pytorch", "dictionary_learning", name));

    public static TheoryData<string, Type, string, bool, int> Classes => new()
    {
        { "standard", typeof(ReluActivation), "blocks.3.hook_resid_post", true, 0 },
        { "resid_out_layer3", typeof(ReluActivation), "blocks.3.hook_resid_post", true, 0 },
        { "new", typeof(ReluActivation), "blocks.2.hook_mlp_out", false, 0 },
        { "topk", typeof(TopKActivation), "blocks.1.hook_attn_out", true, 3 },
        { "batch_topk", typeof(BatchTopKActivation), "blocks.3.hook_resid_post", true, 3 },
        { "matryoshka", typeof(MatryoshkaBatchTopKActivation), "blocks.3.hook_resid_post", true, 3 },
        { "jumprelu", typeof(JumpReluActivation), "blocks.3.hook_resid_post", false, 0 },
        { "gated", typeof(JumpReluActivation), "blocks.3.hook_resid_post", true, 0 },
    };

    [Theory, MemberData(nameof(Classes))]
    public void Latents_and_reconstructions_are_dictionary_learnings(string name, Type activation, string hook, bool bDecOnInput, int k)
    {
        var want = DictionaryLearningExpected.Of(name);
        var (dict, cfg) = DictionaryFile.Load(Folder(name));
        Assert.IsType(activation, dict.Activation);
        Assert.Equal((6, 10, 6), (dict.Shape.DIn, dict.Shape.DSae, dict.Shape.DOut));
        Assert.Equal(bDecOnInput, dict.Shape.ApplyBDecToInput);
        Assert.Equal(hook, cfg.HookName);
        Assert.Equal(k, cfg.K);
        if (name != "resid_out_layer3") Assert.Equal("EleutherAI/pythia-70m-deduped", cfg.ModelName);

        var x = want.X;
        int rows = x.Length / 6;
        var latents = dict.Encode(x, rows);
        var wantLatents = want.Latents;
        Assert.Contains(wantLatents, v => v == 0);         // each class's sparsity is exercised
        Assert.Contains(wantLatents, v => v > 0);
        for (int i = 0; i < latents.Length; i++)
            Assert.True(Math.Abs(latents[i] - wantLatents[i]) <= 1e-5 * (1 + Math.Abs(wantLatents[i])), $"{name} latent {i}: {latents[i]} vs {wantLatents[i]}");
        var recon = dict.Forward(x, rows);
        var wantRecon = want.Recon;
        for (int i = 0; i < recon.Length; i++)
            Assert.True(Math.Abs(recon[i] - wantRecon[i]) <= 1e-5 * (1 + Math.Abs(wantRecon[i])), $"{name} recon {i}: {recon[i]} vs {wantRecon[i]}");
        // the ae.pt path names the folder
        Assert.Equal(dict.P.WEnc, DictionaryFile.Load(Path.Combine(Folder(name), "ae.pt")).Dictionary.P.WEnc);
    }

    [Fact]
    public void Matryoshka_levels_are_the_cumulative_group_sizes()
    {
        var (dict, cfg) = DictionaryFile.Load(Folder("matryoshka"));
        Assert.Equal([3, 6, 10], Assert.IsType<MatryoshkaBatchTopKActivation>(dict.Activation).Widths);
        Assert.Equal([3, 6, 10], cfg.MatryoshkaLevels());
        Assert.Equal(0.15f, dict.P.Threshold[0], 1e-7f);
    }

    [Fact]
    public void A_config_less_topk_is_refused_and_a_config_less_gated_sae_is_recognised()
    {
        Assert.Equal("gated", DictionaryFile.Load(Folder("gated")).Config.Architecture);
        InputError e;
        string dir = Directory.CreateTempSubdirectory("loupe-dl-").FullName;
        try
        {
            File.Copy(Path.Combine(Folder("topk"), "ae.pt"), Path.Combine(dir, "ae.pt"));
            e = Assert.Throws<InputError>(() => DictionaryFile.Load(dir));
            Assert.Contains("AutoEncoderTopK or a BatchTopKSAE", e.Message);
            Assert.Contains("config.json", e.Message);

            File.Copy(Path.Combine(Folder("gated"), "ae.pt"), Path.Combine(dir, "ae.pt"), overwrite: true);
            Assert.Equal(DictionaryFile.Load(Folder("gated")).Dictionary.P.LogThreshold, DictionaryFile.Load(dir).Dictionary.P.LogThreshold);

            File.Copy(Path.Combine(Folder("standard"), "ae.pt"), Path.Combine(dir, "ae.pt"), overwrite: true);
            Assert.Equal("", DictionaryFile.Load(dir).Config.HookName); // neither a config nor a folder name says: --hook decides
            Assert.Equal("blocks.0.hook_mlp_out", DictionaryFile.Load(dir, "blocks.0.hook_mlp_out").Config.HookName);

            File.WriteAllText(Path.Combine(dir, "config.json"), File.ReadAllText(Path.Combine(Folder("standard"), "config.json")).Replace("\"dict_size\": 10", "\"dict_size\": 12"));
            e = Assert.Throws<InputError>(() => DictionaryFile.Load(dir));
            Assert.Contains("trainer.dict_size is 12", e.Message);

            // Python configs may write integers as floats (k = 3.0); a fraction is refused.
            File.Copy(Path.Combine(Folder("topk"), "ae.pt"), Path.Combine(dir, "ae.pt"), overwrite: true);
            string topkConfig = File.ReadAllText(Path.Combine(Folder("topk"), "config.json"));
            File.WriteAllText(Path.Combine(dir, "config.json"), topkConfig.Replace("\"k\": 3,", "\"k\": 3.0,"));
            Assert.Equal(3, DictionaryFile.Load(dir).Config.K);
            File.WriteAllText(Path.Combine(dir, "config.json"), topkConfig.Replace("\"k\": 3,", "\"k\": 3.5,"));
            Assert.Contains("field 'k'", Assert.Throws<InputError>(() => DictionaryFile.Load(dir)).Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory]
    [InlineData("resid_post_layer_12", "blocks.12.hook_resid_post")]
    [InlineData("resid_out_layer3", "blocks.3.hook_resid_post")]
    [InlineData("mlp_out_layer_0", "blocks.0.hook_mlp_out")]
    [InlineData("attn_out_layer5", "blocks.5.hook_attn_out")]
    [InlineData("resid_pre_layer_4", "blocks.4.hook_resid_pre")]
    [InlineData("embed", "hook_embed")]
    [InlineData("0-mlp-sm", "blocks.0.hook_mlp_out")]
    [InlineData("4-att-sm", "blocks.4.hook_attn_out")]
    [InlineData("5-res-sm", "blocks.5.hook_resid_post")]
    [InlineData("e-res-sm", "hook_embed")]
    public void Submodule_names_map_to_transformerlens_hooks(string submodule, string hook) =>
        Assert.Equal(hook, DictionaryLearningFormat.HookOf(submodule));
}
