using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// A replacement's weights on the emulated device (<see cref="DeviceMlpReplacement"/>): encode, reconstruct and the
/// encoder/decoder directions equal the host <see cref="IMlpReplacement"/> to 1e-5, for per-layer transcoders and
/// cross-layer transcoders (ReLU, JumpReLU, TopK); the weights go in once, as weights.
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

    static void Close(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5f * (1 + Math.Abs(expected[i])), $"{what} [{i}]: host {expected[i]}, device {actual[i]}");
    }

    public static TheoryData<string> Replacements => ["per-layer topk", "clt relu", "clt jumprelu", "clt topk", "clt jumprelu, decoders mapped", "gemma scope 2 clt, affine skip"];

    [Theory]
    [MemberData(nameof(Replacements))]
    public void The_device_weights_encode_and_reconstruct_as_the_host_does(string kind)
    {
        using var folder = new TempFolder();
        IMlpReplacement r = kind switch
        {
            "per-layer topk" => PerLayer(),
            "clt relu" => Clt(new ReluActivation()),
            "clt jumprelu" => Clt(new JumpReluActivation()),
            "clt topk" => Clt(new TopKActivation(3)),
            "clt jumprelu, decoders mapped" => Mapped(Clt(new JumpReluActivation()), folder.Path),
            _ => GemmaScope2WithSkip(folder.Path),
        };
        using var unmap = r as IDisposable;
        var be = device.Backend;
        var before = be.Transfers.Snapshot();
        long bytesBefore = be.Transfers.BytesToDevice(TransferKind.Weights);
        var onDevice = DeviceMlpReplacement.Upload(r, be);
        var uploaded = be.Transfers.Snapshot() - before;
        // The estimate said before an upload: within 10 % of what went (it leaves out the per-layer zero biases of a CLT's layers).
        long went = be.Transfers.BytesToDevice(TransferKind.Weights) - bytesBefore, estimate = DeviceMlpReplacement.UploadBytes(r);
        Assert.True(Math.Abs(went - estimate) <= 0.1 * went, $"{kind}: {went} bytes uploaded, {estimate} estimated");
        Assert.Equal(0, uploaded.In(TransferKind.Data));
        Assert.True(uploaded.In(TransferKind.Weights) >= 4 * L);

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
            Close(recon, onDevice.Reconstruct(t, deviceActs, Rows, input).ToCpu().Span, $"{kind} recon {t}");
            if (r.HasSkip) Close(r.SkipWeights(t), onDevice.SkipWeights(t)!.ToCpu().Span, $"{kind} skip {t}");
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
}
