using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Tests.Features;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>One emulated GPU backend and the llama fixture loaded on it, shared by the class (kernels compile once).</summary>
public sealed class EmulatedModelFixture : IDisposable
{
    public GpuBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));
    readonly Lazy<HookedTransformer> _model;

    public EmulatedModelFixture() => _model = new(() => ModelLoader.LoadFolder(SharedData.TestData("reference/llama"), Backend));

    public HookedTransformer Model => _model.Value;

    public void Dispose()
    {
        if (_model.IsValueCreated) _model.Value.Dispose();
        Backend.Dispose();
    }
}

/// <summary>
/// Harvesting and feature-store builds with the model on the GPU backend's kernels (emulated on the CPU): the CPU's shards
/// and stores to 1e-4, with exactly the harvested rows, and no dense [tokens, d_sae] matrix, coming back to the host.
/// </summary>
public sealed class DeviceHarvestTests(EmulatedModelFixture device) : IClassFixture<EmulatedModelFixture>, IDisposable
{
    const string Resid = "blocks.1.hook_resid_post", MlpOut = "blocks.1.hook_mlp_out";
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-device-harvest-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static HarvestContexts Contexts(int documents, int contextSize)
    {
        var rng = new Random(11);
        var docs = Enumerable.Range(0, documents).Select(_ => Enumerable.Range(0, rng.Next(3, 20)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        return ContextBuilder.Build(docs, new ContextOptions(contextSize, BosTokenId: 1, SeparatorTokenId: 2, Seed: 7), "random ids");
    }

    static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4 * (1 + Math.Abs(expected[i])), $"{what} [{i}]: cpu {expected[i]}, device {actual[i]}");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Harvest_OnTheDevice_WritesTheCpusShards_CopyingOutExactlyTheRowsWritten(bool skipBos)
    {
        var contexts = Contexts(30, 12);
        var options = new HarvestOptions([Resid, MlpOut], BatchSize: 3, ShardTokens: 44, SkipBos: skipBos);
        var cpuManifest = Harvester.Run(FeatureFixture.Model, contexts, Path.Combine(_dir, "cpu"), options);
        var transfers = device.Backend.Transfers;
        long bytesBefore = transfers.BytesToHost(TransferKind.Data);
        var before = transfers.Snapshot();
        var gpuManifest = Harvester.Run(device.Model, contexts, Path.Combine(_dir, "gpu"), options);
        var copies = transfers.Snapshot() - before;
        long bytesOut = transfers.BytesToHost(TransferKind.Data) - bytesBefore;

        Assert.Equal(cpuManifest.Shards.Select(s => (s.File, s.Tokens)), gpuManifest.Shards.Select(s => (s.File, s.Tokens)));
        foreach (var shard in cpuManifest.Shards)
        {
            using var a = SafeTensorsFile.Open(Path.Combine(_dir, "cpu", shard.File));
            using var b = SafeTensorsFile.Open(Path.Combine(_dir, "gpu", shard.File));
            foreach (var hook in new[] { Resid, MlpOut }) AssertClose(a.GetFloat32(hook).Span, b.GetFloat32(hook).Span, $"{shard.File} {hook}");
            Assert.Equal(a.GetInt64(HarvestManifest.TokenIdsTensor).ToArray(), b.GetInt64(HarvestManifest.TokenIdsTensor).ToArray());
        }

        // One copy per hook per batch, of exactly the rows written; no activation goes in.
        int batches = cpuManifest.Shards.Sum(s => (s.Contexts + 2) / 3);
        int rowsPerContext = skipBos ? 11 : 12;
        Assert.Equal(2L * batches, copies.Out(TransferKind.Data));
        Assert.Equal((long)contexts.Count * rowsPerContext * 64 * 2 * sizeof(float), bytesOut);
        Assert.Equal(0, copies.In(TransferKind.Data));
    }

    [Fact]
    public void ModelRows_OnTheDevice_AreTheCpusRows_OneCopyOutPerHookPerBatch()
    {
        // sae train --model on a device: the windows the trainer shuffles come from the device model's forward passes
        var contexts = Contexts(20, 9);
        var cpuRows = new ModelRows(FeatureFixture.Model, contexts, Resid, MlpOut, contextsPerWindow: 7, batchSize: 3).Load(0, 1);
        var rows = new ModelRows(device.Model, contexts, Resid, MlpOut, contextsPerWindow: 7, batchSize: 3);
        var before = device.Backend.Transfers.Snapshot();
        var deviceRows = rows.Load(0, 1);
        var copies = device.Backend.Transfers.Snapshot() - before;
        AssertClose(cpuRows.Inputs, deviceRows.Inputs, "inputs");
        AssertClose(cpuRows.Targets, deviceRows.Targets, "targets");
        Assert.Equal(2L * 3, copies.Out(TransferKind.Data)); // 7 contexts in batches of 3: 3 batches, 2 hooks each
        Assert.Equal(0, copies.In(TransferKind.Data));
    }

    // A dictionary whose features fire rarely (the copy test needs a batch that is really sparse).
    static (SparseDictionary, SaeLensConfig) SparseDictionaryOf(string kind)
    {
        const int dSae = 192;
        var dict = kind switch
        {
            "topk" => new SparseDictionary(SaeShape.Sae(64, dSae), new TopKActivation(5)),
            "jumprelu" => new SparseDictionary(SaeShape.Sae(64, dSae), new JumpReluActivation()),
            _ => new SparseDictionary(SaeShape.Sae(64, dSae, applyBDecToInput: false), new ReluActivation()),
        };
        dict.Initialize(seed: 5, decoderNorm: 1f, initThreshold: 0.3f);
        for (int f = 0; f < dSae; f++) dict.P.BEnc[f] = kind == "standard" ? -0.6f - 0.01f * f : -0.01f * f;
        for (int i = 0; i < dict.P.BDec.Length; i++) dict.P.BDec[i] = 0.01f * (i % 5);
        return (dict, new SaeLensConfig { DIn = 64, DSae = dSae, DOut = 64, HookName = Resid, ApplyBDecToInput = dict.Shape.ApplyBDecToInput });
    }

    static void AssertSameStore(string cpuPath, string gpuPath, int dSae)
    {
        using var a = FeatureStore.Open(cpuPath);
        using var b = FeatureStore.Open(gpuPath);
        Assert.Equal(a.Tokens, b.Tokens);
        for (int f = 0; f < dSae; f++)
        {
            var (x, y) = (a.Feature(f), b.Feature(f));
            Assert.InRange(y.NActive, x.NActive - 1, x.NActive + 1); // an activation within float noise of 0 may fall either way
            Assert.InRange(y.MaxAct, x.MaxAct - 1e-4 * (1 + x.MaxAct), x.MaxAct + 1e-4 * (1 + x.MaxAct));
            Assert.InRange(y.DecoderNorm, x.DecoderNorm - 1e-6, x.DecoderNorm + 1e-6);
            var (top, topGpu) = (a.Examples(f), b.Examples(f));
            Assert.Equal(top.Count, topGpu.Count);
            for (int r = 0; r < top.Count; r++)
            {
                Assert.InRange(topGpu[r].Activation, top[r].Activation - 1e-4 * (1 + top[r].Activation), top[r].Activation + 1e-4 * (1 + top[r].Activation));
                // The same token, unless its neighbour in the ranking holds an equal activation.
                bool tied = (r > 0 && Math.Abs(top[r - 1].Activation - top[r].Activation) <= 1e-4) ||
                            (r + 1 < top.Count && Math.Abs(top[r + 1].Activation - top[r].Activation) <= 1e-4);
                if (tied) continue;
                Assert.Equal((top[r].ContextId, top[r].Position), (topGpu[r].ContextId, topGpu[r].Position));
                AssertClose(top[r].WindowActs, topGpu[r].WindowActs, $"feature {f} example {r} window");
            }
            if (x.NActive == y.NActive)
            {
                var (h, hGpu) = (a.Histogram(f), b.Histogram(f));
                if (h is not null) Assert.InRange(hGpu!.Counts.Zip(h.Counts, (p, q) => Math.Abs(p - q)).Sum(), 0, 2);
            }
        }
    }

    [Theory]
    [InlineData("standard")]
    [InlineData("topk")]
    [InlineData("jumprelu")]
    public void FeatureStore_OnTheDevice_EqualsTheCpuBuild_AndCopiesNoDenseActivations(string kind)
    {
        var contexts = Contexts(24, 16);
        var (dict, cfg) = SparseDictionaryOf(kind);
        var options = new FeatureBuildOptions { BatchSize = 4, TopK = 5, Quantiles = 3, QuantileSamples = 2, HistogramBins = 5, Window = 2, LogitCount = 3 };
        string cpu = Path.Combine(_dir, "cpu.db"), gpu = Path.Combine(_dir, "gpu.db");
        FeatureDashboardBuilder.Build(FeatureFixture.Model, dict, cfg, contexts, cpu, options);

        var transfers = device.Backend.Transfers;
        long bytesBefore = transfers.BytesToHost(TransferKind.Data);
        var before = transfers.Snapshot();
        FeatureDashboardBuilder.Build(device.Model, dict, cfg, contexts, gpu, options);
        var copies = transfers.Snapshot() - before;
        long bytesOut = transfers.BytesToHost(TransferKind.Data) - bytesBefore;

        AssertSameStore(cpu, gpu, dict.Shape.DSae);
        // Per batch of 4·15 tokens a dense [tokens, d_sae] is 60·192 floats; each batch brings back top-k lists that hold every nonzero instead.
        long denseBytes = 2L * contexts.Count * 15 * dict.Shape.DSae * sizeof(float);
        Assert.True(bytesOut < (kind == "topk" ? denseBytes / 10 : denseBytes * 2 / 3), $"{bytesOut} bytes of activations came back; dense reads are {denseBytes}");
        Assert.InRange(copies.Out(TransferKind.Data), 1, 2 * 6 * 4 + 1); // a few reads per batch (values, indices; a retry when a row needs a larger k)
        Assert.Equal(0, copies.In(TransferKind.Data));
    }

    [Fact]
    public void FeatureStore_OnTheDevice_DenseFeatures_EqualTheCpuBuild()
    {
        // The dense fixture dictionary: its activations come back whole (cheaper than a top-k of most of the row).
        var contexts = FeatureFixture.Contexts(documents: 30);
        var (dict, cfg) = FeatureFixture.Dictionary();
        var options = new FeatureBuildOptions { BatchSize = 4, TopK = 5, Quantiles = 3, QuantileSamples = 2, HistogramBins = 5, Window = 2, LogitCount = 0 };
        string cpu = Path.Combine(_dir, "cpu-dense.db"), gpu = Path.Combine(_dir, "gpu-dense.db");
        FeatureDashboardBuilder.Build(FeatureFixture.Model, dict, cfg, contexts, cpu, options);
        FeatureDashboardBuilder.Build(device.Model, dict, cfg, contexts, gpu, options);
        AssertSameStore(cpu, gpu, FeatureFixture.DSae);
    }
}
