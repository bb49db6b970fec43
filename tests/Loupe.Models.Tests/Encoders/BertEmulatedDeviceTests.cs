using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Metrics;
using Loupe.Models.Tests.Devices;
using Loupe.Testing;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Tests.Encoders;

/// <summary>The BERT family on the GPU backend's kernels (ILGPU's CPU accelerator): padding mask, token types, MLM head, gradients.</summary>
public sealed class BertEmulatedDeviceTests(EmulatedBackendFixture fixture) : IClassFixture<EmulatedBackendFixture>, IDisposable
{
    readonly string _folder = SharedData.TestData(Path.Combine("reference", "bert"));
    readonly SafeTensorsFile _ref = SafeTensorsFile.Open(Path.Combine(SharedData.TestData(Path.Combine("reference", "bert")), "reference.safetensors"));

    public void Dispose() => _ref.Dispose();

    static void AssertClose(Tensor expected, Tensor actual, double relative, string what)
    {
        var e = expected.ToCpu().Span;
        var a = actual.ToCpu().Span;
        Assert.Equal(e.Length, a.Length);
        double scale = 1e-6, worst = 0;
        for (int i = 0; i < e.Length; i++)
        {
            if (float.IsNegativeInfinity(e[i]) && float.IsNegativeInfinity(a[i])) continue; // masked scores
            scale = Math.Max(scale, Math.Abs(e[i]));
            worst = Math.Max(worst, double.IsNaN(a[i]) ? double.PositiveInfinity : Math.Abs(e[i] - a[i]));
        }
        Assert.True(worst <= relative * scale, $"{what}: max |Δ| {worst:G4}, allowed {relative:G2} × {scale:G4}");
    }

    [Fact]
    public void Activations_logits_and_gradients_match_the_cpu_backend_and_hugging_face()
    {
        var tokens = BertReferenceTests.Inputs(_ref);
        using var cpu = ModelLoader.LoadFolder(_folder);
        using var device = ModelLoader.LoadFolder(_folder, fixture.Backend);
        var expected = cpu.RunWithCache(tokens);
        var actual = device.RunWithCache(tokens);
        Assert.Equal(expected.Cache.Names, actual.Cache.Names);
        foreach (var name in expected.Cache.Names)
        {
            Assert.Equal(fixture.Backend.Device, actual.Cache[name].Device);
            AssertClose(expected.Cache[name], actual.Cache[name], 1e-5, name);
        }
        ReferenceFixture.AssertClose(_ref.GetFloat32("mlm_logits").Span, actual.Logits.ToCpu().Span, 1e-4f, "mlm_logits vs HF on the device");

        var metric = new LogitDiff(17, 42, position: 4);
        var g1 = cpu.RunWithGradients(tokens, metric, "hook_full_embed,blocks.*.hook_resid_pre,blocks.*.hook_normalized_resid_post");
        var g2 = device.RunWithGradients(tokens, metric, "hook_full_embed,blocks.*.hook_resid_pre,blocks.*.hook_normalized_resid_post");
        Assert.Equal(g1.Metric, g2.Metric, 1e-4 * Math.Max(1, Math.Abs(g1.Metric)));
        foreach (var name in g1.Gradients.Names) AssertClose(g1.Gradients[name], g2.Gradients[name], 1e-4, $"∇ {name}");
    }
}
