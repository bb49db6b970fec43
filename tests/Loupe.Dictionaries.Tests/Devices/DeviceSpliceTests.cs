using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Splice;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Xunit.Abstractions;
using static Loupe.Dictionaries.Tests.Splice.SpliceFixtures;

namespace Loupe.Dictionaries.Tests.Devices;

/// <summary>
/// SAE and transcoder splices with the model on the GPU backend's kernels (emulated on the CPU): logits, sub-hook
/// activations and gradients (sub-hooks and upstream) equal the CPU's to 1e-4, in every splice mode, and nothing
/// but the token ids goes in.
/// </summary>
public sealed class DeviceSpliceTests(EmulatedModelFixture device, ITestOutputHelper output) : IClassFixture<EmulatedModelFixture>
{
    const int D = 64;
    static readonly string Resid = HookNames.ResidPost(1);
    static readonly string MlpIn = HookNames.NormNormalized(1, "ln2");
    static readonly string MlpOut = HookNames.MlpOut(1);

    public static TheoryData<string, string, bool, bool> Cases => new()
    {
        // kind, activation, error term, exclude BOS
        { "sae", "relu", false, false },
        { "sae", "relu", true, true },
        { "sae", "topk", true, false },
        { "sae", "jumprelu", false, true },
        { "sae", "batchtopk", true, false },
        { "transcoder", "relu", true, false },
        { "skip-transcoder", "topk", false, true },
        { "skip-transcoder", "relu", true, true },
        { "hook_z", "relu", true, false },
    };

    static SparseDictionary Dictionary(SaeShape shape, string activation, int seed)
    {
        SaeActivation f = activation switch
        {
            "topk" => new TopKActivation(12),
            "jumprelu" => new JumpReluActivation(),
            "batchtopk" => new BatchTopKActivation(12),
            _ => new ReluActivation(),
        };
        var d = Random(shape, f, seed);
        if (f is JumpReluActivation) Array.Fill(d.P.LogThreshold, MathF.Log(0.02f));
        if (f is BatchTopKActivation) d.P.Threshold[0] = 0.015f;
        return d;
    }

    static SaeSplice Splice(HookedTransformer model, string kind, string activation, bool errorTerm, bool exclude)
    {
        var options = new SaeSpliceOptions { UseErrorTerm = errorTerm, ExcludeTokens = exclude ? [Bos] : null };
        return kind switch
        {
            "sae" => new SaeSplice(Dictionary(SaeShape.Sae(D, 96), activation, 1), Resid, options),
            "hook_z" => new SaeSplice(Dictionary(SaeShape.Sae(D, 48), activation, 4), HookNames.Z(1), options),
            _ => new SaeSplice(Dictionary(SaeShape.Transcoder(D, 80, D, kind == "skip-transcoder"), activation, 2), MlpIn, options with { OutputHook = MlpOut }),
        };
    }

    static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        var e = expected.ToCpu().Span;
        var a = actual.ToCpu().Span;
        Assert.Equal(expected.Shape.ToArray(), actual.Shape.ToArray());
        float scale = 0;
        foreach (float v in e) scale = MathF.Max(scale, MathF.Abs(v));
        for (int i = 0; i < e.Length; i++)
            Assert.True(MathF.Abs(e[i] - a[i]) <= 1e-4f * (1 + scale), $"{what} [{i}]: cpu {e[i]}, device {a[i]} (scale {scale})");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void SplicedForwardAndBackward_OnTheDevice_EqualTheCpus(string kind, string activation, bool errorTerm, bool exclude)
    {
        using var cpu = Model();
        var tokens = Tokens();
        var cpuSplice = Splice(cpu, kind, activation, errorTerm, exclude);
        var deviceSplice = Splice(device.Model, kind, activation, errorTerm, exclude);
        string o = cpuSplice.OutputHook;
        var hooks = new List<string> { HookNames.SaeInput(o), HookNames.SaeActsPre(o), HookNames.SaeActsPost(o), HookNames.SaeRecons(o), HookNames.SaeOutput(o), HookNames.ResidPre(0) };
        if (errorTerm) hooks.Add(HookNames.SaeError(o));
        var set = hooks.ToHashSet();
        var metric = new LogProb(17);
        var expected = cpu.RunWithGradients(tokens, metric, string.Join(",", hooks), new RunOptions { CacheFilter = set.Contains }.AddSplice(cpuSplice));
        var actual = device.Model.RunWithGradients(tokens, metric, string.Join(",", hooks), new RunOptions { CacheFilter = set.Contains }.AddSplice(deviceSplice));

        Assert.True(Math.Abs(expected.Metric - actual.Metric) <= 1e-4 * (1 + Math.Abs(expected.Metric)), $"metric: cpu {expected.Metric}, device {actual.Metric}");
        AssertClose(expected.Logits, actual.Logits, "logits");
        foreach (var hook in hooks)
        {
            if (hook != HookNames.ResidPre(0)) AssertClose(expected.Activations[hook], actual.Activations[hook], $"{hook} activation");
            AssertClose(expected.Gradients[hook], actual.Gradients[hook], $"{hook} gradient");
        }
        output.WriteLine($"{kind} {activation} error {errorTerm} exclude {exclude}: metric cpu {expected.Metric:G7}, device {actual.Metric:G7}");
    }

    [Fact]
    public void EditingAFeatureOnTheDevice_ChangesTheLogitsAsOnTheCpu()
    {
        using var cpu = Model();
        var tokens = Tokens();
        var cpuSplice = Splice(cpu, "sae", "relu", errorTerm: true, exclude: true);
        var deviceSplice = Splice(device.Model, "sae", "relu", errorTerm: true, exclude: true);
        // A forward hook on acts_post edits a feature; on the device it reads and writes device tensors.
        static RunOptions Edit(SaeSplice splice, bool onDevice, IComputeBackend? backend) => new RunOptions().AddSplice(splice).AddHook(splice.ActsPostHook, (a, _) =>
        {
            var host = a.ToCpu().Clone();
            for (int r = 0; r < host.Length / 96; r++) host.Span[r * 96 + 5] = 3f;
            return onDevice ? backend!.ToDevice(host) : host;
        });
        var expected = cpu.Run(tokens, Edit(cpuSplice, false, null)).Logits;
        var actual = device.Model.Run(tokens, Edit(deviceSplice, true, device.Backend)).Logits;
        AssertClose(expected, actual, "edited logits");
        float change = 0;
        var clean = cpu.Run(tokens).Logits;
        for (int i = 0; i < clean.Length; i++) change = MathF.Max(change, MathF.Abs(clean.Span[i] - expected.Span[i]));
        Assert.True(change > 1e-3f, $"the edit changed the logits by only {change}");
    }

    [Fact]
    public void ASplicedForwardAndBackward_CopyInOnlyTheTokenIds_AndOutWhatWasAsked()
    {
        var tokens = Tokens();
        var splice = Splice(device.Model, "skip-transcoder", "topk", errorTerm: true, exclude: true);
        var metric = new LogProb(17);
        string acts = splice.ActsPostHook;
        device.Model.RunWithGradients(tokens, metric, acts, new RunOptions().AddSplice(splice)); // uploads the weights once
        var transfers = device.Backend.Transfers;
        var before = transfers.Snapshot();
        var result = device.Model.RunWithGradients(tokens, metric, acts, new RunOptions().AddSplice(splice));
        var copies = transfers.Snapshot() - before;
        output.WriteLine(copies.ToString());
        Assert.Equal(0, copies.In(TransferKind.Data));
        Assert.Equal(0, copies.In(TransferKind.Weights));
        Assert.True(copies.In(TransferKind.Inputs) > 0, "the token ids go in");
        Assert.Equal(0, copies.Out(TransferKind.Data));
        Assert.False(result.Gradients[acts].Device.IsCpu);
    }
}
