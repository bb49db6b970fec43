using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Models.Layers;

/// <summary>
/// The MLP with TransformerLens hook points, and circuit-tracer's <c>mlp.hook_in</c> for its input. Shapes: x <c>[batch, pos, d_model]</c>;
/// pre, pre_linear, post <c>[batch, pos, d_mlp]</c>; output <c>[batch, pos, d_model]</c>.
/// Plain: <c>post = act(x·W_in + b_in)</c>. Gated (SwiGLU/GeGLU): <c>hook_pre = x·W_gate</c>,
/// <c>hook_pre_linear = x·W_in</c>, <c>post = act(pre) ⊙ pre_linear</c>. SoLU with its LayerNorm (TransformerLens's
/// <c>solu_ln</c>, NeelNanda's SoLU models): <c>hook_mid = pre ⊙ softmax(pre)</c> over d_mlp, <c>post = ln(mid)</c> with the
/// MLP's own norm (<c>blocks.L.mlp.ln.*</c> hooks). Output <c>post·W_out + b_out</c>.
/// </summary>
public sealed class MlpLayer
{
    /// <summary>TransformerLens's act_fn for SoLU followed by the MLP's own LayerNorm.</summary>
    public const string SoluLn = "solu_ln";

    public MlpLayer(int layer, string activation, Linear input, Linear output, Linear? gate = null, Norm? innerNorm = null)
    {
        if ((activation == SoluLn) != (innerNorm is not null))
            throw new ArgumentException($"{SoluLn} and only {SoluLn} has the MLP's own norm", nameof(innerNorm));
        if (activation == SoluLn && gate is not null) throw new ArgumentException($"{SoluLn} is not gated", nameof(gate));
        InnerNorm = innerNorm;
        Layer = layer;
        Names = new BlockHookNames(layer);
        Activation = activation;
        In = input;
        Out = output;
        Gate = gate;
        input.Name ??= $"blocks.{layer}.mlp.W_in";
        output.Name ??= $"blocks.{layer}.mlp.W_out";
        if (gate is not null) gate.Name ??= $"blocks.{layer}.mlp.W_gate";
    }

    public int Layer { get; }
    public BlockHookNames Names { get; }
    public string Activation { get; }
    public Linear In { get; }
    public Linear Out { get; }
    public Linear? Gate { get; }
    /// <summary>The LayerNorm over d_mlp after SoLU (<see cref="SoluLn"/>), else null.</summary>
    public Norm? InnerNorm { get; }

    public Tensor Forward(ForwardContext ctx, Tensor x)
    {
        var be = ctx.Backend;
        x = ctx.Hook(Names.MlpIn, Layer, x);
        int B = x.Dim(0), T = x.Dim(1), rows = B * T, dMlp = In.DOut;
        var pre = ctx.Scratch(B, T, dMlp);
        (Gate ?? In).Forward(be, x, rows, pre);
        pre = ctx.Hook(Names.MlpPre, Layer, pre);
        var post = ctx.Scratch(B, T, dMlp);
        if (InnerNorm is not null)
        {
            // mid = pre ⊙ softmax(pre) over d_mlp; post = ln(mid).
            be.SoftmaxRows(pre, rows, dMlp, post);
            be.Multiply(pre, post, post);
            var mid = ctx.Hook(Names.MlpMid, Layer, post);
            post = InnerNorm.Forward(ctx, Layer, mid);
            ctx.Release(mid);
        }
        else be.Activation(Activation, pre, post);
        Tensor? linearSaved = null;
        if (Gate is not null)
        {
            var linear = ctx.Scratch(B, T, dMlp);
            In.Forward(be, x, rows, linear);
            linear = ctx.Hook(Names.MlpPreLinear, Layer, linear);
            be.Multiply(post, linear, post);
            linearSaved = linear;
        }
        post = ctx.Hook(Names.MlpPost, Layer, post);
        ctx.Save(this, new Saved(pre, linearSaved));
        ctx.Release(pre);
        ctx.Release(linearSaved);
        var output = ctx.Scratch(B, T, Out.DOut);
        Out.Forward(be, post, rows, output);
        ctx.Release(post);
        return output;
    }

    sealed record Saved(Tensor Pre, Tensor? Linear);

    /// <summary>Backward from d output <c>[batch, pos, d_model]</c> to d x, through hook_post, hook_pre_linear, hook_pre and hook_in.</summary>
    public Tensor Backward(ForwardContext ctx, Tensor dOut)
    {
        var dx = InputGradient(ctx, dOut);
        return ctx.GradHook(Names.MlpIn, Layer, dx);
    }

    Tensor InputGradient(ForwardContext ctx, Tensor dOut)
    {
        var be = ctx.Backend;
        var (pre, linear) = ctx.Restore<Saved>(this);
        int B = dOut.Dim(0), T = dOut.Dim(1), rows = B * T, dMlp = In.DOut;
        // Forward: output = post·W_out + b_out.
        var dPost = ctx.GradScratch(B, T, dMlp);
        Out.BackwardInput(be, dOut, rows, dPost);
        dPost = ctx.GradHook(Names.MlpPost, Layer, dPost);
        var dx = ctx.GradScratch(B, T, In.DIn);
        var dPre = ctx.GradScratch(B, T, dMlp);
        if (InnerNorm is not null)
        {
            // Forward: post = ln(mid), mid = pre ⊙ s, s = softmax(pre): d pre = s ⊙ d mid + softmax_backward(s, d mid ⊙ pre).
            var dMid = ctx.GradHook(Names.MlpMid, Layer, ctx.Replacing(dPost, InnerNorm.Backward(ctx, Layer, dPost)));
            var s = ctx.GradScratch(B, T, dMlp);
            be.SoftmaxRows(pre, rows, dMlp, s);
            var viaSoftmax = ctx.GradScratch(B, T, dMlp);
            be.Multiply(dMid, pre, viaSoftmax);
            be.SoftmaxBackwardRows(s, viaSoftmax, rows, dMlp, dPre);
            be.Multiply(dMid, s, viaSoftmax);
            be.Add(dPre, viaSoftmax, dPre);
            ctx.Release(s);
            ctx.Release(viaSoftmax);
            ctx.Release(dMid);
            dPre = ctx.GradHook(Names.MlpPre, Layer, dPre);
            In.BackwardInput(be, dPre, rows, dx);
            ctx.Release(dPre);
            return dx;
        }
        if (linear is null)
        {
            // Forward: post = act(pre), pre = x·W_in + b_in.
            be.ActivationBackward(Activation, pre, dPost, dPre);
            ctx.Release(dPost);
            dPre = ctx.GradHook(Names.MlpPre, Layer, dPre);
            In.BackwardInput(be, dPre, rows, dx);
            ctx.Release(dPre);
            return dx;
        }
        // Forward: post = act(pre) ⊙ linear, pre = x·W_gate, linear = x·W_in.
        var activated = ctx.GradScratch(B, T, dMlp);
        be.Activation(Activation, pre, activated);
        var dLinear = ctx.GradScratch(B, T, dMlp);
        be.Multiply(dPost, activated, dLinear);
        ctx.Release(activated);
        dLinear = ctx.GradHook(Names.MlpPreLinear, Layer, dLinear);
        var dActivated = ctx.GradScratch(B, T, dMlp);
        be.Multiply(dPost, linear, dActivated);
        ctx.Release(dPost);
        be.ActivationBackward(Activation, pre, dActivated, dPre);
        ctx.Release(dActivated);
        dPre = ctx.GradHook(Names.MlpPre, Layer, dPre);
        Gate!.BackwardInput(be, dPre, rows, dx);
        In.BackwardInput(be, dLinear, rows, dx, accumulate: true);
        ctx.Release(dPre);
        ctx.Release(dLinear);
        return dx;
    }
}
