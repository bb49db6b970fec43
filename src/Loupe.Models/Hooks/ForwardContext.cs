using System.Diagnostics;
using Loupe.Models.Generation;
using Loupe.Tensors;

namespace Loupe.Models.Hooks;

/// <summary>
/// The state of one forward pass: which hook points are live, the cache being filled, the
/// positions and padding of the tokens, and the KV cache during generation.
/// </summary>
public sealed class ForwardContext
{
    static readonly bool s_debug = Environment.GetEnvironmentVariable("LOUPE_DEBUG") == "1";
    readonly RunOptions _options;
    readonly Dictionary<string, bool> _wants = new(StringComparer.Ordinal);
    readonly Stopwatch _clock = Stopwatch.StartNew();
    long _lastTicks;

    internal ForwardContext(RunOptions options, int batch, int length, int[] positions, bool[]? keyValid, KvCache? kvCache, int generationStep)
    {
        _options = options;
        Batch = batch;
        Length = length;
        Positions = positions;
        KeyValid = keyValid;
        KvCache = kvCache;
        GenerationStep = generationStep;
        PositionOffset = kvCache?.Length ?? 0;
    }

    public int Batch { get; }
    /// <summary>Positions in this pass (new tokens only, when a KV cache holds the earlier ones).</summary>
    public int Length { get; }
    /// <summary>Absolute position of each token <c>[batch, pos]</c>.</summary>
    public int[] Positions { get; }
    /// <summary>Padding mask over all keys <c>[batch, key_pos]</c> including cached ones; null when nothing is padded.</summary>
    public bool[]? KeyValid { get; }
    public KvCache? KvCache { get; }
    public int GenerationStep { get; }
    public int PositionOffset { get; }
    public ActivationCache Cache { get; } = new();

    /// <summary>Gradients recorded during the backward pass.</summary>
    public ActivationCache Gradients { get; } = new();

    /// <summary>
    /// What each layer saved for its backward pass (keyed by the layer object), or null when no
    /// backward will follow — then layers save nothing.
    /// </summary>
    internal Dictionary<object, object>? Saved { get; init; }

    /// <summary>Whether layers must save what their backward pass needs.</summary>
    public bool RecordsForBackward => Saved is not null;

    internal void Save(object layer, object state)
    {
        if (Saved is { } saved) saved[layer] = state;
    }

    internal T Restore<T>(object layer) where T : class =>
        Saved is { } saved && saved.TryGetValue(layer, out var state) ? (T)state
            : throw new InvalidOperationException($"{layer.GetType().Name} has no saved state: the forward pass did not record for backward");

    /// <summary>Whether a gradient is asked for at this hook point (recorded or hooked).</summary>
    public bool WantsGradient(string name) =>
        _options.GradientHooks.ContainsKey(name) || (_options.GradientFilter?.Invoke(name) ?? false);

    /// <summary>
    /// Passes a gradient through its hook point on the way back: gradient hooks first (each may
    /// replace it), then the gradient cache records what flows on.
    /// </summary>
    public Tensor GradHook(string name, int layer, Tensor gradient)
    {
        if (s_debug) Debug("∇ " + name, gradient);
        if (_options.GradientHooks.TryGetValue(name, out var hooks))
        {
            var context = new HookContext(name, layer, PositionOffset, GenerationStep);
            foreach (var hook in hooks)
            {
                var replaced = hook(gradient, context);
                if (replaced is null || ReferenceEquals(replaced, gradient)) continue;
                if (!replaced.SameShape(gradient))
                    throw new InvalidOperationException($"a gradient hook at '{name}' returned shape {replaced.ShapeString}; the gradient there has shape {gradient.ShapeString}");
                gradient = replaced;
            }
        }
        if (_options.GradientFilter?.Invoke(name) ?? false) Gradients.Set(name, gradient);
        return gradient;
    }
    public bool LastPositionLogitsOnly => _options.LastPositionLogitsOnly;

    /// <summary>Whether anything reads this hook point, so optional activations (e.g. hook_result) are computed only when asked for.</summary>
    public bool Wants(string name)
    {
        if (!_wants.TryGetValue(name, out bool want))
            _wants[name] = want = _options.Hooks.ContainsKey(name) || (_options.CacheFilter?.Invoke(name) ?? false);
        return want;
    }

    /// <summary>
    /// Passes an activation through its hook point: user hooks first (each may replace it), then
    /// the cache records what flows on. The returned tensor must not be mutated afterwards.
    /// </summary>
    public Tensor Hook(string name, int layer, Tensor activation)
    {
        if (s_debug) Debug(name, activation);
        if (!Wants(name)) return activation;
        if (_options.Hooks.TryGetValue(name, out var hooks))
        {
            var context = new HookContext(name, layer, PositionOffset, GenerationStep);
            foreach (var hook in hooks)
            {
                var replaced = hook(activation, context);
                if (replaced is null || ReferenceEquals(replaced, activation)) continue;
                if (!replaced.SameShape(activation))
                    throw new InvalidOperationException($"a hook at '{name}' returned a tensor of shape {replaced.ShapeString}; the activation there has shape {activation.ShapeString}");
                activation = replaced;
            }
        }
        if (_options.CacheFilter?.Invoke(name) ?? false) Cache.Set(name, activation);
        return activation;
    }

    void Debug(string name, Tensor t)
    {
        long now = _clock.ElapsedTicks;
        Console.Error.WriteLine($"[loupe] {name,-40} {t.ShapeString,-22} +{(now - _lastTicks) * 1000.0 / Stopwatch.Frequency:F3} ms");
        _lastTicks = now;
    }
}
