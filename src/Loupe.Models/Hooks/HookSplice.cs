using Loupe.Tensors;

namespace Loupe.Models.Hooks;

/// <summary>
/// Something spliced into the forward pass in place of a hook point's activation, with hook points
/// of its own: a sparse autoencoder (reads and replaces the same hook) or a transcoder (reads the
/// MLP input, replaces the MLP output). SAELens's HookedSAETransformer is the model: the splice's own
/// hook points are named under the hook it replaces, e.g. <c>blocks.2.hook_resid_post.hook_sae_acts_post</c>,
/// and every piece of hook machinery (user hooks, the cache, gradient hooks, patching) works on them.
/// </summary>
/// <remarks>
/// Order at the output hook within one forward pass:
/// 1. the model's activation reaches <see cref="OutputHook"/>; user hooks there run and the cache
///    records it, exactly as without the splice (so <c>blocks.2.hook_resid_post</c> still reads the
///    model's own activation);
/// 2. <see cref="Forward"/> runs with the input (that same activation for an SAE; the activation
///    captured at <see cref="InputHook"/>, after its hooks, for a transcoder) and the original activation;
///    it passes its intermediates through <see cref="ForwardContext.Hook"/> under its sub-hook names;
/// 3. what it returns flows on in place of the original.
/// Backward reverses this: <see cref="Backward"/> receives d metric / d output and returns d metric / d input,
/// which joins the gradient at <see cref="InputHook"/>.
/// </remarks>
public interface IHookSplice
{
    /// <summary>The hook point whose activation the splice reads (equal to <see cref="OutputHook"/> for an SAE).</summary>
    string InputHook { get; }

    /// <summary>The hook point whose activation the splice replaces; its sub-hooks are named under it.</summary>
    string OutputHook { get; }

    /// <summary>Full names of the splice's own hook points, in the order the forward pass reaches them.</summary>
    IReadOnlyList<string> SubHookNames { get; }

    /// <summary>
    /// Computes what flows on in place of <paramref name="original"/>. Must not mutate its arguments;
    /// must return a tensor of <paramref name="original"/>'s shape.
    /// </summary>
    /// <param name="input">The activation read at <see cref="InputHook"/>.</param>
    /// <param name="original">The model's activation at <see cref="OutputHook"/> (after user hooks there).</param>
    /// <param name="layer">The block index of <see cref="OutputHook"/> (−1 outside blocks), for sub-hook contexts.</param>
    /// <param name="ctx">The forward pass: sub-hooks go through <see cref="ForwardContext.Hook"/>.</param>
    /// <returns>The output and, when <see cref="ForwardContext.RecordsForBackward"/>, what <see cref="Backward"/> needs.</returns>
    SpliceOutput Forward(Tensor input, Tensor original, int layer, ForwardContext ctx);

    /// <summary>
    /// d metric / d input (and d metric / d original) from d metric / d output, passing gradients
    /// through the sub-hooks with <see cref="ForwardContext.GradHook"/>.
    /// </summary>
    /// <param name="saved">What <see cref="Forward"/> returned in <see cref="SpliceOutput.Saved"/>.</param>
    /// <param name="dOutput">d metric / d output, the shape of the activation at <see cref="OutputHook"/>.</param>
    /// <param name="layer">The block index of <see cref="OutputHook"/>.</param>
    /// <param name="ctx">The pass: sub-hook gradients go through <see cref="ForwardContext.GradHook"/>.</param>
    /// <returns>d metric / d input (the shape of the activation at <see cref="InputHook"/>) and d metric / d original.</returns>
    /// <exception cref="NotSupportedException">The splice cannot be differentiated.</exception>
    SpliceGradient Backward(object? saved, Tensor dOutput, int layer, ForwardContext ctx);
}

/// <summary>The result of <see cref="IHookSplice.Backward"/>.</summary>
/// <param name="DInput">d metric / d input: joins the gradient at the input hook.</param>
/// <param name="DOriginal">
/// d metric / d original activation at the output hook, or null where the output does not depend on it
/// (a transcoder's output does not depend on the MLP output it replaces). For an SAE, input and original
/// are one activation and the two gradients are summed.
/// </param>
public readonly record struct SpliceGradient(Tensor DInput, Tensor? DOriginal);

/// <summary>The result of <see cref="IHookSplice.Forward"/>.</summary>
/// <param name="Output">What flows on at the output hook (same shape as the original activation).</param>
/// <param name="Saved">State for the backward pass, or null when none will follow.</param>
public readonly record struct SpliceOutput(Tensor Output, object? Saved);
