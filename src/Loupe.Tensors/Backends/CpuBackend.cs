using System.Numerics.Tensors;
using Loupe.Tensors.Kernels;

namespace Loupe.Tensors.Backends;

/// <summary>The CPU: OpenBLAS for products when present, TensorPrimitives (SIMD) for the rest.</summary>
public sealed class CpuBackend : IComputeBackend
{
    public static CpuBackend Instance { get; } = new();

    public string Name => Gemm.UsesBlas ? "cpu+openblas" : "cpu+managed";

    public void Linear(ReadOnlySpan<float> x, int rows, int k, ReadOnlySpan<float> weight, bool weightIsOutIn, int n, ReadOnlySpan<float> bias, Span<float> y) =>
        Gemm.Linear(x, rows, k, weight, weightIsOutIn, n, bias, y);

    public void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, ReadOnlySpan<float> a, int lda,
        ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc) =>
        Gemm.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);

    public void LayerNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale) =>
        Normalization.LayerNorm(x, rows, d, weight, bias, eps, y, scale);

    public void RmsNorm(ReadOnlySpan<float> x, int rows, int d, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale) =>
        Normalization.RmsNorm(x, rows, d, weight, weightOffset, eps, y, scale);

    public void Activation(string name, ReadOnlySpan<float> x, Span<float> y) => Activations.Apply(name, x, y);

    public void SoftmaxRows(ReadOnlySpan<float> x, int rows, int n, Span<float> y) => Softmax.Rows(x, rows, n, y);

    public void Rotary(RotaryTable table, Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions) =>
        table.Apply(x, rows, heads, headDim, positions);

    public void RotaryInverse(RotaryTable table, Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions) =>
        table.ApplyInverse(x, rows, heads, headDim, positions);

    public void ActivationBackward(string name, ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx) =>
        Activations.Backward(name, x, dy, dx);

    public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int batch, int queryLen, int keyLen,
        int nHeads, int nKvHeads, int dHead, float scale, AttentionMask mask, Span<float> scores, int keyCapacity = 0) =>
        Attention.Scores(q, k, batch, queryLen, keyLen, nHeads, nKvHeads, dHead, scale, mask, scores, keyCapacity);

    public void AttentionApply(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, int batch, int queryLen, int keyLen,
        int nHeads, int nKvHeads, int dHead, Span<float> z, int keyCapacity = 0) =>
        Attention.ApplyPattern(pattern, v, batch, queryLen, keyLen, nHeads, nKvHeads, dHead, z, keyCapacity);

    public void Add(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Add(a, b, y);

    public void Multiply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Multiply(a, b, y);

    public void Scale(ReadOnlySpan<float> a, float s, Span<float> y) => TensorPrimitives.Multiply(a, s, y);

    public void SoftCap(ReadOnlySpan<float> a, float cap, Span<float> y)
    {
        TensorPrimitives.Multiply(a, 1f / cap, y);
        TensorPrimitives.Tanh(y, y);
        TensorPrimitives.Multiply(y, cap, y);
    }
}
