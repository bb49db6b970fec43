// A crosscoder's training rows read from its models on the fly (no activations held beyond one window): window w runs
// contexts [w·C, (w + 1)·C) through every model (PairedActivations, position 0 left out) and each row is the scaled
// concatenation [c_1·x_1 | … | c_S·x_S]. Every epoch runs the models again; the same contexts in the same windows give
// the same rows, so a run over one window holding every context trains exactly as the rows held in memory do.
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>Rows of a crosscoder's sources, computed window by window (see the file header).</summary>
public sealed class PairedRows : IRowWindows
{
    readonly PairedActivations _paired;
    readonly HarvestContexts _contexts;
    readonly float[] _scales;
    readonly int _contextsPerWindow, _batchSize;
    readonly bool _keep;
    (int Window, float[] Rows)? _kept;

    /// <param name="paired">The models and sources.</param>
    /// <param name="contexts">The contexts, cut into windows of <paramref name="contextsPerWindow"/>.</param>
    /// <param name="inputScales">c_s per source.</param>
    /// <param name="contextsPerWindow">Contexts per shuffling window.</param>
    /// <param name="batchSize">Contexts per forward pass.</param>
    /// <param name="keepLastWindow">Keep the last window's rows and answer it again without running the models (with one window
    /// of every context: the rows held in memory, computed once).</param>
    /// <exception cref="InputError">Contexts of fewer than 2 tokens, or not one positive scale per source.</exception>
    public PairedRows(PairedActivations paired, HarvestContexts contexts, float[] inputScales, int contextsPerWindow = 64, int batchSize = 8, bool keepLastWindow = false)
    {
        _paired = paired ?? throw new ArgumentNullException(nameof(paired));
        _contexts = contexts ?? throw new ArgumentNullException(nameof(contexts));
        ArgumentNullException.ThrowIfNull(inputScales);
        if (contexts.ContextSize < 2) throw new InputError("argument: --context-size: a crosscoder trains on contexts of at least 2 tokens (position 0 is left out)");
        if (inputScales.Length != paired.Sources.Count || inputScales.Any(c => !(c > 0) || !float.IsFinite(c)))
            throw new InputError($"need {paired.Sources.Count} positive input scales, got [{string.Join(", ", inputScales)}]");
        if (contextsPerWindow < 1) throw InputError.Expected("argument", "--contexts-per-window", "at least 1", contextsPerWindow);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        long rows = (long)Math.Min(contextsPerWindow, contexts.Count) * (contexts.ContextSize - 1);
        if (rows * paired.Sources.Count * paired.Width > Array.MaxLength)
            throw new InputError($"a window of {contextsPerWindow} contexts × {contexts.ContextSize - 1} positions × {paired.Sources.Count} sources × d {paired.Width} does not fit one array; lower --contexts-per-window");
        (_scales, _contextsPerWindow, _batchSize, _keep) = ((float[])inputScales.Clone(), contextsPerWindow, batchSize, keepLastWindow);
    }

    public int DIn => _paired.Sources.Count * _paired.Width;
    public int DOut => DIn;
    public bool HasTargets => false;
    public int WindowCount => _contexts.Count == 0 ? 0 : 1 + (_contexts.Count - 1) / _contextsPerWindow;
    public string Description =>
        $"crosscoder rows of {string.Join(", ", _paired.Models.Select(kv => $"{kv.Key}={HarvestManifest.Fingerprint(kv.Value)}"))} at " +
        $"{string.Join(", ", _paired.Sources)} on {_contexts.SourceDescription} ({_contexts.Sha256()}), scales {string.Join(",", _scales.Select(c => c.ToString("R", System.Globalization.CultureInfo.InvariantCulture)))}, {_contextsPerWindow} contexts/window";

    /// <summary>The window's rows [contexts·(T − 1), S·d], scaled.</summary>
    public (float[] Inputs, float[]? Targets) Load(int epoch, int window)
    {
        if (_kept is { } kept && kept.Window == window) return (kept.Rows, null); // WindowedBatches reads windows, never writes them
        int first = window * _contextsPerWindow, count = Math.Min(_contextsPerWindow, _contexts.Count - first);
        int T = _contexts.ContextSize, n = _paired.Sources.Count, d = _paired.Width, per = T - 1;
        var rows = new float[(long)count * per * n * d];
        for (int c0 = 0; c0 < count; c0 += _batchSize)
        {
            int b = Math.Min(_batchSize, count - c0);
            var ids = _contexts.Ids(first + c0, b);
            var (x, _) = _paired.Run(ids, b, T);
            for (int r = 0; r < b * per; r++)
                for (int s = 0; s < n; s++)
                    System.Numerics.Tensors.TensorPrimitives.Multiply(x[s].AsSpan(r * d, d), _scales[s], rows.AsSpan((int)(((long)(c0 * per + r) * n + s) * d), d));
        }
        if (_keep) _kept = (window, rows);
        return (rows, null);
    }
}
