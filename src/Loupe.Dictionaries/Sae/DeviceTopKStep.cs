// One Adam training step of a TopK SAE with every tensor on an IComputeBackend.
//
// The math is SparseDictionary.ForwardBackward's for TopKActivation on SaeShape.Sae with apply_b_dec_to_input
// (no aux-k, no decoder normalisation), followed by SaeTrainer's Adam update:
//   x_in  = x − b_dec                         [batch, d_in]
//   pre   = x_in·W_enc + b_enc                [batch, d_sae]
//   acts  = scatter(relu(topk_k(pre)))        [batch, d_sae]
//   recon = acts·W_dec + b_dec;  err = recon − x
//   loss  = Σ err² / batch
// Backward:
//   d recon = 2·err / batch
//   dW_dec = actsᵀ·d recon,  db_dec = Σ_b d recon − W_enc·db_enc   (b_dec also enters through x_in)
//   d pre  = (d recon·W_decᵀ) masked to the active entries
//   dW_enc = x_inᵀ·d pre,    db_enc = Σ_b d pre
// The decoder products run dense (the GPU's GEMMs beat a gather at these sizes); the loss is the one number read back.
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Sae;

/// <summary>
/// Forward, backward and Adam update of a TopK sparse autoencoder with parameters, Adam moments and every
/// intermediate on <see cref="IComputeBackend"/>'s device: a step reads back only its loss. Parameters go up once
/// (<see cref="TransferKind.Weights"/>) and come back only through <see cref="CopyTo"/>.
/// </summary>
public sealed class DeviceTopKStep
{
    readonly IComputeBackend _backend;
    readonly float _beta1, _beta2, _eps;
    readonly Param _wEnc, _bEnc, _wDec, _bDec;
    readonly Tensor _negBDec; // [d_in] −b_dec, for x_in = x + (−b_dec)
    Workspace? _work;

    /// <summary>Uploads <paramref name="dictionary"/>'s parameters and zero Adam moments to <paramref name="backend"/>'s device.</summary>
    /// <param name="backend">Where the step runs.</param>
    /// <param name="dictionary">A TopK SAE (<see cref="SaeShape.Sae"/> with apply_b_dec_to_input, no skip).</param>
    /// <param name="beta1">Adam β₁.</param>
    /// <param name="beta2">Adam β₂.</param>
    /// <param name="eps">Adam ε (SaeTrainer uses 1e-8).</param>
    /// <exception cref="ArgumentException">The dictionary is not a TopK SAE of that shape.</exception>
    public DeviceTopKStep(IComputeBackend backend, SparseDictionary dictionary, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f)
    {
        _backend = backend ?? throw new ArgumentNullException(nameof(backend));
        ArgumentNullException.ThrowIfNull(dictionary);
        if (dictionary.Activation is not TopKActivation topK)
            throw new ArgumentException($"a device TopK step needs a TopK dictionary, not {dictionary.Architecture}", nameof(dictionary));
        var s = dictionary.Shape;
        if (!s.ApplyBDecToInput || s.Skip || s.DIn != s.DOut)
            throw new ArgumentException($"a device TopK step trains an SAE with apply_b_dec_to_input and no skip, not {s}", nameof(dictionary));
        DIn = s.DIn;
        DSae = s.DSae;
        K = Math.Min(topK.K, s.DSae);
        (_beta1, _beta2, _eps) = (beta1, beta2, eps);
        var p = dictionary.P;
        _wEnc = Upload(p.WEnc, DIn, DSae);
        _bEnc = Upload(p.BEnc, DSae);
        _wDec = Upload(p.WDec, DSae, DIn);
        _bDec = Upload(p.BDec, DIn);
        _negBDec = backend.Empty(DIn);
    }

    /// <summary>Input (and output) width.</summary>
    public int DIn { get; }

    /// <summary>Dictionary size.</summary>
    public int DSae { get; }

    /// <summary>Active features per row.</summary>
    public int K { get; }

    /// <summary>A parameter with its gradient and Adam moments, all on the device.</summary>
    sealed record Param(Tensor Value, Tensor Grad, Tensor M, Tensor V);

    Param Upload(float[] values, params int[] shape) => new(
        _backend.ToDevice(Tensor.FromArray((float[])values.Clone(), shape), TransferKind.Weights),
        _backend.Zeros(shape), _backend.Zeros(shape), _backend.Zeros(shape));

    /// <summary>Buffers of one batch size, reused between steps.</summary>
    sealed class Workspace(IComputeBackend b, int batch, int dIn, int dSae, int k)
    {
        public readonly int Batch = batch;
        public readonly Tensor XIn = b.Empty(batch, dIn);
        public readonly Tensor PreOrDActs = b.Empty(batch, dSae); // pre until top-k, then d acts
        public readonly Tensor Values = b.Empty(batch, k);
        public readonly Tensor Indices = b.Empty(batch, k);
        public readonly Tensor Kept = b.Empty(batch, k);          // relu(values)
        public readonly Tensor Acts = b.Empty(batch, dSae);
        public readonly Tensor DPre = b.Empty(batch, dSae);
        public readonly Tensor Err = b.Empty(batch, dIn);         // recon − x, then d recon
        public readonly Tensor Scratch = b.Empty(batch, dIn);     // −x, then err²
    }

    /// <summary>
    /// One training step on a batch <c>[batch, d_in]</c> already on the device: gradients of the MSE, then Adam at
    /// learning rate <paramref name="lr"/> and 1-based step <paramref name="step"/> (SaeTrainer's step index + 1).
    /// Returns the loss Σ (recon − x)² / batch before the update — the only value read back.
    /// </summary>
    /// <exception cref="ArgumentException">x is not on this backend's device or is not whole rows of d_in.</exception>
    public double Step(Tensor x, float lr, int step)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.Device != _backend.Device) throw new ArgumentException($"x is on {x.Device}; the step runs on {_backend.Device}", nameof(x));
        if (x.Length == 0 || x.Length % DIn != 0) throw new ArgumentException($"x has {x.Length} elements, not whole rows of d_in = {DIn}", nameof(x));
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "Adam steps count from 1");
        int batch = x.Length / DIn;
        var w = _work is { } cached && cached.Batch == batch ? cached : _work = new Workspace(_backend, batch, DIn, DSae, K);
        var b = _backend;

        // forward
        b.CopyRows(x, 0, DIn, w.XIn, 0, DIn, batch, DIn);
        b.Scale(_bDec.Value, -1f, _negBDec);
        b.AddRowVector(w.XIn, batch, _negBDec);
        b.Linear(w.XIn, batch, DIn, _wEnc.Value, false, DSae, _bEnc.Value, w.PreOrDActs);
        b.TopKRows(w.PreOrDActs, batch, DSae, K, w.Values, w.Indices);
        b.Activation("relu", w.Values, w.Kept);
        b.ScatterRows(w.Kept, w.Indices, batch, K, DSae, w.Acts);
        b.Linear(w.Acts, batch, DSae, _wDec.Value, false, DIn, _bDec.Value, w.Err);
        b.Scale(x, -1f, w.Scratch);
        b.Add(w.Err, w.Scratch, w.Err);
        b.Multiply(w.Err, w.Err, w.Scratch);

        // backward
        var dRecon = w.Err;
        b.Scale(w.Err, 2f / batch, dRecon);
        b.Gemm(true, false, DSae, DIn, batch, 1f, w.Acts, 0, DSae, dRecon, 0, DIn, 0f, _wDec.Grad, 0, DIn);
        b.SumMiddleAxis(dRecon, 1, batch, DIn, _bDec.Grad);
        var dActs = w.PreOrDActs;
        b.Gemm(false, true, batch, DSae, DIn, 1f, dRecon, 0, DIn, _wDec.Value, 0, DIn, 0f, dActs, 0, DSae);
        b.ActivationBackward("relu", w.Acts, dActs, w.DPre);
        b.Gemm(true, false, DIn, DSae, batch, 1f, w.XIn, 0, DIn, w.DPre, 0, DSae, 0f, _wEnc.Grad, 0, DSae);
        b.SumMiddleAxis(w.DPre, 1, batch, DSae, _bEnc.Grad);
        // x_in = x − b_dec  ⇒  db_dec −= Σ_b d pre[b]·W_encᵀ = W_enc·db_enc
        b.Gemm(false, false, DIn, 1, DSae, -1f, _wEnc.Value, 0, DSae, _bEnc.Grad, 0, 1, 1f, _bDec.Grad, 0, 1);

        foreach (var p in new[] { _wEnc, _bEnc, _wDec, _bDec })
            b.AdamStep(p.Value, p.Grad, p.M, p.V, lr, _beta1, _beta2, _eps, step);
        return b.Sum(w.Scratch) / batch;
    }

    /// <summary>
    /// The last step's gradient of a parameter by SAELens name (<c>W_enc</c>, <c>b_enc</c>, <c>W_dec</c>, <c>b_dec</c>),
    /// on the device (zero before the first step).
    /// </summary>
    public Tensor Gradient(string name) => ParamNamed(name).Grad;

    /// <summary>A parameter's current value on the device, by SAELens name.</summary>
    public Tensor Parameter(string name) => ParamNamed(name).Value;

    Param ParamNamed(string name) => name switch
    {
        "W_enc" => _wEnc,
        "b_enc" => _bEnc,
        "W_dec" => _wDec,
        "b_dec" => _bDec,
        _ => throw new ArgumentException($"no parameter {name}; W_enc, b_enc, W_dec, b_dec", nameof(name)),
    };

    /// <summary>Copies the parameters into <paramref name="dictionary"/> (device→host reads, counted as <see cref="TransferKind.Data"/>).</summary>
    /// <exception cref="ArgumentException">The dictionary's shape differs.</exception>
    public void CopyTo(SparseDictionary dictionary)
    {
        ArgumentNullException.ThrowIfNull(dictionary);
        if (dictionary.Shape.DIn != DIn || dictionary.Shape.DSae != DSae || dictionary.Shape.DOut != DIn)
            throw new ArgumentException($"dictionary shape {dictionary.Shape} differs from the step's d_in {DIn}, d_sae {DSae}", nameof(dictionary));
        var p = dictionary.P;
        _wEnc.Value.CopyTo(p.WEnc);
        _bEnc.Value.CopyTo(p.BEnc);
        _wDec.Value.CopyTo(p.WDec);
        _bDec.Value.CopyTo(p.BDec);
    }
}
