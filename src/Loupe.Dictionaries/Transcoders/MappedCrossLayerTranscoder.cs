// A cross-layer transcoder whose decoders stay in their safetensors files (circuit-tracer's lazy_decoder).
//
// A CLT's decoders outweigh its encoders by about L/2: Σ_ℓ d_sae·(L−ℓ)·d_out against L·d_sae·d_in (a 16-layer, 32,768-
// features-per-layer CLT on a d_model 2,048 model: 36.5 GB of decoders as float32, 4.3 GB of encoders). A replacement model
// reads the decoder rows of active features only (tens to thousands of a layer's d_sae per prompt), so the decoders are
// mapped, not read: a row is read (and converted from BF16/F16/F64) when a feature is decoded, and checked the first
// time any of its rows is read — NaN, ±∞ or a corrupt magnitude there is an error naming file, tensor, feature and
// element, never a silently wrong graph.
//
//   encode:      as CrossLayerTranscoder (encoders, biases and thresholds are read and checked at load)
//   reconstruct: recon[t] = b_dec[t] + Σ_{ℓ≤t} acts[ℓ][:, F_ℓ]·W_dec[ℓ][F_ℓ, t−ℓ, :], F_ℓ the features active in any row,
//                in chunks of rows gathered from the mapping
//   fingerprint: the in-memory CrossLayerTranscoder's digest of the same weights (the decoders streamed once, checked as
//                they go), computed when first asked for and kept
using System.Security.Cryptography;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using Loupe.Tensors.Kernels;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>
/// A cross-layer transcoder whose decoders are memory-mapped and read row by row (see the file header); load one with
/// <see cref="CltFiles.LoadMapped"/>. Numbers equal the in-memory <see cref="CrossLayerTranscoder"/>'s up to the order
/// of float sums. Reads may run on several threads at once.
/// </summary>
public sealed class MappedCrossLayerTranscoder : IMlpReplacement, IDisposable
{
    // Decoder rows gathered per product in Reconstruct: 1,024 × d_out floats (8 MiB at d_out 2,048).
    readonly CrossLayerTranscoder _encoders;   // encoders, biases, thresholds; no decoders
    readonly MappedCltDecoders _decoders;
    readonly float[][]? _skip;                 // per target layer [d_in, d_out] (x·W_skip), or none
    string? _fingerprint;

    internal MappedCrossLayerTranscoder(CrossLayerTranscoder encoders, MappedCltDecoders decoders, float[][]? skip = null)
    {
        if (encoders.P.HasDecoders) throw new ArgumentException("the encoder part must not hold decoders", nameof(encoders));
        if (skip is not null && (skip.Length != encoders.Layers || skip.Any(w => w.Length != encoders.DIn * encoders.DOut)))
            throw new ArgumentException($"a skip path per layer of [d_in, d_out] = [{encoders.DIn}, {encoders.DOut}]", nameof(skip));
        (_encoders, _decoders, _skip) = (encoders, decoders, skip);
    }

    public CltShape Shape => _encoders.Shape;
    public SaeActivation Activation => _encoders.Activation;
    public string Architecture => _encoders.Architecture;
    public string InputHookPattern => _encoders.InputHookPattern;
    public string OutputHookPattern => _encoders.OutputHookPattern;

    /// <summary>Encoders, encoder and decoder biases and thresholds (<see cref="CltParameters.WDec"/> holds empty arrays).</summary>
    public CltParameters P => _encoders.P;

    /// <summary>Bytes the decoders would take as float32 in memory (they stay in their files).</summary>
    public long DecoderBytes => 4 * Shape.DecoderElements;

    /// <summary>The decoder files, in layer order (one file for Loupe's layout).</summary>
    public IReadOnlyList<string> DecoderFiles => _decoders.Files;

    // ---- IMlpReplacement ----
    public int Layers => _encoders.Layers;
    public int DIn => _encoders.DIn;
    public int DOut => _encoders.DOut;
    public int Features(int layer) => _encoders.Features(layer);
    public string InputHook(int layer) => _encoders.InputHook(layer);
    public string OutputHook(int layer) => _encoders.OutputHook(layer);
    public int LastTarget(int layer) => _encoders.LastTarget(layer);
    public bool HasSkip => _skip is not null;

    /// <summary>Where the decoders go when the transcoder runs on a device (<see cref="DeviceMlpReplacement.Upload"/>).</summary>
    public DeviceDecoders DecodersOnDevice { get; set; }
    public float[]? SkipWeights(int layer) { _encoders.CheckLayer(layer); return _skip?[layer]; }
    public string Source => _encoders.Source;

    /// <summary>The digest <see cref="CrossLayerTranscoder.Fingerprint"/> gives for the same weights; the first call reads every decoder once.</summary>
    /// <exception cref="InputError">A decoder value is NaN, ±∞ or of a corrupt magnitude (file, tensor and element named).</exception>
    public string Fingerprint => _fingerprint ??= _encoders.FingerprintWith(_decoders.AppendLayer, _skip is null ? null : sha =>
    {
        for (int l = 0; l < _skip.Length; l++)
        {
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"W_skip.{l}"));
            sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_skip[l].AsSpan()));
        }
    });

    public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts) => _encoders.Encode(layer, x, rows, pre, acts);

    public void EncoderDirection(int layer, int feature, Span<float> into) => _encoders.EncoderDirection(layer, feature, into);

    /// <exception cref="InputError">The feature's decoders hold NaN, ±∞ or a corrupt magnitude.</exception>
    public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into)
    {
        _encoders.CheckLayer(layer);
        _encoders.CheckFeature(feature);
        _encoders.CheckTarget(layer, targetLayer);
        if (into.Length < DOut) throw new ArgumentException($"into has {into.Length} floats, expected d_out = {DOut}", nameof(into));
        _decoders.ReadRow(layer, feature, targetLayer, into[..DOut]);
    }

    /// <exception cref="InputError">An active feature's decoders hold NaN, ±∞ or a corrupt magnitude.</exception>
    public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon)
    {
        _encoders.CheckLayer(targetLayer);
        ArgumentNullException.ThrowIfNull(acts);
        if (acts.Count <= targetLayer) throw new ArgumentException($"acts must hold layers 0…{targetLayer}; it has {acts.Count}", nameof(acts));
        int dOut = DOut, dSae = Shape.DSae;
        if (recon.Length < rows * dOut) throw new ArgumentException($"recon has {recon.Length} floats, expected rows·d_out = {rows * dOut}", nameof(recon));
        for (int b = 0; b < rows; b++) P.BDec[targetLayer].CopyTo(recon.Slice(b * dOut, dOut));
        // recon += Σ_{ℓ≤t} acts[ℓ][:, F_ℓ]·W_dec[ℓ][F_ℓ, t−ℓ, :] over the active features F_ℓ.
        for (int l = 0; l <= targetLayer; l++)
        {
            if (acts[l].Length < rows * dSae) throw new ArgumentException($"acts[{l}] has {acts[l].Length} floats, expected rows·d_sae = {rows * dSae}", nameof(acts));
            _decoders.AddActiveRows(l, targetLayer, acts[l], rows, recon);
        }
        if (_skip is null) return;
        // The skip path of the target layer: recon[t] += x[t]·W_skip[t].
        if (inputs is null || inputs.Count <= targetLayer || inputs[targetLayer].Length < rows * DIn)
            throw new ArgumentException($"this transcoder has a skip path: inputs[{targetLayer}] must hold rows·d_in = {rows * DIn} floats", nameof(inputs));
        Gemm.Sgemm(false, false, rows, dOut, DIn, 1f, inputs[targetLayer], DIn, _skip[targetLayer], dOut, 1f, recon, dOut);
    }

    /// <summary>
    /// Layer <paramref name="layer"/>'s decoders <c>[d_sae, L−ℓ, d_out]</c> into <paramref name="into"/>, checked
    /// (a device upload reads them once, a layer at a time).
    /// </summary>
    /// <exception cref="InputError">A value is NaN, ±∞ or of a corrupt magnitude.</exception>
    public void CopyDecoders(int layer, float[] into)
    {
        _encoders.CheckLayer(layer);
        _decoders.CopyLayer(layer, into);
    }

    /// <summary>Unmaps the decoder files; decoding afterwards throws <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose() => _decoders.Dispose();

    /// <inheritdoc />
    public override string ToString() => $"{Source} (cross-layer transcoder, {Layers} layers × {Shape.DSae} features{(HasSkip ? ", skip path" : "")}, decoders mapped: {DecoderBytes / (double)(1L << 30):0.##} GiB as float32)";
}

/// <summary>
/// The decoders of a cross-layer transcoder, one tensor per source layer ℓ, left in their safetensors files: each
/// feature's row holds its decoder slots, <c>[d_sae, slots, d_out]</c>, target t at slot <c>first + t − ℓ</c> — Loupe's and
/// circuit-tracer's layouts <c>[d_sae, L−ℓ, d_out]</c> (first 0), Gemma Scope 2's <c>[d_sae, L, d_out]</c> (first ℓ; slots
/// of earlier targets unused). A feature's used slots are checked (finite, of a sane magnitude) the first time one is read.
/// </summary>
internal sealed class MappedCltDecoders : IDisposable
{
    // Floats per read when a whole layer is streamed (the fingerprint, a device upload): about 4 MiB, whole feature rows.
    const int StreamChunk = 1 << 20;
    readonly CltShape _shape;
    readonly SafeTensorsFile[] _open;                          // each file once
    readonly Layer[] _layers;
    readonly int[] _targets;                                   // targets each source layer writes: L − ℓ, or 1 for per-layer transcoders
    readonly int[][] _checked;                                 // per layer, per feature: 1 once its rows were checked

    // Features whose rows one reconstruction step gathers.
    const int GatherChunk = 1024;

    /// <summary>Where source layer ℓ's decoders are: the tensor, its slots per feature and the slot of target ℓ.</summary>
    readonly record struct Layer(SafeTensorsFile File, SafeTensorInfo Info, int Slots, int First);

    MappedCltDecoders(CltShape shape, SafeTensorsFile[] open, Layer[] layers, bool perLayer)
    {
        (_shape, _open, _layers) = (shape, open, layers);
        _targets = [.. Enumerable.Range(0, shape.Layers).Select(l => perLayer ? 1 : shape.Targets(l))];
        _checked = [.. Enumerable.Range(0, shape.Layers).Select(_ => new int[shape.DSae])];
    }

    /// <summary>The files, in layer order, each once.</summary>
    public IReadOnlyList<string> Files => [.. _open.Select(f => f.Path)];

    /// <summary>
    /// Maps each source layer's (file, tensor), checking dtype and shape from the header: <c>[d_sae, L−ℓ, d_out]</c>, or with
    /// <paramref name="allTargets"/> (Gemma Scope 2) <c>[d_sae, L, d_out]</c>, or with <paramref name="perLayer"/> (per-layer
    /// transcoders: layer ℓ writes only layer ℓ) <c>[d_sae, d_out]</c>.
    /// </summary>
    /// <exception cref="InputError">A file or tensor is missing, or a tensor is not a float tensor of that shape.</exception>
    public static MappedCltDecoders Open(CltShape shape, IReadOnlyList<(string Path, string Tensor)> layers, bool allTargets = false, bool perLayer = false)
    {
        var open = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        try
        {
            var mapped = new Layer[layers.Count];
            for (int l = 0; l < layers.Count; l++)
            {
                var (path, tensor) = layers[l];
                if (!open.TryGetValue(path, out var file)) open[path] = file = CltFiles.Open(path);
                int slots = perLayer ? 1 : allTargets ? shape.Layers : shape.Targets(l);
                int[] expected = perLayer ? [shape.DSae, shape.DOut] : [shape.DSae, slots, shape.DOut];
                mapped[l] = new Layer(file, CltFiles.CheckShape(file, path, tensor, expected), slots, allTargets ? l : 0);
            }
            return new MappedCltDecoders(shape, [.. open.Values], mapped, perLayer);
        }
        catch
        {
            foreach (var f in open.Values) f.Dispose();
            throw;
        }
    }

    /// <summary>W_dec[ℓ][feature, target − ℓ, :] into <paramref name="into"/> (d_out floats).</summary>
    public void ReadRow(int layer, int feature, int target, Span<float> into)
    {
        EnsureChecked(layer, feature);
        var l = _layers[layer];
        l.File.ReadFloat32(l.Info, ((long)feature * l.Slots + l.First + target - layer) * _shape.DOut, into);
    }

    // Elements of a feature's used slots (targets ℓ…L−1, or ℓ alone).
    long Used(int layer) => (long)_targets[layer] * _shape.DOut;

    /// <summary>
    /// <c>recon [rows, d_out] += acts[:, F]·W_dec[ℓ → t][F, :]</c> over the features F active (nonzero) in any row of
    /// <paramref name="acts"/> <c>[rows, d_sae]</c> — only their rows are read —, GatherChunk features at a time.
    /// </summary>
    /// <exception cref="InputError">An active feature's decoders hold NaN, ±∞ or a corrupt magnitude.</exception>
    public void AddActiveRows(int layer, int target, float[] acts, int rows, Span<float> recon)
    {
        int dOut = _shape.DOut, dSae = _shape.DSae;
        var active = ActiveFeatures(acts, rows, dSae);
        if (active.Length == 0) return;
        // Scratch from the shared pool: an evaluation calls this per layer, target and batch.
        int chunk = Math.Min(GatherChunk, active.Length);
        var table = System.Buffers.ArrayPool<float>.Shared.Rent(chunk * dOut);
        var gathered = System.Buffers.ArrayPool<float>.Shared.Rent(rows * chunk);
        try
        {
            for (int start = 0; start < active.Length; start += GatherChunk)
            {
                int n = Math.Min(GatherChunk, active.Length - start);
                for (int j = 0; j < n; j++) ReadRow(layer, active[start + j], target, table.AsSpan(j * dOut, dOut));
                for (int b = 0; b < rows; b++)
                    for (int j = 0; j < n; j++) gathered[b * n + j] = acts[b * dSae + active[start + j]];
                Gemm.Sgemm(false, false, rows, dOut, n, 1f, gathered, n, table, dOut, 1f, recon, dOut);
            }
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(table);
            System.Buffers.ArrayPool<float>.Shared.Return(gathered);
        }
    }

    // The features with a nonzero activation in any of the rows, ascending.
    static int[] ActiveFeatures(float[] acts, int rows, int dSae)
    {
        var any = new bool[dSae];
        for (int b = 0; b < rows; b++)
        {
            var row = acts.AsSpan(b * dSae, dSae);
            for (int i = 0; i < dSae; i++) if (row[i] != 0) any[i] = true;
        }
        int count = 0;
        foreach (bool x in any) if (x) count++;
        var active = new int[count];
        for (int i = 0, at = 0; i < dSae; i++) if (any[i]) active[at++] = i;
        return active;
    }

    void EnsureChecked(int layer, int feature)
    {
        if (Volatile.Read(ref _checked[layer][feature]) != 0) return;
        var l = _layers[layer];
        long used = Used(layer), first = ((long)feature * l.Slots + l.First) * _shape.DOut;
        var buffer = new float[Math.Min(used, StreamChunk)];
        for (long done = 0; done < used; done += buffer.Length)
        {
            var span = buffer.AsSpan(0, (int)Math.Min(buffer.Length, used - done));
            l.File.ReadFloat32(l.Info, first + done, span);
            CltFiles.CheckValues(span, l.File.Path, l.Info.Name, first + done);
        }
        Volatile.Write(ref _checked[layer][feature], 1);
    }

    /// <summary>
    /// Appends layer <paramref name="layer"/>'s decoders, as <c>[d_sae, L−ℓ, d_out]</c> float32 bytes, to <paramref name="sha"/>,
    /// checking every used value; read with file reads, not through the mapping, so the pass leaves no decoder pages in the
    /// process's resident memory.
    /// </summary>
    public void AppendLayer(int layer, IncrementalHash sha) =>
        StreamUsed(layer, (_, used) => sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(used)));

    /// <summary>Layer <paramref name="layer"/>'s decoders <c>[d_sae, L−ℓ, d_out]</c> into <paramref name="into"/>, checking every value (file reads).</summary>
    public void CopyLayer(int layer, float[] into)
    {
        long total = _shape.DSae * Used(layer);
        if (into.Length < total) throw new ArgumentException($"into has {into.Length} floats; layer {layer}'s decoders have {total}", nameof(into));
        StreamUsed(layer, (at, used) => used.CopyTo(into.AsSpan((int)at)));
    }

    delegate void UsedChunk(long at, ReadOnlySpan<float> used);

    // Streams whole feature rows and hands over each feature's used slots, checked, with their offset in [d_sae, L−ℓ, d_out].
    void StreamUsed(int layer, UsedChunk consume)
    {
        var l = _layers[layer];
        int row = l.Slots * _shape.DOut, used = (int)Used(layer), skip = l.First * _shape.DOut;
        int rowsPerChunk = Math.Max(1, StreamChunk / row);
        l.File.StreamFloat32(l.Info, rowsPerChunk * row, (first, values) =>
        {
            long feature = first / row;
            for (int r = 0; r * row < values.Length; r++, feature++)
            {
                var slots = values.Slice(r * row + skip, used);
                CltFiles.CheckValues(slots, l.File.Path, l.Info.Name, feature * row + skip);
                consume(feature * used, slots);
            }
        });
        Array.Fill(_checked[layer], 1);
    }

    public void Dispose()
    {
        foreach (var f in _open) f.Dispose();
    }
}
