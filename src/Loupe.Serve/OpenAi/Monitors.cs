using System.Numerics.Tensors;
using System.Text.Json;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Steering;
using Loupe.Tensors;
using Tensor = Loupe.Tensors.Tensor;

namespace Loupe.Serve.OpenAi;

/// <summary>What a monitor does when its reading crosses its threshold.</summary>
public enum MonitorAction { None, Flag, Stop }

/// <summary>
/// Reads one number per generated token at a hook: a vector's projection onto its unit direction, or one SAE feature's
/// activation. The reading of token i is taken at the position whose forward pass picked it (the last prompt token for
/// the first new token), so it is known when the token is, and a stop can end the generation right there.
/// </summary>
public sealed class TokenMonitor
{
    readonly float[]? _unit;
    readonly SparseDictionary? _sae;
    readonly int _feature;
    readonly List<double> _readings = [];
    double _latest = double.NaN;

    TokenMonitor(string name, string hook, double threshold, MonitorAction action, bool below, float[]? unit, SparseDictionary? sae, int feature)
    {
        Name = name;
        Hook = hook;
        Threshold = threshold;
        Action = action;
        Below = below;
        _unit = unit;
        _sae = sae;
        _feature = feature;
    }

    public string Name { get; }
    public string Hook { get; }
    public double Threshold { get; }
    public MonitorAction Action { get; }
    /// <summary>Crossing means falling below the threshold instead of rising above it.</summary>
    public bool Below { get; }
    public IReadOnlyList<double> Readings => _readings;
    /// <summary>Index of the first generated token whose reading crossed the threshold; null if none did.</summary>
    public int? FirstCrossing { get; private set; }

    public static TokenMonitor ForVector(string name, string hook, ReadOnlySpan<float> direction, double threshold, MonitorAction action, bool below)
    {
        float norm = TensorPrimitives.Norm(direction);
        var unit = new float[direction.Length];
        TensorPrimitives.Divide(direction, norm, unit);
        return new TokenMonitor(name, hook, threshold, action, below, unit, null, 0);
    }

    public static TokenMonitor ForFeature(string name, string hook, SparseDictionary sae, int feature, double threshold, MonitorAction action, bool below) =>
        new(name, hook, threshold, action, below, null, sae, feature);

    /// <summary>The hook function: reads the last position of row 0 (one request generates one row); leaves the activation alone.</summary>
    public Tensor? Read(Tensor activation, HookContext context)
    {
        if (context.GenerationStep < 0) return null;
        int length = activation.Dim(1), width = activation.Shape[^1];
        if (!activation.IsHost)
        {
            var backend = context.Backend ?? throw new InvalidOperationException($"hook '{context.Name}' carries a tensor on {activation.Device} but its context names no backend");
            _latest = ReadOnDevice(backend, new Tensor(activation.Storage.Slice((long)(length - 1) * width, width), 1, width));
            return null;
        }
        var row = activation.Span.Slice((length - 1) * width, width);
        _latest = _unit is not null ? TensorPrimitives.Dot(row, _unit) : _sae!.Encode(row, 1)[_feature];
        return null;
    }

    Tensor? _deviceUnit, _slot;

    /// <summary>
    /// The reading computed where the activation is: the projection onto the unit direction (uploaded once per monitor),
    /// or the SAE's encoding of the row with the dictionary's weights uploaded once per served SAE (shared by requests);
    /// one float comes back per token.
    /// </summary>
    float ReadOnDevice(Loupe.Tensors.Backends.IComputeBackend backend, Tensor row)
    {
        _slot ??= backend.Empty(1);
        if (_unit is not null)
        {
            _deviceUnit ??= backend.LoadWeight(_unit, [1, _unit.Length]);
            backend.Linear(row, 1, _unit.Length, _deviceUnit, weightIsOutIn: true, 1, null, _slot);
        }
        else if (DeviceSaeTraining.Supports(_sae!.Activation))
        {
            // One upload per dictionary and backend: a monitor lives for one request, the served SAE for the server's life.
            var (acts, _, _) = DeviceSaeEncoder.Shared(backend, _sae).Encode(row, 1);
            backend.CopyRows(acts, _feature, 1, _slot, 0, 1, 1, 1);
        }
        else return _sae.Encode(row.ToCpu().Span, 1)[_feature]; // an activation without device kernels: the one row comes back
        var value = new float[1];
        _slot.CopyTo(value);
        return value[0];
    }

    /// <summary>Records the reading for the token just picked; true when it crosses the threshold.</summary>
    public bool Record(int tokenIndex)
    {
        _readings.Add(_latest);
        bool crossed = Below ? _latest < Threshold : _latest > Threshold;
        if (crossed) FirstCrossing ??= tokenIndex;
        return crossed;
    }

    /// <summary>The reading just recorded.</summary>
    public double Latest => _latest;
}

/// <summary>The request's <c>loupe</c> object: steering edits and monitors resolved against the served vectors.</summary>
public sealed record LoupeRequest(IReadOnlyList<IActivationEdit> Edits, IReadOnlyList<object> EditViews, IReadOnlyList<TokenMonitor> Monitors)
{
    public static readonly LoupeRequest None = new([], [], []);

    /// <summary>RunOptions with the edits first, then the monitors' readers (so monitors see the steered activation).</summary>
    public RunOptions? Options(HookedTransformer model)
    {
        if (Edits.Count == 0 && Monitors.Count == 0) return null;
        var options = new RunOptions();
        foreach (var edit in Edits) options.AddEdit(model, edit);
        foreach (var monitor in Monitors) options.AddHook(monitor.Hook, monitor.Read);
        return options;
    }

    /// <exception cref="OpenAiError">A field has the wrong type, names an unknown vector, SAE or hook, or a monitor lacks a threshold.</exception>
    public static LoupeRequest Parse(JsonElement? loupe, VectorLibrary library, HookedTransformer model)
    {
        if (loupe is not { } root) return None;
        if (root.ValueKind != JsonValueKind.Object) throw Fields.Wrong("loupe", "an object", root);
        foreach (var p in root.EnumerateObject())
            if (p.Name is not ("steer" or "monitors")) throw OpenAiError.Invalid($"unknown field 'loupe.{p.Name}' (known: steer, monitors)", $"loupe.{p.Name}", "unknown_field");
        var edits = new List<IActivationEdit>();
        var views = new List<object>();
        foreach (var (item, path) in Items(root, "steer"))
        {
            float coefficient = (float)(Fields.Number(item, "coefficient", -1e6, 1e6, path + ".coefficient")
                ?? throw OpenAiError.Invalid($"'{path}.coefficient' is required", path + ".coefficient", "missing_field"));
            var positions = Fields.String(item, "positions", path + ".positions") is { } pos ? ParsePositions(pos, path + ".positions") : SteeringPositions.All;
            var (hook, direction, source) = Direction(item, path, library, forSteering: true);
            var edit = new SteeringVector(hook, direction, coefficient, positions);
            Validate(model, edit.HookName, direction.Length, path);
            edits.Add(edit);
            views.Add(new { source, hook, coefficient, positions = positions.ToString() });
        }
        var monitors = new List<TokenMonitor>();
        foreach (var (item, path) in Items(root, "monitors"))
        {
            string action = Fields.String(item, "action", path + ".action") ?? "flag";
            var act = action switch
            {
                "flag" => MonitorAction.Flag, "stop" => MonitorAction.Stop, "none" => MonitorAction.None,
                _ => throw OpenAiError.Invalid($"'{path}.action' must be flag, stop or none; got '{action}'", path + ".action", "invalid_value"),
            };
            string direction = Fields.String(item, "direction", path + ".direction") ?? "above";
            if (direction is not ("above" or "below")) throw OpenAiError.Invalid($"'{path}.direction' must be above or below", path + ".direction", "invalid_value");
            double? threshold = Fields.Number(item, "threshold", double.MinValue, double.MaxValue, path + ".threshold");
            string name = Fields.String(item, "name", path + ".name") ?? Fields.String(item, "vector") ?? $"{Fields.String(item, "sae")}#{Fields.Int(item, "feature", 0, int.MaxValue)}";
            if (monitors.Any(m => m.Name == name)) throw OpenAiError.Invalid($"two monitors are named '{name}'; give each a distinct 'name'", path + ".name", "invalid_value");
            if (Fields.String(item, "sae", path + ".sae") is { } saeId)
            {
                var (sae, config) = library.Sae(saeId, path + ".sae");
                int feature = Feature(item, path, sae);
                var t = threshold ?? throw OpenAiError.Invalid($"'{path}.threshold' is required for an SAE feature monitor", path + ".threshold", "missing_field");
                Validate(model, config.HookName, sae.Shape.DIn, path);
                monitors.Add(TokenMonitor.ForFeature(name, config.HookName, sae, feature, t, act, direction == "below"));
            }
            else
            {
                string id = Fields.String(item, "vector", path + ".vector") ?? throw OpenAiError.Invalid($"'{path}' needs 'vector' (a served vector id) or 'sae' and 'feature'", path, "missing_field");
                var persona = library.Persona(id, path + ".vector");
                var vector = library.Vector(id, path + ".vector");
                var t = threshold ?? persona?.Threshold
                    ?? throw OpenAiError.Invalid($"'{path}.threshold' is required: '{id}' is not a persona/monitor file with a calibrated threshold", path + ".threshold", "missing_field");
                Validate(model, vector.HookName, vector.Direction.Length, path);
                monitors.Add(TokenMonitor.ForVector(name, vector.HookName, persona is null ? vector.Direction : persona.Vector, t, act, direction == "below"));
            }
        }
        return new LoupeRequest(edits, views, monitors);
    }

    static IEnumerable<(JsonElement Item, string Path)> Items(JsonElement root, string name)
    {
        if (Fields.Get(root, name) is not { } list) yield break;
        if (list.ValueKind != JsonValueKind.Array) throw Fields.Wrong("loupe." + name, "an array", list);
        int i = 0;
        foreach (var item in list.EnumerateArray())
        {
            string path = $"loupe.{name}[{i++}]";
            if (item.ValueKind != JsonValueKind.Object) throw Fields.Wrong(path, "an object", item);
            yield return (item, path);
        }
        if (i > 16) throw OpenAiError.Invalid($"at most 16 entries in 'loupe.{name}'", "loupe." + name, "too_many");
    }

    static (string Hook, float[] Direction, string Source) Direction(JsonElement item, string path, VectorLibrary library, bool forSteering)
    {
        if (Fields.String(item, "sae", path + ".sae") is { } saeId)
        {
            var (sae, config) = library.Sae(saeId, path + ".sae");
            int f = Feature(item, path, sae);
            // Steering by a feature adds its decoder direction where the SAE writes.
            string hook = string.IsNullOrEmpty(config.HookNameOut) ? config.HookName : config.HookNameOut;
            return (hook, sae.P.WDec.AsSpan(f * sae.Shape.DOut, sae.Shape.DOut).ToArray(), $"sae {saeId} feature {f}");
        }
        string id = Fields.String(item, "vector", path + ".vector") ?? throw OpenAiError.Invalid($"'{path}' needs 'vector' (a served vector id) or 'sae' and 'feature'", path, "missing_field");
        var v = library.Vector(id, path + ".vector");
        return (v.HookName, v.Direction.ToArray(), $"vector {id}");
    }

    static int Feature(JsonElement item, string path, SparseDictionary sae) =>
        Fields.Int(item, "feature", 0, sae.Shape.DSae - 1, path + ".feature")
        ?? throw OpenAiError.Invalid($"'{path}.feature' is required with 'sae'", path + ".feature", "missing_field");

    static SteeringPositions ParsePositions(string text, string path)
    {
        try { return SteeringPositions.Parse(text, path); }
        catch (InputError e) { throw OpenAiError.Invalid(e.Message, path, "invalid_value"); }
    }

    static void Validate(HookedTransformer model, string hook, int width, string path)
    {
        try
        {
            ActivationEdits.RequireHook(model, hook);
            if (ActivationEdits.HookWidth(model.Config, hook) is { } w && w.Width != width)
                throw new InputError($"the vector has {width} components but '{hook}' is {w.Width} wide");
        }
        catch (InputError e) { throw OpenAiError.Invalid($"{path}: {e.Message}", path, "invalid_hook"); }
    }
}
