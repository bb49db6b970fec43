// SaeTrainer's step with every tensor on an IComputeBackend's device (TopK, BatchTopK, JumpReLU and standard ReLU + L1
// SAEs, transcoders, skip-transcoders). The math is SparseDictionary.ForwardBackward's and SaeTrainer.Step's; only the order of some sums differs.
//
// Shape legend: B = batch rows, n = d_sae, d_in, d_out (SAELens names as in SparseDictionary.cs).
//
// Per step:
//   1. upload the batch x [B, d_in] (and, for a transcoder, the target [B, d_out]): the one copy in
//   2. forward: x_in = x − b_dec;  pre = x_in·W_enc + b_enc [B, n];  acts = f(pre) [B, n]
//      (TopK: top-k, ReLU, scatter; BatchTopK: the batch·k largest of the whole batch, ReLU'd, and the smallest kept
//      value for the inference threshold; JumpReLU: pre·1[pre > exp(log θ)]; standard: ReLU);  err = acts·W_dec + b_dec (+ x·W_skip) − target [B, d_out]
//      (TopK: acts·W_dec from the k kept values and their indices, SparseRowsTimes: k·d_out per row, not n·d_out)
//   3. metrics into a device vector: Σ err², Σ_i colsum(acts)_i·‖W_dec[i]‖, nonzero count, Σ (target − mean)²,
//      dead features after this step, Σ aux diff²
//   4. sparsity (standard): L1 = λ/B Σ acts·‖W_dec[i]‖ with its gradients into dActs and dW_dec;
//      (JumpReLU) L0 = λ/B #{acts > 0}, whose only gradient is the threshold's (step 6)
//   5. aux-k (TopK, BatchTopK, when the previous step left dead features): z_aux = ReLU'd top-k_aux of pre among dead features,
//      ê = z_aux·W_dec, L_aux = c·min(n_dead/k_aux, 1)·Σ (ê + err)² / B; gradients into dW_dec and dPre. All three
//      products from the k_aux kept entries per row (SparseRowsTimes, SparseRowsTransposeTimes, RowDotsAt), never [B, n] dense
//   6. backward through the decoder, the activation (JumpReLU: and its log-threshold, straight-through) and the encoder.
//      TopK: dActs is needed only at the k kept entries (the others have no gradient), so it is k dots per row
//      (RowDotsAt: dRecon·W_dec[idx]ᵀ), masked by ReLU′ of the kept values and scattered into dPre; the other
//      activations take the dense dRecon·W_decᵀ [B, n]. TopK's W_dec gradient actsᵀ·dRecon is sparse too
//      (SparseRowsTransposeTimes: the kept entries transposed into per-feature lists without atomics, each feature's rows
//      summed in batch order, so it is deterministic); the others take a dense GEMM. So is TopK's W_enc gradient
//      x_inᵀ·dPre, with W_enc kept feature-major ([n, d_in]) on the device for it (aux-k's entries a second sparse pass).
//   7. read the metric vector back: the one copy out (the trainer stops here when the loss is not finite)
//   8. update: project W_dec row gradients (unit-norm decoders), clip the global gradient norm, Adam,
//      renormalise W_dec rows, commit the dead-feature counters
// The host knows the dead count from step 7 of the previous step, so aux-k's k and scale are host numbers. BatchTopK's
// inference threshold is a host number too: the trainer folds each step's smallest kept value (read back with the sums)
// into it, as BatchTopKActivation.AfterTrainingForward does on the host.
//
// Crosscoders (S sources; W_dec rows are S segments of d = d_out / S, so W_dec is also [n·S, d]): the code norm
// N_i = Σ_s ‖W_dec^s[i]‖ comes from per-segment RowDots summed over s (SumMiddleAxis).
//   ReLU crosscoder (CrosscoderReluActivation): step 4 with N_i in place of ‖W_dec[i]‖, and
//     dW_dec^s[i] = λ/B·colsum_i·W_dec^s[i] / ‖W_dec^s[i]‖ (ScaleRows over the [n·S, d] segments).
//   BatchTopK crosscoder (CrosscoderBatchTopKActivation): the batch·k largest ReLU(pre)·N_i are kept (BatchTopK over the
//     scaled values, whose smallest kept value is the threshold's update); acts = ReLU(pre) where kept, so the selection
//     is by f·N_i and the values are f, as on the host.
using Loupe.Dictionaries.Crosscoders;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Sae;

/// <summary>The raw sums a device step reads back (one copy), from which <see cref="SaeTrainer"/> forms its metrics.</summary>
internal readonly record struct DeviceStepSums(double SquaredError, double L1, double Nonzero, double CenteredSquares, int DeadAfter, double AuxSquares, float AuxScale, float MinKept,
    double MatryoshkaSquares = 0);

/// <summary>Parameters, Adam moments, dead-feature counters and step buffers of a dictionary on a device.</summary>
internal sealed class DeviceSaeTraining
{
    const int Slots = 8;
    enum Kind { Relu, TopK, BatchTopK, JumpRelu, CrosscoderRelu, CrosscoderBatchTopK }
    readonly IComputeBackend _b;
    readonly SparseDictionary _dict;
    readonly SaeTrainingOptions _o;
    readonly int _dIn, _n, _dOut, _batch;
    readonly Kind _kind;
    readonly bool _topK, _auxK, _unitNorm;
    readonly int _k;                       // TopK: per row; BatchTopK: kept over the whole batch
    readonly float _bandwidth;             // JumpReLU
    readonly int _sources;                 // crosscoders: S, the segments of a decoder row; 0 otherwise
    readonly Tensor? _segNorms, _segInv;   // [n·S] crosscoders: ‖W_dec^s[i]‖ and its inverse (1 for a zero segment)
    readonly IReadOnlyList<int>? _widths;  // Matryoshka level widths (the last = n)
    Tensor? _levelError, _levelScratch;    // [B, d_out] each, Matryoshka
    readonly DeviceParam[] _params;        // W_enc, b_enc, W_dec, b_dec (, W_skip) (, log_threshold): SaeParameters.Trainable's order
    readonly DeviceParam _wEnc, _bEnc, _wDec, _bDec;
    // TopK keeps W_enc feature-major on the device, [n, d_in] (the host's is [d_in, n]): its gradient dPreᵀ·x_in then has
    // k nonzero rows' worth of work per batch row and is SparseRowsTransposeTimes, not a dense [d_in, B]·[B, n] product.
    readonly bool _encoderFeatureMajor;
    readonly DeviceParam? _wSkip, _logThreshold;
    readonly DeviceUpdate _update;
    Tensor _since, _sinceNext;             // [n] tokens since each feature fired, saturated at the window
    Tensor _deadBias, _deadBiasNext;       // [n] 0 for dead features, −∞ for live ones
    readonly Tensor _metrics;              // [Slots]: Σ err², L1 (JumpReLU: L0 count), nonzeros, Σ centred², dead, Σ aux², smallest kept (BatchTopK), Σ inner levels' err² (Matryoshka)
    readonly Tensor _negBDec;              // [d_in]
    readonly Tensor _pre, _acts, _dPre;    // [B, n]; _pre becomes dActs once the aux loss has read it (not TopK's)
    readonly Tensor _err, _scratch;        // [B, d_out] each
    readonly Tensor? _xIn;                 // [B, d_in] when b_dec is subtracted from the input
    readonly Tensor? _values, _indices, _kept; // [B, k] TopK; _values becomes dActs at the kept entries in the backward
    readonly Tensor _colSum, _norms, _inv; // [n]
    readonly Tensor _rowSums;              // [max(B, n, d_in)]
    readonly Tensor _colMean;              // [d_out]
    Tensor? _zAux, _diff, _projection;     // [B, n], [B, d_out], [n, d_out]: allocated when first needed (JumpReLU: _zAux holds dActs)
    Tensor? _auxValues, _auxIndices, _auxGrad; // [B, d_in/2] each: aux-k's kept pre-activations, their features, their gradients
    readonly float[] _sums = new float[Slots];

    /// <summary>Allocates everything on <paramref name="backend"/>'s device; <see cref="Upload"/> fills it.</summary>
    /// <exception cref="InputError">The architecture does not train on a device yet.</exception>
    public DeviceSaeTraining(IComputeBackend backend, SparseDictionary dictionary, SaeTrainingOptions options)
    {
        (_b, _dict, _o) = (backend, dictionary, options);
        if (!Supports(dictionary.Activation))
            throw new InputError($"argument: --device: {dictionary.Architecture} dictionaries train on the CPU only so far (on {backend.Device}: topk, batchtopk, jumprelu, standard, crosscoder, crosscoder_batchtopk); drop --device {backend.Device}");
        var s = dictionary.Shape;
        (_dIn, _n, _dOut, _batch) = (s.DIn, s.DSae, s.DOut, options.BatchSize);
        _kind = dictionary.Activation switch
        {
            TopKActivation => Kind.TopK,
            BatchTopKActivation => Kind.BatchTopK,
            JumpReluActivation => Kind.JumpRelu,
            CrosscoderReluActivation => Kind.CrosscoderRelu,
            CrosscoderBatchTopKActivation => Kind.CrosscoderBatchTopK,
            _ => Kind.Relu,
        };
        _sources = dictionary.Activation switch
        {
            CrosscoderReluActivation c => c.Sources,
            CrosscoderBatchTopKActivation c => c.Sources,
            _ => 0,
        };
        if (_sources > 0 && _dOut % _sources != 0) throw new ArgumentException($"d_out = {_dOut} does not split into {_sources} sources", nameof(dictionary));
        _topK = _kind == Kind.TopK;
        _auxK = dictionary.Activation.SupportsAuxK;
        _k = dictionary.Activation switch
        {
            TopKActivation t => Math.Min(t.K, _n),
            BatchTopKActivation bt => (int)Math.Min((long)bt.K * _batch, (long)_batch * _n),
            CrosscoderBatchTopKActivation ct => (int)Math.Min((long)ct.K * _batch, (long)_batch * _n),
            _ => 0,
        };
        _bandwidth = dictionary.Activation is JumpReluActivation j ? j.Bandwidth : 0f;
        _widths = (dictionary.Activation as MatryoshkaBatchTopKActivation)?.Widths;
        _unitNorm = dictionary.Activation.UnitNormDecoder;
        var b = backend;
        DeviceParam New(string name, int rows, int cols) => new(name, b.Empty(rows, cols), b.Zeros(rows, cols), b.Zeros(rows, cols), b.Zeros(rows, cols), rows, cols);
        _encoderFeatureMajor = _topK;
        _wEnc = _encoderFeatureMajor ? New("W_enc", _n, _dIn) : New("W_enc", _dIn, _n);
        _bEnc = New("b_enc", 1, _n);
        _wDec = New("W_dec", _n, _dOut);
        _bDec = New("b_dec", 1, _dOut);
        _wSkip = s.Skip ? New("W_skip", _dIn, _dOut) : null;
        _logThreshold = _kind == Kind.JumpRelu ? New("log_threshold", 1, _n) : null;
        _params = new[] { _wEnc, _bEnc, _wDec, _bDec, _wSkip, _logThreshold }.OfType<DeviceParam>().ToArray();
        _update = new DeviceUpdate(b, _params, options.Beta1, options.Beta2, options.GradClipNorm);
        _since = b.Zeros(_n);
        _sinceNext = b.Zeros(_n);
        _deadBias = b.Empty(_n);
        _deadBiasNext = b.Empty(_n);
        _metrics = b.Zeros(Slots);
        _negBDec = b.Empty(_dOut);
        _pre = b.Empty(_batch, _n);
        _acts = b.Empty(_batch, _n);
        _dPre = b.Empty(_batch, _n);
        _err = b.Empty(_batch, _dOut);
        _scratch = b.Empty(_batch, _dOut);
        _xIn = s.ApplyBDecToInput ? b.Empty(_batch, _dIn) : null;
        if (_topK)
        {
            _values = b.Empty(_batch, _k);
            _indices = b.Empty(_batch, _k);
            _kept = b.Empty(_batch, _k);
        }
        _colSum = b.Empty(_n);
        _norms = b.Empty(_n);
        _inv = b.Empty(_n);
        _rowSums = b.Empty(Math.Max(Math.Max(_batch, _n), _dIn));
        _colMean = b.Empty(_dOut);
        if (_sources > 0)
        {
            _segNorms = b.Empty(_n * _sources);
            _segInv = b.Empty(_n * _sources);
        }
    }

    /// <summary>Whether <paramref name="activation"/> trains on a device (the built-in SAE and crosscoder architectures; not another subclass).</summary>
    public static bool Supports(SaeActivation activation) =>
        activation is TopKActivation or ReluActivation or BatchTopKActivation or JumpReluActivation or CrosscoderReluActivation or CrosscoderBatchTopKActivation;

    /// <summary>Dead features as the host last saw them (the aux loss's k and scale come from it).</summary>
    public int DeadCount { get; private set; }

    static float[] Of(SaeParameters p, string name) => name switch
    {
        "W_enc" => p.WEnc, "b_enc" => p.BEnc, "W_dec" => p.WDec, "b_dec" => p.BDec, "W_skip" => p.WSkip, "log_threshold" => p.LogThreshold,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, null),
    };

    bool Transposed(DeviceParam q) => _encoderFeatureMajor && ReferenceEquals(q, _wEnc);

    // A host buffer in the device's layout: W_enc [d_in, n] → [n, d_in] when it is kept feature-major.
    float[] DeviceLayout(DeviceParam q, float[] host) => Transposed(q) ? Transpose(host, _dIn, _n) : host;

    void ToHost(DeviceParam q, Tensor device, float[] host)
    {
        if (!Transposed(q)) { device.CopyTo(host); return; }
        var featureMajor = new float[host.Length];
        device.CopyTo(featureMajor);
        Transpose(featureMajor, _n, _dIn).CopyTo(host, 0);
    }

    static float[] Transpose(float[] a, int rows, int cols)
    {
        var t = new float[a.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                t[(long)c * rows + r] = a[(long)r * cols + c];
        return t;
    }

    void Put(Tensor into, float[] values, TransferKind kind) =>
        _b.CopyRows(_b.ToDevice(Tensor.FromArray(values, values.Length), kind), 0, values.Length, into, 0, values.Length, 1, values.Length);

    /// <summary>Copies parameters, moments and dead-feature counters to the device (counted as <see cref="TransferKind.Weights"/>).</summary>
    public void Upload(SaeParameters p, SaeParameters m, SaeParameters v, long[] sinceFired)
    {
        foreach (var q in _params)
        {
            Put(q.Value, DeviceLayout(q, Of(p, q.Name)), TransferKind.Weights);
            Put(q.M, DeviceLayout(q, Of(m, q.Name)), TransferKind.Weights);
            Put(q.V, DeviceLayout(q, Of(v, q.Name)), TransferKind.Weights);
        }
        float window = _o.DeadWindowTokens;
        var since = new float[_n];
        var bias = new float[_n];
        int dead = 0;
        for (int i = 0; i < _n; i++)
        {
            since[i] = Math.Min(sinceFired[i], _o.DeadWindowTokens); // past the window the count changes nothing
            bool isDead = since[i] >= window;
            bias[i] = isDead ? 0f : float.NegativeInfinity;
            if (isDead) dead++;
        }
        Put(_since, since, TransferKind.Weights);
        Put(_deadBias, bias, TransferKind.Weights);
        DeadCount = dead;
    }

    /// <summary>Copies parameters, moments and dead-feature counters back to the host (counted as <see cref="TransferKind.Data"/>).</summary>
    public void Download(SaeParameters p, SaeParameters m, SaeParameters v, long[] sinceFired)
    {
        foreach (var q in _params)
        {
            ToHost(q, q.Value, Of(p, q.Name));
            ToHost(q, q.M, Of(m, q.Name));
            ToHost(q, q.V, Of(v, q.Name));
        }
        var since = new float[_n];
        _since.CopyTo(since);
        for (int i = 0; i < _n; i++) sinceFired[i] = (long)since[i];
    }

    // Σ x² over [rows, cols] into metric slot `slot`: per-row dots, then their sum (many groups, not one).
    void SumOfSquares(Tensor x, int rows, int cols, int slot)
    {
        _b.RowDots(x, x, rows, cols, _rowSums);
        _b.SumMiddleAxis(_rowSums, 1, rows, 1, _metrics[slot]);
    }

    /// <summary>
    /// Steps 1–7 for one batch (already scaled): loss terms and gradients, the metric sums read back once.
    /// <paramref name="targets"/> null: the inputs are the targets (an SAE).
    /// </summary>
    public DeviceStepSums ForwardBackward(float[] inputs, float[]? targets, float sparsityCoefficient)
    {
        var b = _b;
        int batch = _batch, dIn = _dIn, n = _n, dOut = _dOut;
        // 1. batch
        var x = b.ToDevice(Tensor.FromArray(inputs, batch, dIn), TransferKind.Data);
        var target = targets is null ? x : b.ToDevice(Tensor.FromArray(targets, batch, dOut), TransferKind.Data);
        b.Fill(_metrics, 0f);

        // 2. forward
        var xIn = x;
        if (_xIn is not null)
        {
            xIn = _xIn;
            b.CopyRows(x, 0, dIn, xIn, 0, dIn, batch, dIn);
            b.Scale(_bDec.Value, -1f, _negBDec);
            b.AddRowVector(xIn, batch, _negBDec);
        }
        b.Linear(xIn, batch, dIn, _wEnc.Value, weightIsOutIn: _encoderFeatureMajor, n, _bEnc.Value, _pre);
        if (_topK)
        {
            b.TopKRows(_pre, batch, n, _k, _values!, _indices!);
            b.Activation("relu", _values!, _kept!);
            b.ScatterRows(_kept!, _indices!, batch, _k, n, _acts);
            b.CountAbove(_kept!, 0f, _metrics[2]);
        }
        else if (_kind == Kind.BatchTopK)
        {
            b.BatchTopK(_pre, batch * n, _k, _acts, _metrics[6]);
            b.CountAbove(_acts, 0f, _metrics[2]);
        }
        else if (_kind == Kind.CrosscoderBatchTopK)
        {
            // scaled = ReLU(pre)·N_i (N broadcast over the rows in _dPre, free until the backward); kept by BatchTopK into
            // _zAux (free until aux-k), whose smallest kept value is min f·N_i; acts = ReLU(pre) where kept
            CodeNorms();
            b.Activation("relu", _pre, _acts);
            b.Fill(_dPre, 0f);
            b.AddRowVector(_dPre, batch, _norms);
            b.Multiply(_acts, _dPre, _dPre);
            var kept = _zAux ??= b.Empty(batch, n);
            b.BatchTopK(_dPre, batch * n, _k, kept, _metrics[6]);
            b.ActivationBackward("relu", kept, _acts, _acts);
            b.CountAbove(_acts, 0f, _metrics[2]);
        }
        else if (_kind == Kind.JumpRelu)
        {
            b.JumpRelu(_pre, batch, n, _logThreshold!.Value, _acts);
            b.CountAbove(_acts, 0f, _metrics[2]);
            b.CountAbove(_acts, 0f, _metrics[1]); // the L0 penalty's count (θ > 0: acts > 0 ⇔ pre > θ)
        }
        else
        {
            b.Activation("relu", _pre, _acts);
            b.CountAbove(_acts, 0f, _metrics[2]);
        }
        if (_topK) b.SparseRowsTimes(_kept!, _indices!, batch, _k, _wDec.Value, n, dOut, _bDec.Value, _err);
        else b.Linear(_acts, batch, n, _wDec.Value, false, dOut, _bDec.Value, _err);
        if (_wSkip is not null) b.Gemm(false, false, batch, dOut, dIn, 1f, x, 0, dIn, _wSkip.Value, 0, dOut, 1f, _err, 0, dOut);
        var negTarget = _scratch;
        b.Scale(target, -1f, negTarget);
        b.Add(_err, negTarget, _err);

        // 3. metrics: Σ err², Σ (target − mean)², firing and dead features
        SumOfSquares(_err, batch, dOut, 0);
        b.SumMiddleAxis(target, 1, batch, dOut, _colMean);
        b.Scale(_colMean, -1f / batch, _colMean);
        b.CopyRows(target, 0, dOut, _scratch, 0, dOut, batch, dOut);
        b.AddRowVector(_scratch, batch, _colMean);
        SumOfSquares(_scratch, batch, dOut, 3);
        b.SumMiddleAxis(_acts, 1, batch, n, _colSum);
        b.UpdateSinceFired(_colSum, _since, batch, _o.DeadWindowTokens, _sinceNext, _deadBiasNext);
        b.CountAbove(_deadBiasNext, -1f, _metrics[4]);

        // 4. L1 = λ/B Σ_b Σ_i acts[b,i]·‖W_dec[i]‖  (standard)
        bool decoderGradWritten = false, dActsWritten = false;
        if (_kind == Kind.CrosscoderRelu)
        {
            // L1 = λ/B Σ_b Σ_i acts[b,i]·N_i;  d/dacts[b,i] = λ/B·N_i;  d/dW_dec^s[i] = λ/B·colsum_i·W_dec^s[i]/‖W_dec^s[i]‖
            float scale = sparsityCoefficient / batch;
            CodeNorms();
            b.RowDots(_colSum, _norms, 1, n, _metrics[1]);
            b.ScaleRows(_segInv!, n, _sources, _colSum, _segInv!);     // colsum_i / ‖W_dec^s[i]‖
            b.Scale(_segInv!, scale, _segInv!);
            b.ScaleRows(_wDec.Value, n * _sources, dOut / _sources, _segInv!, _wDec.Grad);
            b.Scale(_norms, scale, _norms);
            b.Fill(_pre, 0f);
            b.AddRowVector(_pre, batch, _norms);
            decoderGradWritten = dActsWritten = true;
        }
        else if (_kind == Kind.Relu)
        {
            float scale = sparsityCoefficient / batch;
            b.RowDots(_wDec.Value, _wDec.Value, n, dOut, _norms);
            b.NormScale(_norms, 1f, false, _inv);      // 1/‖W_dec[i]‖ (1 for a zero row)
            b.Multiply(_norms, _inv, _norms);          // ‖W_dec[i]‖
            b.RowDots(_colSum, _norms, 1, n, _metrics[1]);
            // d/dW_dec[i] = scale·colsum_i·W_dec[i]/‖W_dec[i]‖;  d/dacts[b,i] = scale·‖W_dec[i]‖
            b.Multiply(_colSum, _inv, _inv);
            b.Scale(_inv, scale, _inv);
            b.ScaleRows(_wDec.Value, n, dOut, _inv, _wDec.Grad);
            b.Scale(_norms, scale, _norms);
            b.Fill(_pre, 0f);
            b.AddRowVector(_pre, batch, _norms);
            decoderGradWritten = dActsWritten = true;
        }

        // 5. aux-k on the features dead at the start of this step
        float auxScale = 0f;
        bool aux = _auxK && _o.AuxKCoefficient > 0 && DeadCount > 0;
        int kAux = 0;
        if (aux)
        {
            int kNominal = Math.Max(1, dIn / 2);
            kAux = Math.Min(kNominal, DeadCount);
            auxScale = _o.AuxKCoefficient * Math.Min((float)DeadCount / kNominal, 1f);
            _zAux ??= b.Empty(batch, n); // scratch for the main activation's dPre, added to aux-k's below
            var diff = _diff ??= b.Empty(batch, dOut);
            // [B, k_aux] lives in the first B·k_aux elements of buffers sized for the largest k_aux (the dead count moves every step)
            var auxValues = _auxValues ??= b.Empty(batch, kNominal);
            var auxIndices = _auxIndices ??= b.Empty(batch, kNominal);
            var auxGrad = _auxGrad ??= b.Empty(batch, kNominal);
            b.CopyRows(_pre, 0, n, _dPre, 0, n, batch, n);
            b.AddRowVector(_dPre, batch, _deadBias);  // live features → −∞
            b.TopKRows(_dPre, batch, n, kAux, auxValues, auxIndices);
            b.Activation("relu", auxValues, auxValues); // z_aux at its k_aux entries per row (k_aux ≤ dead: all finite)
            // diff = ê − e = z_aux·W_dec + err: k_aux·d_out per row from the kept entries, not a dense [B, n]·[n, d_out]
            b.SparseRowsTimes(auxValues, auxIndices, batch, kAux, _wDec.Value, n, dOut, null, diff);
            b.Add(diff, _err, diff);
            SumOfSquares(diff, batch, dOut, 5);
            b.Scale(diff, 2f * auxScale / batch, diff);
            b.SparseRowsTransposeTimes(auxValues, auxIndices, batch, kAux, diff, n, dOut, _wDec.Grad, accumulate: false, distinctPerRow: true);
            // dPre at the aux entries: diff·W_dec[idx]ᵀ where z_aux > 0, zero elsewhere
            b.RowDotsAt(diff, batch, dOut, _wDec.Value, n, auxIndices, kAux, auxGrad);
            b.ActivationBackward("relu", auxValues, auxGrad, auxGrad);
            b.ScatterRows(auxGrad, auxIndices, batch, kAux, n, _dPre);
            decoderGradWritten = true;
        }

        // 6. backward: d recon = 2·err / B (Matryoshka: level by level, both decoder products per level: see MatryoshkaLevels)
        var dRecon = _err;
        // JumpReLU's threshold gradient reads pre after dActs exists: dActs goes elsewhere (it has no aux loss to need _zAux)
        var denseDActs = _topK ? null : _kind == Kind.JumpRelu ? (_zAux ??= b.Empty(batch, n)) : _pre;
        if (_widths is not null) MatryoshkaLevels(decoderGradWritten, dActsWritten, denseDActs!);
        else
        {
            b.Scale(_err, 2f / batch, dRecon);
            if (_topK) b.SparseRowsTransposeTimes(_kept!, _indices!, batch, _k, dRecon, n, dOut, _wDec.Grad, accumulate: decoderGradWritten, distinctPerRow: true);
            else b.Gemm(true, false, n, dOut, batch, 1f, _acts, 0, n, dRecon, 0, dOut, decoderGradWritten ? 1f : 0f, _wDec.Grad, 0, dOut);
        }
        b.SumMiddleAxis(dRecon, 1, batch, dOut, _bDec.Grad);
        if (_wSkip is not null) b.Gemm(true, false, dIn, dOut, batch, 1f, x, 0, dIn, dRecon, 0, dOut, 0f, _wSkip.Grad, 0, dOut);
        if (_topK)
        {
            // dActs at the kept entries only (_values is free since the forward's ReLU): dv[r, j] = dRecon[r]·W_dec[idx[r, j]]
            var dv = _values!;
            b.RowDotsAt(dRecon, batch, dOut, _wDec.Value, n, _indices!, _k, dv);
            b.ActivationBackward("relu", _kept!, dv, dv);
            // the scatter zeroes the rest of the row; with aux-k, _zAux (read by the aux gradients above) is free
            b.ScatterRows(dv, _indices!, batch, _k, n, aux ? _zAux! : _dPre);
            if (aux) b.Add(_dPre, _zAux!, _dPre);
        }
        else
        {
            var dActs = denseDActs!;
            if (_widths is null) b.Gemm(false, true, batch, n, dOut, 1f, dRecon, 0, dOut, _wDec.Value, 0, dOut, dActsWritten ? 1f : 0f, dActs, 0, n);
            if (_kind == Kind.JumpRelu)
                b.JumpReluThresholdGrad(_pre, dActs, batch, n, _logThreshold!.Value, _bandwidth, sparsityCoefficient / batch, _logThreshold.Grad);
            if (aux)
            {
                b.ActivationBackward("relu", _acts, dActs, _zAux!);
                b.Add(_dPre, _zAux!, _dPre);
            }
            else b.ActivationBackward("relu", _acts, dActs, _dPre);
        }
        if (!_encoderFeatureMajor) b.Gemm(true, false, dIn, n, batch, 1f, xIn, 0, dIn, _dPre, 0, n, 0f, _wEnc.Grad, 0, n);
        else
        {
            // dPre's nonzeros are dv at the kept entries, plus aux-k's at its entries: two sparse transposes, not x_inᵀ·dPre
            b.SparseRowsTransposeTimes(_values!, _indices!, batch, _k, xIn, n, dIn, _wEnc.Grad, accumulate: false, distinctPerRow: true);
            if (aux) b.SparseRowsTransposeTimes(_auxGrad!, _auxIndices!, batch, kAux, xIn, n, dIn, _wEnc.Grad, accumulate: true, distinctPerRow: true);
        }
        b.SumMiddleAxis(_dPre, 1, batch, n, _bEnc.Grad);
        // x_in = x − b_dec  ⇒  db_dec −= W_enc·db_enc
        if (_xIn is not null)
        {
            if (_encoderFeatureMajor) b.Gemm(true, false, dIn, 1, n, -1f, _wEnc.Value, 0, dIn, _bEnc.Grad, 0, 1, 1f, _bDec.Grad, 0, 1);
            else b.Gemm(false, false, dIn, 1, n, -1f, _wEnc.Value, 0, n, _bEnc.Grad, 0, 1, 1f, _bDec.Grad, 0, 1);
        }

        // 7. the one read back
        _metrics.CopyTo(_sums);
        return new DeviceStepSums(_sums[0], _sums[1], _sums[2], _sums[3], (int)_sums[4], _sums[5], auxScale,
            _kind is Kind.BatchTopK or Kind.CrosscoderBatchTopK ? _sums[6] : float.PositiveInfinity, _sums[7]);
    }

    // Crosscoders: _segNorms = ‖W_dec^s[i]‖, _segInv = its inverse (1 for a zero segment), _norms = N_i = Σ_s ‖W_dec^s[i]‖.
    void CodeNorms()
    {
        int d = _dOut / _sources;
        _b.RowDots(_wDec.Value, _wDec.Value, _n * _sources, d, _segNorms!);
        _b.NormScale(_segNorms!, 1f, false, _segInv!);
        _b.Multiply(_segNorms!, _segInv!, _segNorms!);
        _b.SumMiddleAxis(_segNorms!, _n, _sources, 1, _norms);
    }

    // SparseDictionary.MatryoshkaLevels on the device (dense acts, as BatchTopK's are): levels outermost first, the error
    // e of the level inwards being e minus the group's acts[:, c0..c1)·W_dec[c0..c1) (a GEMM on the column slice); D, the
    // gradient every reconstruction of the group's features receives, accumulates 2·e/B going inwards, and drives that
    // group's two decoder GEMMs. Leaves D_0 in _err (the gradient of b_dec and W_skip) and Σ inner e² in metric slot 7.
    void MatryoshkaLevels(bool decoderGradWritten, bool dActsWritten, Tensor dActs)
    {
        var b = _b;
        int batch = _batch, n = _n, dOut = _dOut;
        var widths = _widths!;
        var e = _levelError ??= b.Empty(batch, dOut);
        var scaled = _levelScratch ??= b.Empty(batch, dOut);
        b.CopyRows(_err, 0, dOut, e, 0, dOut, batch, dOut);
        var d = _err;
        b.Scale(_err, 2f / batch, d);
        for (int g = widths.Count - 1; g >= 0; g--)
        {
            int c0 = g == 0 ? 0 : widths[g - 1], c1 = widths[g], width = c1 - c0;
            if (g < widths.Count - 1)
            {
                b.RowDots(e, e, batch, dOut, _rowSums);
                b.SumMiddleAxis(_rowSums, 1, batch, 1, _metrics[7], accumulate: true);
                b.Scale(e, 2f / batch, scaled);
                b.Add(d, scaled, d);
            }
            b.Gemm(true, false, width, dOut, batch, 1f, _acts, c0, n, d, 0, dOut, decoderGradWritten ? 1f : 0f, _wDec.Grad, (long)c0 * dOut, dOut);
            b.Gemm(false, true, batch, width, dOut, 1f, d, 0, dOut, _wDec.Value, (long)c0 * dOut, dOut, dActsWritten ? 1f : 0f, dActs, c0, n);
            if (g > 0) b.Gemm(false, false, batch, dOut, width, -1f, _acts, c0, n, _wDec.Value, (long)c0 * dOut, dOut, 1f, e, 0, dOut);
        }
    }

    /// <summary>Step 8: decoder projection, clipping, Adam at <paramref name="lr"/> and 1-based <paramref name="adamStep"/>, renormalisation.</summary>
    public void Update(float lr, int adamStep, int deadAfter)
    {
        var b = _b;
        int n = _n, dOut = _dOut;
        // g_i ← g_i − (g_i·w_i) w_i for each unit decoder row w_i
        if (_unitNorm) _update.ProjectOutRadial(_wDec.Grad, _wDec.Value, n, dOut, _inv, _projection ??= b.Empty(n, dOut));
        _update.ClipAndStep(lr, adamStep);
        if (_unitNorm) _update.NormalizeRows(_wDec.Value, n, dOut, _inv);
        (_since, _sinceNext) = (_sinceNext, _since);
        (_deadBias, _deadBiasNext) = (_deadBiasNext, _deadBias);
        DeadCount = deadAfter;
    }
}
