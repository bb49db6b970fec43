using Loupe.Cli.Commands;
using Loupe.Dictionaries.Sae;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// <c>loupe sae train --device emulated</c> (the GPU kernels on the CPU) writes the dictionary the CPU run writes, for every
/// architecture; an architecture without device kernels falls back to the CPU under <c>LOUPE_DEVICE</c> and is refused under
/// an explicit <c>--device</c>.
/// </summary>
[Collection("console")]
public class SaeTrainDeviceTests : IDisposable
{
    const string Model = "models/stories260K";
    const string Brown = "datasets/brown-corpus";
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-sae-device-cli-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { if (Directory.Exists(_dir)) Directory.Delete(_dir, true); }
    string Sub(string name) => Path.Combine(_dir, name);

    static void CloseArrays(float[] expected, float[] actual, double relative, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = expected.Length == 0 ? 0 : expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= relative * Math.Max(scale, 1e-12),
                $"{what}[{i}]: cpu {expected[i]:R}, emulated {actual[i]:R} (allowed {relative:G2} × {scale:G4})");
    }

    [RequiresSharedTheory(Model, Brown)]
    [InlineData("topk")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    public void TrainOnTheEmulatedDeviceWritesWhatTheCpuWrites(string architecture)
    {
        // Six steps (a checkpoint written at step 4) over one window of 8 contexts: each
        // step is many kernel launches, the emulated device's cost.
        string[] Args(string output) =>
        [
            "sae", "train", "--model", SharedData.Require(Model), "--source", "brown:" + SharedData.Require(Brown),
            "--hook", "blocks.2.hook_resid_post", "--context-size", "64", "--max-contexts", "8", "--contexts-per-window", "8",
            "--architecture", architecture, "--k", "8", "--sparsity", "0.05", "--d-sae", "128", "--steps", "6", "--batch-size", "128",
            "--lr", "1e-3", "--dead-window", "256", "--normalize", "--seed", "5", "--checkpoint-every", "4", "--out", output,
        ];
        var (code, stdout, err) = RunLoupe(Args(Sub("cpu")));
        Assert.True(code == 0, err);
        (code, var deviceOut, err) = RunLoupe([.. Args(Sub("emulated")), "--device", "emulated"]);
        Assert.True(code == 0, err);
        Assert.Contains($"{architecture} d_in 64 → d_sae 128", deviceOut);

        var (cpu, cpuCfg) = DictionaryFile.Load(Sub("cpu"));
        var (device, deviceCfg) = DictionaryFile.Load(Sub("emulated"));
        Assert.Equal(cpuCfg.HookName, deviceCfg.HookName);
        // a BatchTopK dictionary is written for inference as SAELens does: a JumpReLU whose θ is the learned threshold
        Assert.Equal(architecture == "batchtopk" ? "jumprelu" : architecture, device.Architecture);
        if (architecture == "batchtopk") Assert.True(cpu.P.LogThreshold[0] > float.NegativeInfinity, "the inference threshold was learned");
        Assert.Equal(6, SaeTrainingRun.ReadLog(Sub("emulated")).Count);
        CloseArrays(cpu.P.WEnc, device.P.WEnc, 2e-3, "W_enc");
        CloseArrays(cpu.P.BEnc, device.P.BEnc, 2e-3, "b_enc");
        CloseArrays(cpu.P.WDec, device.P.WDec, 2e-3, "W_dec");
        CloseArrays(cpu.P.BDec, device.P.BDec, 2e-3, "b_dec");
        CloseArrays(cpu.P.LogThreshold, device.P.LogThreshold, 2e-3, "log_threshold");
        CloseArrays(cpu.P.Threshold, device.P.Threshold, 2e-3, "threshold");
    }

    /// <summary>An architecture outside the four built in: it has no device kernels.</summary>
    sealed class SquareActivation : SaeActivation
    {
        public override string Architecture => "square";
        public override bool UnitNormDecoder => false;
        public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
        {
            for (int i = 0; i < batch * dSae; i++) acts[i] = pre[i] * pre[i];
        }
        public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
            Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g)
        {
            for (int i = 0; i < batch * dSae; i++) dPre[i] += 2 * pre[i] * dActs[i];
        }
    }

    [Fact]
    public void AnArchitectureWithoutDeviceKernelsFallsBackUnderLoupeDeviceAndIsRefusedUnderTheOption()
    {
        Environment.SetEnvironmentVariable("LOUPE_DEVICE", "emulated");
        try
        {
            CliSupport.ChooseDevice(null, "sae train");
            Assert.True(CliSupport.DictionaryBackendFor(new SquareActivation()).Device.IsCpu, "LOUPE_DEVICE alone: the CPU, with a note");
            Assert.Equal(DeviceKind.Emulated, CliSupport.DictionaryBackendFor(new JumpReluActivation()).Device.Kind);
            Assert.Equal(DeviceKind.Emulated, CliSupport.DictionaryBackendFor(new BatchTopKActivation(4)).Device.Kind);

            CliSupport.ChooseDevice("emulated", "sae train");
            var e = Assert.Throws<InputError>(() => CliSupport.DictionaryBackendFor(new SquareActivation()));
            Assert.Contains("--device", e.Message);
            Assert.Contains("square", e.Message);
            Assert.Equal(DeviceKind.Emulated, CliSupport.DictionaryBackendFor(new TopKActivation(4)).Device.Kind);

            CliSupport.ChooseDevice("cpu", "sae train");
            Assert.Same(CpuBackend.Instance, CliSupport.DictionaryBackendFor(new SquareActivation()));
        }
        finally
        {
            Environment.SetEnvironmentVariable("LOUPE_DEVICE", null);
            CliSupport.ChooseDevice(null, "");
        }
    }
}
