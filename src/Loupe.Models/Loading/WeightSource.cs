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

    public WeightSource(SafeTensorsCheckpoint checkpoint, string where)
    {
        _checkpoint = checkpoint;
        Where = where;
    }

    /// <summary>The folder or file the weights come from, for messages.</summary>
    public string Where { get; }

    /// <summary>Parameters handed out so far (each tensor counted once).</summary>
    public long ParameterCount => _parameters;

    readonly HashSet<string> _counted = new(StringComparer.Ordinal);

    public bool Contains(string name) => _checkpoint.Contains(name);

    public IReadOnlyList<string> Names => _checkpoint.Names;

    /// <summary>The tensor's data as float32, checked against <paramref name="shape"/>.</summary>
    /// <exception cref="InvalidDataException">The tensor is missing or has another shape.</exception>
    public ReadOnlyMemory<float> Get(string name, params int[] shape)
    {
        if (!_checkpoint.Contains(name))
            throw new InvalidDataException($"{Where}: tensor '{name}' (expected shape {ShapeUtil.Format(shape)}) is missing from the checkpoint{NearMatches(name)}");
        var info = _checkpoint.GetInfo(name);
        if (info.Shape.Length != shape.Length || !info.Shape.Select(d => (int)d).SequenceEqual(shape))
            throw new InvalidDataException($"{Where}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}]; the config implies {ShapeUtil.Format(shape)}");
        var data = _checkpoint.GetFloat32(name);
        if (_counted.Add(name)) _parameters += data.Length;
        return data;
    }

    /// <summary><see cref="Get"/> when present, otherwise empty.</summary>
    public ReadOnlyMemory<float> Optional(string name, params int[] shape) => Contains(name) ? Get(name, shape) : default;

    /// <summary>A copy of a tensor (for weights that must be re-laid out); counts as a parameter.</summary>
    public float[] Copy(string name, params int[] shape) => Get(name, shape).ToArray();

    string NearMatches(string name)
    {
        string tail = name[(name.LastIndexOf('.', name.Length - 8 > 0 ? name.Length - 8 : name.Length - 1) + 1)..];
        var near = _checkpoint.Names.Where(n => n.EndsWith(tail, StringComparison.Ordinal)).Take(4).ToList();
        return near.Count == 0 ? "" : $"; tensors with similar names: {string.Join(", ", near)}";
    }

    public void Dispose() => _checkpoint.Dispose();
}
