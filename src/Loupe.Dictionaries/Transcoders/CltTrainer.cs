// Joint training of a cross-layer transcoder on paired MLP inputs and outputs of every layer.
//
// Per step:
//   1. draw a batch of rows (seeded, resumable: WindowedBatches over rows holding every layer side by side)
//   2. forward + backward: loss = Σ_t MSE(recon[t], y[t]) + coefficient·sparsity (coefficient warmed up linearly)
//   3. for unit-norm decoders (TopK, BatchTopK, JumpReLU), remove from each feature's concatenated decoder-row
//      gradient its component along the row
//   4. clip the global gradient norm
//   5. Adam step; learning rate: linear warm-up, constant, linear decay to 0 at the end (as SaeTrainer)
//   6. for unit-norm decoders, renormalise each feature's concatenated decoder row to 1
//   7. update dead-feature counters and record metrics
// Checkpoints (one safetensors file, written atomically) hold every buffer, the Adam moments, the dead-feature
// counters and the data cursor, so a resumed run takes bit-identical steps.
// Given a backend on a device, steps 2–7 run there (DeviceCltTraining): a batch goes up once, a step reads back one
// small matrix of metric sums, and the parameters come back for checkpoints and when the transcoder is read.
using System.Globalization;
using System.Numerics.Tensors;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>CLT training settings: SAE training's hyper-parameters plus the CLT's sparsity penalty shape.</summary>
public sealed record CltTrainingOptions
{
    /// <summary>Steps, batch size, learning rate and schedule, sparsity coefficient and warm-up, clip, seed, dead window.</summary>
    public SaeTrainingOptions Base { get; init; } = new() { BDecInit = BDecInit.Mean };

    /// <summary>φ of the ReLU penalty (default tanh, as Anthropic's CLT).</summary>
    public CltPenalty Penalty { get; init; } = CltPenalty.Tanh;

    /// <summary>c of φ(u) = tanh(c·u).</summary>
    public float TanhScale { get; init; } = 1f;

    /// <exception cref="InputError">A value is out of range.</exception>
    public void Validate()
    {
        Base.Validate();
        Check.Above(TanhScale, 0, "argument", "--tanh-scale");
    }

    /// <summary>
    /// <see cref="Validate()"/>, then the run against memory: refused when <see cref="EstimateTrainingBytes"/> exceeds
    /// <paramref name="memoryLimitBytes"/> (null: the memory the GC reports available; on a GPU its free memory), naming
    /// the option to lower. Call it before the transcoder is allocated.
    /// </summary>
    /// <param name="shape">The transcoder to be trained.</param>
    /// <param name="featuresOption">The option that set d_sae, for the message: <c>--d-sae</c> or <c>--expansion</c>.</param>
    /// <param name="memoryLimitBytes">Refuse runs estimated above this; null: the memory the GC reports available.</param>
    /// <exception cref="InputError">A value is out of range or the run would not fit.</exception>
    public void Validate(CltShape shape, string featuresOption = "--d-sae", long? memoryLimitBytes = null)
    {
        ArgumentNullException.ThrowIfNull(shape);
        Validate();
        long bytes = EstimateTrainingBytes(shape, Base.BatchSize);
        long limit = memoryLimitBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes <= limit) return;
        // the batch buffers grow with d_sae too: a run that would not fit even one row at a time is the features' doing
        string culprit = EstimateTrainingBytes(shape, 1) > limit ? featuresOption : "--batch-size";
        throw new InputError($"argument: {culprit}: {shape.Layers} layers, d_in {shape.DIn}, d_sae {shape.DSae} per layer, d_out {shape.DOut}, " +
                             $"batch {Base.BatchSize}: about {SaeTrainingOptions.Gib(bytes)} to train, more than the {SaeTrainingOptions.Gib(limit)} of memory available");
    }

    /// <summary>
    /// Parameters of a CLT: per layer an encoder [d_in, d_sae] with its bias and threshold, and decoders to every later
    /// layer (L(L+1)/2 blocks of [d_sae, d_out] in all) with the targets' biases.
    /// </summary>
    public static double ParameterCount(CltShape shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        double l = shape.Layers;
        return l * ((double)shape.DIn * shape.DSae + 2.0 * shape.DSae + shape.DOut) + l * (l + 1) / 2 * shape.DSae * shape.DOut;
    }

    /// <summary>
    /// Rough bytes a CLT training run holds: parameters, gradients and two Adam moments (4×), and per batch row and layer
    /// the SAE's buffers (pre-activations, activations and their gradients; inputs, targets, errors).
    /// </summary>
    public static long EstimateTrainingBytes(CltShape shape, int batchSize)
    {
        ArgumentNullException.ThrowIfNull(shape);
        double floats = 4.0 * ParameterCount(shape) + (double)batchSize * shape.Layers * (5.0 * shape.DSae + 3.0 * (shape.DIn + shape.DOut));
        double bytes = floats * 4;
        return bytes >= long.MaxValue ? long.MaxValue : (long)bytes;
    }

}

/// <summary>Metrics of one CLT training step.</summary>
/// <param name="Step">Its index.</param>
/// <param name="Loss">MSE + sparsity.</param>
/// <param name="Mse">Σ over target layers of the reconstruction MSE.</param>
/// <param name="Sparsity">The sparsity term.</param>
/// <param name="L0">Active features per row, summed over layers.</param>
/// <param name="ExplainedVariance">Per target layer.</param>
/// <param name="DeadFraction">Features that have not fired within the dead window.</param>
/// <param name="LearningRate">The step's learning rate.</param>
public sealed record CltStepMetrics(int Step, float Loss, float Mse, float Sparsity, float L0, float[] ExplainedVariance,
    float DeadFraction, float LearningRate);

/// <summary>
/// Adam training of a <see cref="CrossLayerTranscoder"/>: <see cref="Begin"/> on rows of every layer side by side
/// (see <see cref="LayerPairRows"/>) or <see cref="LoadCheckpoint"/>, then <see cref="Step"/>, <see cref="SaveCheckpoint"/>.
/// </summary>
public sealed class CltTrainer
{
    readonly CrossLayerTranscoder _clt;
    readonly CltTrainingOptions _o;
    readonly CltParameters _grad, _m, _v;
    readonly long[] _sinceFired;   // [L·d_sae]
    WindowedBatches? _batches;
    IRowWindows? _data;
    float[] _x = [], _y = [];
    int[] _fires = [];

    /// <exception cref="InputError">An option is out of range.</exception>
    public CltTrainer(CrossLayerTranscoder clt, CltTrainingOptions options) : this(clt, options, null) { }

    /// <summary>
    /// A trainer whose steps run on <paramref name="backend"/>'s device (null or the CPU: the host path, bit-exact as before).
    /// On a device, <paramref name="clt"/>'s host buffers are brought up to date by <see cref="Transcoder"/>, checkpoints and the end of <see cref="Train"/>.
    /// </summary>
    /// <exception cref="InputError">An option is out of range, or the architecture has no device kernels.</exception>
    public CltTrainer(CrossLayerTranscoder clt, CltTrainingOptions options, IComputeBackend? backend)
    {
        _clt = clt ?? throw new ArgumentNullException(nameof(clt));
        _o = options ?? throw new ArgumentNullException(nameof(options));
        _o.Validate();
        int k = clt.Activation switch { TopKActivation t => t.K, BatchTopKActivation b => b.K, _ => 0 };
        if (k > 0) Check.InRange(k, 1, clt.Shape.DSae, "argument", $"--k (at most d_sae = {clt.Shape.DSae})");
        _grad = new CltParameters(clt.Shape);
        _m = new CltParameters(clt.Shape);
        _v = new CltParameters(clt.Shape);
        _sinceFired = new long[clt.Shape.Layers * clt.Shape.DSae];
        if (backend is not null && !backend.Device.IsCpu)
        {
            if (!DeviceCltTraining.Supports(clt.Activation))
                throw new InputError($"argument: --device: {clt.Architecture} cross-layer transcoders train on the CPU only (on {backend.Device}: standard, topk, batchtopk, jumprelu); drop --device {backend.Device}");
            _backend = backend;
        }
    }

    readonly IComputeBackend? _backend;   // a device backend, or null (the host path)
    DeviceCltTraining? _device;           // the device's state once begun
    bool _hostStale;                      // the device holds newer parameters than _clt

    /// <summary>The device the steps run on (the CPU for the host path).</summary>
    public Loupe.Tensors.Device Device => _backend?.Device ?? Loupe.Tensors.Device.Cpu;

    // Parameters, moments and dead-feature counters: device → host (checkpoints, Transcoder).
    void SyncToHost()
    {
        if (!_hostStale || _device is null) return;
        _device.Download(_clt.P, _m, _v, _sinceFired);
        _hostStale = false;
    }

    // Host → device, after Begin or LoadCheckpoint set the host state.
    void UploadToDevice()
    {
        if (_backend is null) return;
        _device ??= new DeviceCltTraining(_backend, _clt, _o);
        _device.Upload(_clt.P, _m, _v, _sinceFired);
        _hostStale = false;
    }

    /// <summary>The transcoder, its parameters brought back from the device first when a device step changed them.</summary>
    public CrossLayerTranscoder Transcoder
    {
        get
        {
            SyncToHost();
            return _clt;
        }
    }

    public CltTrainingOptions Options => _o;
    SaeTrainingOptions B => _o.Base;
    public int StepsDone { get; private set; }
    public bool IsComplete => StepsDone >= B.Steps;
    /// <summary>The step whose loss was not finite, or null.</summary>
    public int? DivergedAt { get; private set; }

    /// <summary>Learning rate at a step: warm-up, constant, linear decay over the last LrDecayFraction.</summary>
    public float LearningRateAt(int step)
    {
        float lr = B.LearningRate;
        if (B.LrWarmupSteps > 0 && step < B.LrWarmupSteps) return lr * (step + 1) / B.LrWarmupSteps;
        int decaySteps = (int)(B.Steps * B.LrDecayFraction);
        if (decaySteps > 0 && step >= B.Steps - decaySteps) return lr * (B.Steps - step) / decaySteps;
        return lr;
    }

    public float SparsityCoefficientAt(int step) =>
        B.SparsityWarmupSteps > 0 && step < B.SparsityWarmupSteps ? B.SparsityCoefficient * (step + 1) / B.SparsityWarmupSteps : B.SparsityCoefficient;

    /// <summary>Trains on rows held in memory (<paramref name="inputs"/> [rows, L·d_in], <paramref name="targets"/> [rows, L·d_out]).</summary>
    public List<CltStepMetrics> Train(float[] inputs, float[] targets)
    {
        Begin(new InMemoryRows(inputs, _clt.Shape.RowIn, targets, _clt.Shape.RowOut));
        var metrics = new List<CltStepMetrics>();
        while (!IsComplete) metrics.Add(Step());
        SyncToHost();
        return metrics;
    }

    /// <summary>Starts a fresh run: b_dec[t] from the first window's targets (mean, or zeros), unit decoder rows where the method needs them.</summary>
    /// <exception cref="ArgumentException">The rows' widths do not match the transcoder.</exception>
    /// <exception cref="InputError">The first window is empty.</exception>
    public void Begin(IRowWindows data)
    {
        Attach(data, null);
        var s = _clt.Shape;
        var (_, targets) = data.Load(0, 0);
        if (targets is null) throw new ArgumentException("a CLT trains on targets (the MLP outputs); the rows have none", nameof(data));
        int rows = Math.Min(targets.Length / s.RowOut, SaeTrainer.InitRows);
        if (rows == 0) throw new InputError($"{data.Description}: the first window holds no rows to train on");
        for (int t = 0; t < s.Layers; t++)
        {
            var bDec = _clt.P.BDec[t];
            Array.Clear(bDec);
            if (B.BDecInit == BDecInit.Zeros) continue;
            // Mean (the geometric median of SAE training is replaced by the mean: one target of many)
            var sum = new double[s.DOut];
            for (int r = 0; r < rows; r++) for (int j = 0; j < s.DOut; j++) sum[j] += targets[r * s.RowOut + t * s.DOut + j];
            for (int j = 0; j < s.DOut; j++) bDec[j] = (float)(sum[j] / rows);
        }
        if (_clt.Activation.UnitNormDecoder) NormalizeDecoderRows();
        StepsDone = 0;
        Array.Clear(_sinceFired);
        UploadToDevice();
    }

    void Attach(IRowWindows data, BatchCursor? cursor)
    {
        var s = _clt.Shape;
        if (data.DIn != s.RowIn) throw new ArgumentException($"the CLT reads rows of n_layers·d_in = {s.RowIn} but the training rows ({data.Description}) have width {data.DIn}", nameof(data));
        if (data.DOut != s.RowOut) throw new ArgumentException($"the CLT writes rows of n_layers·d_out = {s.RowOut} but the target rows ({data.Description}) have width {data.DOut}", nameof(data));
        _data = data;
        _batches = new WindowedBatches(data, B.BatchSize, B.Seed, cursor);
        _x = new float[B.BatchSize * s.RowIn];
        _y = new float[B.BatchSize * s.RowOut];
        _fires = new int[s.Layers * s.DSae];
    }

    /// <summary>One training step (see the file header).</summary>
    /// <exception cref="InvalidOperationException">Not begun, or complete.</exception>
    /// <exception cref="InputError">The loss is not finite (no update was applied).</exception>
    public CltStepMetrics Step()
    {
        if (_batches is null) throw new InvalidOperationException("call Begin or LoadCheckpoint before Step");
        if (IsComplete) throw new InvalidOperationException($"all {B.Steps} steps are done");
        int step = StepsDone, batch = B.BatchSize;
        // 1–2.
        _batches.Next(_x, _y);
        if (_device is not null) return DeviceStep(step, batch);
        var loss = _clt.ForwardBackward(_x, _y, batch, SparsityCoefficientAt(step), _o.Penalty, _o.TanhScale, _grad, training: true, _fires);
        if (!float.IsFinite(loss.Loss))
        {
            DivergedAt = step;
            throw new InputError(string.Create(CultureInfo.InvariantCulture,
                $"CLT training diverged at step {step}: loss is {loss.Loss} (learning rate {LearningRateAt(step):G3}); lower --lr"));
        }
        // 3.
        if (_clt.Activation.UnitNormDecoder) ProjectDecoderGradient();
        var p = _clt.P.Trainable(_clt.Activation).Select(t => t.Data).ToArray();
        var g = _grad.Trainable(_clt.Activation).Select(t => t.Data).ToArray();
        var m = _m.Trainable(_clt.Activation).Select(t => t.Data).ToArray();
        var v = _v.Trainable(_clt.Activation).Select(t => t.Data).ToArray();
        // 4.
        if (B.GradClipNorm > 0)
        {
            double sq = 0;
            foreach (var gi in g) sq += TensorPrimitives.SumOfSquares(gi);
            double norm = Math.Sqrt(sq);
            if (norm > B.GradClipNorm) foreach (var gi in g) TensorPrimitives.Multiply(gi, (float)(B.GradClipNorm / norm), gi);
        }
        // 5. m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − lr·(m/bc1) / (√(v/bc2) + ε)
        float lr = LearningRateAt(step), b1 = B.Beta1, b2 = B.Beta2;
        float bc1 = 1 - MathF.Pow(b1, step + 1), bc2 = 1 - MathF.Pow(b2, step + 1);
        for (int t = 0; t < p.Length; t++)
        {
            float[] pt = p[t], gt = g[t], mt = m[t], vt = v[t];
            for (int i = 0; i < pt.Length; i++)
            {
                mt[i] = b1 * mt[i] + (1 - b1) * gt[i];
                vt[i] = b2 * vt[i] + (1 - b2) * gt[i] * gt[i];
                pt[i] -= lr / bc1 * mt[i] / (MathF.Sqrt(vt[i] * (1 / bc2)) + 1e-8f);
            }
        }
        // 6.
        if (_clt.Activation.UnitNormDecoder) NormalizeDecoderRows();
        // 7.
        int dead = 0;
        for (int i = 0; i < _sinceFired.Length; i++)
        {
            _sinceFired[i] = _fires[i] > 0 ? 0 : _sinceFired[i] + batch;
            if (_sinceFired[i] >= B.DeadWindowTokens) dead++;
        }
        StepsDone++;
        return new CltStepMetrics(step, loss.Loss, loss.Mse, loss.Sparsity, loss.L0, loss.ExplainedVariance, (float)dead / _sinceFired.Length, lr);
    }

    // Steps 2–7 on the device (DeviceCltTraining's steps); the batch in _x/_y is already drawn.
    CltStepMetrics DeviceStep(int step, int batch)
    {
        var s = _clt.Shape;
        float coefficient = SparsityCoefficientAt(step);
        var sums = _device!.ForwardBackward(_x, _y, coefficient);
        // as on the host, the thresholds follow the training forward, before the loss is checked
        if (_clt.Activation is BatchTopKActivation batchTopK)
            for (int l = 0; l < s.Layers; l++) batchTopK.UpdateThreshold(sums.MinKept[l], _clt.P.Act[l]);
        double squares = 0, nonzero = 0, penalty = 0;
        var ev = new float[s.Layers];
        for (int t = 0; t < s.Layers; t++)
        {
            squares += sums.SquaredError[t];
            nonzero += sums.Nonzero[t];
            penalty += sums.Sparsity[t];
            ev[t] = sums.CenteredSquares[t] == 0 ? 0f : (float)(1 - (double)sums.SquaredError[t] / sums.CenteredSquares[t]);
        }
        float mse = (float)(squares / batch);
        // standard: Σ φ; JumpReLU: the count above θ; TopK and BatchTopK: 0
        float sparsity = _clt.Activation is ReluActivation && _o.Penalty == CltPenalty.Tanh
            ? (float)(penalty * _o.TanhScale * coefficient / batch)
            : (float)(penalty * coefficient / batch);
        float loss = mse + sparsity;
        if (!float.IsFinite(loss))
        {
            DivergedAt = step;
            throw new InputError(string.Create(CultureInfo.InvariantCulture,
                $"CLT training diverged at step {step}: loss is {loss} (learning rate {LearningRateAt(step):G3}); lower --lr"));
        }
        float lr = LearningRateAt(step);
        _device.Update(lr, step + 1);
        _hostStale = true;
        StepsDone++;
        return new CltStepMetrics(step, loss, mse, sparsity, (float)(nonzero / batch), ev, (float)sums.DeadAfter / _sinceFired.Length, lr);
    }

    // g_i ← g_i − (g_i·w_i) w_i for each unit concatenated decoder row w_i
    void ProjectDecoderGradient()
    {
        var s = _clt.Shape;
        for (int l = 0; l < s.Layers; l++)
        {
            int row = s.Targets(l) * s.DOut;
            for (int i = 0; i < s.DSae; i++)
            {
                var w = _clt.P.WDec[l].AsSpan(i * row, row);
                var gr = _grad.WDec[l].AsSpan(i * row, row);
                TensorPrimitives.MultiplyAdd(w, -TensorPrimitives.Dot(gr, w), gr, gr);
            }
        }
    }

    void NormalizeDecoderRows()
    {
        var s = _clt.Shape;
        for (int l = 0; l < s.Layers; l++)
        {
            int row = s.Targets(l) * s.DOut;
            for (int i = 0; i < s.DSae; i++)
            {
                var w = _clt.P.WDec[l].AsSpan(i * row, row);
                float n = TensorPrimitives.Norm(w);
                if (n > 0) TensorPrimitives.Multiply(w, 1 / n, w);
            }
        }
    }

    // ---- checkpoints (the file layout of Sae/TrainingCheckpoint.cs; since_fired is [L·d_sae]) ----

    const string MetadataKey = "loupe_clt_checkpoint";
    const int CheckpointVersion = 1;

    JsonObject State(BatchCursor cursor)
    {
        var state = TrainingCheckpoint.State(CheckpointVersion, StepsDone, cursor);
        state["architecture"] = _clt.Architecture;
        state["shape"] = _clt.Shape.ToString();
        state["options"] = $"{_o.Base} penalty={_o.Penalty} tanh_scale={_o.TanhScale.ToString("R", CultureInfo.InvariantCulture)}";
        state["data"] = _data?.Description ?? "";
        return state;
    }

    /// <summary>Writes a checkpoint atomically (temp file + rename).</summary>
    /// <exception cref="InvalidOperationException">Not begun.</exception>
    public void SaveCheckpoint(string path)
    {
        if (_batches is null) throw new InvalidOperationException("nothing to checkpoint: call Begin first");
        SyncToHost();
        var cursor = _batches.Cursor;
        var moments = _m.Trainable(_clt.Activation).Zip(_v.Trainable(_clt.Activation), (m, v) => (m.Name, m.Data, v.Data));
        TrainingCheckpoint.Write(path, _clt.P.All(), moments, _sinceFired, cursor, MetadataKey, State(cursor), "loupe-clt-checkpoint");
    }

    /// <summary>Continues from a checkpoint of a run with the same shape, activation, options and data.</summary>
    /// <exception cref="InputError">Not a CLT checkpoint, written with other settings (listed), or a tensor is missing, mis-shaped or not finite (named).</exception>
    public void LoadCheckpoint(string path, IRowWindows data)
    {
        ArgumentNullException.ThrowIfNull(data);
        var expected = State(new BatchCursor(0, 0, 0, [], null));
        expected["data"] = data.Description;
        using var file = new TrainingCheckpoint.Reader(path, MetadataKey, "CLT", CheckpointVersion, expected);
        int step = file.Int("step", 0, B.Steps);
        var loaded = new List<(float[] Into, float[] Values)>();
        foreach (var (name, buffer) in _clt.P.All())
            if (buffer.Length > 0) loaded.Add((buffer, file.Parameter(name, buffer.Length, minusInfinityAllowed: name.StartsWith("log_threshold", StringComparison.Ordinal))));
        foreach (var ((name, m), (_, v)) in _m.Trainable(_clt.Activation).Zip(_v.Trainable(_clt.Activation)))
        {
            var (mv, vv) = file.Moments(name, m.Length);
            loaded.Add((m, mv));
            loaded.Add((v, vv));
        }
        var since = file.SinceFired(_sinceFired.Length, "n_layers·d_sae");
        var cursor = file.Cursor(data, B.BatchSize);

        foreach (var (into, values) in loaded) values.CopyTo(into, 0);
        since.CopyTo(_sinceFired, 0);
        StepsDone = step;
        Attach(data, cursor);
        UploadToDevice();
    }
}
