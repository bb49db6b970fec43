using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Layers;

/// <summary>
/// LayerNorm or RMSNorm over d_model with TransformerLens's hooks: <c>{name}.hook_scale</c>
/// <c>[batch, pos, 1]</c> (the divisor) and <c>{name}.hook_normalized</c> (the output, weights applied).
/// </summary>
public sealed class Norm
{
    readonly string _scaleHook, _normalizedHook;
    DeviceWeight _weight, _bias;

    public Norm(NormKind kind, ReadOnlyMemory<float> weight, ReadOnlyMemory<float> bias, float eps, string hookPrefix, float weightOffset = 0f)
    {
        Kind = kind;
        Weight = weight;
        Bias = bias;
        Eps = eps;
        WeightOffset = weightOffset;
        _weight = new DeviceWeight(weight, [weight.Length]);
        _bias = new DeviceWeight(bias, [bias.Length]);
        _scaleHook = hookPrefix + ".hook_scale";
        _normalizedHook = hookPrefix + ".hook_normalized";
    }

    public NormKind Kind { get; }
    /// <summary>Its <c>hook_scale</c> point, e.g. <c>blocks.3.ln2.hook_scale</c>.</summary>
    public string ScaleHook => _scaleHook;
    /// <summary>Its <c>hook_normalized</c> point (the output, weights applied).</summary>
    public string NormalizedHook => _normalizedHook;
    public ReadOnlyMemory<float> Weight { get; private set; }
    public ReadOnlyMemory<float> Bias { get; private set; }
    public float Eps { get; }
    /// <summary>Added to the weight (Gemma stores RMSNorm weights as <c>w − 1</c>).</summary>
    public float WeightOffset { get; private set; }

    /// <summary>
    /// True once its weight and bias were folded into the layers that read it (TransformerLens's
    /// LNPre / RMSPre): it only centres (LayerNorm) and divides by hook_scale.
    /// </summary>
    public bool Folded { get; private set; }

    /// <summary>Drops the weight and bias after they were folded into the readers (weight processing, at load, before any run).</summary>
    internal void MarkFolded()
    {
        Weight = default;
        Bias = default;
        WeightOffset = 0f;
        Folded = true;
        _weight = new DeviceWeight(default, [0]);
        _bias = new DeviceWeight(default, [0]);
    }

    /// <summary>The weight on <paramref name="backend"/>'s device (uploaded once), or null without one (lenses apply the norm with a frozen scale).</summary>
    public Tensor? WeightOn(IComputeBackend backend) => _weight.On(backend);

    /// <summary>The bias on <paramref name="backend"/>'s device (uploaded once), or null without one.</summary>
    public Tensor? BiasOn(IComputeBackend backend) => _bias.On(backend);

    bool Centers => Kind == NormKind.LayerNorm;

    /// <summary>Normalizes x <c>[batch, pos, d_model]</c> into a new tensor; with <see cref="NormKind.None"/> returns x.</summary>
    public Tensor Forward(ForwardContext ctx, int layer, Tensor x)
    {
        if (Kind == NormKind.None) return x;
        var be = ctx.Backend;
        int d = x.Dim(-1), rows = x.Length / d;
        var y = ctx.Scratch(x.Shape.ToArray());
        // One scale per normalised vector: [batch, pos, 1], or [batch, pos, head, 1] for a per-head norm.
        var scaleShape = x.Shape.ToArray();
        scaleShape[^1] = 1;
        var computed = be.Empty(scaleShape);
        var (w, b) = (_weight.On(be), _bias.On(be));
        be.Norm(Centers, x, rows, d, w, WeightOffset, b, Eps, y, computed);
        // As in TransformerLens, the output divides by the hooked scale, so freezing or patching
        // hook_scale (e.g. for direct logit attribution) changes what flows on.
        var scale = ctx.Hook(_scaleHook, layer, computed);
        if (!ReferenceEquals(scale, computed)) be.NormWithScale(Centers, x, rows, d, w, WeightOffset, b, scale, y);
        ctx.Save(this, new Saved(x, scale));
        return ctx.Hook(_normalizedHook, layer, y);
    }

    sealed record Saved(Tensor Input, Tensor Scale);

    /// <summary>
    /// Backward to the input. Forward: <c>c = x − mean(x)</c> (LayerNorm) or <c>x</c> (RMSNorm),
    /// <c>σ = sqrt(mean(c²) + eps)</c> (hook_scale), <c>y = c/σ · w_eff + b</c> (hook_normalized).
    /// <c>dĉ = dy ⊙ w_eff</c>; <c>dσ = −Σ dĉ·ĉ / σ</c>; <c>dc = dĉ/σ + dσ·ĉ/d</c>; LayerNorm: <c>dx = dc − mean(dc)</c>.
    /// A gradient hook on hook_scale that returns zeros freezes the scale (no gradient through σ).
    /// </summary>
    public Tensor Backward(ForwardContext ctx, int layer, Tensor dy)
    {
        if (Kind == NormKind.None) return dy;
        var be = ctx.Backend;
        dy = ctx.GradHook(_normalizedHook, layer, dy);
        var (x, scale) = ctx.Restore<Saved>(this);
        int d = x.Dim(-1), rows = x.Length / d;
        var w = _weight.On(be);
        var dScale = ctx.GradScratch(scale.Shape.ToArray());
        be.NormBackwardScale(Centers, x, scale, dy, rows, d, w, WeightOffset, dScale);
        dScale = ctx.GradHook(_scaleHook, layer, dScale);
        var dx = ctx.GradScratch(x.Shape.ToArray());
        be.NormBackwardInput(Centers, x, scale, dy, dScale, rows, d, w, WeightOffset, dx);
        ctx.Release(dScale);
        return dx; // dy is the caller's (it may still read it: a residual gradient passes on unchanged)
    }
}
