using System.Globalization;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe intervene --device emulated</c>: the table and the continuations the CPU prints (free and frozen).</summary>
[Collection("console")]
public class InterveneDeviceCliTests
{
    static readonly string Model = SharedData.TestData(Path.Combine("reference", "gpt2"));
    static readonly string Transcoders = SharedData.TestData(Path.Combine("attribution", "transcoders"));
    const string Tokens = "0,360,480,161,89,311,293,431";

    // A table row is "{token,-24} {before,10} {after,10} {Δ logit,10} {Δ demeaned,11}"; read from the right, as a token may hold spaces.
    const int NumbersWidth = 1 + 10 + 1 + 10 + 1 + 10 + 1 + 11;

    static (string Token, double?[] Numbers)[] Table(string output) =>
    [
        .. output.Split('\n').Select(l => l.TrimEnd('\r')).SkipWhile(l => !l.Contains("Δ demeaned", StringComparison.Ordinal)).Skip(1)
            .TakeWhile(l => !l.StartsWith("unedited:", StringComparison.Ordinal) && l.Length >= NumbersWidth)
            .Select(l =>
            {
                string numbers = l[^NumbersWidth..];
                double?[] values = [.. new[] { (1, 10), (12, 10), (23, 10), (34, 11) }.Select(c => numbers.Substring(c.Item1, c.Item2).Trim())
                    .Select(s => s.Length == 0 ? (double?)null : double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture))];
                return (l[..^NumbersWidth], values);
            }),
    ];

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Intervene_on_the_emulated_device_prints_what_the_cpu_prints(bool frozen, bool decodersOnHost)
    {
        string[] args = ["intervene", "--model", Model, "--transcoders", Transcoders, "--tokens", Tokens, "--edit", "2:7:3*0,1:*:5=2,0:4:7=3", "--top", "5",
            .. frozen ? new[] { "--frozen" } : ["--generate", "4"]];
        var cpu = RunLoupe(args);
        Assert.True(cpu.Code == 0, cpu.Err);
        var gpu = RunLoupe([.. args, "--device", "emulated", .. decodersOnHost ? new[] { "--device-decoders", "active" } : []]);
        Assert.True(gpu.Code == 0, gpu.Err);
        if (decodersOnHost) Assert.Contains("stay in host memory, each pass uploading its active features' rows", gpu.Err);
        var (expected, actual) = (Table(cpu.Out), Table(gpu.Out));
        Assert.True(expected.Length >= 5, cpu.Out);
        Assert.Equal(expected.Select(r => r.Token), actual.Select(r => r.Token));
        for (int r = 0; r < expected.Length; r++)
            for (int c = 0; c < 4; c++)
            {
                // Printed to 4 (probabilities) or 3 (logits) decimals: equal to 1e-4 relative, within one printed unit.
                double unit = c < 2 ? 1e-4 : 1e-3;
                Assert.Equal(expected[r].Numbers[c].HasValue, actual[r].Numbers[c].HasValue);
                if (expected[r].Numbers[c] is double e)
                    Assert.True(Math.Abs(e - actual[r].Numbers[c]!.Value) <= unit * 1.01 + 1e-4 * Math.Abs(e), $"row {r} column {c}: cpu {e}, emulated {actual[r].Numbers[c]}\n{cpu.Out}\n{gpu.Out}");
            }
        string Continuations(string output) => string.Join("\n", output.Split('\n').Where(l => l.StartsWith("unedited:", StringComparison.Ordinal) || l.StartsWith("edited:", StringComparison.Ordinal)));
        Assert.Equal(Continuations(cpu.Out), Continuations(gpu.Out));
        if (!frozen) Assert.Contains("edited:", gpu.Out);
    }
}
