using Loupe.Dictionaries.Sae;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>One emulated GPU backend for the class: ILGPU contexts and compiled kernels are costly.</summary>
public sealed class EmulatedSaeBackendFixture : IDisposable
{
    public IComputeBackend Backend { get; } = ComputeBackends.Create(new Device(DeviceKind.Emulated));
    public void Dispose() => (Backend as IDisposable)?.Dispose();
}

/// <summary>
/// The TopK SAE step on a backend (CPU, and the GPU kernels on ILGPU's CPU accelerator) against the CPU trainer's
/// math: SparseDictionary.ForwardBackward's loss and gradients, then SaeTrainer's Adam, step by step.
/// </summary>
public sealed class DeviceTopKStepTests(EmulatedSaeBackendFixture fixture) : IClassFixture<EmulatedSaeBackendFixture>
{
    const int DIn = 16, DSae = 64, K = 4, Batch = 32;
    const float Lr = 1e-3f, Beta1 = 0.9f, Beta2 = 0.999f, Eps = 1e-8f;

    IComputeBackend BackendNamed(string name) => name == "cpu" ? CpuBackend.Instance : fixture.Backend;

    static SparseDictionary NewSae()
    {
        var sae = new SparseDictionary(SaeShape.Sae(DIn, DSae), new TopKActivation(K));
        sae.Initialize(seed: 5);
        var rng = new Random(6);
        for (int i = 0; i < DIn; i++) sae.P.BDec[i] = 0.05f * SparseDictionary.Gaussian(rng); // b_dec's input path is exercised
        return sae;
    }

    static float[] RandomBatch(int seed)
    {
        var rng = new Random(seed);
        var x = new float[Batch * DIn];
        for (int i = 0; i < x.Length; i++) x[i] = SparseDictionary.Gaussian(rng) * 0.3f + 0.1f;
        return x;
    }

    /// <summary>SaeTrainer's Adam update (1-based step), in float as it runs there.</summary>
    static void Adam(float[] p, float[] g, float[] m, float[] v, int step)
    {
        float bc1 = 1 - MathF.Pow(Beta1, step), bc2 = 1 - MathF.Pow(Beta2, step);
        for (int i = 0; i < p.Length; i++)
        {
            m[i] = Beta1 * m[i] + (1 - Beta1) * g[i];
            v[i] = Beta2 * v[i] + (1 - Beta2) * g[i] * g[i];
            p[i] -= Lr / bc1 * m[i] / (MathF.Sqrt(v[i] * (1 / bc2)) + Eps);
        }
    }

    /// <summary>|actual − expected| ≤ relative · max |expected| over the tensor.</summary>
    static void Close(ReadOnlySpan<float> expected, Tensor actual, double relative, string what)
    {
        var a = actual.ToCpu().Span;
        Assert.Equal(expected.Length, a.Length);
        double scale = 0, worst = 0;
        int at = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            scale = Math.Max(scale, Math.Abs(expected[i]));
            double d = Math.Abs(expected[i] - a[i]);
            if (!(d <= worst)) { worst = double.IsNaN(d) ? double.PositiveInfinity : d; at = i; }
        }
        Assert.True(worst <= relative * Math.Max(scale, 1e-12),
            $"{what}: max |Δ| {worst:G4} at {at} (expected {expected[at]}, got {a[at]}); allowed {relative:G2} × {scale:G4}");
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("emulated")]
    public void LossGradientsAndParametersMatchTheCpuTrainerOverThreeSteps(string backendName)
    {
        var backend = BackendNamed(backendName);
        var reference = NewSae();
        var step = new DeviceTopKStep(backend, NewSae(), Beta1, Beta2, Eps);
        var grad = new SaeParameters(reference.Shape);
        var moments = reference.P.Trainable(reference.Activation).Select(t => (M: new float[t.Data.Length], V: new float[t.Data.Length])).ToArray();
        for (int t = 1; t <= 3; t++)
        {
            var x = RandomBatch(100 + t);
            var expected = reference.ForwardBackward(x, x, Batch, 0f, grad);
            double loss = step.Step(backend.ToDevice(Tensor.FromArray(x, Batch, DIn)), Lr, t);
            Assert.InRange(loss, expected.Mse * (1 - 1e-4), expected.Mse * (1 + 1e-4));
            Close(grad.WEnc, step.Gradient("W_enc"), 1e-4, $"step {t} dW_enc");
            Close(grad.BEnc, step.Gradient("b_enc"), 1e-4, $"step {t} db_enc");
            Close(grad.WDec, step.Gradient("W_dec"), 1e-4, $"step {t} dW_dec");
            Close(grad.BDec, step.Gradient("b_dec"), 1e-4, $"step {t} db_dec");

            var trainable = reference.P.Trainable(reference.Activation).ToArray();
            var grads = grad.Trainable(reference.Activation).ToArray();
            for (int i = 0; i < trainable.Length; i++) Adam(trainable[i].Data, grads[i].Data, moments[i].M, moments[i].V, t);
            if (t is 1 or 3)
                foreach (var (name, data) in trainable) Close(data, step.Parameter(name), 1e-4, $"step {t} {name}");
        }

        var back = new SparseDictionary(reference.Shape, new TopKActivation(K));
        step.CopyTo(back);
        Close(reference.P.WEnc, Tensor.FromArray(back.P.WEnc, back.P.WEnc.Length), 1e-4, "copied W_enc");
        Close(reference.P.BDec, Tensor.FromArray(back.P.BDec, back.P.BDec.Length), 1e-4, "copied b_dec");
    }

    [Fact]
    public void AStepOnTheDeviceReadsBackOnlyTheLoss()
    {
        var backend = fixture.Backend;
        var step = new DeviceTopKStep(backend, NewSae(), Beta1, Beta2, Eps);
        var x = backend.ToDevice(Tensor.FromArray(RandomBatch(7), Batch, DIn));
        step.Step(x, Lr, 1); // first step allocates its buffers; the next ones only compute

        var before = backend.Transfers.Snapshot();
        step.Step(x, Lr, 2);
        step.Step(x, Lr, 3);
        var moved = backend.Transfers.Snapshot() - before;
        Assert.True(moved.In(TransferKind.Data) == 0 && moved.Out(TransferKind.Data) == 0, $"data copied during steps: {moved}");
        Assert.True(moved.In(TransferKind.Weights) == 0 && moved.In(TransferKind.Inputs) == 0, $"uploads during steps: {moved}");
        Assert.True(moved.Out(TransferKind.Scalars) == 2, $"expected one scalar read per step: {moved}");

        var copied = backend.Transfers.Snapshot();
        step.CopyTo(new SparseDictionary(SaeShape.Sae(DIn, DSae), new TopKActivation(K)));
        Assert.Equal(4, (backend.Transfers.Snapshot() - copied).Out(TransferKind.Data));
    }

    [Fact]
    public void ADictionaryThatIsNotATopKSaeIsRefused()
    {
        var relu = new SparseDictionary(SaeShape.Sae(DIn, DSae), new ReluActivation());
        Assert.Throws<ArgumentException>(() => new DeviceTopKStep(CpuBackend.Instance, relu));
        var transcoder = new SparseDictionary(SaeShape.Transcoder(DIn, DSae, DIn), new TopKActivation(K));
        Assert.Throws<ArgumentException>(() => new DeviceTopKStep(CpuBackend.Instance, transcoder));
    }
}
