using System.Text.Json;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests.Devices;

/// <summary>
/// <c>verify</c> and <c>fourier</c> with <c>--device emulated</c> (the GPU kernels on the CPU) give the CPU run's results;
/// the verbs that compute on the host only (<c>weights</c>, <c>toy</c>) refuse an explicit <c>--device</c>
/// saying why, and <c>explain</c>, which loads no model, says that the device changes nothing.
/// </summary>
[Collection("console")]
public class VerbsOnDeviceCliTests
{
    static readonly string Gpt2 = SharedData.TestData(Path.Combine("reference", "gpt2"));

    [Fact]
    public void Verify_on_the_emulated_device_certifies_the_devices_run_as_the_cpus()
    {
        string cpu = Directory.CreateTempSubdirectory("loupe-verify").FullName, device = Directory.CreateTempSubdirectory("loupe-verify").FullName;
        string reference = Path.Combine(cpu, "reference-6.safetensors");
        FirstTokensOfReference(Path.Combine(Gpt2, "reference.safetensors"), reference, 6);
        string[] args = ["verify", "--model", Gpt2, "--reference", reference];
        var run = RunLoupe([.. args, "--out", cpu]);
        Assert.True(run.Code == 0, run.Err + run.Out);
        var onDevice = RunLoupe([.. args, "--out", device, "--device", "emulated"]);
        Assert.True(onDevice.Code == 0, onDevice.Err + onDevice.Out);
        Assert.Contains("on emulated (emulated (ILGPU CPU accelerator), matrix weights in F32)", onDevice.Out);
        Assert.Contains("PASSED", onDevice.Out);
        using var a = JsonDocument.Parse(File.ReadAllText(Path.Combine(cpu, "verify.json")));
        using var b = JsonDocument.Parse(File.ReadAllText(Path.Combine(device, "verify.json")));
        Assert.Equal("cpu", a.RootElement.GetProperty("device").GetString());
        Assert.Equal("emulated", b.RootElement.GetProperty("device").GetString());
        Assert.Equal("F32", b.RootElement.GetProperty("weight_type").GetString());
        Assert.Equal(a.RootElement.GetProperty("prompts").ToString(), b.RootElement.GetProperty("prompts").ToString());
        // The same checks; each error is the device's distance from the same reference (float64, HF, finite differences),
        // so it equals the CPU's to within the check's tolerance.
        var x = a.RootElement.GetProperty("checks").EnumerateArray().ToArray();
        var y = b.RootElement.GetProperty("checks").EnumerateArray().ToArray();
        Assert.Equal(x.Select(c => c.GetProperty("name").GetString()), y.Select(c => c.GetProperty("name").GetString()));
        Assert.Contains(y, c => c.GetProperty("group").GetString() == "reference" && c.GetProperty("name").GetString() == "logits");
        for (int i = 0; i < x.Length; i++)
        {
            double e = x[i].GetProperty("error").GetDouble(), f = y[i].GetProperty("error").GetDouble(), tolerance = y[i].GetProperty("tolerance").GetDouble();
            Assert.True(y[i].GetProperty("passed").GetBoolean(), $"{y[i].GetProperty("name")}: {f} on the device");
            Assert.True(Math.Abs(e - f) <= Math.Max(tolerance, 1e-6), $"{x[i].GetProperty("name")}: cpu {e}, emulated {f}");
        }
    }

    /// <summary>
    /// Hugging Face's outputs for the first <paramref name="positions"/> tokens of the reference's first prompt, sliced from
    /// them: a causal model's outputs at those positions do not depend on later tokens (attention rows past them are 0).
    /// The gradients, whose metric reads the last position, are left out. Keeps the emulated run short.
    /// </summary>
    static void FirstTokensOfReference(string source, string target, int positions)
    {
        using var file = Loupe.Models.Loading.SafeTensorsFile.Open(source);
        var ids = file.GetInt64("input_ids");
        int length = (int)(ids.Length / 2);
        var entries = new List<Loupe.Models.Loading.SafeTensorEntry> { Loupe.Models.Loading.SafeTensorEntry.I64("input_ids", [1, positions], ids[..positions]) };
        foreach (string name in file.Names.Where(n => n is "logits" or "final_norm_in" or "final_norm_out" || n.StartsWith("resid_", StringComparison.Ordinal)
                     || n.StartsWith("attn_out.", StringComparison.Ordinal) || n.StartsWith("mlp_out.", StringComparison.Ordinal) || n.StartsWith("attn_probs.", StringComparison.Ordinal)))
        {
            var data = file.GetFloat32(name).ToArray();
            if (name.StartsWith("attn_probs.", StringComparison.Ordinal)) // [batch, heads, query, key]
            {
                int heads = data.Length / (2 * length * length);
                var probs = new float[heads * positions * positions];
                for (int h = 0; h < heads; h++)
                    for (int q = 0; q < positions; q++)
                        data.AsSpan((h * length + q) * length, positions).CopyTo(probs.AsSpan((h * positions + q) * positions));
                entries.Add(Loupe.Models.Loading.SafeTensorEntry.F32(name, [1, heads, positions, positions], probs));
            }
            else // [batch, pos, width]
            {
                int width = data.Length / (2 * length);
                entries.Add(Loupe.Models.Loading.SafeTensorEntry.F32(name, [1, positions, width], data.AsMemory(0, positions * width)));
            }
        }
        Loupe.Models.Loading.SafeTensorsWriter.Write(target, entries);
    }

    [Fact]
    public void Fourier_on_the_emulated_device_prints_and_writes_what_the_cpu_does()
    {
        string cpu = Directory.CreateTempSubdirectory("loupe-fourier").FullName, device = Directory.CreateTempSubdirectory("loupe-fourier").FullName;
        string[] args = ["fourier", "--model", Gpt2, "--p", "7", "--equals", "7"];
        var run = RunLoupe([.. args, "--out", cpu]);
        Assert.True(run.Code == 0, run.Err);
        var onDevice = RunLoupe([.. args, "--out", device, "--device", "emulated"]);
        Assert.True(onDevice.Code == 0, onDevice.Err);
        Assert.Equal(Line(run.Out, "key frequencies"), Line(onDevice.Out, "key frequencies"));
        using var a = JsonDocument.Parse(File.ReadAllText(Path.Combine(cpu, "fourier.json")));
        using var b = JsonDocument.Parse(File.ReadAllText(Path.Combine(device, "fourier.json")));
        var x = DeviceCliTests.Numbers(a.RootElement).ToArray();
        var y = DeviceCliTests.Numbers(b.RootElement).ToArray();
        Assert.Equal(x.Length, y.Length);
        Assert.True(x.Length > 10, $"{x.Length} numbers");
        for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-4 * (1 + Math.Abs(x[i])), $"fourier.json number {i}: cpu {x[i]}, emulated {y[i]}");
    }

    static string Line(string printed, string start) => printed.Split('\n').Single(l => l.StartsWith(start, StringComparison.Ordinal));

    [Fact]
    public void Host_only_verbs_refuse_an_explicit_device_saying_why()
    {
        string dir = Directory.CreateTempSubdirectory("loupe-host-only").FullName;
        AssertRefused(RunLoupe("weights", "composition", "--model", Gpt2, "--device", "emulated"), "--device", "'weights composition' runs on the CPU only", "weight matrices", "no forward pass", "verify");
        // clt train runs on a device now (CltTrainDeviceCliTests): the refusals list it among the device verbs
        AssertRefused(RunLoupe("toy", "--out", dir, "--device", "emulated"), "--device", "'toy' runs on the CPU only", "toy models", "loads no model", "clt train, clt eval");
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir)); // refused before anything was written

        // explain loads no model: the device changes nothing, and it says so (here before refusing a missing store).
        var explain = RunLoupe("explain", "--store", Path.Combine(dir, "absent.db"), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--device", "emulated");
        Assert.Contains("'explain' loads no model", explain.Err);
        Assert.Contains("features build", explain.Err);

        // tokenize reads only the tokenizer: the same ids on any device, with the note.
        var tokenized = RunLoupe("tokenize", "--model", Gpt2, "--text", "Hello world", "--device", "emulated");
        Assert.Equal(RunLoupe("tokenize", "--model", Gpt2, "--text", "Hello world").Out, tokenized.Out);
        Assert.Contains("'tokenize' loads no model", tokenized.Err);
    }
}
