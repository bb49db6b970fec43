using Loupe.Attribution.Graph;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Attribution.Tests.Devices;

/// <summary>
/// Attribution graphs with the model and the transcoders on the GPU backend's kernels (emulated on the CPU): the
/// replacement model, the linear backward and the read-outs stay on the device, and the graph equals the CPU's
/// (adjacency, activations, logit probabilities, pruning) to 1e-4; the token ids go in, the graph's rows come out.
/// </summary>
public sealed class DeviceAttributionGraphTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
    static readonly int[] Prompt = [1, 37, 211, 5, 88, 400, 12];

    static HookedTransformer Load(string arch, IComputeBackend? backend = null) =>
        ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", arch)), backend);

    internal static CrossLayerTranscoder RandomClt(HookedTransformer model, int features = 12)
    {
        int L = model.Config.NLayers, D = model.Config.DModel;
        var clt = new CrossLayerTranscoder(new CltShape(L, D, features, D), new ReluActivation());
        clt.Initialize(5, decoderNorm: 0.5f);
        var rng = new Random(17);
        for (int l = 0; l < L; l++)
        {
            for (int i = 0; i < clt.P.WEnc[l].Length; i++) clt.P.WEnc[l][i] = (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(D) * 2f;
            for (int f = 0; f < features; f++) clt.P.BEnc[l][f] = (float)(rng.NextDouble() * 0.4 - 0.3);
        }
        return clt;
    }

    static void AssertSameGraph(AttributionGraph expected, AttributionGraph actual, string what)
    {
        Assert.Equal(expected.ActiveFeatures, actual.ActiveFeatures);
        Assert.Equal(expected.SelectedFeatures, actual.SelectedFeatures);
        Assert.Equal(expected.LogitTokens, actual.LogitTokens);
        for (int i = 0; i < expected.ActivationValues.Length; i++)
            GraphTestData.Close(expected.ActivationValues[i], actual.ActivationValues[i], 1e-4, 1e-6, $"{what} activation {i}");
        for (int i = 0; i < expected.LogitProbabilities.Length; i++)
            GraphTestData.Close(expected.LogitProbabilities[i], actual.LogitProbabilities[i], 1e-4, 1e-7, $"{what} logit probability {i}");
        float[] a = expected.DenseAdjacency(), b = actual.DenseAdjacency();
        Assert.Equal(a.Length, b.Length);
        double largest = a.Max(Math.Abs);
        for (int i = 0; i < a.Length; i++)
            Assert.True(Math.Abs(a[i] - b[i]) <= 1e-4 * largest, $"{what} adjacency entry {i}: cpu {a[i]}, device {b[i]} (largest {largest})");
        for (int i = 0; i < expected.ErrorVectors!.Length; i++)
            GraphTestData.Close(expected.ErrorVectors[i], actual.ErrorVectors![i], 1e-4, 1e-5, $"{what} error vector {i}");
        Assert.Equal(expected.TokenVectors, actual.TokenVectors);

        var p = GraphPruning.Prune(expected);
        var q = GraphPruning.Prune(actual);
        Assert.Equal(p.NodeMask, q.NodeMask);
        Assert.Equal(p.KeptEdgeCount(), q.KeptEdgeCount());
        for (int i = 0; i < p.NodeInfluence.Length; i++)
            GraphTestData.Close(p.NodeInfluence[i], q.NodeInfluence[i], 1e-4, 1e-6, $"{what} node influence {i}");
    }

    [Fact]
    public void Per_layer_transcoders_on_the_device_give_the_cpu_graph()
    {
        using var cpu = Load("llama");
        using var gpu = Load("llama", device.Backend);
        var settings = new AttributionSettings { BatchSize = 8, CausalBlock = 3 };
        var expected = new Attributor(cpu, FamilyAttributionTests.RandomTranscoders(cpu), settings).Attribute(Prompt);
        var actual = new Attributor(gpu, FamilyAttributionTests.RandomTranscoders(gpu), settings).Attribute(Prompt);
        AssertSameGraph(expected, actual, "per-layer");

        // Greedy selection by influence: the device rows choose the same features. With a wide, sparse dictionary the
        // active features come back as per-row top-k lists (k grown until every nonzero is inside), not as dense rows.
        var greedy = settings with { MaxFeatureNodes = 10, UpdateInterval = 1 };
        AssertSameGraph(new Attributor(cpu, Wide(cpu), greedy).Attribute(Prompt), new Attributor(gpu, Wide(gpu), greedy).Attribute(Prompt), "greedy");

        // 200 features, of which only the first 30 can fire.
        static PerLayerTranscoders Wide(HookedTransformer model)
        {
            var tc = FamilyAttributionTests.RandomTranscoders(model, features: 200);
            for (int l = 0; l < tc.Layers; l++)
                for (int f = 30; f < 200; f++) tc[l].P.BEnc[f] = -100f;
            return tc;
        }
    }

    [Fact]
    public void Explicit_targets_on_the_device_give_the_cpu_graph()
    {
        using var cpu = Load("llama");
        using var gpu = Load("llama", device.Backend);
        var settings = new AttributionSettings
        {
            BatchSize = 8, CausalBlock = 3,
            Targets = [AttributionTarget.Token(300), AttributionTarget.Difference(42, 17), AttributionTarget.Custom("ones", 0.5, [.. Enumerable.Repeat(1f, cpu.Config.DModel)])],
        };
        var expected = new Attributor(cpu, FamilyAttributionTests.RandomTranscoders(cpu), settings).Attribute(Prompt);
        var actual = new Attributor(gpu, FamilyAttributionTests.RandomTranscoders(gpu), settings).Attribute(Prompt);
        AssertSameGraph(expected, actual, "explicit targets");
        Assert.Equal(expected.LogitLabels, actual.LogitLabels);
    }

    [Fact]
    public void Per_head_shares_on_the_device_are_the_cpus()
    {
        // Per-head attribution still builds its head-split rows on the host (σ read back once per norm) but runs them on the device.
        using var cpu = Load("gpt2");
        using var gpu = Load("gpt2", device.Backend);
        var settings = new AttributionSettings { BatchSize = 32 };
        var onCpu = new Attributor(cpu, FamilyAttributionTests.RandomTranscoders(cpu), settings);
        var onDevice = new Attributor(gpu, FamilyAttributionTests.RandomTranscoders(gpu), settings);
        var graph = onCpu.Attribute(Prompt);
        int[] targets = [graph.LogitOffset, graph.ErrorOffset - 1];
        var edges = targets.SelectMany(t => Enumerable.Range(0, graph.LogitOffset).Where(s => graph.Edge(t, s) != 0).Select(s => (t, s))).ToArray();
        var expected = onCpu.AttributeHeads(graph, edges);
        var actual = onDevice.AttributeHeads(graph, edges);
        double largest = expected.Max(e => Math.Abs(e.Total));
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.True(Math.Abs(expected[i].Direct - actual[i].Direct) <= 1e-4 * largest, $"edge {i} direct: cpu {expected[i].Direct}, device {actual[i].Direct}");
            Assert.Equal(expected[i].Heads.Select(h => (h.Layer, h.Head)), actual[i].Heads.Select(h => (h.Layer, h.Head)));
            for (int h = 0; h < expected[i].Heads.Length; h++)
                Assert.True(Math.Abs(expected[i].Heads[h].Weight - actual[i].Heads[h].Weight) <= 1e-4 * largest, $"edge {i} head {h}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Skip_transcoders_on_the_device_give_the_cpu_graph(bool readsResidMid)
    {
        using var cpu = Load("llama");
        using var gpu = Load("llama", device.Backend);
        // with a resid_mid input also two leading positions that are not sources (Gemma 3's chat prefix is four)
        var settings = new AttributionSettings { BatchSize = 8, CausalBlock = 3, ZeroPositions = readsResidMid ? 2 : null };
        AssertSameGraph(new Attributor(cpu, FamilyAttributionTests.RandomSkipTranscoders(cpu, readsResidMid), settings).Attribute(Prompt),
            new Attributor(gpu, FamilyAttributionTests.RandomSkipTranscoders(gpu, readsResidMid), settings).Attribute(Prompt), "skip");
    }

    [Fact]
    public void Skip_transcoders_with_their_decoders_on_the_host_give_the_cpu_graph()
    {
        using var cpu = Load("llama");
        using var gpu = Load("llama", device.Backend);
        var settings = new AttributionSettings { BatchSize = 8, CausalBlock = 3, ZeroPositions = 2 };
        var onHost = FamilyAttributionTests.RandomSkipTranscoders(gpu, readsResidMid: true);
        onHost.DecodersOnDevice = DeviceDecoders.ActiveRows; // encoders, b_dec and skip paths up; each pass uploads its active rows
        var uploaded = DeviceMlpReplacement.Upload(onHost, device.Backend);
        Assert.True(uploaded.DecodersOnHost);
        AssertSameGraph(new Attributor(cpu, FamilyAttributionTests.RandomSkipTranscoders(cpu, readsResidMid: true), settings).Attribute(Prompt),
            new Attributor(gpu, uploaded, settings).Attribute(Prompt), "skip, decoders on the host");
    }

    [Fact]
    public void A_cross_layer_transcoder_on_the_device_gives_the_cpu_graph()
    {
        using var cpu = Load("gpt_neox"); // parallel residual, partial rotary, LayerNorm
        using var gpu = Load("gpt_neox", device.Backend);
        var settings = new AttributionSettings { BatchSize = 16 };
        AssertSameGraph(new Attributor(cpu, RandomClt(cpu), settings).Attribute(Prompt),
            new Attributor(gpu, RandomClt(gpu), settings).Attribute(Prompt), "CLT");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_cross_layer_transcoder_with_its_decoders_on_the_host_gives_the_cpu_graph(bool mapped)
    {
        using var cpu = Load("gpt_neox");
        using var gpu = Load("gpt_neox", device.Backend);
        var settings = new AttributionSettings { BatchSize = 16 };
        var expected = new Attributor(cpu, RandomClt(cpu), settings).Attribute(Prompt);
        var folder = Directory.CreateTempSubdirectory("loupe-host-decoders");
        try
        {
            IMlpReplacement clt = RandomClt(gpu);
            if (mapped)
            {
                CltFiles.SaveCircuitTracer(folder.FullName, (CrossLayerTranscoder)clt);
                clt = CltFiles.LoadMapped(folder.FullName);
            }
            long before = device.Backend.Transfers.BytesToDevice(TransferKind.Weights);
            var onDevice = DeviceMlpReplacement.Upload(clt, device.Backend, DeviceDecoders.ActiveRows);
            Assert.True(onDevice.DecodersOnHost);
            Assert.Equal(DeviceMlpReplacement.UploadBytes(clt, DeviceDecoders.ActiveRows), device.Backend.Transfers.BytesToDevice(TransferKind.Weights) - before);
            AssertSameGraph(expected, new Attributor(gpu, onDevice, settings).Attribute(Prompt), mapped ? "CLT, mapped decoders on the host" : "CLT, decoders on the host");
            (clt as IDisposable)?.Dispose();
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }

    [Fact]
    public void A_graph_copies_the_token_ids_in_and_its_rows_out_once_per_batch()
    {
        using var gpu = Load("llama", device.Backend);
        var tc = FamilyAttributionTests.RandomTranscoders(gpu);
        var weights = DeviceMlpReplacement.Upload(tc, gpu.Backend);
        gpu.Run(TokenBatch.Single(Prompt)); // places the model's weights
        var start = gpu.Backend.Transfers.Snapshot();
        gpu.Run(TokenBatch.Single(Prompt));
        var forward = gpu.Backend.Transfers.Snapshot() - start; // the ids (and positions) of one forward pass
        var attributor = new Attributor(gpu, weights, new AttributionSettings { BatchSize = 8 });
        var before = gpu.Backend.Transfers.Snapshot();
        var graph = attributor.Attribute(Prompt);
        var moved = gpu.Backend.Transfers.Snapshot() - before;
        int L = gpu.Config.NLayers, batches = attributor.Stats!.Batches;
        Console.WriteLine($"device attribution, llama fixture, {batches} batches, {graph.SelectedFeatures.Length} features: {moved}; a forward: {forward}");

        // In: the forward pass's ids (and positions), and the index lists that gather the source tables, one per layer's
        // decoder rows and one per read-out (2L + 1, at setup, never per batch); constants: the logit directions
        // (demeaned W_U columns), once. No activation or gradient goes in.
        Assert.Equal(0, moved.In(TransferKind.Data));
        Assert.Equal(forward.In(TransferKind.Inputs) + 2 * L + 1, moved.In(TransferKind.Inputs));
        Assert.Equal(1, moved.In(TransferKind.Weights));
        // Out: the features' activations (one copy per layer: these dictionaries are narrow, so their dense rows; wide
        // ones send top-k lists), the error and token vectors the graph holds, the top logits (probabilities, ids), and
        // one block of rows per batch; scalars: the forward's, and one finiteness check per pre-activation and activation.
        Assert.Equal(L + 2 + 2 + batches, moved.Out(TransferKind.Data));
        Assert.Equal(forward.Out(TransferKind.Scalars) + 2 * L, moved.Out(TransferKind.Scalars));
        Assert.True(graph.SelectedFeatures.Length > 10);
    }
}
