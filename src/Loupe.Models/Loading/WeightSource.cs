using Loupe.Tensors;

namespace Loupe.Models.Loading;

/// <summary>
/// A model's tensors by name, memory-mapped, with shape checks whose errors name the folder,
/// the tensor, and the shape the config implies.
/// </summary>
public sealed class WeightSource : IDisposable
{
    readonly SafeTensorsCheckpoint _checkpoint;
    long _parameters;

    // Logical name (what a family asks for) → stored name, when the checkpoint nests the model under a prefix.
    readonly Dictionary<string, string>? _stored;
    readonly IReadOnlyList<string>? _logicalNames;

    public WeightSource(SafeTensorsCheckpoint checkpoint, string where)
    {
        _checkpoint = checkpoint;
        Where = where;
    }

    WeightSource(SafeTensorsCheckpoint checkpoint, string where, Dictionary<string, string> stored) : this(checkpoint, where)
    {
        _stored = stored;
        _logicalNames = [.. stored.Keys];
    }

    /// <summary>
    /// The same checkpoint seen through prefix renames (stored prefix → the prefix families ask for, first match
    /// wins): e.g. <c>language_model.model.</c> → <c>model.</c> for the language model inside a multimodal checkpoint.
    /// Tensors no rename matches (a vision tower) are not visible. Disposing either disposes the checkpoint.
    /// </summary>
    public WeightSource WithPrefixes(params (string Stored, string Logical)[] renames)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in _checkpoint.Names)
            foreach (var (stored, logical) in renames)
                if (name.StartsWith(stored, StringComparison.Ordinal))
                {
                    map.TryAdd(logical + name[stored.Length..], name);
                    break;
                }
        return new WeightSource(_checkpoint, Where, map);
    }

    string Stored(string name) => _stored is null ? name : _stored.TryGetValue(name, out var s) ? s : "\0missing:" + name;

    /// <summary>The folder or file the weights come from, for messages.</summary>
    public string Where { get; }

    /// <summary>Parameters handed out so far (each tensor counted once).</summary>
    public long ParameterCount => _parameters;

    readonly HashSet<string> _counted = new(StringComparer.Ordinal);

    public bool Contains(string name) => _stored is null ? _checkpoint.Contains(name) : _stored.ContainsKey(name);

    public IReadOnlyList<string> Names => _logicalNames ?? _checkpoint.Names;

    /// <summary>
    /// The tensor's data as float32, checked against <paramref name="shape"/> and scanned for NaN/±∞
    /// (a vectorized pass, about the cost of reading the weights once).
    /// </summary>
    /// <exception cref="InputError">The tensor is missing, has another shape, or holds a NaN or ±∞ (the message names the tensor and its file).</exception>
    public ReadOnlyMemory<float> Get(string name, params int[] shape)
    {
        if (!Contains(name))
            throw new InputError($"{Where}: tensor '{name}' (expected shape {ShapeUtil.Format(shape)}) is missing from the checkpoint{NearMatches(name)}");
        string stored = Stored(name);
        var info = _checkpoint.GetInfo(stored);
        if (info.Shape.Length != shape.Length || !info.Shape.SequenceEqual(shape.Select(d => (long)d)))
            throw new InputError($"{_checkpoint.FileOf(stored).Path}: tensor '{stored}' has shape [{string.Join(", ", info.Shape)}]; the config implies {ShapeUtil.Format(shape)}");
        var data = _checkpoint.GetFloat32(stored);
        if (_counted.Add(name))
        {
            int bad = NonFinite.IndexOf(data.Span);
            if (bad >= 0)
                throw new InputError($"{_checkpoint.FileOf(stored).Path}: tensor '{stored}': expected finite weights, found {NonFinite.Describe(data.Span[bad])} " +
                                     $"at {NonFinite.Unravel(bad, shape)} of shape {ShapeUtil.Format(shape)}");
            _parameters += data.Length;
        }
        return data;
    }

    /// <summary>
    /// Refuses a checkpoint with tensors for more layers than the config declares (they would be
    /// silently ignored): no tensor name may start with <paramref name="layerPrefix"/>(<paramref name="layers"/>).
    /// </summary>
    /// <exception cref="InputError">Such a tensor exists (the message names it and the config field).</exception>
    public void CheckNoLayerBeyond(Func<int, string> layerPrefix, int layers, string configPath, string field)
    {
        string extra = layerPrefix(layers);
        foreach (var n in Names)
            if (n.StartsWith(extra, StringComparison.Ordinal))
                throw new InputError($"{configPath}: {field} is {layers}, but the checkpoint in {Where} has tensor '{n}' for layer {layers}; " +
                                     $"the config and the weights disagree");
    }

    /// <summary><see cref="Get"/> when present, otherwise empty.</summary>
    public ReadOnlyMemory<float> Optional(string name, params int[] shape) => Contains(name) ? Get(name, shape) : default;

    /// <summary>A copy of a tensor (for weights that must be re-laid out); counts as a parameter.</summary>
    public float[] Copy(string name, params int[] shape) => Get(name, shape).ToArray();

    string NearMatches(string name)
    {
        string tail = name[(name.LastIndexOf('.', name.Length - 8 > 0 ? name.Length - 8 : name.Length - 1) + 1)..];
        var near = Names.Where(n => n.EndsWith(tail, StringComparison.Ordinal)).Take(4).ToList();
        return near.Count == 0 ? "" : $"; tensors with similar names: {string.Join(", ", near)}";
    }

    public void Dispose() => _checkpoint.Dispose();
}
