// Paired all-layer harvest for cross-layer transcoders: one forward pass caches every layer's MLP input and
// MLP output at the same tokens, and each token becomes one row holding all layers side by side:
//   input row  [x[0] | x[1] | … | x[L−1]]   (L·d_in floats;  x[ℓ] = the replacement's InputHook(ℓ))
//   target row [y[0] | y[1] | … | y[L−1]]   (L·d_out floats; y[t] = its OutputHook(t))
// Rows of this shape plug into WindowedBatches, so shuffling, windows and resume are those of SAE training.
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>
/// Rows of every layer's MLP input and output at the same tokens, read from the model on the fly (see the file
/// header); the BOS position is skipped as in <see cref="ModelRows"/>.
/// </summary>
public sealed class LayerPairRows : IRowWindows
{
    readonly HookedTransformer _model;
    readonly HarvestContexts _contexts;
    readonly string[] _inputs, _outputs;
    readonly int _contextsPerWindow, _batchSize;
    readonly bool _skipBos;

    /// <param name="model">The model.</param>
    /// <param name="contexts">Token contexts.</param>
    /// <param name="inputHooks">Per layer, the hook features read (e.g. <c>blocks.ℓ.ln2.hook_normalized</c>).</param>
    /// <param name="outputHooks">Per layer, the MLP output (e.g. <c>blocks.ℓ.hook_mlp_out</c>).</param>
    /// <param name="contextsPerWindow">Contexts per window (one window is held in memory at a time).</param>
    /// <param name="batchSize">Contexts per forward pass.</param>
    /// <param name="skipBos">Leave out position 0.</param>
    /// <exception cref="InputError">A hook is not in the model (closest names listed); the hook lists differ in length; widths differ across layers.</exception>
    public LayerPairRows(HookedTransformer model, HarvestContexts contexts, IReadOnlyList<string> inputHooks, IReadOnlyList<string> outputHooks,
        int contextsPerWindow = 64, int batchSize = 8, bool skipBos = true)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _contexts = contexts ?? throw new ArgumentNullException(nameof(contexts));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(contextsPerWindow);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        if (inputHooks.Count != outputHooks.Count || inputHooks.Count == 0)
            throw InputError.Expected("argument", "hooks", "one input and one output hook per layer", $"{inputHooks.Count} inputs, {outputHooks.Count} outputs");
        foreach (var h in inputHooks.Concat(outputHooks))
            if (!model.HookPointNames.Contains(h))
                throw new InputError($"argument: hook '{h}' is not a hook point of this model; closest names: {string.Join(", ", HookNames.Closest(h, model.HookPointNames))}");
        if (skipBos && contexts.ContextSize < 2) throw new InputError("argument: --context-size: skipping BOS leaves nothing of a one-token context");
        (_inputs, _outputs) = (inputHooks.ToArray(), outputHooks.ToArray());
        (_contextsPerWindow, _batchSize, _skipBos) = (contextsPerWindow, batchSize, skipBos);
        var probe = _model.Run(new TokenBatch(_contexts.Contexts[0].ToArray(), 1, contexts.ContextSize),
            new RunOptions { CacheFilter = h => h == _inputs[0] || h == _outputs[0], LastPositionLogitsOnly = true });
        LayerDIn = probe.Cache[_inputs[0]].Dim(-1);
        LayerDOut = probe.Cache[_outputs[0]].Dim(-1);
        DIn = LayerDIn * _inputs.Length;
        DOut = LayerDOut * _outputs.Length;
    }

    /// <summary>For the hooks of an <see cref="IMlpReplacement"/> (its InputHook and OutputHook of every layer).</summary>
    public static LayerPairRows For(HookedTransformer model, HarvestContexts contexts, IMlpReplacement replacement, int contextsPerWindow = 64, int batchSize = 8)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        return new LayerPairRows(model, contexts,
            Enumerable.Range(0, replacement.Layers).Select(replacement.InputHook).ToArray(),
            Enumerable.Range(0, replacement.Layers).Select(replacement.OutputHook).ToArray(), contextsPerWindow, batchSize);
    }

    public int Layers => _inputs.Length;
    public int LayerDIn { get; }
    public int LayerDOut { get; }
    int RowsPerContext => _skipBos ? _contexts.ContextSize - 1 : _contexts.ContextSize;
    public int DIn { get; }
    public int DOut { get; }
    public bool HasTargets => true;
    // Rounded up without Count + per-window − 1, which overflows for a window of int.MaxValue contexts.
    public int WindowCount => _contexts.Count == 0 ? 0 : 1 + (_contexts.Count - 1) / _contextsPerWindow;
    public string Description =>
        $"model {HarvestManifest.Fingerprint(_model)} on {_contexts.SourceDescription} ({_contexts.Sha256()}) {_inputs[0]}…{_inputs[^1]} → {_outputs[0]}…{_outputs[^1]}, {_contextsPerWindow} contexts/window";

    public (float[] Inputs, float[]? Targets) Load(int epoch, int window)
    {
        int first = window * _contextsPerWindow, count = Math.Min(_contextsPerWindow, _contexts.Count - first);
        int n = _contexts.ContextSize, rowsPer = RowsPerContext, skip = _skipBos ? 1 : 0;
        long rows = (long)count * rowsPer;
        if (rows * Math.Max(DIn, DOut) > Array.MaxLength) throw new InputError($"a window of {count} contexts × {Math.Max(DIn, DOut)} floats per row is too large; lower --contexts-per-window");
        var inputs = new float[rows * DIn];
        var targets = new float[rows * DOut];
        var wanted = new HashSet<string>(_inputs.Concat(_outputs), StringComparer.Ordinal);
        for (int c0 = 0; c0 < count; c0 += _batchSize)
        {
            int b = Math.Min(_batchSize, count - c0);
            var ids = _contexts.Ids(first + c0, b);
            var result = _model.Run(new TokenBatch(ids, b, n), new RunOptions { CacheFilter = wanted.Contains, LastPositionLogitsOnly = true });
            for (int l = 0; l < Layers; l++)
            {
                Scatter(result.Cache[_inputs[l]], _inputs[l], LayerDIn, l, DIn, inputs);
                Scatter(result.Cache[_outputs[l]], _outputs[l], LayerDOut, l, DOut, targets);
            }
            _model.Recycle(result); // copied out: the next batch's pass reuses this one's cached storage

            // [batch, pos, d] of one layer → slot ℓ of each row
            void Scatter(Tensor t, string hook, int d, int layer, int rowWidth, float[] into)
            {
                if (t.Length != b * n * d) throw new InputError($"hook '{hook}' has shape {t.ShapeString}; expected [{b}, {n}, {d}]: every layer must have the same width");
                var span = t.ToCpu().Span;
                for (int i = 0; i < b; i++)
                    for (int p = 0; p < rowsPer; p++)
                    {
                        long row = (long)(c0 + i) * rowsPer + p;
                        span.Slice(((i * n) + p + skip) * d, d).CopyTo(into.AsSpan((int)(row * rowWidth + layer * d), d));
                    }
            }
        }
        return (inputs, targets);
    }
}
