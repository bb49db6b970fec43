// Cross-layer transcoder (Ameisen et al. 2025, "Circuit Tracing"): the features of layer ℓ read that
// layer's MLP input and write the MLP outputs of every layer t ≥ ℓ, one decoder per (source, target).
//
// Shape legend: L = n_layers, B = batch rows, d_sae = features per layer.
//   x[ℓ]             [B, d_in]             MLP input of layer ℓ (blocks.ℓ.mlp.hook_in)
//   y[t]             [B, d_out]            MLP output of layer t (blocks.t.hook_mlp_out)
//   W_enc[ℓ]         [d_in, d_sae]         b_enc[ℓ] [d_sae]
//   W_dec[ℓ]         [d_sae, L−ℓ, d_out]   row i, slot t−ℓ: what feature i of ℓ writes to layer t
//                                          (circuit-tracer's layout: a feature's decoders are one contiguous row)
//   b_dec[t]         [d_out]
//   log_threshold[ℓ] [d_sae]               JumpReLU (θ = exp(log_threshold));  threshold[ℓ] [1] BatchTopK
// Training rows hold every layer side by side: x row = [x[0] | x[1] | … | x[L−1]] (L·d_in floats),
// y row = [y[0] | … | y[L−1]] (L·d_out floats).
//
// Forward:
//   1. pre[ℓ]   = x[ℓ]·W_enc[ℓ] + b_enc[ℓ]
//   2. acts[ℓ]  = f(pre[ℓ])                        (SaeActivation, one call per layer)
//   3. recon[t] = b_dec[t] + Σ_{ℓ≤t} acts[ℓ]·W_dec[ℓ][:, t−ℓ, :]
//   4. loss     = Σ_t Σ_d (recon[t] − y[t])² / B + sparsity
//      sparsity for ReLU: λ/B Σ_b Σ_ℓ Σ_i φ(acts[ℓ][b,i]·‖W_dec[ℓ][i]‖), φ(u) = tanh(c·u) (Anthropic's CLT) or u (L1),
//      ‖W_dec[ℓ][i]‖ the norm of feature i's decoders over all its targets, concatenated;
//      for JumpReLU the L0 penalty of each layer (SaeActivation.Sparsity); none for TopK and BatchTopK.
using System.Numerics.Tensors;
using System.Security.Cryptography;
using Loupe.Dictionaries.Sae;
using Loupe.Tensors.Kernels;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>Sizes of a cross-layer transcoder.</summary>
/// <param name="Layers">n_layers: source layers, and target layers.</param>
/// <param name="DIn">Width of each MLP input.</param>
/// <param name="DSae">Features per layer.</param>
/// <param name="DOut">Width of each MLP output.</param>
public sealed record CltShape(int Layers, int DIn, int DSae, int DOut)
{
    /// <summary>Width of a training input row (every layer's MLP input side by side).</summary>
    public int RowIn => Layers * DIn;

    /// <summary>Width of a training target row (every layer's MLP output side by side).</summary>
    public int RowOut => Layers * DOut;

    /// <summary>Decoder slots of source layer <paramref name="layer"/>: the targets layer … L−1.</summary>
    public int Targets(int layer) => Layers - layer;

    /// <param name="decoders">Whether the decoders are held in arrays (not when they stay memory-mapped).</param>
    internal void Validate(bool decoders = true)
    {
        if (Layers <= 0 || DIn <= 0 || DSae <= 0 || DOut <= 0) throw new ArgumentException($"dimensions must be positive: {this}");
        Check.Product("CLT shape", "W_enc [d_in, d_sae]", Check.MaxArrayElements, DIn, DSae);
        if (decoders) Check.Product("CLT shape", "W_dec[0] [d_sae, n_layers, d_out]", Check.MaxArrayElements, DSae, Layers, DOut);
    }

    /// <summary>Elements of every decoder together, Σ_ℓ d_sae·(L−ℓ)·d_out.</summary>
    public long DecoderElements => (long)DSae * DOut * Layers * (Layers + 1) / 2;
}

/// <summary>How the ReLU sparsity penalty turns a feature's decoder-weighted activation u = a·‖W_dec‖ into a cost.</summary>
public enum CltPenalty
{
    /// <summary>φ(u) = tanh(c·u) (Anthropic's CLT, "Circuit Tracing" §2): saturates, so it counts features more than it shrinks them.</summary>
    Tanh,
    /// <summary>φ(u) = u: the L1 penalty of Loupe's ReLU SAEs.</summary>
    L1,
}

/// <summary>Parameter (or gradient, or Adam moment) buffers of a cross-layer transcoder, row-major; see the file header.</summary>
public sealed class CltParameters
{
    public CltParameters(CltShape shape) : this(shape, decoders: true) { }

    /// <param name="shape">The sizes.</param>
    /// <param name="decoders">False: <see cref="WDec"/> holds empty arrays (the decoders stay in their files, <see cref="MappedCrossLayerTranscoder"/>).</param>
    internal CltParameters(CltShape shape, bool decoders)
    {
        ArgumentNullException.ThrowIfNull(shape);
        shape.Validate(decoders);
        HasDecoders = decoders;
        Shape = shape;
        int L = shape.Layers;
        WEnc = new float[L][];
        BEnc = new float[L][];
        WDec = new float[L][];
        BDec = new float[L][];
        Act = new SaeParameters[L];
        for (int l = 0; l < L; l++)
        {
            WEnc[l] = new float[shape.DIn * shape.DSae];
            BEnc[l] = new float[shape.DSae];
            WDec[l] = decoders ? new float[shape.DSae * shape.Targets(l) * shape.DOut] : [];
            BDec[l] = new float[shape.DOut];
            // The activation keeps its own per-feature state (JumpReLU log_threshold, BatchTopK threshold) in an
            // SaeParameters; only those two buffers of it are used.
            Act[l] = new SaeParameters(new SaeShape(1, shape.DSae, 1, false, false));
        }
    }

    public CltShape Shape { get; }

    /// <summary>False when the decoders are not held here (<see cref="WDec"/> holds empty arrays).</summary>
    public bool HasDecoders { get; }

    public float[][] WEnc { get; }   // [L][d_in, d_sae]
    public float[][] BEnc { get; }   // [L][d_sae]
    public float[][] WDec { get; }   // [L][d_sae, L−ℓ, d_out]
    public float[][] BDec { get; }   // [L][d_out]
    /// <summary>Per layer, the activation's state: <c>LogThreshold</c> [d_sae] (JumpReLU) and <c>Threshold</c> [1] (BatchTopK).</summary>
    public SaeParameters[] Act { get; }

    /// <summary>The trainable tensors, by Loupe's CLT names (BatchTopK's threshold excluded: a running statistic).</summary>
    public IEnumerable<(string Name, float[] Data)> Trainable(SaeActivation activation)
    {
        for (int l = 0; l < Shape.Layers; l++)
        {
            yield return ($"W_enc.{l}", WEnc[l]);
            yield return ($"b_enc.{l}", BEnc[l]);
            yield return ($"W_dec.{l}", WDec[l]);
            yield return ($"b_dec.{l}", BDec[l]);
            if (activation is JumpReluActivation) yield return ($"log_threshold.{l}", Act[l].LogThreshold);
        }
    }

    /// <summary>Every buffer, trainable or not, by name.</summary>
    public IEnumerable<(string Name, float[] Data)> All()
    {
        for (int l = 0; l < Shape.Layers; l++)
        {
            yield return ($"W_enc.{l}", WEnc[l]);
            yield return ($"b_enc.{l}", BEnc[l]);
            yield return ($"W_dec.{l}", WDec[l]);
            yield return ($"b_dec.{l}", BDec[l]);
            yield return ($"log_threshold.{l}", Act[l].LogThreshold);
            yield return ($"threshold.{l}", Act[l].Threshold);
        }
    }

    public void Clear()
    {
        foreach (var (_, data) in All()) Array.Clear(data);
    }
}

/// <summary>Loss of one batch: the total, the reconstruction MSE summed over target layers, the sparsity term, and per target layer.</summary>
/// <param name="Loss">MSE + sparsity.</param>
/// <param name="Mse">Σ_t Σ_d (recon[t] − y[t])² / B.</param>
/// <param name="Sparsity">The sparsity term (already multiplied by its coefficient).</param>
/// <param name="L0">Mean active features per row, summed over layers.</param>
/// <param name="ExplainedVariance">Per target layer: 1 − Σ err² / Σ (y − ȳ)² over the batch.</param>
public sealed record CltLoss(float Loss, float Mse, float Sparsity, float L0, float[] ExplainedVariance);

/// <summary>
/// A cross-layer transcoder (see the file header): per-layer encoders, one decoder per (source ≤ target) pair,
/// the nonlinearities of Loupe's SAEs. Implements <see cref="IMlpReplacement"/> for attribution and evaluation.
/// </summary>
public sealed class CrossLayerTranscoder : IMlpReplacement
{
    /// <summary>Default MLP-input hook; <c>{layer}</c> is replaced by the layer index.</summary>
    public const string DefaultInputHook = "blocks.{layer}.mlp.hook_in";

    /// <summary>Default MLP-output hook.</summary>
    public const string DefaultOutputHook = "blocks.{layer}.hook_mlp_out";

    /// <param name="shape">The sizes.</param>
    /// <param name="activation">The nonlinearity, shared by every layer (each layer keeps its own thresholds).</param>
    /// <param name="inputHookPattern">The hook each layer's features read; <c>{layer}</c> stands for the layer.</param>
    /// <param name="outputHookPattern">The hook each target's reconstruction replaces.</param>
    /// <param name="source">Where it came from (a folder) or a name.</param>
    public CrossLayerTranscoder(CltShape shape, SaeActivation activation, string inputHookPattern = DefaultInputHook,
        string outputHookPattern = DefaultOutputHook, string source = "(in memory)")
        : this(shape, activation, inputHookPattern, outputHookPattern, source, decoders: true) { }

    /// <summary>
    /// With <paramref name="decoders"/> false: encoders, biases and thresholds only; the decoders stay in their files and are
    /// read by <see cref="MappedCrossLayerTranscoder"/> (which alone holds such an instance: decoding here is refused).
    /// </summary>
    internal CrossLayerTranscoder(CltShape shape, SaeActivation activation, string inputHookPattern, string outputHookPattern, string source, bool decoders)
    {
        Activation = activation ?? throw new ArgumentNullException(nameof(activation));
        // its nested losses are SparseDictionary's; a CLT would train it as a plain BatchTopK, silently
        if (activation is MatryoshkaBatchTopKActivation)
            throw new ArgumentException("cross-layer transcoders have no Matryoshka form; use BatchTopKActivation", nameof(activation));
        P = new CltParameters(shape, decoders);
        InputHookPattern = CheckPattern(inputHookPattern, nameof(inputHookPattern));
        OutputHookPattern = CheckPattern(outputHookPattern, nameof(outputHookPattern));
        Source = source ?? "";
    }

    static string CheckPattern(string pattern, string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(pattern, name);
        if (!pattern.Contains("{layer}", StringComparison.Ordinal))
            throw new ArgumentException($"a hook pattern must contain {{layer}}: '{pattern}'", name);
        return pattern;
    }

    public CltShape Shape => P.Shape;
    public SaeActivation Activation { get; }
    public CltParameters P { get; }
    public string InputHookPattern { get; }
    public string OutputHookPattern { get; }
    public string Architecture => Activation.Architecture;

    // ---- IMlpReplacement ----
    public int Layers => Shape.Layers;
    public int DIn => Shape.DIn;
    public int DOut => Shape.DOut;
    public int Features(int layer) { CheckLayer(layer); return Shape.DSae; }
    public string InputHook(int layer) { CheckLayer(layer); return InputHookPattern.Replace("{layer}", layer.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal); }
    public string OutputHook(int layer) { CheckLayer(layer); return OutputHookPattern.Replace("{layer}", layer.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal); }
    public int LastTarget(int layer) { CheckLayer(layer); return Layers - 1; }
    public bool HasSkip => false;

    /// <summary>Where the decoders go when the transcoder runs on a device (<see cref="DeviceMlpReplacement.Upload"/>).</summary>
    public DeviceDecoders DecodersOnDevice { get; set; }
    public float[]? SkipWeights(int layer) => null;
    public string Source { get; set; }

    /// <summary>Hex SHA-256 (first 16 digits) of the architecture, the shape and every parameter's bytes, in order.</summary>
    public string Fingerprint => FingerprintWith(null);

    /// <summary>
    /// <see cref="Fingerprint"/>, with each layer's decoder bytes appended by <paramref name="appendDecoder"/> when they are
    /// not held here (the same digest as the in-memory transcoder with the same weights), then whatever
    /// <paramref name="appendAfter"/> adds (a skip path).
    /// </summary>
    internal string FingerprintWith(Action<int, IncrementalHash>? appendDecoder, Action<IncrementalHash>? appendAfter = null)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"clt {Architecture} {Shape}\n"));
        int layer = 0;
        foreach (var (name, data) in P.All())
        {
            if (name.StartsWith("log_threshold", StringComparison.Ordinal) && Activation is not JumpReluActivation) continue;
            if (name.StartsWith("threshold", StringComparison.Ordinal) && Activation is not BatchTopKActivation) continue;
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes(name));
            if (name.StartsWith("W_dec.", StringComparison.Ordinal) && !P.HasDecoders)
            {
                (appendDecoder ?? throw new InvalidOperationException("the decoders are not in memory"))(layer++, sha);
                continue;
            }
            sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
        }
        appendAfter?.Invoke(sha);
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }

    // An instance built without decoders (inside MappedCrossLayerTranscoder) encodes only.
    void RequireDecoders()
    {
        if (!P.HasDecoders) throw new InvalidOperationException($"{Source}: the decoders are memory-mapped; decode through MappedCrossLayerTranscoder");
    }

    internal void CheckLayer(int layer)
    {
        if ((uint)layer >= (uint)Layers) throw new ArgumentOutOfRangeException(nameof(layer), layer, $"layers are 0…{Layers - 1}");
    }

    /// <summary>pre = x·W_enc[ℓ] + b_enc[ℓ], acts = f(pre) (inference: BatchTopK uses its threshold). x [rows, d_in].</summary>
    public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts)
    {
        CheckLayer(layer);
        int dIn = DIn, dSae = Shape.DSae;
        if (x.Length < rows * dIn) throw new ArgumentException($"x has {x.Length} floats, expected rows·d_in = {rows * dIn}", nameof(x));
        if (pre.Length < rows * dSae || acts.Length < rows * dSae) throw new ArgumentException($"pre and acts need rows·d_sae = {rows * dSae} floats");
        EncodePre(layer, x, dIn, rows, pre);
        Activation.Forward(pre, acts, rows, dSae, training: false, P.Act[layer]);
    }

    // pre = x·W_enc[ℓ] + b_enc[ℓ], x rows with stride ldx
    void EncodePre(int layer, ReadOnlySpan<float> x, int ldx, int rows, Span<float> pre)
    {
        int dIn = DIn, dSae = Shape.DSae;
        for (int b = 0; b < rows; b++) P.BEnc[layer].CopyTo(pre.Slice(b * dSae, dSae));
        Gemm.Sgemm(false, false, rows, dSae, dIn, 1f, x, ldx, P.WEnc[layer], dSae, 1f, pre, dSae);
    }

    public void EncoderDirection(int layer, int feature, Span<float> into)
    {
        CheckLayer(layer);
        CheckFeature(feature);
        int dSae = Shape.DSae;
        var w = P.WEnc[layer];
        for (int j = 0; j < DIn; j++) into[j] = w[j * dSae + feature];
    }

    public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into)
    {
        CheckLayer(layer);
        CheckFeature(feature);
        CheckTarget(layer, targetLayer);
        RequireDecoders();
        P.WDec[layer].AsSpan(DecoderOffset(layer, feature, targetLayer), DOut).CopyTo(into);
    }

    internal void CheckTarget(int layer, int targetLayer)
    {
        if (targetLayer < layer || targetLayer >= Layers) throw new ArgumentOutOfRangeException(nameof(targetLayer), targetLayer, $"a feature of layer {layer} writes layers {layer}…{Layers - 1}");
    }

    internal void CheckFeature(int feature)
    {
        if ((uint)feature >= (uint)Shape.DSae) throw new ArgumentOutOfRangeException(nameof(feature), feature, $"features are 0…{Shape.DSae - 1}");
    }

    /// <summary>Offset of W_dec[ℓ][feature, t−ℓ, :] in <c>P.WDec[ℓ]</c>.</summary>
    public int DecoderOffset(int layer, int feature, int targetLayer) => (feature * Shape.Targets(layer) + (targetLayer - layer)) * DOut;

    public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon)
    {
        CheckLayer(targetLayer);
        ArgumentNullException.ThrowIfNull(acts);
        if (acts.Count <= targetLayer) throw new ArgumentException($"acts must hold layers 0…{targetLayer}; it has {acts.Count}", nameof(acts));
        RequireDecoders();
        int dOut = DOut, dSae = Shape.DSae;
        for (int b = 0; b < rows; b++) P.BDec[targetLayer].CopyTo(recon.Slice(b * dOut, dOut));
        for (int l = 0; l <= targetLayer; l++)
        {
            if (acts[l].Length < rows * dSae) throw new ArgumentException($"acts[{l}] has {acts[l].Length} floats, expected rows·d_sae = {rows * dSae}", nameof(acts));
            int stride = Shape.Targets(l) * dOut;
            Gemm.Sgemm(false, false, rows, dOut, dSae, 1f, acts[l], dSae, P.WDec[l].AsSpan((targetLayer - l) * dOut), stride, 1f, recon, dOut);
        }
    }

    // ---- initialisation ----

    /// <summary>
    /// Random decoders (each feature's concatenated row of norm <paramref name="decoderNorm"/>), encoders with entries
    /// of scale <paramref name="decoderNorm"/>/√d_in, biases 0, JumpReLU θ = <paramref name="initThreshold"/>.
    /// </summary>
    public void Initialize(int seed, float decoderNorm = 0.1f, float initThreshold = 0.001f)
    {
        RequireDecoders();
        var rng = new Random(seed);
        int dSae = Shape.DSae;
        for (int l = 0; l < Layers; l++)
        {
            int row = Shape.Targets(l) * DOut;
            var wDec = P.WDec[l];
            for (int i = 0; i < wDec.Length; i++) wDec[i] = SparseDictionary.Gaussian(rng);
            for (int f = 0; f < dSae; f++)
            {
                var r = wDec.AsSpan(f * row, row);
                TensorPrimitives.Multiply(r, decoderNorm / TensorPrimitives.Norm(r), r);
            }
            var wEnc = P.WEnc[l];
            for (int i = 0; i < wEnc.Length; i++) wEnc[i] = SparseDictionary.Gaussian(rng) * decoderNorm / MathF.Sqrt(DIn);
            Array.Clear(P.BEnc[l]);
            Array.Clear(P.BDec[l]);
            Array.Fill(P.Act[l].LogThreshold, MathF.Log(initThreshold));
            P.Act[l].Threshold[0] = -1f;
        }
    }

    /// <summary>‖W_dec[ℓ][i]‖ over all targets, for every feature of layer ℓ → [d_sae].</summary>
    public float[] DecoderNorms(int layer)
    {
        RequireDecoders();
        int row = Shape.Targets(layer) * DOut;
        var norms = new float[Shape.DSae];
        for (int i = 0; i < norms.Length; i++) norms[i] = TensorPrimitives.Norm(P.WDec[layer].AsSpan(i * row, row));
        return norms;
    }

    // ---- training forward/backward ----

    /// <summary>
    /// Loss on one batch of rows (see the file header for the row layout), and when <paramref name="grad"/> is not
    /// null its gradient w.r.t. every parameter (written, not accumulated; the activation's gradients go to
    /// <c>grad.Act[ℓ]</c>). <paramref name="firesOut"/> [L·d_sae], when given, receives how many rows each feature fired on.
    /// </summary>
    /// <param name="x">Inputs [batch, L·d_in].</param>
    /// <param name="y">Targets [batch, L·d_out].</param>
    /// <param name="batch">Rows.</param>
    /// <param name="sparsityCoefficient">λ.</param>
    /// <param name="penalty">φ of the ReLU penalty.</param>
    /// <param name="tanhScale">c of φ(u) = tanh(c·u).</param>
    /// <param name="grad">Gradient buffers, or null for the loss only.</param>
    /// <param name="training">Batch-level behaviour (BatchTopK) and its running statistics.</param>
    /// <param name="firesOut">Per feature, rows it fired on, or empty.</param>
    public CltLoss ForwardBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> y, int batch, float sparsityCoefficient,
        CltPenalty penalty, float tanhScale, CltParameters? grad, bool training = true, Span<int> firesOut = default)
    {
        var s = Shape;
        int L = s.Layers, dIn = s.DIn, dSae = s.DSae, dOut = s.DOut;
        if (batch <= 0) throw new ArgumentOutOfRangeException(nameof(batch));
        RequireDecoders();
        if (x.Length < batch * s.RowIn) throw new ArgumentException($"x has {x.Length} floats, expected batch·L·d_in = {batch * s.RowIn}", nameof(x));
        if (y.Length < batch * s.RowOut) throw new ArgumentException($"y has {y.Length} floats, expected batch·L·d_out = {batch * s.RowOut}", nameof(y));
        var w = WorkspaceFor(batch);

        // 1–2. encode every layer
        long nnz = 0;
        for (int l = 0; l < L; l++)
        {
            EncodePre(l, x[(l * dIn)..], s.RowIn, batch, w.Pre[l]);
            Activation.Forward(w.Pre[l], w.Acts[l], batch, dSae, training, P.Act[l]);
            foreach (float a in w.Acts[l]) if (a != 0) nnz++;
        }
        if (!firesOut.IsEmpty)
        {
            firesOut[..(L * dSae)].Clear();
            for (int l = 0; l < L; l++)
                for (int b = 0; b < batch; b++)
                    for (int i = 0; i < dSae; i++) if (w.Acts[l][b * dSae + i] != 0) firesOut[l * dSae + i]++;
        }

        // 3. recon[t] (written into err[t], then − y[t])
        var ev = new float[L];
        double mse = 0;
        for (int t = 0; t < L; t++)
        {
            var err = w.Err[t];
            Reconstruct(t, w.Acts, [], batch, err);
            for (int b = 0; b < batch; b++)
                TensorPrimitives.Subtract(err.AsSpan(b * dOut, dOut), y.Slice(b * s.RowOut + t * dOut, dOut), err.AsSpan(b * dOut, dOut));
            mse += TensorPrimitives.SumOfSquares(err);
            ev[t] = ExplainedVariance(err, y, batch, t * dOut, s.RowOut, dOut);
        }
        mse /= batch;

        if (grad is not null)
        {
            grad.Clear();
            for (int l = 0; l < L; l++) { Array.Clear(w.DActs[l]); Array.Clear(w.DPre[l]); }
        }

        // 4. sparsity
        float sparsity = 0;
        if (Activation is ReluActivation)
            sparsity = ReluPenalty(batch, sparsityCoefficient, penalty, tanhScale, grad, w);
        else if (Activation.HasSparsityPenalty)
            for (int l = 0; l < L; l++)
                sparsity += Activation.Sparsity(w.Pre[l], w.Acts[l], batch, dSae, sparsityCoefficient, P.Act[l],
                    w.DActs[l], w.DPre[l], grad?.Act[l]);
        if (training)
            for (int l = 0; l < L; l++) Activation.AfterTrainingForward(w.Acts[l], batch, dSae, P.Act[l]);
        var result = new CltLoss((float)mse + sparsity, (float)mse, sparsity, (float)nnz / batch, ev);
        if (grad is null) return result;

        // d mse / d recon[t] = 2·err[t] / B
        for (int t = 0; t < L; t++) TensorPrimitives.Multiply(w.Err[t], 2f / batch, w.Err[t]);
        for (int t = 0; t < L; t++) ColumnSum(w.Err[t], batch, dOut, grad.BDec[t]);  // recon[t] = … + b_dec[t]
        for (int l = 0; l < L; l++)
        {
            int stride = s.Targets(l) * dOut;
            for (int t = l; t < L; t++)
            {
                // recon[t] += acts[ℓ]·W_dec[ℓ][:, t−ℓ, :]
                Gemm.Sgemm(true, false, dSae, dOut, batch, 1f, w.Acts[l], dSae, w.Err[t], dOut, 1f, grad.WDec[l].AsSpan((t - l) * dOut), stride); // dW_dec += actsᵀ·dRecon
                Gemm.Sgemm(false, true, batch, dSae, dOut, 1f, w.Err[t], dOut, P.WDec[l].AsSpan((t - l) * dOut), stride, 1f, w.DActs[l], dSae); // dActs += dRecon·W_decᵀ
            }
            // acts = f(pre)
            Activation.Backward(w.Pre[l], w.Acts[l], w.DActs[l], w.DPre[l], batch, dSae, P.Act[l], grad.Act[l]);
            // pre = x[ℓ]·W_enc[ℓ] + b_enc[ℓ]
            Gemm.Sgemm(true, false, dIn, dSae, batch, 1f, x[(l * dIn)..], s.RowIn, w.DPre[l], dSae, 0f, grad.WEnc[l], dSae);
            ColumnSum(w.DPre[l], batch, dSae, grad.BEnc[l]);
        }
        return result;
    }

    // sparsity = λ/B Σ_b Σ_ℓ Σ_i φ(a·n_i), n_i = ‖W_dec[ℓ][i]‖ (concatenated over targets)
    //   ∂/∂a = λ/B φ'(a·n)·n;  ∂/∂W_dec[ℓ][i] = λ/B Σ_b φ'(a·n)·a · W_dec[ℓ][i] / n
    //   φ = tanh(c·u): φ'(u) = c·(1 − tanh²(c·u));  φ = u: φ' = 1
    float ReluPenalty(int batch, float coefficient, CltPenalty penalty, float c, CltParameters? grad, Workspace w)
    {
        int dSae = Shape.DSae;
        float scale = coefficient / batch;
        double loss = 0;
        for (int l = 0; l < Layers; l++)
        {
            var norms = DecoderNorms(l);
            var acts = w.Acts[l];
            var dNorm = new double[dSae];   // [d_sae] Σ_b φ'(a·n)·a
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < dSae; i++)
                {
                    float a = acts[b * dSae + i];
                    if (a == 0) continue;
                    float u = a * norms[i];
                    float phi, dPhi;
                    if (penalty == CltPenalty.Tanh) { float th = MathF.Tanh(c * u); phi = th; dPhi = c * (1 - th * th); }
                    else { phi = u; dPhi = 1; }
                    loss += phi;
                    if (grad is null) continue;
                    w.DActs[l][b * dSae + i] += scale * dPhi * norms[i];
                    dNorm[i] += dPhi * a;
                }
            if (grad is null) continue;
            int row = Shape.Targets(l) * DOut;
            for (int i = 0; i < dSae; i++)
            {
                if (norms[i] == 0 || dNorm[i] == 0) continue;
                TensorPrimitives.MultiplyAdd(P.WDec[l].AsSpan(i * row, row), (float)(scale * dNorm[i] / norms[i]),
                    grad.WDec[l].AsSpan(i * row, row), grad.WDec[l].AsSpan(i * row, row));
            }
        }
        return (float)(loss * scale);
    }

    static void ColumnSum(float[] m, int rows, int cols, float[] into)
    {
        for (int b = 0; b < rows; b++) TensorPrimitives.Add(into, m.AsSpan(b * cols, cols), into);
    }

    // 1 − Σ err² / Σ (y − ȳ)² for one target slice [offset, offset + d) of rows of width ld
    static float ExplainedVariance(float[] err, ReadOnlySpan<float> y, int batch, int offset, int ld, int d)
    {
        var mean = new double[d];
        for (int b = 0; b < batch; b++) for (int j = 0; j < d; j++) mean[j] += y[b * ld + offset + j];
        double tot = 0, res = 0;
        for (int b = 0; b < batch; b++)
            for (int j = 0; j < d; j++)
            {
                double cen = y[b * ld + offset + j] - mean[j] / batch;
                tot += cen * cen;
                res += (double)err[b * d + j] * err[b * d + j];
            }
        return tot == 0 ? 0f : (float)(1 - res / tot);
    }

    sealed class Workspace
    {
        public Workspace(int batch, CltShape s)
        {
            Batch = batch;
            Pre = Make(s.Layers, batch * s.DSae);
            Acts = Make(s.Layers, batch * s.DSae);
            DActs = Make(s.Layers, batch * s.DSae);
            DPre = Make(s.Layers, batch * s.DSae);
            Err = Make(s.Layers, batch * s.DOut);
        }

        static float[][] Make(int n, int size) => Enumerable.Range(0, n).Select(_ => new float[size]).ToArray();
        public readonly int Batch;
        public readonly float[][] Pre, Acts, DActs, DPre;   // [L][batch, d_sae]
        public readonly float[][] Err;                      // [L][batch, d_out] recon − y, then d loss / d recon
    }

    Workspace? _workspace;
    Workspace WorkspaceFor(int batch) => _workspace is { } w && w.Batch == batch ? w : _workspace = new Workspace(batch, Shape);

    /// <summary>A copy with the same weights, activation and hooks (independent buffers).</summary>
    public CrossLayerTranscoder Clone()
    {
        RequireDecoders();
        var copy = new CrossLayerTranscoder(Shape, Activation, InputHookPattern, OutputHookPattern, Source);
        foreach (var ((_, from), (_, to)) in P.All().Zip(copy.P.All())) from.CopyTo(to, 0);
        return copy;
    }
}
