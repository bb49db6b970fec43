// The activations a crosscoder reads, taken from its models on the same tokens.
//
// Shape legend: B contexts per batch, T tokens each, d = the crosscoder's source width; rows = B·(T − 1).
// Each distinct model runs once per batch, caching only the hooks its sources name; every source's rows are its hook's
// [B, T, d] activation without position 0 (the BOS, which no crosscoder is trained on, as ModelRows skips it for SAEs).
// The models must read the same token ids: their vocabularies must be the same size (a base model and its fine-tune do).
// Models may run on a device. Run brings each batch's cached hooks (and, when asked, its logits) to the host once, as
// explicit counted copies; RunOnDevice, when every model is on the same device, leaves them there: the sources' rows are
// gathered into one [rows, S·d] device tensor (CopyRows, row b·T + t of a hook → row b·(T − 1) + t − 1, columns s·d…),
// the concatenation the crosscoder reads in model units (Crosscoder.InModelUnits), and the logits are copied on the device.
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>The models a crosscoder's sources name, checked against it, and their activations on a batch of contexts.</summary>
public sealed class PairedActivations
{
    /// <exception cref="InputError">A source's model is not given, a hook is not a per-position hook of its model, a width is not
    /// the crosscoder's, or the models' vocabularies differ; messages name the source.</exception>
    public PairedActivations(IReadOnlyList<CrosscoderSource> sources, int width, IReadOnlyDictionary<string, HookedTransformer> models)
    {
        ArgumentNullException.ThrowIfNull(sources);
        ArgumentNullException.ThrowIfNull(models);
        Sources = sources;
        Width = width;
        foreach (var s in sources)
        {
            if (!models.TryGetValue(s.Model, out var m))
                throw new InputError($"argument: --model: no model labelled '{s.Model}' for source {s}; give --model {s.Model}=PATH (labels given: {string.Join(", ", models.Keys)})");
            if (s.Hook.Length == 0)
                throw new InputError($"source {s.Model}: the crosscoder's files do not say which hook it reads; pass --hooks");
            if (!m.HookPointNames.Contains(s.Hook))
                throw new InputError($"source {s}: '{s.Hook}' is not a hook point of model {s.Model}; closest names: {string.Join(", ", HookNames.Closest(s.Hook, m.HookPointNames))}");
            var point = m.HookPoints.FirstOrDefault(p => p.Name == s.Hook);
            if (point is not null && point.Axes.Count != 3)
                throw new InputError($"source {s}: hook '{s.Hook}' has axes [{string.Join(", ", point.Axes)}]; a crosscoder reads per-position vectors [batch, pos, d]");
        }
        Models = sources.Select(s => s.Model).Distinct().ToDictionary(l => l, l => models[l]);
        var backends = Models.Values.Select(m => m.Backend).Distinct().ToArray();
        Backend = backends.Length == 1 && !backends[0].Device.IsCpu ? backends[0] : null;
        var vocab = Models.Select(kv => (kv.Key, V: kv.Value.Config.DVocab)).ToArray();
        if (vocab.Select(v => v.V).Distinct().Count() > 1)
            throw new InputError($"the models read different vocabularies ({string.Join(", ", vocab.Select(v => $"{v.Key}: {v.V}"))}); a crosscoder's models must read the same token ids");
    }

    /// <summary>The crosscoder's sources, in its order.</summary>
    public IReadOnlyList<CrosscoderSource> Sources { get; }

    /// <summary>d.</summary>
    public int Width { get; }

    /// <summary>Each model label the sources name, with its model.</summary>
    public IReadOnlyDictionary<string, HookedTransformer> Models { get; }

    /// <summary>The device backend every model runs on, or null (the CPU, or models on different backends).</summary>
    public IComputeBackend? Backend { get; }

    /// <summary>The first model (whose tokenizer and BOS the contexts follow).</summary>
    public HookedTransformer First => Models[Sources[0].Model];

    /// <summary>
    /// Runs every model once on <paramref name="ids"/> [B, T] and returns each source's rows [B·(T − 1), d]; with
    /// <paramref name="keepLogits"/>, each model's logits [B, T, V] (host) too.
    /// </summary>
    /// <exception cref="InputError">A hook's activation is not [B, T, d].</exception>
    public (float[][] Rows, Dictionary<string, Tensor> Logits) Run(int[] ids, int batch, int length, bool keepLogits = false)
    {
        var rows = new float[Sources.Count][];
        var logits = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (label, model) in Models)
        {
            var wanted = Sources.Where(s => s.Model == label).Select(s => s.Hook).ToHashSet(StringComparer.Ordinal);
            var result = model.Run(new TokenBatch(ids, batch, length), new RunOptions { CacheFilter = wanted.Contains, LastPositionLogitsOnly = !keepLogits });
            for (int s = 0; s < Sources.Count; s++)
                if (Sources[s].Model == label) rows[s] = RowsOf(result.Cache[Sources[s].Hook], Sources[s], batch, length);
            if (keepLogits) logits[label] = result.Logits.ToCpu().Clone();
            model.Recycle(result);
        }
        return (rows, logits);
    }

    /// <summary>
    /// Runs every model once on <paramref name="ids"/> [B, T] (all on <see cref="Backend"/>) and returns the sources' rows
    /// concatenated on the device, [B·(T − 1), S·d] in model units; with <paramref name="keepLogits"/>, each model's logits
    /// [B, T, V] on the device too. Nothing is copied to the host.
    /// </summary>
    /// <exception cref="InvalidOperationException">The models are not all on one device.</exception>
    /// <exception cref="InputError">A hook's activation is not [B, T, d].</exception>
    public (Tensor Rows, Dictionary<string, Tensor> Logits) RunOnDevice(int[] ids, int batch, int length, bool keepLogits = false)
    {
        var backend = Backend ?? throw new InvalidOperationException("the crosscoder's models are not all on one device");
        int n = Sources.Count, d = Width, per = length - 1;
        var rows = backend.Empty(batch * per, n * d);
        var logits = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (label, model) in Models)
        {
            var wanted = Sources.Where(s => s.Model == label).Select(s => s.Hook).ToHashSet(StringComparer.Ordinal);
            var result = model.Run(new TokenBatch(ids, batch, length), new RunOptions { CacheFilter = wanted.Contains, LastPositionLogitsOnly = !keepLogits });
            for (int s = 0; s < n; s++)
            {
                if (Sources[s].Model != label) continue;
                var t = result.Cache[Sources[s].Hook];
                CheckShape(t, Sources[s], batch, length);
                for (int b = 0; b < batch; b++)
                    backend.CopyRows(t, (long)(b * length + 1) * d, d, rows, (long)b * per * n * d + (long)s * d, n * d, per, d);
            }
            if (keepLogits) logits[label] = result.Logits.Clone();
            model.Recycle(result);
        }
        return (rows, logits);
    }

    void CheckShape(Tensor t, CrosscoderSource source, int batch, int length)
    {
        if (t.Rank != 3 || t.Dim(0) != batch || t.Dim(1) != length || t.Dim(2) != Width)
            throw new InputError($"source {source}: the hook's activation is {t.ShapeString}; the crosscoder reads [batch, pos, {Width}]");
    }

    float[] RowsOf(Tensor t, CrosscoderSource source, int batch, int length)
    {
        CheckShape(t, source, batch, length);
        var host = t.ToCpu().Span;
        int per = length - 1;
        var rows = new float[(long)batch * per * Width];
        for (int b = 0; b < batch; b++) host.Slice((b * length + 1) * Width, per * Width).CopyTo(rows.AsSpan(b * per * Width));
        return rows;
    }

    /// <summary>
    /// The factor per source that makes its mean activation norm √d (the normalisation Kissane's replication and SAELens's
    /// expected_average_only_in apply before training): √d / mean‖x‖ over <paramref name="rows"/>.
    /// </summary>
    public static float[] NormScales(IReadOnlyList<float[]> rows, int width)
    {
        var scales = new float[rows.Count];
        for (int s = 0; s < rows.Count; s++)
        {
            int n = rows[s].Length / width;
            double sum = 0;
            for (int r = 0; r < n; r++) sum += System.Numerics.Tensors.TensorPrimitives.Norm(rows[s].AsSpan(r * width, width));
            scales[s] = n > 0 && sum > 0 ? (float)(Math.Sqrt(width) / (sum / n)) : 1f;
        }
        return scales;
    }
}
