using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Causal.Patching;

/// <summary>
/// What an activation-patching sweep patches: one hook point per layer (a name built from the
/// layer index) and which axes of that activation index a cell. Axes are counted on the full
/// activation, batch included: resid_pre <c>[batch, pos, d_model]</c> has its position on axis 1;
/// hook_z <c>[batch, pos, head_index, d_head]</c> has its head on axis 2; hook_pattern
/// <c>[batch, head_index, query_pos, key_pos]</c> its head on axis 1. An axis left null is
/// patched whole (every position, or every head). Cells are ordered layer-major, then head, then
/// position.
/// </summary>
/// <param name="Name">A short name for reports, e.g. <c>resid_pre</c>.</param>
/// <param name="HookName">The hook point of layer <c>l</c>, from <see cref="HookNames"/>.</param>
/// <param name="HeadAxis">The activation's head axis when each head is its own cell; null patches all heads together.</param>
/// <param name="PositionAxis">The activation's position axis when each position is its own cell; null patches all positions together.</param>
public sealed record PatchTarget(string Name, Func<int, string> HookName, int? HeadAxis = null, int? PositionAxis = null)
{
    /// <summary>Layers to sweep (null = every layer).</summary>
    public IReadOnlyList<int>? Layers { get; init; }
    /// <summary>Heads to sweep when <see cref="HeadAxis"/> is set (null = every head).</summary>
    public IReadOnlyList<int>? Heads { get; init; }
    /// <summary>Positions to sweep when <see cref="PositionAxis"/> is set (null = every position).</summary>
    public IReadOnlyList<int>? Positions { get; init; }

    /// <summary>
    /// The head axis by name (<see cref="HookAxis.HeadIndex"/>): when set and <see cref="HeadAxis"/> is not null, the
    /// axis number is taken from the model's declared hook point (<see cref="HookedTransformer.HookPoints"/>) when a sweep starts.
    /// </summary>
    public string? HeadAxisName { get; init; }

    /// <summary>The position axis by name (<see cref="HookAxis.Pos"/>); see <see cref="HeadAxisName"/>.</summary>
    public string? PositionAxisName { get; init; }

    /// <summary>
    /// This target with its named axes resolved against the declared hook point of the first swept layer
    /// (hook points that are not declared — splice sub-hooks — keep the axis numbers given).
    /// </summary>
    /// <exception cref="InputError">The declared hook point has no axis of that name.</exception>
    internal PatchTarget ResolveAxes(HookedTransformer model, int layer)
    {
        if (HeadAxisName is null && PositionAxisName is null) return this;
        string hook = HookName(layer);
        var point = model.HookPoints.FirstOrDefault(p => p.Name == hook);
        if (point is null) return this;
        // A null axis number means "not swept" (e.g. ResidPre with { PositionAxis = null }): the name only says where a swept axis is.
        int? Index(string? name, int? fallback)
        {
            if (name is null || fallback is null) return fallback;
            if (!point.HasAxis(name)) throw new InputError($"target '{Name}': hook point {point.Describe()} has no '{name}' axis");
            return point.AxisIndex(name);
        }
        return this with { HeadAxis = Index(HeadAxisName, HeadAxis), PositionAxis = Index(PositionAxisName, PositionAxis) };
    }

    /// <summary>The residual stream entering each block, per layer × position.</summary>
    public static PatchTarget ResidPre { get; } = new("resid_pre", HookNames.ResidPre, PositionAxis: 1) { PositionAxisName = HookAxis.Pos };
    /// <summary>The attention output (what attention adds to the residual stream), per layer × position.</summary>
    public static PatchTarget AttnOut { get; } = new("attn_out", HookNames.AttnOut, PositionAxis: 1) { PositionAxisName = HookAxis.Pos };
    /// <summary>The MLP output, per layer × position.</summary>
    public static PatchTarget MlpOut { get; } = new("mlp_out", HookNames.MlpOut, PositionAxis: 1) { PositionAxisName = HookAxis.Pos };
    /// <summary>Each head's output hook_z[:, :, h, :] at every position together, per layer × head.</summary>
    public static PatchTarget HeadOut { get; } = new("head_out", HookNames.Z, HeadAxis: 2) { HeadAxisName = HookAxis.HeadIndex };
    /// <summary>Each head's output hook_z[:, p, h, :], per layer × head × position.</summary>
    public static PatchTarget HeadOutByPosition { get; } = new("head_out_by_pos", HookNames.Z, HeadAxis: 2, PositionAxis: 1) { HeadAxisName = HookAxis.HeadIndex, PositionAxisName = HookAxis.Pos };
    /// <summary>Each head's attention pattern hook_pattern[:, h], per layer × head.</summary>
    public static PatchTarget HeadPattern { get; } = new("head_pattern", HookNames.Pattern, HeadAxis: 1) { HeadAxisName = HookAxis.HeadIndex };

    /// <summary>
    /// Each head's query input (TransformerLens's hook_q_input[:, :, h]: that head's copy of the stream before ln1), per
    /// layer × head: the stream's effect through one head's query alone (path patching's receiver side, swept).
    /// </summary>
    public static PatchTarget QueryInput { get; } = new("q_input", HookNames.QInput, HeadAxis: 2) { HeadAxisName = HookAxis.HeadIndex };
    /// <summary>Each key/value head's key input (hook_k_input[:, :, g]), per layer × key/value head.</summary>
    public static PatchTarget KeyInput { get; } = new("k_input", HookNames.KInput, HeadAxis: 2) { HeadAxisName = HookAxis.HeadIndex };
    /// <summary>Each key/value head's value input (hook_v_input[:, :, g]), per layer × key/value head.</summary>
    public static PatchTarget ValueInput { get; } = new("v_input", HookNames.VInput, HeadAxis: 2) { HeadAxisName = HookAxis.HeadIndex };

    /// <summary>
    /// A target over any per-layer hook: <paramref name="hookTemplate"/> contains <c>{layer}</c>,
    /// e.g. <c>blocks.{layer}.hook_resid_mid</c> or <c>blocks.{layer}.attn.hook_v</c>.
    /// </summary>
    /// <exception cref="InputError">The template has no <c>{layer}</c>.</exception>
    public static PatchTarget Custom(string hookTemplate, int? headAxis = null, int? positionAxis = null)
    {
        if (!hookTemplate.Contains("{layer}", StringComparison.Ordinal))
            throw new InputError($"hook template '{hookTemplate}' has no {{layer}} placeholder (e.g. blocks.{{layer}}.hook_resid_mid)");
        return new PatchTarget(hookTemplate, l => hookTemplate.Replace("{layer}", l.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal), headAxis, positionAxis);
    }

    /// <summary>The named targets the CLI offers, by name.</summary>
    public static IReadOnlyDictionary<string, PatchTarget> Named { get; } = new Dictionary<string, PatchTarget>(StringComparer.Ordinal)
    {
        ["resid_pre"] = ResidPre,
        ["attn_out"] = AttnOut,
        ["mlp_out"] = MlpOut,
        ["head_out"] = HeadOut,
        ["head_out_by_pos"] = HeadOutByPosition,
        ["head_pattern"] = HeadPattern,
        ["q_input"] = QueryInput,
        ["k_input"] = KeyInput,
        ["v_input"] = ValueInput,
    };

    /// <summary>Looks up a named target.</summary>
    /// <exception cref="InputError">The name is unknown; the message lists the known ones.</exception>
    public static PatchTarget Parse(string name) =>
        Named.TryGetValue(name, out var t) ? t
            : throw new InputError($"unknown patch target '{name}'; known targets: {string.Join(", ", Named.Keys)}");

    /// <summary>The layers swept, checked against the model.</summary>
    /// <exception cref="InputError">A layer is outside [0, n_layers).</exception>
    /// <exception cref="InputError">A layer's hook point does not exist in this model.</exception>
    internal int[] ResolveLayers(HookedTransformer model)
    {
        int L = model.Config.NLayers;
        var layers = (Layers ?? Enumerable.Range(0, L).ToArray()).ToArray();
        if (layers.Length == 0) throw new InputError($"target '{Name}' selects no layers");
        foreach (int l in layers)
            if ((uint)l >= (uint)L) throw new InputError($"layer {l} is outside the model's {L} layers (0..{L - 1})");
        var known = model.HookPointNames;
        foreach (int l in layers)
        {
            string hook = HookName(l);
            if (!known.Contains(hook))
                throw new InputError($"target '{Name}': hook '{hook}' is not a hook point of this model ({model.Config.Architecture}); " +
                    $"hook points of block {l} are: {string.Join(", ", known.Where(n => n.StartsWith($"blocks.{l}.", StringComparison.Ordinal)))}");
        }
        return layers;
    }

    /// <summary>Selected indices along an axis of size <paramref name="size"/>.</summary>
    internal static int[] ResolveIndices(IReadOnlyList<int>? chosen, int size, string what)
    {
        var result = (chosen ?? Enumerable.Range(0, size).ToArray()).ToArray();
        if (result.Length == 0) throw new InputError($"no {what}s were selected");
        foreach (int i in result)
            if ((uint)i >= (uint)size) throw new InputError($"{what} {i} is outside 0..{size - 1}");
        return result;
    }
}

/// <summary>One cell of a sweep: a layer, and a head and position when those axes are swept (−1 = all).</summary>
public readonly record struct PatchCell(int Layer, int Head, int Position)
{
    public override string ToString() =>
        $"L{Layer}" + (Head >= 0 ? $"H{Head}" : "") + (Position >= 0 ? $"@{Position}" : "");
}
