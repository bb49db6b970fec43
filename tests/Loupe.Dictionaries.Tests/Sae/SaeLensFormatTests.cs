using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Tests.Sae;

public sealed class SaeLensFormatTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-sae-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    static float[] Seq(int n, float scale) => Enumerable.Range(0, n).Select(i => scale * (i % 7 - 3)).ToArray();

    // A fixture written by hand from SAELens's published field names: d_in 3, d_sae 2, JumpReLU.
    void WriteJumpReluFixture(string? cfgOverride = null, int[]? wDecShape = null)
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "cfg.json"), cfgOverride ?? """
            {
              "architecture": "jumprelu", "d_in": 3, "d_sae": 2, "dtype": "float32", "device": "cpu",
              "model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post", "hook_layer": 12,
              "apply_b_dec_to_input": false, "normalize_activations": "none",
              "context_size": 1024, "prepend_bos": true
            }
            """);
        float[] wEnc = [1, 0, 0, 1, 0, 0];     // [3, 2]: feature 0 reads x0, feature 1 reads x1
        float[] wDec = [1, 2, 3, 4, 5, 6];     // [2, 3]
        SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"),
        [
            ("W_enc", [3, 2], wEnc), ("b_enc", [2], new float[] { 0.5f, 0 }),
            ("W_dec", wDecShape ?? [2, 3], wDec), ("b_dec", [3], new float[] { 0, 0, 1 }),
            ("threshold", [2], new float[] { 1f, 0.25f }),
        ]);
    }

    [Fact]
    public void LoadsHandWrittenJumpReluFixture()
    {
        WriteJumpReluFixture();
        var (d, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal(("jumprelu", 3, 2, 3, "blocks.12.hook_resid_post", 12, "gemma-2-2b", 1024, false),
            (cfg.Architecture, cfg.DIn, cfg.DSae, cfg.DOut, cfg.HookName, cfg.HookLayer, cfg.ModelName, cfg.ContextSize, cfg.ApplyBDecToInput));
        Assert.IsType<JumpReluActivation>(d.Activation);
        Assert.Equal([1, 2, 3, 4, 5, 6], d.P.WDec);
        Assert.Equal(0.25f, MathF.Exp(d.P.LogThreshold[1]), 6);
        // x = [0.4, 0.2, 9]: pre = [0.4 + 0.5, 0.2] = [0.9, 0.2]; θ = [1, 0.25] ⇒ both below ⇒ acts 0
        // x = [0.6, 0.3, 9]: pre = [1.1, 0.3] ⇒ acts [1.1, 0.3]; recon = 1.1·[1,2,3] + 0.3·[4,5,6] + [0,0,1]
        var acts = d.Encode(new float[] { 0.4f, 0.2f, 9, 0.6f, 0.3f, 9 }, 2);
        Assert.Equal(new float[] { 0, 0, 1.1f, 0.3f }, acts);
        var recon = d.Forward(new float[] { 0.6f, 0.3f, 9 }, 1);
        Assert.Equal(1.1 + 1.2, recon[0], 5);
        Assert.Equal(3.3 + 1.8 + 1, recon[2], 5);
    }

    [Fact]
    public void LoadsTopKWithActivationFnKwargs()
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "cfg.json"), """
            {"architecture": "topk", "d_in": 3, "d_sae": 2, "dtype": "float32", "activation_fn_kwargs": {"k": 1},
             "metadata": {"hook_name": "blocks.0.hook_resid_pre", "model_name": "gpt2"}}
            """);
        SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"),
        [("W_enc", [3, 2], new float[6]), ("b_enc", [2], new float[2]), ("W_dec", [2, 3], new float[6]), ("b_dec", [3], new float[3])]);
        var (d, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal(1, Assert.IsType<TopKActivation>(d.Activation).K);
        Assert.Equal("blocks.0.hook_resid_pre", cfg.HookName);
        Assert.True(cfg.ApplyBDecToInput); // SAELens default
    }

    [Theory]
    [InlineData("standard")]
    [InlineData("topk")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    [InlineData("skip_transcoder")]
    public void RoundTripKeepsTensorsAndActivations(string arch)
    {
        var d = arch switch
        {
            "standard" => new SparseDictionary(SaeShape.Sae(5, 8), new ReluActivation()),
            "topk" => new SparseDictionary(SaeShape.Sae(5, 8), new TopKActivation(2)),
            "batchtopk" => new SparseDictionary(SaeShape.Sae(5, 8), new BatchTopKActivation(2)),
            "jumprelu" => new SparseDictionary(SaeShape.Sae(5, 8), new JumpReluActivation()),
            _ => new SparseDictionary(SaeShape.Transcoder(5, 8, 4, skip: true), new ReluActivation()),
        };
        d.Initialize(seed: 3, decoderNorm: 1, initThreshold: 0.05f);
        var rng = new Random(4);
        foreach (var (_, data) in d.P.Trainable(d.Activation)) for (int i = 0; i < data.Length; i++) data[i] += 0.1f * SparseDictionary.Gaussian(rng);
        d.P.Threshold[0] = 0.2f;
        SaeLensFormat.Save(_dir, d, new SaeLensConfig { HookName = "blocks.1.hook_resid_post", HookLayer = 1, ModelName = "gpt2" });
        var (back, cfg) = SaeLensFormat.Load(_dir);

        Assert.Equal(d.Architecture, back.Architecture);
        Assert.Equal(d.Shape, back.Shape);
        Assert.Equal("blocks.1.hook_resid_post", cfg.HookName);
        Assert.Equal(d.P.WEnc, back.P.WEnc);
        Assert.Equal(d.P.BEnc, back.P.BEnc);
        Assert.Equal(d.P.WDec, back.P.WDec);
        Assert.Equal(d.P.BDec, back.P.BDec);
        Assert.Equal(d.P.WSkip, back.P.WSkip);
        if (arch == "batchtopk") Assert.Equal(d.P.Threshold, back.P.Threshold);
        if (arch == "jumprelu")
            for (int i = 0; i < 8; i++) Assert.Equal(d.P.LogThreshold[i], back.P.LogThreshold[i], 1e-6f); // θ = exp(log θ) round-trip
        var x = Enumerable.Range(0, 30).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
        Assert.Equal(d.Encode(x, 6), back.Encode(x, 6));
        Assert.Equal(d.Forward(x, 6), back.Forward(x, 6));
    }

    [Fact]
    public void MissingFieldNamesFileAndField()
    {
        WriteJumpReluFixture("""{"architecture": "jumprelu", "d_in": 3}""");
        var e = Assert.Throws<InvalidDataException>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("cfg.json", e.Message);
        Assert.Contains("'d_sae'", e.Message);
    }

    [Fact]
    public void ShapeMismatchNamesTensor()
    {
        WriteJumpReluFixture(wDecShape: [3, 2]);
        var e = Assert.Throws<InvalidDataException>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'W_dec'", e.Message);
        Assert.Contains("[3, 2]", e.Message);
        Assert.Contains("[2, 3]", e.Message);
    }

    [Fact]
    public void UnknownArchitectureIsRejected()
    {
        WriteJumpReluFixture("""{"architecture": "gated_v9", "d_in": 3, "d_sae": 2}""");
        var e = Assert.Throws<InvalidDataException>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'gated_v9'", e.Message);
    }

    [Fact]
    public void TopKWithoutKIsRejected()
    {
        WriteJumpReluFixture("""{"architecture": "topk", "d_in": 3, "d_sae": 2}""");
        var e = Assert.Throws<InvalidDataException>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'k'", e.Message);
    }

    [Fact]
    public void MissingFolderFilesAreReported() =>
        Assert.Throws<FileNotFoundException>(() => SaeLensFormat.Load(_dir));
}

public sealed class SaeLensFormatFieldTypeTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-sae-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    [Theory]
    [InlineData("""{"architecture": "standard", "d_in": "three", "d_sae": 2}""", "'d_in'")]
    [InlineData("""{"architecture": "topk", "d_in": 3, "d_sae": 2, "activation_fn_kwargs": {"k": "x"}}""", "activation_fn_kwargs.k")]
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 2, "dtype": "bfloat16"}""", "'dtype'")]
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 2, "normalize_activations": "layer_norm"}""", "'normalize_activations'")]
    public void BadFieldValuesNameTheField(string cfg, string expected)
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "cfg.json"), cfg);
        Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"), [("b_enc", [2], new float[2])]);
        var e = Assert.Throws<InvalidDataException>(() => SaeLensFormat.Load(_dir));
        Assert.Contains(expected, e.Message);
        Assert.Contains("cfg.json", e.Message);
    }
}
