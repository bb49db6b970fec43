using Loupe.Causal.Lens;
using Loupe.Models;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Causal.Tests.Devices;

/// <summary>
/// The logit lens, direct logit attribution and the residual decomposition where the model runs on the GPU backend's
/// kernels (emulated on the CPU): the CPU's numbers to 1e-4 relative on the gpt2, llama and gemma2 (final soft-cap)
/// fixtures, with the token ids going in and one result table coming out.
/// </summary>
public sealed class DeviceLensTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
    const int Answer = 17, Wrong = 42; // the fixtures' metric tokens

    static TokenBatch Tokens() => TokenBatch.FromRows(TestInputs.ReferenceIds);

    // Relative to the largest value (or a given reference scale): b_O of a model without b_O is float noise around 0.
    static void AssertClose(IReadOnlyList<double> expected, IReadOnlyList<double> actual, string what, double reference = 0)
    {
        Assert.Equal(expected.Count, actual.Count);
        double scale = Math.Max(expected.Max(Math.Abs), reference) + 1e-6;
        for (int i = 0; i < expected.Count; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4 * scale, $"{what} [{i}]: cpu {expected[i]}, device {actual[i]}");
    }

    static void AssertRelative(double expected, double actual, string what) =>
        Assert.True(Math.Abs(expected - actual) <= 1e-4 * Math.Abs(expected) + 1e-7, $"{what}: cpu {expected}, device {actual}");

    [Theory]
    [InlineData("gpt2", false)]
    [InlineData("gpt2", true)] // TransformerLens's weight processing: the final norm folded into W_U (no weight, no bias)
    [InlineData("llama", false)]
    [InlineData("gemma2", false)]
    public void TheLensesOnTheDeviceGiveTheCpusNumbers(string arch, bool processed)
    {
        string folder = SharedData.TestData(Path.Combine("reference", arch));
        var processing = processed ? Loupe.Models.Processing.WeightProcessing.TransformerLensDefaults : null;
        using var cpu = ModelLoader.LoadFolder(folder, processing: processing);
        using var gpu = ModelLoader.LoadFolder(folder, device.Backend, processing);
        var tokens = Tokens();

        // DLA, both rows, one logit difference (the W_U columns) and one direction given as numbers.
        foreach (var direction in new[] { LogitDirection.Difference(cpu, Answer, Wrong), LogitDirection.Token(cpu, Answer) with { Answer = null } })
        {
            var expected = DirectLogitAttribution.Compute(cpu, tokens, direction, position: 9);
            var actual = DirectLogitAttribution.Compute(gpu, tokens, direction, position: 9);
            Assert.Equal(expected.Components, actual.Components);
            Assert.Equal(expected.Position, actual.Position);
            for (int b = 0; b < 2; b++)
            {
                AssertClose(expected.Values[b], actual.Values[b], $"{arch} DLA row {b}");
                AssertRelative(expected.PreCapLogitDiff[b], actual.PreCapLogitDiff[b], $"{arch} pre-cap logit diff row {b}");
                Assert.Equal(expected.NormBias[b], actual.NormBias[b]);
                Assert.Equal(expected.UnembedBias[b], actual.UnembedBias[b]);
            }
            Assert.InRange(actual.MaxDecompositionError, 0, 1e-4);
        }

        // The logit lens at one position, real and frozen scale.
        foreach (var scale in new[] { LensScale.Real, LensScale.Frozen })
        {
            var expected = LogitLens.Run(cpu, tokens, Answer, Wrong, position: -1, row: 1, scale);
            var actual = LogitLens.Run(gpu, tokens, Answer, Wrong, position: -1, row: 1, scale);
            Assert.Equal(expected.Stages.Length, actual.Stages.Length);
            for (int s = 0; s < expected.Stages.Length; s++)
            {
                var (e, a) = (expected.Stages[s], actual.Stages[s]);
                string what = $"{arch} {scale} {e.Label}";
                Assert.Equal(e.Label, a.Label);
                AssertRelative(e.AnswerLogit, a.AnswerLogit, what + " logit");
                AssertRelative(e.AnswerProb, a.AnswerProb, what + " prob");
                Assert.InRange(Math.Abs(e.LogitDiff - a.LogitDiff), 0, 1e-4 * (Math.Abs(e.AnswerLogit) + Math.Abs(e.LogitDiff)) + 1e-6);
                Assert.Equal(e.AnswerRank, a.AnswerRank);
                Assert.Equal(e.TopToken, a.TopToken);
                Assert.InRange(Math.Abs(e.Entropy - a.Entropy), 0, 1e-4 * (1 + e.Entropy));
                Assert.InRange(Math.Abs(e.KlToFinal - a.KlToFinal), 0, 1e-4 * (1 + e.KlToFinal));
            }
        }

        // The grid over every position.
        var grid = LogitLens.Grid(cpu, tokens, row: 0, LensScale.Frozen);
        var onDevice = LogitLens.Grid(gpu, tokens, row: 0, LensScale.Frozen);
        Assert.Equal(grid.Labels, onDevice.Labels);
        Assert.Equal(grid.FinalTopToken, onDevice.FinalTopToken);
        for (int s = 0; s < grid.Labels.Length; s++)
        {
            Assert.Equal(grid.TopToken[s], onDevice.TopToken[s]);
            for (int p = 0; p < tokens.Length; p++)
            {
                AssertRelative(grid.TopProb[s][p], onDevice.TopProb[s][p], $"{arch} grid top prob {s},{p}");
                AssertRelative(grid.FinalTopProb[s][p], onDevice.FinalTopProb[s][p], $"{arch} grid final-top prob {s},{p}");
            }
        }

        // The decomposition itself.
        var parts = ResidualDecomposition.Compute(cpu, tokens, row: 1, position: 4);
        var partsOnDevice = ResidualDecomposition.Compute(gpu, tokens, row: 1, position: 4);
        Assert.Equal(parts.Components.Select(c => c.Name), partsOnDevice.Components.Select(c => c.Name));
        AssertClose([.. parts.Residual.Select(v => (double)v)], [.. partsOnDevice.Residual.Select(v => (double)v)], $"{arch} residual");
        double largest = parts.Components.Max(c => c.Vector.Max(Math.Abs));
        for (int c = 0; c < parts.Components.Count; c++)
            AssertClose([.. parts.Components[c].Vector.Select(v => (double)v)], [.. partsOnDevice.Components[c].Vector.Select(v => (double)v)], $"{arch} {parts.Components[c].Name}", largest);
    }

    [Fact]
    public void ALensCopiesTheTokenIdsInAndOnlyTheResultTableOut()
    {
        using var gpu = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")), device.Backend);
        var tokens = Tokens();
        gpu.Run(tokens); // places the weights
        var analyses = new (string Name, Action Run)[]
        {
            ("logit lens", () => LogitLens.Run(gpu, tokens, Answer, Wrong, scale: LensScale.Frozen)),
            ("logit lens grid", () => LogitLens.Grid(gpu, tokens)),
            ("DLA", () => DirectLogitAttribution.Compute(gpu, tokens, LogitDirection.Difference(gpu, Answer, Wrong))),
            ("decomposition", () => ResidualDecomposition.Compute(gpu, tokens)),
        };
        foreach (var (name, run) in analyses)
        {
            var before = device.Backend.Transfers.Snapshot();
            run();
            var copies = device.Backend.Transfers.Snapshot() - before;
            foreach (var kind in Enum.GetValues<TransferKind>())
            {
                if (kind != TransferKind.Inputs) Assert.True(copies.In(kind) == 0, $"{name} copied in: {copies}");
                Assert.True(copies.Out(kind) == (kind == TransferKind.Data ? 1 : 0), $"{name} copied out: {copies}");
            }
            Assert.True(copies.In(TransferKind.Inputs) > 0, $"{name}: the token ids go in");
        }
    }
}
