using System.Text.RegularExpressions;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Steering;

/// <summary>
/// An intervention on one hook point's activation, applied on every forward pass it is attached to
/// (plain runs and every step of <see cref="HookedTransformer.Generate"/>). Steering vectors,
/// projection-out and, later, SAE-feature edits implement it, so one seam plugs any of them into
/// <see cref="RunOptions"/>.
/// </summary>
/// <remarks>
/// Activations are read in TransformerLens's layout <c>[batch, pos, …, width]</c>: axis 1 is the
/// position and the last axis is the edited vector (d_model for the residual stream, d_mlp for
/// <c>mlp.hook_post</c>, d_head for <c>attn.hook_z</c>, applied to every head alike).
/// </remarks>
public interface IActivationEdit
{
    /// <summary>The full hook point name, e.g. <c>blocks.3.hook_resid_post</c>.</summary>
    string HookName { get; }

    /// <summary>The length of the activation's last axis this edit expects, or null when any width fits.</summary>
    int? Width { get; }

    /// <summary>
    /// Returns the edited activation: a new tensor of the same shape, or <paramref name="activation"/>
    /// itself when nothing applies at this pass. Never writes into <paramref name="activation"/>: the
    /// same tensor may also be the next block's input or sit in a cache.
    /// </summary>
    /// <exception cref="InputError">The activation's last axis differs from <see cref="Width"/>.</exception>
    Tensor Apply(Tensor activation, HookContext context);
}

/// <summary>Which positions of the sequence an edit touches.</summary>
public enum PositionKind
{
    /// <summary>Every position, prompt and generated tokens alike.</summary>
    All,
    /// <summary>Positions at or after <see cref="SteeringPositions.Start"/> (index into the, possibly left-padded, sequence).</summary>
    From,
    /// <summary>
    /// Only tokens written by the generator (generation steps 1, 2, …). The prompt pass, and so the
    /// first new token, is left alone; a plain forward pass is not edited at all.
    /// </summary>
    NewTokens,
}

/// <summary>The positions an edit applies to: <see cref="All"/>, <see cref="From"/>(p) or <see cref="NewTokens"/>.</summary>
public readonly record struct SteeringPositions(PositionKind Kind, int Start)
{
    public static SteeringPositions All => new(PositionKind.All, 0);
    public static SteeringPositions NewTokens => new(PositionKind.NewTokens, 0);

    /// <summary>Positions <c>≥ position</c> (absolute index; the KV-cache offset is accounted for).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="position"/> is negative.</exception>
    public static SteeringPositions From(int position)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(position);
        return new(PositionKind.From, position);
    }

    /// <summary>Parses <c>all</c>, <c>new</c> or <c>from:N</c>; <paramref name="what"/> names the setting in the error (e.g. an option).</summary>
    /// <exception cref="InputError">Any other text.</exception>
    public static SteeringPositions Parse(string text, string what = "positions")
    {
        string t = text.Trim().ToLowerInvariant();
        if (t == "all") return All;
        if (t is "new" or "new-tokens") return NewTokens;
        if (t.StartsWith("from:", StringComparison.Ordinal)
            && int.TryParse(t[5..], System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int p) && p >= 0)
            return From(p);
        throw InputError.Expected("argument", what, "all, new or from:N (0 ≤ N < 2^31)", text);
    }

    /// <summary>The first index along this activation's pos axis to edit; <paramref name="length"/> when none.</summary>
    internal int FirstIndex(HookContext context, int length) => Kind switch
    {
        PositionKind.All => 0,
        PositionKind.From => Math.Clamp(Start - context.PositionOffset, 0, length),
        _ => context.GenerationStep >= 1 ? 0 : length,
    };

    public override string ToString() => Kind switch
    {
        PositionKind.All => "all",
        PositionKind.From => $"from:{Start}",
        _ => "new",
    };
}

/// <summary>Attaches <see cref="IActivationEdit"/>s to <see cref="RunOptions"/>, validating them against a model.</summary>
public static partial class ActivationEdits
{
    /// <summary>
    /// Registers <paramref name="edit"/> at its hook after checking the hook exists in
    /// <paramref name="model"/> and, where the config fixes the hook's width, that the edit fits.
    /// </summary>
    /// <exception cref="InputError">The hook is unknown (the message lists the model's hook points) or the widths differ (the message names the hook and both sizes).</exception>
    public static RunOptions AddEdit(this RunOptions options, HookedTransformer model, IActivationEdit edit)
    {
        Validate(model, edit);
        return options.AddEdit(edit);
    }

    /// <summary>
    /// Registers <paramref name="edit"/> without a model: the width is checked when the hook first
    /// fires, and an unknown hook name simply never fires (prefer the overload taking the model).
    /// </summary>
    public static RunOptions AddEdit(this RunOptions options, IActivationEdit edit)
    {
        ArgumentNullException.ThrowIfNull(edit);
        return options.AddHook(edit.HookName, edit.Apply);
    }

    /// <summary>New <see cref="RunOptions"/> carrying the given edits, each validated against <paramref name="model"/>.</summary>
    /// <exception cref="InputError">As for <see cref="AddEdit(RunOptions, HookedTransformer, IActivationEdit)"/>.</exception>
    public static RunOptions Options(HookedTransformer model, params IActivationEdit[] edits)
    {
        var options = new RunOptions();
        foreach (var edit in edits) options.AddEdit(model, edit);
        return options;
    }

    /// <summary>Checks that the edit's hook exists in <paramref name="model"/> and that its width fits.</summary>
    /// <exception cref="InputError">The hook is unknown or the widths differ.</exception>
    public static void Validate(HookedTransformer model, IActivationEdit edit)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(edit);
        RequireHook(model, edit.HookName);
        if (edit.Width is int width && HookWidth(model.Config, edit.HookName) is (int expected, string what) && width != expected)
            throw new InputError(WidthMessage(edit.HookName, width, expected, what));
    }

    /// <summary>Throws unless <paramref name="hookName"/> is one of the model's hook points.</summary>
    /// <exception cref="InputError">The hook is unknown; the message lists the model's hook points.</exception>
    public static void RequireHook(HookedTransformer model, string hookName)
    {
        if (model.HookPointNames.Contains(hookName)) return;
        throw new InputError($"unknown hook '{hookName}'; this model's hook points are: {DescribeHooks(model)}");
    }

    /// <summary>The model's hook points, with the layer index folded: <c>blocks.{0..4}.hook_resid_post</c>.</summary>
    public static string DescribeHooks(HookedTransformer model)
    {
        string range = $"blocks.{{0..{model.Config.NLayers - 1}}}.";
        return string.Join(", ", model.HookPointNames.Select(n => BlockPrefix().Replace(n, range)).Distinct());
    }

    /// <summary>
    /// The width of a hook's last axis as the config fixes it, with the config name used in messages:
    /// residual stream (and its per-head copies, hook_q_input, …), attn_out, mlp_out, the MLP input, embeddings and normalized values are d_model; MLP hidden
    /// hooks d_mlp; per-head q/k/v/z d_head; norm scales 1. Null for hooks whose last axis is
    /// positional (attention scores and pattern) or not known.
    /// </summary>
    public static (int Width, string Name)? HookWidth(ModelConfig config, string hookName)
    {
        string local = BlockPrefix().Replace(hookName, "");
        return local switch
        {
            "hook_resid_pre" or "hook_resid_mid" or "hook_resid_post" or "hook_attn_out" or "hook_mlp_out" or "mlp.hook_in" or "hook_mlp_in"
                or HookNames.Embed or HookNames.PosEmbed or "attn.hook_result"
                or "hook_attn_in" or "hook_q_input" or "hook_k_input" or "hook_v_input" => (config.DModel, "d_model"),
            "mlp.hook_pre" or "mlp.hook_pre_linear" or "mlp.hook_post" => (config.DMlp, "d_mlp"),
            "attn.hook_q" or "attn.hook_k" or "attn.hook_v" or "attn.hook_z" or "attn.hook_rot_q" or "attn.hook_rot_k" => (config.DHead, "d_head"),
            _ when local.EndsWith(".hook_normalized", StringComparison.Ordinal) => (config.DModel, "d_model"),
            _ when local.EndsWith(".hook_scale", StringComparison.Ordinal) => (1, "1 (a norm scale)"),
            _ => null,
        };
    }

    /// <summary>Throws when a hook's layout is not <c>[batch, pos, …, width]</c> (attention scores and pattern are <c>[batch, head, query_pos, key_pos]</c>).</summary>
    /// <exception cref="InputError">The hook is <c>attn.hook_pattern</c> or <c>attn.hook_attn_scores</c>.</exception>
    internal static void RequirePositionLayout(string hookName)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(hookName);
        if (hookName.EndsWith("hook_pattern", StringComparison.Ordinal) || hookName.EndsWith("hook_attn_scores", StringComparison.Ordinal))
            throw new InputError($"'{hookName}' is [batch, head_index, query_pos, key_pos]; activation edits apply to [batch, pos, …, d] hooks such as blocks.0.hook_resid_post");
    }

    internal static string WidthMessage(string hook, int actual, int expected, string what) =>
        $"the vector for hook '{hook}' has {actual} entries but that hook's last dimension is {what} = {expected}";

    /// <summary>Checks the live activation against the edit's width (run when the hook fires).</summary>
    internal static void CheckActivation(IActivationEdit edit, Tensor activation)
    {
        if (activation.Rank < 3)
            throw new InputError($"hook '{edit.HookName}' carries a {activation.ShapeString} activation; activation edits need [batch, pos, …, d]");
        if (edit.Width is int width && activation.Dim(-1) != width)
            throw new InputError(WidthMessage(edit.HookName, width, activation.Dim(-1), $"{activation.ShapeString}[-1]"));
    }

    [GeneratedRegex(@"^blocks\.\d+\.")]
    private static partial Regex BlockPrefix();
}
