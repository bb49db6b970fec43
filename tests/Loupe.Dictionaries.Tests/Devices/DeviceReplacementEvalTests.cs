using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Tensors.Backends;
using Xunit.Abstractions;
using static Loupe.Dictionaries.Tests.Splice.SpliceFixtures;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// Loss recovered with every MLP replaced, with the model and the replacement on the GPU backend's kernels (emulated on
/// the CPU): the CPU's metrics to 1e-4, with the logits and the activations never read back (CE and the per-layer sums
/// are formed on the device; one buffer of sums per batch comes out).
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

    // Per-layer transcoders on the llama fixture's MLPs; layer 1 has a skip path (its input enters the reconstruction).
    static PerLayerTranscoders PerLayer() => new(
        [.. Enumerable.Range(0, 3).Select(l => Random(SaeShape.Transcoder(64, 40, 64, skip: l == 1), new ReluActivation(), seed: 11 + l, decoderNorm: 0.3f))],
        [.. Enumerable.Range(0, 3).Select(l => $"blocks.{l}.ln2.hook_normalized")], [.. Enumerable.Range(0, 3).Select(l => $"blocks.{l}.hook_mlp_out")], "random");

    [Theory]
    [InlineData("clt")]
    [InlineData("per-layer")]
    public void ReplacementEvaluation_OnTheDevice_ReportsTheCpusMetrics_WithoutReadingTheLogits(string kind)
    {
        Func<IMlpReplacement> replacement = kind == "clt" ? Clt : PerLayer;
        using var cpu = Model();
        var contexts = Contexts();
        var options = new ReplacementEvalOptions { BatchSize = 3 };
        var expected = ReplacementEvaluator.Evaluate(cpu, replacement(), contexts, options);
        var transfers = device.Backend.Transfers;
        var before = transfers.Snapshot();
        long bytesBefore = transfers.BytesToHost(TransferKind.Data);
        var actual = ReplacementEvaluator.Evaluate(device.Model, replacement(), contexts, options);
        var moved = transfers.Snapshot() - before;
        output.WriteLine($"recovered cpu {expected.LossRecovered:G9} device {actual.LossRecovered:G9}; {moved}");

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
        // Per batch (5 contexts in batches of 3: two): the ids of three runs and the row mask go in, one [L, 4 + d_out] buffer
        // of sums and three CE sums come out; no activation, reconstruction or logit crosses. The weights go in once.
        const int batches = 2;
        Assert.Equal(0, moved.In(TransferKind.Data));
        Assert.Equal(batches, moved.Out(TransferKind.Data));
        Assert.Equal(batches * 3L * (4 + 64) * sizeof(float), transfers.BytesToHost(TransferKind.Data) - bytesBefore);
        Assert.Equal(batches * (3 + 3), moved.Out(TransferKind.Scalars)); // the three CE sums and the three forwards' finite checks
    }
}
