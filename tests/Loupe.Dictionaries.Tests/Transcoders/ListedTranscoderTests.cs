using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// circuit-tracer's <c>config.yaml</c> with a <c>transcoders:</c> list (its presets: Gemma Scope files per layer), Gemma Scope 2
/// files, and TransformerLens's pre-weight <c>ln2.hook_normalized</c> on RMSNorm models. Files are written from plain arrays by
/// <see cref="PublishedDictionaryFiles"/>, and what the loaded transcoders compute is checked against the formula on those arrays.
/// </summary>
public sealed class ListedTranscoderTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-listed-tc-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    sealed record Arrays(int DIn, int DSae, int DOut, float[] WEnc, float[] BEnc, float[] WDec, float[] BDec, float[] Theta, float[] Skip);

    static Arrays Random(int dIn, int dSae, int dOut, int seed)
    {
        var rng = new Random(seed);
        float[] R(int n, double scale, double shift = 0) => Enumerable.Range(0, n).Select(_ => (float)(shift + scale * (rng.NextDouble() * 2 - 1))).ToArray();
        return new(dIn, dSae, dOut, R(dIn * dSae, 0.5), R(dSae, 0.2, -0.05), R(dSae * dOut, 0.3), R(dOut, 0.1),
            R(dSae, 0.05, 0.05), R(dIn * dOut, 0.2));
    }

    // pre = x·W_enc + b_enc (W_enc [d_in, d_sae]); acts = pre·1[pre > θ]; out = acts·W_dec + b_dec (+ x·S)
    static (double[] Pre, double[] Out) Reference(Arrays a, float[] x, bool skip)
    {
        var pre = new double[a.DSae];
        for (int f = 0; f < a.DSae; f++)
        {
            double s = a.BEnc[f];
            for (int i = 0; i < a.DIn; i++) s += (double)x[i] * a.WEnc[i * a.DSae + f];
            pre[f] = s;
        }
        var output = new double[a.DOut];
        for (int o = 0; o < a.DOut; o++)
        {
            double s = a.BDec[o];
            for (int f = 0; f < a.DSae; f++) if (pre[f] > a.Theta[f] && pre[f] > 0) s += pre[f] * a.WDec[f * a.DOut + o];
            if (skip) for (int i = 0; i < a.DIn; i++) s += (double)x[i] * a.Skip[i * a.DOut + o];
            output[o] = s;
        }
        return (pre, output);
    }

    static void AssertClose(double[] expected, ReadOnlySpan<float> actual, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = Math.Max(1, expected.Max(Math.Abs));
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tol * scale, $"{what}[{i}]: expected {expected[i]}, got {actual[i]}");
    }

    static float[] Input(int d, int seed) => Random(d, 1, 1, seed).WEnc;

    [Fact]
    public void Gemma_scope_2_sae_and_affine_transcoder_compute_the_release_formula_and_name_their_hooks()
    {
        var sae = Random(16, 24, 16, seed: 1);
        string saeDir = Path.Combine(_dir, "resid_post", "layer_3_width_16k_l0_small");
        PublishedDictionaryFiles.WriteGemmaScope2(saeDir, 16, 24, 16, sae.WEnc, sae.BEnc, sae.WDec, sae.BDec, sae.Theta, hookIn: "model.layers.3.output");
        var (dict, cfg) = DictionaryFile.Load(saeDir);
        Assert.Equal("blocks.3.hook_resid_post", cfg.HookName);
        Assert.Equal(3, cfg.HookLayer);
        Assert.False(dict.Shape.ApplyBDecToInput);
        var x = Input(16, 7);
        var (pre, output) = Reference(sae, x, skip: false);
        AssertClose(output, dict.Forward(x, 1), 1e-5, "SAE output");

        var tc = Random(16, 20, 16, seed: 2);
        string tcDir = Path.Combine(_dir, "transcoder_all", "layer_5_width_16k_l0_big_affine");
        PublishedDictionaryFiles.WriteGemmaScope2(tcDir, 16, 20, 16, tc.WEnc, tc.BEnc, tc.WDec, tc.BDec, tc.Theta, tc.Skip,
            hookIn: "model.layers.5.pre_feedforward_layernorm.output", hookOut: "model.layers.5.post_feedforward_layernorm.output");
        (dict, cfg) = DictionaryFile.Load(Path.Combine(tcDir, GemmaScope2Format.ParamsFile));
        Assert.Equal("blocks.5.mlp.hook_in", cfg.HookName);
        Assert.Equal("blocks.5.hook_mlp_out", cfg.HookNameOut);
        Assert.Equal("jumprelu_skip_transcoder", cfg.Architecture);
        (_, output) = Reference(tc, x, skip: true);
        AssertClose(output, dict.Forward(x, 1), 1e-5, "affine transcoder output"); // the skip is x·A, not x·Aᵀ

        // A module without a TransformerLens name leaves the hook to the caller, who can give it.
        string odd = Path.Combine(_dir, "odd");
        PublishedDictionaryFiles.WriteGemmaScope2(odd, 16, 24, 16, sae.WEnc, sae.BEnc, sae.WDec, sae.BDec, sae.Theta, hookIn: "model.layers.3.mlp.down_proj.input");
        Assert.Equal("", DictionaryFile.Load(odd).Config.HookName);
        Assert.Equal("blocks.3.hook_resid_mid", DictionaryFile.Load(odd, "blocks.3.hook_resid_mid").Config.HookName);
    }

    [Theory]
    [InlineData("model.layers.7.output", "blocks.7.hook_resid_post")]
    [InlineData("model.language_model.layers.7.output", "blocks.7.hook_resid_post")]
    [InlineData("model.layers.7.input", "blocks.7.hook_resid_pre")]
    [InlineData("model.layers.7.pre_feedforward_layernorm.input", "blocks.7.hook_resid_mid")]
    [InlineData("model.layers.7.post_attention_layernorm.output", "blocks.7.hook_attn_out")]
    [InlineData("model.layers.7.self_attn.o_proj.input", "blocks.7.attn.hook_z")]
    [InlineData("model.layers.7.mlp.output", null)]
    [InlineData("model.layers.x.output", null)]
    public void Gemma_scope_2_module_names_map_to_transformer_lens_hooks(string module, string? hook) =>
        Assert.Equal(hook, GemmaScope2Format.HookFromModule(module));

    [Fact]
    public void A_gemma_scope_2_file_that_is_bad_is_refused_naming_the_tensor()
    {
        var a = Random(8, 12, 8, seed: 3);
        string dir = Path.Combine(_dir, "bad");
        PublishedDictionaryFiles.WriteSafetensors(Path.Combine(dir, "params.safetensors"),
            [("w_enc", [8, 12], a.WEnc), ("w_dec", [12, 8], a.WDec), ("b_enc", [12], a.BEnc), ("b_dec", [8], a.BDec), ("threshold", [12], a.Theta.Select(t => -t - 1).ToArray())]);
        var e = Assert.Throws<InputError>(() => DictionaryFile.Load(dir));
        Assert.Contains("'threshold' element 0", e.Message);
        PublishedDictionaryFiles.WriteSafetensors(Path.Combine(dir, "params.safetensors"),
            [("w_enc", [8, 12], a.WEnc), ("w_dec", [12, 2, 8], [.. a.WDec, .. a.WDec]), ("b_enc", [12], a.BEnc), ("b_dec", [8], a.BDec), ("threshold", [12], a.Theta)]);
        Assert.Contains("cross-layer transcoder", Assert.Throws<InputError>(() => DictionaryFile.Load(dir)).Message);
        PublishedDictionaryFiles.WriteSafetensors(Path.Combine(dir, "params.safetensors"),
            [("w_enc", [8, 12], a.WEnc), ("w_dec", [12, 8], a.WDec), ("b_dec", [8], a.BDec), ("threshold", [12], a.Theta)]);
        Assert.Contains("'b_enc' is missing", Assert.Throws<InputError>(() => DictionaryFile.Load(dir)).Message);
    }

    [Fact]
    public void Yaml_lists_scalars_comments_and_hub_uris_are_read_as_circuit_tracer_writes_them()
    {
        string path = Path.Combine(_dir, "config.yaml");
        File.WriteAllText(path, """
            # circuit-tracer preset
            model_name: "google/gemma-2-2b"
            model_kind: transcoder_set   # per layer
            feature_input_hook: 'ln2.hook_normalized'
            transcoders:
              - "hf://google/gemma-scope-2b-pt-transcoders/layer_0/width_16k/average_l0_76/params.npz"
              - hf://org/repo/dir/layer_1.safetensors?revision=v1.0
            - 'local/layer_2.npz'
            nested:
              inner: ignored
            other: [a, "b c"]
            k:
            """);
        var yaml = CircuitTracerYaml.Read(path);
        Assert.Equal("google/gemma-2-2b", yaml["model_name"]);
        Assert.Equal("transcoder_set", yaml["model_kind"]);
        Assert.Equal("ln2.hook_normalized", yaml["feature_input_hook"]);
        Assert.Null(yaml["k"]);
        Assert.Null(yaml["inner"]);
        Assert.Equal(["a", "b c"], yaml.Lists["other"]);
        Assert.Equal(3, yaml.Transcoders!.Count);
        Assert.Equal(("google/gemma-scope-2b-pt-transcoders", "layer_0/width_16k/average_l0_76/params.npz", "main"), CircuitTracerYaml.ParseHfUri(yaml.Transcoders[0], "t"));
        Assert.Equal(("org/repo", "dir/layer_1.safetensors", "v1.0"), CircuitTracerYaml.ParseHfUri(yaml.Transcoders[1], "t"));
        Assert.Null(CircuitTracerYaml.ParseHfUri(yaml.Transcoders[2], "t"));
        Assert.Throws<InputError>(() => CircuitTracerYaml.ParseHfUri("hf://org/repo", "t"));
        Assert.Null(CircuitTracerYaml.Read(Path.Combine(_dir, "absent.yaml")).Transcoders);
    }

    // Three layers of transcoders for a d_model-wide model in each published layout, listed in one config.yaml.
    (string Config, Arrays[] Layers) MixedSet(int dModel, string inputHook, bool loupeWritten = false)
    {
        var layers = Enumerable.Range(0, 3).Select(l => Random(dModel, 10 + l, dModel, seed: 20 + l)).ToArray();
        string set = Path.Combine(_dir, "set");
        Directory.CreateDirectory(set);
        var a = layers[0];
        PublishedDictionaryFiles.WriteGemmaScopeNpz(Path.Combine(_dir, "gemma-scope", "layer_0", "params.npz"), a.DIn, a.DSae, a.DOut, a.WEnc, a.BEnc, a.WDec, a.BDec, a.Theta);
        a = layers[1];
        PublishedDictionaryFiles.WriteGemmaScope2(Path.Combine(set, "layer_1_width_16k"), a.DIn, a.DSae, a.DOut, a.WEnc, a.BEnc, a.WDec, a.BDec, a.Theta);
        a = layers[2];
        // circuit-tracer's own layer file: W_enc [d_sae, d_in], W_dec [d_sae, d_out], JumpReLU threshold
        var wEncT = new float[a.DSae * a.DIn];
        for (int i = 0; i < a.DIn; i++) for (int f = 0; f < a.DSae; f++) wEncT[f * a.DIn + i] = a.WEnc[i * a.DSae + f];
        PublishedDictionaryFiles.WriteSafetensors(Path.Combine(set, "ct", "layer_2.safetensors"),
            [("W_enc", [a.DSae, a.DIn], wEncT), ("W_dec", [a.DSae, a.DOut], a.WDec), ("b_enc", [a.DSae], a.BEnc), ("b_dec", [a.DOut], a.BDec), ("activation_function.threshold", [a.DSae], a.Theta)]);
        string config = Path.Combine(set, "config.yaml");
        File.WriteAllText(config, $"""
            model_kind: transcoder_set
            feature_input_hook: "{inputHook}"
            feature_output_hook: "hook_mlp_out"
            transcoders:
              - "../gemma-scope/layer_0/params.npz"
              - "layer_1_width_16k"
              - "ct/layer_2.safetensors"
            {(loupeWritten ? "loupe_version: \"test\"" : "")}
            """);
        return (config, layers);
    }

    [Fact]
    public void A_config_listing_files_of_every_layout_loads_them_in_layer_order()
    {
        var (config, layers) = MixedSet(16, "mlp.hook_in");
        // Mapped decoders are circuit-tracer's layer files only: the Gemma Scope entry is named.
        var refused = Assert.Throws<InputError>(() => MlpReplacements.Load(Path.GetDirectoryName(config)!, 3, decoders: DecoderStorage.Mapped));
        Assert.Contains("transcoders[0] (layer 0)", refused.Message);
        Assert.Contains("Gemma Scope", refused.Message);
        var tc = Assert.IsType<CircuitTracerTranscoders>(MlpReplacements.Load(Path.GetDirectoryName(config)!, 3));
        Assert.Equal(3, tc.Layers);
        Assert.Equal("blocks.1.mlp.hook_in", tc.InputHook(1));
        Assert.Equal("blocks.2.hook_mlp_out", tc.OutputHook(2));
        var x = Input(16, 9);
        for (int l = 0; l < 3; l++)
        {
            var a = layers[l];
            var pre = new float[a.DSae];
            tc.Encode(l, x, 1, pre, new float[a.DSae]);
            AssertClose(Reference(a, x, skip: false).Pre, pre, 1e-5, $"layer {l} pre-activations");
            AssertClose(Reference(a, x, skip: false).Out, tc.Dictionaries[l].Forward(x, 1), 1e-5, $"layer {l} output");
        }
        // the config file itself is accepted too, and "mlp.hook_out" is the MLP output
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"hook_mlp_out\"", "\"mlp.hook_out\"", StringComparison.Ordinal));
        Assert.Equal("blocks.0.hook_mlp_out", MlpReplacements.Load(config, 3).OutputHook(0));
    }

    [Fact]
    public void Ln2_hook_normalized_on_an_rmsnorm_model_is_transformer_lens_input_before_the_norm_weight()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "llama")));
        Assert.Equal(NormKind.RmsNorm, model.Config.Normalization);
        int d = model.Config.DModel;
        var (config, layers) = MixedSet(d, "ln2.hook_normalized");
        var tc = Assert.IsType<CircuitTracerTranscoders>(MlpReplacements.Load(config, model));
        Assert.Equal("blocks.0.ln2.hook_normalized", tc.InputHook(0));
        Assert.Equal(layers[0].WEnc, tc.Dictionaries[0].P.WEnc); // nothing folded: the hook is TransformerLens's
        var tokens = TokenBatch.FromRows([[1, 5, 9, 2, 7]]);
        string hooks = string.Join(',', Enumerable.Range(0, 3).SelectMany(l => new[] { HookNames.ResidMid(l), HookNames.NormScale(l, "ln2"), HookNames.NormNormalized(l, "ln2") }));
        var cache = model.RunWithCache(tokens, hooks).Cache;
        for (int l = 0; l < 3; l++)
        {
            // TransformerLens's RMSNorm: hook_normalized = x / hook_scale, the weight applied after it.
            var resid = cache[HookNames.ResidMid(l)].Span;
            var scale = cache[HookNames.NormScale(l, "ln2")].Span;
            var loupeInput = cache[HookNames.NormNormalized(l, "ln2")].Span;
            for (int p = 0; p < 5; p++)
            {
                var tl = new float[d];
                for (int i = 0; i < d; i++) tl[i] = resid[p * d + i] / scale[p];
                var pre = new float[layers[l].DSae];
                tc.Encode(l, loupeInput.Slice(p * d, d), 1, pre, new float[pre.Length]);
                AssertClose(Reference(layers[l], tl, skip: false).Pre, pre, 2e-5, $"layer {l} position {p}");
            }
        }
        // Configs Loupe wrote before its RMSNorm hooks followed TransformerLens (loupe_version, no loupe_hooks) meant the
        // MLP input by "ln2.hook_normalized": that is mlp.hook_in now.
        var legacy = (CircuitTracerTranscoders)MlpReplacements.Load(MixedSet(d, "ln2.hook_normalized", loupeWritten: true).Config, model);
        Assert.Equal("blocks.2.mlp.hook_in", legacy.InputHook(2));
        Assert.Equal(layers[0].WEnc, legacy.Dictionaries[0].P.WEnc);
        var plain = (CircuitTracerTranscoders)MlpReplacements.Load(MixedSet(d, "mlp.hook_in").Config, model);
        Assert.Equal("blocks.0.mlp.hook_in", plain.InputHook(0));
    }

    [Fact]
    public void The_memory_a_listed_set_takes_is_known_from_the_headers_before_loading()
    {
        var (config, layers) = MixedSet(16, "mlp.hook_in");
        var files = CircuitTracerTranscoders.ListedFiles(config);
        Assert.Equal(3, files.Length);
        Assert.EndsWith(Path.Combine("layer_1_width_16k", "params.safetensors"), files[1]);
        // float32: W_enc + W_dec + b_enc + b_dec + θ per layer, whatever the layout
        long expected = layers.Sum(a => 4L * (a.DIn * a.DSae + a.DSae * a.DOut + a.DSae + a.DOut + a.DSae));
        Assert.Equal(expected, MlpReplacements.EstimateBytes(files));
    }

    [Fact]
    public void Loupe_writes_its_mlp_input_as_circuit_tracers_mlp_hook_in_and_reads_it_back()
    {
        // Loupe's hooks mean TransformerLens's; the default transcoder input is the MLP's input, circuit-tracer's mlp.hook_in.
        var tc = new CircuitTracerTranscoders([.. Enumerable.Range(0, 2).Select(l =>
        {
            var d = new SparseDictionary(SaeShape.Transcoder(8, 12, 8), new ReluActivation());
            d.Initialize(l + 1, decoderNorm: 0.5f);
            return d;
        })]);
        string folder = Path.Combine(_dir, "saved");
        tc.Save(folder, "test");
        var yaml = CircuitTracerYaml.Read(Path.Combine(folder, "config.yaml"));
        Assert.Equal("mlp.hook_in", yaml["feature_input_hook"]);
        Assert.Equal("hook_mlp_out", yaml["feature_output_hook"]);
        Assert.Equal("transformer_lens", yaml["loupe_hooks"]);
        var back = CircuitTracerTranscoders.Load(folder);
        Assert.Equal("blocks.1.mlp.hook_in", back.InputHook(1));
        string clt = Path.Combine(_dir, "clt");
        var c = new CrossLayerTranscoder(new CltShape(2, 8, 12, 8), new ReluActivation());
        c.Initialize(3, decoderNorm: 0.5f);
        CltFiles.SaveCircuitTracer(clt, c, "test");
        Assert.Equal("mlp.hook_in", CircuitTracerYaml.Read(Path.Combine(clt, "config.yaml"))["feature_input_hook"]);
        Assert.Equal("blocks.0.mlp.hook_in", CltFiles.LoadCircuitTracer(clt).InputHook(0));
        // a CLT on ln2.hook_normalized written now keeps that hook (loupe_hooks says it is TransformerLens's)
        string onNormalized = Path.Combine(_dir, "clt-normalized");
        var n = new CrossLayerTranscoder(new CltShape(2, 8, 12, 8), new ReluActivation(), "blocks.{layer}.ln2.hook_normalized");
        n.Initialize(4, decoderNorm: 0.5f);
        CltFiles.SaveCircuitTracer(onNormalized, n, "test");
        Assert.Equal("blocks.1.ln2.hook_normalized", CltFiles.LoadCircuitTracer(onNormalized).InputHook(1));
        // the files each layout is read from, and what they take as float32 (checked against the memory before loading)
        Assert.Equal(2, MlpReplacements.WeightFiles(folder).Length);
        Assert.Equal(2 * 4L * (8 * 12 + 12 * 8 + 12 + 8), MlpReplacements.EstimateBytes(MlpReplacements.WeightFiles(folder)));
        Assert.Equal(["W_dec_0.safetensors", "W_dec_1.safetensors", "W_enc_0.safetensors", "W_enc_1.safetensors"],
            MlpReplacements.WeightFiles(clt).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Bad_lists_are_refused_naming_the_config_and_the_layer()
    {
        var (config, _) = MixedSet(16, "mlp.hook_in");
        string text = File.ReadAllText(config);
        void Expect(string yaml, string message, bool fromHub = false)
        {
            File.WriteAllText(config, yaml);
            var e = Assert.Throws<InputError>(() => CircuitTracerTranscoders.LoadListed(config, entriesMayLeaveFolder: !fromHub));
            Assert.Contains(message, e.Message);
        }
        Expect(text.Replace("ct/layer_2.safetensors", "ct/missing.safetensors", StringComparison.Ordinal), "transcoders[2] (layer 2): file not found");
        Expect(text, "points outside the config's folder", fromHub: true);
        Expect(text.Replace("transcoder_set", "cross_layer_transcoder", StringComparison.Ordinal), "model_kind is 'cross_layer_transcoder'");
        Expect(text.Replace("\"layer_1_width_16k\"", "\"hf://org/not-cached/layer_1/params.npz\"", StringComparison.Ordinal), "is not in the Hugging Face cache");
        Expect(text.Replace("\"layer_1_width_16k\"", "\"hf://org\"", StringComparison.Ordinal), "hf://ORG/NAME/PATH");
        Expect(text.Replace("\"layer_1_width_16k\"", "\"config.yaml\"", StringComparison.Ordinal), "neither a .safetensors nor a .npz");
        File.WriteAllText(config, text);
        Assert.Contains("holds transcoders for 3 layers; the model has 4", Assert.Throws<InputError>(() => MlpReplacements.Load(config, 4)).Message);
        Expect(text.Replace("\"layer_1_width_16k\"", "\"layer_1\u0000x\"", StringComparison.Ordinal), "no control characters");
        var other = Random(8, 10, 8, seed: 5);
        PublishedDictionaryFiles.WriteGemmaScope2(Path.Combine(_dir, "set", "narrow"), 8, 10, 8, other.WEnc, other.BEnc, other.WDec, other.BDec, other.Theta);
        Expect(text.Replace("\"layer_1_width_16k\"", "\"narrow\"", StringComparison.Ordinal), "transcoders[1] (layer 1)");
    }
}
