using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Tests;

/// <summary>Activation derivatives against central differences of the scalar reference twins.</summary>
public class ActivationBackwardTests
{
    public static TheoryData<string> Names => new() { "relu", "silu", "gelu_new", "gelu_pytorch_tanh", "gelu" };

    static Func<float, float> Reference(string name) => name switch
    {
        "relu" => ReferenceKernels.Relu,
        "silu" => ReferenceKernels.Silu,
        "gelu" => ReferenceKernels.GeluErf,
        _ => ReferenceKernels.GeluTanh,
    };

    [Theory]
    [MemberData(nameof(Names))]
    public void MatchesFiniteDifferencesOfTheReference(string name)
    {
        var random = new Random(name.Length * 31);
        // Long enough to cross the chunk size; values away from relu's kink at 0.
        int n = (1 << 14) + 37;
        var x = Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() * 12 - 6)).Select(v => MathF.Abs(v) < 1e-2f ? 0.5f : v).ToArray();
        var dy = Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        var dx = new float[n];
        Activations.Backward(name, x, dy, dx);
        var f = Reference(name);
        for (int i = 0; i < n; i += 7)
        {
            const float h = 1e-2f;
            double derivative = ((double)f(x[i] + h) - f(x[i] - h)) / (2 * h);
            Assert.True(Math.Abs(dx[i] - dy[i] * derivative) < 2e-3, $"{name}'({x[i]}) · {dy[i]}: got {dx[i]}, finite difference {dy[i] * derivative}");
        }
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void MayWriteIntoTheUpstreamGradient(string name)
    {
        var x = new[] { -2f, -0.5f, 0.3f, 1.7f, 4f };
        var dy = new[] { 0.1f, -1f, 2f, 0.5f, -0.3f };
        var expected = new float[x.Length];
        Activations.Backward(name, x, dy, expected);
        Activations.Backward(name, x, dy, dy);
        Assert.Equal(expected, dy);
    }

    [Fact]
    public void UnknownActivationIsNamed()
    {
        var e = Assert.Throws<NotSupportedException>(() => Activations.Backward("swiglu2", new float[1], new float[1], new float[1]));
        Assert.Contains("swiglu2", e.Message);
    }
}
