using Loupe.Dictionaries.Crosscoders;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// Crosscoders with their models on the emulated GPU (ILGPU's CPU accelerator): the rows, training, the evaluation (spliced
/// runs included) and a feature store equal those of the same models on the CPU backend, and a batch copies only sums back.
/// </summary>
public sealed class DeviceCrosscoderTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>, IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-device-crosscoder-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    const string Hook = "blocks.1.hook_resid_post";
    const int D = 64;

    static HarvestContexts Contexts(int count, int length, int seed)
    {
        var random = new Random(seed);
        return HarvestContexts.FromRows(Enumerable.Range(0, count)
            .Select(_ => Enumerable.Range(0, length).Select(t => t == 0 ? 1 : random.Next(3, 512)).ToArray()).ToArray(), "random tokens", seed);
    }

    [Fact]
    public void Models_on_a_device_give_the_cpus_rows_evaluation_and_losses()
    {
        using var cpuA = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        using var cpuB = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        using var gpuA = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"), device.Backend);
        using var gpuB = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"), device.Backend);
        CrosscoderSource[] sources = [new("gpt2", Hook), new("llama", Hook)];
        var contexts = Contexts(8, 9, seed: 12);
        var cpu = new Dictionary<string, HookedTransformer> { ["gpt2"] = cpuA, ["llama"] = cpuB };
        var gpu = new Dictionary<string, HookedTransformer> { ["gpt2"] = gpuA, ["llama"] = gpuB };

        var rowsCpu = CrosscoderTraining.CollectRows(new PairedActivations(sources, D, cpu), contexts, batchSize: 4);
        var rowsGpu = CrosscoderTraining.CollectRows(new PairedActivations(sources, D, gpu), contexts, batchSize: 4);
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < rowsCpu[s].Length; i++)
                Assert.True(Math.Abs(rowsCpu[s][i] - rowsGpu[s][i]) <= 1e-5f * (1 + Math.Abs(rowsCpu[s][i])), $"source {s} [{i}]: {rowsCpu[s][i]} vs {rowsGpu[s][i]}");

        var (cc, _) = CrosscoderTraining.Train(sources, D, rowsCpu, new CrosscoderTrainingOptions
        {
            DSae = 64, Training = new SaeTrainingOptions { Steps = 100, BatchSize = 32, LearningRate = 5e-3f, SparsityCoefficient = 0.3f, BDecInit = BDecInit.Zeros, Seed = 1 },
        });
        var options = new CrosscoderEvalOptions { BatchSize = 4, LatentScaling = [0, 1, 2] };
        var onCpu = CrosscoderEvaluator.Evaluate(cc, cpu, contexts, options);
        var before = device.Backend.Transfers.Snapshot();
        var onGpu = CrosscoderEvaluator.Evaluate(cc, gpu, contexts, options);
        var copies = device.Backend.Transfers.Snapshot() - before;
        // per batch (2): one packed vector of sums, Latent Scaling's rows, latents and reconstructions; per run (clean,
        // spliced, zero) and model two scalars: the model's own check that its logits are finite, and the CE sum; no hook,
        // logit or reconstruction crosses otherwise
        Assert.True(copies.Out(TransferKind.Data) == 2 * (1 + 3), $"data read back: {copies}");
        Assert.True(copies.Out(TransferKind.Scalars) == 2 * 3 * 2 * 2, $"scalars read back: {copies}");
        Assert.True(copies.In(TransferKind.Data) == 0, $"nothing is uploaded per batch but token ids: {copies}");
        for (int s = 0; s < 2; s++)
        {
            Assert.Equal(onCpu.Sources[s].Fvu, onGpu.Sources[s].Fvu, 1e-4);
            Assert.Equal(onCpu.Sources[s].CosineSimilarity, onGpu.Sources[s].CosineSimilarity, 1e-4);
        }
        Assert.Equal(onCpu.Density, onGpu.Density);
        for (int m = 0; m < 2; m++)
        {
            Assert.Equal(onCpu.Models[m].CeClean, onGpu.Models[m].CeClean, 1e-4);
            Assert.Equal(onCpu.Models[m].CeSpliced, onGpu.Models[m].CeSpliced, 1e-4);
            Assert.Equal(onCpu.Models[m].CeZeroAblated, onGpu.Models[m].CeZeroAblated, 1e-4);
        }
        Assert.Equal(onCpu.L0, onGpu.L0, 1e-3);
        for (int i = 0; i < 3; i++)
            if (onCpu.LatentScales[i].ActiveRows > 0) Assert.Equal(onCpu.LatentScales[i].BetaReconOwner, onGpu.LatentScales[i].BetaReconOwner, 1e-3);

        // without Latent Scaling a batch reads back its sums alone
        before = device.Backend.Transfers.Snapshot();
        var plain = CrosscoderEvaluator.Evaluate(cc, gpu, contexts, options with { LatentScaling = [] });
        copies = device.Backend.Transfers.Snapshot() - before;
        Assert.True(copies.Out(TransferKind.Data) == 2, $"one packed vector per batch: {copies}");
        Assert.Equal(onGpu.Sources[0].Fvu, plain.Sources[0].Fvu, 1e-9);
    }

    // Two sources of width D with input scales 2 and 0.5 (so that the device's model-units weights are exercised).
    static Crosscoder RandomCrosscoder(SaeActivation activation, int seed)
    {
        var dict = new SparseDictionary(SaeShape.Sae(2 * D, 96, applyBDecToInput: false), activation);
        dict.Initialize(seed, decoderNorm: 0.5f);
        var rng = new Random(seed + 1);
        for (int i = 0; i < dict.P.BEnc.Length; i++) dict.P.BEnc[i] = (float)(rng.NextDouble() - 0.6) * 0.2f;
        for (int i = 0; i < dict.P.BDec.Length; i++) dict.P.BDec[i] = (float)(rng.NextDouble() - 0.5) * 0.1f;
        return new Crosscoder([new("gpt2", Hook), new("llama", Hook)], D, dict, [2f, 0.5f]);
    }

    [Fact]
    public void The_model_units_dictionary_encodes_and_decodes_as_the_crosscoder_does_on_host_and_device()
    {
        var cc = RandomCrosscoder(new ReluActivation(), seed: 4);
        var rng = new Random(5);
        const int rows = 7;
        float[][] x = [.. Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, rows * D).Select(_ => (float)(rng.NextDouble() - 0.5) * 3).ToArray())];
        var latents = cc.Encode(x, rows);
        var recon = cc.Decode(latents, rows);
        var folded = cc.InModelUnits();
        var raw = new float[rows * 2 * D];
        for (int r = 0; r < rows; r++)
            for (int s = 0; s < 2; s++) x[s].AsSpan(r * D, D).CopyTo(raw.AsSpan((r * 2 + s) * D));
        var hostLatents = folded.Encode(raw, rows);
        var hostRecon = new float[rows * 2 * D];
        folded.Decode(hostLatents, [], rows, hostRecon);
        var encoder = new DeviceSaeEncoder(device.Backend, folded);
        var onDevice = device.Backend.ToDevice(Tensor.FromArray(raw, rows, 2 * D));
        var (acts, _, _) = encoder.Encode(onDevice, rows);
        var deviceLatents = acts.ToCpu().Span.ToArray();
        var deviceRecon = encoder.Decode(acts, onDevice, rows).ToCpu().Span.ToArray();
        for (int i = 0; i < latents.Length; i++)
        {
            Assert.True(Math.Abs(latents[i] - hostLatents[i]) <= 1e-5f * (1 + Math.Abs(latents[i])), $"host latent {i}");
            Assert.True(Math.Abs(latents[i] - deviceLatents[i]) <= 1e-5f * (1 + Math.Abs(latents[i])), $"device latent {i}");
        }
        for (int r = 0; r < rows; r++)
            for (int s = 0; s < 2; s++)
                for (int j = 0; j < D; j++)
                {
                    float want = recon[s][r * D + j];
                    Assert.True(Math.Abs(want - hostRecon[(r * 2 + s) * D + j]) <= 1e-5f * (1 + Math.Abs(want)), $"host reconstruction {r},{s},{j}");
                    Assert.True(Math.Abs(want - deviceRecon[(r * 2 + s) * D + j]) <= 1e-5f * (1 + Math.Abs(want)), $"device reconstruction {r},{s},{j}");
                }
        Assert.Contains(latents, v => v > 0);
    }

    [Fact]
    public void A_batchtopk_crosscoder_encodes_on_the_device_with_its_threshold_on_f_times_the_code_norm()
    {
        var dict = new SparseDictionary(SaeShape.Sae(2 * D, 96, applyBDecToInput: false), new CrosscoderBatchTopKActivation(4, 2));
        dict.Initialize(6, decoderNorm: 0.5f);
        var rng = new Random(7);
        for (int i = 0; i < dict.P.WDec.Length; i++) dict.P.WDec[i] *= 0.5f + (float)rng.NextDouble(); // unequal code norms
        dict.P.Threshold[0] = 0.15f;
        const int rows = 9;
        var x = Enumerable.Range(0, rows * 2 * D).Select(_ => (float)(rng.NextDouble() - 0.5) * 3).ToArray();
        var host = dict.Encode(x, rows);
        var (acts, _, _) = new DeviceSaeEncoder(device.Backend, dict).Encode(device.Backend.ToDevice(Tensor.FromArray(x, rows, 2 * D)), rows);
        var onDevice = acts.ToCpu().Span.ToArray();
        int kept = 0;
        for (int i = 0; i < host.Length; i++)
        {
            Assert.True(Math.Abs(host[i] - onDevice[i]) <= 1e-5f * (1 + Math.Abs(host[i])), $"latent {i}: host {host[i]}, device {onDevice[i]}");
            if (host[i] > 0) kept++;
        }
        var relu = new SparseDictionary(dict.Shape, new ReluActivation());
        dict.P.CopyTo(relu.P);
        int positive = relu.Encode(x, rows).Count(v => v > 0);
        Assert.InRange(kept, 1, positive - 20); // the threshold removes positive pre-activations
    }

    [Theory]
    [InlineData("relu")]
    [InlineData("batchtopk")]
    public void Training_on_the_device_gives_the_hosts_crosscoder(string architecture)
    {
        var rng = new Random(8);
        var shared = Enumerable.Range(0, 512 * D).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
        float[][] rows = [shared, [.. shared.Select((v, i) => i % D == 3 ? v + 2f : v * 0.8f)]];
        CrosscoderSource[] sources = [new("base", Hook), new("chat", Hook)];
        var options = new CrosscoderTrainingOptions
        {
            DSae = 48, Architecture = architecture, K = 6,
            Training = new SaeTrainingOptions { Steps = 30, BatchSize = 64, LearningRate = 3e-3f, SparsityCoefficient = architecture == "relu" ? 0.3f : 0f, BDecInit = BDecInit.Zeros, Seed = 2 },
        };
        var (host, hostSteps) = CrosscoderTraining.Train(sources, D, rows, options);
        var before = device.Backend.Transfers.Snapshot();
        var (gpu, gpuSteps) = CrosscoderTraining.Train(sources, D, rows, options, backend: device.Backend);
        var copies = device.Backend.Transfers.Snapshot() - before;
        Assert.True(copies.In(TransferKind.Data) >= 30 && copies.Out(TransferKind.Data) >= 30, $"the steps ran on the device: {copies}");
        for (int t = 0; t < hostSteps.Count; t++) Assert.Equal(hostSteps[t].Loss, gpuSteps[t].Loss, 2e-3 * (1 + Math.Abs(hostSteps[t].Loss)));
        Assert.Equal(host.InputScales, gpu.InputScales);
        Assert.Equal(host.Architecture, gpu.Architecture);
        var (hp, gp) = (host.Dictionary.P, gpu.Dictionary.P);
        DeviceTrainingChecks.CloseArrays(hp.WEnc, gp.WEnc, 1e-3, "W_enc");
        DeviceTrainingChecks.CloseArrays(hp.WDec, gp.WDec, 1e-3, "W_dec");
        DeviceTrainingChecks.CloseArrays(hp.BDec, gp.BDec, 1e-3, "b_dec");
        if (architecture == "batchtopk")
        {
            Assert.True(host.BatchTopKThreshold > 0);
            Assert.Equal(host.BatchTopKThreshold, gpu.BatchTopKThreshold, 1e-3 * host.BatchTopKThreshold);
            DeviceTrainingChecks.CloseArrays(hp.LogThreshold, gp.LogThreshold, 1e-3, "folded thresholds");
        }
    }

    [Fact]
    public void A_feature_store_built_on_the_device_equals_the_cpus()
    {
        using var cpuA = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        using var cpuB = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        using var gpuA = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"), device.Backend);
        using var gpuB = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"), device.Backend);
        var cc = RandomCrosscoder(new ReluActivation(), seed: 9);
        var contexts = Contexts(6, 9, seed: 13);
        Directory.CreateDirectory(_dir);
        var options = new Loupe.Dictionaries.Features.FeatureBuildOptions { TopK = 3, Window = 2, CheckpointSeconds = null };
        string cpuDb = Path.Combine(_dir, "cpu.db"), gpuDb = Path.Combine(_dir, "gpu.db");
        CrosscoderFeatures.Build(cc, new PairedActivations(cc.Sources, D, new Dictionary<string, HookedTransformer> { ["gpt2"] = cpuA, ["llama"] = cpuB }), contexts, cpuDb, options);
        var before = device.Backend.Transfers.Snapshot();
        CrosscoderFeatures.Build(cc, new PairedActivations(cc.Sources, D, new Dictionary<string, HookedTransformer> { ["gpt2"] = gpuA, ["llama"] = gpuB }), contexts, gpuDb, options);
        var copies = device.Backend.Transfers.Snapshot() - before;
        Assert.True(copies.In(TransferKind.Data) == 0, $"no hook goes to the host and back: {copies}");
        using var a = Loupe.Dictionaries.Features.FeatureStore.Open(cpuDb);
        using var b = Loupe.Dictionaries.Features.FeatureStore.Open(gpuDb);
        int live = 0;
        for (int latent = 0; latent < cc.DSae; latent++)
        {
            var (fa, fb) = (a.Feature(latent), b.Feature(latent));
            Assert.Equal(fa.NActive, fb.NActive);
            Assert.Equal(fa.MaxAct, fb.MaxAct, 1e-4 * (1 + fa.MaxAct));
            if (fa.NActive == 0) continue;
            live++;
            var (ea, eb) = (a.Examples(latent), b.Examples(latent));
            Assert.Equal((ea[0].ContextId, ea[0].Position), (eb[0].ContextId, eb[0].Position));
        }
        Assert.True(live > 10, $"{live} latents fired");
    }
}
