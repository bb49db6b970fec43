using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe clt eval --device emulated</c>: the metrics the CPU writes (loss recovered, per-layer variance and L0).</summary>
[Collection("console")]
public class CltEvalDeviceCliTests
{
    [RequiresSharedFact("models/stories260K")]
    public void Clt_eval_on_the_emulated_device_writes_the_cpus_metrics()
    {
        string model = SharedData.Require("models/stories260K"), root = Directory.CreateTempSubdirectory("loupe-clt-eval-device").FullName;
        try
        {
            var clt = new CrossLayerTranscoder(new CltShape(5, 64, 32, 64), new ReluActivation());
            clt.Initialize(seed: 4, decoderNorm: 0.3f);
            string folder = Path.Combine(root, "clt"), text = Path.Combine(root, "text.txt");
            CltFiles.Save(folder, clt);
            File.WriteAllText(text, "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. " +
                "One day, she saw a big dog in the park. The dog was happy and wagged its tail. Lily and the dog played all day.");
            string[] args = ["clt", "eval", "--model", model, "--transcoders", folder, "--source", "text:" + text, "--context-size", "16", "--batch-size", "8"];
            var cpu = RunLoupe([.. args, "--out", Path.Combine(root, "cpu")]);
            Assert.True(cpu.Code == 0, cpu.Err);
            var gpu = RunLoupe([.. args, "--out", Path.Combine(root, "gpu"), "--device", "emulated"]);
            Assert.True(gpu.Code == 0, gpu.Err);
            Assert.Contains("loss recovered", gpu.Out);
            var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cpu", "eval.json")))!;
            var actual = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "gpu", "eval.json")))!;
            int compared = Compare(expected, actual, "");
            Assert.True(compared >= 12, $"{compared} numbers compared");
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [RequiresSharedFact("models/stories260K")]
    public void Clt_eval_with_mapped_decoders_writes_the_metrics_of_decoders_in_memory_on_the_cpu_and_the_emulated_device()
    {
        string model = SharedData.Require("models/stories260K"), root = Directory.CreateTempSubdirectory("loupe-clt-eval-mapped").FullName;
        try
        {
            var (clt, args) = MappedEvalSetup(model, root, seed: 6);
            var memory = RunLoupe([.. args, "--out", Path.Combine(root, "memory"), "--decoders", "memory"]);
            Assert.True(memory.Code == 0, memory.Err);
            Assert.Contains("read into memory", memory.Err);
            var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "memory", "eval.json")))!;
            foreach (var device in new[] { "cpu", "emulated" })
            {
                var mapped = RunLoupe([.. args, "--out", Path.Combine(root, device), "--decoders", "mapped", "--device", device]);
                Assert.True(mapped.Code == 0, mapped.Err);
                Assert.Contains("left mapped", mapped.Err);
                var actual = JsonNode.Parse(File.ReadAllText(Path.Combine(root, device, "eval.json")))!;
                Assert.True(Compare(expected, actual, "") >= 12);
            }
            var bad = RunLoupe([.. args, "--out", Path.Combine(root, "bad"), "--decoders", "lazy"]);
            Assert.NotEqual(0, bad.Code);
            Assert.Contains("--decoders", bad.Err);
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [RequiresSharedFact("models/stories260K")]
    public void Clt_eval_with_the_decoders_left_on_the_host_writes_the_cpus_metrics()
    {
        string model = SharedData.Require("models/stories260K"), root = Directory.CreateTempSubdirectory("loupe-clt-eval-active").FullName;
        try
        {
            var (clt, args) = MappedEvalSetup(model, root, seed: 8);
            var cpu = RunLoupe([.. args, "--out", Path.Combine(root, "cpu")]);
            Assert.True(cpu.Code == 0, cpu.Err);
            var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cpu", "eval.json")))!;
            foreach (var decoders in new[] { "memory", "mapped" })
            {
                var active = RunLoupe([.. args, "--out", Path.Combine(root, decoders), "--device", "emulated", "--decoders", decoders, "--device-decoders", "active"]);
                Assert.True(active.Code == 0, active.Err);
                Assert.Contains($"their decoders ({ByteSizes.Format(4 * clt.Shape.DecoderElements)} as float32) stay {(decoders == "mapped" ? "mapped" : "in host memory")}, each pass uploading its active features' rows", active.Err);
                Assert.True(Compare(expected, JsonNode.Parse(File.ReadAllText(Path.Combine(root, decoders, "eval.json"))), "") >= 12);
            }
            var whole = RunLoupe([.. args, "--out", Path.Combine(root, "whole"), "--device", "emulated", "--device-decoders", "whole"]);
            Assert.True(whole.Code == 0, whole.Err);
            Assert.Contains("the transcoders' weights on emulated: about", whole.Err);
            var bad = RunLoupe([.. args, "--out", Path.Combine(root, "bad"), "--device", "emulated", "--device-decoders", "lazy"]);
            Assert.Equal(2, bad.Code);
            Assert.Contains("--device-decoders", bad.Err);
            Assert.Contains("auto, whole or active", bad.Err);
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    // A JumpReLU CLT (5 × 64 → 32 features, the stories260K shape) written in circuit-tracer's layout under root/clt, a short
    // text beside it, and the `clt eval` arguments that read them (without --out).
    static (CrossLayerTranscoder Clt, string[] Args) MappedEvalSetup(string model, string root, int seed)
    {
        var clt = new CrossLayerTranscoder(new CltShape(5, 64, 32, 64), new JumpReluActivation());
        clt.Initialize(seed: seed, decoderNorm: 0.3f, initThreshold: 0.02f);
        string folder = Path.Combine(root, "clt"), text = Path.Combine(root, "text.txt");
        CltFiles.SaveCircuitTracer(folder, clt);
        File.WriteAllText(text, "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. " +
            "One day, she saw a big dog in the park. The dog was happy and wagged its tail. Lily and the dog played all day.");
        return (clt, ["clt", "eval", "--model", model, "--transcoders", folder, "--source", "text:" + text, "--context-size", "16", "--batch-size", "8"]);
    }

    // Every number to `relative` (the run time aside), every string and array length equal; returns how many numbers.
    internal static int Compare(JsonNode? expected, JsonNode? actual, string path, double relative = 1e-4)
    {
        switch (expected)
        {
            case JsonObject o:
                return o.Where(p => !p.Key.Equals("seconds", StringComparison.OrdinalIgnoreCase)).Sum(p => Compare(p.Value, actual![p.Key], $"{path}.{p.Key}", relative));
            case JsonArray a:
                Assert.Equal(a.Count, actual!.AsArray().Count);
                return a.Select((e, i) => Compare(e, actual[i], $"{path}[{i}]", relative)).Sum();
            case JsonValue v when v.TryGetValue(out double e):
                double x = actual!.GetValue<double>();
                Assert.True(Math.Abs(e - x) <= relative * Math.Abs(e) + 1e-6, $"{path}: cpu {e:G9}, emulated {x:G9}");
                return 1;
            default:
                Assert.Equal(expected?.ToJsonString(), actual?.ToJsonString());
                return 0;
        }
    }
}
