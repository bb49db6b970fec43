// CltTrainer's step with every tensor on an IComputeBackend's device (standard ReLU with the tanh or L1 penalty, TopK,
// BatchTopK, JumpReLU). The math is CrossLayerTranscoder.ForwardBackward's and CltTrainer.Step's; only the order of
// some sums differs.
//
// Shape legend: L = n_layers, B = batch rows, n = d_sae, R_ℓ = (L − ℓ)·d_out (one source layer's concatenated decoder row).
// Layout on the device: W_enc [L, d_in, n], b_enc [L, n], b_dec [L, d_out] and log_threshold [L, n] are stacked (a layer
// is a view); W_dec[ℓ] [n, R_ℓ] is one tensor per source layer. The batch keeps the host's rows: x [B, L·d_in],
// y [B, L·d_out], and the error E [B, L·d_out] has y's layout, so that source layer ℓ's decoder writes columns ℓ·d_out…
// of E in one GEMM (its targets ℓ…L−1 are contiguous there and in its decoder row).
//
// Per step:
//   1. upload x and y: the one copy in (two tensors)
//   2. E = b_dec − y; per layer ℓ: pre = x[ℓ]·W_enc[ℓ] + b_enc[ℓ];  acts = f(pre)  (TopK: top-k, ReLU, scatter;
//      BatchTopK: the batch·k largest of the layer's batch, ReLU'd, and the smallest kept value; JumpReLU; ReLU);
//      E[:, ℓ·d_out:] += acts·W_dec[ℓ] (TopK: SparseRowsTimes from the k kept entries); nonzero count and per-feature
//      column sums (firing)
//   3. metrics into a device matrix [6, L]: per target Σ err², Σ (y − ȳ)²; per layer nonzeros, sparsity, smallest kept;
//      dead features after this step
//   4. backward: dE = 2·E/B, db_dec = colsum(dE); per layer: the sparsity term (standard: Σ φ(a·‖W_dec[i]‖) with its
//      gradients into dActs and dW_dec; JumpReLU: the L0 count, whose only gradient is the threshold's),
//      dW_dec (+)= actsᵀ·dE[:, ℓ·d_out:], dActs (+)= dE[:, ℓ·d_out:]·W_decᵀ, dPre = dActs·1[acts > 0]
//      (JumpReLU: and its log-threshold gradient), dW_enc = x[ℓ]ᵀ·dPre, db_enc = colsum(dPre). TopK takes the sparse
//      route of DeviceSaeTraining: SparseRowsTransposeTimes for dW_dec, RowDotsAt for dActs at the kept entries only.
//   5. read the metric matrix back: the one copy out (the trainer stops here when the loss is not finite)
//   6. update: project W_dec row gradients (unit-norm decoders), clip the global gradient norm, Adam, renormalise
//      W_dec rows, commit the dead-feature counters
// BatchTopK's inference thresholds are host numbers: the trainer folds each layer's smallest kept value (read back with
// the sums) into them, as BatchTopKActivation.AfterTrainingForward does on the host.
using Loupe.Dictionaries.Sae;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>The raw per-layer sums one device step reads back (one copy), from which <see cref="CltTrainer"/> forms its metrics.</summary>
/// <param name="SquaredError">Per target layer, Σ err².</param>
/// <param name="CenteredSquares">Per target layer, Σ (y − ȳ)².</param>
/// <param name="Nonzero">Per source layer, active entries.</param>
/// <param name="Sparsity">Per source layer, Σ φ (standard) or the count above θ (JumpReLU), before λ/B.</param>
/// <param name="MinKept">Per source layer, BatchTopK's smallest kept value (+∞ otherwise).</param>
/// <param name="DeadAfter">Features dead after this step.</param>
internal sealed record DeviceCltSums(float[] SquaredError, float[] CenteredSquares, float[] Nonzero, float[] Sparsity, float[] MinKept, int DeadAfter);

/// <summary>Parameters, Adam moments, dead-feature counters and step buffers of a cross-layer transcoder on a device.</summary>
internal sealed class DeviceCltTraining
{
    enum Kind { Relu, TopK, BatchTopK, JumpRelu }
    const int Rows = 6; // metric rows, see step 3
    readonly IComputeBackend _b;
    readonly CltTrainingOptions _o;
    readonly CltShape _s;
    readonly int _batch, _k;
    readonly Kind _kind;
    readonly bool _unitNorm;
    readonly float _bandwidth;
    readonly DeviceParam _wEnc, _bEnc, _bDec;
    readonly DeviceParam[] _wDec;         // [L] W_dec[ℓ] [n, R_ℓ]
    readonly DeviceParam? _logThreshold;
    readonly DeviceParam[] _params;       // everything Adam updates
    readonly DeviceUpdate _update;
    Tensor _since, _sinceNext;            // [L·n] tokens since each feature fired, saturated at the window
    readonly Tensor _deadBias;            // [L·n] 0 dead, −∞ live (UpdateSinceFired's second output; only counted here: no aux-k)
    readonly Tensor _metrics;             // [Rows, L]
    readonly Tensor[] _pre, _acts;        // [L][B, n]
    readonly Tensor _dActs, _dPre;        // [B, n]
    readonly Tensor _err, _scratch;       // [B, L·d_out]
    readonly Tensor _colOut;              // [L·d_out]
    readonly Tensor _colSum;              // [L, n] Σ_b acts (firing; the L1 penalty's dNorm)
    readonly Tensor[] _kept, _indices;    // TopK: [L][B, k] each layer's kept values (ReLU'd) and their columns
    readonly Tensor? _dKept;              // TopK: [B, k] dActs at the kept entries
    readonly Tensor[] _rows;              // TopK: [L] views [B, R_ℓ] of one buffer: a layer's decoded rows, then its slice of dE
    readonly Tensor _norms, _inv, _col;   // [n]
    readonly Tensor[] _projection;        // [L] views [n, R_ℓ] of one buffer the size of W_dec[0] (unit-norm decoders)
    readonly float[] _sums;


    /// <summary>Whether <paramref name="activation"/> trains on a device (the four built-in architectures; not another subclass).</summary>
    public static bool Supports(SaeActivation activation) => DeviceSaeTraining.Supports(activation);

    /// <summary>Allocates everything on <paramref name="backend"/>'s device; <see cref="Upload"/> fills it.</summary>
    public DeviceCltTraining(IComputeBackend backend, CrossLayerTranscoder clt, CltTrainingOptions options)
    {
        (_b, _o, _s) = (backend, options, clt.Shape);
        int L = _s.Layers, n = _s.DSae, dIn = _s.DIn, dOut = _s.DOut, batch = options.Base.BatchSize;
        _batch = batch;
        _kind = clt.Activation switch
        {
            TopKActivation => Kind.TopK,
            BatchTopKActivation => Kind.BatchTopK,
            JumpReluActivation => Kind.JumpRelu,
            ReluActivation => Kind.Relu,
            _ => throw new ArgumentException($"{clt.Architecture} has no device kernels", nameof(clt)),
        };
        _k = clt.Activation switch
        {
            TopKActivation t => Math.Min(t.K, n),
            BatchTopKActivation bt => (int)Math.Min((long)bt.K * batch, (long)batch * n),
            _ => 0,
        };
        _bandwidth = clt.Activation is JumpReluActivation j ? j.Bandwidth : 0f;
        _unitNorm = clt.Activation.UnitNormDecoder;
        var b = backend;
        DeviceParam New(string name, int rows, int cols, params int[] shape) => new(name, b.Empty(shape), b.Zeros(shape), b.Zeros(shape), b.Zeros(shape), rows, cols);
        _wEnc = New("W_enc", L * dIn, n, L, dIn, n);
        _bEnc = New("b_enc", L, n, L, n);
        _bDec = New("b_dec", L, dOut, L, dOut);
        _wDec = Enumerable.Range(0, L).Select(l => New($"W_dec[{l}]", n, _s.Targets(l) * dOut, n, _s.Targets(l) * dOut)).ToArray();
        _logThreshold = _kind == Kind.JumpRelu ? New("log_threshold", L, n, L, n) : null;
        _params = new[] { _wEnc, _bEnc, _bDec, _logThreshold }.OfType<DeviceParam>().Concat(_wDec).ToArray();
        _update = new DeviceUpdate(b, _params, options.Base.Beta1, options.Base.Beta2, options.Base.GradClipNorm);
        _since = b.Zeros(L * n);
        _sinceNext = b.Zeros(L * n);
        _deadBias = b.Empty(L * n);
        _metrics = b.Zeros(Rows, L);
        _pre = Enumerable.Range(0, L).Select(_ => b.Empty(batch, n)).ToArray();
        _acts = Enumerable.Range(0, L).Select(_ => b.Empty(batch, n)).ToArray();
        _dActs = b.Empty(batch, n);
        _dPre = b.Empty(batch, n);
        _err = b.Empty(batch, L * dOut);
        _scratch = b.Empty(batch, L * dOut);
        _colOut = b.Empty(L * dOut);
        _colSum = b.Empty(L, n);
        if (_kind == Kind.TopK)
        {
            _kept = Enumerable.Range(0, L).Select(_ => b.Empty(batch, _k)).ToArray();
            _indices = Enumerable.Range(0, L).Select(_ => b.Empty(batch, _k)).ToArray();
            _dKept = b.Empty(batch, _k);
            var rows = b.Empty(batch * L * dOut).Storage;
            _rows = Enumerable.Range(0, L).Select(l => new Tensor(rows.Slice(0, (long)batch * _s.Targets(l) * dOut), batch, _s.Targets(l) * dOut)).ToArray();
        }
        else _kept = _indices = _rows = [];
        _norms = b.Empty(n);
        _inv = b.Empty(n);
        _col = b.Empty(n);
        if (_unitNorm)
        {
            var buffer = b.Empty(n * L * dOut).Storage;
            _projection = Enumerable.Range(0, L).Select(l => new Tensor(buffer.Slice(0, (long)n * _s.Targets(l) * dOut), n, _s.Targets(l) * dOut)).ToArray();
        }
        else _projection = [];
        _sums = new float[Rows * L];
    }

    /// <summary>Each host buffer of a CltParameters beside its device tensor (a view of a stacked one) and moments.</summary>
    IEnumerable<(Func<CltParameters, float[]> Host, Tensor Value, Tensor M, Tensor V)> Buffers()
    {
        for (int l = 0; l < _s.Layers; l++)
        {
            int layer = l;
            yield return (p => p.WEnc[layer], _wEnc.Value[l], _wEnc.M[l], _wEnc.V[l]);
            yield return (p => p.BEnc[layer], _bEnc.Value[l], _bEnc.M[l], _bEnc.V[l]);
            yield return (p => p.WDec[layer], _wDec[l].Value, _wDec[l].M, _wDec[l].V);
            yield return (p => p.BDec[layer], _bDec.Value[l], _bDec.M[l], _bDec.V[l]);
            if (_logThreshold is { } t) yield return (p => p.Act[layer].LogThreshold, t.Value[l], t.M[l], t.V[l]);
        }
    }

    void Put(Tensor into, float[] values) =>
        _b.CopyRows(_b.ToDevice(Tensor.FromArray(values, values.Length), TransferKind.Weights), 0, values.Length, into, 0, values.Length, 1, values.Length);

    /// <summary>Copies parameters, moments and dead-feature counters to the device (counted as <see cref="TransferKind.Weights"/>).</summary>
    public void Upload(CltParameters p, CltParameters m, CltParameters v, long[] sinceFired)
    {
        foreach (var (host, value, mt, vt) in Buffers())
        {
            Put(value, host(p));
            Put(mt, host(m));
            Put(vt, host(v));
        }
        // past the window the count changes nothing, and a float holds it exactly below 2²⁴
        Put(_since, sinceFired.Select(s => (float)Math.Min(s, _o.Base.DeadWindowTokens)).ToArray());
    }

    /// <summary>Copies parameters, moments and dead-feature counters back to the host (counted as <see cref="TransferKind.Data"/>).</summary>
    public void Download(CltParameters p, CltParameters m, CltParameters v, long[] sinceFired)
    {
        foreach (var (host, value, mt, vt) in Buffers())
        {
            value.CopyTo(host(p));
            mt.CopyTo(host(m));
            vt.CopyTo(host(v));
        }
        var since = new float[sinceFired.Length];
        _since.CopyTo(since);
        for (int i = 0; i < since.Length; i++) sinceFired[i] = (long)since[i];
    }

    Tensor Metric(int row, int layer) => _metrics[row][layer];

    /// <summary>Steps 1–5 for one batch: loss terms and gradients, the metric sums read back once.</summary>
    public DeviceCltSums ForwardBackward(float[] inputs, float[] targets, float sparsityCoefficient)
    {
        var b = _b;
        int L = _s.Layers, n = _s.DSae, dIn = _s.DIn, dOut = _s.DOut, batch = _batch, rowIn = _s.RowIn, rowOut = _s.RowOut;
        // 1.
        var x = b.ToDevice(Tensor.FromArray(inputs, batch, rowIn), TransferKind.Data);
        var y = b.ToDevice(Tensor.FromArray(targets, batch, rowOut), TransferKind.Data);
        b.Fill(_metrics, 0f);
        if (_kind != Kind.BatchTopK) b.Fill(_metrics[4], float.PositiveInfinity);

        // 2. E = b_dec − y + Σ_ℓ acts[ℓ]·W_dec[ℓ] (at columns ℓ·d_out…)
        b.Scale(y, -1f, _err);
        b.AddRowVector(_err, batch, _bDec.Value);
        for (int l = 0; l < L; l++)
        {
            var (pre, acts) = (_pre[l], _acts[l]);
            b.Gemm(false, false, batch, n, dIn, 1f, x, l * dIn, rowIn, _wEnc.Value, (long)l * dIn * n, n, 0f, pre, 0, n);
            b.AddRowVector(pre, batch, _bEnc.Value[l]);
            switch (_kind)
            {
                case Kind.TopK:
                    b.TopKRows(pre, batch, n, _k, _kept[l], _indices[l]);
                    b.Activation("relu", _kept[l], _kept[l]);
                    b.ScatterRows(_kept[l], _indices[l], batch, _k, n, acts);
                    break;
                case Kind.BatchTopK:
                    b.BatchTopK(pre, batch * n, _k, acts, Metric(4, l));
                    break;
                case Kind.JumpRelu:
                    b.JumpRelu(pre, batch, n, _logThreshold!.Value[l], acts);
                    b.CountAbove(acts, 0f, Metric(3, l)); // the L0 penalty's count (θ > 0: acts > 0 ⇔ pre > θ)
                    break;
                default:
                    b.Activation("relu", pre, acts);
                    break;
            }
            b.CountAbove(acts, 0f, Metric(2, l));
            b.SumMiddleAxis(acts, 1, batch, n, _colSum[l]); // acts ≥ 0: a positive column sum ⇔ the feature fired
            int width = _s.Targets(l) * dOut;
            if (_kind == Kind.TopK)
            {
                // k·R_ℓ per row from the kept entries instead of n·R_ℓ, then added into E's columns ℓ·d_out…
                b.SparseRowsTimes(_kept[l], _indices[l], batch, _k, _wDec[l].Value, n, width, null, _rows[l]);
                b.CopyRows(_rows[l], 0, width, _err, l * dOut, rowOut, batch, width, accumulate: true);
            }
            else b.Gemm(false, false, batch, width, n, 1f, acts, 0, n, _wDec[l].Value, 0, width, 1f, _err, l * dOut, rowOut);
        }

        // 3. per target Σ err² and Σ (y − ȳ)²; dead features
        SumPerTarget(_err, 0);
        b.SumMiddleAxis(y, 1, batch, rowOut, _colOut);
        b.Scale(_colOut, -1f / batch, _colOut);
        b.CopyRows(y, 0, rowOut, _scratch, 0, rowOut, batch, rowOut);
        b.AddRowVector(_scratch, batch, _colOut);
        SumPerTarget(_scratch, 1);
        b.UpdateSinceFired(_colSum, _since, batch, _o.Base.DeadWindowTokens, _sinceNext, _deadBias);
        b.CountAbove(_deadBias, -1f, Metric(5, 0));

        // 4. backward
        var dE = _err;
        b.Scale(_err, 2f / batch, dE);
        b.SumMiddleAxis(dE, 1, batch, rowOut, _bDec.Grad);
        float scale = sparsityCoefficient / batch;
        for (int l = 0; l < L; l++)
        {
            var (pre, acts, wDec) = (_pre[l], _acts[l], _wDec[l]);
            int width = _s.Targets(l) * dOut;
            bool penalty = _kind == Kind.Relu;
            if (penalty) ReluPenalty(l, scale);
            if (_kind == Kind.TopK)
            {
                // TopK's gradient flows only at the kept entries: W_dec's gradient from their transposed lists, dActs as k dots per row
                b.CopyRows(dE, l * dOut, rowOut, _rows[l], 0, width, batch, width);
                b.SparseRowsTransposeTimes(_kept[l], _indices[l], batch, _k, _rows[l], n, width, wDec.Grad, distinctPerRow: true); // top-k indices
                b.RowDotsAt(_rows[l], batch, width, wDec.Value, n, _indices[l], _k, _dKept!);
                b.ActivationBackward("relu", _kept[l], _dKept!, _dKept!);
                b.ScatterRows(_dKept!, _indices[l], batch, _k, n, _dPre);
                EncoderGradients(x, l);
                continue;
            }
            b.Gemm(true, false, n, width, batch, 1f, acts, 0, n, dE, l * dOut, rowOut, penalty ? 1f : 0f, wDec.Grad, 0, width);
            b.Gemm(false, true, batch, n, width, 1f, dE, l * dOut, rowOut, wDec.Value, 0, width, penalty ? 1f : 0f, _dActs, 0, n);
            if (_kind == Kind.JumpRelu)
                b.JumpReluThresholdGrad(pre, _dActs, batch, n, _logThreshold!.Value[l], _bandwidth, scale, _logThreshold.Grad[l]);
            b.ActivationBackward("relu", acts, _dActs, _dPre); // every activation here passes gradient exactly where acts > 0
            EncoderGradients(x, l);
        }

        // 5. the one read back
        _metrics.CopyTo(_sums);
        float[] Row(int r) => _sums.AsSpan(r * L, L).ToArray();
        return new DeviceCltSums(Row(0), Row(1), Row(2), Row(3), Row(4), (int)_sums[5 * L]);
    }

    // pre = x[ℓ]·W_enc[ℓ] + b_enc[ℓ]: dW_enc[ℓ] = x[ℓ]ᵀ·dPre, db_enc[ℓ] = colsum(dPre)
    void EncoderGradients(Tensor x, int l)
    {
        int n = _s.DSae, dIn = _s.DIn;
        _b.Gemm(true, false, dIn, n, _batch, 1f, x, l * dIn, _s.RowIn, _dPre, 0, n, 0f, _wEnc.Grad, (long)l * dIn * n, n);
        _b.SumMiddleAxis(_dPre, 1, _batch, n, _bEnc.Grad[l]);
    }

    // Σ over rows and each target's d_out columns of m² ([B, L·d_out]) into metric row `row`: squares, column sums, then per target.
    void SumPerTarget(Tensor m, int row)
    {
        _b.Multiply(m, m, _scratch);
        _b.SumMiddleAxis(_scratch, 1, _batch, _s.RowOut, _colOut);
        _b.SumMiddleAxis(_colOut, _s.Layers, _s.DOut, 1, _metrics[row]);
    }

    // The standard CLT's penalty of source layer ℓ, λ/B Σ_b Σ_i φ(a·n_i) with n_i = ‖W_dec[ℓ][i]‖ (CrossLayerTranscoder.ReluPenalty):
    // Σ φ into metric (3, ℓ); ∂/∂acts = λ/B·φ'(a·n)·n written into dActs; ∂/∂W_dec[ℓ][i] = λ/B·Σ_b φ'(a·n)·a · W_dec[ℓ][i]/n_i written
    // into W_dec[ℓ]'s gradient. φ = tanh(c·u) is c·SoftCap(u, 1/c), and SoftCapBackward gives (1 − tanh²).
    void ReluPenalty(int l, float scale)
    {
        var b = _b;
        int n = _s.DSae, batch = _batch, width = _s.Targets(l) * _s.DOut;
        var (acts, wDec) = (_acts[l], _wDec[l]);
        b.RowDots(wDec.Value, wDec.Value, n, width, _norms);
        b.NormScale(_norms, 1f, false, _inv);     // 1/n_i (1 for a zero row, whose gradient is 0 anyway)
        b.Multiply(_norms, _inv, _norms);         // n_i
        b.Fill(_dActs, 0f);
        b.AddRowVector(_dActs, batch, _norms);    // [B, n]: n_i in every row
        if (_o.Penalty == CltPenalty.Tanh)
        {
            float c = _o.TanhScale, cap = 1f / c;
            var th = _dPre;                       // free until the activation's backward
            b.Multiply(acts, _dActs, th);         // u
            b.SoftCap(th, cap, th);               // tanh(c·u)/c
            b.SumMiddleAxis(th, 1, batch, n, _col);
            b.SumMiddleAxis(_col, 1, n, 1, Metric(3, l));
            b.SoftCapBackward(th, _dActs, cap, _dActs);   // n·(1 − tanh²)
            b.Scale(_dActs, scale * c, _dActs);
            b.SoftCapBackward(th, acts, cap, th);          // a·(1 − tanh²)
            b.SumMiddleAxis(th, 1, batch, n, _col);
            b.Scale(_col, c, _col);                        // Σ_b φ'(a·n)·a
        }
        else
        {
            b.RowDots(_colSum[l], _norms, 1, n, Metric(3, l));
            b.Scale(_dActs, scale, _dActs);
            b.CopyRows(_colSum[l], 0, n, _col, 0, n, 1, n);  // Σ_b a
        }
        b.Multiply(_col, _inv, _col);
        b.Scale(_col, scale, _col);
        b.ScaleRows(wDec.Value, n, width, _col, wDec.Grad);
    }

    /// <summary>Step 6: decoder projection, clipping, Adam at <paramref name="lr"/> and 1-based <paramref name="adamStep"/>, renormalisation.</summary>
    public void Update(float lr, int adamStep)
    {
        int n = _s.DSae;
        // g_i ← g_i − (g_i·w_i) w_i for each unit concatenated decoder row w_i
        if (_unitNorm)
            for (int l = 0; l < _s.Layers; l++)
                _update.ProjectOutRadial(_wDec[l].Grad, _wDec[l].Value, n, _s.Targets(l) * _s.DOut, _inv, _projection[l]);
        _update.ClipAndStep(lr, adamStep);
        if (_unitNorm)
            for (int l = 0; l < _s.Layers; l++)
                _update.NormalizeRows(_wDec[l].Value, n, _s.Targets(l) * _s.DOut, _inv);
        (_since, _sinceNext) = (_sinceNext, _since);
    }
}
