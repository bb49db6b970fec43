using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Attribution.Tests.Devices;

/// <summary>
/// Interventions (set or scale features, add vectors; free or frozen; steered generation) with the model and the
/// transcoders on the GPU backend's kernels (emulated on the CPU): the logits, the reported next-token probabilities
/// and the generated tokens equal the CPU's, and a run copies the token ids in and the last logits out.
/// </summary>
public sealed class DeviceInterventionTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>
{
    static readonly int[] Prompt = [1, 37, 211, 5, 88, 400, 12];

    static HookedTransformer Load(string arch, IComputeBackend? backend = null) =>
        ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", arch)), backend);

    // A set at one position, a scale (2×) at every position, an ablation, and a second layer's set.
    static FeatureIntervention[] Edits(IMlpReplacement tc) =>
    [
        new(0, 3, 5, 4f),
        new(0, -1, 2, 2f, InterventionKind.Scale),
        new(1, -1, 7, 0f, InterventionKind.Scale),
        new(tc.Layers - 1, 6, 1, 3f),
    ];

    static void AssertSameRun(InterventionResult expected, InterventionResult actual, string what)
    {
        float[] a = expected.Run.Logits.ToCpu().Span.ToArray(), b = actual.Run.Logits.ToCpu().Span.ToArray();
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++) GraphTestData.Close(a[i], b[i], 1e-4, 1e-4, $"{what} logit {i}");
        for (int i = 0; i < expected.LastLogits.Length; i++) GraphTestData.Close(expected.LastLogits[i], actual.LastLogits[i], 1e-4, 1e-4, $"{what} last logit {i}");
        Assert.Equal(expected.Top.Select(t => t.Token), actual.Top.Select(t => t.Token));
        for (int i = 0; i < expected.Top.Length; i++) GraphTestData.Close(expected.Top[i].Probability, actual.Top[i].Probability, 1e-4, 1e-7, $"{what} probability {i}");
    }

    void AssertInterventionsMatch(string arch, Func<HookedTransformer, IMlpReplacement> transcoders)
    {
        using var cpu = Load(arch);
        using var gpu = Load(arch, device.Backend);
        var onCpu = new ReplacementModel(cpu, transcoders(cpu));
        var onDevice = new ReplacementModel(gpu, transcoders(gpu));
        var edits = Edits(onCpu.Transcoders);
        var unedited = onCpu.Run(Prompt);
        var free = onCpu.Run(Prompt, edits);
        // The edits must change something, or the comparison below proves nothing.
        Assert.True(free.LastLogits.Zip(unedited.LastLogits).Max(p => Math.Abs(p.First - p.Second)) > 1e-3, "the edits change the logits");
        AssertSameRun(unedited, onDevice.Run(Prompt), $"{arch} unedited");
        AssertSameRun(free, onDevice.Run(Prompt, edits), $"{arch} free");

        var vector = Enumerable.Range(0, cpu.Config.DModel).Select(i => MathF.Sin(i) * 0.5f).ToArray();
        AddedVector[] added = [new(onCpu.Transcoders.OutputHook(1), 4, vector), new(HookNames.Embed, 2, vector)];
        var frozenCpu = onCpu.Freeze(Prompt);
        var frozenGpu = onDevice.Freeze(Prompt);
        AssertSameRun(onCpu.Run(Prompt, edits, frozenCpu, added), onDevice.Run(Prompt, edits, frozenGpu, added), $"{arch} frozen");
        // A frozen value is never overwritten: running again unedited gives the frozen prompt's own logits.
        AssertSameRun(onCpu.Run(Prompt, frozen: frozenCpu), onDevice.Run(Prompt, frozen: frozenGpu), $"{arch} frozen again");

        var generation = new GenerationOptions(MaxNewTokens: 6, StopAtEos: false);
        Assert.Equal(onCpu.Generate(Prompt, edits, generation), onDevice.Generate(Prompt, edits, generation));
    }

    [Fact]
    public void Per_layer_transcoder_interventions_on_the_device_give_the_cpus_logits_and_tokens() =>
        AssertInterventionsMatch("llama", m => FamilyAttributionTests.RandomTranscoders(m));

    [Fact]
    public void Skip_transcoder_interventions_on_the_device_give_the_cpus_logits_and_tokens() =>
        AssertInterventionsMatch("llama", m => FamilyAttributionTests.RandomSkipTranscoders(m, readsResidMid: true));

    [Fact]
    public void Cross_layer_transcoder_interventions_on_the_device_give_the_cpus_logits_and_tokens() =>
        AssertInterventionsMatch("gpt_neox", m => DeviceAttributionGraphTests.RandomClt(m));

    [Fact]
    public void Cross_layer_transcoder_interventions_with_its_decoders_on_the_host_give_the_cpus_logits_and_tokens() =>
        AssertInterventionsMatch("gpt_neox", m =>
        {
            var clt = DeviceAttributionGraphTests.RandomClt(m);
            clt.DecodersOnDevice = DeviceDecoders.ActiveRows; // the device's copy uploads the active features' rows per pass
            return clt;
        });

    // An IMlpReplacement without device kernels (only its host interface is visible).
    sealed class HostOnly(IMlpReplacement inner) : IMlpReplacement
    {
        public int Layers => inner.Layers;
        public int DIn => inner.DIn;
        public int DOut => inner.DOut;
        public bool HasSkip => inner.HasSkip;
        public float[]? SkipWeights(int layer) => inner.SkipWeights(layer);
        public string Fingerprint => inner.Fingerprint;
        public string Source => inner.Source;
        public int Features(int layer) => inner.Features(layer);
        public string InputHook(int layer) => inner.InputHook(layer);
        public string OutputHook(int layer) => inner.OutputHook(layer);
        public int LastTarget(int layer) => inner.LastTarget(layer);
        public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts) => inner.Encode(layer, x, rows, pre, acts);
        public void EncoderDirection(int layer, int feature, Span<float> into) => inner.EncoderDirection(layer, feature, into);
        public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into) => inner.DecoderDirection(layer, feature, targetLayer, into);
        public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon) =>
            inner.Reconstruct(targetLayer, acts, inputs, rows, recon);
    }

    [Fact]
    public void A_replacement_without_device_kernels_edits_through_the_host_and_gives_the_same_logits()
    {
        using var cpu = Load("llama");
        using var gpu = Load("llama", device.Backend);
        var onCpu = new ReplacementModel(cpu, FamilyAttributionTests.RandomTranscoders(cpu));
        var onDevice = new ReplacementModel(gpu, new HostOnly(FamilyAttributionTests.RandomTranscoders(gpu)));
        var edits = Edits(onCpu.Transcoders);
        var before = gpu.Backend.Transfers.Snapshot();
        AssertSameRun(onCpu.Run(Prompt, edits), onDevice.Run(Prompt, edits), "host-only");
        Assert.True((gpu.Backend.Transfers.Snapshot() - before).In(TransferKind.Data) > 0, "the host path uploads its edited outputs");
    }

    [Fact]
    public void A_run_copies_the_ids_and_edits_in_and_the_last_logits_out()
    {
        using var gpu = Load("llama", device.Backend);
        var weights = DeviceMlpReplacement.Upload(FamilyAttributionTests.RandomTranscoders(gpu), gpu.Backend);
        var replacement = new ReplacementModel(gpu, weights);
        gpu.Run(TokenBatch.Single(Prompt)); // places the model's weights
        var start = gpu.Backend.Transfers.Snapshot();
        gpu.Run(TokenBatch.Single(Prompt));
        var forward = gpu.Backend.Transfers.Snapshot() - start;

        var edits = Edits(weights.Replacement);
        int layers = edits.Select(e => e.Layer).Distinct().Count(); // per-layer transcoders: each edited layer writes itself only
        var before = gpu.Backend.Transfers.Snapshot();
        replacement.Run(Prompt, edits);
        var moved = gpu.Backend.Transfers.Snapshot() - before;
        Console.WriteLine($"device intervention, llama fixture, {edits.Length} edits on {layers} layers: {moved}; a forward: {forward}");
        // In: the forward's ids; per edited layer its coefficient table (once per run), the (row, feature) and (row, edit)
        // index lists at its input, and the decoder-row and output-row index lists at its output. No activation goes in.
        Assert.Equal(0, moved.In(TransferKind.Data));
        Assert.Equal(layers, moved.In(TransferKind.Weights));
        Assert.Equal(forward.In(TransferKind.Inputs) + 4 * layers, moved.In(TransferKind.Inputs));
        // Out: the last position's logits (what is reported), and the forward's finite check.
        Assert.Equal(1, moved.Out(TransferKind.Data));
        Assert.Equal(forward.Out(TransferKind.Scalars), moved.Out(TransferKind.Scalars));
        Assert.Equal(forward.Out(TransferKind.Weights), moved.Out(TransferKind.Weights));
    }
}
