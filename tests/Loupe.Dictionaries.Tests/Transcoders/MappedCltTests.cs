using System.Text;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// Cross-layer transcoders with memory-mapped decoders (<see cref="MappedCrossLayerTranscoder"/>): the same function,
/// directions and fingerprint as the in-memory transcoder read from the same files (F32 and BF16, both layouts); a corrupt
/// decoder row is an error when its feature is decoded; decoders past what one array holds load mapped.
/// </summary>
public sealed class MappedCltTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-mapped-clt").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);
    string Sub(string name) => Path.Combine(_dir, name);

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var arch in new[] { "relu", "jumprelu", "topk", "batchtopk" }) data.Add(arch, "loupe");
        foreach (var arch in new[] { "relu", "jumprelu" }) data.Add(arch, "circuit-tracer");
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MappedDecodersComputeWhatTheInMemoryTranscoderDoes(string arch, string layout)
    {
        var clt = CltFilesTests.Trained(CltFilesTests.Make(arch));
        string folder = Sub(arch + layout);
        if (layout == "loupe") CltFiles.Save(folder, clt);
        else CltFiles.SaveCircuitTracer(folder, clt);
        var memory = CltFiles.Load(folder);
        using var mapped = CltFiles.LoadMapped(folder);
        Assert.Equal(memory.Shape, mapped.Shape);
        Assert.Equal(memory.Architecture, mapped.Architecture);
        Assert.Equal(memory.InputHook(2), mapped.InputHook(2));
        Assert.Equal(memory.OutputHook(1), mapped.OutputHook(1));
        CltFilesTests.AssertSameFunction(memory, mapped, tolerance: 1e-5f);
        var (a, b) = (new float[memory.DOut], new float[memory.DOut]);
        for (int l = 0; l < memory.Layers; l++)
            for (int f = 0; f < memory.Features(l); f++)
            {
                for (int t = l; t < memory.Layers; t++)
                {
                    memory.DecoderDirection(l, f, t, a);
                    mapped.DecoderDirection(l, f, t, b);
                    Assert.Equal(a, b);
                }
                var (ea, eb) = (new float[memory.DIn], new float[memory.DIn]);
                memory.EncoderDirection(l, f, ea);
                mapped.EncoderDirection(l, f, eb);
                Assert.Equal(ea, eb);
            }
        Assert.Equal(memory.Fingerprint, mapped.Fingerprint);
        Assert.Throws<ArgumentOutOfRangeException>(() => mapped.DecoderDirection(2, 0, 1, a));  // a feature of layer 2 writes 2 only
        Assert.Throws<ArgumentOutOfRangeException>(() => mapped.DecoderDirection(0, memory.Shape.DSae, 0, a));
    }

    [Fact]
    public void ReconstructionReadsOnlyTheActiveFeatures()
    {
        // Every decoder row but those of features 1 and 3 of layer 0 is NaN: reconstructing from those two must not read the rest.
        var clt = CltFilesTests.Trained(new ReluActivation());
        var s = clt.Shape;
        for (int l = 0; l < s.Layers; l++)
            for (int f = 0; f < s.DSae; f++)
                if (l != 0 || (f != 1 && f != 3))
                    Array.Fill(clt.P.WDec[l], float.NaN, f * s.Targets(l) * s.DOut, s.Targets(l) * s.DOut);
        WriteUnchecked(Sub("sparse"), clt);
        using var mapped = CltFiles.LoadMapped(Sub("sparse"));
        const int rows = 2;
        var acts = Enumerable.Range(0, s.Layers).Select(_ => new float[rows * s.DSae]).ToArray();
        acts[0][1] = 2f;                 // row 0, feature 1
        acts[0][s.DSae + 3] = -0.5f;     // row 1, feature 3
        for (int t = 0; t < s.Layers; t++)
        {
            var recon = new float[rows * s.DOut];
            mapped.Reconstruct(t, acts, [], rows, recon);
            var row1 = new float[s.DOut];
            var row3 = new float[s.DOut];
            mapped.DecoderDirection(0, 1, t, row1);
            mapped.DecoderDirection(0, 3, t, row3);
            for (int j = 0; j < s.DOut; j++)
            {
                Assert.Equal(clt.P.BDec[t][j] + 2f * row1[j], recon[j], 1e-5f);
                Assert.Equal(clt.P.BDec[t][j] - 0.5f * row3[j], recon[s.DOut + j], 1e-5f);
            }
        }
        acts[1][4] = 1f;
        var e = Assert.Throws<InputError>(() => mapped.Reconstruct(1, acts, [], rows, new float[rows * s.DOut]));
        Assert.Contains("NaN", e.Message);
    }

    [Fact]
    public void ThousandsOfActiveFeaturesReconstructInChunksAsTheInMemoryTranscoderDoes()
    {
        // 2,500 features per layer, nearly all active: the mapped reconstruction gathers rows 1,024 at a time.
        var clt = new CrossLayerTranscoder(new CltShape(2, 8, 2500, 8), new ReluActivation());
        clt.Initialize(7, decoderNorm: 0.5f);
        for (int l = 0; l < 2; l++) Array.Fill(clt.P.BEnc[l], 1f);
        CltFiles.Save(Sub("wide"), clt);
        using var mapped = CltFiles.LoadMapped(Sub("wide"));
        CltFilesTests.AssertSameFunction(clt, mapped, tolerance: 1e-4f);
    }

    [Fact]
    public void ACorruptDecoderRowIsAnErrorNamingFileTensorAndElementWhenItsFeatureIsDecoded()
    {
        var clt = CltFilesTests.Trained(new JumpReluActivation());
        var s = clt.Shape;
        int bad = (3 * s.Targets(1) + 1) * s.DOut + 2;   // layer 1, feature 3, target 2, element 2
        clt.P.WDec[1][bad] = float.PositiveInfinity;
        WriteUnchecked(Sub("bad"), clt, circuitTracer: true);
        Assert.Throws<InputError>(() => CltFiles.Load(Sub("bad")));   // read whole, it is refused at load
        using var mapped = CltFiles.LoadMapped(Sub("bad"));
        var v = new float[s.DOut];
        mapped.DecoderDirection(1, 2, 2, v);                         // another feature reads fine
        var e = Assert.Throws<InputError>(() => mapped.DecoderDirection(1, 3, 1, v));  // its other target too: the feature is checked whole
        Assert.Contains("W_dec_1.safetensors", e.Message);
        Assert.Contains($"tensor 'W_dec_1' element {bad}", e.Message);
        Assert.Contains("finite", e.Message);
        e = Assert.Throws<InputError>(() => mapped.Fingerprint);
        Assert.Contains("W_dec_1", e.Message);
    }

    [Fact]
    public void Bf16DecodersAreReadAsTheInMemoryLoaderReadsThem()
    {
        var clt = CltFilesTests.Trained(new JumpReluActivation());
        foreach (var w in clt.P.WDec)
            for (int i = 0; i < w.Length; i++) w[i] = MathF.Round(w[i] * 64) / 64;   // exact in bfloat16
        CltFiles.SaveCircuitTracer(Sub("bf16"), clt);
        for (int l = 0; l < clt.Layers; l++)
        {
            var w = clt.P.WDec[l];
            var bytes = new byte[2 * w.Length];
            for (int i = 0; i < w.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), (ushort)(BitConverter.SingleToUInt32Bits(w[i]) >> 16));
            SafeTensorsWriter.Write(Path.Combine(Sub("bf16"), $"W_dec_{l}.safetensors"),
                [SafeTensorEntry.Raw($"W_dec_{l}", DType.BF16, [clt.Shape.DSae, clt.Shape.Targets(l), clt.Shape.DOut], bytes)]);
        }
        var memory = CltFiles.Load(Sub("bf16"));
        using var mapped = CltFiles.LoadMapped(Sub("bf16"));
        var (a, b) = (new float[clt.DOut], new float[clt.DOut]);
        memory.DecoderDirection(1, 4, 2, a);
        mapped.DecoderDirection(1, 4, 2, b);
        Assert.Equal(a, b);
        Assert.Equal(clt.P.WDec[1].AsSpan((4 * 2 + 1) * clt.DOut, clt.DOut).ToArray(), b);
        Assert.Equal(memory.Fingerprint, mapped.Fingerprint);
        CltFilesTests.AssertSameFunction(memory, mapped, tolerance: 1e-5f);
    }

    [Fact]
    public void MlpReplacementsMapLargeDecodersAndWhatIsAskedFor()
    {
        var clt = CltFilesTests.Trained(new ReluActivation());
        CltFiles.SaveCircuitTracer(Sub("small"), clt);
        var lines = new List<string>();
        Assert.IsType<CrossLayerTranscoder>(MlpReplacements.Load(Sub("small"), 3, log: lines.Add));   // 720 bytes of decoders: in memory
        Assert.Contains("read into memory", lines[^1]);
        var mapped = Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(Sub("small"), 3, decoders: DecoderStorage.Mapped, log: lines.Add));
        mapped.Dispose();
        Assert.Contains("left mapped", lines[^1]);
        Assert.Contains("W_dec_0.safetensors", string.Join(",", mapped.DecoderFiles));
        var e = Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("small"), 4, decoders: DecoderStorage.Mapped));
        Assert.Contains("the model has 4", e.Message);

        // SAELens folders (one per layer) are read into memory; circuit-tracer's per-layer files map (MappedPerLayerTranscodersTests).
        Directory.CreateDirectory(Path.Combine(Sub("saelens"), "layer_0"));
        e = Assert.Throws<InputError>(() => MlpReplacements.Load(Sub("saelens"), 1, decoders: DecoderStorage.Mapped));
        Assert.Contains("mapped decoders are for cross-layer transcoders", e.Message);
        Assert.Contains("SAELens transcoders are read into memory", e.Message);
    }

    [Fact]
    public void DecodersPastWhatOneArrayHoldsLoadMapped()
    {
        // W_dec_0 [65,536, 2, 16,384] BF16: 2^31 elements (4 GiB, a sparse file of zeros but for two rows), more than one
        // float[] holds; W_dec_1 [65,536, 1, 16,384] (2 GiB). Encoders [65,536, 8].
        const int dSae = 65_536, dIn = 8, dOut = 16_384;
        string folder = Sub("huge");
        Directory.CreateDirectory(folder);
        for (int l = 0; l < 2; l++)
        {
            SafeTensorsWriter.Write(Path.Combine(folder, $"W_enc_{l}.safetensors"),
            [
                ($"W_enc_{l}", [dSae, dIn], new float[dSae * dIn]),
                ($"b_enc_{l}", [dSae], new float[dSae]),
                ($"b_dec_{l}", [dOut], Enumerable.Repeat(0.5f, dOut).ToArray()),
            ]);
            long[] shape = [dSae, 2 - l, dOut];
            // The last feature's row, written at the end of the tensor: in W_dec_0 it starts past element 2^31.
            WriteSparseBf16(Path.Combine(folder, $"W_dec_{l}.safetensors"), $"W_dec_{l}", shape, tailValue: 1.5f, tailElements: (2 - l) * dOut);
        }
        var e = Assert.Throws<InputError>(() => CltFiles.Load(folder));
        Assert.Contains(folder, e.Message);
        Assert.Contains("mapped", e.Message);

        using var mapped = Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(folder, 2));   // 12 GiB of decoders as float32: mapped
        Assert.Equal(12L << 30, mapped.DecoderBytes);
        var row = new float[dOut];
        mapped.DecoderDirection(0, dSae - 1, 1, row);     // elements 2^31 − 16,384 … 2^31 − 1
        Assert.All(row, v => Assert.Equal(1.5f, v));
        mapped.DecoderDirection(0, 7, 0, row);
        Assert.All(row, v => Assert.Equal(0f, v));
        // One active feature (the last of layer 0) reconstructs both targets from the rows at the end of the file.
        var acts = new[] { new float[dSae], new float[dSae] };
        acts[0][dSae - 1] = 2f;
        var recon = new float[dOut];
        mapped.Reconstruct(1, acts, [], 1, recon);
        Assert.All(recon, v => Assert.Equal(0.5f + 2f * 1.5f, v));
    }

    // A safetensors file of one BF16 tensor whose last tailElements elements are tailValue and the rest a hole (zeros).
    static void WriteSparseBf16(string path, string name, long[] shape, float tailValue, int tailElements)
    {
        long elements = shape.Aggregate(1L, (a, d) => a * d);
        var header = new JsonObject { [name] = new JsonObject { ["dtype"] = "BF16", ["shape"] = new JsonArray([.. shape.Select(d => JsonValue.Create(d))]), ["data_offsets"] = new JsonArray(0L, 2 * elements) } };
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        using var f = new FileStream(path, FileMode.Create, FileAccess.Write);
        f.Write(BitConverter.GetBytes((long)padded));
        f.Write(json);
        for (int i = json.Length; i < padded; i++) f.WriteByte((byte)' ');
        long dataStart = 8 + padded;
        f.SetLength(dataStart + 2 * elements);
        f.Seek(dataStart + 2 * (elements - tailElements), SeekOrigin.Begin);
        var bf16 = BitConverter.GetBytes((ushort)(BitConverter.SingleToUInt32Bits(tailValue) >> 16));
        var tail = new byte[2 * tailElements];
        for (int i = 0; i < tailElements; i++) { tail[2 * i] = bf16[0]; tail[2 * i + 1] = bf16[1]; }
        f.Write(tail);
    }

    // Writes clt's tensors as they are (NaN and ∞ included: the savers refuse them), in Loupe's or circuit-tracer's layout.
    internal static void WriteUnchecked(string folder, CrossLayerTranscoder clt, bool circuitTracer = false)
    {
        var nan = clt.P.WDec.Select(w => w.ToArray()).ToArray();
        foreach (var w in clt.P.WDec) Array.Clear(w);
        if (circuitTracer) CltFiles.SaveCircuitTracer(folder, clt);
        else CltFiles.Save(folder, clt);
        var s = clt.Shape;
        if (circuitTracer)
            for (int l = 0; l < s.Layers; l++)
                SafeTensorsWriter.Write(Path.Combine(folder, $"W_dec_{l}.safetensors"), [($"W_dec_{l}", [s.DSae, s.Targets(l), s.DOut], (ReadOnlyMemory<float>)nan[l])]);
        else
        {
            string weights = Path.Combine(folder, CltFiles.WeightsFile);
            var tensors = new List<(string, int[], ReadOnlyMemory<float>)>();
            using (var f = SafeTensorsFile.Open(weights))
                foreach (var n in f.Names)
                {
                    int[] shape = [.. f.GetInfo(n).Shape.Select(d => (int)d)];
                    tensors.Add((n, shape, n.StartsWith("W_dec.", StringComparison.Ordinal) ? nan[int.Parse(n["W_dec.".Length..])] : f.GetFloat32(n).ToArray()));
                }
            SafeTensorsWriter.Write(weights, tensors);
        }
        for (int l = 0; l < s.Layers; l++) nan[l].CopyTo(clt.P.WDec[l], 0);
    }
}
