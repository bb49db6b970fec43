using Loupe.Causal.Lens;
using Loupe.Models;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Causal.Tests.Devices;

/// <summary>
/// The tuned lens where the model runs on the GPU backend's kernels (emulated on the CPU): reading a lens and training one
/// give the CPU's numbers, and a training step copies nothing but the token ids in and its loss table out.
/// </summary>
public sealed class DeviceTunedLensTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
    const int Answer = 17, Wrong = 42;

    static int[][] Contexts() => [.. TestInputs.ReferenceIds, .. TestInputs.ReferenceIds.Select(r => r.Reverse().ToArray())];

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void Training_and_reading_on_the_device_give_the_cpus_numbers(string arch)
    {
        string folder = SharedData.TestData(Path.Combine("reference", arch));
        using var cpu = ModelLoader.LoadFolder(folder);
        using var gpu = ModelLoader.LoadFolder(folder, device.Backend);
        var options = new TunedLensTrainingOptions { Steps = 3, TokensPerStep = 24, BatchContexts = 2, LearningRateScale = 2 };
        var expected = TunedLensTraining.Train(cpu, Contexts(), options);
        var actual = TunedLensTraining.Train(gpu, Contexts(), options);
        for (int s = 0; s < options.Steps; s++)
            for (int l = 0; l < cpu.Config.NLayers; l++)
                Assert.InRange(Math.Abs(expected.History[s].Kl[l] - actual.History[s].Kl[l]), 0, 1e-4 * (1 + expected.History[s].Kl[l]));
        for (int l = 0; l < cpu.Config.NLayers; l++)
        {
            var (e, a) = (expected.Lens.Weight(l).ToArray(), actual.Lens.Weight(l).ToArray());
            double scale = e.Max(Math.Abs) + 1e-6, worst = e.Zip(a, (x, y) => Math.Abs(x - y)).Max();
            Assert.True(worst <= 1e-3 * scale, $"{arch} translator {l}: max |Δ| {worst} of {scale}");
        }

        var tokens = TokenBatch.FromRows(TestInputs.ReferenceIds);
        var lens = expected.Lens;
        var onCpu = LogitLens.Run(cpu, tokens, Answer, Wrong, position: -1, row: 1, tuned: lens);
        var onDevice = LogitLens.Run(gpu, tokens, Answer, Wrong, position: -1, row: 1, tuned: lens);
        Assert.True(onDevice.Tuned);
        for (int s = 0; s < onCpu.Stages.Length; s++)
        {
            var (e, a) = (onCpu.Stages[s], onDevice.Stages[s]);
            Assert.InRange(Math.Abs(e.AnswerLogit - a.AnswerLogit), 0, 1e-4 * (1 + Math.Abs(e.AnswerLogit)));
            Assert.InRange(Math.Abs(e.AnswerProb - a.AnswerProb), 0, 1e-4 * e.AnswerProb + 1e-7);
            Assert.Equal(e.TopToken, a.TopToken);
        }
        var gridCpu = LogitLens.Grid(cpu, tokens, tuned: lens);
        var gridDevice = LogitLens.Grid(gpu, tokens, tuned: lens);
        for (int s = 0; s < gridCpu.Labels.Length; s++)
            for (int p = 0; p < tokens.Length; p++)
                Assert.InRange(Math.Abs(gridCpu.FinalTopProb[s][p] - gridDevice.FinalTopProb[s][p]), 0, 1e-4);

        var evalCpu = TunedLensEvaluation.Run(cpu, lens, Contexts(), batchContexts: 2);
        var evalDevice = TunedLensEvaluation.Run(gpu, lens, Contexts(), batchContexts: 2);
        for (int l = 0; l < cpu.Config.NLayers; l++)
        {
            Assert.InRange(Math.Abs(evalCpu.Layers[l].TunedLensKl - evalDevice.Layers[l].TunedLensKl), 0, 1e-4 * (1 + evalCpu.Layers[l].TunedLensKl));
            Assert.InRange(Math.Abs(evalCpu.Layers[l].LogitLensKl - evalDevice.Layers[l].LogitLensKl), 0, 1e-4 * (1 + evalCpu.Layers[l].LogitLensKl));
        }
    }

    [Fact]
    public void A_training_step_copies_the_token_ids_in_and_its_sums_out()
    {
        using var gpu = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")), device.Backend);
        gpu.Run(TokenBatch.FromRows(TestInputs.ReferenceIds)); // places the weights
        int L = gpu.Config.NLayers;
        const int steps = 3;
        var before = device.Backend.Transfers.Snapshot();
        TunedLensTraining.Train(gpu, Contexts(), new TunedLensTrainingOptions { Steps = steps, TokensPerStep = 24, BatchContexts = 2 });
        var copies = device.Backend.Transfers.Snapshot() - before;
        // In: the zero translators once (weight and bias per layer); out: one table per step and the trained translators once.
        Assert.True(copies.In(TransferKind.Data) == 2 * L, $"copied in: {copies}");
        Assert.True(copies.Out(TransferKind.Data) == steps + 2 * L, $"copied out: {copies}");
        Assert.True(copies.In(TransferKind.Inputs) > 0, "the token ids go in");
        // The model's own finiteness check of each forward pass's logits (one pass per step here) reads one scalar.
        Assert.True(copies.Out(TransferKind.Scalars) == steps && copies.In(TransferKind.Scalars) == 0, $"scalars: {copies}");
        foreach (var kind in Enum.GetValues<TransferKind>().Where(k => k is not (TransferKind.Data or TransferKind.Inputs or TransferKind.Scalars)))
            Assert.True(copies.In(kind) == 0 && copies.Out(kind) == 0, $"{kind}: {copies}");
    }
}
