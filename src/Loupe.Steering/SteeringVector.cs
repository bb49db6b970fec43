using System.Numerics.Tensors;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Tensor = Loupe.Tensors.Tensor;

namespace Loupe.Steering;

/// <summary>
/// Activation addition: at hook <see cref="HookName"/>, every selected position's vector becomes
/// <c>x + coefficient · direction</c>. The direction is used as given (raw or unit-norm is the
/// caller's choice), so the size of the push is <c>|coefficient| · ‖direction‖</c>.
/// </summary>
public sealed class SteeringVector : IActivationEdit
{
    readonly float[] _direction;
    readonly DeviceVector _push; // c·v, for activations on a device

    /// <param name="hookName">The hook point, e.g. <c>blocks.3.hook_resid_post</c>.</param>
    /// <param name="direction">The vector added per position <c>[width]</c> (copied).</param>
    /// <param name="coefficient">Multiplier on <paramref name="direction"/>; 0 leaves the model untouched.</param>
    /// <param name="positions">Where to add it (default every position).</param>
    /// <exception cref="InputError">The direction is empty or not finite, or the hook is not <c>[batch, pos, …, d]</c>.</exception>
    public SteeringVector(string hookName, ReadOnlySpan<float> direction, float coefficient = 1f, SteeringPositions? positions = null)
    {
        ActivationEdits.RequirePositionLayout(hookName);
        if (direction.IsEmpty) throw new InputError($"the steering vector for '{hookName}' is empty");
        foreach (float x in direction)
            if (!float.IsFinite(x)) throw new InputError($"the steering vector for '{hookName}' contains NaN or infinity");
        if (!float.IsFinite(coefficient))
            throw new InputError($"the coefficient for '{hookName}' is {coefficient}; it must be finite");
        HookName = hookName;
        _direction = direction.ToArray();
        Coefficient = coefficient;
        _push = new DeviceVector([.. _direction.Select(x => x * coefficient)]);
        Positions = positions ?? SteeringPositions.All;
    }

    public string HookName { get; }
    /// <summary>The vector added per position (before the coefficient) <c>[width]</c>.</summary>
    public ReadOnlySpan<float> Direction => _direction;
    public float Coefficient { get; }
    public SteeringPositions Positions { get; }
    public int? Width => _direction.Length;
    /// <summary>‖direction‖₂.</summary>
    public float Norm => TensorPrimitives.Norm(_direction);

    /// <summary>The same direction at another coefficient.</summary>
    public SteeringVector WithCoefficient(float coefficient) => new(HookName, _direction, coefficient, Positions);

    /// <summary>The same vector at other positions.</summary>
    public SteeringVector WithPositions(SteeringPositions positions) => new(HookName, _direction, Coefficient, positions);

    /// <summary>A projection-out edit along this direction at the same hook and positions.</summary>
    public ProjectOut ToProjectOut(float coefficient = 1f) => new(HookName, _direction, coefficient, Positions);

    /// <inheritdoc/>
    public Tensor Apply(Tensor activation, HookContext context)
    {
        ActivationEdits.CheckActivation(this, activation); // [batch, pos, …, d]
        int batch = activation.Dim(0), length = activation.Dim(1), d = _direction.Length;
        int first = Positions.FirstIndex(context, length);
        if (first >= length || Coefficient == 0f) return activation;
        if (!activation.IsHost) return ApplyOnDevice(activation, context, first);
        int rowsPerPos = activation.Length / (batch * length * d); // heads, for [batch, pos, head_index, d_head]
        var edited = activation.Clone();
        var span = edited.Span;
        for (int b = 0; b < batch; b++)
            for (int t = first; t < length; t++)
                for (int r = 0; r < rowsPerPos; r++)
                {
                    var row = span.Slice(((b * length + t) * rowsPerPos + r) * d, d);
                    TensorPrimitives.MultiplyAdd(_direction, Coefficient, row, row); // x + c·v
                }
        return edited;
    }

    // On a device: x + c·v as one row-vector add per edited range; c·v is uploaded once per backend.
    Tensor ApplyOnDevice(Tensor activation, HookContext context, int first)
    {
        var backend = DeviceActivations.BackendOf(activation, context);
        var push = _push.On(backend);
        var edited = activation.Clone(); // on the device
        foreach (var (rows, count) in DeviceActivations.RowsFrom(edited, first, _direction.Length))
            backend.AddRowVector(rows, count, push);
        return edited;
    }

    /// <summary>
    /// Reads a vector from a safetensors file: the tensor <paramref name="tensorName"/>, or the only
    /// tensor (or the one named <c>persona</c> / <c>direction</c>) when null. The hook comes from
    /// <paramref name="hookName"/>, else from the file's <c>hook</c> metadata.
    /// </summary>
    /// <exception cref="InputError">The tensor is missing or ambiguous, not a vector, or no hook is known.</exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public static SteeringVector Load(string path, string? tensorName = null, string? hookName = null, float coefficient = 1f, SteeringPositions? positions = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"vector file not found: {path}", path);
        using var file = SafeTensorsFile.Open(path);
        string name = tensorName
            ?? (file.Names.Count == 1 ? file.Names[0]
                : file.Names.FirstOrDefault(n => n is "persona" or "direction" or "vector")
                  ?? throw new InputError($"{path} holds {file.Names.Count} tensors ({string.Join(", ", file.Names.Take(8))}); name one as FILE:TENSOR"));
        if (!file.Contains(name)) throw new InputError($"{path} has no tensor '{name}'; it holds: {string.Join(", ", file.Names.Take(16))}");
        var shape = file.GetInfo(name).Shape;
        if (shape.Count(s => s != 1) > 1) throw new InputError($"tensor '{name}' in {path} has shape [{string.Join(", ", shape)}]; a steering vector is one-dimensional");
        // A hook named by the file means what the Loupe that wrote it said (loupe_hooks); one the caller names means today's.
        if (hookName is null) HookNames.RequireKnownSemantics(file.Metadata.GetValueOrDefault(HookNames.SemanticsKey), path);
        string hook = hookName ?? (file.Metadata.TryGetValue("hook", out var h) ? h
            : throw new InputError($"{path} records no 'hook' in its metadata; give the hook point (--hook)"));
        if (string.IsNullOrWhiteSpace(hook)) throw InputError.Expected(path, hookName is null ? "metadata 'hook'" : "the hook", "a hook point name", hook);
        return new SteeringVector(hook, file.GetFloat32(name).Span, coefficient, positions);
    }
}

/// <summary>
/// Directional ablation: every selected position's vector becomes <c>x − c·(x·v̂)·v̂</c> with
/// <c>v̂ = v/‖v‖</c>. With <c>c = 1</c> the component along v is removed exactly (up to float
/// rounding); <c>0 &lt; c &lt; 1</c> shrinks it, <c>c = 2</c> reflects it.
/// </summary>
public sealed class ProjectOut : IActivationEdit
{
    readonly float[] _unit;
    readonly DeviceVector _deviceUnit;

    /// <exception cref="InputError">The direction is empty, zero or not finite, or the hook is not <c>[batch, pos, …, d]</c>.</exception>
    public ProjectOut(string hookName, ReadOnlySpan<float> direction, float coefficient = 1f, SteeringPositions? positions = null)
    {
        ActivationEdits.RequirePositionLayout(hookName);
        if (direction.IsEmpty) throw new InputError($"the direction to project out at '{hookName}' is empty");
        float norm = TensorPrimitives.Norm(direction);
        if (!float.IsFinite(norm) || norm == 0f || !float.IsFinite(coefficient))
            throw new InputError($"the direction to project out at '{hookName}' must be finite and non-zero (‖v‖ = {norm})");
        HookName = hookName;
        _unit = direction.ToArray();
        TensorPrimitives.Divide(_unit, norm, _unit);
        _deviceUnit = new DeviceVector(_unit);
        Coefficient = coefficient;
        Positions = positions ?? SteeringPositions.All;
    }

    public string HookName { get; }
    /// <summary>v̂, the unit direction removed <c>[width]</c>.</summary>
    public ReadOnlySpan<float> UnitDirection => _unit;
    public float Coefficient { get; }
    public SteeringPositions Positions { get; }
    public int? Width => _unit.Length;

    /// <inheritdoc/>
    public Tensor Apply(Tensor activation, HookContext context)
    {
        ActivationEdits.CheckActivation(this, activation); // [batch, pos, …, d]
        int batch = activation.Dim(0), length = activation.Dim(1), d = _unit.Length;
        int first = Positions.FirstIndex(context, length);
        if (first >= length || Coefficient == 0f) return activation;
        if (!activation.IsHost) return ApplyOnDevice(activation, context, first);
        int rowsPerPos = activation.Length / (batch * length * d);
        var edited = activation.Clone();
        var span = edited.Span;
        for (int b = 0; b < batch; b++)
            for (int t = first; t < length; t++)
                for (int r = 0; r < rowsPerPos; r++)
                {
                    var row = span.Slice(((b * length + t) * rowsPerPos + r) * d, d);
                    float along = TensorPrimitives.Dot(row, _unit);
                    TensorPrimitives.MultiplyAdd(_unit, -Coefficient * along, row, row); // x − c·(x·v̂)·v̂
                }
        return edited;
    }

    // On a device: the projections x·v̂ as one product per edited range, then x −= (c·(x·v̂))·v̂ as an outer product added back.
    Tensor ApplyOnDevice(Tensor activation, HookContext context, int first)
    {
        var backend = DeviceActivations.BackendOf(activation, context);
        var unit = _deviceUnit.On(backend);
        int d = _unit.Length;
        var edited = activation.Clone(); // on the device
        foreach (var (rows, count) in DeviceActivations.RowsFrom(edited, first, d))
        {
            var along = backend.Empty(count, 1);
            backend.Linear(rows, count, d, unit.Reshape(1, d), weightIsOutIn: true, 1, null, along);
            backend.Scale(along, -Coefficient, along);
            var removed = backend.Empty(count, d);
            backend.Linear(along, count, 1, unit.Reshape(d, 1), weightIsOutIn: true, d, null, removed);
            backend.Add(rows, removed, rows);
        }
        return edited;
    }
}
