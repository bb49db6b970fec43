using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Edges;

/// <summary>
/// Edge attribution (EAP, EAP-IG inputs and activations), circuit evaluation, faithfulness and ACDC where the model
/// runs on the GPU backend's kernels (emulated on the CPU): the CPU's numbers (which match EAP-IG's fixtures) to
/// 1e-4 relative, with the token ids and answer ids going in and one score table coming out.
/// </summary>
public sealed class DeviceCircuitTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
    static string Gpt2 => SharedData.TestData("reference/gpt2");

    // Relative to the largest score: edges far below it carry float noise of that size in both runs.
    static void AssertScores(EdgeScores expected, EdgeScores actual)
    {
        Assert.Equal(expected.Method, actual.Method);
        double largest = expected.Scores.Max(Math.Abs);
        for (int e = 0; e < expected.Scores.Length; e++)
            Assert.True(Math.Abs(expected.Scores[e] - actual.Scores[e]) <= 1e-4 * largest,
                $"{expected.Method} {expected.Graph.Edges[e].Name}: cpu {expected.Scores[e]:G9}, device {actual.Scores[e]:G9} (largest {largest:G4})");
    }

    static void AssertMetric(double expected, double actual, string what) =>
        Assert.True(Math.Abs(expected - actual) <= 1e-4 * Math.Max(1, Math.Abs(expected)), $"{what}: cpu {expected:G9}, device {actual:G9}");

    // The emulated device runs a forward pass of this fixture in ~10 s on a loaded CI machine: each test runs few passes.

    [Fact]
    public void EapIgOnTheDeviceScoresAsTheCpuAndCopiesTheIdsInAndTheScoreTableOut()
    {
        var data = Fixture.Load("gpt2");
        using var cpu = ModelLoader.LoadFolder(Gpt2);
        using var gpu = ModelLoader.LoadFolder(Gpt2, device.Backend);
        var (g, h) = (EdgeGraph.FromModel(cpu), EdgeGraph.FromModel(gpu));
        gpu.Run(data.Clean); // places the weights
        var before = device.Backend.Transfers.Snapshot();
        var onDevice = EdgeAttribution.EapIgInputs(gpu, h, data.Clean, data.Corrupted, data.Gpt2Metric(), 2);
        var copies = device.Backend.Transfers.Snapshot() - before;
        foreach (var kind in Enum.GetValues<TransferKind>())
        {
            if (kind != TransferKind.Inputs) Assert.True(copies.In(kind) == 0, $"copied in: {copies}");
            Assert.True(copies.Out(kind) == (kind == TransferKind.Data ? 1 : 0), $"copied out: {copies}");
        }
        Assert.True(copies.In(TransferKind.Inputs) > 0, "the token ids go in");
        AssertScores(EdgeAttribution.EapIgInputs(cpu, g, data.Clean, data.Corrupted, data.Gpt2Metric(), 2), onDevice);
    }

    [Fact]
    public void CircuitRunsOnTheDeviceGiveTheCpusMetrics()
    {
        var data = Fixture.Load("gpt2");
        using var cpu = ModelLoader.LoadFolder(Gpt2);
        using var gpu = ModelLoader.LoadFolder(Gpt2, device.Backend);
        var (g, h) = (EdgeGraph.FromModel(cpu), EdgeGraph.FromModel(gpu));
        var onCpu = new CircuitEvaluator(cpu, g, data.Clean, data.Corrupted, data.Gpt2Metric());
        var onGpu = new CircuitEvaluator(gpu, h, data.Clean, data.Corrupted, data.Gpt2Metric());
        AssertMetric(onCpu.Clean, onGpu.Clean, "clean");
        AssertMetric(onCpu.Corrupted, onGpu.Corrupted, "corrupted");
        // Faithfulness circuits (every slot kind patched: q/k/v, MLP, logits) and ACDC-like trials, in one pass each side.
        var scores = EdgeAttribution.Eap(cpu, g, data.Clean, data.Corrupted, data.Gpt2Metric());
        double[] percents = [2, 10, 50];
        var circuits = percents.Select(p => onCpu.Removed(CircuitSelection.Select(scores, SelectionRule.TopN, (int)(p / 100 * g.Edges.Count), 0))).ToList();
        circuits.Add([g.IndexOf("a0.h1->a2.h3<k>")]);
        circuits.Add([g.IndexOf("m1->logits"), g.IndexOf("input->m0"), g.IndexOf("a1.h0->a2.h2<q>"), g.IndexOf("a0.h3->a1.h2<v>")]);
        Assert.DoesNotContain(-1, circuits.SelectMany(c => c));
        var expected = onCpu.Evaluate(circuits);
        var actual = onGpu.Evaluate(circuits);
        Assert.Equal(1, onGpu.Passes);
        for (int i = 0; i < expected.Length; i++) AssertMetric(expected[i], actual[i], $"circuit {i}");
    }
}
