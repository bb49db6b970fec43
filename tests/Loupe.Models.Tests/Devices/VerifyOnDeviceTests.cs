using Loupe.Models.Verification;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;

namespace Loupe.Models.Tests.Devices;

/// <summary>The float64 path catches a backend that computes something else: bf16 weights on the emulated GPU exceed 1e-4.</summary>
public sealed class VerifyOnDeviceTests(EmulatedBackendFixture fixture) : IClassFixture<EmulatedBackendFixture>
{
    [Fact]
    public void Fp32OnTheDevicePassesAndBf16WeightsAreCaughtByTheFloat64Path()
    {
        string folder = TestModels.Fixture("gpt2");
        using (var fp32 = ModelLoader.LoadFolder(folder, fixture.Backend))
        {
            var report = ModelVerifier.Run(fp32, new VerifyOptions { GreedyTokens = 3 });
            Assert.True(report.Passed, string.Join("\n", report.Checks.Where(c => !c.Passed).Select(c => $"{c.Name}: {c.Error:G4}")));
        }
        using var bf16Backend = ComputeBackends.Create(new Device(DeviceKind.Emulated), ElementType.BF16);
        using var bf16 = ModelLoader.LoadFolder(folder, bf16Backend);
        var bf16Report = ModelVerifier.Run(bf16, new VerifyOptions { GreedyTokens = 0 });
        var logits = bf16Report.Checks.Single(c => c.Group == "float64" && c.Name == "logits");
        Assert.False(logits.Passed, $"bf16 logits error {logits.Error} should exceed {logits.Tolerance}");
        Assert.InRange(logits.Error, 1e-4, 0.1);
    }
}
