using System.Text.Json;
using Loupe.Causal.Lens;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe lens train</c>, <c>loupe lens eval</c> and <c>loupe lens --tuned</c> on the real TinyStories model, in-process.</summary>
[Collection("console")]
public sealed class TunedLensCliTests : IDisposable
{
    const string Stories = "models/stories260K";
    readonly string _root = Directory.CreateTempSubdirectory("loupe-cli-tuned").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    string Text()
    {
        string text = Path.Combine(_root, "text.txt");
        File.WriteAllText(text, string.Join(" ", Enumerable.Repeat(
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. " +
            "One day, she saw a big dog in the park. The dog was happy and wagged its tail. Lily and the dog played all day. " +
            "Tim had a red ball. He threw the ball to his friend Sam, and Sam threw it back. They laughed and ran until it was dark.", 4)));
        return text;
    }

    [RequiresSharedFact(Stories)]
    public void Train_then_eval_then_read_beside_the_logit_lens()
    {
        string model = SharedData.Require(Stories), text = Text(), lens = Path.Combine(_root, "lens");
        string[] train = ["lens", "train", "--model", model, "--source", "text:" + text, "--context-size", "16", "--held-out", "4",
            "--steps", "30", "--tokens-per-step", "128", "--checkpoint-every", "10", "--out", lens];
        var (code, stdout, err) = RunLoupe(train);
        Assert.True(code == 0, err);
        Assert.Contains("tuned lens: 5 translators of 64×64", stdout);
        Assert.Contains("held out (4 contexts, 64 tokens)", stdout);
        foreach (var file in new[] { TunedLens.ParamsFile, TunedLens.ConfigFile, TunedLensTraining.CheckpointFile, TunedLensRun.TrainingFile, TunedLensRun.KlChart })
            Assert.True(File.Exists(Path.Combine(lens, file)), file);
        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(lens, TunedLensRun.TrainingFile))))
        {
            var root = json.RootElement;
            Assert.Equal(30, root.GetProperty("steps").GetArrayLength());
            var layers = root.GetProperty("held_out").GetProperty("layers");
            Assert.Equal(5, layers.GetArrayLength());
            foreach (var layer in layers.EnumerateArray())
                Assert.True(layer.GetProperty("tuned_lens_kl").GetDouble() < layer.GetProperty("logit_lens_kl").GetDouble(), layer.ToString());
            Assert.Equal(model, root.GetProperty("args").GetProperty("model").GetString());
        }

        // Again with --resume: already complete, the same lens.
        var before = File.ReadAllBytes(Path.Combine(lens, TunedLens.ParamsFile));
        (code, stdout, err) = RunLoupe([.. train, "--resume"]);
        Assert.True(code == 0, err);
        Assert.Contains("already complete", stdout);
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(lens, TunedLens.ParamsFile)));
        // Other options with --resume: refused by name.
        (code, _, err) = RunLoupe([.. train.Select(a => a == "30" ? "31" : a), "--resume"]);
        Assert.Equal(2, code);
        Assert.Contains("steps=30", err);

        string evaluation = Path.Combine(_root, "eval");
        (code, stdout, err) = RunLoupe("lens", "eval", "--model", model, "--tuned", lens, "--source", "text:" + text, "--context-size", "16", "--out", evaluation);
        Assert.True(code == 0, err);
        Assert.Contains("resid_pre 4", stdout);
        Assert.True(File.Exists(Path.Combine(evaluation, TunedLensRun.EvaluationFile)));

        string read = Path.Combine(_root, "read");
        (code, stdout, err) = RunLoupe("lens", "--model", model, "--prompt", "Once upon a time, there was a little girl named Lily. One day,", "--answer", "Lily",
            "--tuned", lens, "--out", read);
        Assert.True(code == 0, err);
        Assert.Contains("Tuned lens:", stdout);
        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(read, "lens.json"))))
        {
            var logit = json.RootElement.GetProperty("logit_lens");
            var tuned = json.RootElement.GetProperty("tuned_lens");
            Assert.Equal(logit.GetArrayLength(), tuned.GetArrayLength());
            // The final stage is the model's own output in both.
            Assert.Equal(logit[5].GetProperty("answer_logit").GetDouble(), tuned[5].GetProperty("answer_logit").GetDouble());
            Assert.NotEqual(logit[0].GetProperty("answer_logit").GetDouble(), tuned[0].GetProperty("answer_logit").GetDouble());
        }
    }

    [RequiresSharedFact(Stories)]
    public void Bad_arguments_are_refused_by_name()
    {
        string model = SharedData.Require(Stories), text = Text();
        var (code, _, err) = RunLoupe("lens", "train", "--model", model, "--source", "text:" + text, "--context-size", "16", "--held-out", "1000", "--out", Path.Combine(_root, "a"));
        Assert.Equal(2, code);
        Assert.Contains("--held-out 1000 leaves none to train on", err);
        (code, _, err) = RunLoupe("lens", "train", "--model", model, "--source", "text:" + text, "--momentum", "1", "--out", Path.Combine(_root, "b"));
        Assert.Equal(2, code);
        Assert.Contains("--momentum", err);
        (code, _, err) = RunLoupe("lens", "--model", model, "--prompt", "Once upon a time", "--answer-id", "5", "--tuned", Path.Combine(_root, "nowhere"), "--out", Path.Combine(_root, "c"));
        Assert.Equal(2, code);
        Assert.Contains("tuned lens not found", err);
        (code, _, err) = RunLoupe("lens", "eval", "--model", SharedData.TestData(Path.Combine("reference", "gpt2")), "--tuned", Path.Combine(_root, "nowhere"), "--source", "text:" + text, "--out", Path.Combine(_root, "d"));
        Assert.Equal(2, code);
        Assert.Contains("tuned lens not found", err);
    }
}
