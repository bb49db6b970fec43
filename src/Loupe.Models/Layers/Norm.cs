using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Layers;

/// <summary>
/// LayerNorm or RMSNorm over d_model with TransformerLens's hooks: <c>{name}.hook_scale</c>
/// <c>[batch, pos, 1]</c> (the divisor) and <c>{name}.hook_normalized</c>. Where that hook sits follows
/// TransformerLens exactly: a LayerNorm's is its output (<c>c/σ·w + b</c>), an RMSNorm's is <c>x/σ</c>
/// <em>before</em> the weight (TransformerLens's <c>RMSNorm.forward</c> hooks <c>x / scale</c>, then
/// returns <c>x * w</c>), so dictionaries trained with TransformerLens/SAELens on an RMSNorm model's
/// <c>hook_normalized</c> read the same values here. The RMSNorm's weighted output (what the next
/// layer reads) is <c>blocks.L.mlp.hook_in</c> for ln2.
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
    /// <summary>Its <c>hook_normalized</c> point: the output of a LayerNorm; <c>x/σ</c> before the weight for an RMSNorm.</summary>
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

    /// <summary>
    /// True when <c>hook_normalized</c> is not the output: an RMSNorm that still has its weight
    /// (TransformerLens hooks <c>x/σ</c> and multiplies by the weight after the hook).
    /// </summary>
    public bool HooksBeforeWeight => Kind == NormKind.RmsNorm && !Folded && !Weight.IsEmpty;

    /// <summary>Normalizes x <c>[batch, pos, d_model]</c> into a new tensor; with <see cref="NormKind.None"/> returns x.</summary>
    public Tensor Forward(ForwardContext ctx, int layer, Tensor x)
    {
        if (Kind == NormKind.None) return x;
        var be = ctx.Backend;
        int d = x.Dim(-1), rows = x.Length / d;
        var computed = be.Empty(ScaleShape(x));
        var (w, b) = (_weight.On(be), _bias.On(be));
        // An RMSNorm's hook_normalized is x/σ, before the weight: computed apart only when something reads it
        // (else the fused kernel, as before).
        bool beforeWeight = HooksBeforeWeight && (ctx.Wants(_normalizedHook) || ctx.ChecksFinite);
        var y = ctx.Scratch(x.Shape.ToArray());
        if (beforeWeight) be.Norm(Centers, x, rows, d, null, 0f, null, Eps, y, computed);
        else be.Norm(Centers, x, rows, d, w, WeightOffset, b, Eps, y, computed);
        // As in TransformerLens, the output divides by the hooked scale, so freezing or patching
        // hook_scale (e.g. for direct logit attribution) changes what flows on.
        var scale = ctx.Hook(_scaleHook, layer, computed);
        ctx.Save(this, new Saved(x, scale));
        if (!beforeWeight)
        {
            if (!ReferenceEquals(scale, computed)) be.NormWithScale(Centers, x, rows, d, w, WeightOffset, b, scale, y);
            return ctx.Hook(_normalizedHook, layer, y);
        }
        if (!ReferenceEquals(scale, computed)) be.NormWithScale(Centers, x, rows, d, null, 0f, null, scale, y);
        // What a hook left there (replaced, or edited in place) times the weight flows on.
        var normalized = ctx.Hook(_normalizedHook, layer, y);
        var output = ctx.Scratch(x.Shape.ToArray());
        TimesWeight(ctx, normalized, rows, d, b, output);
        ctx.Release(y);
        return output;
    }

    /// <summary>One scale per normalised vector: <c>[batch, pos, 1]</c>, or <c>[batch, pos, head, 1]</c> for a per-head norm or per-head copies.</summary>
    static int[] ScaleShape(Tensor x)
    {
        var shape = x.Shape.ToArray();
        shape[^1] = 1;
        return shape;
    }

    /// <summary><c>y = v ⊙ (w + offset) (+ b)</c> row by row, with a pass's scratch for the unit scale.</summary>
    void TimesWeight(ForwardContext ctx, Tensor v, int rows, int d, Tensor? bias, Tensor y)
    {
        var ones = ctx.GradScratch(rows);
        TimesWeight(ctx.Backend, v, rows, d, bias, ones, y);
        ctx.Release(ones);
    }

    /// <summary><c>y = v ⊙ (w + offset) (+ b)</c> row by row: the norm's own kernel with a unit scale (dividing by 1 is exact); <paramref name="ones"/> is <c>[rows]</c> scratch.</summary>
    void TimesWeight(IComputeBackend be, Tensor v, int rows, int d, Tensor? bias, Tensor ones, Tensor y)
    {
        be.Fill(ones, 1f);
        be.NormWithScale(false, v, rows, d, _weight.On(be), WeightOffset, bias, ones, y);
    }

    /// <summary>
    /// The norm's output from its <c>hook_normalized</c> value (e.g. a cached one), on <paramref name="backend"/>'s device:
    /// the value itself for a LayerNorm (the same tensor when already there), a new tensor <c>value ⊙ w</c> for an RMSNorm
    /// (whose hook is before the weight).
    /// </summary>
    public Tensor OutputFromNormalized(IComputeBackend backend, Tensor normalized)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(normalized);
        if (normalized.Device != backend.Device) normalized = backend.ToDevice(normalized);
        if (!HooksBeforeWeight) return normalized;
        var y = backend.Empty(normalized.Shape.ToArray());
        int d = normalized.Dim(-1), rows = normalized.Length / d;
        TimesWeight(backend, normalized, rows, d, _bias.On(backend), backend.Empty(rows), y);
        return y;
    }

    sealed record Saved(Tensor Input, Tensor Scale);

    /// <summary>
    /// The norm of every <c>d_model</c> row of x (any leading axes), weight and bias applied, without its hook points: how
    /// TransformerLens's ln1 treats each head's copy of the stream when attention inputs are split per head (there its hooks
    /// fire once per copy with a head axis, a shape this norm's declared hooks do not have). Saves under <paramref name="key"/>
    /// what <see cref="BackwardRows"/> needs; with <see cref="NormKind.None"/> returns x.
    /// </summary>
    internal Tensor ForwardRows(ForwardContext ctx, object key, Tensor x)
    {
        if (Kind == NormKind.None) return x;
        var be = ctx.Backend;
        int d = x.Dim(-1), rows = x.Length / d;
        var scale = ctx.Scratch(ScaleShape(x));
        var y = ctx.Scratch(x.Shape.ToArray());
        be.Norm(Centers, x, rows, d, _weight.On(be), WeightOffset, _bias.On(be), Eps, y, scale);
        ctx.Save(key, new Saved(x, scale));
        return y;
    }

    /// <summary>
    /// The backward of <see cref="ForwardRows"/> of a <c>[batch, pos, d_model]</c> input taken for each of <paramref name="heads"/>
    /// copies of it: dy is <c>[batch, pos, heads, d_model]</c> (each copy's own gradient), the result likewise. The forward normalised
    /// the stream once (every copy held it); its rows and scales are repeated here, in the backward's scratch, only for the kernel.
    /// </summary>
    internal Tensor BackwardRowsRepeated(ForwardContext ctx, object key, Tensor dy, int heads)
    {
        if (Kind == NormKind.None) return dy;
        var be = ctx.Backend;
        var (x, scale) = ctx.Restore<Saved>(key);
        int d = x.Dim(-1), rows = x.Length / d;
        var xs = ctx.GradScratch(dy.Shape.ToArray());
        var scales = ctx.GradScratch(rows * heads);
        for (int h = 0; h < heads; h++)
        {
            be.CopyRows(x, 0, d, xs, (long)h * d, heads * d, rows, d);
            be.CopyRows(scale, 0, 1, scales, h, heads, rows, 1);
        }
        var dx = BackwardWithoutHooks(ctx, xs, scales, dy);
        ctx.Release(xs);
        ctx.Release(scales);
        return dx;
    }

    /// <summary>Backward of <see cref="ForwardRows"/> (same formulas as <see cref="Backward"/>, no hook points); dy stays the caller's.</summary>
    internal Tensor BackwardRows(ForwardContext ctx, object key, Tensor dy)
    {
        if (Kind == NormKind.None) return dy;
        var (x, scale) = ctx.Restore<Saved>(key);
        return BackwardWithoutHooks(ctx, x, scale, dy);
    }

    /// <summary>dx from dy for inputs <paramref name="x"/> (rows of d_model) with their scales: the fused kernels, weight included.</summary>
    Tensor BackwardWithoutHooks(ForwardContext ctx, Tensor x, Tensor scale, Tensor dy)
    {
        var be = ctx.Backend;
        int d = x.Dim(-1), rows = x.Length / d;
        var w = _weight.On(be);
        var dScale = ctx.GradScratch(scale.Shape.ToArray());
        be.NormBackwardScale(Centers, x, scale, dy, rows, d, w, WeightOffset, dScale);
        var dx = ctx.GradScratch(x.Shape.ToArray());
        be.NormBackwardInput(Centers, x, scale, dy, dScale, rows, d, w, WeightOffset, dx);
        ctx.Release(dScale);
        return dx;
    }

    /// <summary>
    /// Backward to the input. Forward: <c>c = x − mean(x)</c> (LayerNorm) or <c>x</c> (RMSNorm),
    /// <c>σ = sqrt(mean(c²) + eps)</c> (hook_scale), <c>y = c/σ · w_eff + b</c>.
    /// <c>dĉ = dy ⊙ w_eff</c>; <c>dσ = −Σ dĉ·ĉ / σ</c>; <c>dc = dĉ/σ + dσ·ĉ/d</c>; LayerNorm: <c>dx = dc − mean(dc)</c>.
    /// The gradient hook at hook_normalized sees <c>dy</c> for a LayerNorm and <c>dĉ</c> for an RMSNorm
    /// (its hook is before the weight). A gradient hook on hook_scale that returns zeros freezes the scale (no gradient through σ).
    /// </summary>
    public Tensor Backward(ForwardContext ctx, int layer, Tensor dy)
    {
        if (Kind == NormKind.None) return dy;
        var be = ctx.Backend;
        var (x, scale) = ctx.Restore<Saved>(this);
        int d = x.Dim(-1), rows = x.Length / d;
        // Split at the hook only when something sees the gradient there (else the fused kernels, as before).
        bool beforeWeight = HooksBeforeWeight && ctx.GradientSeenAt(_normalizedHook);
        Tensor dNormalized = dy;
        if (beforeWeight)
        {
            dNormalized = ctx.GradScratch(dy.Shape.ToArray());
            TimesWeight(ctx, dy, rows, d, null, dNormalized);
        }
        dNormalized = ctx.GradHook(_normalizedHook, layer, dNormalized);
        var w = beforeWeight ? null : _weight.On(be);
        float offset = beforeWeight ? 0f : WeightOffset;
        var dScale = ctx.GradScratch(scale.Shape.ToArray());
        be.NormBackwardScale(Centers, x, scale, dNormalized, rows, d, w, offset, dScale);
        dScale = ctx.GradHook(_scaleHook, layer, dScale);
        var dx = ctx.GradScratch(x.Shape.ToArray());
        be.NormBackwardInput(Centers, x, scale, dNormalized, dScale, rows, d, w, offset, dx);
        ctx.Release(dScale);
        if (beforeWeight) ctx.Release(dNormalized);
        return dx; // dy is the caller's (it may still read it: a residual gradient passes on unchanged)
    }
}
