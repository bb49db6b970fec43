using System.Globalization;
using System.Text.RegularExpressions;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests.Devices;

/// <summary>
/// The steering verbs — steer, persona, monitor, verbalize, introspect — on the emulated GPU (its kernels run on the CPU)
/// print what they print on the CPU: the same text and greedy tokens, every number to 1e-3 (numbers are printed rounded).
/// </summary>
[Collection("console")]
public partial class SteeringDeviceCliTests
{
    static string Stories => SharedData.Require("models/stories260K");
    static string DataFile(string name) => Path.Combine(SharedData.RepoRoot, "src", "Loupe.Steering", "Data", name);
    static string TempDir() => Directory.CreateTempSubdirectory("loupe-steer-device").FullName;

    /// <summary>Runs the verb on the CPU and on the emulated device (each with its own output folder, at OUT) and compares stdout.</summary>
    static (string Cpu, string Device) RunBoth(params string[] args)
    {
        string cpuOut = TempDir(), deviceOut = TempDir();
        var cpu = RunLoupe([.. args.Select(a => a.Replace("OUT", cpuOut, StringComparison.Ordinal))]);
        Assert.True(cpu.Code == 0, cpu.Err);
        var device = RunLoupe([.. args.Select(a => a.Replace("OUT", deviceOut, StringComparison.Ordinal)), "--device", "emulated"]);
        Assert.True(device.Code == 0, device.Err);
        string expected = cpu.Out.Replace(cpuOut, "OUT", StringComparison.Ordinal), actual = device.Out.Replace(deviceOut, "OUT", StringComparison.Ordinal);
        AssertSamePrint(expected, actual);
        return (cpuOut, deviceOut);
    }

    static void AssertSamePrint(string expected, string actual)
    {
        Assert.Equal(Number().Replace(expected, "#"), Number().Replace(actual, "#"));
        var x = Number().Matches(expected).Select(m => double.Parse(m.Value, CultureInfo.InvariantCulture)).ToArray();
        var y = Number().Matches(actual).Select(m => double.Parse(m.Value, CultureInfo.InvariantCulture)).ToArray();
        for (int i = 0; i < x.Length; i++)
            Assert.True(Math.Abs(x[i] - y[i]) <= 1e-3 * (1 + Math.Abs(x[i])), $"number {i}: cpu {x[i]}, emulated {y[i]}\n--- cpu:\n{expected}\n--- emulated:\n{actual}");
    }

    /// <summary>The first <paramref name="count"/> lines of the happy and sad text lists, in files of their own.</summary>
    static (string Happy, string Sad) FewTexts(int count)
    {
        string texts = TempDir(), happy = Path.Combine(texts, "happy.txt"), sad = Path.Combine(texts, "sad.txt");
        File.WriteAllLines(happy, File.ReadLines(DataFile("happy.txt")).Take(count));
        File.WriteAllLines(sad, File.ReadLines(DataFile("sad.txt")).Take(count));
        return (happy, sad);
    }

    [GeneratedRegex(@"-?\d+(\.\d+)?([eE][-+]?\d+)?")]
    private static partial Regex Number();

    [RequiresSharedFact("models/stories260K")]
    public void SteerOnTheEmulatedDevicePrintsWhatTheCpuPrints()
    {
        var (cpu, device) = RunBoth("steer", "--model", Stories, "--prompt", "Once upon a time", "--hook", "blocks.2.hook_resid_post",
            "--contrast-a", "She was very happy|They laughed and smiled", "--contrast-b", "She was very sad|They cried and frowned",
            "--reduction", "mean", "--coeff", "4", "-n", "8", "-t", "0", "--out", "OUT");
        AssertSamePrint(File.ReadAllText(Path.Combine(cpu, "steer.json")), File.ReadAllText(Path.Combine(device, "steer.json")));
        RunBoth("steer", "--model", Stories, "--prompt", "Once upon a time", "--hook", "blocks.2.hook_resid_post",
            "--contrast-a", "She was very happy", "--contrast-b", "She was very sad", "--project-out", "-n", "5", "-t", "0");
    }

    [RequiresSharedFact("models/stories260K")]
    public void PersonaOnTheEmulatedDevicePrintsWhatTheCpuPrints()
    {
        // A few texts per side and one layer keep the emulated run short; the sweep is greedy, so one seed.
        var (happy, sad) = FewTexts(8);
        var (cpu, device) = RunBoth("persona", "--model", Stories, "--positive", happy, "--negative", sad, "--layer", "3",
            "--prompt", "Once upon a time, there was a little girl named Lily. One day, she", "--coeffs", "-4,4", "--seeds", "1", "-n", "6", "-t", "0",
            "--score-words", $"{DataFile("happy-words.txt")},{DataFile("sad-words.txt")}", "--out", "OUT");
        AssertSamePrint(File.ReadAllText(Path.Combine(cpu, "sweep.json")), File.ReadAllText(Path.Combine(device, "sweep.json")));
    }

    [RequiresSharedFact("models/stories260K")]
    public void MonitorOnTheEmulatedDevicePrintsWhatTheCpuPrints()
    {
        // Every text is a forward pass of its own, each kernel launch costly on the emulated device: 8 texts a side
        // (of 32) still give every layer's held-out AUROC and the threshold, in a quarter of the time.
        var (happy, sad) = FewTexts(8);
        var (trained, _) = RunBoth("monitor", "train", "--model", Stories, "--concept", "sadness", "--positive", sad,
            "--negative", happy, "--recall", "0.75", "--layer", "3", "--out", "OUT/sad.safetensors");
        string file = Path.Combine(trained, "sad.safetensors"); // the CPU's monitor, read on both
        RunBoth("monitor", "read", "--model", Stories, "--monitor", file, "--prompt", "Tom lost his ball. He", "--generate", "12", "--steer", "6");
    }

    [RequiresSharedFact("models/stories260K")]
    public void VerbalizeAndIntrospectOnTheEmulatedDevicePrintWhatTheCpuPrints()
    {
        // Two target layers and one injection depth, a few tokens each: the device path is the same at every layer.
        RunBoth("verbalize", "--model", Stories, "--source-prompt", "Lily loved her cat", "--source-layer", "3", "--layers", "2-3", "--tokens", "3");
        RunBoth("introspect", "--model", Stories, "--words", "dog,ball", "--layers", "0.6", "--strengths", "2", "--tokens", "4", "--out", "OUT");
    }
}
