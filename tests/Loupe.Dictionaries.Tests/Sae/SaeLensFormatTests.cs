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
    public void SingleHeadDictionariesAreRefusedNotSplicedOverEveryHead()
    {
        WriteJumpReluFixture("""
            {
              "architecture": "jumprelu", "d_in": 3, "d_sae": 2, "dtype": "float32",
              "metadata": { "hook_name": "blocks.1.attn.hook_z", "hook_head_index": 3 }
            }
            """);
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("hook_head_index", e.Message);
        Assert.Contains("cfg.json", e.Message);
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
        Assert.Equal(0.25f, MathF.Exp(d.P.LogThreshold[1]), 1e-6);
        // x = [0.4, 0.2, 9]: pre = [0.4 + 0.5, 0.2] = [0.9, 0.2]; θ = [1, 0.25] ⇒ both below ⇒ acts 0
        // x = [0.6, 0.3, 9]: pre = [1.1, 0.3] ⇒ acts [1.1, 0.3]; recon = 1.1·[1,2,3] + 0.3·[4,5,6] + [0,0,1]
        var acts = d.Encode(new float[] { 0.4f, 0.2f, 9, 0.6f, 0.3f, 9 }, 2);
        Assert.Equal(new float[] { 0, 0, 1.1f, 0.3f }, acts);
        var recon = d.Forward(new float[] { 0.6f, 0.3f, 9 }, 1);
        Assert.Equal(1.1 + 1.2, recon[0], 1e-5);
        Assert.Equal(3.3 + 1.8 + 1, recon[2], 1e-5);
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

        // SAELens saves a finished BatchTopK SAE as JumpReLU with θ = the learned threshold (batchtopk_sae.py);
        // see BatchTopKTrainingCheckpointKeepsBatchTopK for the resumable form.
        Assert.Equal(arch == "batchtopk" ? "jumprelu" : d.Architecture, back.Architecture);
        Assert.Equal(d.Shape, back.Shape);
        Assert.Equal("blocks.1.hook_resid_post", cfg.HookName);
        Assert.Equal(d.P.WEnc, back.P.WEnc);
        Assert.Equal(d.P.BEnc, back.P.BEnc);
        Assert.Equal(d.P.WDec, back.P.WDec);
        Assert.Equal(d.P.BDec, back.P.BDec);
        Assert.Equal(d.P.WSkip, back.P.WSkip);
        if (arch == "batchtopk") Assert.All(back.P.LogThreshold, l => Assert.Equal(0.2f, MathF.Exp(l), 1e-7f));
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
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("cfg.json", e.Message);
        Assert.Contains("'d_sae'", e.Message);
    }

    [Fact]
    public void ShapeMismatchNamesTensor()
    {
        WriteJumpReluFixture(wDecShape: [3, 2]);
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'W_dec'", e.Message);
        Assert.Contains("[3, 2]", e.Message);
        Assert.Contains("[2, 3]", e.Message);
    }

    [Fact]
    public void UnknownArchitectureIsRejected()
    {
        WriteJumpReluFixture("""{"architecture": "gated_v9", "d_in": 3, "d_sae": 2}""");
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'gated_v9'", e.Message);
    }

    [Fact]
    public void TopKWithoutKIsRejected()
    {
        WriteJumpReluFixture("""{"architecture": "topk", "d_in": 3, "d_sae": 2}""");
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
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
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 2, "dtype": "int8"}""", "'dtype'")]
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 2, "normalize_activations": "layer_norm"}""", "'normalize_activations'")]
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 2, "normalize_activations": "constant_norm_rescale"}""", "'normalize_activations'")]
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 2, "normalize_activations": "expected_average_only_in"}""", "activation_scaler.json")]
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 2, "reshape_activations": "hook_q"}""", "'reshape_activations'")]
    [InlineData("""{"architecture": "topk", "d_in": 3, "d_sae": 2, "k": 2.5}""", "'k'")]
    [InlineData("""{"architecture": "transcoder", "d_in": 3, "d_sae": 2, "d_out": 4, "apply_b_dec_to_input": true}""", "apply_b_dec_to_input")]
    public void BadFieldValuesNameTheField(string cfg, string expected)
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "cfg.json"), cfg);
        Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"), [("b_enc", [2], new float[2])]);
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains(expected, e.Message);
        Assert.Contains("cfg.json", e.Message);
    }
}

/// <summary>
/// Fixtures in the layouts SAELens itself writes (sae_lens/saes/*.py, 6.x): metadata nesting, transcoder
/// architectures, BatchTopK, TopK's rescale_acts_by_decoder_norm, expected_average_only_in with activation_scaler.json.
/// </summary>
public sealed class SaeLensLayoutTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-saelens-" + Guid.NewGuid().ToString("N"));

    public SaeLensLayoutTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    void Write(string cfg, params (string Name, int[] Shape, float[] Data)[] tensors)
    {
        File.WriteAllText(Path.Combine(_dir, "cfg.json"), cfg);
        SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"), tensors.Select(t => (t.Name, t.Shape, (ReadOnlyMemory<float>)t.Data)));
    }

    static float[] Seq(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(-16, 17) / 8f).ToArray();
    }

    [Fact]
    public void Reads6xMetadataNesting()
    {
        // SAELens 6 SAEConfig.to_dict(): model/hook fields only under "metadata", no hook_layer.
        Write("""
            {"d_in": 2, "d_sae": 3, "dtype": "float32", "device": "cuda", "apply_b_dec_to_input": true,
             "normalize_activations": "none", "reshape_activations": "none", "architecture": "standard",
             "metadata": {"model_name": "gpt2", "hook_name": "blocks.7.hook_resid_pre", "context_size": 256,
                          "prepend_bos": false, "sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0"}}
            """,
            ("W_enc", [2, 3], Seq(6, 1)), ("b_enc", [3], Seq(3, 2)), ("W_dec", [3, 2], Seq(6, 3)), ("b_dec", [2], Seq(2, 4)));
        var (d, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal(("blocks.7.hook_resid_pre", 7, "gpt2", 256, false, "standard"),
            (cfg.HookName, cfg.HookLayer, cfg.ModelName, cfg.ContextSize, cfg.PrependBos, cfg.Architecture));
        Assert.True(d.Shape.ApplyBDecToInput);
    }

    [Fact]
    public void ReadsPre6TopKAndHookPointNames()
    {
        // SAELens < 6: TopK was architecture "standard" + activation_fn "topk"; hook_point / hook_point_layer.
        Write("""
            {"architecture": "standard", "activation_fn": "topk", "activation_fn_kwargs": {"k": 1}, "d_in": 2, "d_sae": 3,
             "hook_point": "blocks.4.hook_resid_post", "hook_point_layer": 4, "normalize_activations": false}
            """,
            ("W_enc", [2, 3], Seq(6, 1)), ("b_enc", [3], Seq(3, 2)), ("W_dec", [3, 2], Seq(6, 3)), ("b_dec", [2], Seq(2, 4)));
        var (d, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal(1, Assert.IsType<TopKActivation>(d.Activation).K);
        Assert.Equal(("blocks.4.hook_resid_post", 4), (cfg.HookName, cfg.HookLayer));

        File.WriteAllText(Path.Combine(_dir, "cfg.json"), """{"architecture": "standard", "activation_fn": "tanh-relu", "d_in": 2, "d_sae": 3}""");
        Assert.Contains("'activation_fn'", Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir)).Message);
    }

    [Fact]
    public void ReadsSkipTranscoderWithSaeLensWSkipOrientation()
    {
        // SkipTranscoder: W_skip is [d_out, d_in] and the output adds x·W_skipᵀ; hook_name_out in metadata.
        const int dIn = 3, dSae = 4, dOut = 2;
        float[] wEnc = Seq(dIn * dSae, 1), bEnc = Seq(dSae, 2), wDec = Seq(dSae * dOut, 3), bDec = Seq(dOut, 4), wSkip = Seq(dOut * dIn, 5);
        Write("""
            {"architecture": "skip_transcoder", "d_in": 3, "d_sae": 4, "d_out": 2, "dtype": "float32", "apply_b_dec_to_input": false,
             "metadata": {"hook_name": "blocks.1.ln2.hook_normalized", "hook_name_out": "blocks.1.hook_mlp_out"}}
            """,
            ("W_enc", [dIn, dSae], wEnc), ("b_enc", [dSae], bEnc), ("W_dec", [dSae, dOut], wDec), ("b_dec", [dOut], bDec), ("W_skip", [dOut, dIn], wSkip));
        var (d, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal(("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", 1), (cfg.HookName, cfg.HookNameOut, cfg.HookLayer));
        Assert.Equal(new SaeShape(dIn, dSae, dOut, false, true), d.Shape);

        var x = Seq(5 * dIn, 6);
        var recon = d.Forward(x, 5);
        for (int b = 0; b < 5; b++)
        {
            var acts = new float[dSae];
            for (int i = 0; i < dSae; i++)
            {
                float pre = bEnc[i];
                for (int j = 0; j < dIn; j++) pre += x[b * dIn + j] * wEnc[j * dSae + i];
                acts[i] = MathF.Max(pre, 0);
            }
            for (int o = 0; o < dOut; o++)
            {
                float r = bDec[o];
                for (int i = 0; i < dSae; i++) r += acts[i] * wDec[i * dOut + o];
                for (int j = 0; j < dIn; j++) r += x[b * dIn + j] * wSkip[o * dIn + j];   // x·W_skipᵀ
                Assert.Equal(r, recon[b * dOut + o], 1e-5);
            }
        }

        // Saved back in the same layout: architecture name and W_skip orientation.
        string saved = Path.Combine(_dir, "saved");
        SaeLensFormat.Save(saved, d, cfg);
        using (var f = SafeTensorsFile.Open(Path.Combine(saved, "sae_weights.safetensors")))
        {
            Assert.Equal([2L, 3L], f.GetInfo("W_skip").Shape);
            Assert.Equal(wSkip, f.GetFloat32("W_skip").ToArray());
        }
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(saved, "cfg.json")))!;
        Assert.Equal("skip_transcoder", (string)json["architecture"]!);
        Assert.Equal(2, (int)json["d_out"]!);
        Assert.Equal("blocks.1.hook_mlp_out", (string)json["metadata"]!["hook_name_out"]!);
        Assert.Equal(d.Forward(x, 5), SaeLensFormat.Load(saved).Dictionary.Forward(x, 5));
    }

    [Theory]
    [InlineData(false, false, "jumprelu_transcoder")]
    [InlineData(true, false, "jumprelu_skip_transcoder")]
    [InlineData(false, true, "transcoder")]
    public void TranscoderArchitectureNames(bool skip, bool relu, string expected)
    {
        var d = new SparseDictionary(SaeShape.Transcoder(4, 6, 3, skip), relu ? new ReluActivation() : new JumpReluActivation());
        d.Initialize(seed: 1, initThreshold: 0.05f);
        SaeLensFormat.Save(_dir, d);
        var (back, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal(expected, cfg.Architecture);
        Assert.Equal(d.Shape, back.Shape);
        var x = Seq(12, 2);
        Assert.Equal(d.Forward(x, 3), back.Forward(x, 3));
    }

    [Fact]
    public void BatchTopKIsSavedAsSaeLensJumpReluAndTrainingCheckpointKeepsBatchTopK()
    {
        var d = new SparseDictionary(SaeShape.Sae(4, 6), new BatchTopKActivation(2));
        d.Initialize(seed: 5, decoderNorm: 1);
        d.P.Threshold[0] = 0.375f;
        var x = Seq(40, 7);

        SaeLensFormat.Save(_dir, d);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "cfg.json")))!;
        Assert.Equal("jumprelu", (string)json["architecture"]!);
        Assert.Null(json["k"]);
        using (var f = SafeTensorsFile.Open(Path.Combine(_dir, "sae_weights.safetensors")))
            Assert.Equal(Enumerable.Repeat(0.375f, 6), f.GetFloat32("threshold").ToArray());
        var (asJump, _) = SaeLensFormat.Load(_dir);
        Assert.IsType<JumpReluActivation>(asJump.Activation);
        Assert.Equal(d.Encode(x, 10), asJump.Encode(x, 10));

        SaeLensFormat.Save(_dir, d, trainingCheckpoint: true);
        json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "cfg.json")))!;
        Assert.Equal(("batchtopk", 2), ((string)json["architecture"]!, (int)json["k"]!));
        var (asBatch, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal(2, Assert.IsType<BatchTopKActivation>(asBatch.Activation).K);
        Assert.Equal(0.375f, asBatch.P.Threshold[0]);
        Assert.Equal(2, cfg.K);
        Assert.Equal(d.Encode(x, 10), asBatch.Encode(x, 10));
    }

    [Fact]
    public void ReadsSaeLensBatchTopKTrainingCheckpointWithScalarThresholdAndFloatK()
    {
        // BatchTopKTrainingSAE.save_model: architecture "batchtopk", k a float, topk_threshold a 0-d float64 buffer.
        File.WriteAllText(Path.Combine(_dir, "cfg.json"),
            """{"architecture": "batchtopk", "d_in": 2, "d_sae": 3, "k": 2.0, "apply_b_dec_to_input": true, "rescale_acts_by_decoder_norm": false}""");
        SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"),
        [
            SafeTensorEntry.F32("W_enc", [2, 3], Seq(6, 1)), SafeTensorEntry.F32("b_enc", [3], Seq(3, 2)),
            SafeTensorEntry.F32("W_dec", [3, 2], Seq(6, 3)), SafeTensorEntry.F32("b_dec", [2], Seq(2, 4)),
            SafeTensorEntry.Raw("topk_threshold", DType.F64, [], BitConverter.GetBytes(0.625)),
        ]);
        var (d, _) = SaeLensFormat.Load(_dir);
        Assert.Equal(2, Assert.IsType<BatchTopKActivation>(d.Activation).K);
        Assert.Equal(0.625f, d.P.Threshold[0]);
    }

    [Fact]
    public void TopKRescaleActsByDecoderNormIsFoldedIntoTheWeights()
    {
        // SAELens TopKSAE with rescale_acts_by_decoder_norm: pre' = pre·‖W_dec[i]‖, acts = topk(pre'),
        // out = (acts / ‖W_dec[i]‖)·W_dec + b_dec.
        const int dIn = 3, dSae = 5, k = 2;
        float[] wEnc = Seq(dIn * dSae, 1), bEnc = Seq(dSae, 2), wDec = Seq(dSae * dIn, 3), bDec = Seq(dIn, 4);
        for (int j = 0; j < dIn; j++) wDec[j] = 3 * (j + 1);   // make row 0's norm far from 1
        Write("""{"architecture": "topk", "d_in": 3, "d_sae": 5, "k": 2, "apply_b_dec_to_input": false, "rescale_acts_by_decoder_norm": true}""",
            ("W_enc", [dIn, dSae], wEnc), ("b_enc", [dSae], bEnc), ("W_dec", [dSae, dIn], wDec), ("b_dec", [dIn], bDec));
        var (d, _) = SaeLensFormat.Load(_dir);

        var x = Seq(8 * dIn, 5);
        var acts = d.Encode(x, 8);
        var recon = d.Forward(x, 8);
        for (int b = 0; b < 8; b++)
        {
            var norm = new float[dSae];
            var pre = new float[dSae];
            for (int i = 0; i < dSae; i++)
            {
                norm[i] = MathF.Sqrt(Enumerable.Range(0, dIn).Sum(j => wDec[i * dIn + j] * wDec[i * dIn + j]));
                pre[i] = bEnc[i];
                for (int j = 0; j < dIn; j++) pre[i] += x[b * dIn + j] * wEnc[j * dSae + i];
                pre[i] *= norm[i];
            }
            var kept = Enumerable.Range(0, dSae).OrderByDescending(i => pre[i]).Take(k).ToHashSet();
            for (int i = 0; i < dSae; i++)
                Assert.Equal(kept.Contains(i) ? MathF.Max(pre[i], 0) : 0, acts[b * dSae + i], 1e-4);
            for (int o = 0; o < dIn; o++)
            {
                float r = bDec[o];
                foreach (int i in kept) r += MathF.Max(pre[i], 0) / norm[i] * wDec[i * dIn + o];
                Assert.Equal(r, recon[b * dIn + o], 1e-4);
            }
        }
    }

    [Fact]
    public void ExpectedAverageOnlyInFoldsTheScalingFactor()
    {
        // Unfolded weights expect c·x; after loading, the dictionary takes raw x.
        const float c = 2.5f;
        float[] wEnc = Seq(6, 1), bEnc = Seq(3, 2), wDec = Seq(6, 3), bDec = Seq(2, 4);
        Write("""{"architecture": "standard", "d_in": 2, "d_sae": 3, "apply_b_dec_to_input": true, "normalize_activations": "expected_average_only_in"}""",
            ("W_enc", [2, 3], wEnc), ("b_enc", [3], bEnc), ("W_dec", [3, 2], wDec), ("b_dec", [2], bDec));
        var unfolded = new SparseDictionary(SaeShape.Sae(2, 3), new ReluActivation());
        wEnc.CopyTo(unfolded.P.WEnc, 0); bEnc.CopyTo(unfolded.P.BEnc, 0); wDec.CopyTo(unfolded.P.WDec, 0); bDec.CopyTo(unfolded.P.BDec, 0);
        var x = Seq(10, 9);
        var scaled = x.Select(v => v * c).ToArray();

        File.WriteAllText(Path.Combine(_dir, "activation_scaler.json"), """{"scaling_factor": 2.5, "has_whitening": false}""");
        var (fromScaler, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal("none", cfg.NormalizeActivations);
        var (fromArgument, _) = SaeLensFormat.Load(_dir, normScalingFactor: c);
        foreach (var d in new[] { fromScaler, fromArgument })
        {
            var acts = d.Encode(x, 5);
            var expected = unfolded.Encode(scaled, 5);
            for (int i = 0; i < acts.Length; i++) Assert.Equal(expected[i], acts[i], 1e-5);
            var recon = d.Forward(x, 5);
            var expectedRecon = unfolded.Forward(scaled, 5).Select(v => v / c).ToArray();
            for (int i = 0; i < recon.Length; i++) Assert.Equal(expectedRecon[i], recon[i], 1e-5);
        }

        File.WriteAllText(Path.Combine(_dir, "activation_scaler.json"), """{"scaling_factor": null}""");
        Assert.Contains("scaling_factor", Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir)).Message);
        File.WriteAllText(Path.Combine(_dir, "activation_scaler.json"), """{"scaling_factor": 2.0, "has_whitening": true}""");
        Assert.Contains("whitening", Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir)).Message);
    }

    [Fact]
    public void NegativeThresholdFiresLikeZeroAndLogThresholdCheckpointsLoad()
    {
        // JumpReLUSAE.encode masks with pre > threshold.relu(): a negative θ acts as 0.
        Write("""{"architecture": "jumprelu", "d_in": 2, "d_sae": 2, "apply_b_dec_to_input": false}""",
            ("W_enc", [2, 2], [1, 0, 0, 1]), ("b_enc", [2], [0, 0]), ("W_dec", [2, 2], [1, 0, 0, 1]), ("b_dec", [2], [0, 0]),
            ("threshold", [2], [-0.5f, 0.5f]));
        var (d, _) = SaeLensFormat.Load(_dir);
        Assert.Equal(new float[] { 0.25f, 0, 0, 0.75f, 0, 0 }, d.Encode(new float[] { 0.25f, 0.25f, -0.25f, 0.75f, 0, 0 }, 3));

        // Older JumpReLU training checkpoints store log_threshold instead.
        Write("""{"architecture": "jumprelu", "d_in": 2, "d_sae": 2, "apply_b_dec_to_input": false}""",
            ("W_enc", [2, 2], [1, 0, 0, 1]), ("b_enc", [2], [0, 0]), ("W_dec", [2, 2], [1, 0, 0, 1]), ("b_dec", [2], [0, 0]),
            ("log_threshold", [2], [MathF.Log(0.5f), 0]));
        (d, _) = SaeLensFormat.Load(_dir);
        Assert.Equal([MathF.Log(0.5f), 0f], d.P.LogThreshold);

        // A log threshold whose θ overflows (found by the resume fuzzer: e^(1e20) = ∞, then NaN in training; e^50 is beyond any weight) is refused by name.
        Write("""{"architecture": "jumprelu", "d_in": 2, "d_sae": 2, "apply_b_dec_to_input": false}""",
            ("W_enc", [2, 2], [1, 0, 0, 1]), ("b_enc", [2], [0, 0]), ("W_dec", [2, 2], [1, 0, 0, 1]), ("b_dec", [2], [0, 0]),
            ("log_threshold", [2], [0, 50f]));
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("tensor 'log_threshold': element 1", e.Message);
        Assert.Contains("log threshold of at most 23.03", e.Message);
    }

    [Fact]
    public void LogThresholdReproducesThetaThroughExp()
    {
        // log θ cannot always be chosen so exp(log θ) == θ: where |log θ| > 1 consecutive floats of log θ land more
        // than one ulp of θ apart. LogThreshold picks an exact pre-image when there is one, else the nearest.
        var rng = new Random(11);
        int exact = 0, n = 4000, worst = 0;
        for (int t = 0; t < n; t++)
        {
            float theta = (float)Math.Exp(rng.NextDouble() * 8 - 5);   // e^−5 … e^3, Gemma Scope's range
            float back = MathF.Exp(SaeLensFormat.LogThreshold(theta));
            int ulps = Math.Abs(BitConverter.SingleToInt32Bits(back) - BitConverter.SingleToInt32Bits(theta));
            if (ulps == 0) exact++;
            worst = Math.Max(worst, ulps);
        }
        // Measured: 2340 of 4000 exact, worst 4 ulps (exp's own error included); bounds leave room for other libms.
        Assert.True(worst <= 6, $"exp(log θ) is {worst} ulps from θ");
        Assert.True(exact > n * 0.4, $"only {exact} of {n} thresholds round-trip exactly");
        Assert.Equal(float.NegativeInfinity, SaeLensFormat.LogThreshold(0));
        Assert.Equal(float.NegativeInfinity, SaeLensFormat.LogThreshold(-1));
        foreach (float theta in new[] { 1f, 0.5f, 0.25f }) Assert.Equal(theta, MathF.Exp(SaeLensFormat.LogThreshold(theta)));
    }

    [Fact]
    public void BadTensorsAreRefusedNamingTheTensor()
    {
        const string cfg = """{"architecture": "standard", "d_in": 2, "d_sae": 2}""";
        Write(cfg, ("W_enc", [2, 2], [1, float.NaN, 0, 1]), ("b_enc", [2], [0, 0]), ("W_dec", [2, 2], [1, 0, 0, 1]), ("b_dec", [2], [0, 0]));
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'W_enc'", e.Message);
        Assert.Contains("element 1", e.Message);

        Write(cfg, ("W_enc", [2, 2], [1, 0, 0, 1]), ("b_enc", [2], [0, 0]), ("W_dec", [2, 2], [1, 0, 0, 1]), ("b_dec", [2], [0, 0]), ("b_mag", [2], [0, 0]));
        e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'b_mag'", e.Message);

        Write("""{"architecture": "jumprelu", "d_in": 2, "d_sae": 2}""",
            ("W_enc", [2, 2], [1, 0, 0, 1]), ("b_enc", [2], [0, 0]), ("W_dec", [2, 2], [1, 0, 0, 1]), ("b_dec", [2], [0, 0]));
        e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'threshold'", e.Message);
    }

    [Fact]
    public void SavingNonFiniteWeightsWritesNothing()
    {
        var d = new SparseDictionary(SaeShape.Sae(2, 3), new ReluActivation());
        d.P.WDec[4] = float.PositiveInfinity;
        string folder = Path.Combine(_dir, "out");
        var e = Assert.Throws<ArgumentException>(() => SaeLensFormat.Save(folder, d));
        Assert.Contains("'W_dec'[4]", e.Message);
        Assert.False(Directory.Exists(folder));
    }

    [Fact]
    public void LoadsBfloat16Weights()
    {
        // dtype names SAELens's compute dtype; the stored BF16 values widen to float32 exactly.
        File.WriteAllText(Path.Combine(_dir, "cfg.json"), """{"architecture": "standard", "d_in": 2, "d_sae": 1, "dtype": "torch.bfloat16"}""");
        static byte[] Bf16(params float[] v) => v.SelectMany(f => BitConverter.GetBytes((ushort)(BitConverter.SingleToUInt32Bits(f) >> 16))).ToArray();
        SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"),
        [
            SafeTensorEntry.Raw("W_enc", DType.BF16, [2, 1], Bf16(1.5f, -2)), SafeTensorEntry.Raw("b_enc", DType.BF16, [1], Bf16(0.25f)),
            SafeTensorEntry.Raw("W_dec", DType.BF16, [1, 2], Bf16(3, 0.5f)), SafeTensorEntry.Raw("b_dec", DType.BF16, [2], Bf16(0, 1)),
        ]);
        var (d, cfg) = SaeLensFormat.Load(_dir);
        Assert.Equal("bfloat16", cfg.Dtype);
        Assert.Equal([1.5f, -2f], d.P.WEnc);
        Assert.Equal([3f, 0.5f], d.P.WDec);
    }
}
