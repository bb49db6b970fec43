using System.Diagnostics;
using Loupe.Models.Generation;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

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

    // Splices by the hook they replace, and (transcoders only) by the hook they read.
    readonly Dictionary<string, IHookSplice>? _spliceAtOutput;
    readonly Dictionary<string, List<IHookSplice>>? _spliceAtInput;
    // Per pass: a transcoder's input captured at its input hook; a splice's state for backward;
    // d input waiting to join the gradient at a transcoder's input hook.
    readonly Dictionary<IHookSplice, Tensor> _spliceInput = new(ReferenceEqualityComparer.Instance);
    readonly Dictionary<IHookSplice, object?> _spliceSaved = new(ReferenceEqualityComparer.Instance);
    readonly Dictionary<string, Tensor> _pendingInputGradient = new(StringComparer.Ordinal);
    readonly IReadOnlyList<IHookSplice>? _modelSplices;

    // Scratch storage of this pass. A tensor the forward pass made with Scratch that no hook point exposed (no hook, cache,
    // or splice asked for it) and no backward pass keeps is dead once the layer that reads it ran; its storage then serves
    // the next request of the same length (usually the next layer's same tensor). A pass so allocates about one layer's
    // activations instead of every layer's — a batch-8 GPT-2 forward allocated 1.16 GB, every array on the large-object
    // heap, freshly paged in by the kernel each time — and on a GPU it skips most device allocations.
    readonly Dictionary<long, Stack<TensorStorage>> _free = [];
    readonly HashSet<TensorStorage> _ownScratch = new(ReferenceEqualityComparer.Instance);
    // Scratch a forward hook point exposed (so never reused in the pass): the caller may give it back after the pass.
    readonly HashSet<TensorStorage> _exposed = new(ReferenceEqualityComparer.Instance);
    // The model's storage kept between passes: a request the pass's own free list cannot serve is served from it, and what
    // the pass released goes back to it when the pass ends (ReturnScratch).
    readonly ScratchPool? _pool;
    // A pooled storage longer than the request is handed out as a view of its start; the whole goes back at the end.
    readonly Dictionary<TensorStorage, TensorStorage> _wholeOf = new(ReferenceEqualityComparer.Instance);

    internal ForwardContext(IComputeBackend backend, RunOptions options, int batch, int length, int[] positions, bool[]? keyValid, KvCache? kvCache, int generationStep,
        int[]? tokenIds = null, IReadOnlyList<IHookSplice>? modelSplices = null, ScratchPool? pool = null)
    {
        Backend = backend;
        _pool = pool;
        _options = options;
        Batch = batch;
        Length = length;
        Positions = positions;
        KeyValid = keyValid;
        KvCache = kvCache;
        GenerationStep = generationStep;
        PositionOffset = kvCache?.Length ?? 0;
        TokenIds = tokenIds;
        _modelSplices = modelSplices;
        IEnumerable<IHookSplice> splices = options.Splices;
        if (modelSplices is { Count: > 0 }) splices = modelSplices.Concat(splices);
        foreach (var splice in splices)
        {
            _spliceAtOutput ??= new(StringComparer.Ordinal);
            if (!_spliceAtOutput.TryAdd(splice.OutputHook, splice))
                throw new ArgumentException($"two splices replace hook '{splice.OutputHook}'; splice at most one SAE or transcoder per hook point");
            if (splice.InputHook == splice.OutputHook) continue;
            _spliceAtInput ??= new(StringComparer.Ordinal);
            if (!_spliceAtInput.TryGetValue(splice.InputHook, out var readers)) _spliceAtInput[splice.InputHook] = readers = [];
            readers.Add(splice);
        }
    }

    /// <summary>
    /// When set, every activation passing a hook point is scanned and the first NaN/±∞ stops the pass
    /// with <see cref="NonFiniteActivationException"/>. Only the re-run that diagnoses non-finite logits
    /// sets it, so the normal path pays nothing.
    /// </summary>
    internal bool ChecksFinite { get; private init; }

    /// <summary>The caller checks the logits itself (<see cref="RunOptions.DeferFiniteCheck"/>).</summary>
    internal bool DefersFiniteCheck => _options.DeferFiniteCheck;

    /// <summary>A fresh context for the same pass (same options, tokens, positions and KV cache slot) that checks every hook for NaN/±∞.</summary>
    internal ForwardContext ForFiniteCheck() =>
        new(Backend, _options, Batch, Length, Positions, KeyValid, KvCache, GenerationStep, TokenIds, _modelSplices) { ChecksFinite = true };

    /// <summary>Where this pass runs: every layer computes through it, and its tensors live on its device.</summary>
    public IComputeBackend Backend { get; }

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
    /// <summary>Token ids of this pass <c>[batch, pos]</c> (new tokens only during generation); null when not known.</summary>
    public int[]? TokenIds { get; }
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

    /// <summary>Keeps what <paramref name="layer"/>'s backward will need (nothing is kept when no backward follows).</summary>
    public void Save(object layer, object state)
    {
        if (Saved is { } saved) saved[layer] = state;
    }

    /// <summary>What <see cref="Save"/> kept for <paramref name="layer"/>.</summary>
    /// <exception cref="InvalidOperationException">Nothing was saved (the forward pass did not record for backward).</exception>
    public T Restore<T>(object layer) where T : class =>
        Saved is { } saved && saved.TryGetValue(layer, out var state) ? (T)state
            : throw new InvalidOperationException($"{layer.GetType().Name} has no saved state: the forward pass did not record for backward");

    /// <summary>
    /// An uninitialised tensor for this pass's intermediate values, possibly reusing the storage of one
    /// <see cref="Release"/>d earlier in the pass. With a backward pass to follow every tensor may be saved, so then it is
    /// always fresh.
    /// </summary>
    public Tensor Scratch(params int[] shape) => RecordsForBackward ? Fresh(shape) : Take(shape);

    /// <summary>
    /// An uninitialised tensor for a gradient or other intermediate of the backward pass, possibly reusing the storage of one
    /// <see cref="Release"/>d earlier in it. What a gradient hook or the gradient cache saw is never reused; the forward
    /// pass's saved activations are never handed out here.
    /// </summary>
    public Tensor GradScratch(params int[] shape) => Take(shape);

    Tensor Take(int[] shape)
    {
        if (_free.TryGetValue(ShapeUtil.Product(shape), out var free) && free.TryPop(out var storage))
        {
            _ownScratch.Add(storage);
            return new Tensor(storage, shape);
        }
        var fresh = Fresh(shape);
        _ownScratch.Add(fresh.Storage);
        return fresh;
    }

    // Storage no one reads: the model's pool's if it has some that serves this length (dead since the pass that released it
    // ended; possibly longer, then a view of its start), else newly allocated.
    Tensor Fresh(int[] shape)
    {
        long length = ShapeUtil.Product(shape);
        if (_pool is null || !_pool.TryTake(length, out var pooled)) return Backend.Empty(shape);
        if (pooled.Length == length) return new Tensor(pooled, shape);
        var view = pooled.Slice(0, length);
        _wholeOf[view] = pooled;
        return new Tensor(view, shape);
    }

    /// <summary>
    /// Ends the pass's use of scratch storage: what it <see cref="Release"/>d (dead, never exposed) goes to the model's pool
    /// for later passes. Called once the pass's result is complete; a tensor not released — the logits, anything a hook,
    /// cache or gradient saw — stays the caller's.
    /// </summary>
    internal void ReturnScratch()
    {
        if (_pool is not null) _pool.Return(_free.Values.SelectMany(stack => stack).Select(WholeOf));
        _free.Clear();
        _wholeOf.Clear();
        _exposed.Clear();
    }

    /// <summary>
    /// The scratch storage the pass did not release (the result's, what a hook saw), each with the whole storage behind it:
    /// what the caller may give back once done with the result (<see cref="HookedTransformer.Recycle"/>). Taken before
    /// <see cref="ReturnScratch"/>, which forgets the views.
    /// </summary>
    internal IReadOnlyDictionary<TensorStorage, TensorStorage> UnreleasedScratch()
    {
        var kept = new Dictionary<TensorStorage, TensorStorage>(ReferenceEqualityComparer.Instance);
        foreach (var storage in _ownScratch.Concat(_exposed)) kept[storage] = WholeOf(storage); // the two sets are disjoint
        return kept;
    }

    TensorStorage WholeOf(TensorStorage storage) => _wholeOf.GetValueOrDefault(storage, storage);

    /// <summary>
    /// Declares that the caller no longer reads <paramref name="tensor"/>: its storage is reused by a later
    /// <see cref="Scratch"/> if it came from one and no hook point exposed it (a hook, a cache or a splice may keep what it
    /// saw, so those are never reused). Anything else — weights, a caller's tensor, a hook's replacement — is left alone.
    /// </summary>
    /// <remarks>The caller must not pass a tensor that another live name still refers to (e.g. a norm of kind None returns its input).</remarks>
    public void Release(Tensor? tensor)
    {
        if (tensor is null || !_ownScratch.Remove(tensor.Storage)) return;
        if (!_free.TryGetValue(tensor.Storage.Length, out var free)) _free[tensor.Storage.Length] = free = new();
        free.Push(tensor.Storage);
    }

    /// <summary>
    /// Returns <paramref name="next"/>, computed from <paramref name="previous"/>, after releasing <paramref name="previous"/>
    /// (see <see cref="Release"/>) unless the two are the same tensor (a norm of kind None, a hook that kept its input).
    /// </summary>
    public Tensor Replacing(Tensor previous, Tensor next)
    {
        if (!ReferenceEquals(previous, next)) Release(previous);
        return next;
    }

    /// <summary>
    /// A shortformer model's hook_pos_embed <c>[batch, pos, d_model]</c> (as hooked): every attention layer adds it to its query
    /// and key inputs (<see cref="ModelConfig.ShortformerPositions"/>); null for other models.
    /// </summary>
    internal Tensor? ShortformerPositions { get; set; }

    /// <summary>The gradient at <see cref="ShortformerPositions"/>: the sum of what every layer's queries and keys send it (backward).</summary>
    internal Tensor? ShortformerPositionGradient { get; set; }

    /// <summary>What <see cref="Save"/> kept for <paramref name="layer"/>, if it kept something of type <typeparamref name="T"/>.</summary>
    internal bool TryRestore<T>(object layer, out T? state) where T : class
    {
        state = Saved is { } saved && saved.TryGetValue(layer, out var s) ? s as T : null;
        return state is not null;
    }

    /// <summary>
    /// Whether something may change the values at <paramref name="name"/> or the gradient through it: a hook function, a
    /// gradient hook or a splice there (a cache or gradient record only reads).
    /// </summary>
    internal bool MayChange(string name) => MayChangeForward(name) || _options.GradientHooks.ContainsKey(name);

    /// <summary>Whether something may change the values at <paramref name="name"/> in the forward pass: a hook function or a splice there.</summary>
    internal bool MayChangeForward(string name) =>
        _options.Hooks.ContainsKey(name) || (_spliceAtOutput?.ContainsKey(name) ?? false) || (_spliceAtInput?.ContainsKey(name) ?? false);

    /// <summary>Whether a cache or gradient record (not a hook or splice) asks for <paramref name="name"/>.</summary>
    internal bool Records(string name) =>
        (_options.CacheFilter?.Invoke(name) ?? false) || (_options.GradientFilter?.Invoke(name) ?? false);

    /// <summary>Notes, in the activation and gradient records that ask for <paramref name="name"/>, why this pass gives it no value.</summary>
    internal void SkipRecords(string name, string why)
    {
        if (_options.CacheFilter?.Invoke(name) ?? false) Cache.Skip(name, why);
        if (_options.GradientFilter?.Invoke(name) ?? false) Gradients.Skip(name, why);
    }

    /// <summary>Whether a gradient is asked for at this hook point (recorded or hooked).</summary>
    public bool WantsGradient(string name) =>
        _options.GradientHooks.ContainsKey(name) || (_options.GradientFilter?.Invoke(name) ?? false);

    /// <summary>Whether <see cref="GradHook"/> at <paramref name="name"/> may do anything: a gradient hook or record, or a splice there.</summary>
    internal bool GradientSeenAt(string name) =>
        WantsGradient(name) || (_spliceAtOutput?.ContainsKey(name) ?? false) || _pendingInputGradient.ContainsKey(name)
        || (_spliceAtInput?.ContainsKey(name) ?? false);

    /// <summary>
    /// Passes a gradient through its hook point on the way back: first through a splice replacing this
    /// point (or the input gradient a transcoder reading it sends back), then gradient hooks (each may
    /// replace it), then the gradient cache records what flows on.
    /// </summary>
    public Tensor GradHook(string name, int layer, Tensor gradient)
    {
        // Seen by a gradient hook, the gradient cache or a splice's backward: it may be kept, so it is never reused.
        if (WantsGradient(name) || (_spliceAtOutput?.ContainsKey(name) ?? false) || _pendingInputGradient.ContainsKey(name))
            _ownScratch.Remove(gradient.Storage);
        if (_spliceAtOutput is not null) gradient = SpliceBackward(name, layer, gradient);
        if (s_debug) Debug("∇ " + name, gradient);
        if (_options.GradientHooks.TryGetValue(name, out var hooks))
        {
            var context = new HookContext(name, layer, PositionOffset, GenerationStep) { Backend = Backend };
            foreach (var hook in hooks)
            {
                var replaced = hook(gradient, context);
                if (replaced is null || ReferenceEquals(replaced, gradient)) continue;
                if (!replaced.SameShape(gradient))
                    throw new InvalidOperationException($"a gradient hook at '{name}' returned shape {replaced.ShapeString}; the gradient there has shape {gradient.ShapeString}");
                gradient = OnDevice(replaced);
            }
        }
        if (_options.GradientFilter?.Invoke(name) ?? false) Gradients.Set(name, Kept(gradient));
        return gradient;
    }

    /// <summary>
    /// At a splice's output hook: d output → d input (+ d original) through the splice. An SAE's d input
    /// is the gradient at this same hook; a transcoder's joins the gradient at its input hook (reached
    /// later on the way back), and the original activation here gets only d original (zero when null).
    /// At a transcoder's input hook: adds the d input waiting from its output hook.
    /// </summary>
    Tensor SpliceBackward(string name, int layer, Tensor gradient)
    {
        if (_spliceAtOutput!.TryGetValue(name, out var splice) && _spliceSaved.TryGetValue(splice, out var saved))
        {
            var (dInput, dOriginal) = splice.Backward(saved, gradient, layer, this);
            dInput = OnDevice(dInput);
            if (dOriginal is not null) dOriginal = OnDevice(dOriginal);
            if (dOriginal is not null && !dOriginal.SameShape(gradient))
                throw new InvalidOperationException($"the splice at '{name}' returned d original of shape {dOriginal.ShapeString}; the gradient there has shape {gradient.ShapeString}");
            if (splice.InputHook == name)
            {
                if (!dInput.SameShape(gradient))
                    throw new InvalidOperationException($"the splice at '{name}' returned d input of shape {dInput.ShapeString}; the gradient there has shape {gradient.ShapeString}");
                gradient = dOriginal is null ? dInput : Add(dInput, dOriginal);
            }
            else
            {
                _pendingInputGradient[splice.InputHook] = _pendingInputGradient.TryGetValue(splice.InputHook, out var waiting) ? Add(waiting, dInput) : dInput;
                gradient = dOriginal ?? Backend.Zeros(gradient.Shape.ToArray());
            }
        }
        if (_pendingInputGradient.Remove(name, out var pending))
        {
            if (!pending.SameShape(gradient))
                throw new InvalidOperationException($"a splice's input gradient at '{name}' has shape {pending.ShapeString}; the gradient there has shape {gradient.ShapeString}");
            gradient = Add(gradient, pending);
        }
        return gradient;
    }

    Tensor Add(Tensor a, Tensor b)
    {
        var sum = Backend.Empty(a.Shape.ToArray());
        Backend.Add(a, b, sum);
        return sum;
    }

    /// <summary>
    /// A tensor a hook or splice returned, on this pass's device: a host tensor returned during a GPU run
    /// is uploaded (a counted copy the hook asked for).
    /// </summary>
    Tensor OnDevice(Tensor t) => t.Device == Backend.Device ? t : Backend.ToDevice(t);

    public bool LastPositionLogitsOnly => _options.LastPositionLogitsOnly;

    /// <summary>A recorded tensor where <see cref="RunOptions.CacheOn"/> asks for it.</summary>
    Tensor Kept(Tensor t) => _options.CacheOn == CacheLocation.Host ? t.ToCpu() : t;

    /// <summary>Whether anything reads this hook point, so optional activations (e.g. hook_result) are computed only when asked for.</summary>
    public bool Wants(string name)
    {
        if (!_wants.TryGetValue(name, out bool want))
            _wants[name] = want = _options.Hooks.ContainsKey(name) || (_options.CacheFilter?.Invoke(name) ?? false)
                || (_spliceAtOutput?.ContainsKey(name) ?? false) || (_spliceAtInput?.ContainsKey(name) ?? false);
        return want;
    }

    /// <summary>
    /// Passes an activation through its hook point: user hooks first (each may replace it), then
    /// the cache records it; then a splice reading this point captures it, and a splice replacing
    /// this point (<see cref="IHookSplice"/>) computes what flows on instead. The returned tensor must
    /// not be mutated afterwards.
    /// </summary>
    public Tensor Hook(string name, int layer, Tensor activation)
    {
        if (s_debug) Debug(name, activation);
        if (ChecksFinite) ThrowIfNonFinite(name, activation, afterHooks: false);
        if (!Wants(name)) return activation;
        // Seen by a hook, a cache or a splice: it may be kept, so it is never reused.
        if (_ownScratch.Remove(activation.Storage)) _exposed.Add(activation.Storage);
        if (_options.Hooks.TryGetValue(name, out var hooks))
        {
            var context = new HookContext(name, layer, PositionOffset, GenerationStep) { Backend = Backend };
            foreach (var hook in hooks)
            {
                var replaced = hook(activation, context);
                if (replaced is null || ReferenceEquals(replaced, activation)) continue;
                if (!replaced.SameShape(activation))
                    throw new InvalidOperationException($"a hook at '{name}' returned a tensor of shape {replaced.ShapeString}; the activation there has shape {activation.ShapeString}");
                activation = OnDevice(replaced);
            }
        }
        if (_options.CacheFilter?.Invoke(name) ?? false)
        {
            if (_options.CacheSink is { } sink) sink(name, activation);
            else Cache.Set(name, Kept(activation));
        }
        if (_spliceAtInput is not null && _spliceAtInput.TryGetValue(name, out var readers))
            foreach (var reader in readers) _spliceInput[reader] = activation;
        if (_spliceAtOutput is not null && _spliceAtOutput.TryGetValue(name, out var splice))
            activation = SpliceForward(splice, name, layer, activation);
        if (ChecksFinite) ThrowIfNonFinite(name, activation, afterHooks: true);
        return activation;
    }

    void ThrowIfNonFinite(string name, Tensor activation, bool afterHooks)
    {
        // Masked attention scores are −∞ by design; NaN and +∞ are still wrong there.
        bool scores = name.EndsWith(".hook_attn_scores", StringComparison.Ordinal);
        long bad = activation.Device == Backend.Device ? Backend.IndexOfNonFinite(activation, scores)
            : NonFinite.IndexOf(activation.ToCpu().Span, allowNegativeInfinity: scores);
        if (bad >= 0)
        {
            // The diagnosing pass stops here: reading the one bad value back is the error report.
            float value = activation.ToCpu().Span[(int)bad];
            throw new NonFiniteActivationException(name, afterHooks, value, NonFinite.Unravel((int)bad, activation.Shape), activation.ShapeString);
        }
    }

    /// <summary>Runs the splice replacing hook <paramref name="name"/> (step 2 of <see cref="IHookSplice"/>'s remarks).</summary>
    Tensor SpliceForward(IHookSplice splice, string name, int layer, Tensor original)
    {
        Tensor input = original;
        if (splice.InputHook != name && !_spliceInput.Remove(splice, out input!))
            throw new InvalidOperationException($"the splice replacing '{name}' reads '{splice.InputHook}', which this forward pass did not reach before '{name}'; a transcoder's input hook must come before its output hook");
        var (output, saved) = splice.Forward(input, original, layer, this);
        output = OnDevice(output);
        if (!output.SameShape(original))
            throw new InvalidOperationException($"the splice at '{name}' returned shape {output.ShapeString}; the activation there has shape {original.ShapeString}");
        if (RecordsForBackward) _spliceSaved[splice] = saved;
        return output;
    }

    void Debug(string name, Tensor t)
    {
        long now = _clock.ElapsedTicks;
        Console.Error.WriteLine($"[loupe] {name,-40} {t.ShapeString,-22} +{(now - _lastTicks) * 1000.0 / Stopwatch.Frequency:F3} ms");
        _lastTicks = now;
    }
}

/// <summary>The first hook point where a diagnosing forward pass met a NaN or ±∞ (caught by <see cref="HookedTransformer"/>).</summary>
internal sealed class NonFiniteActivationException(string hook, bool afterHooks, float value, string index, string shape)
    : Exception($"{hook}: {NonFinite.Describe(value)} at {index} of {shape}")
{
    public string Hook { get; } = hook;
    /// <summary>True when the activation arrived finite and a hook or splice at this point made it non-finite.</summary>
    public bool AfterHooks { get; } = afterHooks;
    public float Value { get; } = value;
    public string Index { get; } = index;
    public string Shape { get; } = shape;
}
