using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe monitor train / read</c> on stories260K: figures printed, the file written and read back, live readings flag a steered generation.</summary>
[Collection("console")]
public class MonitorCliTests
{
    [RequiresSharedFact("models/stories260K")]
    public void Monitor_train_then_read_flags_a_steered_generation()
    {
        string model = SharedData.Require("models/stories260K"), dir = Directory.CreateTempSubdirectory("loupe-monitor").FullName;
        string data = Path.Combine(SharedData.RepoRoot, "src", "Loupe.Steering", "Data"), file = Path.Combine(dir, "sad.safetensors");
        var run = RunLoupe(["monitor", "train", "--model", model, "--concept", "sadness", "--positive", Path.Combine(data, "sad.txt"),
            "--negative", $"{Path.Combine(data, "happy.txt")},{SharedData.TestData(Path.Combine("monitors", "neutral.txt"))}", "--recall", "0.75", "--layer", "3",
            "--calibration", SharedData.TestData(Path.Combine("monitors", "openings.txt")), "--max-fpr", "0.001", "--out", file]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("held out: AUROC", run.Out);
        Assert.Contains("calibration: 40 ordinary generations", run.Out);
        Assert.Equal(40, Loupe.Steering.Monitors.ConceptMonitor.Load(file).CalibrationGenerations);
        Assert.True(File.Exists(file));
        run = RunLoupe(["monitor", "read", "--model", model, "--monitor", file, "--prompt", "Tom lost his ball. He", "--generate", "12", "--steer", "6"]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("steered × 6: live mean", run.Out);
        Assert.Contains("FLAGGED", run.Out);
        string[] train = ["monitor", "train", "--model", model, "--concept", "x", "--positive", Path.Combine(data, "sad.txt"), "--negative", Path.Combine(data, "happy.txt"), "--out", file];
        AssertRefused(RunLoupe([.. train, "--max-fpr", "1.5"]), "--max-fpr");
        AssertRefused(RunLoupe([.. train, "--calibration", SharedData.TestData(Path.Combine("monitors", "openings.txt")), "--calibration-tokens", "1"]), "--calibration-tokens");
        AssertRefused(RunLoupe([.. train, "--calibration", Path.Combine(dir, "absent.txt")]), "--calibration");
        AssertRefused(RunLoupe(["monitor", "read", "--model", model, "--monitor", Path.Combine(dir, "absent.safetensors"), "--prompt", "x"]), "--monitor");
    }
}
