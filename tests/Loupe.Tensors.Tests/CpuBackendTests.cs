using Loupe.Tensors.Backends;
using Loupe.Tensors.Blas;
using Loupe.Tensors.Kernels;

namespace Loupe.Tensors.Tests;

/// <summary>
/// <see cref="CpuBackend"/> is what model code calls: its own element-wise ops against scalar loops,
/// and its forwarding methods against the kernels they name (bit for bit). Every op against the
/// reference twins: <see cref="CpuBackendConformance"/>.
/// </summary>
[Collection(GemmPathCollection.Name)]
public class CpuBackendTests
{
    static readonly IComputeBackend Cpu = CpuBackend.Instance;

    [Fact]
    public void NameSaysWhichGemmPathIsInUse()
    {
        using (GemmPath.Use(GemmPath.Managed)) Assert.Equal("cpu+managed", Cpu.Name);
        using (GemmPath.Use(GemmPath.Blas)) Assert.Equal(OpenBlas.IsAvailable ? "cpu+openblas" : "cpu+managed", Cpu.Name);
    }

    static Tensor T(float[] data) => Tensor.FromArray(data, data.Length);

    [Theory]
    [InlineData(1)]
    [InlineData(19)]
    [InlineData(1000)]
    public void ElementwiseOpsMatchScalarLoops(int n)
    {
        var rng = new Random(61 + n);
        var a = TestRandom.Uniform(rng, n, -40f, 40f);
        var b = TestRandom.Uniform(rng, n, -3f, 3f);
        var y = new float[n];

        Cpu.Add(T(a), T(b), T(y));
        Close.Exact(a.Zip(b, (p, q) => p + q).ToArray(), y, "Add");
        Cpu.Multiply(T(a), T(b), T(y));
        Close.Exact(a.Zip(b, (p, q) => p * q).ToArray(), y, "Multiply");
        Cpu.Scale(T(a), 0.125f, T(y));
        Close.Exact(a.Select(p => p * 0.125f).ToArray(), y, "Scale");
        Cpu.SoftCap(T(a), 30f, T(y));
        // The vectorized tanh is accurate to ~1 ulp of 1 in absolute terms, even where tanh is near 0, so cap·2e-7.
        Close.All(a.Select(p => (float)(30 * Math.Tanh(p / 30.0))).ToArray(), y, 30 * 2e-7, 2e-6, "SoftCap (cap 30)");

        var sum = a.Zip(b, (p, q) => p + q).ToArray();
        Cpu.Add(T(a), T(b), T(a)); // y may alias an input
        Close.Exact(sum, a, "Add in place");
    }

    [Fact]
    public void TensorsStayOnTheHostAndNothingIsCopied()
    {
        var t = Tensor.FromArray([1f, 2f, 3f], 3);
        Assert.Same(t, Cpu.ToDevice(t));
        var weights = new float[] { 4f, 5f };
        var w = Cpu.LoadWeight(weights, [2], ElementType.BF16);
        weights[0] = 6f; // a zero-copy wrap: the CPU keeps fp32 and does not copy
        Assert.Equal(6f, w.Span[0]);
        Assert.Equal(Device.Cpu, Cpu.Empty(2, 3).Device);
    }

    [Fact]
    public void ForwardsToTheKernels()
    {
        var rng = new Random(62);
        const int rows = 4, d = 24, n = 10;
        var x = TestRandom.Uniform(rng, rows * d);
        var w = TestRandom.Uniform(rng, d * n);
        var bias = TestRandom.Uniform(rng, n);
        var nw = TestRandom.Uniform(rng, d, 0.5f, 1.5f);
        float[] Run(Action<float[]> f, int len) { var o = new float[len]; f(o); return o; }
        Tensor X() => T(x);

        Close.Exact(Run(o => Gemm.Linear(x, rows, d, w, true, n, bias, o), rows * n), Run(o => Cpu.Linear(X(), rows, d, T(w), true, n, T(bias), T(o)), rows * n), "Linear");
        Close.Exact(Run(o => Gemm.Sgemm(true, false, d, n, rows, 2f, x, d, w, n, 0f, o, n), d * n),
            Run(o => Cpu.Gemm(true, false, d, n, rows, 2f, X(), 0, d, T(w), 0, n, 0f, T(o), 0, n), d * n), "Gemm");
        Close.Exact(Run(o => Normalization.LayerNorm(x, rows, d, nw, nw, 1e-5f, o), rows * d),
            Run(o => Cpu.Norm(true, X(), rows, d, T(nw), 0f, T(nw), 1e-5f, T(o), Tensor.Zeros(rows)), rows * d), "LayerNorm");
        Close.Exact(Run(o => Normalization.RmsNorm(x, rows, d, nw, 1f, 1e-6f, o), rows * d),
            Run(o => Cpu.Norm(false, X(), rows, d, T(nw), 1f, null, 1e-6f, T(o), Tensor.Zeros(rows)), rows * d), "RmsNorm");
        Close.Exact(Run(o => Activations.GeluTanh(x, o), x.Length), Run(o => Cpu.Activation("gelu_new", X(), T(o)), x.Length), "Activation");
        Close.Exact(Run(o => Softmax.Rows(x, rows, d, o), x.Length), Run(o => Cpu.SoftmaxRows(X(), rows, d, T(o)), x.Length), "SoftmaxRows");
        var table = new RotaryTable(8, 1e4, 16);
        Close.Exact(Run(o => { x.CopyTo(o, 0); table.Apply(o, rows, 2, 12, [3, 1, 4, 15]); }, x.Length),
            Run(o => { x.CopyTo(o, 0); Cpu.Rotary(table, T(o), rows, 2, 12, [3, 1, 4, 15]); }, x.Length), "Rotary");
    }
}
