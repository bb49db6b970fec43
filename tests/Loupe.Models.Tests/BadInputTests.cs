namespace Loupe.Models.Tests;

/// <summary>Every bad input gets an error that names the file, tensor or argument and what was expected.</summary>
public class BadInputTests
{
    [Fact]
    public void UnknownModelTypeNamesTheConfigAndTheSupportedTypes()
    {
        var dir = TestModels.Copy("gpt2", c => c.Replace("\"model_type\": \"gpt2\"", "\"model_type\": \"mamba\""));
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir));
        Assert.Contains("mamba", e.Message);
        Assert.Contains("config.json", e.Message);
        Assert.Contains("gpt_neox", e.Message);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        var dir = TestModels.Copy("llama", editTensor: (name, shape, data) => name == "model.layers.1.mlp.up_proj.weight" ? null : (shape, data));
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir));
        Assert.Contains("model.layers.1.mlp.up_proj.weight", e.Message);
        Assert.Contains("missing", e.Message);
        Assert.Contains(dir, e.Message);
    }

    [Fact]
    public void WrongShapeNamesTensorAndBothShapes()
    {
        var dir = TestModels.Copy("gpt2", editTensor: (name, shape, data) =>
            name == "transformer.h.0.mlp.c_fc.weight" ? ([shape[0], shape[1] - 1], data[..(shape[0] * (shape[1] - 1))]) : (shape, data));
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir));
        Assert.Contains("transformer.h.0.mlp.c_fc.weight", e.Message);
        Assert.Contains("[64, 255]", e.Message);
        Assert.Contains("[64, 256]", e.Message);
    }

    [Fact]
    public void TruncatedWeightsFileIsNamed()
    {
        var dir = TestModels.Copy("qwen2");
        string path = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 1000)]);
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir));
        Assert.Contains("model.safetensors", e.Message);
    }

    [Fact]
    public void MissingConfigFieldIsNamed()
    {
        var dir = TestModels.Copy("llama", c => c.Replace("\"hidden_size\"", "\"hidden_sz\""));
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir));
        Assert.Contains("hidden_size", e.Message);
        Assert.Contains("config.json", e.Message);
    }

    [Fact]
    public void MissingFolderAndConfigAreReported()
    {
        Assert.Throws<DirectoryNotFoundException>(() => ModelLoader.LoadFolder("/nonexistent/model/folder"));
        var empty = Directory.CreateTempSubdirectory("loupe-empty").FullName;
        var e = Assert.Throws<FileNotFoundException>(() => ModelLoader.LoadFolder(empty));
        Assert.Contains("config.json", e.Message);
    }

    [Fact]
    public void TokenIdOutsideVocabularyIsRejectedWithPositionAndVocabSize()
    {
        using var model = TestModels.Load("gpt2");
        var e = Assert.Throws<InputError>(() => model.Run([1, 2, 512, 3]));
        Assert.Contains("512", e.Message);
        Assert.Contains("position 2", e.Message);
        Assert.Contains("d_vocab = 512", e.Message);
        Assert.Throws<InputError>(() => model.Run([-1]));
    }

    [Fact]
    public void PromptLongerThanContextIsRejected()
    {
        using var model = TestModels.Load("gpt2");
        var tokens = new int[model.Config.NCtx + 1];
        var e = Assert.Throws<InputError>(() => model.Run(tokens));
        Assert.Contains($"n_ctx = {model.Config.NCtx}", e.Message);
    }

    [Fact]
    public void HookReturningWrongShapeIsReported()
    {
        using var model = TestModels.Load("gpt2");
        var options = new Hooks.RunOptions().AddHook("blocks.0.hook_resid_pre", (_, _) => Tensors.Tensor.Zeros(1, 2, 3));
        var e = Assert.Throws<InvalidOperationException>(() => model.Run([1, 2, 3], options));
        Assert.Contains("blocks.0.hook_resid_pre", e.Message);
        Assert.Contains("[1, 3, 64]", e.Message);
    }

    [Fact]
    public void UnknownHookPatternListsRealHookNames()
    {
        using var model = TestModels.Load("gpt2");
        var e = Assert.Throws<InputError>(() => model.RunWithCache(TokenBatch.Single(1, 2), "blocks.*.hook_resid_middle"));
        Assert.Contains("blocks.*.hook_resid_middle", e.Message);
        Assert.Contains("blocks.0.hook_resid_pre", e.Message);
    }
}
