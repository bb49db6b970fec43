using Loupe.Dictionaries.Crosscoders;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// Crosscoders with their models on the emulated GPU (ILGPU's CPU accelerator): the rows, the evaluation (spliced runs
/// included) and a feature store equal those of the same models on the CPU backend.
/// </summary>
public sealed class DeviceCrosscoderTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
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
        Assert.True(copies.ToHost.Sum() > 0 && copies.ToDevice.Sum() > 0, $"the hooks and logits come to the host, the reconstructions go back: {copies}");
        for (int s = 0; s < 2; s++) Assert.Equal(onCpu.Sources[s].Fvu, onGpu.Sources[s].Fvu, 1e-4);
        for (int m = 0; m < 2; m++)
        {
            Assert.Equal(onCpu.Models[m].CeClean, onGpu.Models[m].CeClean, 1e-4);
            Assert.Equal(onCpu.Models[m].CeSpliced, onGpu.Models[m].CeSpliced, 1e-4);
            Assert.Equal(onCpu.Models[m].CeZeroAblated, onGpu.Models[m].CeZeroAblated, 1e-4);
        }
        Assert.Equal(onCpu.L0, onGpu.L0, 1e-3);
        for (int i = 0; i < 3; i++)
            if (onCpu.LatentScales[i].ActiveRows > 0) Assert.Equal(onCpu.LatentScales[i].BetaReconOwner, onGpu.LatentScales[i].BetaReconOwner, 1e-3);
    }
}
