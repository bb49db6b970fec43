using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// circuit-tracer's per-layer transcoders with their decoders left mapped (<see cref="MappedPerLayerTranscoders"/>): the same
/// function, directions and fingerprint as the in-memory load of the same files; only the active features' rows are read;
/// what cannot stay mapped (decoders stored [d_model, d_sae], a Gemma Scope entry) is refused by name.
/// </summary>
public sealed class MappedPerLayerTranscodersTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-mapped-plt").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);
    string Sub(string name) => Path.Combine(_dir, name);

    static CircuitTracerTranscoders Set(string arch) =>
        new([.. Enumerable.Range(0, 3).Select(l => CltFilesTests.Plt(CltFilesTests.Make(arch), skip: l == 1, seed: l))]);

    [Theory]
    [MemberData(nameof(CltFilesTests.Architectures), MemberType = typeof(CltFilesTests))]
    public void Mapped_decoders_give_the_in_memory_function_directions_and_fingerprint(string arch)
    {
        Set(arch).Save(Sub(arch), "gpt2");
        var memory = CircuitTracerTranscoders.Load(Sub(arch));
        using var mapped = CircuitTracerTranscoders.LoadMapped(Sub(arch));
        Assert.Equal(memory.Layers, mapped.Layers);
        Assert.True(mapped.HasSkip);
        Assert.Null(mapped.SkipWeights(0));
        Assert.Equal(memory.SkipWeights(1), mapped.SkipWeights(1));
        Assert.Equal(memory.InputHook(2), mapped.InputHook(2));
        Assert.Equal(memory.OutputHook(2), mapped.OutputHook(2));
        Assert.Equal(2, mapped.LastTarget(2));
        CltFilesTests.AssertSameFunction(memory, mapped, tolerance: 1e-6f);
        var a = new float[memory.DOut];
        var b = new float[memory.DOut];
        for (int l = 0; l < memory.Layers; l++)
            for (int f = 0; f < memory.Features(l); f++)
            {
                memory.DecoderDirection(l, f, l, a);
                mapped.DecoderDirection(l, f, l, b);
                Assert.Equal(a, b);
                var ea = new float[memory.DIn];
                var eb = new float[memory.DIn];
                memory.EncoderDirection(l, f, ea);
                mapped.EncoderDirection(l, f, eb);
                Assert.Equal(ea, eb);
            }
        Assert.Equal(memory.Fingerprint, mapped.Fingerprint);
        Assert.Throws<ArgumentOutOfRangeException>(() => mapped.DecoderDirection(0, 1, 1, b));
        for (int l = 0; l < memory.Layers; l++)
            Assert.Equal(memory.Dictionaries[l].P.WDec, mapped.LayerInMemory(l).P.WDec);
    }

    [Fact]
    public void Only_the_active_features_rows_are_read()
    {
        // Every decoder row of layer 0 NaN but features 1 and 4: a reconstruction from those two is exact; another is an error.
        var d = CltFilesTests.Plt(new ReluActivation(), skip: false, seed: 5);
        var s = d.Shape;
        var nan = d.P.WDec.ToArray();
        for (int f = 0; f < s.DSae; f++)
            if (f != 1 && f != 4) Array.Fill(nan, float.NaN, f * s.DOut, s.DOut);
        var wEncT = CltFiles.Transpose(d.P.WEnc, s.DIn, s.DSae);
        Directory.CreateDirectory(Sub("nan"));
        SafeTensorsWriter.Write(Path.Combine(Sub("nan"), "layer_0.safetensors"), new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("W_enc", [s.DSae, s.DIn], wEncT), ("W_dec", [s.DSae, s.DOut], nan), ("b_enc", [s.DSae], d.P.BEnc), ("b_dec", [s.DOut], d.P.BDec),
        });
        using var mapped = CircuitTracerTranscoders.LoadMapped(Sub("nan"));
        const int rows = 2;
        var acts = new float[rows * s.DSae];
        acts[1] = 2f;
        acts[s.DSae + 4] = -0.5f;
        var recon = new float[rows * s.DOut];
        mapped.Reconstruct(0, [acts], [], rows, recon);
        for (int j = 0; j < s.DOut; j++)
        {
            Assert.Equal(d.P.BDec[j] + 2f * d.P.WDec[1 * s.DOut + j], recon[j], 1e-5f);
            Assert.Equal(d.P.BDec[j] - 0.5f * d.P.WDec[4 * s.DOut + j], recon[s.DOut + j], 1e-5f);
        }
        acts[3] = 1f;
        var e = Assert.Throws<InputError>(() => mapped.Reconstruct(0, [acts], [], rows, recon));
        Assert.Contains("layer_0.safetensors", e.Message);
        Assert.Contains("W_dec", e.Message);
        Assert.Throws<InputError>(() => mapped.Fingerprint);
    }

    [Fact]
    public void Decoders_stored_model_major_and_Gemma_Scope_entries_are_refused_mapped_and_read_whole_otherwise()
    {
        // circuit-tracer before v0.6: W_dec [d_model, d_sae], whose rows are not contiguous.
        var d = CltFilesTests.Plt(new ReluActivation(), skip: false, seed: 4);
        var s = d.Shape;
        Directory.CreateDirectory(Sub("old"));
        SafeTensorsWriter.Write(Path.Combine(Sub("old"), "layer_0.safetensors"), new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("W_enc", [s.DSae, s.DIn], CltFiles.Transpose(d.P.WEnc, s.DIn, s.DSae)),
            ("W_dec", [s.DOut, s.DSae], CltFiles.Transpose(d.P.WDec, s.DSae, s.DOut)),
            ("b_enc", [s.DSae], d.P.BEnc), ("b_dec", [s.DOut], d.P.BDec),
        });
        var e = Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("old"), 1, decoders: DecoderStorage.Mapped));
        Assert.Contains("layer_0.safetensors", e.Message);
        Assert.Contains("--decoders memory", e.Message);
        Assert.IsType<CircuitTracerTranscoders>(MlpReplacements.Load(Sub("old"), 1)); // auto: small, in memory
    }

    [Fact]
    public void The_loader_maps_when_asked_and_says_what_it_reads()
    {
        var set = Set("jumprelu");
        set.Save(Sub("set"), "gpt2");
        var lines = new List<string>();
        using var mapped = Assert.IsType<MappedPerLayerTranscoders>(MlpReplacements.Load(Sub("set"), 3, decoders: DecoderStorage.Mapped, log: lines.Add));
        Assert.Contains(lines, l => l.Contains("per-layer transcoders") && l.Contains("left mapped"));
        Assert.IsType<CircuitTracerTranscoders>(MlpReplacements.Load(Sub("set"), 3, log: lines.Add));   // auto: well under 1 GiB
        Assert.Contains(lines, l => l.Contains("read into memory"));
        var e = Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("set"), 4, decoders: DecoderStorage.Mapped));
        Assert.Contains("the model has 4", e.Message);

        // A config.yaml listing the layer files: the list is kept (the graph's metadata names it), the function the same.
        string config = Path.Combine(Sub("listed"), "config.yaml");
        Directory.CreateDirectory(Sub("listed"));
        File.WriteAllText(config, $"""
            model_kind: transcoder_set
            feature_input_hook: "mlp.hook_in"
            feature_output_hook: "hook_mlp_out"
            transcoders:
              - "../set/layer_0.safetensors"
              - "../set/layer_1.safetensors"
              - "../set/layer_2.safetensors"
            """);
        using var listed = Assert.IsType<MappedPerLayerTranscoders>(MlpReplacements.Load(config, 3, decoders: DecoderStorage.Mapped));
        Assert.Equal(["../set/layer_0.safetensors", "../set/layer_1.safetensors", "../set/layer_2.safetensors"], listed.Listed);
        Assert.Equal(Path.GetFullPath(config), listed.Source);
        Assert.Equal(mapped.Fingerprint, listed.Fingerprint);
        CltFilesTests.AssertSameFunction(set, listed, tolerance: 1e-6f);
    }
}
