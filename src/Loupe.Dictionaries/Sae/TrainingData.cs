// Where training rows come from, and how they become shuffled batches that can resume exactly.
//
// A source is a sequence of windows (a few shards of a harvest, a few contexts run through the
// model, or all rows held in memory). Batches are drawn like this:
//   1. load window w of epoch e and append the rows carried over from the previous window;
//   2. shuffle those rows with a Random seeded by (seed, e, w);
//   3. yield full batches; the remainder (< one batch) is carried into the next window;
//   4. after the last window, start epoch e + 1 (a new shuffle of the same windows).
// The cursor (epoch, window, batches taken in the window, rows carried into the window) is all the
// state there is, so a checkpoint stores it and a resumed run rebuilds the same window and skips
// the batches already taken: bit-exact, without storing the mixing buffer.
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Sae;

/// <summary>Rows of inputs (and targets, for a transcoder) delivered window by window.</summary>
public interface IRowWindows
{
    /// <summary>Width of an input row.</summary>
    int DIn { get; }
    /// <summary>Width of a target row (= DIn for an SAE).</summary>
    int DOut { get; }
    /// <summary>Whether targets differ from inputs (a transcoder's MLP output).</summary>
    bool HasTargets { get; }
    /// <summary>Windows per epoch.</summary>
    int WindowCount { get; }
    /// <summary>Rows of window <paramref name="window"/> in epoch <paramref name="epoch"/>: inputs [rows, d_in], targets [rows, d_out] or null.</summary>
    (float[] Inputs, float[]? Targets) Load(int epoch, int window);
    /// <summary>Identifies the data (for checkpoints: a resumed run must read the same rows).</summary>
    string Description { get; }
}

/// <summary>Rows held in memory: one window, every epoch.</summary>
public sealed class InMemoryRows : IRowWindows
{
    readonly float[] _inputs;
    readonly float[]? _targets;

    /// <exception cref="ArgumentException">The arrays do not hold whole rows, or row counts differ.</exception>
    public InMemoryRows(float[] inputs, int dIn, float[]? targets = null, int? dOut = null)
    {
        if (dIn <= 0 || inputs.Length == 0 || inputs.Length % dIn != 0)
            throw new ArgumentException($"inputs length {inputs.Length} is not a positive multiple of d_in = {dIn}", nameof(inputs));
        int rows = inputs.Length / dIn;
        DOut = dOut ?? dIn;
        if (targets is not null && targets.Length != rows * DOut)
            throw new ArgumentException($"targets length {targets.Length} != rows·d_out = {rows * DOut}", nameof(targets));
        (_inputs, _targets, DIn) = (inputs, targets, dIn);
    }

    public int DIn { get; }
    public int DOut { get; }
    public bool HasTargets => _targets is not null;
    public int WindowCount => 1;
    public (float[] Inputs, float[]? Targets) Load(int epoch, int window) => (_inputs, _targets);
    public string Description => $"in-memory {_inputs.Length / DIn} rows";
}

/// <summary>Rows from a harvest folder: each epoch visits the shards in a seeded order, a few shards per window.</summary>
public sealed class StoreRows : IRowWindows
{
    readonly ActivationStore _store;
    readonly string _inputHook;
    readonly string? _targetHook;
    readonly int _shardsPerWindow, _seed;

    /// <exception cref="InputError">A hook was not harvested in the store (the message names its option and lists those that were).</exception>
    public StoreRows(ActivationStore store, string inputHook, string? targetHook = null, int shardsPerWindow = 4, int seed = 0)
    {
        _store = store ?? throw new ArgumentNullException(nameof(store));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(shardsPerWindow);
        foreach (var (h, option) in new[] { (inputHook, "--hook"), (targetHook, "--target-hook") })
            if (h is not null && !store.Hooks.Contains(h))
            {
                if (store.Manifest.Hooks.Contains(h)) store.D(h); // harvested by an older Loupe with another meaning: says so
                throw new InputError($"argument: {option}: '{h}' was not harvested in {store.Folder}; it holds {string.Join(", ", store.Hooks)}");
            }
        (_inputHook, _targetHook, _shardsPerWindow, _seed) = (inputHook, targetHook, shardsPerWindow, seed);
        DIn = store.D(inputHook);
        DOut = targetHook is null ? DIn : store.D(targetHook);
    }

    public int DIn { get; }
    public int DOut { get; }
    public bool HasTargets => _targetHook is not null;
    public int WindowCount => (_store.Manifest.Shards.Count + _shardsPerWindow - 1) / _shardsPerWindow;
    public string Description => $"harvest {Path.GetFullPath(_store.Folder)} ({_store.Manifest.ContextsSha256}) {_inputHook}{(_targetHook is null ? "" : " → " + _targetHook)}, {_shardsPerWindow} shards/window";

    public (float[] Inputs, float[]? Targets) Load(int epoch, int window)
    {
        var order = Enumerable.Range(0, _store.Manifest.Shards.Count).ToArray();
        new Random(WindowedBatches.Mix(_seed, epoch, -1)).Shuffle(order);
        var shards = order.Skip(window * _shardsPerWindow).Take(_shardsPerWindow).ToArray();
        return (Concat(shards.Select(s => _store.ReadShard(s, _inputHook))),
            _targetHook is null ? null : Concat(shards.Select(s => _store.ReadShard(s, _targetHook))));
    }

    static float[] Concat(IEnumerable<float[]> parts)
    {
        var list = parts.ToList();
        var all = new float[list.Sum(p => (long)p.Length)];
        long at = 0;
        foreach (var p in list) { p.CopyTo(all, at); at += p.Length; }
        return all;
    }
}

/// <summary>
/// Rows read from the model on the fly (no disk): each window runs a fixed slice of the contexts
/// through the model, caching only the input (and target) hook; the BOS position is skipped. A model on a device runs
/// there; each batch's cached hooks come to the host once (the window is shuffled there, as a harvest's shards are).
/// </summary>
public sealed class ModelRows : IRowWindows
{
    readonly HookedTransformer _model;
    readonly HarvestContexts _contexts;
    readonly string _inputHook;
    readonly string? _targetHook;
    readonly int _contextsPerWindow, _batchSize;
    readonly bool _skipBos;

    /// <exception cref="ArgumentException">A hook does not exist in the model, or is not a per-position activation.</exception>
    public ModelRows(HookedTransformer model, HarvestContexts contexts, string inputHook, string? targetHook = null,
        int contextsPerWindow = 64, int batchSize = 8, bool skipBos = true)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _contexts = contexts ?? throw new ArgumentNullException(nameof(contexts));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(contextsPerWindow);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        foreach (var (h, option) in new[] { (inputHook, "--hook"), (targetHook, "--target-hook") })
            if (h is not null && !model.HookPointNames.Contains(h))
                throw new InputError($"argument: {option}: '{h}' is not a hook point of this model; closest names: {string.Join(", ", HookNames.Closest(h, model.HookPointNames))}");
        if (skipBos && contexts.ContextSize < 2) throw new InputError("argument: --context-size: skipping BOS leaves nothing of a one-token context");
        (_inputHook, _targetHook, _contextsPerWindow, _batchSize, _skipBos) = (inputHook, targetHook, contextsPerWindow, batchSize, skipBos);
        var probe = Run(0, 1);
        DIn = probe.Inputs.Length / RowsPerContext;
        DOut = probe.Targets is null ? DIn : probe.Targets.Length / RowsPerContext;
    }

    int RowsPerContext => _skipBos ? _contexts.ContextSize - 1 : _contexts.ContextSize;
    public int DIn { get; }
    public int DOut { get; }
    public bool HasTargets => _targetHook is not null;
    // Rounded up without Count + per-window − 1, which overflows for a window of int.MaxValue contexts.
    public int WindowCount => _contexts.Count == 0 ? 0 : 1 + (_contexts.Count - 1) / _contextsPerWindow;
    public string Description => $"model {HarvestManifest.Fingerprint(_model)} on {_contexts.SourceDescription} ({_contexts.Sha256()}) {_inputHook}{(_targetHook is null ? "" : " → " + _targetHook)}, {_contextsPerWindow} contexts/window";

    public (float[] Inputs, float[]? Targets) Load(int epoch, int window)
    {
        int first = window * _contextsPerWindow;
        return Run(first, Math.Min(_contextsPerWindow, _contexts.Count - first));
    }

    (float[] Inputs, float[]? Targets) Run(int first, int count)
    {
        int n = _contexts.ContextSize, rowsPer = RowsPerContext, skip = _skipBos ? 1 : 0;
        float[]? inputs = null, targets = null;
        var wanted = new HashSet<string>(StringComparer.Ordinal) { _inputHook };
        if (_targetHook is not null) wanted.Add(_targetHook);
        for (int c0 = 0; c0 < count; c0 += _batchSize)
        {
            int b = Math.Min(_batchSize, count - c0);
            var ids = _contexts.Ids(first + c0, b);
            var result = _model.Run(new TokenBatch(ids, b, n), new RunOptions { CacheFilter = wanted.Contains, LastPositionLogitsOnly = true });
            Copy(result.Cache[_inputHook], _inputHook, ref inputs);
            if (_targetHook is not null) Copy(result.Cache[_targetHook], _targetHook, ref targets);

            void Copy(Loupe.Tensors.Tensor t, string hook, ref float[]? into)
            {
                if (t.Rank < 2 || t.Dim(0) != b || t.Dim(1) != n)
                    throw new InputError($"hook '{hook}' has shape {t.ShapeString}; only per-position activations [batch, pos, ...] can be trained on");
                int d = t.Length / (b * n);
                into ??= new float[(long)count * rowsPer * d > Array.MaxLength ? throw new InputError($"a window of {count} contexts × d = {d} is too large; lower --contexts-per-window") : count * rowsPer * d];
                var span = t.ToCpu().Span; // [batch, pos, d]; from a device model, the window's one explicit (counted) copy out
                for (int i = 0; i < b; i++)
                    span.Slice((i * n + skip) * d, rowsPer * d).CopyTo(into.AsSpan((c0 + i) * rowsPer * d));
            }
        }
        return (inputs!, targets);
    }
}

/// <summary>Where <see cref="WindowedBatches"/> stands: everything needed to continue the same sequence.</summary>
public sealed record BatchCursor(int Epoch, int Window, int BatchesTaken, float[] CarryInputs, float[]? CarryTargets);

/// <summary>Seeded, resumable shuffled batches over an <see cref="IRowWindows"/> (see the file header).</summary>
public sealed class WindowedBatches
{
    readonly IRowWindows _source;
    readonly int _batch, _seed;
    BatchCursor _cursor;
    float[]? _inputs, _targets; // the current window's rows (+ carry), [rows, d]
    int[] _perm = [];

    public WindowedBatches(IRowWindows source, int batchSize, int seed, BatchCursor? resumeAt = null)
    {
        _source = source ?? throw new ArgumentNullException(nameof(source));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        if (source.WindowCount <= 0) throw new ArgumentException("the training data has no rows", nameof(source));
        (_batch, _seed) = (batchSize, seed);
        _cursor = resumeAt ?? new BatchCursor(0, 0, 0, [], source.HasTargets ? [] : null);
    }

    /// <summary>The position to store in a checkpoint.</summary>
    public BatchCursor Cursor => _cursor;

    /// <summary>Mixes seed, epoch and window into one 31-bit seed (SplitMix64 finaliser).</summary>
    public static int Mix(int seed, int epoch, int window)
    {
        ulong z = (ulong)(uint)seed * 0x9E3779B97F4A7C15UL ^ (ulong)(uint)epoch * 0xBF58476D1CE4E5B9UL ^ (ulong)(uint)window * 0x94D049BB133111EBUL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return (int)((z ^ (z >> 31)) & 0x7FFFFFFF);
    }

    /// <summary>Fills the next batch: x [batch, d_in], y [batch, d_out] (y = x rows when the source has no targets).</summary>
    /// <exception cref="InputError">A row holds NaN or ±∞ (the message names the window).</exception>
    public void Next(Span<float> x, Span<float> y)
    {
        int dIn = _source.DIn, dOut = _source.DOut;
        while (true)
        {
            if (_inputs is null) LoadWindow();
            int rows = _inputs!.Length / dIn;
            int start = _cursor.BatchesTaken * _batch;
            if (start + _batch <= rows)
            {
                for (int i = 0; i < _batch; i++)
                {
                    int r = _perm[start + i];
                    _inputs.AsSpan(r * dIn, dIn).CopyTo(x.Slice(i * dIn, dIn));
                    (_targets ?? _inputs).AsSpan(r * dOut, dOut).CopyTo(y.Slice(i * dOut, dOut));
                }
                _cursor = _cursor with { BatchesTaken = _cursor.BatchesTaken + 1 };
                return;
            }
            // carry the remainder into the next window
            var carryIn = Gather(_inputs, _perm.AsSpan(start), dIn);
            var carryOut = _targets is null ? null : Gather(_targets, _perm.AsSpan(start), dOut);
            int window = _cursor.Window + 1, epoch = _cursor.Epoch;
            if (window == _source.WindowCount) { window = 0; epoch++; }
            _cursor = new BatchCursor(epoch, window, 0, carryIn, carryOut);
            _inputs = null;
        }
    }

    void LoadWindow()
    {
        var (inputs, targets) = _source.Load(_cursor.Epoch, _cursor.Window);
        int dIn = _source.DIn, dOut = _source.DOut;
        if (inputs.Length % dIn != 0 || (targets is not null && targets.Length / dOut != inputs.Length / dIn))
            throw new InputError($"window {_cursor.Window} of {_source.Description}: inputs and targets do not hold the same number of whole rows");
        for (int i = 0; i < inputs.Length; i++)
            if (!float.IsFinite(inputs[i])) throw new InputError($"window {_cursor.Window} of {_source.Description}: input row {i / dIn} column {i % dIn} is {inputs[i]}");
        if (targets is not null)
            for (int i = 0; i < targets.Length; i++)
                if (!float.IsFinite(targets[i])) throw new InputError($"window {_cursor.Window} of {_source.Description}: target row {i / dOut} column {i % dOut} is {targets[i]}");
        _inputs = Prepend(_cursor.CarryInputs, inputs);
        _targets = targets is null ? null : Prepend(_cursor.CarryTargets ?? [], targets);
        _perm = Enumerable.Range(0, _inputs.Length / dIn).ToArray();
        new Random(Mix(_seed, _cursor.Epoch, _cursor.Window)).Shuffle(_perm);
    }

    static float[] Prepend(float[] carry, float[] rows)
    {
        if (carry.Length == 0) return rows;
        var all = new float[carry.Length + rows.Length];
        carry.CopyTo(all, 0);
        rows.CopyTo(all, carry.Length);
        return all;
    }

    static float[] Gather(float[] rows, ReadOnlySpan<int> which, int d)
    {
        var result = new float[which.Length * d];
        for (int i = 0; i < which.Length; i++) rows.AsSpan(which[i] * d, d).CopyTo(result.AsSpan(i * d));
        return result;
    }
}
