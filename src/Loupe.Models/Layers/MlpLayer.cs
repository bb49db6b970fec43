using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Models.Layers;

/// <summary>
/// The MLP with TransformerLens hook points. Shapes: x <c>[batch, pos, d_model]</c>;
/// pre, pre_linear, post <c>[batch, pos, d_mlp]</c>; output <c>[batch, pos, d_model]</c>.
/// Plain: <c>post = act(x·W_in + b_in)</c>. Gated (SwiGLU/GeGLU): <c>hook_pre = x·W_gate</c>,
/// <c>hook_pre_linear = x·W_in</c>, <c>post = act(pre) ⊙ pre_linear</c>. Output <c>post·W_out + b_out</c>.
/// </summary>
public sealed class MlpLayer
{
    public MlpLayer(int layer, string activation, Linear input, Linear output, Linear? gate = null)
    {
        Layer = layer;
        Names = new BlockHookNames(layer);
        Activation = activation;
        In = input;
        Out = output;
        Gate = gate;
    }

    public int Layer { get; }
    public BlockHookNames Names { get; }
    public string Activation { get; }
    public Linear In { get; }
    public Linear Out { get; }
    public Linear? Gate { get; }

    public Tensor Forward(ForwardContext ctx, Tensor x, HookedTransformer model)
    {
        var be = model.Backend;
        int B = x.Dim(0), T = x.Dim(1), rows = B * T, dMlp = In.DOut;
        var pre = Tensor.Uninitialized(B, T, dMlp);
        (Gate ?? In).Forward(be, x.Span, rows, pre.Span);
        pre = ctx.Hook(Names.MlpPre, Layer, pre);
        var post = Tensor.Uninitialized(B, T, dMlp);
        be.Activation(Activation, pre.Span, post.Span);
        Tensor? linearSaved = null;
        if (Gate is not null)
        {
            var linear = Tensor.Uninitialized(B, T, dMlp);
            In.Forward(be, x.Span, rows, linear.Span);
            linear = ctx.Hook(Names.MlpPreLinear, Layer, linear);
            be.Multiply(post.Span, linear.Span, post.Span);
            linearSaved = linear;
        }
        post = ctx.Hook(Names.MlpPost, Layer, post);
        ctx.Save(this, new Saved(pre, linearSaved));
        var output = Tensor.Uninitialized(B, T, Out.DOut);
        Out.Forward(be, post.Span, rows, output.Span);
        return output;
    }

    sealed record Saved(Tensor Pre, Tensor? Linear);

    /// <summary>Backward from d output <c>[batch, pos, d_model]</c> to d x, through hook_post, hook_pre_linear and hook_pre.</summary>
    public Tensor Backward(ForwardContext ctx, Tensor dOut, HookedTransformer model)
    {
        var be = model.Backend;
        var (pre, linear) = ctx.Restore<Saved>(this);
        int B = dOut.Dim(0), T = dOut.Dim(1), rows = B * T, dMlp = In.DOut;
        // Forward: output = post·W_out + b_out.
        var dPost = Tensor.Uninitialized(B, T, dMlp);
        Out.BackwardInput(be, dOut.Span, rows, dPost.Span);
        dPost = ctx.GradHook(Names.MlpPost, Layer, dPost);
        var dx = Tensor.Uninitialized(B, T, In.DIn);
        var dPre = Tensor.Uninitialized(B, T, dMlp);
        if (linear is null)
        {
            // Forward: post = act(pre), pre = x·W_in + b_in.
            be.ActivationBackward(Activation, pre.Span, dPost.Span, dPre.Span);
            dPre = ctx.GradHook(Names.MlpPre, Layer, dPre);
            In.BackwardInput(be, dPre.Span, rows, dx.Span);
            return dx;
        }
        // Forward: post = act(pre) ⊙ linear, pre = x·W_gate, linear = x·W_in.
        var activated = Tensor.Uninitialized(B, T, dMlp);
        be.Activation(Activation, pre.Span, activated.Span);
        var dLinear = Tensor.Uninitialized(B, T, dMlp);
        be.Multiply(dPost.Span, activated.Span, dLinear.Span);
        dLinear = ctx.GradHook(Names.MlpPreLinear, Layer, dLinear);
        var dActivated = Tensor.Uninitialized(B, T, dMlp);
        be.Multiply(dPost.Span, linear.Span, dActivated.Span);
        be.ActivationBackward(Activation, pre.Span, dActivated.Span, dPre.Span);
        dPre = ctx.GradHook(Names.MlpPre, Layer, dPre);
        Gate!.BackwardInput(be, dPre.Span, rows, dx.Span);
        In.BackwardInput(be, dLinear.Span, rows, dx.Span, accumulate: true);
        return dx;
    }
}
