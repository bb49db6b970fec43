using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Gpu.Tests;

/// <summary>Element-wise, copy and reduction-free kernels against the CPU backend and the reference twins, at odd sizes.</summary>
[Collection(EmulatedCollection.Name)]
public sealed class ElementwiseTests(EmulatedBackendFixture fixture) : DeviceTest(fixture)
{
    public static TheoryData<int> Sizes => new() { 1, 7, 33, 130 };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void ArithmeticMatchesTheCpuBackend(int n)
    {
        var rng = new Random(n);
        var a = Uniform(rng, n, -40, 40);
        var b = Uniform(rng, n, -3, 3);
        var g = Uniform(rng, n);
        var y = new float[n];
        Same("Add", [a, b], [y], (k, i, o) => k.Add(i[0], i[1], o[0]), 0, 0);
        Same("Multiply", [a, b], [y], (k, i, o) => k.Multiply(i[0], i[1], o[0]), 0, 0);
        Same("Scale", [a], [y], (k, i, o) => k.Scale(i[0], 0.125f, o[0]), 0, 0);
        Same("SoftCap", [a], [y], (k, i, o) => k.SoftCap(i[0], 30f, o[0]), 30 * 2e-7, 2e-6);
        var capped = a.Select(v => (float)(30 * Math.Tanh(v / 30.0))).ToArray();
        capped[0] = float.NegativeInfinity;
        Same("SoftCapBackward", [capped, b], [y], (k, i, o) => k.SoftCapBackward(i[0], i[1], 30f, o[0]), 1e-7, 1e-6);
        var withInf = (float[])a.Clone();
        withInf[n / 2] = float.NegativeInfinity;
        var alsoInf = (float[])b.Clone();
        alsoInf[n / 2] = float.NegativeInfinity;
        Same("DifferenceProduct", [withInf, alsoInf, g], [y], (k, i, o) => k.DifferenceProduct(i[0], i[1], i[2], o[0]), 0, 0);
        Same("Fill", [], [y], (k, _, o) => k.Fill(o[0], -2.5f), 0, 0);
    }

    [Fact]
    public void AddMayWriteIntoAnInput()
    {
        var rng = new Random(3);
        var a = Uniform(rng, 33);
        var b = Uniform(rng, 33);
        var x = Dev(a);
        Gpu.Add(x, Dev(b), x);
        Close.All(a.Zip(b, (p, q) => p + q).ToArray(), Read(x), 0, 0, "y = a + b with y = a");
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(7, 33)]
    [InlineData(3, 130)]
    public void RowsAndAxesMatchTheCpuBackend(int rows, int cols)
    {
        var rng = new Random(rows * 1000 + cols);
        var src = Uniform(rng, rows * (cols + 3) + 5);
        var dst = Uniform(rng, rows * (cols + 1) + 2);
        Same("CopyRows", [src], [dst], (k, i, o) => k.CopyRows(i[0], 5, cols + 3, o[0], 2, cols + 1, rows, cols));
        Same("CopyRows accumulate", [src], [dst], (k, i, o) => k.CopyRows(i[0], 5, cols + 3, o[0], 2, cols + 1, rows, cols, accumulate: true));
        var y = Uniform(rng, rows * cols);
        var v = Uniform(rng, cols);
        Same("AddRowVector", [v], [y], (k, i, o) => k.AddRowVector(o[0], rows, i[0]), 0, 0);
        var x = Uniform(rng, rows * 5 * cols);
        var sum = Uniform(rng, rows * cols);
        Same("SumMiddleAxis", [x], [sum], (k, i, o) => k.SumMiddleAxis(i[0], rows, 5, cols, o[0]), 1e-6, 1e-5);
        Same("SumMiddleAxis accumulate", [x], [sum], (k, i, o) => k.SumMiddleAxis(i[0], rows, 5, cols, o[0], accumulate: true), 1e-6, 1e-5);
    }

    public static TheoryData<string> Activations => new() { "relu", "silu", "gelu_new", "gelu" };

    [Theory]
    [MemberData(nameof(Activations))]
    public void ActivationsMatchTheReferenceTwinsAndTheirBackwardTheCpuBackend(string name)
    {
        var rng = new Random(name.Length);
        var x = Uniform(rng, 130, -8, 8);
        x[0] = float.NaN;
        x[1] = 0f;
        var y = Read(Run(name, x));
        Func<float, float> twin = name switch
        {
            "relu" => ReferenceKernels.Relu,
            "silu" => ReferenceKernels.Silu,
            "gelu" => ReferenceKernels.GeluErf,
            _ => ReferenceKernels.GeluTanh,
        };
        Close.All(x.Select(twin).ToArray(), y, 1e-6, 2e-6, $"{name} vs its reference twin");
        var dy = Uniform(rng, 130);
        Same($"{name} backward", [x, dy], [new float[130]], (k, i, o) => k.ActivationBackward(name, i[0], i[1], o[0]), 3e-6, 2e-6);
    }

    Tensor Run(string name, float[] x)
    {
        var t = Dev(x);
        var y = Gpu.Empty(x.Length);
        Gpu.Activation(name, t, y);
        return y;
    }

    [Fact]
    public void AdamStepsMatchTheCpuBackend()
    {
        var rng = new Random(9);
        var p = Uniform(rng, 33);
        var m = new float[33];
        var v = new float[33];
        Same("Adam", [Uniform(rng, 33)], [p, m, v], (k, i, o) =>
        {
            for (int step = 1; step <= 3; step++) k.AdamStep(o[0], i[0], o[1], o[2], 1e-2f, 0.9f, 0.999f, 1e-8f, step);
        }, 1e-7, 1e-5);
    }

    [Fact]
    public void EmbeddingGathersAndItsBackwardAddsRepeatedIds()
    {
        var rng = new Random(11);
        const int vocab = 7, d = 33;
        var table = Uniform(rng, vocab * d);
        int[] ids = [3, 0, 6, 3, 3];
        Same("Embedding", [table], [new float[ids.Length * d]], (k, i, o) => k.Embedding(i[0], d, ids, 0.5f, o[0]), 0, 0);
        var dy = Uniform(rng, ids.Length * d);
        Same("EmbeddingBackward", [dy], [Uniform(rng, vocab * d)], (k, i, o) => k.EmbeddingBackward(i[0], d, ids, 2f, o[0]), 1e-6, 1e-6);
        Assert.Throws<ArgumentOutOfRangeException>(() => Gpu.Embedding(Dev(table), d, [vocab], 1f, Gpu.Empty(d)));
    }
}
