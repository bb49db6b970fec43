using Loupe.Models.Processing;
using Loupe.Models.Tests.Devices;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Tests.Processing;

/// <summary>Processed weights on the GPU backend's kernels (emulated): folded norms run without weight or bias there too.</summary>
public sealed class ProcessedOnDeviceTests(EmulatedBackendFixture fixture) : IClassFixture<EmulatedBackendFixture>
{
    [Theory]
    [InlineData("gpt2", "tl,refactor_factored_attn_matrices")]
    [InlineData("qwen2", "fold_ln,center_unembed,fold_value_biases")]
    public void ProcessedModelsMatchTheCpuBackend(string arch, string options)
    {
        var processing = WeightProcessing.Parse(options);
        using var reference = new ReferenceFixture(arch);
        using var cpu = ModelLoader.LoadFolder(reference.Folder, CpuBackend.Instance, processing);
        using var device = ModelLoader.LoadFolder(reference.Folder, fixture.Backend, processing);
        string hooks = string.Join(',', cpu.HookPointNames.Where(n => n.EndsWith("hook_scale", StringComparison.Ordinal) || n.EndsWith("hook_normalized", StringComparison.Ordinal)));
        var expected = cpu.RunWithCache(reference.Tokens, hooks);
        var actual = device.RunWithCache(reference.Tokens, hooks);
        foreach (var name in expected.Cache.Names.Append("logits"))
        {
            var e = (name == "logits" ? expected.Logits : expected.Cache[name]).ToCpu().Span.ToArray();
            var a = (name == "logits" ? actual.Logits : actual.Cache[name]).ToCpu().Span.ToArray();
            double scale = e.Max(v => Math.Abs((double)v));
            double worst = e.Zip(a, (x, y) => Math.Abs((double)x - y)).Max();
            Assert.True(worst <= 1e-5 * scale, $"{arch} {name}: max |Δ| {worst:G3} of {scale:G3}");
        }
    }
}
