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
