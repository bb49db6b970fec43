using Loupe.Cli.Commands;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests.Devices;

/// <summary>
/// <c>--dtype</c> and <c>LOUPE_DTYPE</c>: a model's matrix weights kept in bf16/fp16 on the (emulated) device give the CPU's
/// logits to a bf16 tolerance; the CPU refuses them under the option and ignores them, with a note, under the variable; CPU-only
/// verbs treat an explicit <c>--dtype</c> as they treat <c>--device</c>; dictionary training keeps fp32 parameters.
/// </summary>
[Collection("console")]
public class DtypeCliTests
{
    static string Gpt2 => SharedData.TestData(Path.Combine("reference", "gpt2"));

    static float[] Logits(string[] args)
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-dtype").FullName, "cache.safetensors");
        var run = RunLoupe(["cache", "--model", Gpt2, "--tokens", "82,87,74,39,184,175,214,409;5,9,100,7,300,12,44,501",
            "--hooks", "ln_final.hook_normalized", "--out", path, .. args]);
        Assert.True(run.Code == 0, run.Err);
        using var file = SafeTensorsFile.Open(path);
        return file.GetFloat32("logits").Span.ToArray();
    }

    [Fact]
    public void Bf16WeightsOnTheEmulatedDeviceGiveTheCpuLogitsToABf16Tolerance()
    {
        var (code, stdout, err) = RunLoupe("info", "--model", Gpt2, "--device", "emulated", "--dtype", "bf16");
        Assert.True(code == 0, err);
        Assert.Contains("backend:      emulated (ILGPU CPU accelerator), matrix weights in BF16", stdout);
        Assert.Matches(@"weights on emulated: about [0-9.]+ MiB as bf16, placed on first use", err); // the estimate, before any upload
        (code, stdout, err) = RunLoupe("run", "--model", Gpt2, "--tokens", "5,9,100", "-n", "3", "--device", "emulated", "--dtype", "bf16");
        Assert.True(code == 0, err);
        Assert.Contains("Top next tokens after 3 prompt tokens:", stdout);

        var cpu = Logits([]);
        var bf16 = Logits(["--device", "emulated", "--dtype", "bf16"]);
        Assert.Equal(cpu.Length, bf16.Length);
        double scale = cpu.Max(Math.Abs), worst = 0;
        for (int i = 0; i < cpu.Length; i++) worst = Math.Max(worst, Math.Abs(cpu[i] - bf16[i]));
        // bf16 keeps 8 significant bits (relative rounding up to 2^-9 ≈ 2e-3 per weight); the logits move by 0.6–2e-2 of
        // their largest entry on the model fixtures (docs/devices.md; measured here: 6.0e-3 with activations rounded to bf16, 3.9e-3 split, fp16 6.5–9.1e-4), so 3e-2 is the
        // format's tolerance — and more than fp32 noise (5.9e-7 of the scale here) shows the weights really were bf16.
        Assert.True(worst <= 3e-2 * scale, $"max |Δlogit| {worst:G3} > 3e-2 × {scale:G3}");
        Assert.True(worst > 1e-4 * scale, $"max |Δlogit| {worst:G3}: no bf16 rounding visible (were the weights kept in fp32?)");
    }

    [Fact]
    public void LoupeDtypeIsTheDefaultAndTheOptionWins()
    {
        try
        {
            Environment.SetEnvironmentVariable("LOUPE_DTYPE", "fp16");
            var (code, stdout, err) = RunLoupe("info", "--model", Gpt2, "--device", "emulated");
            Assert.True(code == 0, err);
            Assert.Contains("matrix weights in F16", stdout);
            (code, stdout, err) = RunLoupe("info", "--model", Gpt2, "--device", "emulated", "--dtype", "fp32");
            Assert.True(code == 0, err);
            Assert.Contains("matrix weights in F32", stdout);

            // On the CPU the variable is noted and fp32 used (as LOUPE_DEVICE is for a CPU-only verb).
            Environment.SetEnvironmentVariable("LOUPE_DTYPE", "bf16");
            (code, stdout, err) = RunLoupe("info", "--model", Gpt2);
            Assert.True(code == 0, err);
            Assert.Contains("device:       cpu", stdout);
            Assert.Contains("note: the CPU backend computes with fp32 weights", err);
            Assert.Contains("LOUPE_DTYPE=bf16 is ignored here", err);

            Environment.SetEnvironmentVariable("LOUPE_DTYPE", "int8");
            AssertRefused(RunLoupe("info", "--model", Gpt2, "--device", "emulated"), "environment variable LOUPE_DTYPE", "'int8'", "fp32, bf16 or fp16");
        }
        finally
        {
            Environment.SetEnvironmentVariable("LOUPE_DTYPE", null);
        }
    }

    [Fact]
    public void Bf16OnTheCpuABadValueOrACpuOnlyVerbIsRefusedNamingDtype()
    {
        AssertRefused(RunLoupe("info", "--model", Gpt2, "--dtype", "bf16"), "argument: --dtype", "the CPU backend computes with fp32 weights", "cuda or emulated");
        AssertRefused(RunLoupe("run", "--model", Gpt2, "--tokens", "5,9", "--device", "cpu", "--dtype", "fp16"), "argument: --dtype", "fp32 weights");
        AssertRefused(RunLoupe("info", "--model", Gpt2, "--device", "emulated", "--dtype", "int8"), "argument: --dtype", "'int8'", "fp32, bf16 or fp16");
        var (code, stdout, err) = RunLoupe("info", "--model", Gpt2, "--dtype", "FP32");
        Assert.True(code == 0, err);
        Assert.Contains("device:       cpu", stdout);
        try
        {
            // A verb that computes on the host only: the device from the variable is noted, an explicit --dtype refused with the same reason.
            Environment.SetEnvironmentVariable("LOUPE_DEVICE", "emulated");
            AssertRefused(RunLoupe("weights", "full", "--model", Gpt2, "--dtype", "bf16"), "argument: --dtype", "'weights full' runs on the CPU only", "drop --dtype bf16");
            AssertRefused(RunLoupe("weights", "full", "--model", Gpt2, "--device", "emulated", "--dtype", "bf16"), "argument: --device", "'weights full' runs on the CPU only");
        }
        finally
        {
            Environment.SetEnvironmentVariable("LOUPE_DEVICE", null);
        }
    }

    [RequiresSharedFact("models/gpt2-tokenizer")]
    public void AVerbThatLoadsNoModelSaysDtypeChangesNothing()
    {
        var (code, stdout, err) = RunLoupe("tokenize", "--model", SharedData.Require("models/gpt2-tokenizer"), "--text", "Hello world", "--device", "emulated", "--dtype", "bf16");
        Assert.True(code == 0, err);
        Assert.Equal("[15496, 995]", stdout.Trim());
        Assert.Contains("note: 'tokenize' loads no model (it only reads the tokenizer); --device emulated --dtype bf16 changes nothing here", err);
    }

    [Fact]
    public void DictionariesTrainOnTheModelsBackendWithFp32Parameters()
    {
        try
        {
            CliSupport.ChooseDevice("emulated", "sae train");
            CliSupport.ChooseWeightType("bf16");
            Assert.Equal(ElementType.BF16, CliSupport.Backend.WeightElementType);
            var backend = CliSupport.DictionaryBackendFor(new TopKActivation(4));
            Assert.Same(CliSupport.Backend, backend); // one CUDA context and memory pool per GPU, not two
            // (the parameters are fp32 device tensors whatever the weight type: SaeTrainUnderBf16WritesTheFp32Dictionary)
        }
        finally
        {
            CliSupport.ChooseDevice(null, "");
            CliSupport.ChooseWeightType(null);
        }
    }

    [RequiresSharedFact("models/stories260K")]
    public void SaeTrainUnderBf16WritesTheFp32Dictionary()
    {
        string root = Directory.CreateTempSubdirectory("loupe-dtype-sae").FullName;
        try
        {
            string text = Path.Combine(root, "text.txt");
            File.WriteAllText(text, string.Join(" ", Enumerable.Repeat(
                "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. " +
                "One day, she saw a big dog in the park. The dog was happy and wagged its tail.", 4)));
            string[] Args(string output) =>
            [
                "sae", "train", "--model", SharedData.Require("models/stories260K"), "--source", "text:" + text, "--hook", "blocks.2.hook_resid_post",
                "--context-size", "32", "--architecture", "topk", "--k", "4", "--d-sae", "64", "--steps", "3", "--batch-size", "64",
                "--lr", "1e-3", "--seed", "5", "--device", "emulated", "--out", output,
            ];
            var fp32 = RunLoupe(Args(Path.Combine(root, "fp32")));
            Assert.True(fp32.Code == 0, fp32.Err);
            var bf16 = RunLoupe([.. Args(Path.Combine(root, "bf16")), "--dtype", "bf16"]);
            Assert.True(bf16.Code == 0, bf16.Err);
            Assert.Contains("note: the dictionary trains with fp32 parameters whatever --dtype says", bf16.Err);

            var (a, _) = DictionaryFile.Load(Path.Combine(root, "fp32"));
            var (b, _) = DictionaryFile.Load(Path.Combine(root, "bf16"));
            foreach (var (name, x, y) in new[] { ("W_enc", a.P.WEnc, b.P.WEnc), ("W_dec", a.P.WDec, b.P.WDec), ("b_dec", a.P.BDec, b.P.BDec) })
            {
                Assert.Equal(x.Length, y.Length);
                // The model ran on the device in bf16 too, so the activations trained on moved by ~1e-2 of their scale and
                // TopK may keep other features: the two dictionaries are not compared value by value, only their storage.
                Assert.All(y, v => Assert.True(float.IsFinite(v), $"{name} holds {v}"));
                // bf16 keeps the top 16 bits of an fp32: parameters held in bf16 would all have zero low bits
                Assert.Contains(y, v => (BitConverter.SingleToUInt32Bits(v) & 0xFFFF) != 0);
            }
        }
        finally { Directory.Delete(root, recursive: true); }
    }
}
