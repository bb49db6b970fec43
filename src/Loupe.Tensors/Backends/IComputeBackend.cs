using Loupe.Tensors.Kernels;

namespace Loupe.Tensors.Backends;

/// <summary>
/// The primitive operations model code is written against — the whole list, in one place.
/// A GPU backend implements this interface; model families never call kernels directly.
/// Buffers are row-major; shapes are in the parameter names.
/// </summary>
public interface IComputeBackend
{
    /// <summary>A short name ("cpu+openblas", "cpu+managed").</summary>
    string Name { get; }

    /// <summary><c>y[rows, n] = x[rows, k]·W + bias</c>; W is <c>[k, n]</c>, or <c>[n, k]</c> when <paramref name="weightIsOutIn"/> (nn.Linear).</summary>
    void Linear(ReadOnlySpan<float> x, int rows, int k, ReadOnlySpan<float> weight, bool weightIsOutIn, int n, ReadOnlySpan<float> bias, Span<float> y);

    /// <summary>General matrix product, see <see cref="Gemm.Sgemm"/>.</summary>
    void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, ReadOnlySpan<float> a, int lda,
        ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc);

    void LayerNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale);

    void RmsNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale);

    /// <summary>Element-wise activation by config name (relu, silu, gelu, gelu_new, …).</summary>
    void Activation(string name, ReadOnlySpan<float> x, Span<float> y);

    void SoftmaxRows(ReadOnlySpan<float> x, int rows, int n, Span<float> y);

    void Rotary(RotaryTable table, Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions);

    /// <summary>The inverse rotation (the backward of <see cref="Rotary"/>).</summary>
    void RotaryInverse(RotaryTable table, Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions);

    /// <summary>Backward of an activation: <c>dx = dy ⊙ f′(x)</c>.</summary>
    void ActivationBackward(string name, ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx);

    void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int batch, int queryLen, int keyLen,
        int nHeads, int nKvHeads, int dHead, float scale, AttentionMask mask, Span<float> scores, int keyCapacity = 0);

    void AttentionApply(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, int batch, int queryLen, int keyLen,
        int nHeads, int nKvHeads, int dHead, Span<float> z, int keyCapacity = 0);

    /// <summary><c>y = a + b</c> element-wise (y may alias a or b).</summary>
    void Add(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y);

    /// <summary><c>y = a ⊙ b</c> element-wise.</summary>
    void Multiply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y);

    /// <summary><c>y = a · s</c>.</summary>
    void Scale(ReadOnlySpan<float> a, float s, Span<float> y);

    /// <summary><c>y = cap·tanh(a/cap)</c> (logit soft-capping).</summary>
    void SoftCap(ReadOnlySpan<float> a, float cap, Span<float> y);
}
