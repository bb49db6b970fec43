using Loupe.Circuits.Benchmark;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Circuits.Tests.Benchmark;

/// <summary>The induction model's circuit from exact patching, recovered by EAP and EAP-IG (issue 11: ROC AUC ≥ 0.95).</summary>
public class InductionTaskTests(ITestOutputHelper output)
{
    const string Induction = "models/induction-attn-only-2l";

    [RequiresSharedFact(Induction)]
    public void Eap_and_eap_ig_recover_the_circuit_found_by_exact_patching()
    {
        foreach (var corruption in new[] { InductionCorruption.SecondCopy, InductionCorruption.FirstCopy })
        {
            var circuit = InductionTask.Build(SharedData.Require(Induction), corruption);
            using var model = circuit.Model;
            output.WriteLine($"{circuit.Name}: {circuit.TrueEdges.Count} true edges: {string.Join(", ", circuit.TrueEdges.Order())}");
            // The induction heads (layer 1, heads 1-3) into the logits are in the circuit under either corruption.
            foreach (int h in new[] { 1, 2, 3 }) Assert.Contains($"a1.h{h}->logits", circuit.TrueEdges);
            if (corruption == InductionCorruption.FirstCopy)
                // The previous-token head (a0.h2) into the keys of the induction heads.
                Assert.Contains(circuit.TrueEdges, e => e.StartsWith("a0.h2->a1.h", StringComparison.Ordinal) && e.EndsWith("<k>", StringComparison.Ordinal));
            var rows = CircuitBenchmark.Run([circuit], [.. DiscoveryMethods.All.Where(m => m.Name != "exact")]);
            foreach (var row in rows)
            {
                output.WriteLine($"  {row.Method}: AUC {row.Auc:0.000}, P@k {row.PrecisionAtK:0.000}, best F1 {row.BestF1:0.000}, {row.Seconds:0.00} s");
                Assert.InRange(row.Auc, 0.95, 1.0);
            }
        }
    }
}
