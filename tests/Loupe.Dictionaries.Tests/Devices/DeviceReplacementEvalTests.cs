using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Tensors.Backends;
using Xunit.Abstractions;
using static Loupe.Dictionaries.Tests.Splice.SpliceFixtures;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// Loss recovered with every MLP replaced, with the model on the GPU backend's kernels (emulated on the CPU): the CPU's
/// metrics to 1e-4, with the logits never read back (CE is summed on the device).
/// </summary>
public sealed class DeviceReplacementEvalTests(EmulatedModelFixture device, ITestOutputHelper output) : IClassFixture<EmulatedModelFixture>
{
    static HarvestContexts Contexts()
    {
        var batch = Tokens(rows: 5, length: 9, seed: 3);
        return HarvestContexts.FromRows(Enumerable.Range(0, 5).Select(b => batch.Row(b).ToArray()).ToArray(), "random ids");
    }

    static CrossLayerTranscoder Clt()
    {
        var clt = new CrossLayerTranscoder(new CltShape(3, 64, 48, 64), new ReluActivation());
        clt.Initialize(seed: 6, decoderNorm: 0.3f);
        return clt;
    }

    static void Close(double expected, double actual, string what) =>
        Assert.True(Math.Abs(expected - actual) <= 1e-4 * Math.Abs(expected) + 1e-6, $"{what}: cpu {expected:G9}, device {actual:G9}");

    [Fact]
    public void ReplacementEvaluation_OnTheDevice_ReportsTheCpusMetrics_WithoutReadingTheLogits()
    {
        using var cpu = Model();
        var contexts = Contexts();
        var options = new ReplacementEvalOptions { BatchSize = 5 };
        var expected = ReplacementEvaluator.Evaluate(cpu, Clt(), contexts, options);
        var transfers = device.Backend.Transfers;
        long before = transfers.BytesToHost(TransferKind.Data);
        var actual = ReplacementEvaluator.Evaluate(device.Model, Clt(), contexts, options);
        long bytesOut = transfers.BytesToHost(TransferKind.Data) - before;
        output.WriteLine($"recovered cpu {expected.LossRecovered:G9} device {actual.LossRecovered:G9}; {bytesOut} bytes of data out");

        Assert.Equal(expected.Positions, actual.Positions);
        Assert.Equal(expected.Predictions, actual.Predictions);
        foreach (var (name, e, a) in new[]
        {
            ("CE clean", expected.CeLossClean, actual.CeLossClean), ("CE replaced", expected.CeLossReplaced, actual.CeLossReplaced),
            ("CE zero", expected.CeLossZeroAblated, actual.CeLossZeroAblated), ("loss recovered", expected.LossRecovered, actual.LossRecovered),
        })
            Close(e, a, name);
        for (int t = 0; t < 3; t++)
        {
            Close(expected.Fvu[t], actual.Fvu[t], $"FVU layer {t}");
            Close(expected.L0[t], actual.L0[t], $"L0 layer {t}");
        }
        // The replacement (a host IMlpReplacement) reads its hooks on the host, one copy each: 3 inputs and 3 outputs per
        // run with hooks (the replaced run keeps the true output at BOS rows), never the [rows, vocab] logits.
        int rows = 5 * 9;
        Assert.Equal(12L * rows * 64 * sizeof(float), bytesOut);
    }
}
