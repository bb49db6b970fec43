using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// Gemma Scope 2 cross-layer transcoders (<c>params_layer_ℓ.safetensors</c>, w_dec <c>[d_sae, L, d_out]</c> per layer), written
/// with the framework alone from a Loupe CLT's weights: the same function, decoder rows and fingerprint as that CLT; the
/// unused decoder slots of earlier layers are never read (NaN there changes nothing); the affine skip path adds x·A;
/// a circuit-tracer config.yaml listing the files loads them; bad sets are refused by name.
/// </summary>
public sealed class GemmaScope2CltTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-gs2-clt").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);
    string Sub(string name) => Path.Combine(_dir, name);

    static readonly CltShape Shape = new(3, 6, 10, 6);

    /// <summary>A JumpReLU CLT whose thresholds survive θ → log θ → θ exactly (as the loader computes them).</summary>
    internal static CrossLayerTranscoder Clt(CltShape shape, int seed = 5)
    {
        var clt = new CrossLayerTranscoder(shape, new JumpReluActivation(), GemmaScope2Clt.DefaultInputHook, GemmaScope2Clt.DefaultOutputHook);
        clt.Initialize(seed, decoderNorm: 0.5f);
        var rng = new Random(seed);
        for (int l = 0; l < shape.Layers; l++)
        {
            for (int i = 0; i < clt.P.WEnc[l].Length; i++) clt.P.WEnc[l][i] = (float)(rng.NextDouble() * 2 - 1);
            for (int f = 0; f < shape.DSae; f++) clt.P.BEnc[l][f] = (float)(rng.NextDouble() * 0.4 - 0.2);
            for (int j = 0; j < shape.DOut; j++) clt.P.BDec[l][j] = (float)(rng.NextDouble() - 0.5);
            for (int f = 0; f < shape.DSae; f++) clt.P.Act[l].LogThreshold[f] = SaeLensFormat.LogThreshold(Theta(l, f));
        }
        return clt;
    }

    static float Theta(int layer, int feature) => feature == 0 ? 0f : 0.05f * (1 + (feature + layer) % 4);

    /// <summary>Writes <paramref name="clt"/> as Gemma Scope 2 layer files; the slots of targets before ℓ hold <paramref name="unused"/>.</summary>
    internal static void Write(string folder, CrossLayerTranscoder clt, float[][]? skip = null, float unused = float.NaN)
    {
        var s = clt.Shape;
        for (int l = 0; l < s.Layers; l++)
        {
            var wDec = PublishedDictionaryFiles.GemmaScope2CltDecoder(clt.P.WDec[l], l, s.Layers, s.DSae, s.DOut, unused);
            PublishedDictionaryFiles.WriteGemmaScope2CltLayer(folder, l, s.Layers, s.DIn, s.DSae, s.DOut, clt.P.WEnc[l], clt.P.BEnc[l], wDec, clt.P.BDec[l],
                [.. Enumerable.Range(0, s.DSae).Select(f => Theta(l, f))], skip?[l]);
        }
    }

    [Fact]
    public void TheFilesComputeWhatTheSameWeightsDoAsALoupeClt()
    {
        var clt = Clt(Shape);
        Write(Sub("clt"), clt);
        using var gs2 = Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(Sub("clt"), 3));
        Assert.Equal(Shape, gs2.Shape);
        Assert.Equal("jumprelu", gs2.Architecture);
        Assert.Equal("blocks.1.hook_resid_mid", gs2.InputHook(1));
        Assert.Equal("blocks.2.hook_mlp_out", gs2.OutputHook(2));
        Assert.False(gs2.HasSkip);
        CltFilesTests.AssertSameFunction(clt, gs2, tolerance: 1e-5f);
        var (a, b) = (new float[Shape.DOut], new float[Shape.DOut]);
        for (int l = 0; l < 3; l++)
            for (int f = 0; f < Shape.DSae; f++)
                for (int t = l; t < 3; t++)
                {
                    clt.DecoderDirection(l, f, t, a);
                    gs2.DecoderDirection(l, f, t, b);
                    Assert.Equal(a, b);
                }
        Assert.Equal(clt.Fingerprint, gs2.Fingerprint);     // NaN in the unused slots: never read, not in the digest
    }

    [Fact]
    public void TheAffineSkipPathAddsXTimesAToEachLayersOutput()
    {
        var clt = Clt(Shape, seed: 8);
        var rng = new Random(3);
        var skip = Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, Shape.DIn * Shape.DOut).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray()).ToArray();
        Write(Sub("affine"), clt, skip);
        using var gs2 = Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(Sub("affine"), 3));
        Assert.True(gs2.HasSkip);
        Assert.Equal(skip[1], gs2.SkipWeights(1));
        const int rows = 4;
        var inputs = Enumerable.Range(0, 3).Select(l => CrossLayerTranscoderTests.Gaussian(rows * Shape.DIn, 40 + l, 1.5f)).ToArray();
        var acts = new float[3][];
        for (int l = 0; l < 3; l++) { acts[l] = new float[rows * Shape.DSae]; gs2.Encode(l, inputs[l], rows, new float[acts[l].Length], acts[l]); }
        for (int t = 0; t < 3; t++)
        {
            var expected = new float[rows * Shape.DOut];
            clt.Reconstruct(t, acts, inputs, rows, expected);
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < Shape.DOut; j++)
                    for (int i = 0; i < Shape.DIn; i++) expected[r * Shape.DOut + j] += inputs[t][r * Shape.DIn + i] * skip[t][i * Shape.DOut + j];
            var actual = new float[rows * Shape.DOut];
            gs2.Reconstruct(t, acts, inputs, rows, actual);
            for (int i = 0; i < actual.Length; i++) Assert.Equal(expected[i], actual[i], 1e-4f);
        }
        Assert.Throws<ArgumentException>(() => gs2.Reconstruct(2, acts, [], rows, new float[rows * Shape.DOut]));   // the skip needs the input
        Assert.NotEqual(clt.Fingerprint, gs2.Fingerprint);
    }

    [Fact]
    public void ACircuitTracerConfigListingTheLayerFilesLoadsThemWithItsHooks()
    {
        var clt = Clt(Shape);
        Write(Path.Combine(Sub("listed"), "clt"), clt);
        File.WriteAllText(Path.Combine(Sub("listed"), "config.yaml"),
            "model_kind: cross_layer_transcoder\nfeature_input_hook: \"mlp.hook_in\"\nfeature_output_hook: \"hook_mlp_out\"\ntranscoders:\n" +
            string.Concat(Enumerable.Range(0, 3).Select(l => $"  - clt/params_layer_{l}.safetensors\n")));
        var lines = new List<string>();
        using var gs2 = Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(Sub("listed"), 3, log: lines.Add));
        Assert.Equal("blocks.0.mlp.hook_in", gs2.InputHook(0));
        Assert.Contains("left mapped", lines.Single());
        CltFilesTests.AssertSameFunction(clt, gs2, tolerance: 1e-5f);
        using var viaFile = Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(Path.Combine(Sub("listed"), "config.yaml"), 3, decoders: DecoderStorage.Mapped));
        Assert.Equal(gs2.Fingerprint, viaFile.Fingerprint);
        var e = Assert.Throws<InputError>(() => CircuitTracerTranscoders.LoadListed(Path.Combine(Sub("listed"), "config.yaml")));
        Assert.Contains("cross_layer_transcoder", e.Message);
    }

    [Fact]
    public void BadSetsAreRefusedNamingTheFileAndWhatDisagrees()
    {
        var clt = Clt(Shape);
        Write(Sub("ok"), clt);
        Assert.Contains("loads with its decoders mapped", Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("ok"), 3, decoders: DecoderStorage.Memory)).Message);
        Assert.Contains("the model has 4", Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("ok"), 4)).Message);
        // One layer file read on its own is refused as a CLT's layer, not misread as a per-layer transcoder.
        var e = Assert.Throws<InputError>(() => GemmaScope2Format.LoadWeights(Path.Combine(Sub("ok"), "params_layer_1.safetensors")));
        Assert.Contains("one layer of a Gemma Scope 2 cross-layer transcoder", e.Message);

        Write(Sub("gap"), clt);
        File.Delete(Path.Combine(Sub("gap"), "params_layer_1.safetensors"));
        Assert.Contains("consecutive", Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("gap"), 3)).Message);

        var skip = Enumerable.Range(0, 3).Select(_ => new float[Shape.DIn * Shape.DOut]).ToArray();
        Write(Sub("mixed"), clt, skip);
        var s = Shape;
        PublishedDictionaryFiles.WriteGemmaScope2CltLayer(Sub("mixed"), 2, 3, s.DIn, s.DSae, s.DOut, clt.P.WEnc[2], clt.P.BEnc[2], new float[s.DSae * 3 * s.DOut], clt.P.BDec[2], new float[s.DSae]);
        e = Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("mixed"), 3));
        Assert.Contains("params_layer_2.safetensors", e.Message);
        Assert.Contains("affine_skip_connection", e.Message);

        Directory.CreateDirectory(Sub("slots"));
        for (int l = 0; l < 3; l++)
            PublishedDictionaryFiles.WriteGemmaScope2CltLayer(Sub("slots"), l, 2, s.DIn, s.DSae, s.DOut, clt.P.WEnc[l], clt.P.BEnc[l], new float[s.DSae * 2 * s.DOut], clt.P.BDec[l], new float[s.DSae]);
        e = Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("slots"), 3));
        Assert.Contains("one decoder slot per layer", e.Message);

        string crosscoder = Path.Combine(Sub("crosscoder"), "layer_3_7_width_16k_l0_small");
        Write(crosscoder, clt);
        Assert.Contains("crosscoder", Assert.Throws<InputError>(() => MlpReplacements.Load(crosscoder, 3)).Message);

        // A used slot with ∞: refused when that feature is decoded, naming file, tensor and element.
        Write(Sub("inf"), clt);
        var wDec = PublishedDictionaryFiles.GemmaScope2CltDecoder(clt.P.WDec[1], 1, 3, s.DSae, s.DOut);
        wDec[(4 * 3 + 2) * s.DOut + 1] = float.PositiveInfinity;
        PublishedDictionaryFiles.WriteGemmaScope2CltLayer(Sub("inf"), 1, 3, s.DIn, s.DSae, s.DOut, clt.P.WEnc[1], clt.P.BEnc[1], wDec, clt.P.BDec[1],
            [.. Enumerable.Range(0, s.DSae).Select(f => Theta(1, f))]);
        using var inf = (MappedCrossLayerTranscoder)MlpReplacements.Load(Sub("inf"), 3);
        var row = new float[s.DOut];
        inf.DecoderDirection(1, 3, 2, row);
        e = Assert.Throws<InputError>(() => inf.DecoderDirection(1, 4, 1, row));
        Assert.Contains("params_layer_1.safetensors", e.Message);
        Assert.Contains($"tensor 'w_dec' element {(4 * 3 + 2) * s.DOut + 1}", e.Message);
    }
}
