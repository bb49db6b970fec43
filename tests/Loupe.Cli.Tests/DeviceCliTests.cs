using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// <c>--device</c> and <c>LOUPE_DEVICE</c>: the device verbs on the emulated GPU (the GPU kernels run on
/// the CPU) give the CPU's numbers; a device that cannot be used, or a verb that runs on the CPU only, is refused.
/// </summary>
[Collection("console")]
public class DeviceCliTests
{
    static string Fixture(string arch) => SharedData.TestData(Path.Combine("reference", arch));

    static string TempFile(string name) => Path.Combine(Directory.CreateTempSubdirectory("loupe-cli").FullName, name);

    [Fact]
    public void CacheOnTheEmulatedDeviceWritesWhatTheCpuWrites()
    {
        string cpu = TempFile("cpu.safetensors"), device = TempFile("device.safetensors");
        string[] args = ["cache", "--model", Fixture("llama"), "--tokens", "82,87,74,39;84,200,158,186", "--hooks", "blocks.*.hook_resid_post,blocks.1.attn.hook_pattern"];
        var run = RunLoupe([.. args, "--out", cpu]);
        Assert.True(run.Code == 0, run.Err);
        run = RunLoupe([.. args, "--out", device, "--device", "emulated"]);
        Assert.True(run.Code == 0, run.Err);
        using var a = SafeTensorsFile.Open(cpu);
        using var b = SafeTensorsFile.Open(device);
        Assert.Equal(a.Names.Order(), b.Names.Order());
        foreach (var name in a.Names.Where(n => n != "tokens"))
        {
            var x = a.GetFloat32(name).Span;
            var y = b.GetFloat32(name).Span;
            for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-5f * (1 + Math.Abs(x[i])), $"{name}[{i}]: cpu {x[i]}, emulated {y[i]}");
        }
    }

    [Fact]
    public void PatchOnTheEmulatedDeviceWritesWhatTheCpuWrites()
    {
        string cpu = Directory.CreateTempSubdirectory("loupe-cli").FullName, device = Directory.CreateTempSubdirectory("loupe-cli").FullName;
        string[] args = ["patch", "--model", Fixture("gpt2"), "--clean-tokens", "82,87,74,39,184,175,214,409", "--corrupt-tokens", "82,87,74,300,184,175,214,12",
            "--answer-id", "17", "--wrong-id", "42", "--target", "head_out", "--method", "both"];
        var run = RunLoupe([.. args, "--out", cpu]);
        Assert.True(run.Code == 0, run.Err);
        run = RunLoupe([.. args, "--out", device, "--device", "emulated"]);
        Assert.True(run.Code == 0, run.Err);
        foreach (string file in new[] { "patch.json", Path.Combine("attribution", "patch.json") })
        {
            using var a = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(cpu, file)));
            using var b = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(device, file)));
            double clean = a.RootElement.GetProperty("clean_value").GetDouble(), corrupt = a.RootElement.GetProperty("corrupt_value").GetDouble();
            double scale = Math.Max(Math.Abs(clean), Math.Abs(corrupt)) + 1e-6;
            Assert.InRange(b.RootElement.GetProperty("clean_value").GetDouble(), clean - 1e-4 * scale, clean + 1e-4 * scale);
            var x = a.RootElement.GetProperty("values").EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => v.GetDouble()).ToArray();
            var y = b.RootElement.GetProperty("values").EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => v.GetDouble()).ToArray();
            Assert.Equal(x.Length, y.Length);
            for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-4 * scale, $"{file} cell {i}: cpu {x[i]}, emulated {y[i]}");
        }
    }

    [Fact]
    public void LensOnTheEmulatedDeviceWritesWhatTheCpuWrites()
    {
        string cpu = Directory.CreateTempSubdirectory("loupe-cli").FullName, device = Directory.CreateTempSubdirectory("loupe-cli").FullName;
        string[] args = ["lens", "--model", Fixture("gemma2"), "--tokens", "82,87,74,39,184,175,214,409", "--answer-id", "17", "--wrong-id", "42", "--scale", "frozen"];
        var run = RunLoupe([.. args, "--out", cpu]);
        Assert.True(run.Code == 0, run.Err);
        run = RunLoupe([.. args, "--out", device, "--device", "emulated"]);
        Assert.True(run.Code == 0, run.Err);
        using var a = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(cpu, "lens.json")));
        using var b = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(device, "lens.json")));
        var x = Numbers(a.RootElement).ToArray();
        var y = Numbers(b.RootElement).ToArray();
        Assert.Equal(x.Length, y.Length);
        double scale = x.Max(Math.Abs) + 1e-6;
        for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-4 * scale, $"lens.json number {i}: cpu {x[i]}, emulated {y[i]}");
        Assert.True(File.Exists(Path.Combine(device, "dla.svg")) && File.Exists(Path.Combine(device, "logit_lens.svg")));
    }

    [Fact]
    public void CircuitOnTheEmulatedDevicePrintsWhatTheCpuPrints()
    {
        string cpu = Directory.CreateTempSubdirectory("loupe-cli").FullName, device = Directory.CreateTempSubdirectory("loupe-cli").FullName;
        string[] args = ["circuit", "--model", Fixture("gpt2"), "--clean", "82,87,74,39;11,25,300,7", "--corrupt", "82,87,90,39;11,25,301,7",
            "--answer", "17", "--wrong", "42", "--method", "eap-ig", "--steps", "2", "--top", "8", "--faithfulness"];
        var run = RunLoupe([.. args, "--out", cpu]);
        Assert.True(run.Code == 0, run.Err);
        var onDevice = RunLoupe([.. args, "--out", device, "--device", "emulated"]);
        Assert.True(onDevice.Code == 0, onDevice.Err);
        // The same text but for the output folder, and numbers that may round the other way in their last printed digit.
        var number = new System.Text.RegularExpressions.Regex(@"[-+]?\d+(\.\d+)?");
        string printedCpu = run.Out.Replace(cpu, "OUT"), printedDevice = onDevice.Out.Replace(device, "OUT");
        string Shape(string printed) => System.Text.RegularExpressions.Regex.Replace(number.Replace(printed, "#"), @"[ \t]+", " "); // columns pad by width
        Assert.Equal(Shape(printedCpu), Shape(printedDevice));
        var (p, q) = (number.Matches(printedCpu), number.Matches(printedDevice));
        for (int i = 0; i < p.Count; i++)
        {
            double printed = double.Parse(p[i].Value, System.Globalization.CultureInfo.InvariantCulture), printedThere = double.Parse(q[i].Value, System.Globalization.CultureInfo.InvariantCulture);
            double lastDigit = Math.Pow(10, -(p[i].Groups[1].Success ? p[i].Groups[1].Value.Length - 1 : 0));
            Assert.True(Math.Abs(printed - printedThere) <= lastDigit * 1.01 + 1e-4 * Math.Abs(printed), $"printed number {i}: cpu {p[i].Value}, emulated {q[i].Value}");
        }
        using var a = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(cpu, "circuit.json")));
        using var b = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(device, "circuit.json")));
        var x = Numbers(a.RootElement).ToArray();
        var y = Numbers(b.RootElement).ToArray();
        Assert.Equal(x.Length, y.Length);
        double scale = x.Max(Math.Abs) + 1e-6;
        for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-4 * scale, $"circuit.json number {i}: cpu {x[i]}, emulated {y[i]}");
    }

    // Every number in a JSON document except the decomposition check (float noise on both sides), in document order.
    internal static IEnumerable<double> Numbers(System.Text.Json.JsonElement e, string? name = null)
    {
        switch (e.ValueKind)
        {
            case System.Text.Json.JsonValueKind.Number when !(name ?? "").Contains("error", StringComparison.OrdinalIgnoreCase):
                yield return e.GetDouble();
                break;
            case System.Text.Json.JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                    foreach (var v in Numbers(p.Value, p.Name)) yield return v;
                break;
            case System.Text.Json.JsonValueKind.Array:
                foreach (var item in e.EnumerateArray())
                    foreach (var v in Numbers(item, name)) yield return v;
                break;
        }
    }

    [Fact]
    public void InfoAndRunReportTheDevice()
    {
        var (code, stdout, err) = RunLoupe("info", "--model", Fixture("gpt2"), "--device", "emulated");
        Assert.True(code == 0, err);
        Assert.Contains("device:       emulated", stdout);
        Assert.Contains("backend:      emulated (ILGPU CPU accelerator), matrix weights in F32", stdout);
        (code, stdout, err) = RunLoupe("run", "--model", Fixture("gpt2"), "--tokens", "5,9,100", "-n", "3", "--device", "emulated");
        Assert.True(code == 0, err);
        var cpu = RunLoupe("run", "--model", Fixture("gpt2"), "--tokens", "5,9,100", "-n", "3");
        Assert.Equal(cpu.Out, stdout);
    }

    [Fact]
    public void AnUnusableOrUnknownDeviceIsRefusedInOneLine()
    {
        // No GPU in CI: the message says what is missing (a driver, a GPU or cuBLAS) and where it looked.
        if (!File.Exists("/dev/nvidiactl"))
            AssertRefused(RunLoupe("info", "--model", Fixture("gpt2"), "--device", "cuda:0"), "cuda:0", "--device cpu");
        AssertRefused(RunLoupe("info", "--model", Fixture("gpt2"), "--device", "tpu"), "--device", "unknown device 'tpu'", "cuda:N");
        AssertRefused(RunLoupe("info", "--model", Fixture("gpt2"), "--device", "cuda:x"), "--device", "device index");
        // A verb whose analysis still reads activations on the host says so instead of running elsewhere.
        AssertRefused(RunLoupe("weights", "full", "--model", Fixture("gpt2"), "--device", "emulated"), "--device", "'weights full' runs on the CPU only", "lens", "circuit");
    }

    [Fact]
    public void LoupeDeviceIsTheDefaultAndTheOptionWins()
    {
        Environment.SetEnvironmentVariable("LOUPE_DEVICE", "emulated");
        try
        {
            var (code, stdout, err) = RunLoupe("info", "--model", Fixture("gpt2"));
            Assert.True(code == 0, err);
            Assert.Contains("device:       emulated", stdout);
            (code, stdout, err) = RunLoupe("info", "--model", Fixture("gpt2"), "--device", "cpu");
            Assert.True(code == 0, err);
            Assert.Contains("device:       cpu", stdout);
            Environment.SetEnvironmentVariable("LOUPE_DEVICE", "abacus");
            AssertRefused(RunLoupe("info", "--model", Fixture("gpt2")), "LOUPE_DEVICE", "unknown device 'abacus'");
        }
        finally
        {
            Environment.SetEnvironmentVariable("LOUPE_DEVICE", null);
        }
    }
}
