using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// CLT and per-layer transcoder files: round trips through Loupe's and circuit-tracer's layouts, files written by hand
/// in circuit-tracer's orientation (so a transposition bug symmetric in save and load still shows), and bad files.
/// </summary>
public sealed class CltFilesTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-clt-files").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);
    string Sub(string name) => Path.Combine(_dir, name);

    internal static readonly CltShape Shape = new(3, 4, 5, 4);

    internal static CrossLayerTranscoder Trained(SaeActivation act, int seed = 3)
    {
        var clt = CrossLayerTranscoderTests.Random(Shape, act, seed);
        for (int l = 0; l < Shape.Layers; l++)
        {
            for (int i = 0; i < Shape.DSae; i++) clt.P.Act[l].LogThreshold[i] = MathF.Log(0.05f + 0.01f * i);
            clt.P.Act[l].Threshold[0] = 0.2f + l;
        }
        return clt;
    }

    /// <summary>Encode and reconstruct every layer of both on the same rows: the outputs must agree.</summary>
    internal static void AssertSameFunction(IMlpReplacement a, IMlpReplacement b, float tolerance = 0)
    {
        const int rows = 7;
        var x = CrossLayerTranscoderTests.Gaussian(rows * a.DIn, 17, 2f);
        var actsA = new float[a.Layers][];
        var actsB = new float[a.Layers][];
        var inputs = Enumerable.Repeat(x, a.Layers).ToArray();
        for (int l = 0; l < a.Layers; l++)
        {
            actsA[l] = new float[rows * a.Features(l)];
            actsB[l] = new float[rows * b.Features(l)];
            a.Encode(l, x, rows, new float[actsA[l].Length], actsA[l]);
            b.Encode(l, x, rows, new float[actsB[l].Length], actsB[l]);
            for (int i = 0; i < actsA[l].Length; i++) Assert.InRange(actsB[l][i], actsA[l][i] - tolerance, actsA[l][i] + tolerance);
        }
        for (int t = 0; t < a.Layers; t++)
        {
            var ra = new float[rows * a.DOut];
            var rb = new float[rows * b.DOut];
            a.Reconstruct(t, actsA, inputs, rows, ra);
            b.Reconstruct(t, actsB, inputs, rows, rb);
            for (int i = 0; i < ra.Length; i++) Assert.InRange(rb[i], ra[i] - tolerance - 1e-6f, ra[i] + tolerance + 1e-6f);
        }
    }

    public static TheoryData<string> Architectures => new() { "relu", "jumprelu", "topk", "batchtopk" };

    internal static SaeActivation Make(string arch) => arch switch
    {
        "relu" => new ReluActivation(),
        "jumprelu" => new JumpReluActivation(),
        "topk" => new TopKActivation(2),
        _ => new BatchTopKActivation(2),
    };

    [Theory]
    [MemberData(nameof(Architectures))]
    public void LoupeLayoutRoundTripsEveryBufferAndRecordsProvenance(string arch)
    {
        var clt = new CrossLayerTranscoder(Shape, Make(arch), "blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out");
        foreach (var ((_, from), (_, to)) in Trained(Make(arch)).P.All().Zip(clt.P.All())) from.CopyTo(to, 0);
        CltFiles.Save(Sub("loupe"), clt, new Dictionary<string, string> { ["model"] = "gpt2-fixture", ["model_fingerprint"] = "abc" });
        var back = CltFiles.Load(Sub("loupe"));
        Assert.Equal(clt.Architecture, back.Architecture);
        Assert.Equal(clt.Fingerprint, back.Fingerprint);
        Assert.Equal("blocks.2.hook_resid_mid", back.InputHook(2));
        AssertSameFunction(clt, back);
        string cfg = File.ReadAllText(Path.Combine(Sub("loupe"), CltFiles.ConfigFile));
        Assert.Contains("\"model_fingerprint\": \"abc\"", cfg);
        Assert.Contains("loupe_version", cfg);
        Assert.Contains(clt.Fingerprint, cfg);
    }

    [Theory]
    [InlineData("relu")]
    [InlineData("jumprelu")]
    [InlineData("batchtopk")]
    public void CircuitTracerLayoutRoundTripsTheFunction(string arch)
    {
        var clt = Trained(Make(arch));
        CltFiles.SaveCircuitTracer(Sub("ct"), clt, "gpt2");
        var back = CltFiles.Load(Sub("ct"));
        Assert.Equal(arch == "relu" ? "standard" : "jumprelu", back.Architecture);  // BatchTopK is written as its inference rule
        Assert.Equal("blocks.1.mlp.hook_in", back.InputHook(1));
        Assert.Equal("blocks.1.hook_mlp_out", back.OutputHook(1));
        AssertSameFunction(clt, back, tolerance: 1e-6f);
        Assert.Contains("model_kind: \"cross_layer_transcoder\"", File.ReadAllText(Path.Combine(Sub("ct"), "config.yaml")));
        using var enc = SafeTensorsFile.Open(Path.Combine(Sub("ct"), "W_enc_1.safetensors"));
        Assert.Equal([Shape.DSae, Shape.DIn], enc.GetInfo("W_enc_1").Shape);
        using var dec = SafeTensorsFile.Open(Path.Combine(Sub("ct"), "W_dec_1.safetensors"));
        Assert.Equal([Shape.DSae, 2, Shape.DOut], dec.GetInfo("W_dec_1").Shape);
    }

    [Fact]
    public void ATopKCltIsRefusedByCircuitTracersLayout()
    {
        var e = Assert.Throws<InputError>(() => CltFiles.SaveCircuitTracer(Sub("topk"), Trained(new TopKActivation(2))));
        Assert.Contains("TopK", e.Message);
    }

    /// <summary>A CLT written by hand in circuit-tracer's layout: W_enc_ℓ[f, j] = ℓ + f/10 + j/100, W_dec_ℓ[f, s, j] = ℓ·1000 + f·100 + s·10 + j.</summary>
    void WriteCircuitTracerByHand(string folder, bool withThreshold, Action<int, List<(string, int[], ReadOnlyMemory<float>)>>? edit = null)
    {
        Directory.CreateDirectory(folder);
        int L = 3, dSae = 5, d = 4;
        for (int l = 0; l < L; l++)
        {
            var wEnc = new float[dSae * d];
            for (int f = 0; f < dSae; f++) for (int j = 0; j < d; j++) wEnc[f * d + j] = l + f / 10f + j / 100f;
            var enc = new List<(string, int[], ReadOnlyMemory<float>)>
            {
                ($"W_enc_{l}", [dSae, d], wEnc),
                ($"b_enc_{l}", [dSae], Enumerable.Range(0, dSae).Select(f => -0.5f * f).ToArray()),
                ($"b_dec_{l}", [d], Enumerable.Range(0, d).Select(j => 0.25f * j + l).ToArray()),
            };
            if (withThreshold) enc.Add(($"threshold_{l}", [dSae], Enumerable.Range(0, dSae).Select(f => f == 0 ? 0f : 0.5f * f).ToArray()));
            edit?.Invoke(l, enc);
            SafeTensorsWriter.Write(Path.Combine(folder, $"W_enc_{l}.safetensors"), enc);
            int targets = L - l;
            var wDec = new float[dSae * targets * d];
            for (int f = 0; f < dSae; f++) for (int s = 0; s < targets; s++) for (int j = 0; j < d; j++) wDec[(f * targets + s) * d + j] = l * 1000 + f * 100 + s * 10 + j;
            SafeTensorsWriter.Write(Path.Combine(folder, $"W_dec_{l}.safetensors"), [($"W_dec_{l}", new[] { dSae, targets, d }, (ReadOnlyMemory<float>)wDec)]);
        }
        File.WriteAllText(Path.Combine(folder, "config.yaml"), "model_kind: cross_layer_transcoder\nfeature_input_hook: \"mlp.hook_in\"  \nfeature_output_hook: hook_mlp_out # comment\n");
    }

    [Fact]
    public void CircuitTracerFilesWrittenByHandLoadInTheirOrientation()
    {
        WriteCircuitTracerByHand(Sub("hand"), withThreshold: true);
        var clt = CltFiles.LoadCircuitTracer(Sub("hand"));
        Assert.Equal(new CltShape(3, 4, 5, 4), clt.Shape);
        Assert.Equal("jumprelu", clt.Architecture);
        Assert.Equal("blocks.0.mlp.hook_in", clt.InputHook(0));     // mlp.hook_in is the MLP input
        Assert.Equal("blocks.2.hook_mlp_out", clt.OutputHook(2));
        var v = new float[4];
        clt.EncoderDirection(2, 3, v);
        for (int j = 0; j < 4; j++) Assert.Equal(2 + 3 / 10f + j / 100f, v[j]);
        clt.DecoderDirection(1, 4, 2, v);
        for (int j = 0; j < 4; j++) Assert.Equal(1000 + 400 + 10 + j, v[j]);
        Assert.Equal(float.NegativeInfinity, clt.P.Act[0].LogThreshold[0]); // θ = 0
        // JumpReLU with θ_f = f/2 (θ_0 = 0): layer 0 has pre_f = x_0·f/10 − f/2
        var pre = new float[5];
        var acts = new float[5];
        clt.Encode(0, new float[] { 12, 0, 0, 0 }, 1, pre, acts);          // pre_f = 0.7 f > θ_f for f ≥ 1
        for (int f = 0; f < 5; f++) Assert.Equal(0.7f * f, pre[f], 1e-5f);
        for (int f = 0; f < 5; f++) Assert.Equal(0.7f * f, acts[f], 1e-5f);  // f = 0: pre 0 is not above θ = 0
        clt.Encode(0, new float[] { 8, 0, 0, 0 }, 1, pre, acts);           // pre_f = 0.3 f < θ_f
        Assert.All(acts, a => Assert.Equal(0f, a));
    }

    [Fact]
    public void BadCircuitTracerFilesNameTheFileTheTensorAndTheShapes()
    {
        WriteCircuitTracerByHand(Sub("missing"), withThreshold: false, (l, enc) => { if (l == 1) enc.RemoveAll(e => e.Item1 == "b_enc_1"); });
        var e = Assert.Throws<InputError>(() => CltFiles.LoadCircuitTracer(Sub("missing")));
        Assert.Contains("W_enc_1.safetensors", e.Message);
        Assert.Contains("'b_enc_1' is missing", e.Message);

        WriteCircuitTracerByHand(Sub("shape"), withThreshold: false, (l, enc) => { if (l == 2) enc[2] = ("b_dec_2", [3], new float[3]); });
        e = Assert.Throws<InputError>(() => CltFiles.LoadCircuitTracer(Sub("shape")));
        Assert.Contains("W_enc_2.safetensors", e.Message);
        Assert.Contains("[4]", e.Message);
        Assert.Contains("[3]", e.Message);

        WriteCircuitTracerByHand(Sub("nan"), withThreshold: false, (l, enc) => { if (l == 0) enc[1] = ("b_enc_0", [5], new[] { 0f, 0, float.NaN, 0, 0 }); });
        e = Assert.Throws<InputError>(() => CltFiles.LoadCircuitTracer(Sub("nan")));
        Assert.Contains("'b_enc_0' element 2", e.Message);
        Assert.Contains("NaN", e.Message);

        WriteCircuitTracerByHand(Sub("theta"), withThreshold: true, (l, enc) => { if (l == 0) enc[3] = ("threshold_0", [5], new[] { 0f, -1, 0, 0, 0 }); });
        e = Assert.Throws<InputError>(() => CltFiles.LoadCircuitTracer(Sub("theta")));
        Assert.Contains("threshold ≥ 0", e.Message);

        File.Delete(Path.Combine(Sub("shape"), "W_dec_0.safetensors"));
        e = Assert.Throws<InputError>(() => CltFiles.LoadCircuitTracer(Sub("shape")));
        Assert.Contains("W_dec_0.safetensors", e.Message);

        e = Assert.Throws<InputError>(() => CltFiles.Load(_dir));
        Assert.Contains("not a cross-layer transcoder folder", e.Message);
    }

    [Fact]
    public void LoupeLayoutWithAMisShapedDecoderIsRefused()
    {
        var clt = Trained(new ReluActivation());
        CltFiles.Save(Sub("bad"), clt);
        string weights = Path.Combine(Sub("bad"), CltFiles.WeightsFile);
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>();
        using (var f = SafeTensorsFile.Open(weights))
            foreach (var name in f.Names)
            {
                var info = f.GetInfo(name);
                var data = f.GetFloat32(name).ToArray();
                tensors.Add(name == "W_dec.1" ? (name, [5, 1, 4], data[..20]) : (name, info.Shape.Select(s => (int)s).ToArray(), data));
            }
        SafeTensorsWriter.Write(weights, tensors);
        var e = Assert.Throws<InputError>(() => CltFiles.Load(Sub("bad")));
        Assert.Contains("clt_weights.safetensors", e.Message);
        Assert.Contains("'W_dec.1'", e.Message);
        Assert.Contains("[5, 2, 4]", e.Message);
        Assert.Contains("[5, 1, 4]", e.Message);
    }

    [Fact]
    public void LoupeLayoutSizesAreCheckedAgainstTheWeightsBeforeAnythingIsAllocated()
    {
        CltFiles.Save(Sub("big"), Trained(new ReluActivation()));
        string cfg = Path.Combine(Sub("big"), CltFiles.ConfigFile);
        // 100,000 layers of the small shape pass every per-tensor bound, but their decoders would take 10^12 floats.
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"n_layers\": 3", "\"n_layers\": 100000"));
        var e = Assert.Throws<InputError>(() => CltFiles.Load(Sub("big")));
        Assert.Contains("'W_dec.0'", e.Message);
        Assert.Contains("[5, 100000, 4]", e.Message);
    }

    [Theory]
    [InlineData("\"format\": \"loupe-clt\"", "\"format\": \"\\ud800\"", "lone surrogate")]
    [InlineData("\"d_in\": 4", "\"d_in\": 4, \"d_in\": 4", "d_in")]
    public void LoupeLayoutConfigThatIsNotCleanJsonIsRefusedByName(string from, string to, string named)
    {
        CltFiles.Save(Sub("cfg"), Trained(new ReluActivation()));
        string cfg = Path.Combine(Sub("cfg"), CltFiles.ConfigFile);
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace(from, to));
        var e = Assert.Throws<InputError>(() => CltFiles.Load(Sub("cfg")));
        Assert.Contains(CltFiles.ConfigFile, e.Message);
        Assert.Contains(named, e.Message);
    }

    [Fact]
    public void AVersionOneFolderReadsItsLn2HookNormalizedAsTheMlpInputItMeant()
    {
        // Version 1 was written while Loupe's ln2.hook_normalized was the norm's output (after an RMSNorm's weight): the MLP
        // input, mlp.hook_in today. Version 2 keeps TransformerLens's meaning; a later version is refused.
        var clt = new CrossLayerTranscoder(new CltShape(3, 4, 5, 4), new ReluActivation(), "blocks.{layer}.ln2.hook_normalized");
        clt.Initialize(2, decoderNorm: 0.5f);
        CltFiles.Save(Sub("v"), clt);
        string cfg = Path.Combine(Sub("v"), CltFiles.ConfigFile);
        Assert.Contains("\"format_version\": 2", File.ReadAllText(cfg));
        Assert.Equal("blocks.1.ln2.hook_normalized", CltFiles.Load(Sub("v")).InputHook(1));
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"format_version\": 2", "\"format_version\": 1"));
        Assert.Equal("blocks.1.mlp.hook_in", CltFiles.Load(Sub("v")).InputHook(1));
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"format_version\": 1", "\"format_version\": 3"));
        Assert.Contains("format_version", Assert.Throws<InputError>(() => CltFiles.Load(Sub("v"))).Message);
    }

    [Fact]
    public void AWeightNearFloatsLimitIsRefusedBeforeItOverflowsAProduct()
    {
        var clt = Trained(new TopKActivation(2));
        clt.P.WDec[1][3] = 3e38f;
        CltFiles.Save(Sub("huge"), clt);
        var e = Assert.Throws<InputError>(() => CltFiles.Load(Sub("huge")));
        Assert.Contains("tensor 'W_dec.1' element 3", e.Message);
        Assert.Contains("magnitude at most 1e10", e.Message);
    }

    // ---- per-layer transcoders in circuit-tracer's layout ----

    internal static SparseDictionary Plt(SaeActivation act, bool skip, int seed)
    {
        var d = new SparseDictionary(SaeShape.Transcoder(4, 6, 4, skip), act);
        d.Initialize(seed, decoderNorm: 1f);
        var rng = new Random(seed);
        for (int i = 0; i < d.P.BEnc.Length; i++) d.P.BEnc[i] = 0.1f * (i - 3);
        for (int i = 0; i < d.P.BDec.Length; i++) d.P.BDec[i] = 0.2f * i;
        for (int i = 0; i < d.P.WSkip.Length; i++) d.P.WSkip[i] = (float)rng.NextDouble() - 0.5f;
        for (int i = 0; i < d.P.WEnc.Length; i++) d.P.WEnc[i] *= 4;
        Array.Fill(d.P.LogThreshold, MathF.Log(0.3f));
        d.P.Threshold[0] = 0.4f;
        return d;
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void PerLayerTranscodersRoundTripThroughCircuitTracersLayout(string arch)
    {
        var set = new CircuitTracerTranscoders(Enumerable.Range(0, 3).Select(l => Plt(Make(arch), skip: l == 1, seed: l)).ToArray());
        Assert.True(set.HasSkip);
        set.Save(Sub("plt"), "gpt2");
        var back = CircuitTracerTranscoders.Load(Sub("plt"));
        Assert.Equal(3, back.Layers);
        Assert.Equal("blocks.1.mlp.hook_in", back.InputHook(1));
        Assert.Equal(1, back.LastTarget(1));
        AssertSameFunction(set, back, tolerance: 1e-6f);
        string yaml = File.ReadAllText(Path.Combine(Sub("plt"), "config.yaml"));
        Assert.Contains("model_kind: \"transcoder_set\"", yaml);
        using var f = SafeTensorsFile.Open(Path.Combine(Sub("plt"), "layer_0.safetensors"));
        Assert.Equal([6L, 4L], f.GetInfo("W_enc").Shape);   // [d_transcoder, d_model]
    }

    [Fact]
    public void OlderPerLayerFilesWithTransposedDecodersLoadTheSame()
    {
        // v0.5-era relu files: W_enc [d_sae, d_model] and W_dec [d_model, d_sae]; W_skip [d_model, d_model] applied as x·W_skipᵀ
        var d = Plt(new ReluActivation(), skip: true, seed: 4);
        var s = d.Shape;
        Directory.CreateDirectory(Sub("old"));
        SafeTensorsWriter.Write(Path.Combine(Sub("old"), "layer_0.safetensors"), new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("W_enc", [s.DSae, s.DIn], CltFiles.Transpose(d.P.WEnc, s.DIn, s.DSae)),
            ("W_dec", [s.DOut, s.DSae], CltFiles.Transpose(d.P.WDec, s.DSae, s.DOut)),
            ("b_enc", [s.DSae], d.P.BEnc),
            ("b_dec", [s.DOut], d.P.BDec),
            ("W_skip", [s.DOut, s.DIn], CltFiles.Transpose(d.P.WSkip, s.DIn, s.DOut)),
        });
        var back = CircuitTracerTranscoders.Load(Sub("old"));
        AssertSameFunction(new CircuitTracerTranscoders([d]), back, tolerance: 1e-6f);

        // and a [d_model, d_sae] encoder (Gemma Scope's orientation) is recognised from the shapes
        SafeTensorsWriter.Write(Path.Combine(Sub("old"), "layer_0.safetensors"), new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("W_enc", [s.DIn, s.DSae], d.P.WEnc),
            ("W_dec", [s.DSae, s.DOut], d.P.WDec),
            ("b_enc", [s.DSae], d.P.BEnc),
            ("b_dec", [s.DOut], d.P.BDec),
            ("W_skip", [s.DOut, s.DIn], CltFiles.Transpose(d.P.WSkip, s.DIn, s.DOut)),
        });
        AssertSameFunction(new CircuitTracerTranscoders([d]), CircuitTracerTranscoders.Load(Sub("old")), tolerance: 1e-6f);

        // a decoder that fits neither orientation is named with both
        SafeTensorsWriter.Write(Path.Combine(Sub("old"), "layer_0.safetensors"), new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("W_enc", [s.DSae, s.DIn], CltFiles.Transpose(d.P.WEnc, s.DIn, s.DSae)),
            ("W_dec", [s.DSae, 5], new float[s.DSae * 5]),
            ("b_enc", [s.DSae], d.P.BEnc),
            ("b_dec", [s.DOut], d.P.BDec),
        });
        var e = Assert.Throws<InputError>(() => CircuitTracerTranscoders.Load(Sub("old")));
        Assert.Contains("layer_0.safetensors", e.Message);
        Assert.Contains("'W_dec'", e.Message);
        Assert.Contains("[6, 5]", e.Message);
    }
}
