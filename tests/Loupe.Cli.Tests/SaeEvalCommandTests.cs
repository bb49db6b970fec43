using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe sae eval</c>: metrics files on a real model, and clear errors for dictionaries that do not fit.</summary>
[Collection("console")]
public sealed class SaeEvalCommandTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-sae-eval-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Fixture(string arch) => SharedData.TestData(Path.Combine("reference", arch));

    /// <summary>An exact identity SAE (W_enc = [I, −I], W_dec = [I; −I], ReLU): its reconstruction is x bit for bit.</summary>
    string IdentitySae(int d, string hook)
    {
        var sae = new SparseDictionary(SaeShape.Sae(d, 2 * d), new ReluActivation());
        for (int j = 0; j < d; j++)
        {
            sae.P.WEnc[j * 2 * d + j] = 1;
            sae.P.WEnc[j * 2 * d + d + j] = -1;
            sae.P.WDec[j * d + j] = 1;
            sae.P.WDec[(d + j) * d + j] = -1;
        }
        string folder = Path.Combine(_dir, $"identity-{d}");
        SaeLensFormat.Save(folder, sae, new SaeLensConfig { HookName = hook });
        return folder;
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void EvalWritesMetricsAndTheDensityHistogram()
    {
        string model = SharedData.Require("models/stories260K"), brown = SharedData.Require("datasets/brown-corpus");
        string sae = IdentitySae(64, "blocks.2.hook_resid_post"), output = Path.Combine(_dir, "eval");
        var (code, stdout, stderr) = RunLoupe("sae", "eval", "--model", model, "--sae", sae, "--source", "brown:" + brown,
            "--context-size", "32", "--max-contexts", "6", "--batch-size", "4", "--out", output);
        Assert.True(code == 0, stderr);
        Assert.Contains("loss recovered", stdout);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "eval.json")))!;
        var metrics = json["metrics"]!;
        Assert.Equal("blocks.2.hook_resid_post", (string)metrics["hook"]!);
        Assert.Equal(1.0, (double)metrics["loss_recovered"]!);
        Assert.Equal(0.0, (double)metrics["fvu"]!);
        Assert.Equal(6, (int)metrics["contexts"]!);
        Assert.Equal(6 * 31, (long)metrics["predictions"]!);
        Assert.Equal(128, metrics["feature_density"]!.AsArray().Count);
        Assert.Equal(128, metrics["density_histogram"]!["counts"]!.AsArray().Sum(c => (long)c!));
        Assert.StartsWith("<svg", File.ReadAllText(Path.Combine(output, "density.svg")));
        Assert.Empty(Directory.GetFiles(output, "*.tmp-*"));
    }

    /// <summary>
    /// <c>--device emulated</c>: the same lines as on the CPU, numbers equal up to the last printed digit, and eval.json's
    /// metrics to 1e-4 (relative).
    /// </summary>
    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void EvalOnTheEmulatedDevicePrintsWhatTheCpuPrints()
    {
        string model = SharedData.Require("models/stories260K"), brown = SharedData.Require("datasets/brown-corpus");
        var dict = new SparseDictionary(SaeShape.Sae(64, 96), new TopKActivation(8));
        dict.Initialize(seed: 3, decoderNorm: 1f);
        string sae = Path.Combine(_dir, "topk");
        SaeLensFormat.Save(sae, dict, new SaeLensConfig { HookName = "blocks.2.hook_resid_post" });
        // Each batch is a few passes of many kernel launches on the emulated device: two batches, the second a partial one.
        string[] args = ["sae", "eval", "--model", model, "--sae", sae, "--source", "brown:" + brown, "--context-size", "32", "--max-contexts", "3", "--batch-size", "2"];
        var cpu = RunLoupe([.. args, "--out", Path.Combine(_dir, "cpu")]);
        Assert.True(cpu.Code == 0, cpu.Err);
        var gpu = RunLoupe([.. args, "--out", Path.Combine(_dir, "gpu"), "--device", "emulated"]);
        Assert.True(gpu.Code == 0, gpu.Err);
        static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("wrote ", StringComparison.Ordinal)).ToArray();
        var (cpuLines, gpuLines) = (Lines(cpu.Out), Lines(gpu.Out));
        Assert.Equal(cpuLines.Length, gpuLines.Length);
        Assert.Contains(cpuLines, l => l.Contains("loss recovered", StringComparison.Ordinal));
        for (int i = 0; i < cpuLines.Length; i++)
        {
            var (a, b) = (cpuLines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries), gpuLines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries));
            Assert.True(a.Length == b.Length, $"cpu: {cpuLines[i]}\nemulated: {gpuLines[i]}");
            for (int j = 0; j < a.Length; j++)
                if (double.TryParse(a[j], System.Globalization.CultureInfo.InvariantCulture, out double x) && double.TryParse(b[j], System.Globalization.CultureInfo.InvariantCulture, out double y))
                    Assert.True(Math.Abs(x - y) <= 1.5e-4 + 1e-4 * Math.Abs(x), $"cpu: {cpuLines[i]}\nemulated: {gpuLines[i]}");
                else Assert.True(a[j] == b[j], $"cpu: {cpuLines[i]}\nemulated: {gpuLines[i]}");
        }
        var (m1, m2) = (JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "cpu", "eval.json")))!["metrics"]!, JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "gpu", "eval.json")))!["metrics"]!);
        foreach (var name in new[] { "l0", "fvu", "cosine_similarity", "ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablated", "loss_recovered", "kl_with_sae" })
        {
            double x = (double)m1[name]!, y = (double)m2[name]!;
            Assert.True(Math.Abs(x - y) <= 1e-4 * Math.Abs(x) + 1e-7, $"{name}: cpu {x}, emulated {y}");
        }
        Assert.Equal(m1["dead_features"]!.ToJsonString(), m2["dead_features"]!.ToJsonString());
    }

    [Fact]
    public void AHookThatDoesNotExistIsNamedWithTheClosestOnes()
    {
        string sae = IdentitySae(64, "blocks.1.hook_resid_post");
        var (code, _, stderr) = RunLoupe("sae", "eval", "--model", Fixture("llama"), "--sae", sae, "--hook", "blocks.1.hook_resid_pots",
            "--source", "generate:2", "--out", Path.Combine(_dir, "out"));
        AssertRefused((code, "", stderr));
        Assert.Contains("\"blocks.1.hook_resid_pots\" is not a hook point", stderr);
        Assert.Contains("blocks.1.hook_resid_post", stderr);
    }

    [Fact]
    public void ADictionaryWhoseWidthDoesNotFitTheHookIsRefused()
    {
        string sae = IdentitySae(32, "blocks.1.hook_resid_post");
        var (code, _, stderr) = RunLoupe("sae", "eval", "--model", Fixture("llama"), "--sae", sae,
            "--source", "generate:2", "--out", Path.Combine(_dir, "out"));
        AssertRefused((code, "", stderr));
        Assert.Contains("d_in = 32", stderr);
        Assert.Contains("blocks.1.hook_resid_post", stderr);
        Assert.False(Directory.Exists(Path.Combine(_dir, "out")));
    }

    /// <summary><c>loupe cache --sae</c>: the identity SAE's features are relu(x) and relu(−x) of the cached hook.</summary>
    [Fact]
    public void CacheVerbRecordsFeatureActivationsOfASplicedSae()
    {
        string sae = IdentitySae(64, "blocks.1.hook_resid_post"), output = Path.Combine(_dir, "feats.safetensors");
        var (code, _, stderr) = RunLoupe("cache", "--model", Fixture("llama"), "--tokens", "1,82,87,74,39", "--sae", sae, "--use-error-term",
            "--hooks", "blocks.1.hook_resid_post,*hook_sae_acts_post", "--out", output);
        Assert.True(code == 0, stderr);
        using var file = Loupe.Models.Loading.SafeTensorsFile.Open(output);
        Assert.Equal([1L, 5, 128], file.GetInfo("blocks.1.hook_resid_post.hook_sae_acts_post").Shape);
        var x = file.GetFloat32("blocks.1.hook_resid_post").ToArray();
        var acts = file.GetFloat32("blocks.1.hook_resid_post.hook_sae_acts_post").ToArray();
        for (int r = 0; r < 5; r++)
            for (int j = 0; j < 64; j++)
            {
                Assert.Equal(Math.Max(x[r * 64 + j], 0f), acts[r * 128 + j]);
                Assert.Equal(Math.Max(-x[r * 64 + j], 0f), acts[r * 128 + 64 + j]);
            }
    }

    [Fact]
    public void HelpShowsExamples()
    {
        var (code, stdout, _) = RunLoupe("sae", "eval", "--help");
        Assert.Equal(0, code);
        Assert.Contains("loupe sae eval --model", stdout);
        Assert.Contains("loss recovered", stdout);
    }
}
