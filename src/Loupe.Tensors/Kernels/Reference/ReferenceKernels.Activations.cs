namespace Loupe.Tensors.Kernels.Reference;

// Double twins of the activations (by config name) and of logit soft-capping, each forward next to its derivative.
public static partial class ReferenceKernels
{
    const double SqrtTwoOverPi = 0.79788456080286535588, GeluCubic = 0.044715;

    /// <summary>Every activation name the backends accept, aliases included.</summary>
    public static IReadOnlyList<string> ActivationNames { get; } =
        ["relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_tanh", "gelu", "gelu_exact"];

    /// <summary>f(x) for an activation named as in HF / TransformerLens configs.</summary>
    /// <exception cref="NotSupportedException">The name is not a known activation.</exception>
    public static double Activation(string name, double x) => name switch
    {
        "relu" => x > 0 ? x : double.IsNaN(x) ? x : 0,
        "silu" or "swish" => x * Sigmoid(x),
        // ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_tanh" => 0.5 * x * (1 + Math.Tanh(SqrtTwoOverPi * (x + GeluCubic * x * x * x))),
        // x·Φ(x), Φ(x) = ½(1 + erf(x/√2))
        "gelu" or "gelu_exact" => x * NormalCdf(x),
        _ => throw new NotSupportedException($"activation function '{name}' has no reference twin"),
    };

    /// <summary>f′(x) of <see cref="Activation(string, double)"/>, differentiated by hand.</summary>
    /// <exception cref="NotSupportedException">The name is not a known activation.</exception>
    public static double ActivationDerivative(string name, double x)
    {
        switch (name)
        {
            case "relu":
                return x > 0 ? 1 : 0;
            case "silu" or "swish":
            {
                // d/dx x·σ(x) = σ + x·σ(1 − σ)
                double s = Sigmoid(x);
                return s + x * s * (1 - s);
            }
            case "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_tanh":
            {
                // d/dx ½x(1 + tanh u), u = √(2/π)(x + cx³): ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3cx²)
                double t = Math.Tanh(SqrtTwoOverPi * (x + GeluCubic * x * x * x));
                return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SqrtTwoOverPi * (1 + 3 * GeluCubic * x * x);
            }
            case "gelu" or "gelu_exact":
                // d/dx x·Φ(x) = Φ(x) + x·φ(x)
                return NormalCdf(x) + x * Math.Exp(-0.5 * x * x) / Math.Sqrt(2 * Math.PI);
            default:
                throw new NotSupportedException($"activation function '{name}' has no reference twin");
        }
    }

    /// <summary>y = f(x) element-wise.</summary>
    public static void Activation(string name, ReadOnlySpan<double> x, Span<double> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = Activation(name, x[i]);
    }

    /// <summary>Backward of <see cref="Activation(string, ReadOnlySpan{double}, Span{double})"/>: <c>dx = dy ⊙ f′(x)</c>.</summary>
    public static void ActivationBackward(string name, ReadOnlySpan<double> x, ReadOnlySpan<double> dy, Span<double> dx)
    {
        for (int i = 0; i < x.Length; i++) dx[i] = dy[i] * ActivationDerivative(name, x[i]);
    }

    static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));

    /// <summary>Φ(x) through <see cref="ErfBySimpson"/> (independent of the fast erf fit).</summary>
    static double NormalCdf(double x) => 0.5 * (1 + ErfBySimpson(x / Math.Sqrt(2)));

    /// <summary><c>y = cap·tanh(a/cap)</c>.</summary>
    public static void SoftCap(ReadOnlySpan<double> a, double cap, Span<double> y)
    {
        for (int i = 0; i < a.Length; i++) y[i] = cap * Math.Tanh(a[i] / cap);
    }

    /// <summary>
    /// Backward of <see cref="SoftCap"/> from its output y = cap·tanh(a/cap):
    /// dy/da = 1 − tanh² = 1 − (y/cap)², so <c>dx = dy·(1 − (y/cap)²)</c>; a non-finite y (a masked −∞) gives 0.
    /// </summary>
    public static void SoftCapBackward(ReadOnlySpan<double> capped, ReadOnlySpan<double> dy, double cap, Span<double> dx)
    {
        for (int i = 0; i < dx.Length; i++)
        {
            double t = capped[i] / cap;
            dx[i] = double.IsFinite(capped[i]) ? dy[i] * (1 - t * t) : 0;
        }
    }
}
