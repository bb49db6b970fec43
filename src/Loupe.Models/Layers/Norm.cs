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
        var scale = Tensor.Uninitialized(x.Dim(0), x.Dim(1), 1);
        if (Kind == NormKind.LayerNorm)
            model.Backend.LayerNorm(x.Span, rows, d, Weight.Span, Bias.Span, Eps, y.Span, scale.Span);
        else
            model.Backend.RmsNorm(x.Span, rows, d, Weight.Span, WeightOffset, Eps, y.Span, scale.Span);
        ctx.Hook(_scaleHook, layer, scale);
        return ctx.Hook(_normalizedHook, layer, y);
    }
}
