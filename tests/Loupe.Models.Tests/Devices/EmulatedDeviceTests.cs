using Loupe.Models.Generation;
using Loupe.Models.Loading;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;

namespace Loupe.Models.Tests.Devices;

/// <summary>One emulated GPU backend for the whole class: ILGPU contexts and compiled kernels are costly.</summary>
public sealed class EmulatedBackendFixture : IDisposable
{
    public IComputeBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));
    public void Dispose() => (Backend as IDisposable)?.Dispose();
}

/// <summary>
/// Every model family on the GPU backend's kernels (run by ILGPU's CPU accelerator), against the CPU
/// backend on the HF reference fixtures: logits, every cached activation, gradients, generation, and
/// the host↔device copies each kind of pass makes.
/// </summary>
public sealed class EmulatedDeviceTests(EmulatedBackendFixture fixture) : IClassFixture<EmulatedBackendFixture>
{
    IComputeBackend Device => fixture.Backend;

    public static TheoryData<string> Families => new() { "gpt2", "gpt_neox", "llama", "qwen2", "gemma2" };

    static void AssertClose(Tensor expected, Tensor actual, double relative, string what)
    {
        Assert.True(expected.SameShape(actual), $"{what}: shape {actual.ShapeString}, expected {expected.ShapeString}");
        var e = expected.ToCpu().Span;
        var a = actual.ToCpu().Span;
        double scale = 0, worst = 0;
        int at = 0;
        for (int i = 0; i < e.Length; i++)
        {
            if (float.IsNegativeInfinity(e[i]) && float.IsNegativeInfinity(a[i])) continue; // masked scores
            scale = Math.Max(scale, Math.Abs(e[i]));
            double d = Math.Abs(e[i] - a[i]);
            if (!(d <= worst)) { worst = double.IsNaN(d) ? double.PositiveInfinity : d; at = i; }
        }
        Assert.True(worst <= relative * Math.Max(scale, 1e-6), $"{what}: max |Δ| {worst:G4} at {at} (cpu {e[at]}, device {a[at]}); allowed {relative:G2} × {scale:G4}");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void EveryActivationAndTheLogitsMatchTheCpuBackend(string arch)
    {
        using var reference = new ReferenceFixture(arch);
        using var cpu = ModelLoader.LoadFolder(reference.Folder);
        using var device = ModelLoader.LoadFolder(reference.Folder, Device);
        var expected = cpu.RunWithCache(reference.Tokens);
        var actual = device.RunWithCache(reference.Tokens);
        Assert.Equal(expected.Cache.Names, actual.Cache.Names);
        foreach (var name in expected.Cache.Names)
        {
            Assert.Equal(Device.Device, actual.Cache[name].Device);
            AssertClose(expected.Cache[name], actual.Cache[name], 1e-5, $"{arch} {name}");
        }
        AssertClose(expected.Logits, actual.Logits, 1e-5, $"{arch} logits");
        // And against Hugging Face itself, as the CPU parity tests do.
        ReferenceFixture.AssertClose(reference.Get("logits"), actual.Logits.ToCpu().Span, 1e-4f, $"{arch} logits vs HF");
    }

    /// <summary>TransformerLens toy models: shortformer positions (queries and keys only) and SoLU with its own LayerNorm.</summary>
    [Theory]
    [InlineData("shortformer-attn-only-2l")]
    [InlineData("solu-2l")]
    public void TransformerLensToyModelsMatchTheCpuBackendForwardAndBackward(string name)
    {
        string folder = Loupe.Testing.SharedData.TestData(Path.Combine("transformer_lens", name));
        using var cpu = ModelLoader.LoadFolder(folder);
        using var device = ModelLoader.LoadFolder(folder, Device);
        var tokens = TokenBatch.FromRows([[3, 17, 5, 11, 3, 17, 8, 2], [1, 2, 3, 4, 5, 6, 7, 8]]);
        var expected = cpu.RunWithCache(tokens);
        var actual = device.RunWithCache(tokens);
        Assert.Equal(expected.Cache.Names, actual.Cache.Names);
        foreach (var hook in expected.Cache.Names)
            AssertClose(expected.Cache[hook], actual.Cache[hook], 1e-5, $"{name} {hook}");
        AssertClose(expected.Logits, actual.Logits, 1e-5, $"{name} logits");
        var metric = new LogitDiff(4, 9);
        // the split pass (per-head query inputs) on the attention-only one, SoLU's hook_mid on the other
        string hooks = "hook_embed,hook_pos_embed," + (cpu.Config.HasMlp ? "blocks.*.mlp.hook_mid" : "blocks.1.hook_q_input");
        var cpuGrad = cpu.RunWithGradients(tokens, metric, hooks);
        var deviceGrad = device.RunWithGradients(tokens, metric, hooks);
        Assert.Equal(cpuGrad.Gradients.Names, deviceGrad.Gradients.Names);
        foreach (var hook in cpuGrad.Gradients.Names)
            AssertClose(cpuGrad.Gradients[hook], deviceGrad.Gradients[hook], 1e-4, $"{name} ∇ {hook}");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void GradientsMatchTheCpuBackend(string arch)
    {
        using var reference = new ReferenceFixture(arch);
        using var cpu = ModelLoader.LoadFolder(reference.Folder);
        using var device = ModelLoader.LoadFolder(reference.Folder, Device);
        var metric = new LogitDiff(reference.MetricTokens[0], reference.MetricTokens[1]);
        var expected = cpu.RunWithGradients(reference.Tokens, metric);
        var actual = device.RunWithGradients(reference.Tokens, metric);
        Assert.Equal(expected.Metric, actual.Metric, 1e-4 * Math.Max(1, Math.Abs(expected.Metric)));
        Assert.Equal(expected.Gradients.Names, actual.Gradients.Names);
        foreach (var name in expected.Gradients.Names)
            AssertClose(expected.Gradients[name], actual.Gradients[name], 1e-4, $"{arch} ∇ {name}");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    public void TheSplitPerHeadInputPassMatchesTheCpuBackend(string arch)
    {
        // A hook at hook_q_input (scaling one head's copy) puts the block on the split pass: per-head norms and strided GEMMs.
        using var reference = new ReferenceFixture(arch);
        using var cpu = ModelLoader.LoadFolder(reference.Folder);
        using var device = ModelLoader.LoadFolder(reference.Folder, Device);
        var metric = new LogitDiff(reference.MetricTokens[0], reference.MetricTokens[1]);
        string read = "blocks.*.hook_q_input,blocks.*.hook_k_input,blocks.*.hook_v_input,blocks.*.hook_resid_pre,blocks.*.attn.hook_q";
        RunOptions Scaled(IComputeBackend be) => new RunOptions().CacheMatching(new HookPattern(read)).AddHook(HookNames.QInput(1), (x, _) =>
        {
            var y = be.Empty(x.Shape.ToArray());
            be.Scale(x, 0.5f, y);
            return y;
        });
        var expected = cpu.RunWithGradients(reference.Tokens, metric, read, Scaled(cpu.Backend));
        var actual = device.RunWithGradients(reference.Tokens, metric, read, Scaled(Device));
        Assert.Equal(expected.Metric, actual.Metric, 1e-4 * Math.Max(1, Math.Abs(expected.Metric)));
        Assert.Equal(expected.Gradients.Names, actual.Gradients.Names);
        foreach (var name in expected.Gradients.Names)
        {
            AssertClose(expected.Activations[name], actual.Activations[name], 1e-5, $"{arch} {name}");
            AssertClose(expected.Gradients[name], actual.Gradients[name], 1e-4, $"{arch} ∇ {name}");
        }
    }

    [Theory]
    [InlineData("log_prob")]
    [InlineData("span_loss")]
    public void LogProbAndSpanLossAreDifferentiatedOnTheDevice(string which)
    {
        using var reference = new ReferenceFixture("gpt_neox");
        using var cpu = ModelLoader.LoadFolder(reference.Folder);
        using var device = ModelLoader.LoadFolder(reference.Folder, Device);
        IMetric metric = which == "log_prob" ? new LogProb(17, position: 5) : new SpanLoss(reference.Tokens, 2, -1);
        var expected = cpu.RunWithGradients(reference.Tokens, metric, "blocks.*.hook_resid_pre");
        device.Run(reference.Tokens); // places the weights
        var before = Device.Transfers.Snapshot();
        var actual = device.RunWithGradients(reference.Tokens, metric, "blocks.*.hook_resid_pre");
        var copies = Device.Transfers.Snapshot() - before;
        Assert.Equal(expected.Metric, actual.Metric, 1e-4 * Math.Max(1, Math.Abs(expected.Metric)));
        foreach (var name in expected.Gradients.Names)
            AssertClose(expected.Gradients[name], actual.Gradients[name], 1e-4, $"{which} ∇ {name}");
        Assert.Equal(0, copies.In(TransferKind.Data));
        Assert.Equal(0, copies.Out(TransferKind.Data));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void Bf16WeightsStayWithinBf16PrecisionOfTheCpu(string arch)
    {
        using var reference = new ReferenceFixture(arch);
        using var bf16 = ComputeBackends.Create(new Device(DeviceKind.Emulated), ElementType.BF16);
        using var cpu = ModelLoader.LoadFolder(reference.Folder);
        using var device = ModelLoader.LoadFolder(reference.Folder, bf16);
        var expected = cpu.Run(reference.Tokens).Logits;
        var actual = device.Run(reference.Tokens).Logits;
        // The weights are rounded to bf16 (8 bits of mantissa); that is the only rounding: the activations enter each
        // product as two bf16 parts, so the CPU computing with the same rounded weights agrees to fp32-ish precision.
        AssertClose(expected, actual, 3e-2, $"{arch} logits, bf16 weights");
        Assert.Equal(ElementType.BF16, device.UnembedLayer.WeightOn(bf16).Storage.ElementType);
        using var sameWeights = ModelLoader.LoadFolder(reference.Folder, CpuBackend.WithRoundedWeights(ElementType.BF16));
        AssertClose(sameWeights.Run(reference.Tokens).Logits, actual, 1e-4, $"{arch} logits, the same bf16 weights on the CPU");
        // Rounded activations (torch's bf16 arithmetic, one product) stay within bf16 precision too.
        bf16.HalfActivations = HalfActivations.Rounded;
        AssertClose(expected, device.Run(reference.Tokens).Logits, 3e-2, $"{arch} logits, bf16 weights, rounded activations");
    }

    /// <summary>
    /// fp16 ends at ±65,504, where fp32 activations need not: an MLP's hidden units edited to 1e6× enter the next product
    /// row-scaled into fp16's range, so the fp16 run stays finite and agrees with the CPU computing the same edit with the
    /// same fp16-rounded weights. A weight fp16 cannot hold is refused when it is placed, naming the way out.
    /// </summary>
    [Fact]
    public void Fp16ProductsKeepActivationsBeyondFp16sRange()
    {
        using var reference = new ReferenceFixture("llama");
        static RunOptions Huge(IComputeBackend be) =>
            new RunOptions().AddHook("blocks.0.mlp.hook_post", (t, _) => { var y = be.Empty(t.Shape.ToArray()); be.Scale(t, 1e6f, y); return y; });
        using var cpu = ModelLoader.LoadFolder(reference.Folder, CpuBackend.WithRoundedWeights(ElementType.F16));
        var expected = cpu.Run(reference.Tokens, Huge(CpuBackend.Instance)).Logits;
        using var f16 = ComputeBackends.Create(new Device(DeviceKind.Emulated), ElementType.F16);
        using var model = ModelLoader.LoadFolder(reference.Folder, f16);
        AssertClose(expected, model.Run(reference.Tokens, Huge(f16)).Logits, 1e-4, "llama logits, fp16 weights, mlp hook_post × 1e6");

        var e = Assert.Throws<InputError>(() => f16.LoadWeight(new float[] { 1f, 7e4f }, [1, 2], ElementType.F16));
        Assert.Contains("70000", e.Message);
        Assert.Contains("--dtype bf16", e.Message);
    }

    /// <summary>Weights reach the device at first use, deep inside a forward: the refusal names the weight by its TransformerLens name.</summary>
    [Fact]
    public void AWeightFp16CannotHoldIsRefusedByName()
    {
        using var reference = new ReferenceFixture("llama");
        string folder = Directory.CreateTempSubdirectory("loupe-fp16-range").FullName;
        try
        {
            File.Copy(Path.Combine(reference.Folder, "config.json"), Path.Combine(folder, "config.json"));
            using (var file = SafeTensorsFile.Open(Path.Combine(reference.Folder, "model.safetensors")))
                SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), file.Names.Select(name =>
                {
                    var values = file.GetFloat32(name).ToArray();
                    if (name == "model.layers.1.mlp.down_proj.weight") values[5] = 1e5f;
                    return (name, file.GetInfo(name).Shape.Select(d => (int)d).ToArray(), (ReadOnlyMemory<float>)values);
                }).ToList());
            using var f16 = ComputeBackends.Create(new Device(DeviceKind.Emulated), ElementType.F16);
            using var model = ModelLoader.LoadFolder(folder, f16);
            var e = Assert.Throws<InputError>(() => model.Run(reference.Tokens));
            Assert.StartsWith("blocks.1.mlp.W_out: ", e.Message);
            Assert.Contains("100000", e.Message);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void GreedyGenerationWithAKvCachePicksTheSameTokens(string arch)
    {
        using var cpu = TestModels.Load(arch);
        using var device = ModelLoader.LoadFolder(TestModels.Fixture(arch), Device);
        int[][] prompts = [[5, 9, 100, 7], [3, 4]];
        var options = new GenerationOptions(MaxNewTokens: 6, StopAtEos: false);
        Assert.Equal(cpu.Generate(prompts, options), device.Generate(prompts, options));
    }

    [Fact]
    public void HooksSeeDeviceTensorsAndHostEditsAreMovedToTheDevice()
    {
        using var reference = new ReferenceFixture("gpt2");
        using var cpu = ModelLoader.LoadFolder(reference.Folder);
        using var device = ModelLoader.LoadFolder(reference.Folder, Device);
        Tensor ZeroOnDevice(Tensor t, HookContext _)
        {
            Assert.False(t.IsHost);
            Assert.Equal(Device.Device, t.Device);
            Assert.Throws<InvalidOperationException>(() => t.Span.Length);
            return Tensor.Zeros(t.Shape.ToArray()); // a host tensor: the context uploads it
        }
        var expected = cpu.Run(reference.Tokens, new RunOptions().AddHook("blocks.1.hook_mlp_out", (t, _) => Tensor.Zeros(t.Shape.ToArray())));
        var before = Device.Transfers.Snapshot();
        var actual = device.Run(reference.Tokens, new RunOptions().AddHook("blocks.1.hook_mlp_out", ZeroOnDevice));
        Assert.Equal(1, (Device.Transfers.Snapshot() - before).In(TransferKind.Data)); // the edit, uploaded
        AssertClose(expected.Logits, actual.Logits, 1e-5, "logits with a zero-ablated mlp_out");
    }

    [Fact]
    public void APassCopiesOnlyTheTokensInAndWhatWasAskedForOut()
    {
        using var reference = new ReferenceFixture("llama");
        using var model = ModelLoader.LoadFolder(reference.Folder, Device);
        var metric = new LogitDiff(reference.MetricTokens[0], reference.MetricTokens[1]);
        model.RunWithGradients(reference.Tokens, metric); // places the weights
        var t = Device.Transfers;

        var before = t.Snapshot();
        var forward = model.Run(reference.Tokens);
        var copies = t.Snapshot() - before;
        Assert.Equal(0, copies.In(TransferKind.Data));
        Assert.Equal(0, copies.Out(TransferKind.Data));
        Assert.Equal(0, copies.In(TransferKind.Weights));
        Assert.True(copies.Out(TransferKind.Scalars) <= 1, $"forward: {copies}"); // the finite check of the logits

        before = t.Snapshot();
        var cached = model.RunWithCache(reference.Tokens, "blocks.*.hook_resid_post");
        copies = t.Snapshot() - before;
        Assert.Equal(0, copies.Out(TransferKind.Data));
        before = t.Snapshot();
        _ = cached.Cache["blocks.0.hook_resid_post"].ToCpu();
        Assert.Equal(1, (t.Snapshot() - before).Out(TransferKind.Data));

        before = t.Snapshot();
        model.RunWithGradients(reference.Tokens, metric, "blocks.*.hook_resid_pre");
        copies = t.Snapshot() - before;
        Assert.Equal(0, copies.In(TransferKind.Data));
        Assert.Equal(0, copies.Out(TransferKind.Data));
        Assert.Equal(0, copies.In(TransferKind.Weights));

        before = t.Snapshot();
        var onHost = model.RunWithCache(reference.Tokens, "blocks.*.hook_resid_post", new RunOptions { CacheOn = CacheLocation.Host });
        Assert.Equal(onHost.Cache.Count, (t.Snapshot() - before).Out(TransferKind.Data));
        Assert.All(onHost.Cache.Names, n => Assert.True(onHost.Cache[n].IsHost));
        _ = forward;
    }
}
