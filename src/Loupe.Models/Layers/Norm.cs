using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Models.Layers;

/// <summary>
/// LayerNorm or RMSNorm over d_model with TransformerLens's hooks: <c>{name}.hook_scale</c>
/// <c>[batch, pos, 1]</c> (the divisor) and <c>{name}.hook_normalized</c> (the output, weights applied).
/// </summary>
public sealed class Norm
{
    readonly string _scaleHook, _normalizedHook;

    public Norm(NormKind kind, ReadOnlyMemory<float> weight, ReadOnlyMemory<float> bias, float eps, string hookPrefix, float weightOffset = 0f)
    {
        Kind = kind;
        Weight = weight;
        Bias = bias;
        Eps = eps;
        WeightOffset = weightOffset;
        _scaleHook = hookPrefix + ".hook_scale";
        _normalizedHook = hookPrefix + ".hook_normalized";
    }

    public NormKind Kind { get; }
    public ReadOnlyMemory<float> Weight { get; }
    public ReadOnlyMemory<float> Bias { get; }
    public float Eps { get; }
    /// <summary>Added to the weight (Gemma stores RMSNorm weights as <c>w − 1</c>).</summary>
    public float WeightOffset { get; }

    /// <summary>Normalizes x <c>[batch, pos, d_model]</c> into a new tensor; with <see cref="NormKind.None"/> returns x.</summary>
    public Tensor Forward(ForwardContext ctx, int layer, Tensor x, HookedTransformer model)
    {
        if (Kind == NormKind.None) return x;
        int d = x.Dim(-1), rows = x.Length / d;
        var y = Tensor.Uninitialized(x.Shape.ToArray());
        var computed = Tensor.Uninitialized(x.Dim(0), x.Dim(1), 1);
        if (Kind == NormKind.LayerNorm)
            model.Backend.LayerNorm(x.Span, rows, d, Weight.Span, Bias.Span, Eps, y.Span, computed.Span);
        else
            model.Backend.RmsNorm(x.Span, rows, d, Weight.Span, WeightOffset, Eps, y.Span, computed.Span);
        // As in TransformerLens, the output divides by the hooked scale, so freezing or patching
        // hook_scale (e.g. for direct logit attribution) changes what flows on.
        var scale = ctx.Hook(_scaleHook, layer, computed);
        if (!ReferenceEquals(scale, computed)) Renormalize(x, scale, y);
        ctx.Save(this, new Saved(x, scale));
        return ctx.Hook(_normalizedHook, layer, y);
    }

    /// <summary><c>y = c / scale · w_eff + b</c> with a given scale, c = x − mean(x) (LayerNorm) or x (RMSNorm).</summary>
    void Renormalize(Tensor x, Tensor scale, Tensor y)
    {
        int d = x.Dim(-1), rows = x.Length / d;
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Span.Slice(r * d, d);
            var yr = y.Span.Slice(r * d, d);
            float mean = Kind == NormKind.LayerNorm ? System.Numerics.Tensors.TensorPrimitives.Sum(xr) / d : 0f;
            float inv = 1f / scale.Span[r];
            for (int i = 0; i < d; i++)
                yr[i] = (xr[i] - mean) * inv * EffectiveWeight(i) + (Bias.IsEmpty ? 0f : Bias.Span[i]);
        }
    }

    float EffectiveWeight(int i) => (Weight.IsEmpty ? 1f : Weight.Span[i]) + WeightOffset;

    sealed record Saved(Tensor Input, Tensor Scale);

    /// <summary>
    /// Backward to the input. Forward: <c>c = x − mean(x)</c> (LayerNorm) or <c>x</c> (RMSNorm),
    /// <c>σ = sqrt(mean(c²) + eps)</c> (hook_scale), <c>y = c/σ · w_eff + b</c> (hook_normalized).
    /// <c>dĉ = dy ⊙ w_eff</c>; <c>dσ = −Σ dĉ·ĉ / σ</c>; <c>dc = dĉ/σ + dσ·ĉ/d</c>; LayerNorm: <c>dx = dc − mean(dc)</c>.
    /// </summary>
    public Tensor Backward(ForwardContext ctx, int layer, Tensor dy)
    {
        if (Kind == NormKind.None) return dy;
        dy = ctx.GradHook(_normalizedHook, layer, dy);
        var (x, scale) = ctx.Restore<Saved>(this);
        int d = x.Dim(-1), rows = x.Length / d;
        var dScale = Tensor.Uninitialized(scale.Shape.ToArray());
        var normalized = new float[d];
        var dNormalized = new float[d];
        var dx = Tensor.Uninitialized(x.Shape.ToArray());
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Span.Slice(r * d, d);
            float mean = Kind == NormKind.LayerNorm ? System.Numerics.Tensors.TensorPrimitives.Sum(xr) / d : 0f;
            float sigma = scale.Span[r];
            double dot = 0;
            for (int i = 0; i < d; i++)
            {
                normalized[i] = (xr[i] - mean) / sigma;
                dNormalized[i] = dy.Span[r * d + i] * EffectiveWeight(i);
                dot += (double)dNormalized[i] * normalized[i];
            }
            dScale.Span[r] = (float)(-dot / sigma);
        }
        dScale = ctx.GradHook(_scaleHook, layer, dScale);
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Span.Slice(r * d, d);
            var dxr = dx.Span.Slice(r * d, d);
            float mean = Kind == NormKind.LayerNorm ? System.Numerics.Tensors.TensorPrimitives.Sum(xr) / d : 0f;
            float sigma = scale.Span[r], ds = dScale.Span[r];
            // A gradient hook on hook_scale that returns zeros freezes the scale (no gradient through σ).
            double dcMean = 0;
            for (int i = 0; i < d; i++)
            {
                float c = xr[i] - mean;
                float dc = dy.Span[r * d + i] * EffectiveWeight(i) / sigma + ds * (c / sigma) / d;
                dxr[i] = dc;
                dcMean += dc;
            }
            if (Kind == NormKind.LayerNorm)
            {
                float m = (float)(dcMean / d);
                for (int i = 0; i < d; i++) dxr[i] -= m;
            }
        }
        return dx;
    }
}
