using Loupe.Tensors;

namespace Loupe.Models.Hooks;

/// <summary>What a hook function is told about the point it runs at.</summary>
/// <param name="Name">The hook point's full name.</param>
/// <param name="Layer">The block index, or -1 outside blocks.</param>
/// <param name="PositionOffset">Absolute position of the activation's first position (the KV-cache length during generation).</param>
/// <param name="GenerationStep">-1 for a plain forward; 0 for the prompt pass of a generation, 1.. for each new token.</param>
public readonly record struct HookContext(string Name, int Layer, int PositionOffset, int GenerationStep)
{
    /// <summary>
    /// The backend running the pass, on whose device the activation lives: a hook that edits or reads a device tensor does so
    /// with its ops. Null only where a caller builds a context by hand (then the activation is on the CPU).
    /// </summary>
    public Loupe.Tensors.Backends.IComputeBackend? Backend { get; init; }
}

/// <summary>
/// Reads or replaces an activation. Return null (or the same tensor, edited in place) to keep it;
/// return a tensor of the same shape to replace it.
/// </summary>
public delegate Tensor? HookFunction(Tensor activation, HookContext context);

/// <summary>Options for one forward pass (or one generation).</summary>
public sealed class RunOptions
{
    readonly Dictionary<string, List<HookFunction>> _hooks = new(StringComparer.Ordinal);
    readonly Dictionary<string, List<HookFunction>> _gradientHooks = new(StringComparer.Ordinal);
    readonly List<IHookSplice> _splices = [];

    /// <summary>Which hook points to record into the cache; null records nothing.</summary>
    public Func<string, bool>? CacheFilter { get; set; }

    /// <summary>Whether <see cref="ForwardResult.Logits"/> covers every position (default) or only the last.</summary>
    public bool LastPositionLogitsOnly { get; set; }

    /// <summary>
    /// Skip the finiteness scan of the logits at the end of a forward pass: the caller checks them
    /// itself where they live (a device sweep folds the check into the one table it reads back, instead of one scalar read
    /// per pass) and re-runs a pass it finds non-finite without this flag to get the error that names the hook point.
    /// </summary>
    public bool DeferFiniteCheck { get; set; }

    /// <summary>
    /// Where cached activations and recorded gradients are kept: on the model's device (the default; read
    /// them with <c>ToCpu()</c>), or copied to host memory as the pass reaches them (one counted copy each).
    /// </summary>
    public CacheLocation CacheOn { get; set; } = CacheLocation.Device;

    /// <summary>
    /// When set, each activation the <see cref="CacheFilter"/> selects is handed to it as the pass reaches it
    /// (e.g. <see cref="Loading.SafeTensorsStreamWriter.Write(string, Tensors.Tensor)"/>, streaming a cache to
    /// disk) instead of being kept in the result's cache.
    /// </summary>
    public Action<string, Tensor>? CacheSink { get; set; }

    /// <summary>Registers a hook function at a hook point (several run in order).</summary>
    public RunOptions AddHook(string hookName, HookFunction hook)
    {
        if (!_hooks.TryGetValue(hookName, out var list)) _hooks[hookName] = list = [];
        list.Add(hook);
        return this;
    }

    /// <summary>
    /// Registers a gradient hook: during a backward pass it sees d metric / d activation at the hook
    /// point and may replace it (same shape); what it returns flows on to earlier layers.
    /// </summary>
    public RunOptions AddGradientHook(string hookName, HookFunction hook)
    {
        if (!_gradientHooks.TryGetValue(hookName, out var list)) _gradientHooks[hookName] = list = [];
        list.Add(hook);
        return this;
    }

    /// <summary>
    /// Splices an SAE or transcoder into this run only (see <see cref="IHookSplice"/>); splices attached
    /// to the model with <see cref="HookedTransformer.AddSplice"/> apply as well. At most one splice per output hook.
    /// </summary>
    public RunOptions AddSplice(IHookSplice splice)
    {
        ArgumentNullException.ThrowIfNull(splice);
        _splices.Add(splice);
        return this;
    }

    /// <summary>The splices added to this run.</summary>
    public IReadOnlyList<IHookSplice> Splices => _splices;

    /// <summary>Which hook points' gradients to record during a backward pass; null records none.</summary>
    public Func<string, bool>? GradientFilter { get; set; }

    /// <summary>Records the hook points whose names match <paramref name="pattern"/>.</summary>
    public RunOptions CacheMatching(HookPattern pattern)
    {
        CacheFilter = pattern.Matches;
        return this;
    }

    public RunOptions CacheAll()
    {
        CacheFilter = static name => !HookNames.IsPerHeadInput(name); // n_heads copies of resid_pre each: only when named
        return this;
    }

    internal IReadOnlyDictionary<string, List<HookFunction>> Hooks => _hooks;
    internal IReadOnlyDictionary<string, List<HookFunction>> GradientHooks => _gradientHooks;
}

/// <summary>Activations recorded during a forward pass, by hook name.</summary>
/// <summary>Where a run keeps the activations and gradients it records.</summary>
public enum CacheLocation
{
    /// <summary>On the model's device, as the pass produced them.</summary>
    Device,
    /// <summary>In host memory, copied as the pass reaches each hook point.</summary>
    Host,
}

public sealed class ActivationCache
{
    readonly Dictionary<string, Tensor> _items = new(StringComparer.Ordinal);
    readonly List<string> _order = [];
    Dictionary<string, string>? _skipped;
    bool _recycled;

    public Tensor this[string name] => _items.TryGetValue(name, out var t) ? t
        : _skipped is not null && _skipped.TryGetValue(name, out var why) ? throw new KeyNotFoundException($"hook '{name}' was asked for but has no value in this pass: {why}")
        : _recycled ? throw new InvalidOperationException($"hook '{name}': this cache's storage was given back to the model's scratch pool (HookedTransformer.Recycle); read what you need before recycling")
        : throw new KeyNotFoundException($"hook '{name}' was not cached; cached hooks: {string.Join(", ", _order.Take(20))}{(_order.Count > 20 ? ", …" : "")}");

    public bool Contains(string name) => _items.ContainsKey(name);

    /// <summary>Whether this cache's storage was given back to the model's scratch pool (<see cref="HookedTransformer.Recycle"/>).</summary>
    public bool Recycled => _recycled;

    /// <summary>Names in the order the forward pass reached them.</summary>
    public IReadOnlyList<string> Names => _order;

    public int Count => _order.Count;

    internal void Set(string name, Tensor value)
    {
        if (!_items.ContainsKey(name)) _order.Add(name);
        _items[name] = value;
    }

    /// <summary>Notes that <paramref name="name"/> was asked for but the pass gave it no value, and why (reading it then says so).</summary>
    internal void Skip(string name, string why) => (_skipped ??= new(StringComparer.Ordinal))[name] = why;

    /// <summary>The cached tensors, then nothing cached (their storage is being given back).</summary>
    internal List<Tensor> TakeAll()
    {
        var all = _items.Values.ToList();
        _items.Clear();
        _order.Clear();
        _recycled = true;
        return all;
    }
}

/// <summary>The output of a forward pass.</summary>
/// <param name="Logits"><c>[batch, pos, d_vocab_out]</c> (pos = 1 with <see cref="RunOptions.LastPositionLogitsOnly"/>).</param>
/// <param name="Cache">The recorded activations (empty unless a cache filter was given).</param>
public sealed record ForwardResult(Tensor Logits, ActivationCache Cache)
{
    /// <summary>
    /// Storage the pass allocated as scratch and did not release (the logits, what the cache holds, what a hook saw), each
    /// with the whole pooled storage behind it; what <see cref="HookedTransformer.Recycle"/> may give back.
    /// </summary>
    internal IReadOnlyDictionary<TensorStorage, TensorStorage>? Scratch { get; init; }

    /// <summary>The pool of the model that made this result (where <see cref="Scratch"/> may go back).</summary>
    internal ScratchPool? Pool { get; init; }

    /// <summary>
    /// Whether <see cref="HookedTransformer.Recycle"/> gave this result's storage back (its cache is then empty). Kept by the
    /// cache, which a copy made with <c>with</c> shares, so the copy cannot give the same storage back a second time.
    /// </summary>
    public bool Recycled => Cache.Recycled;
}

/// <summary>The output of a forward and backward pass.</summary>
/// <param name="Metric">The metric's value.</param>
/// <param name="Logits"><c>[batch, pos, d_vocab_out]</c>.</param>
/// <param name="Activations">Activations recorded by the cache filter.</param>
/// <param name="Gradients">d metric / d activation at the hook points the gradient filter selected.</param>
public sealed record GradientResult(double Metric, Tensor Logits, ActivationCache Activations, ActivationCache Gradients);
