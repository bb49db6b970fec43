using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe harvest</c> and <c>loupe features build</c> with <c>--device emulated</c>: what the CPU prints and writes.</summary>
[Collection("console")]
public class HarvestDeviceCliTests
{
    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void HarvestOnTheEmulatedDeviceWritesTheCpusShards()
    {
        string root = Directory.CreateTempSubdirectory("loupe-harvest-device").FullName;
        try
        {
            string[] args = ["harvest", "--model", SharedData.Require("models/stories260K"), "--source", "brown:" + SharedData.Require("datasets/brown-corpus"),
                "--hooks", "blocks.2.hook_resid_post", "--context-size", "32", "--max-contexts", "6", "--shard-tokens", "100"]; // two shards
            var cpu = RunLoupe([.. args, "--out", Path.Combine(root, "cpu")]);
            Assert.True(cpu.Code == 0, cpu.Err);
            var gpu = RunLoupe([.. args, "--out", Path.Combine(root, "gpu"), "--device", "emulated"]);
            Assert.True(gpu.Code == 0, gpu.Err);
            Assert.Contains("186 tokens × 1 hooks", cpu.Out); // 6 contexts × 31 tokens (BOS skipped)
            Assert.Contains("186 tokens × 1 hooks", gpu.Out);
            foreach (var file in Directory.GetFiles(Path.Combine(root, "cpu"), "*.safetensors").Select(Path.GetFileName))
            {
                using var a = SafeTensorsFile.Open(Path.Combine(root, "cpu", file!));
                using var b = SafeTensorsFile.Open(Path.Combine(root, "gpu", file!));
                var (x, y) = (a.GetFloat32("blocks.2.hook_resid_post").ToArray(), b.GetFloat32("blocks.2.hook_resid_post").ToArray());
                Assert.Equal(x.Length, y.Length);
                for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-4f * (1 + Math.Abs(x[i])), $"{file}[{i}]: cpu {x[i]}, emulated {y[i]}");
            }
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void FeaturesBuildOnTheEmulatedDevicePrintsWhatTheCpuPrints()
    {
        string model = SharedData.Require("models/stories260K"), brown = SharedData.Require("datasets/brown-corpus");
        string cpuFolder = Directory.CreateTempSubdirectory("loupe-features-cpu").FullName, gpuFolder = Directory.CreateTempSubdirectory("loupe-features-gpu").FullName;
        try
        {
            var dict = new SparseDictionary(SaeShape.Sae(64, 96), new TopKActivation(4));
            dict.Initialize(seed: 9, decoderNorm: 1f);
            foreach (var folder in new[] { cpuFolder, gpuFolder })
                SaeLensFormat.Save(folder, dict, new SaeLensConfig { HookName = "blocks.2.hook_resid_post", ContextSize = 32 });
            string[] args = ["features", "build", "--model", model, "--source", "brown:" + brown, "--max-contexts", "4", "--top", "5", "--window", "3"];
            var cpu = RunLoupe([.. args, "--sae", cpuFolder]);
            Assert.True(cpu.Code == 0, cpu.Err);
            var gpu = RunLoupe([.. args, "--sae", gpuFolder, "--device", "emulated"]);
            Assert.True(gpu.Code == 0, gpu.Err);
            Assert.Contains("96 features × 124 tokens at blocks.2.hook_resid_post", gpu.Out); // 4 contexts × 31 tokens
            using var a = FeatureStore.Open(Path.Combine(cpuFolder, FeatureStoreSchema.DefaultFileName));
            using var b = FeatureStore.Open(Path.Combine(gpuFolder, FeatureStoreSchema.DefaultFileName));
            Assert.Equal(a.DeadFeatures(), b.DeadFeatures());
            for (int f = 0; f < 96; f++)
            {
                Assert.Equal(a.Feature(f).NActive, b.Feature(f).NActive);
                Assert.InRange(b.Feature(f).MaxAct, a.Feature(f).MaxAct - 1e-4 * (1 + a.Feature(f).MaxAct), a.Feature(f).MaxAct + 1e-4 * (1 + a.Feature(f).MaxAct));
            }
        }
        finally
        {
            Directory.Delete(cpuFolder, recursive: true);
            Directory.Delete(gpuFolder, recursive: true);
        }
    }
}
