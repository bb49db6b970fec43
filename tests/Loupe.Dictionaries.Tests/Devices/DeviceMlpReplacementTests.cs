using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// A replacement's weights on the emulated device (<see cref="DeviceMlpReplacement"/>): encode, reconstruct and the
/// encoder/decoder directions equal the host <see cref="IMlpReplacement"/> to 1e-5, for per-layer transcoders and
/// cross-layer transcoders (ReLU, JumpReLU, TopK); the weights go in once, as weights. A cross-layer transcoder whose
/// decoders stay on the host (<see cref="DeviceDecoders.ActiveRows"/>) gives the same numbers, uploading only the active
/// features' rows.
/// </summary>
public sealed class DeviceMlpReplacementTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
    const int L = 3, D = 8, F = 20, Rows = 5;

    static CrossLayerTranscoder Clt(SaeActivation activation)
    {
        var clt = new CrossLayerTranscoder(new CltShape(L, D, F, D), activation);
        clt.Initialize(4, decoderNorm: 0.5f, initThreshold: 0.05f);
        var rng = new Random(9);
        for (int l = 0; l < L; l++)
        {
            for (int i = 0; i < clt.P.WEnc[l].Length; i++) clt.P.WEnc[l][i] = (float)(rng.NextDouble() * 2 - 1);
            for (int f = 0; f < F; f++) clt.P.BEnc[l][f] = (float)(rng.NextDouble() * 0.4 - 0.2);
            for (int d = 0; d < D; d++) clt.P.BDec[l][d] = (float)(rng.NextDouble() - 0.5);
        }
        return clt;
    }

    // Written in circuit-tracer's layout and loaded with its decoders mapped (uploaded a layer at a time from the files).
    static MappedCrossLayerTranscoder Mapped(CrossLayerTranscoder clt, string folder)
    {
        CltFiles.SaveCircuitTracer(folder, clt);
        return CltFiles.LoadMapped(folder);
    }

    // Gemma Scope 2 layer files with an affine skip path (decoders mapped, uploaded a layer at a time, skips beside them).
    static MappedCrossLayerTranscoder GemmaScope2WithSkip(string folder)
    {
        var clt = Transcoders.GemmaScope2CltTests.Clt(new CltShape(L, D, F, D), seed: 6);
        var rng = new Random(12);
        var skip = Enumerable.Range(0, L).Select(_ => Enumerable.Range(0, D * D).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray()).ToArray();
        Transcoders.GemmaScope2CltTests.Write(folder, clt, skip);
        return Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(folder, L));
    }

    sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("loupe-device-clt").FullName;
        public void Dispose() => Directory.Delete(Path, recursive: true);
    }

    static PerLayerTranscoders PerLayer()
    {
        var dicts = new List<SparseDictionary>();
        for (int l = 0; l < L; l++)
        {
            var d = new SparseDictionary(SaeShape.Transcoder(D, F, D), new TopKActivation(4));
            d.Initialize(7 + l, decoderNorm: 0.5f);
            for (int i = 0; i < D; i++) d.P.BDec[i] = 0.1f * (i - l);
            dicts.Add(d);
        }
        return new PerLayerTranscoders(dicts, [.. Enumerable.Range(0, L).Select(l => $"blocks.{l}.ln2.hook_normalized")],
            [.. Enumerable.Range(0, L).Select(l => $"blocks.{l}.hook_mlp_out")], "random");
    }

    // The same transcoders in circuit-tracer's layer files, loaded with their decoders mapped (uploaded a layer at a time).
    static MappedPerLayerTranscoders MappedPerLayer(string folder, bool skip = false)
    {
        var p = PerLayer();
        var layers = Enumerable.Range(0, L).Select(l => p[l]).ToArray();
        if (skip)
        {
            // layer 1 with a skip path (the others without): W_skip kept beside the encoder when the decoders stay on the host
            var d = new SparseDictionary(SaeShape.Transcoder(D, F, D, skip: true), new ReluActivation());
            d.Initialize(21, decoderNorm: 0.5f);
            var rng = new Random(22);
            for (int i = 0; i < d.P.WSkip.Length; i++) d.P.WSkip[i] = (float)(rng.NextDouble() - 0.5);
            layers[1] = d;
        }
        new CircuitTracerTranscoders(layers).Save(folder);
        return CircuitTracerTranscoders.LoadMapped(folder);
    }

    static void Close(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5f * (1 + Math.Abs(expected[i])), $"{what} [{i}]: host {expected[i]}, device {actual[i]}");
    }

    static readonly string[] CrossLayerKinds = ["clt relu", "clt jumprelu", "clt topk", "clt jumprelu, decoders mapped", "gemma scope 2 clt, affine skip"];

    public static TheoryData<string, DeviceDecoders> Replacements
    {
        get
        {
            var data = new TheoryData<string, DeviceDecoders>();
            foreach (var kind in CrossLayerKinds.Concat(["per-layer topk", "per-layer topk, decoders mapped", "per-layer skip, decoders mapped"]))
            {
                data.Add(kind, DeviceDecoders.Whole);
                data.Add(kind, DeviceDecoders.ActiveRows);
            }
            return data;
        }
    }

    IMlpReplacement Make(string kind, string folder) => kind switch
    {
        "per-layer topk" => PerLayer(),
        "per-layer topk, decoders mapped" => MappedPerLayer(folder),
        "per-layer skip, decoders mapped" => MappedPerLayer(folder, skip: true),
        "clt relu" => Clt(new ReluActivation()),
        "clt jumprelu" => Clt(new JumpReluActivation()),
        "clt topk" => Clt(new TopKActivation(3)),
        "clt jumprelu, decoders mapped" => Mapped(Clt(new JumpReluActivation()), folder),
        _ => GemmaScope2WithSkip(folder),
    };

    [Theory]
    [MemberData(nameof(Replacements))]
    public void The_device_weights_encode_and_reconstruct_as_the_host_does(string kind, DeviceDecoders decoders)
    {
        using var folder = new TempFolder();
        IMlpReplacement r = Make(kind, folder.Path);
        using var unmap = r as IDisposable;
        var be = device.Backend;
        var before = be.Transfers.Snapshot();
        long bytesBefore = be.Transfers.BytesToDevice(TransferKind.Weights);
        var onDevice = DeviceMlpReplacement.Upload(r, be, decoders);
        Assert.Equal(decoders == DeviceDecoders.ActiveRows, onDevice.DecodersOnHost);
        var uploaded = be.Transfers.Snapshot() - before;
        // The estimate said before an upload: within 10 % of what went (it leaves out the per-layer zero biases of a CLT's layers).
        long went = be.Transfers.BytesToDevice(TransferKind.Weights) - bytesBefore, estimate = DeviceMlpReplacement.UploadBytes(r, decoders);
        Assert.True(Math.Abs(went - estimate) <= 0.1 * went, $"{kind}: {went} bytes uploaded, {estimate} estimated");
        Assert.Equal(0, uploaded.In(TransferKind.Data));
        Assert.True(uploaded.In(TransferKind.Weights) >= (decoders == DeviceDecoders.ActiveRows ? 3 : 4) * L);

        var rng = new Random(3);
        var inputs = new float[L][];
        var acts = new float[L][];
        var deviceActs = new Tensor[L];
        for (int l = 0; l < L; l++)
        {
            inputs[l] = [.. Enumerable.Range(0, Rows * D).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
            var pre = new float[Rows * F];
            acts[l] = new float[Rows * F];
            r.Encode(l, inputs[l], Rows, pre, acts[l]);
            var x = be.ToDevice(Tensor.FromArray(inputs[l], Rows, D));
            var devicePre = onDevice.EncodePre(l, x, Rows);
            Close(pre, devicePre.ToCpu().Span, $"{kind} pre {l}");
            deviceActs[l] = onDevice.Activate(l, devicePre, Rows);
            Close(acts[l], deviceActs[l].ToCpu().Span, $"{kind} acts {l}");
            Assert.Contains(acts[l], v => v != 0);
        }
        for (int t = 0; t < L; t++)
        {
            var recon = new float[Rows * D];
            r.Reconstruct(t, acts, inputs, Rows, recon);
            var input = r.HasSkip ? be.ToDevice(Tensor.FromArray(inputs[t], Rows, D)) : null;
            long weightsBefore = be.Transfers.BytesToDevice(TransferKind.Weights);
            Close(recon, onDevice.Reconstruct(t, deviceActs, Rows, input).ToCpu().Span, $"{kind} recon {t}");
            // Decoders on the host: what goes up is the rows to t of the features active in a source layer, nothing else.
            long rowBytes = decoders == DeviceDecoders.ActiveRows
                ? 4L * D * Enumerable.Range(0, t + 1).Where(l => r.LastTarget(l) >= t).Sum(l => Enumerable.Range(0, F).Count(f => Enumerable.Range(0, Rows).Any(i => acts[l][i * F + f] != 0)))
                : 0;
            Assert.Equal(rowBytes, be.Transfers.BytesToDevice(TransferKind.Weights) - weightsBefore);
            if (r.SkipWeights(t) is { } hostSkip) Close(hostSkip, onDevice.SkipWeights(t)!.ToCpu().Span, $"{kind} skip {t}");
            else Assert.Null(onDevice.SkipWeights(t));
        }
        // Directions: W_enc[ℓ][:, f] and the decoder rows of every target a feature writes.
        var into = be.Empty(1, D);
        var expected = new float[D];
        for (int l = 0; l < L; l++)
        {
            onDevice.EncoderDirection(l, 5, into, 0);
            r.EncoderDirection(l, 5, expected);
            Close(expected, into.ToCpu().Span, $"{kind} encoder {l}");
            for (int t = l; t <= r.LastTarget(l); t++)
            {
                int[] features = [7, 2, 19];
                var rows = be.Empty(features.Length, D);
                onDevice.DecoderRows(l, t, features, rows);
                var host = rows.ToCpu().Span;
                for (int i = 0; i < features.Length; i++)
                {
                    r.DecoderDirection(l, features[i], t, expected);
                    Close(expected, host.Slice(i * D, D), $"{kind} decoder {l}→{t} feature {features[i]}");
                }
            }
        }
    }

    [Fact]
    public void Decoders_on_the_host_read_only_the_active_features_rows()
    {
        // Every decoder row NaN but those of features 3 and 11 of layer 0: a pass where only they fire reconstructs exactly,
        // their rows read (mapped: from the file) and uploaded; a pass where another fires meets the NaN as an error.
        using var folder = new TempFolder();
        var clt = Clt(new ReluActivation());
        for (int l = 0; l < L; l++)
            for (int f = 0; f < F; f++)
                if (l > 0 || (f != 3 && f != 11)) clt.P.WDec[l].AsSpan(f * (L - l) * D, (L - l) * D).Fill(float.NaN);
        Transcoders.MappedCltTests.WriteUnchecked(folder.Path, clt, circuitTracer: true); // (a save refuses NaN)
        using var mapped = CltFiles.LoadMapped(folder.Path);
        var be = device.Backend;
        var onDevice = DeviceMlpReplacement.Upload(mapped, be, DeviceDecoders.ActiveRows);
        var acts = new float[L][];
        for (int l = 0; l < L; l++) acts[l] = new float[Rows * F];
        acts[0][1 * F + 3] = 2f;
        acts[0][4 * F + 11] = 0.5f;
        acts[0][4 * F + 3] = -1f;
        var deviceActs = acts.Select(a => be.ToDevice(Tensor.FromArray(a, Rows, F))).ToArray();
        for (int t = 0; t < L; t++)
        {
            var expected = new float[Rows * D];
            for (int i = 0; i < Rows; i++)
            {
                clt.P.BDec[t].CopyTo(expected, i * D);
                foreach (int f in new[] { 3, 11 })
                    for (int d = 0; d < D; d++) expected[i * D + d] += acts[0][i * F + f] * clt.P.WDec[0][(f * L + t) * D + d];
            }
            Close(expected, onDevice.Reconstruct(t, deviceActs, Rows).ToCpu().Span, $"recon {t}");
        }
        acts[1][2 * F + 7] = 1f;
        var withAnother = acts.Select(a => be.ToDevice(Tensor.FromArray(a, Rows, F))).ToArray();
        var e = Assert.Throws<InputError>(() => onDevice.Reconstruct(1, withAnother, Rows));
        Assert.Contains("W_dec_1", e.Message);
    }

    [Fact]
    public void Decoders_on_the_host_follow_each_pass_and_upload_past_one_chunk()
    {
        // More active features than one upload takes, and two passes with different activations through the same device copy.
        var clt = new CrossLayerTranscoder(new CltShape(2, D, DeviceMlpReplacement.RowChunk + 700, D), new ReluActivation());
        clt.Initialize(11, decoderNorm: 0.5f);
        int n = clt.Shape.DSae;
        var be = device.Backend;
        var whole = DeviceMlpReplacement.Upload(clt, be, DeviceDecoders.Whole);
        var streamed = DeviceMlpReplacement.Upload(clt, be, DeviceDecoders.ActiveRows);
        foreach (int seed in new[] { 1, 2 })
        {
            var rng = new Random(seed);
            var acts = Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, Rows * n).Select(_ => rng.NextDouble() < 0.6 ? 0f : (float)rng.NextDouble()).ToArray()).ToArray();
            var deviceActs = acts.Select(a => be.ToDevice(Tensor.FromArray(a, Rows, n))).ToArray();
            for (int t = 0; t < 2; t++)
                Close(whole.Reconstruct(t, deviceActs, Rows).ToCpu().Span, streamed.Reconstruct(t, deviceActs, Rows).ToCpu().Span, $"pass {seed} recon {t}");
            int[] features = [.. Enumerable.Range(0, n).Where(f => f % 3 == 0)];
            var a = be.Empty(features.Length, D);
            var b = be.Empty(features.Length, D);
            whole.DecoderRows(0, 1, features, a);
            streamed.DecoderRows(0, 1, features, b);
            Close(a.ToCpu().Span, b.ToCpu().Span, "decoder rows 0→1");
        }
    }

    [Fact]
    public void Where_the_decoders_go_is_resolved_by_what_was_asked_and_the_free_memory()
    {
        var clt = Clt(new ReluActivation());
        var be = device.Backend;
        Assert.Null(be.FreeMemoryBytes); // the emulated device does not know: whole
        Assert.Equal(DeviceDecoders.Whole, DeviceMlpReplacement.Resolve(clt, be));
        clt.DecodersOnDevice = DeviceDecoders.ActiveRows;
        Assert.Equal(DeviceDecoders.ActiveRows, DeviceMlpReplacement.Resolve(clt, be));
        Assert.True(DeviceMlpReplacement.Upload(clt, be).DecodersOnHost);
        Assert.Equal(DeviceDecoders.Whole, DeviceMlpReplacement.Resolve(clt, be, DeviceDecoders.Whole));
        Assert.True(DeviceMlpReplacement.UploadBytes(clt, DeviceDecoders.ActiveRows) < DeviceMlpReplacement.UploadBytes(clt));
        var perLayer = PerLayer();
        Assert.Equal(DeviceDecoders.Whole, DeviceMlpReplacement.Resolve(perLayer, be));
        DeviceMlpReplacement.SetDecodersOnDevice(perLayer, DeviceDecoders.ActiveRows);
        Assert.True(DeviceMlpReplacement.Upload(perLayer, be).DecodersOnHost);
        long whole = DeviceMlpReplacement.UploadBytes(clt);
        Assert.Equal(DeviceDecoders.Whole, DeviceMlpReplacement.Auto(clt, (long)(whole / DeviceMlpReplacement.WholeUploadShare) + 1));
        Assert.Equal(DeviceDecoders.ActiveRows, DeviceMlpReplacement.Auto(clt, whole));
        Assert.Equal(DeviceDecoders.Whole, DeviceMlpReplacement.Auto(clt, null));
    }

    [Fact]
    public void The_upload_is_said_before_it_starts_and_refused_when_it_cannot_fit()
    {
        // A CLT whose decoders (6 MiB as float32) are most of it: L = 2, d = 64, 8,192 features.
        var shape = new CltShape(2, 64, 8192, 64);
        var clt = new CrossLayerTranscoder(shape, new ReluActivation());
        var cuda = Device.Parse("cuda:1", "test");
        long whole = DeviceMlpReplacement.UploadBytes(clt), encoders = DeviceMlpReplacement.UploadBytes(clt, DeviceDecoders.ActiveRows);
        Assert.Equal(4L * (shape.DecoderElements + 2 * (64L * 8192 + 8192 + 64)), whole);
        Assert.Equal("the transcoders' weights on cuda:1: about 10.1 MiB as float32 (64.0 MiB free), uploaded once",
            DeviceMlpReplacement.Plan(clt, cuda, DeviceDecoders.Whole, 64L << 20, chosen: true));
        Assert.Equal(DeviceDecoders.ActiveRows, DeviceMlpReplacement.Auto(clt, 12L << 20));
        Assert.Equal("the transcoders' encoders on cuda:1: about 4.1 MiB as float32 (12.0 MiB free), uploaded once; their decoders (6.0 MiB as float32) " +
                     "stay in host memory, each pass uploading its active features' rows (whole they would take more than 75 % of the free memory)",
            DeviceMlpReplacement.Plan(clt, cuda, DeviceDecoders.ActiveRows, 12L << 20, chosen: true));
        var e = Assert.Throws<InputError>(() => DeviceMlpReplacement.Plan(clt, cuda, DeviceDecoders.Whole, 8L << 20, chosen: false));
        Assert.Contains("device cuda:1: the transcoders' weights need about 10.1 MiB as float32, and 8.0 MiB are free", e.Message);
        Assert.Contains("--device-decoders active", e.Message);
        Assert.Contains("the encoders need 4.1 MiB", e.Message);
        var encodersToo = Assert.Throws<InputError>(() => DeviceMlpReplacement.Plan(clt, cuda, DeviceDecoders.ActiveRows, 2L << 20, chosen: false));
        Assert.Contains("the transcoders' encoders need about 4.1 MiB as float32 (their decoders staying on the host), and 2.0 MiB are free", encodersToo.Message);
        Assert.Null(DeviceMlpReplacement.Plan(clt, CpuBackend.Instance));
        Assert.True(encoders < whole / 2);
    }
}
