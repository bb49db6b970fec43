using System.Diagnostics;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe sae train</c> and <c>loupe harvest</c>: outputs, errors, and resuming after a real kill.</summary>
[Collection("console")]
public class SaeTrainCommandTests : IDisposable
{
    const string Model = "models/stories260K";
    const string Brown = "datasets/brown-corpus";
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-sae-cli-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { if (Directory.Exists(_dir)) Directory.Delete(_dir, true); }
    string Sub(string name) => Path.Combine(_dir, name);

    string[] HarvestArgs(string output, int contexts, int shardTokens) =>
    [
        "harvest", "--model", SharedData.Require(Model), "--source", "brown:" + SharedData.Require(Brown),
        "--hooks", "blocks.2.hook_resid_post", "--context-size", "64", "--max-contexts", contexts.ToString(),
        "--shard-tokens", shardTokens.ToString(), "--out", output,
    ];

    static string[] TrainArgs(string store, string output, int steps) =>
    [
        "sae", "train", "--activations", store, "--architecture", "topk", "--k", "8", "--d-sae", "256",
        "--steps", steps.ToString(), "--batch-size", "256", "--lr", "1e-3", "--checkpoint-every", "25", "--dead-window", "5000",
        "--normalize", "--seed", "3", "--out", output,
    ];

    [RequiresSharedFact(Model, Brown)]
    public void TrainWritesASaeLensDictionaryForTheHarvestedHook()
    {
        var (code, _, err) = RunLoupe(HarvestArgs(Sub("acts"), 48, 1000));
        Assert.True(code == 0, err);
        (code, var stdout, err) = RunLoupe(TrainArgs(Sub("acts"), Sub("sae"), 60));
        Assert.True(code == 0, err);
        Assert.Contains("topk d_in 64 → d_sae 256", stdout);
        var (dict, cfg) = DictionaryFile.Load(Sub("sae"));
        Assert.Equal("blocks.2.hook_resid_post", cfg.HookName);
        Assert.Equal(2, cfg.HookLayer);
        Assert.Equal(256, dict.Shape.DSae);
        Assert.Equal(60, SaeTrainingRun.ReadLog(Sub("sae")).Count);
        Assert.True(File.Exists(Path.Combine(Sub("sae"), SaeTrainingRun.CheckpointFile)));

        // a second run into the same folder must not silently overwrite it
        (code, _, err) = RunLoupe(TrainArgs(Sub("acts"), Sub("sae"), 60));
        AssertRefused((code, "", err));
        Assert.Contains("--resume", err);
    }

    [RequiresSharedFact(Model, Brown)]
    public void MatryoshkaTrainsFromAHarvestAndItsLevelsAreCheckedByName()
    {
        var (code, _, err) = RunLoupe(HarvestArgs(Sub("acts"), 32, 1000));
        Assert.True(code == 0, err);
        string[] Train(string output, params string[] extra) =>
            ["sae", "train", "--activations", Sub("acts"), "--architecture", "matryoshka_batchtopk", "--k", "8", "--d-sae", "256",
             "--steps", "20", "--batch-size", "128", .. extra, "--out", output];
        (code, var stdout, err) = RunLoupe(Train(Sub("m"), "--matryoshka-widths", "16,64"));
        Assert.True(code == 0, err);
        Assert.Contains("matryoshka_batchtopk (levels [16, 64, 256]) d_in 64 → d_sae 256", stdout);
        var (dict, _) = DictionaryFile.Load(Sub("m"));
        Assert.IsType<JumpReluActivation>(dict.Activation); // as SAELens saves a finished one
        Assert.Contains("\"matryoshka_widths\"", File.ReadAllText(Path.Combine(Sub("m"), SaeLensFormat.ConfigFile)));
        // sae eval reads the levels back from cfg.json and measures each prefix alone (or the prefixes asked for)
        string[] Eval(string output, params string[] extra) =>
            ["sae", "eval", "--model", SharedData.Require(Model), "--sae", Sub("m"), "--source", "brown:" + SharedData.Require(Brown),
             "--context-size", "32", "--max-contexts", "4", .. extra, "--out", output];
        (code, stdout, err) = RunLoupe(Eval(Sub("eval")));
        Assert.True(code == 0, err);
        Assert.Contains("latents [0, 16) alone", stdout);
        Assert.Contains("latents [0, 64) alone", stdout);
        Assert.Contains("\"levels\"", File.ReadAllText(Path.Combine(Sub("eval"), "eval.json")));
        (code, stdout, err) = RunLoupe(Eval(Sub("eval2"), "--levels", "100", "--level-losses"));
        Assert.True(code == 0, err);
        Assert.Contains("latents [0, 100) alone", stdout);
        Assert.Contains("loss recovered", stdout.Split('\n').Single(l => l.Contains("latents [0, 100) alone", StringComparison.Ordinal)));
        Assert.DoesNotContain("latents [0, 16) alone", stdout);
        (code, _, err) = RunLoupe(Eval(Sub("eval3"), "--levels", "100,50"));
        AssertRefused((code, "", err));
        Assert.Contains("--levels", err);

        foreach (var (args, expected) in new[]
        {
            (Train(Sub("m1")), "--matryoshka-widths"),
            (Train(Sub("m2"), "--matryoshka-widths", "64,16"), "strictly increasing"),
            (Train(Sub("m3"), "--matryoshka-widths", "16,512"), "[1, d_sae = 256]"),
            (Train(Sub("m4"), "--matryoshka-widths", "16,x"), "--matryoshka-widths"),
            (Train(Sub("m5"), "--matryoshka-widths", "256"), "at least one width below d_sae = 256"),
        })
        {
            (code, _, err) = RunLoupe(args);
            AssertRefused((code, "", err));
            Assert.Contains(expected, err);
        }
        (code, _, err) = RunLoupe("sae", "train", "--activations", Sub("acts"), "--architecture", "topk", "--matryoshka-widths", "16", "--out", Sub("m6"));
        AssertRefused((code, "", err));
        Assert.Contains("--architecture matryoshka_batchtopk", err);
    }

    [RequiresSharedFact(Model, Brown)]
    public void SkipTranscoderFromAHarvestOfTheMlpInputAndOutputEvaluatesSpliced()
    {
        var (code, _, err) = RunLoupe("harvest", "--model", SharedData.Require(Model), "--source", "brown:" + SharedData.Require(Brown),
            "--hooks", "blocks.1.ln2.hook_normalized,blocks.1.hook_mlp_out", "--context-size", "64", "--max-contexts", "32", "--out", Sub("tc-acts"));
        Assert.True(code == 0, err);
        (code, var stdout, err) = RunLoupe("sae", "train", "--activations", Sub("tc-acts"), "--hook", "blocks.1.ln2.hook_normalized",
            "--target-hook", "blocks.1.hook_mlp_out", "--skip", "--architecture", "topk", "--k", "8", "--d-sae", "128",
            "--steps", "30", "--batch-size", "128", "--out", Sub("tc"));
        Assert.True(code == 0, err);
        Assert.Contains("d_in 64 → d_sae 128 → d_out 64", stdout);
        var (dict, cfg) = DictionaryFile.Load(Sub("tc"));
        Assert.True(dict.Shape.Skip);
        Assert.Equal(("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"), (cfg.HookName, cfg.HookNameOut));

        (code, stdout, err) = RunLoupe("sae", "eval", "--model", SharedData.Require(Model), "--sae", Sub("tc"), "--source", "brown:" + SharedData.Require(Brown),
            "--context-size", "64", "--max-contexts", "8", "--out", Sub("tc-eval"));
        Assert.True(code == 0, err);
        Assert.Contains("blocks.1.ln2.hook_normalized → blocks.1.hook_mlp_out", stdout);
        Assert.True(File.Exists(Path.Combine(Sub("tc-eval"), "eval.json")));
    }

    [RequiresSharedFact(Model, Brown)]
    public void BadInputsAreClearErrors()
    {
        var (code, _, err) = RunLoupe("sae", "train", "--activations", Sub("nothing-here"), "--out", Sub("o"));
        AssertRefused((code, "", err));
        Assert.Contains("nothing-here", err);

        (code, _, err) = RunLoupe(HarvestArgs(Sub("acts"), 16, 1000));
        Assert.True(code == 0, err);
        (code, _, err) = RunLoupe("sae", "train", "--activations", Sub("acts"), "--hook", "blocks.9.hook_resid_post", "--out", Sub("o"));
        AssertRefused((code, "", err));
        Assert.Contains("blocks.9.hook_resid_post", err);
        Assert.Contains("blocks.2.hook_resid_post", err); // what the harvest does hold

        (code, _, err) = RunLoupe("sae", "train", "--model", SharedData.Require(Model), "--source", "brown:" + SharedData.Require(Brown),
            "--hook", "blocks.2.hook_resid_pots", "--max-contexts", "8", "--out", Sub("o"));
        AssertRefused((code, "", err));
        Assert.Contains("blocks.2.hook_resid_pots", err);
        Assert.Contains("is not a hook point", err);

        (code, _, err) = RunLoupe("sae", "train", "--out", Sub("o"));
        Assert.Equal(2, code);
        Assert.Contains("--activations", err);

        // a corrupt shard is named
        var shard = Directory.GetFiles(Sub("acts"), "shard-*.safetensors").First();
        var bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes.AsSpan(0, bytes.Length / 2).ToArray());
        (code, _, err) = RunLoupe(TrainArgs(Sub("acts"), Sub("o2"), 10));
        AssertRefused((code, "", err));
        Assert.Contains(Path.GetFileName(shard), err);
        Assert.False(File.Exists(Path.Combine(Sub("o2"), SaeLensFormat.WeightsFile)));
    }

    [RequiresSharedFact(Model, Brown)]
    public void TrainOnTheFlyFromTheModelWithoutTouchingDisk()
    {
        var (code, stdout, err) = RunLoupe("sae", "train", "--model", SharedData.Require(Model), "--source", "brown:" + SharedData.Require(Brown),
            "--hook", "blocks.2.hook_resid_post", "--context-size", "64", "--max-contexts", "32", "--contexts-per-window", "8",
            "--architecture", "standard", "--sparsity", "1", "--d-sae", "128", "--steps", "20", "--batch-size", "128", "--out", Sub("fly"));
        Assert.True(code == 0, err);
        Assert.Contains("standard d_in 64 → d_sae 128", stdout);
        Assert.Equal("blocks.2.hook_resid_post", DictionaryFile.Load(Sub("fly")).Config.HookName);
    }

    // ---- killing a real child process and resuming ----

    static Process StartLoupe(IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "loupe.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    static void RunToEnd(IEnumerable<string> args)
    {
        using var p = StartLoupe(args);
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(3)), "loupe did not finish in 3 minutes");
        Assert.Equal(0, p.ExitCode);
    }

    /// <summary>Starts loupe, kills it (SIGKILL) as soon as <paramref name="ready"/> holds, and checks it had not finished.</summary>
    static void KillWhen(IEnumerable<string> args, Func<bool> ready)
    {
        using var p = StartLoupe(args);
        var clock = Stopwatch.StartNew();
        while (!ready())
        {
            Assert.False(p.HasExited, "loupe finished before it could be killed: make the job longer");
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(2), "loupe never reached the point to kill it at");
            Thread.Sleep(5);
        }
        Assert.False(p.HasExited, "loupe finished before it could be killed: make the job longer");
        p.Kill(entireProcessTree: true);
        p.WaitForExit();
    }

    static void AssertSameFiles(string expected, string actual, string pattern)
    {
        var want = Directory.GetFiles(expected, pattern).Select(Path.GetFileName).Order().ToArray();
        var got = Directory.GetFiles(actual, pattern).Select(Path.GetFileName).Order().ToArray();
        Assert.Equal(want, got);
        Assert.NotEmpty(want);
        foreach (var f in want)
            Assert.True(File.ReadAllBytes(Path.Combine(expected, f!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(actual, f!))), $"{f} differs after kill + resume");
    }

    [RequiresSharedFact(Model, Brown)]
    public void KilledHarvestResumesToTheSameShards()
    {
        var args = HarvestArgs(Sub("whole"), 240, 630);
        RunToEnd(args);
        string killed = Sub("killed");
        KillWhen(HarvestArgs(killed, 240, 630), () => Directory.Exists(killed) && Directory.GetFiles(killed, "shard-*.safetensors").Length >= 2);
        Assert.True(HarvestManifest.Load(killed) is { Complete: false }, "the killed harvest should be incomplete");
        RunToEnd(HarvestArgs(killed, 240, 630));
        AssertSameFiles(Sub("whole"), killed, "shard-*.safetensors");
        Assert.Equal(File.ReadAllText(Path.Combine(Sub("whole"), HarvestManifest.FileName)), File.ReadAllText(Path.Combine(killed, HarvestManifest.FileName)));
        Assert.Empty(Directory.GetFiles(killed, "*.tmp-*"));
    }

    [RequiresSharedFact(Model, Brown)]
    public void KilledTrainingResumesToTheSameFinalCheckpoint()
    {
        var (code, _, err) = RunLoupe(HarvestArgs(Sub("acts"), 64, 1000));
        Assert.True(code == 0, err);
        RunToEnd(TrainArgs(Sub("acts"), Sub("whole"), 2500));
        string killed = Sub("killed");
        KillWhen(TrainArgs(Sub("acts"), killed, 2500), () => File.Exists(Path.Combine(killed, SaeTrainingRun.CheckpointFile)));
        Assert.False(File.Exists(Path.Combine(killed, SaeLensFormat.WeightsFile)), "the killed run should not have finished");
        RunToEnd([.. TrainArgs(Sub("acts"), killed, 2500), "--resume"]);
        AssertSameFiles(Sub("whole"), killed, "*.safetensors"); // checkpoint.safetensors and sae_weights.safetensors
        Assert.Equal(File.ReadAllText(Path.Combine(Sub("whole"), SaeTrainingRun.LogFile)), File.ReadAllText(Path.Combine(killed, SaeTrainingRun.LogFile)));
    }
}
