// An IMlpReplacement's weights on a backend's device, for passes that keep the replacement model there (attribution
// graphs on a GPU). Each source layer ℓ is one DeviceSaeEncoder: a per-layer transcoder as it is; a cross-layer
// transcoder's layer ℓ as a dictionary whose decoder is W_dec[ℓ] viewed as [d_sae·(L−ℓ), d_out] (row f·(L−ℓ) + t−ℓ:
// what feature f writes to layer t) and whose b_dec is zero (the CLT's b_dec[t] is added per target).
//
//   encode:      pre[ℓ] = x[ℓ]·W_enc[ℓ] + b_enc[ℓ] [rows, n];  acts[ℓ] = f(pre[ℓ])
//   reconstruct: recon[t] = b_dec[t] + Σ_{ℓ ≤ t, t ≤ last(ℓ)} acts[ℓ]·W_dec[ℓ → t]
//   directions:  W_enc[ℓ][:, f] (a strided column copy) and W_dec[ℓ → t][f, :] (a row gather), all on the device
//
// A cross-layer transcoder's decoders may instead stay on the host (DeviceDecoders.ActiveRows: in memory or mapped, for a CLT
// larger than the device). Then, per pass, each source layer's active features A_ℓ are found on the device (column sums of
// acts², n floats read back; NaN counts as active, so it still reaches the error checks) and
//   reconstruct: recon[t] = b_dec[t] + Σ_ℓ acts[ℓ][:, A_ℓ]·W_dec[ℓ → t][A_ℓ]   (columns gathered once per pass; rows of W_dec[ℓ → t]
//                read on the host — a mapped CLT reads and checks them in its files — and uploaded RowChunk features at a time)
//   directions:  W_dec[ℓ → t][f, :] read on the host and uploaded
// so only the active features' rows ever reach the device, each (feature, target) row once per pass.
using Loupe.Dictionaries.Sae;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>
/// The weights of an <see cref="IMlpReplacement"/> uploaded once to a backend (counted as weights), and the encode,
/// reconstruct and direction reads a replacement model needs, as backend ops (see the file header).
/// </summary>
public sealed class DeviceMlpReplacement
{
    readonly IComputeBackend _b;
    readonly DeviceSaeEncoder[] _layers;
    readonly int[] _slots;          // decoder slots per source layer: 1, or L − ℓ for a cross-layer transcoder
    readonly Tensor[]? _bDec;       // b_dec[t] [d_out] beside the encoders: a CLT's, or a per-layer set's with its decoders on the host
    readonly Tensor?[]? _skip;      // a skip path W_skip[t] [d_in, d_out] beside the encoders (a mapped CLT's, or a per-layer set's with its decoders on the host)
    readonly ActiveColumns?[]? _active; // decoders on the host: the last pass's active features per source layer

    // The active features of one source layer's activations, and those columns gathered [rows, k] (for the pass that made acts).
    sealed record ActiveColumns(WeakReference<Tensor> Acts, int Rows, int[] Features, Tensor? Compact);

    /// <summary>Features whose decoder rows go up in one upload when the decoders stay on the host.</summary>
    internal const int RowChunk = 2048;

    /// <summary>Share of the device's free memory a whole upload may take under <see cref="DeviceDecoders.Auto"/> (the rest is the passes' working memory).</summary>
    public const double WholeUploadShare = 0.75;

    DeviceMlpReplacement(IMlpReplacement replacement, IComputeBackend backend, DeviceSaeEncoder[] layers, int[] slots, Tensor[]? bDec, Tensor?[]? skip = null, bool hostDecoders = false)
    {
        (Replacement, _b, _layers, _slots, _bDec, _skip) = (replacement, backend, layers, slots, bDec, skip);
        if (hostDecoders) _active = new ActiveColumns?[layers.Length];
    }

    /// <summary>Whether the decoders stayed on the host (<see cref="DeviceDecoders.ActiveRows"/>).</summary>
    public bool DecodersOnHost => _active is not null;

    /// <summary>The replacement whose weights these are.</summary>
    public IMlpReplacement Replacement { get; }

    /// <summary>The backend they live on.</summary>
    public IComputeBackend Backend => _b;

    /// <summary>Features of <paramref name="layer"/>.</summary>
    public int Features(int layer) => _layers[layer].Shape.DSae;

    /// <summary>The skip path of source layer <paramref name="layer"/> <c>[d_in, d_out]</c> on the device, or null.</summary>
    public Tensor? SkipWeights(int layer) => _skip?[layer] ?? _layers[layer].SkipWeights;

    /// <summary>
    /// Uploads the weights of <paramref name="replacement"/> to <paramref name="backend"/> (once: keep the result).
    /// Per-layer transcoders (SAELens or circuit-tracer files) and cross-layer transcoders (in memory or with mapped decoders,
    /// which are read a layer at a time) are supported; a cross-layer transcoder's decoders go as <paramref name="decoders"/>
    /// says (by default its <c>DecodersOnDevice</c>; see <see cref="Resolve"/>).
    /// </summary>
    /// <exception cref="InputError">The replacement or its activation has no device kernels, or it has no decoders to leave on the host.</exception>
    public static DeviceMlpReplacement Upload(IMlpReplacement replacement, IComputeBackend backend, DeviceDecoders? decoders = null)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        ArgumentNullException.ThrowIfNull(backend);
        bool host = Resolve(replacement, backend, decoders) == DeviceDecoders.ActiveRows;
        switch (replacement)
        {
            case PerLayerTranscoders p when host:
                return PerLayerOnHost(replacement, backend, l => (p[l], p[l].P.BDec, null));
            case CircuitTracerTranscoders c when host:
                return PerLayerOnHost(replacement, backend, l => (c.Dictionaries[l], c.Dictionaries[l].P.BDec, null));
            case MappedPerLayerTranscoders m when host:
                return PerLayerOnHost(replacement, backend, m.EncoderSide);
            case PerLayerTranscoders p:
                return PerLayer(replacement, backend, [.. Enumerable.Range(0, p.Layers).Select(l => p[l])]);
            case CircuitTracerTranscoders c:
                return PerLayer(replacement, backend, c.Dictionaries);
            case MappedPerLayerTranscoders m:
                // A layer at a time through host memory (its decoders read and checked), uploaded, then released.
                return new(replacement, backend, [.. Enumerable.Range(0, m.Layers).Select(l => Encoder(backend, m.LayerInMemory(l), replacement, l))], [.. Enumerable.Range(0, m.Layers).Select(_ => 1)], null);
            case CrossLayerTranscoder clt:
                return CrossLayer(replacement, backend, clt.Shape, clt.Activation, clt.P, host ? null : (l, into) => clt.P.WDec[l].CopyTo(into, 0));
            case MappedCrossLayerTranscoder mapped:
                // A layer at a time through host memory (checked as it is read), then released.
                return CrossLayer(replacement, backend, mapped.Shape, mapped.Activation, mapped.P, host ? null : (l, into) => mapped.CopyDecoders(l, into), mapped.SkipWeights);
            default:
                throw new InputError($"argument: --device: {replacement.Source} ({replacement.GetType().Name}) has no device kernels; drop --device {backend.Device}");
        }
    }

    /// <summary>
    /// Where <see cref="Upload"/> puts <paramref name="replacement"/>'s decoders on <paramref name="backend"/>: as asked
    /// (<paramref name="requested"/>, else the transcoders' <c>DecodersOnDevice</c>), <see cref="DeviceDecoders.Auto"/>
    /// becoming <see cref="DeviceDecoders.Whole"/> when the whole upload fits in <see cref="WholeUploadShare"/> of the free
    /// memory or that is not known, <see cref="DeviceDecoders.ActiveRows"/> otherwise.
    /// </summary>
    public static DeviceDecoders Resolve(IMlpReplacement replacement, IComputeBackend backend, DeviceDecoders? requested = null)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        ArgumentNullException.ThrowIfNull(backend);
        var asked = requested ?? DecodersOnDevice(replacement) ?? DeviceDecoders.Whole;
        return asked != DeviceDecoders.Auto ? asked : Auto(replacement, backend.FreeMemoryBytes);
    }

    // The transcoders' own setting, or null for a replacement Upload does not know.
    static DeviceDecoders? DecodersOnDevice(IMlpReplacement replacement) => replacement switch
    {
        CrossLayerTranscoder clt => clt.DecodersOnDevice,
        MappedCrossLayerTranscoder mapped => mapped.DecodersOnDevice,
        PerLayerTranscoders p => p.DecodersOnDevice,
        CircuitTracerTranscoders c => c.DecodersOnDevice,
        MappedPerLayerTranscoders m => m.DecodersOnDevice,
        _ => null,
    };

    // Auto: whole when the whole upload fits in WholeUploadShare of the free memory, or that is not known.
    internal static DeviceDecoders Auto(IMlpReplacement replacement, long? freeBytes) =>
        freeBytes is long free && UploadBytes(replacement, DeviceDecoders.Whole) > WholeUploadShare * free ? DeviceDecoders.ActiveRows : DeviceDecoders.Whole;

    /// <summary>
    /// Bytes <see cref="Upload"/> puts on the device for <paramref name="replacement"/> at once (float32 encoders, decoders — a
    /// CLT's used slots only, none with <see cref="DeviceDecoders.ActiveRows"/> —, biases, thresholds and skip paths), for the
    /// estimate said before it starts; 0 for a replacement it refuses. <see cref="DeviceDecoders.Auto"/> counts as whole.
    /// </summary>
    public static long UploadBytes(IMlpReplacement replacement, DeviceDecoders decoders = DeviceDecoders.Whole)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        // W_enc, b_enc, W_dec (but with the decoders on the host), b_dec, the skip path, a threshold per feature where the activation has one.
        long Dictionary(SaeShape s, SaeActivation activation) => (long)s.DIn * s.DSae + s.DSae + (decoders == DeviceDecoders.ActiveRows ? 0 : (long)s.DSae * s.DOut)
            + s.DOut + (s.Skip ? (long)s.DIn * s.DOut : 0) + (activation is JumpReluActivation or BatchTopKActivation ? s.DSae : 0);
        // Per layer: W_enc, b_enc, b_dec, the skip path, a threshold per feature where the activation has one.
        long CrossLayer(CltShape s, SaeActivation activation, bool skip) =>
            s.Layers * ((long)s.DIn * s.DSae + s.DSae + s.DOut + (skip ? (long)s.DIn * s.DOut : 0)
                        + (activation is JumpReluActivation or BatchTopKActivation ? s.DSae : 0))
            + (decoders == DeviceDecoders.ActiveRows ? 0 : s.DecoderElements);
        return 4 * replacement switch
        {
            PerLayerTranscoders p => Enumerable.Range(0, p.Layers).Sum(l => Dictionary(p[l].Shape, p[l].Activation)),
            CircuitTracerTranscoders c => c.Dictionaries.Sum(d => Dictionary(d.Shape, d.Activation)),
            MappedPerLayerTranscoders m => Enumerable.Range(0, m.Layers).Sum(l => Dictionary(m.Shape(l), m.Activation(l))),
            CrossLayerTranscoder clt => CrossLayer(clt.Shape, clt.Activation, false),
            MappedCrossLayerTranscoder mapped => CrossLayer(mapped.Shape, mapped.Activation, mapped.HasSkip),
            _ => 0,
        };
    }

    /// <summary>
    /// Sets where <paramref name="replacement"/>'s decoders go on a device (its <c>DecodersOnDevice</c>, read by every later
    /// <see cref="Upload"/>); a replacement without device kernels keeps nothing (its upload is refused anyway).
    /// </summary>
    public static void SetDecodersOnDevice(IMlpReplacement replacement, DeviceDecoders decoders)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        switch (replacement)
        {
            case CrossLayerTranscoder clt: clt.DecodersOnDevice = decoders; break;
            case MappedCrossLayerTranscoder mapped: mapped.DecodersOnDevice = decoders; break;
            case PerLayerTranscoders p: p.DecodersOnDevice = decoders; break;
            case CircuitTracerTranscoders c: c.DecodersOnDevice = decoders; break;
            case MappedPerLayerTranscoders m: m.DecodersOnDevice = decoders; break;
        }
    }

    /// <summary>
    /// The one-line estimate said before <paramref name="replacement"/> goes to <paramref name="backend"/>: where a cross-layer
    /// transcoder's decoders go (<see cref="Resolve"/>) and what the upload takes as float32 against the free memory; null on
    /// the CPU or for a replacement without device kernels.
    /// </summary>
    /// <exception cref="InputError">What must be on the device does not fit in its free memory (the message says the sizes and the way out).</exception>
    public static string? Plan(IMlpReplacement replacement, IComputeBackend backend)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        ArgumentNullException.ThrowIfNull(backend);
        if (backend.Device.IsCpu || !Supports(replacement)) return null;
        bool chosen = (DecodersOnDevice(replacement) ?? DeviceDecoders.Whole) == DeviceDecoders.Auto;
        return Plan(replacement, backend.Device, Resolve(replacement, backend), backend.FreeMemoryBytes, chosen);
    }

    /// <summary><see cref="Plan(IMlpReplacement, IComputeBackend)"/> from the numbers (<paramref name="chosen"/>: Auto picked the mode).</summary>
    internal static string Plan(IMlpReplacement replacement, Device device, DeviceDecoders mode, long? freeBytes, bool chosen)
    {
        static string Size(long bytes) => ByteSizes.Format(bytes);
        bool onHost = mode == DeviceDecoders.ActiveRows;
        long bytes = UploadBytes(replacement, mode), decoders = UploadBytes(replacement, DeviceDecoders.Whole) - UploadBytes(replacement, DeviceDecoders.ActiveRows);
        string what = onHost ? "the transcoders' encoders" : "the transcoders' weights";
        if (freeBytes is long free && bytes > free)
            throw new InputError($"device {device}: {what} need about {Size(bytes)} as float32{(onHost ? " (their decoders staying on the host)" : "")}, and {Size(free)} are free; " +
                (!onHost
                    ? $"--device-decoders active keeps their decoders on the host (the encoders need {Size(UploadBytes(replacement, DeviceDecoders.ActiveRows))}), or --device cpu"
                    : "use a larger GPU, or --device cpu"));
        string line = $"{what} on {device}: about {Size(bytes)} as float32" + (freeBytes is long f ? $" ({Size(f)} free)" : "") + ", uploaded once";
        if (onHost)
            line += $"; their decoders ({Size(decoders)} as float32) stay {(replacement is MappedCrossLayerTranscoder or MappedPerLayerTranscoders ? "mapped" : "in host memory")}, " +
                    "each pass uploading its active features' rows" + (chosen ? $" (whole they would take more than {Math.Round(WholeUploadShare * 100).ToString(System.Globalization.CultureInfo.InvariantCulture)} % of the free memory)" : "");
        return line;
    }

    /// <summary>Whether <see cref="Upload"/> accepts <paramref name="replacement"/> (its type and every layer's activation have device kernels).</summary>
    public static bool Supports(IMlpReplacement replacement) => replacement switch
    {
        PerLayerTranscoders p => Enumerable.Range(0, p.Layers).All(l => DeviceSaeTraining.Supports(p[l].Activation)),
        CircuitTracerTranscoders c => c.Dictionaries.All(d => DeviceSaeTraining.Supports(d.Activation)),
        MappedPerLayerTranscoders m => Enumerable.Range(0, m.Layers).All(l => DeviceSaeTraining.Supports(m.Activation(l))),
        CrossLayerTranscoder clt => DeviceSaeTraining.Supports(clt.Activation),
        MappedCrossLayerTranscoder mapped => DeviceSaeTraining.Supports(mapped.Activation),
        _ => false,
    };

    // Source layer ℓ as a dictionary whose decoder rows are the (feature, target) rows of W_dec[ℓ]; p holds the encoders,
    // biases and thresholds, fillDecoder writes W_dec[ℓ] [d_sae, L−ℓ, d_out] (null: the decoders stay on the host, and the
    // dictionary is only an encoder — its one-column decoder is never uploaded).
    static DeviceMlpReplacement CrossLayer(IMlpReplacement replacement, IComputeBackend backend, CltShape s, SaeActivation activation,
        CltParameters p, Action<int, float[]>? fillDecoder, Func<int, float[]?>? skip = null)
    {
        var layers = new DeviceSaeEncoder[s.Layers];
        var slots = new int[s.Layers];
        var bDec = new Tensor[s.Layers];
        for (int l = 0; l < s.Layers; l++)
        {
            slots[l] = s.Targets(l);
            var d = new SparseDictionary(SaeShape.Transcoder(s.DIn, s.DSae, fillDecoder is null ? 1 : s.DOut * slots[l]), activation);
            p.WEnc[l].CopyTo(d.P.WEnc, 0);
            p.BEnc[l].CopyTo(d.P.BEnc, 0);
            fillDecoder?.Invoke(l, d.P.WDec);
            p.Act[l].LogThreshold.CopyTo(d.P.LogThreshold, 0);
            p.Act[l].Threshold.CopyTo(d.P.Threshold, 0);
            layers[l] = Encoder(backend, d, replacement, l, decoder: fillDecoder is not null);
            bDec[l] = backend.LoadWeight(p.BDec[l], [s.DOut]);
        }
        Tensor[]? skips = replacement.HasSkip && skip is not null
            ? [.. Enumerable.Range(0, s.Layers).Select(l => backend.LoadWeight(skip(l)!, [s.DIn, s.DOut]))] : null;
        return new DeviceMlpReplacement(replacement, backend, layers, slots, bDec, skips, hostDecoders: fillDecoder is null);
    }

    // Per-layer transcoders whose decoders stay on the host: per layer the encoder side (W_enc, b_enc, thresholds; a full
    // dictionary's skip path with it), b_dec, and a skip path given beside the encoder (a mapped set's).
    static DeviceMlpReplacement PerLayerOnHost(IMlpReplacement replacement, IComputeBackend backend, Func<int, (SparseDictionary Encoder, float[] BDec, float[]? Skip)> layer)
    {
        int L = replacement.Layers;
        var encoders = new DeviceSaeEncoder[L];
        var bDec = new Tensor[L];
        var skips = new Tensor?[L];
        for (int l = 0; l < L; l++)
        {
            var (encoder, b, skip) = layer(l);
            encoders[l] = Encoder(backend, encoder, replacement, l, decoder: false);
            bDec[l] = backend.LoadWeight(b, [replacement.DOut]);
            if (skip is not null) skips[l] = backend.LoadWeight(skip, [replacement.DIn, replacement.DOut]);
        }
        return new DeviceMlpReplacement(replacement, backend, encoders, [.. Enumerable.Repeat(1, L)], bDec, skips, hostDecoders: true);
    }

    static DeviceMlpReplacement PerLayer(IMlpReplacement replacement, IComputeBackend backend, IReadOnlyList<SparseDictionary> dictionaries) =>
        new(replacement, backend, [.. dictionaries.Select((d, l) => Encoder(backend, d, replacement, l))], [.. dictionaries.Select(_ => 1)], null);

    static DeviceSaeEncoder Encoder(IComputeBackend backend, SparseDictionary d, IMlpReplacement replacement, int layer, bool decoder = true)
    {
        if (!DeviceSaeTraining.Supports(d.Activation))
            throw new InputError($"argument: --device: layer {layer} of {replacement.Source} is a {d.Architecture} dictionary, which encodes on the CPU only (on {backend.Device}: topk, batchtopk, jumprelu, standard); drop --device {backend.Device}");
        return new DeviceSaeEncoder(backend, d, decoder);
    }

    /// <summary>pre = x·W_enc[ℓ] + b_enc[ℓ] <c>[rows, n]</c> for x <c>[rows, d_in]</c> on the device.</summary>
    public Tensor EncodePre(int layer, Tensor x, int rows) => _layers[layer].EncodePre(x, rows);

    /// <summary>acts = f(pre) <c>[rows, n]</c> into a new tensor (the dictionary's inference activation).</summary>
    public Tensor Activate(int layer, Tensor pre, int rows) => _layers[layer].Activate(pre, rows, dense: true, inPlace: false).Acts;

    /// <summary>
    /// recon[t] <c>[rows, d_out]</c> from <paramref name="acts"/>[ℓ] <c>[rows, n]</c> of every source layer that writes
    /// <paramref name="target"/> (entries of other layers are not read), plus the skip path from <paramref name="input"/>
    /// <c>[rows, d_in]</c> (layer t's input) where the transcoder has one; without an input the skip path is left out.
    /// </summary>
    public Tensor Reconstruct(int target, IReadOnlyList<Tensor> acts, int rows, Tensor? input = null)
    {
        if (_bDec is null) return _layers[target].Decode(acts[target], input ?? NoSkip(target, acts[target]), rows);
        int dOut = Replacement.DOut;
        var recon = _b.Empty(rows, dOut);
        if (_active is not null) AddActiveRows(target, acts, rows, recon);
        else
            for (int l = 0; l <= target; l++)
            {
                var enc = _layers[l];
                int n = enc.Shape.DSae, stride = _slots[l] * dOut;
                _b.Gemm(false, false, rows, dOut, n, 1f, acts[l], 0, n, enc.WDec, (long)(target - l) * dOut, stride, l == 0 ? 0f : 1f, recon, 0, dOut);
            }
        _b.AddRowVector(recon, rows, _bDec[target]);
        if (input is not null && SkipWeights(target) is { } skip)
            _b.Gemm(false, false, rows, dOut, Replacement.DIn, 1f, input, 0, Replacement.DIn, skip, 0, dOut, 1f, recon, 0, dOut);
        return recon;
    }

    // recon = Σ_{ℓ ≤ t} acts[ℓ][:, A_ℓ]·W_dec[ℓ → t][A_ℓ], the rows read on the host and uploaded RowChunk features at a time.
    void AddActiveRows(int target, IReadOnlyList<Tensor> acts, int rows, Tensor recon)
    {
        int dOut = Replacement.DOut;
        _b.Fill(recon, 0f);
        for (int l = 0; l <= target; l++)
        {
            if (Replacement.LastTarget(l) < target) continue; // layer ℓ's features do not write t (per-layer transcoders)
            var active = Active(l, acts[l], rows);
            int k = active.Features.Length;
            for (int start = 0; start < k; start += RowChunk)
            {
                int count = Math.Min(RowChunk, k - start);
                var decoderRows = HostRows(l, target, active.Features.AsSpan(start, count));
                _b.Gemm(false, false, rows, dOut, count, 1f, active.Compact!, start, k, decoderRows, 0, dOut, 1f, recon, 0, dOut);
            }
        }
    }

    // The active features of acts (a source layer's [rows, n]), found once per pass: the last pass's are kept per layer,
    // keyed by the activations tensor they came from (a pass makes new ones).
    ActiveColumns Active(int layer, Tensor acts, int rows)
    {
        var cached = Volatile.Read(ref _active![layer]);
        if (cached is not null && cached.Rows == rows && cached.Acts.TryGetTarget(out var source) && ReferenceEquals(source, acts)) return cached;
        int n = _layers[layer].Shape.DSae;
        var squares = _b.Empty(rows, n);
        _b.Multiply(acts, acts, squares);
        var sums = _b.Empty(n);
        _b.SumMiddleAxis(squares, 1, rows, n, sums);
        var host = new float[n];
        sums.CopyTo(host);
        var features = new List<int>();
        for (int f = 0; f < n; f++)
            if (host[f] != 0) features.Add(f); // NaN too: its rows are read, and the NaN reaches the error checks
        Tensor? compact = null;
        if (features.Count > 0)
        {
            compact = _b.Empty(rows, features.Count);
            _b.GatherColumns(acts, rows, n, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(features), compact);
        }
        var found = new ActiveColumns(new WeakReference<Tensor>(acts), rows, [.. features], compact);
        Volatile.Write(ref _active[layer], found);
        return found;
    }

    // W_dec[ℓ → t][features] [count, d_out], read on the host (checked there) and uploaded as weights (a new array each time: the
    // CPU backend keeps the array it is given as the tensor's storage).
    Tensor HostRows(int layer, int target, ReadOnlySpan<int> features)
    {
        int dOut = Replacement.DOut;
        var rows = new float[features.Length * dOut];
        for (int j = 0; j < features.Length; j++) Replacement.DecoderDirection(layer, features[j], target, rows.AsSpan(j * dOut, dOut));
        return _b.LoadWeight(rows, [features.Length, dOut]);
    }

    Tensor NoSkip(int layer, Tensor acts) => _layers[layer].Shape.Skip
        ? throw new ArgumentException($"layer {layer} has a skip path; pass its input", "input")
        : acts; // not read without a skip path

    /// <summary>Writes W_enc[ℓ][:, <paramref name="feature"/>] (d_in floats) into <paramref name="into"/> at <paramref name="offset"/>.</summary>
    public void EncoderDirection(int layer, int feature, Tensor into, long offset)
    {
        var enc = _layers[layer];
        _b.CopyRows(enc.WEnc, feature, enc.Shape.DSae, into, offset, 1, enc.Shape.DIn, 1);
    }

    /// <summary>
    /// Gathers the decoder rows to <paramref name="target"/> of <paramref name="features"/> of <paramref name="layer"/>
    /// into <paramref name="into"/> <c>[features, d_out]</c> (the feature indices go in as launch inputs).
    /// </summary>
    public void DecoderRows(int layer, int target, ReadOnlySpan<int> features, Tensor into)
    {
        if (target < layer || target >= layer + _slots[layer]) throw new ArgumentOutOfRangeException(nameof(target), target, $"features of layer {layer} write layers {layer}…{layer + _slots[layer] - 1}");
        if (_active is not null)
        {
            int dOut = Replacement.DOut;
            for (int start = 0; start < features.Length; start += RowChunk)
            {
                int count = Math.Min(RowChunk, features.Length - start);
                _b.CopyRows(HostRows(layer, target, features.Slice(start, count)), 0, dOut, into, (long)start * dOut, dOut, count, dOut);
            }
            return;
        }
        int slots = _slots[layer];
        var rows = new int[features.Length];
        for (int i = 0; i < rows.Length; i++) rows[i] = features[i] * slots + (target - layer);
        _b.Embedding(_layers[layer].WDec, Replacement.DOut, rows, 1f, into);
    }
}
