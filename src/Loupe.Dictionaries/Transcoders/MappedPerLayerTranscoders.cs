// circuit-tracer's per-layer transcoders (layer_ℓ.safetensors, or a config.yaml listing such files) with their decoders
// left in the files — circuit-tracer's lazy_decoder for a TranscoderSet. A per-layer set's decoders are half its weights
// (W_enc [d_in, d_sae] and W_dec [d_sae, d_out] per layer): circuit-tracer's Qwen3 and Llama 3.2 sets hold tens of GB.
//
//   at load:     W_enc, b_enc, b_dec, the JumpReLU thresholds / TopK k and W_skip read and checked, as CircuitTracerTranscoders
//   W_dec[ℓ]:    [d_sae, d_out] mapped; a feature's row read (converted from BF16/F16/F64) when it is decoded, and checked
//                (NaN, ±∞, a corrupt magnitude → an error naming file, tensor and element) the first time
//   reconstruct: b_dec + acts[:, F]·W_dec[F] over the active features F (their rows gathered) + x·W_skip
// The function and the fingerprint are CircuitTracerTranscoders' of the same files.
using System.Security.Cryptography;
using Loupe.Dictionaries.Sae;
using Loupe.Tensors.Kernels;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>Per-layer transcoders whose decoders stay memory-mapped in their files (see the file header).</summary>
public sealed class MappedPerLayerTranscoders : IMlpReplacement, IDisposable
{
    readonly SparseDictionary[] _encoders;   // per layer, the encoder side: a dictionary of d_out 1 whose decoder is never read
    readonly SaeShape[] _shapes;             // the real shapes (d_out, skip)
    readonly float[][] _bDec;                // [d_out]
    readonly float[]?[] _skip;               // [d_in, d_out], or null
    readonly MappedCltDecoders _decoders;
    string? _fingerprint;

    internal MappedPerLayerTranscoders(IReadOnlyList<(SparseDictionary Encoder, SaeShape Shape, float[] BDec, float[]? Skip)> layers,
        IReadOnlyList<string> files, string inputHookPattern, string outputHookPattern, string source)
    {
        if (layers.Count == 0) throw new ArgumentException("at least one layer", nameof(layers));
        var first = layers[0].Shape;
        for (int l = 1; l < layers.Count; l++)
            if (layers[l].Shape.DIn != first.DIn || layers[l].Shape.DOut != first.DOut || layers[l].Shape.DSae != first.DSae)
                throw InputError.Expected(files[l], "d_in → d_sae → d_out", $"{first.DIn} → {first.DSae} → {first.DOut} like layer 0 (mapped decoders need one width)",
                    $"{layers[l].Shape.DIn} → {layers[l].Shape.DSae} → {layers[l].Shape.DOut}");
        _encoders = [.. layers.Select(x => x.Encoder)];
        _shapes = [.. layers.Select(x => x.Shape)];
        _bDec = [.. layers.Select(x => x.BDec)];
        _skip = [.. layers.Select(x => x.Skip)];
        _decoders = MappedCltDecoders.Open(new CltShape(layers.Count, first.DIn, first.DSae, first.DOut), [.. files.Select(f => (f, "W_dec"))], perLayer: true);
        InputHookPattern = inputHookPattern;
        OutputHookPattern = outputHookPattern;
        Source = source;
    }

    /// <summary>The entries of the config.yaml list these came from (local paths or hf:// URIs, in layer order), or null.</summary>
    public IReadOnlyList<string>? Listed { get; internal init; }

    /// <summary>Layer ℓ's shape (what an in-memory load would hold).</summary>
    public SaeShape Shape(int layer) => _shapes[layer];

    /// <summary>Layer ℓ's architecture (relu, jumprelu, topk, …).</summary>
    public string Architecture(int layer) => _encoders[layer].Architecture;

    /// <summary>Layer ℓ's activation.</summary>
    public SaeActivation Activation(int layer) => _encoders[layer].Activation;

    /// <summary>The decoder bytes as float32 (what an in-memory load would add).</summary>
    public long DecoderBytes => 4L * _shapes.Sum(s => (long)s.DSae * s.DOut);

    /// <summary>The files whose decoders are mapped, in layer order.</summary>
    public IReadOnlyList<string> DecoderFiles => _decoders.Files;

    public string InputHookPattern { get; }
    public string OutputHookPattern { get; }
    public int Layers => _encoders.Length;
    public int DIn => _shapes[0].DIn;
    public int DOut => _shapes[0].DOut;
    public int Features(int layer) => _shapes[layer].DSae;
    public string InputHook(int layer) => InputHookPattern.Replace("{layer}", L(layer), StringComparison.Ordinal);
    public string OutputHook(int layer) => OutputHookPattern.Replace("{layer}", L(layer), StringComparison.Ordinal);
    static string L(int layer) => layer.ToString(System.Globalization.CultureInfo.InvariantCulture);
    public int LastTarget(int layer) { _ = _shapes[layer]; return layer; }
    public bool HasSkip => _skip.Any(s => s is not null);

    /// <summary>Where the decoders go when the transcoders run on a device (<see cref="DeviceMlpReplacement.Upload"/>).</summary>
    public DeviceDecoders DecodersOnDevice { get; set; }

    /// <summary>Layer ℓ's encoder side (a dictionary of d_out 1), b_dec and skip path: what a device keeps when the decoders stay here.</summary>
    internal (SparseDictionary Encoder, float[] BDec, float[]? Skip) EncoderSide(int layer) => (_encoders[layer], _bDec[layer], _skip[layer]);
    public float[]? SkipWeights(int layer) => _skip[layer];
    public string Source { get; }

    /// <summary>
    /// <see cref="CircuitTracerTranscoders.Fingerprint"/> of the same weights: the decoders streamed once from the files (file
    /// reads, checking every value; cached — they are read-only).
    /// </summary>
    /// <exception cref="InputError">A decoder value is NaN, ±∞ or of a corrupt magnitude.</exception>
    public string Fingerprint => _fingerprint ??= ComputeFingerprint();

    string ComputeFingerprint()
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        static void Append(IncrementalHash h, float[] a) => h.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()));
        for (int l = 0; l < Layers; l++)
        {
            var d = _encoders[l];
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"plt {d.Architecture} {_shapes[l]}\n"));
            Append(sha, d.P.WEnc);
            Append(sha, d.P.BEnc);
            _decoders.AppendLayer(l, sha);
            Append(sha, _bDec[l]);
            Append(sha, _skip[l] ?? []);
            Append(sha, d.Activation is JumpReluActivation ? d.P.LogThreshold : []);
            Append(sha, d.Activation is BatchTopKActivation ? d.P.Threshold : []);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }

    public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts) => CircuitTracerTranscoders.Encode(_encoders[layer], x, rows, pre, acts);

    public void EncoderDirection(int layer, int feature, Span<float> into) => CircuitTracerTranscoders.EncoderColumn(_encoders[layer], layer, feature, into);

    /// <exception cref="InputError">The feature's decoder row holds NaN, ±∞ or a corrupt magnitude.</exception>
    public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into)
    {
        if (targetLayer != layer) throw new ArgumentOutOfRangeException(nameof(targetLayer), targetLayer, $"a per-layer transcoder of layer {layer} writes only layer {layer}");
        if ((uint)feature >= (uint)Features(layer)) throw new ArgumentOutOfRangeException(nameof(feature), feature, $"layer {layer} has {Features(layer)} features");
        if (into.Length < DOut) throw new ArgumentException($"into has {into.Length} floats, expected d_out = {DOut}", nameof(into));
        _decoders.ReadRow(layer, feature, layer, into[..DOut]);
    }

    /// <exception cref="InputError">An active feature's decoder row holds NaN, ±∞ or a corrupt magnitude.</exception>
    public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon)
    {
        ArgumentNullException.ThrowIfNull(acts);
        var s = _shapes[targetLayer];
        if (acts.Count <= targetLayer || acts[targetLayer].Length < rows * s.DSae)
            throw new ArgumentException($"acts[{targetLayer}] must hold rows·d_sae = {rows * s.DSae} floats", nameof(acts));
        if (recon.Length < rows * s.DOut) throw new ArgumentException($"recon has {recon.Length} floats, expected rows·d_out = {rows * s.DOut}", nameof(recon));
        for (int b = 0; b < rows; b++) _bDec[targetLayer].CopyTo(recon.Slice(b * s.DOut, s.DOut));
        _decoders.AddActiveRows(targetLayer, targetLayer, acts[targetLayer], rows, recon);
        if (_skip[targetLayer] is not { } skip) return;
        if (inputs is null || inputs.Count <= targetLayer || inputs[targetLayer].Length < rows * s.DIn)
            throw new ArgumentException($"layer {targetLayer} has a skip path: inputs[{targetLayer}] must hold rows·d_in = {rows * s.DIn} floats", nameof(inputs));
        Gemm.Sgemm(false, false, rows, s.DOut, s.DIn, 1f, inputs[targetLayer], s.DIn, skip, s.DOut, 1f, recon, s.DOut);
    }

    /// <summary>
    /// Layer ℓ as an in-memory transcoder (its decoders read, checked, from the file): for a device upload, a layer at a time.
    /// </summary>
    /// <exception cref="InputError">A decoder value is NaN, ±∞ or of a corrupt magnitude.</exception>
    public SparseDictionary LayerInMemory(int layer)
    {
        var e = _encoders[layer];
        var d = new SparseDictionary(_shapes[layer], e.Activation);
        e.P.WEnc.CopyTo(d.P.WEnc, 0);
        e.P.BEnc.CopyTo(d.P.BEnc, 0);
        e.P.LogThreshold.CopyTo(d.P.LogThreshold, 0);
        e.P.Threshold.CopyTo(d.P.Threshold, 0);
        _decoders.CopyLayer(layer, d.P.WDec);
        _bDec[layer].CopyTo(d.P.BDec, 0);
        _skip[layer]?.CopyTo(d.P.WSkip, 0);
        return d;
    }

    /// <summary>Unmaps the decoder files; decoding afterwards throws <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose() => _decoders.Dispose();

    /// <inheritdoc />
    public override string ToString() => $"{Source} (per-layer transcoders, {Layers} layers × {Features(0)} features{(HasSkip ? ", skip paths" : "")}, decoders mapped: {DecoderBytes / (double)(1L << 30):0.##} GiB as float32)";
}
