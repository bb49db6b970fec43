// A dictionary's inference forward (encode, decode) with its weights on an IComputeBackend's device, and the sparse
// read-back of its feature activations. The math is SparseDictionary.EncodePre / Activation.Forward(training: false) /
// Decode; DeviceSaeTraining's step runs the same products and activations.
//
// Shape legend: rows = tokens of a batch, n = d_sae, d_in, d_out (SAELens names as in SparseDictionary.cs).
//
// Encode:
//   1. x_in = x − b_dec (when b_dec is subtracted from the input);  pre = x_in·W_enc + b_enc [rows, n]
//   2. acts = f(pre) [rows, n]: TopK: top-k of each row, ReLU'd (values [rows, k] and indices kept for the sparse read);
//      ReLU; JumpReLU: pre·1[pre > exp(log θ)]; BatchTopK at inference: pre·1[pre > threshold] (threshold ≤ 0: ReLU)
// Sparse read-back (what a host pass over the activations needs, never the dense [rows, n] when it is sparse):
//   3. TopK: the values and indices of step 2 (rows·k each);
//      otherwise the top-k of each row of acts with k doubled until every row's k-th value is 0, so every nonzero is
//      among them (k starts at the previous batch's need); when 2k would reach n the dense acts are cheaper and come out
//   4. on the host: keep the nonzero entries of each row, features ascending (CSR)
// Backward (SaeSplice's, through the inference forward): d acts = d recons·W_decᵀ; d x = d pre·W_encᵀ (+ d recons·W_skipᵀ).
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Sae;

/// <summary>
/// Feature activations of a batch in compressed-row form: row r holds entries <c>RowStart[r] .. RowStart[r+1]−1</c>,
/// features ascending, with their (nonzero) values. Rows are the tokens in the caller's order.
/// </summary>
internal sealed class SparseActivations
{
    public SparseActivations(int rows, int width, int[] rowStart, int[] feature, float[] value)
    {
        (Rows, Width, RowStart, Feature, Value) = (rows, width, rowStart, feature, value);
    }

    public int Rows { get; }
    public int Width { get; }
    public int[] RowStart { get; }   // [rows + 1]
    public int[] Feature { get; }    // [nnz] ascending within a row
    public float[] Value { get; }    // [nnz]

    /// <summary>Feature <paramref name="f"/>'s activation at row <paramref name="row"/> (0 when it is not stored).</summary>
    public float Get(int row, int f)
    {
        int i = Array.BinarySearch(Feature, RowStart[row], RowStart[row + 1] - RowStart[row], f);
        return i >= 0 ? Value[i] : 0f;
    }

    /// <summary>The nonzero entries (NaN included) of dense <c>[rows, width]</c>.</summary>
    public static SparseActivations FromDense(ReadOnlySpan<float> dense, int rows, int width) => FromDense(dense, rows, 1, 0, width);

    /// <summary>
    /// The nonzero entries (NaN included) of positions <paramref name="first"/>.. of each of <paramref name="contexts"/>
    /// contexts in dense <c>[contexts, n, width]</c>: row i·(n − first) + p − first is (context i, position p).
    /// </summary>
    public static SparseActivations FromDense(ReadOnlySpan<float> dense, int contexts, int n, int first, int width)
    {
        int rows = contexts * (n - first);
        int Source(int r) => (r / (n - first) * n + r % (n - first) + first) * width;
        var rowStart = new int[rows + 1];
        for (int r = 0; r < rows; r++)
        {
            int count = 0;
            foreach (float v in dense.Slice(Source(r), width)) if (v != 0) count++;
            rowStart[r + 1] = rowStart[r] + count;
        }
        var feature = new int[rowStart[rows]];
        var value = new float[rowStart[rows]];
        for (int r = 0, at = 0; r < rows; r++)
        {
            var row = dense.Slice(Source(r), width);
            for (int f = 0; f < width; f++)
                if (row[f] != 0) { feature[at] = f; value[at] = row[f]; at++; }
        }
        return new SparseActivations(rows, width, rowStart, feature, value);
    }

    /// <summary>The nonzero entries of per-row top-k lists (values <c>[rows, k]</c>, indices as floats), sorted by feature.</summary>
    public static SparseActivations FromTopK(float[] values, float[] indices, int rows, int k, int width)
    {
        var rowStart = new int[rows + 1];
        for (int r = 0; r < rows; r++)
        {
            int count = 0;
            for (int j = 0; j < k; j++) if (values[r * k + j] != 0) count++;
            rowStart[r + 1] = rowStart[r] + count;
        }
        var feature = new int[rowStart[rows]];
        var value = new float[rowStart[rows]];
        for (int r = 0; r < rows; r++)
        {
            int at = rowStart[r];
            for (int j = 0; j < k; j++)
                if (values[r * k + j] != 0) { feature[at] = (int)indices[r * k + j]; value[at] = values[r * k + j]; at++; }
            Array.Sort(feature, value, rowStart[r], at - rowStart[r]);
        }
        return new SparseActivations(rows, width, rowStart, feature, value);
    }
}

/// <summary>Encodes and decodes with a dictionary's weights uploaded once to a backend's device (see the steps at the top of the file).</summary>
internal sealed class DeviceSaeEncoder
{
    enum Kind { Relu, TopK, Threshold }
    readonly IComputeBackend _b;
    readonly SaeShape _s;
    readonly Kind _kind;
    readonly int _k;                        // TopK
    readonly Tensor _wEnc, _bEnc;           // [d_in, n], [n]
    readonly Tensor? _negBDec;              // [d_in] when b_dec is subtracted from the input
    readonly Tensor? _wDec, _bDec;          // [n, d_out], [d_out]; null for an encoder uploaded without its decoder
    readonly Tensor? _wSkip;                // [d_in, d_out]
    readonly Tensor? _logThreshold;         // [n] JumpReLU, or BatchTopK's threshold as a log
    int _sparseK = 32;                      // the top-k the last sparse read needed

    /// <summary>The skip path <c>[d_in, d_out]</c> on the device, or null.</summary>
    public Tensor? SkipWeights => _wSkip;

    /// <summary>
    /// Uploads the dictionary's weights (counted as <see cref="TransferKind.Weights"/>); without <paramref name="decoder"/> only
    /// what encoding reads (a cross-layer transcoder whose decoder rows are uploaded per pass).
    /// </summary>
    /// <exception cref="InputError">The architecture has no device kernels (a custom activation).</exception>
    public DeviceSaeEncoder(IComputeBackend backend, SparseDictionary dictionary, bool decoder = true)
    {
        _b = backend;
        _s = dictionary.Shape;
        var p = dictionary.P;
        int n = _s.DSae;
        if (!DeviceSaeTraining.Supports(dictionary.Activation))
            throw new InputError($"argument: --device: {dictionary.Architecture} dictionaries encode on the CPU only (on {backend.Device}: topk, batchtopk, jumprelu, standard, crosscoder, crosscoder_batchtopk); drop --device {backend.Device}");
        Tensor Up(float[] values, params int[] shape) => backend.LoadWeight(values, shape);
        _wEnc = Up(p.WEnc, _s.DIn, n);
        _bEnc = Up(p.BEnc, n);
        if (decoder)
        {
            _wDec = Up(p.WDec, n, _s.DOut);
            _bDec = Up(p.BDec, _s.DOut);
        }
        _wSkip = _s.Skip ? Up(p.WSkip, _s.DIn, _s.DOut) : null;
        if (_s.ApplyBDecToInput) _negBDec = Up(p.BDec.Select(v => -v).ToArray(), _s.DIn);
        switch (dictionary.Activation)
        {
            case TopKActivation t:
                _kind = Kind.TopK;
                _k = Math.Min(t.K, n);
                break;
            case JumpReluActivation:
                _kind = Kind.Threshold;
                _logThreshold = Up(p.LogThreshold, n);
                break;
            case Crosscoders.CrosscoderBatchTopKActivation c when p.Threshold[0] > 0:
            {
                // f·N_i > θ ⇔ pre > θ / N_i (f = ReLU(pre), θ > 0), N_i = Σ_s ‖W_dec^s[i]‖: a per-latent threshold (+∞ for N_i = 0)
                var segments = Crosscoders.Crosscoder.SegmentNorms(p.WDec, n, c.Sources, _s.DOut / c.Sources);
                var log = new float[n];
                for (int i = 0; i < n; i++)
                {
                    float norm = 0;
                    for (int s = 0; s < c.Sources; s++) norm += segments[(long)i * c.Sources + s];
                    log[i] = MathF.Log(p.Threshold[0] / norm);
                }
                _kind = Kind.Threshold;
                _logThreshold = Up(log, n);
                break;
            }
            case BatchTopKActivation when p.Threshold[0] > 0:
                // pre > t ⇔ pre > exp(log t) up to the rounding of exp(log t)
                _kind = Kind.Threshold;
                _logThreshold = Up(Enumerable.Repeat(MathF.Log(p.Threshold[0]), n).ToArray(), n);
                break;
            default:
                _kind = Kind.Relu; // standard, and BatchTopK before a threshold was learned (pre > t ≤ 0 and pre > 0)
                break;
        }
    }

    /// <summary>The dictionary's shape.</summary>
    public SaeShape Shape => _s;

    /// <summary>The backend the weights were uploaded to.</summary>
    public IComputeBackend Backend => _b;

    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<SparseDictionary, DeviceSaeEncoder> s_shared = new();

    /// <summary>
    /// The dictionary's weights on <paramref name="backend"/>, uploaded by the first caller and kept while the dictionary
    /// lives: a server encodes with the same SAE request after request (feature search, feature monitors).
    /// </summary>
    /// <exception cref="InputError">The architecture has no device kernels.</exception>
    public static DeviceSaeEncoder Shared(IComputeBackend backend, SparseDictionary dictionary)
    {
        lock (s_shared)
        {
            if (!s_shared.TryGetValue(dictionary, out var encoder) || encoder._b != backend)
                s_shared.AddOrUpdate(dictionary, encoder = new DeviceSaeEncoder(backend, dictionary));
            return encoder;
        }
    }

    /// <summary>W_enc <c>[d_in, n]</c> on the device (attribution reads encoder columns from it).</summary>
    public Tensor WEnc => _wEnc;

    /// <summary>W_dec <c>[n, d_out]</c> on the device (attribution gathers decoder rows from it).</summary>
    public Tensor WDec => _wDec ?? throw new InvalidOperationException("this encoder was uploaded without its decoder");

    /// <summary>
    /// acts = f(x_in·W_enc + b_enc) for x <c>[rows, d_in]</c> on the device; returns acts <c>[rows, n]</c> and, for a TopK
    /// dictionary, its ReLU'd top-k values and indices <c>[rows, k]</c> (null otherwise). Without <paramref name="dense"/>
    /// a TopK dictionary's acts are left as the pre-activations (the values and indices say it all).
    /// </summary>
    public (Tensor Acts, Tensor? Values, Tensor? Indices) Encode(Tensor x, int rows, bool dense = true)
    {
        var pre = EncodePre(x, rows);
        return Activate(pre, rows, dense, inPlace: true);
    }

    /// <summary>pre = (x − b_dec when subtracted)·W_enc + b_enc <c>[rows, n]</c> on the device (step 1).</summary>
    public Tensor EncodePre(Tensor x, int rows)
    {
        var b = _b;
        int n = _s.DSae, dIn = _s.DIn;
        var xIn = x;
        if (_negBDec is not null)
        {
            xIn = b.Empty(rows, dIn);
            b.CopyRows(x, 0, dIn, xIn, 0, dIn, 1, rows * dIn);
            b.AddRowVector(xIn, rows, _negBDec);
        }
        var pre = b.Empty(rows, n);
        b.Linear(xIn, rows, dIn, _wEnc, false, n, _bEnc, pre);
        return pre;
    }

    /// <summary>
    /// acts = f(pre) (step 2), into <paramref name="pre"/> itself when <paramref name="inPlace"/>, else a new tensor; see
    /// <see cref="Encode"/> for the TopK values and indices and <paramref name="dense"/>.
    /// </summary>
    public (Tensor Acts, Tensor? Values, Tensor? Indices) Activate(Tensor pre, int rows, bool dense = true, bool inPlace = false)
    {
        var b = _b;
        int n = _s.DSae;
        switch (_kind)
        {
            case Kind.TopK:
            {
                var values = b.Empty(rows, _k);
                var indices = b.Empty(rows, _k);
                b.TopKRows(pre, rows, n, _k, values, indices);
                b.Activation("relu", values, values);
                var acts = inPlace ? pre : b.Empty(rows, n);
                if (dense) b.ScatterRows(values, indices, rows, _k, n, acts);
                return (acts, values, indices);
            }
            case Kind.Threshold:
            {
                var acts = inPlace ? pre : b.Empty(rows, n);
                b.JumpRelu(pre, rows, n, _logThreshold!, acts);
                return (acts, null, null);
            }
            default:
            {
                var acts = inPlace ? pre : b.Empty(rows, n);
                b.Activation("relu", pre, acts);
                return (acts, null, null);
            }
        }
    }

    /// <summary>Backward of <see cref="Decode"/> through the features: d acts = d recons·W_decᵀ <c>[rows, n]</c>.</summary>
    public Tensor DecodeBackward(Tensor dRecons, int rows)
    {
        var dActs = _b.Empty(rows, _s.DSae);
        _b.Gemm(false, true, rows, _s.DSae, _s.DOut, 1f, dRecons, 0, _s.DOut, WDec, 0, _s.DOut, 0f, dActs, 0, _s.DSae);
        return dActs;
    }

    /// <summary>d x = d pre·W_encᵀ (+ d recons·W_skipᵀ) <c>[rows, d_in]</c>.</summary>
    public Tensor EncodeBackward(Tensor dPre, Tensor dRecons, int rows)
    {
        var dX = _b.Empty(rows, _s.DIn);
        _b.Gemm(false, true, rows, _s.DIn, _s.DSae, 1f, dPre, 0, _s.DSae, _wEnc, 0, _s.DSae, 0f, dX, 0, _s.DIn);
        if (_wSkip is not null) _b.Gemm(false, true, rows, _s.DIn, _s.DOut, 1f, dRecons, 0, _s.DOut, _wSkip, 0, _s.DOut, 1f, dX, 0, _s.DIn);
        return dX;
    }

    /// <summary>recon = acts·W_dec + b_dec (+ x·W_skip) <c>[rows, d_out]</c> on the device.</summary>
    public Tensor Decode(Tensor acts, Tensor x, int rows)
    {
        var recon = _b.Empty(rows, _s.DOut);
        _b.Linear(acts, rows, _s.DSae, WDec, false, _s.DOut, _bDec, recon);
        if (_wSkip is not null) _b.Gemm(false, false, rows, _s.DOut, _s.DIn, 1f, x, 0, _s.DIn, _wSkip, 0, _s.DOut, 1f, recon, 0, _s.DOut);
        return recon;
    }

    /// <summary>
    /// Encodes x <c>[rows, d_in]</c> and reads the nonzero activations back (steps 3–4). A NaN or ±∞ activation (−∞
    /// cannot occur) is reported through <paramref name="nonFinite"/> (row, feature, value) before anything else is read.
    /// </summary>
    public SparseActivations EncodeSparse(Tensor x, int rows, Action<int, int, float> nonFinite)
    {
        int n = _s.DSae;
        var (acts, values, indices) = Encode(x, rows, dense: false);
        var checkedTensor = values ?? acts;
        int width = values is null ? n : _k;
        long bad = _b.IndexOfNonFinite(checkedTensor, allowNegativeInfinity: true);
        if (bad >= 0)
        {
            var one = new float[1];
            new Tensor(checkedTensor.Storage.Slice(bad, 1), 1).CopyTo(one);
            int row = (int)(bad / width);
            int feature = (int)(bad % width);
            if (indices is not null)
            {
                var index = new float[1];
                new Tensor(indices.Storage.Slice(bad, 1), 1).CopyTo(index);
                feature = (int)index[0];
            }
            nonFinite(row, feature, one[0]);
        }
        if (values is not null)
        {
            var v = new float[rows * _k];
            var i = new float[rows * _k];
            values.CopyTo(v);
            indices!.CopyTo(i);
            return SparseActivations.FromTopK(v, i, rows, _k, n);
        }
        // 3. grow k until each row's k-th largest is 0 (every nonzero inside), or read the dense acts when that is cheaper.
        int k = Math.Min(_sparseK, n);
        while (2 * k < n)
        {
            var topValues = _b.Empty(rows, k);
            var topIndices = _b.Empty(rows, k);
            _b.TopKRows(acts, rows, n, k, topValues, topIndices);
            var v = new float[rows * k];
            topValues.CopyTo(v);
            bool complete = true;
            for (int r = 0; r < rows && complete; r++) complete = v[r * k + k - 1] == 0;
            if (complete)
            {
                var i = new float[rows * k];
                topIndices.CopyTo(i);
                _sparseK = k;
                return SparseActivations.FromTopK(v, i, rows, k, n);
            }
            k *= 2;
        }
        _sparseK = k;
        var dense = new float[rows * n];
        acts.CopyTo(dense);
        return SparseActivations.FromDense(dense, rows, n);
    }
}
