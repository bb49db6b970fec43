using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Steering.Monitors;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Steering.Tests.Devices;

/// <summary>
/// Steering edits, monitors, text activations, persona readings and sweeps where the model runs on the GPU backend's
/// kernels (emulated on the CPU): the CPU's numbers to 1e-4 and the same greedy tokens, with only token ids and the
/// directions (once) going in and only picked ids and monitor readings coming out.
/// </summary>
public sealed class DeviceSteeringTests(DeviceSteeringTests.Emulated device) : IClassFixture<DeviceSteeringTests.Emulated>
{
    /// <summary>One emulated backend and the llama fixture loaded onto it (its kernels compile once).</summary>
    public sealed class Emulated : IDisposable
    {
        public GpuBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));
        readonly Lazy<HookedTransformer> _llama;
        readonly Lazy<HookedTransformer> _stories;

        public Emulated()
        {
            _llama = new(() => ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "llama")), Backend));
            _stories = new(() => ModelLoader.LoadFolder(SharedData.Require("models/stories260K"), Backend));
        }

        /// <summary>The llama fixture on the emulated device.</summary>
        public HookedTransformer Llama => _llama.Value;
        /// <summary>stories260K on the emulated device (callers are guarded by RequiresSharedFact).</summary>
        public HookedTransformer Stories => _stories.Value;

        public void Dispose()
        {
            if (_llama.IsValueCreated) _llama.Value.Dispose();
            if (_stories.IsValueCreated) _stories.Value.Dispose();
            Backend.Dispose();
        }
    }

    static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4 * (1 + Math.Abs(expected[i])), $"{what} [{i}]: cpu {expected[i]}, device {actual[i]}");
    }

    static void AssertClose(IReadOnlyList<double> expected, IReadOnlyList<double> actual, string what)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4 * (1 + Math.Abs(expected[i])), $"{what} [{i}]: cpu {expected[i]}, device {actual[i]}");
    }

    static TokenBatch TwoRows() => TokenBatch.FromRows([TestModels.Tokens(7, 1), TestModels.Tokens(7, 2)]);

    public static TheoryData<string, string, int> Edits => new()
    {
        { "add", "blocks.1.hook_resid_post", -1 },
        { "add", "blocks.1.hook_resid_post", 3 },
        { "add", "blocks.0.attn.hook_z", 2 },
        { "project_out", "blocks.1.hook_resid_post", -1 },
        { "project_out", "blocks.2.hook_resid_pre", 4 },
        { "project_out", "blocks.0.attn.hook_z", 0 },
    };

    [Theory]
    [MemberData(nameof(Edits))]
    public void AnEditOnTheDeviceGivesTheCpusLogits(string mode, string hook, int from)
    {
        var cpu = TestModels.Llama;
        int width = ActivationEdits.HookWidth(cpu.Config, hook)!.Value.Width;
        var positions = from < 0 ? SteeringPositions.All : SteeringPositions.From(from);
        var direction = TestModels.RandomVector(width, 5);
        IActivationEdit edit = SteeringRun.Edit(hook, direction, mode == "add" ? 3f : 0.8f, mode == "project_out", positions);
        var expected = cpu.Run(TwoRows(), ActivationEdits.Options(cpu, edit)).Logits;
        var actual = device.Llama.Run(TwoRows(), ActivationEdits.Options(device.Llama, edit)).Logits;
        Assert.False(actual.IsHost);
        var plain = cpu.Run(TwoRows()).Logits;
        Assert.True(Enumerable.Range(0, plain.Length).Any(i => Math.Abs(plain.Span[i] - expected.Span[i]) > 1e-3), "the edit changes the logits");
        AssertClose(expected.Span, actual.ToCpu().Span, $"{mode} at {hook} from {from}");
    }

    static ConceptMonitor Monitor(HookedTransformer model, string hook, int layer) =>
        new("test", new PersonaVector(hook, layer, TestModels.RandomVector(model.Config.DModel, 11), 0.1), 0.9, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);

    static (int[] Tokens, IReadOnlyList<double> Readings) SteerAndWatch(HookedTransformer model, IActivationEdit edit, ConceptMonitor monitor, int newTokens)
    {
        var options = ActivationEdits.Options(model, edit);
        var live = monitor.Watch(options);
        var tokens = model.Generate([TestModels.Tokens(5, 3)], new GenerationOptions(MaxNewTokens: newTokens, Temperature: 0, StopAtEos: false), options)[0];
        return (tokens, live.Projections);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SteeredGreedyGenerationWithAMonitorMatchesTheCpu(bool projectOut)
    {
        const string hook = "blocks.1.hook_resid_post";
        var edit = SteeringRun.Edit(hook, TestModels.RandomVector(64, 7), projectOut ? 1f : 4f, projectOut, SteeringPositions.All);
        var (cpuTokens, cpuReadings) = SteerAndWatch(TestModels.Llama, edit, Monitor(TestModels.Llama, hook, 1), 8);
        var (deviceTokens, deviceReadings) = SteerAndWatch(device.Llama, edit, Monitor(device.Llama, hook, 1), 8);
        Assert.Equal(cpuTokens, deviceTokens);
        Assert.Equal(7, deviceReadings.Count);
        AssertClose(cpuReadings, deviceReadings, "monitor readings");
        var plain = TestModels.Llama.Generate([TestModels.Tokens(5, 3)], new GenerationOptions(MaxNewTokens: 8, Temperature: 0, StopAtEos: false))[0];
        if (!projectOut) Assert.NotEqual(plain, cpuTokens); // the push is strong enough to change the greedy text
    }

    [Fact]
    public void ASteeredGenerationWithAMonitorCopiesOnlyIdsDirectionsAndReadings()
    {
        const string hook = "blocks.1.hook_resid_post";
        const int newTokens = 6;
        var model = device.Llama;
        var edit = new SteeringVector(hook, TestModels.RandomVector(64, 8), 2f);
        var monitor = Monitor(model, hook, 1);
        SteerAndWatch(model, new SteeringVector(hook, TestModels.RandomVector(64, 9), 1f), Monitor(model, hook, 1), 2); // warm-up: model constants

        var before = model.Backend.Transfers.Snapshot();
        long bytesOut = model.Backend.Transfers.BytesToHost(TransferKind.Data), bytesIn = model.Backend.Transfers.BytesToDevice(TransferKind.Weights);
        var (_, readings) = SteerAndWatch(model, edit, monitor, newTokens);
        var first = model.Backend.Transfers.Snapshot() - before;
        Assert.Equal((newTokens - 1) * sizeof(float), model.Backend.Transfers.BytesToHost(TransferKind.Data) - bytesOut); // one float per reading
        Assert.Equal(2 * 64 * sizeof(float), model.Backend.Transfers.BytesToDevice(TransferKind.Weights) - bytesIn); // c·v and v̂
        Assert.Equal(newTokens - 1, readings.Count);
        Assert.True(first.In(TransferKind.Data) == 0, $"activations copied in: {first}");
        Assert.True(first.In(TransferKind.Weights) == 2, $"the edit's and the monitor's directions go in once each: {first}");
        Assert.True(first.Out(TransferKind.Data) == newTokens - 1, $"one reading per generated token fed back: {first}");
        Assert.True(first.Out(TransferKind.Weights) == 0, first.ToString());
        // The generator's own reads: per step the picked id and the logits' finite check, single numbers.
        Assert.True(first.Out(TransferKind.Scalars) <= 2 * newTokens, $"only the picked ids and checks come out: {first}");

        // A second generation with the same edit and monitor: the directions are already on the device.
        before = model.Backend.Transfers.Snapshot();
        SteerAndWatch(model, edit, monitor, newTokens);
        var second = model.Backend.Transfers.Snapshot() - before;
        Assert.True(second.In(TransferKind.Weights) == 0 && second.In(TransferKind.Data) == 0, $"nothing but ids goes in again: {second}");
        Assert.True(second.Out(TransferKind.Data) == newTokens - 1, second.ToString());
    }

    [Theory]
    [InlineData(TokenReduction.LastToken)]
    [InlineData(TokenReduction.MeanOverTokens)]
    public void TextActivationsAndContrastiveDirectionsMatchTheCpu(TokenReduction reduction)
    {
        int[][] a = [TestModels.Tokens(6, 20), TestModels.Tokens(4, 21), TestModels.Tokens(9, 22)];
        int[][] b = [TestModels.Tokens(5, 30), TestModels.Tokens(8, 31)];
        var cpu = ContrastiveActivationAddition.Compute(TestModels.Llama, "blocks.1.hook_resid_post", a, b, reduction, normalize: true);
        var before = device.Backend.Transfers.Snapshot();
        var dev = ContrastiveActivationAddition.Compute(device.Llama, "blocks.1.hook_resid_post", a, b, reduction, normalize: true);
        var copies = device.Backend.Transfers.Snapshot() - before;
        AssertClose(cpu.MeanA, dev.MeanA, "mean A");
        AssertClose(cpu.MeanB, dev.MeanB, "mean B");
        AssertClose(cpu.Vector, dev.Vector, "CAA vector");
        Assert.True(copies.Out(TransferKind.Data) == 2, $"one reduced table per batch comes out: {copies}");
    }

    [Fact]
    public void PersonaExtractionReadingsAndSweepFluencyMatchTheCpu()
    {
        int[][] trait = [.. Enumerable.Range(0, 6).Select(i => TestModels.Tokens(6 + i % 3, 40 + i))];
        int[][] opposite = [.. Enumerable.Range(0, 6).Select(i => TestModels.Tokens(5 + i % 4, 60 + i))];
        var cpu = PersonaVectors.Extract(TestModels.Llama, trait, opposite);
        var dev = PersonaVectors.Extract(device.Llama, trait, opposite);
        Assert.Equal(cpu.Layer, dev.Layer);
        AssertClose(cpu.Vector, dev.Vector, "persona vector");
        AssertClose(cpu.TrainPositive, dev.TrainPositive, "train projections");

        var tokens = TestModels.Tokens(10, 70);
        var cpuReading = cpu.Monitor(TestModels.Llama, tokens);
        var devReading = cpu.Monitor(device.Llama, tokens);
        AssertClose(cpuReading.Projections, devReading.Projections, "per-token projections");
        Assert.Equal(cpuReading.ExpressesTrait, devReading.ExpressesTrait);

        int[] prompt = TestModels.Tokens(5, 71), continuation = TestModels.Tokens(6, 72)[1..];
        AssertClose([CoefficientSweep.MeanLogProb(TestModels.Llama, prompt, continuation)], [CoefficientSweep.MeanLogProb(device.Llama, prompt, continuation)], "mean log-prob");
    }

    [Fact]
    public void AGreedyCoefficientSweepOnTheDeviceWritesTheCpusTokens()
    {
        const string hook = "blocks.2.hook_resid_pre";
        var direction = TestModels.RandomVector(64, 80);
        var options = new SweepOptions(MaxNewTokens: 6, Temperature: 0, Seeds: 1);
        double Score(int[] tokens, string _) => tokens.Length;
        var cpu = CoefficientSweep.Run(TestModels.Llama, TestModels.Tokens(4, 81), [-4f, 0f, 4f], c => new SteeringVector(hook, direction, c), Score, options);
        var dev = CoefficientSweep.Run(device.Llama, TestModels.Tokens(4, 81), [-4f, 0f, 4f], c => new SteeringVector(hook, direction, c), Score, options);
        for (int i = 0; i < cpu.Count; i++)
        {
            Assert.Equal(cpu[i].Samples[0].Tokens, dev[i].Samples[0].Tokens);
            AssertClose([cpu[i].Samples[0].LogProb], [dev[i].Samples[0].LogProb], $"log-prob at c = {cpu[i].Coefficient}");
        }
    }

    [RequiresSharedFact("models/stories260K")]
    public void SteeringStories260KOnTheDeviceGivesTheCpusTokens()
    {
        var cpu = TestModels.Stories;
        var prompt = cpu.Tokenizer!.Encode("Once upon a time, there was a little girl");
        var caa = ContrastiveActivationAddition.Compute(cpu, "blocks.2.hook_resid_post", ["She was very happy and smiled.", "The sun was bright and everyone laughed."],
            ["She was very sad and cried.", "It was dark and everyone was scared."], TokenReduction.MeanOverTokens);
        var onDevice = ContrastiveActivationAddition.Compute(device.Stories, "blocks.2.hook_resid_post", ["She was very happy and smiled.", "The sun was bright and everyone laughed."],
            ["She was very sad and cried.", "It was dark and everyone was scared."], TokenReduction.MeanOverTokens);
        AssertClose(caa.Vector, onDevice.Vector, "stories CAA vector");
        var generation = new GenerationOptions(MaxNewTokens: 20, Temperature: 0, StopAtEos: false);
        foreach (var edit in new IActivationEdit[] { caa.ToSteering(6f, SteeringPositions.NewTokens), caa.ToProjectOut(1f) })
            Assert.Equal(SteeringRun.Continue(cpu, prompt, generation, edit), SteeringRun.Continue(device.Stories, prompt, generation, edit));
    }
}
