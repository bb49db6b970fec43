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
        if (Gate is not null)
        {
            var linear = Tensor.Uninitialized(B, T, dMlp);
            In.Forward(be, x.Span, rows, linear.Span);
            linear = ctx.Hook(Names.MlpPreLinear, Layer, linear);
            be.Multiply(post.Span, linear.Span, post.Span);
        }
        post = ctx.Hook(Names.MlpPost, Layer, post);
        var output = Tensor.Uninitialized(B, T, Out.DOut);
        Out.Forward(be, post.Span, rows, output.Span);
        return output;
    }
}
