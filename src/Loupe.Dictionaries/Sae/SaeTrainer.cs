// Training loop for a SparseDictionary.
//
// Per step:
//   1. draw a batch of rows (seeded: same seed ⇒ same run)
//   2. forward + backward (loss = MSE + coefficient·sparsity, coefficient warmed up linearly,
//      + TopK's auxiliary loss on features dead at the start of the step)
//   3. for unit-norm decoders, remove from each W_dec row gradient its component along the row
//   4. clip the global gradient norm
//   5. Adam step with learning rate: linear warm-up, constant, linear decay to 0 at the end
//   6. for unit-norm decoders, renormalise W_dec rows to 1
//   7. update dead-feature counters (tokens since a feature last fired) and record metrics
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Sae;

/// <summary>How b_dec is initialised before training.</summary>
public enum BDecInit { Zeros, Mean, GeometricMedian }

/// <summary>Training hyper-parameters (SAELens names where they exist).</summary>
public sealed record SaeTrainingOptions
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 64;
    public float LearningRate { get; init; } = 1e-3f;
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.999f;
    public int LrWarmupSteps { get; init; }
    /// <summary>Fraction of steps at the end over which the learning rate decays linearly to 0.</summary>
    public float LrDecayFraction { get; init; } = 0.2f;
    /// <summary>L1 coefficient (ReLU) or L0 coefficient (JumpReLU); unused by TopK/BatchTopK.</summary>
    public float SparsityCoefficient { get; init; }
    public int SparsityWarmupSteps { get; init; }
    /// <summary>Global gradient-norm clip; 0 or less disables.</summary>
    public float GradClipNorm { get; init; } = 1f;
    public BDecInit BDecInit { get; init; } = BDecInit.GeometricMedian;
    /// <summary>A feature is dead when it has not fired in this many tokens.</summary>
    public int DeadWindowTokens { get; init; } = 10_000;
    /// <summary>TopK/BatchTopK auxiliary-loss coefficient on dead features (SAELens default 1/32); 0 disables.</summary>
    public float AuxKCoefficient { get; init; } = 1f / 32;
    /// <summary>
    /// SAELens "expected_average_only_in": train on c·x with c = √d_in / mean‖x‖ (targets scaled alike), then
    /// fold c into the weights (<see cref="SparseDictionary.FoldInputScaling"/>) so the result takes raw inputs.
    /// </summary>
    public bool NormalizeExpectedAverage { get; init; }
    public int Seed { get; init; }

    // Where a value comes from, for messages: the `loupe sae train` option that sets it.
    const string Arg = "argument";

    /// <summary>
    /// Checks every hyper-parameter's range; messages name the <c>loupe sae train</c> option that sets it
    /// (<c>--steps</c>, <c>--batch-size</c>, <c>--lr</c>, <c>--lr-warmup</c>, <c>--lr-decay</c>, <c>--sparsity</c>,
    /// <c>--sparsity-warmup</c>, <c>--aux-k</c>, <c>--dead-window</c>).
    /// </summary>
    /// <exception cref="InputError">A value is out of range or not finite.</exception>
    public void Validate()
    {
        Check.InRange(Steps, 1, int.MaxValue, Arg, "--steps");
        Check.InRange(BatchSize, 1, int.MaxValue, Arg, "--batch-size");
        Check.Above(LearningRate, 0, Arg, "--lr");
        Check.Finite(Beta1, 0, 0.999999, Arg, "beta1");
        Check.Finite(Beta2, 0, 0.999999999, Arg, "beta2");
        Check.InRange(LrWarmupSteps, 0, int.MaxValue, Arg, "--lr-warmup");
        Check.Finite(LrDecayFraction, 0, 1, Arg, "--lr-decay");
        Check.Finite(SparsityCoefficient, 0, 1e6, Arg, "--sparsity");
        Check.InRange(SparsityWarmupSteps, 0, int.MaxValue, Arg, "--sparsity-warmup");
        Check.Finite(GradClipNorm, double.NegativeInfinity, double.PositiveInfinity, Arg, "grad clip norm");
        Check.InRange(DeadWindowTokens, 1, int.MaxValue, Arg, "--dead-window");
        Check.Finite(AuxKCoefficient, 0, 1e6, Arg, "--aux-k");
    }

    /// <summary>
    /// <see cref="Validate()"/>, then what depends on the dictionary: k in [1, d_sae] (<c>--k</c>), and every buffer
    /// training allocates fitting one array and, all together, the memory available (estimate in the message).
    /// Call it before allocating the dictionary (<see cref="SaeTrainer"/>'s constructor calls it too).
    /// </summary>
    /// <param name="shape">The dictionary's shape.</param>
    /// <param name="activation">Its activation (k is checked for TopK and BatchTopK); null skips that check.</param>
    /// <param name="featuresOption">The option that set d_sae, for messages: <c>--d-sae</c> or <c>--expansion</c>.</param>
    /// <param name="memoryLimitBytes">Refuse runs estimated above this; null: the memory the GC reports available.</param>
    /// <exception cref="InputError">A value is out of range, a buffer overflows an array, or the run would not fit in memory.</exception>
    public void Validate(SaeShape shape, SaeActivation? activation = null, string featuresOption = "--d-sae", long? memoryLimitBytes = null)
    {
        ArgumentNullException.ThrowIfNull(shape);
        Validate();
        int k = activation switch { TopKActivation t => t.K, BatchTopKActivation b => b.K, _ => 0 };
        if (k > 0) Check.InRange(k, 1, shape.DSae, Arg, $"--k (at most d_sae = {shape.DSae})");
        if (activation is MatryoshkaBatchTopKActivation m && m.Widths[^1] != shape.DSae)
            throw InputError.Expected(Arg, "--matryoshka-widths", $"widths ending at d_sae = {shape.DSae}", m.ToString());
        ValidateSize(shape, featuresOption);
        long bytes = EstimateTrainingBytes(shape, BatchSize);
        long limit = memoryLimitBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > limit)
        {
            // the batch buffers grow with d_sae too: a run that would not fit even one row at a time is the features' doing
            string culprit = EstimateTrainingBytes(shape, 1) > limit ? featuresOption : "--batch-size";
            // not InputError.Expected: its found-value is cut at 80 characters, and the size is the point of the message
            throw new InputError($"{Arg}: {culprit}: d_in {shape.DIn}, d_sae {shape.DSae}, d_out {shape.DOut}, batch {BatchSize}: " +
                                 $"about {Gib(bytes)} to train, more than the {Gib(limit)} of memory available");
        }
    }

    /// <summary>
    /// d_sae from <c>--d-sae</c> when given, else <c>--expansion</c> × d_in, refusing non-positive values and products
    /// past what one array can hold (the message gives the size and the memory it would take).
    /// </summary>
    /// <exception cref="InputError">The option is out of range or the product overflows.</exception>
    public static int FeatureCount(int? dSae, int expansion, int dIn)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(dIn);
        if (dSae is int d) return Check.InRange(d, 1, int.MaxValue, Arg, "--d-sae");
        Check.InRange(expansion, 1, int.MaxValue, Arg, "--expansion");
        long features = (long)expansion * dIn;
        if (features > int.MaxValue)
            throw InputError.Expected(Arg, "--expansion", $"a number of features (--expansion × d_in) of at most {int.MaxValue}",
                $"{expansion} × {dIn} = {features}");
        return (int)features;
    }

    /// <summary>
    /// Parses <c>--architecture</c>, <c>--k</c> and <c>--matryoshka-widths</c> into an activation, with k in [1, d_sae] for
    /// topk / batchtopk / matryoshka_batchtopk, and the widths (matryoshka_batchtopk only, where they are required) checked
    /// and completed with d_sae as SAELens does.
    /// </summary>
    /// <exception cref="InputError">Unknown architecture, k out of range, widths missing, malformed or given to another architecture.</exception>
    public static SaeActivation ActivationFor(string architecture, int k, int dSae, IReadOnlyList<long>? matryoshkaWidths = null)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        if (architecture is "topk" or "batchtopk" or "matryoshka_batchtopk") Check.InRange(k, 1, dSae, Arg, $"--k (at most d_sae = {dSae})");
        if (matryoshkaWidths is not null && architecture != "matryoshka_batchtopk")
            throw InputError.Expected(Arg, "--matryoshka-widths", "--architecture matryoshka_batchtopk (the widths belong to it)", $"--architecture {architecture}");
        return architecture switch
        {
            "standard" or "relu" => new ReluActivation(),
            "topk" => new TopKActivation(k),
            "batchtopk" => new BatchTopKActivation(k),
            "matryoshka_batchtopk" => new MatryoshkaBatchTopKActivation(k,
                MatryoshkaBatchTopKActivation.CheckWidths(matryoshkaWidths ?? throw InputError.Expected(Arg, "--matryoshka-widths",
                    "the nested widths of a matryoshka_batchtopk SAE, e.g. --matryoshka-widths 128,512", "nothing"), dSae, Arg, "--matryoshka-widths")),
            "jumprelu" => new JumpReluActivation(),
            _ => throw InputError.Expected(Arg, "--architecture", "standard, topk, batchtopk, matryoshka_batchtopk or jumprelu", architecture),
        };
    }

    // Every buffer is one float[]: each must fit, whichever option made it large.
    void ValidateSize(SaeShape s, string featuresOption)
    {
        string Size(long a, long b) => $"{a} × {b} = {a * b} floats ({Gib(a * b * 4)})";
        void Fits(long a, long b, string option, string what)
        {
            if (a * b > Check.MaxArrayElements)
                throw InputError.Expected(Arg, option, $"{what} of at most {Check.MaxArrayElements} floats", Size(a, b));
        }
        Fits(s.DIn, s.DSae, featuresOption, "W_enc [d_in, d_sae]");
        Fits(s.DSae, s.DOut, featuresOption, "W_dec [d_sae, d_out]");
        if (s.Skip) Fits(s.DIn, s.DOut, "--skip", "W_skip [d_in, d_out]");
        Fits(BatchSize, s.DSae, "--batch-size", "a batch of features [batch, d_sae]");
        Fits(BatchSize, Math.Max(s.DIn, s.DOut), "--batch-size", "a batch of rows [batch, d]");
    }

    static long ParameterCount(SaeShape s) =>
        (long)s.DIn * s.DSae + (long)s.DSae * s.DOut + (s.Skip ? (long)s.DIn * s.DOut : 0) + 2L * s.DSae + s.DOut + 1;

    /// <summary>
    /// Rough bytes a training run holds: parameters, gradients and two Adam moments (4×), the transposed encoder
    /// gradient, and per-batch buffers (pre-activations, activations and their gradients, inputs, targets, errors).
    /// </summary>
    public static long EstimateTrainingBytes(SaeShape shape, int batchSize)
    {
        ArgumentNullException.ThrowIfNull(shape);
        double floats = 4.0 * ParameterCount(shape) + (double)shape.DIn * shape.DSae
            + (double)batchSize * (5.0 * shape.DSae + 3.0 * shape.DIn + 4.0 * shape.DOut);   // + a Matryoshka level's error
        double bytes = floats * 4;
        return bytes >= long.MaxValue ? long.MaxValue : (long)bytes;
    }

    /// <summary>Bytes as GiB with one decimal, for memory messages (SAE and CLT training).</summary>
    internal static string Gib(double bytes) => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (1L << 30):0.#} GiB");
}

/// <summary>Metrics of one training step.</summary>
public sealed record SaeStepMetrics(int Step, float Loss, float Mse, float Sparsity, float L0, float ExplainedVariance,
    float DeadFraction, float LearningRate);

/// <summary>
/// Adam training of a <see cref="SparseDictionary"/>: <see cref="Begin"/> on a data source (or resume from a
/// checkpoint), then <see cref="Step"/> repeatedly, <see cref="SaveCheckpoint"/> at will, and <see cref="Finish"/>.
/// <see cref="Train(float[], float[])"/> does all of it for rows held in memory.
/// Given a backend on a device (a GPU, or the emulated one), TopK, BatchTopK, JumpReLU and standard SAEs and ReLU and BatchTopK crosscoders train there
/// (<see cref="DeviceSaeTraining"/>): a batch goes up once, a step reads back one vector of metric sums, and the
/// parameters come back for checkpoints and at the end. On the CPU the host path below runs, bit-exact as before.
/// </summary>
public sealed partial class SaeTrainer
{
    readonly SparseDictionary _dict;
    readonly SaeTrainingOptions _o;
    readonly SaeParameters _grad, _m, _v;
    readonly long[] _sinceFired;   // [d_sae] tokens since each feature last fired
    WindowedBatches? _batches;
    IRowWindows? _data;
    float[] _x = [], _y = [];      // [batch, d_in], [batch, d_out]
    int[] _fires = [];             // [d_sae] rows each feature fired on in the last step
    bool[] _dead = [];             // [d_sae]

    /// <exception cref="InputError">An option is out of range (see <see cref="SaeTrainingOptions.Validate(SaeShape, SaeActivation?, string, long?)"/>).</exception>
    public SaeTrainer(SparseDictionary dictionary, SaeTrainingOptions options) : this(dictionary, options, null) { }

    /// <summary>A trainer whose steps run on <paramref name="backend"/>'s device (null or the CPU: the host path).</summary>
    /// <param name="dictionary">What is trained.</param>
    /// <param name="options">Hyper-parameters.</param>
    /// <param name="backend">Where the steps run.</param>
    /// <exception cref="InputError">An option is out of range, or the architecture does not train on that device yet.</exception>
    public SaeTrainer(SparseDictionary dictionary, SaeTrainingOptions options, IComputeBackend? backend)
    {
        _dict = dictionary ?? throw new ArgumentNullException(nameof(dictionary));
        _o = options ?? throw new ArgumentNullException(nameof(options));
        _o.Validate(dictionary.Shape, dictionary.Activation, memoryLimitBytes: long.MaxValue); // the dictionary already exists: its size was the caller's check
        _grad = new SaeParameters(dictionary.Shape);
        _m = new SaeParameters(dictionary.Shape);
        _v = new SaeParameters(dictionary.Shape);
        _sinceFired = new long[dictionary.Shape.DSae];
        if (backend is not null && !backend.Device.IsCpu)
        {
            if (!DeviceSaeTraining.Supports(dictionary.Activation))
                throw new InputError($"argument: --device: {dictionary.Architecture} dictionaries train on the CPU only so far (on {backend.Device}: topk, batchtopk, jumprelu, standard, crosscoder, crosscoder_batchtopk); drop --device {backend.Device}");
            _backend = backend;
        }
    }

    /// <summary>Whether a dictionary with <paramref name="activation"/> trains on a device (topk, batchtopk, jumprelu, standard, the crosscoders'; not another <see cref="SaeActivation"/>).</summary>
    public static bool TrainsOnDevice(SaeActivation activation) => DeviceSaeTraining.Supports(activation);

    readonly IComputeBackend? _backend;   // a device backend, or null (the host path)
    DeviceSaeTraining? _device;           // the device's state once begun
    bool _hostStale;                      // the device holds newer parameters than _dict

    /// <summary>The device the steps run on (the CPU for the host path).</summary>
    public Loupe.Tensors.Device Device => _backend?.Device ?? Loupe.Tensors.Device.Cpu;

    /// <summary>The dictionary, its parameters brought back from the device first when a device step changed them.</summary>
    public SparseDictionary Dictionary
    {
        get
        {
            SyncToHost();
            return _dict;
        }
    }

    // Parameters, moments and dead-feature counters: device → host (checkpoints, Finish, Dictionary).
    void SyncToHost()
    {
        if (!_hostStale || _device is null) return;
        _device.Download(_dict.P, _m, _v, _sinceFired);
        _hostStale = false;
    }

    // Host → device, after Begin or LoadCheckpoint set the host state.
    void UploadToDevice()
    {
        if (_backend is null) return;
        _device ??= new DeviceSaeTraining(_backend, _dict, _o);
        _device.Upload(_dict.P, _m, _v, _sinceFired);
        _hostStale = false;
    }
    public SaeTrainingOptions Options => _o;

    /// <summary>The input scaling factor c (1 without normalisation); folded into the weights by <see cref="Finish"/>.</summary>
    public float ScalingFactor { get; private set; } = 1f;

    bool _folded;

    /// <summary>The step whose loss was not finite (training stopped there), or null.</summary>
    public int? DivergedAt { get; private set; }

    /// <summary>Steps taken so far (the next step's index).</summary>
    public int StepsDone { get; private set; }

    /// <summary>Whether every step has been taken.</summary>
    public bool IsComplete => StepsDone >= _o.Steps;

    /// <summary>Learning rate at a step: warm-up, constant, linear decay over the last LrDecayFraction.</summary>
    public float LearningRateAt(int step)
    {
        float lr = _o.LearningRate;
        if (_o.LrWarmupSteps > 0 && step < _o.LrWarmupSteps) return lr * (step + 1) / _o.LrWarmupSteps;
        int decaySteps = (int)(_o.Steps * _o.LrDecayFraction);
        int decayStart = _o.Steps - decaySteps;
        if (decaySteps > 0 && step >= decayStart) return lr * (_o.Steps - step) / decaySteps;
        return lr;
    }

    /// <summary>Sparsity coefficient at a step (linear warm-up from 0).</summary>
    public float SparsityCoefficientAt(int step) =>
        _o.SparsityWarmupSteps > 0 && step < _o.SparsityWarmupSteps
            ? _o.SparsityCoefficient * (step + 1) / _o.SparsityWarmupSteps
            : _o.SparsityCoefficient;

    /// <summary>
    /// Trains on <paramref name="inputs"/> [rows, d_in] reconstructing <paramref name="targets"/> [rows, d_out]
    /// (null: the inputs, an SAE), then folds the input scaling. Returns the metrics of every step.
    /// </summary>
    /// <exception cref="ArgumentException">The arrays do not hold whole rows, or row counts differ.</exception>
    public List<SaeStepMetrics> Train(float[] inputs, float[]? targets = null)
    {
        var s = _dict.Shape;
        Begin(new InMemoryRows(inputs, s.DIn, targets, targets is null ? null : s.DOut));
        var metrics = new List<SaeStepMetrics>(_o.Steps);
        while (!IsComplete) metrics.Add(Step());
        Finish();
        return metrics;
    }

    /// <summary>Rows used to estimate the scaling factor and initialise b_dec (from the start of the first window).</summary>
    public const int InitRows = 16_384;

    /// <summary>
    /// Starts a fresh run on <paramref name="data"/>: estimates the scaling factor and b_dec from the first
    /// rows of the first window, and normalises decoder rows where the method needs it.
    /// </summary>
    /// <exception cref="ArgumentException">The data's row widths do not match the dictionary.</exception>
    public void Begin(IRowWindows data)
    {
        Attach(data, null);
        var s = _dict.Shape;
        var (inputs, targets) = data.Load(0, 0);
        int rows = Math.Min(inputs.Length / s.DIn, InitRows);
        if (rows == 0) throw new InputError($"{data.Description}: the first window holds no rows to train on");
        targets ??= inputs;
        ScalingFactor = 1f;
        if (_o.NormalizeExpectedAverage)
        {
            double normSum = 0;
            for (int r = 0; r < rows; r++) normSum += TensorPrimitives.Norm(inputs.AsSpan(r * s.DIn, s.DIn));
            ScalingFactor = normSum > 0 ? (float)(Math.Sqrt(s.DIn) / (normSum / rows)) : 1f;
        }
        var sample = targets.AsSpan(0, rows * s.DOut).ToArray();
        if (ScalingFactor != 1f) TensorPrimitives.Multiply(sample, ScalingFactor, sample);
        InitBDec(sample, rows, s.DOut);
        if (_dict.Activation.UnitNormDecoder) NormalizeDecoderRows();
        StepsDone = 0;
        _folded = false;
        Array.Clear(_sinceFired);
        UploadToDevice();
    }

    void Attach(IRowWindows data, BatchCursor? cursor)
    {
        var s = _dict.Shape;
        if (data.DIn != s.DIn) throw new ArgumentException($"the dictionary has d_in = {s.DIn} but the training rows ({data.Description}) have width {data.DIn}", nameof(data));
        if (data.DOut != s.DOut) throw new ArgumentException($"the dictionary has d_out = {s.DOut} but the target rows ({data.Description}) have width {data.DOut}", nameof(data));
        _data = data;
        _batches = new WindowedBatches(data, _o.BatchSize, _o.Seed, cursor);
        _x = new float[_o.BatchSize * s.DIn];
        _y = new float[_o.BatchSize * s.DOut];
        _fires = new int[s.DSae];
        _dead = new bool[s.DSae];
    }

    /// <summary>One training step (see the file header); returns its metrics.</summary>
    /// <exception cref="InvalidOperationException">Not begun, or every step is already taken.</exception>
    /// <exception cref="InputError">The loss is NaN or infinite: training diverged (<see cref="DivergedAt"/>); no update was applied.</exception>
    public SaeStepMetrics Step()
    {
        if (_batches is null) throw new InvalidOperationException("call Begin or LoadCheckpoint before Step");
        if (IsComplete || _folded) throw new InvalidOperationException($"all {_o.Steps} steps are done");
        var s = _dict.Shape;
        int step = StepsDone, batch = _o.BatchSize;
        // 1. batch
        _batches.Next(_x, _y);
        if (ScalingFactor != 1f)
        {
            TensorPrimitives.Multiply(_x, ScalingFactor, _x);
            TensorPrimitives.Multiply(_y, ScalingFactor, _y);
        }
        if (_device is not null) return DeviceStep(step, batch);
        // 2. forward + backward
        for (int i = 0; i < s.DSae; i++) _dead[i] = _sinceFired[i] >= _o.DeadWindowTokens;
        var loss = _dict.ForwardBackward(_x, _y, batch, SparsityCoefficientAt(step), _grad, training: true, default, _dead, _o.AuxKCoefficient, _fires);
        // A loss that overflowed (or parameters that became NaN) would only spread: stop before the update, so the
        // parameters stay those of the last good step and the last checkpoint stays valid.
        if (!float.IsFinite(loss.Loss) || !float.IsFinite(loss.Mse) || !float.IsFinite(loss.Sparsity))
        {
            DivergedAt = step;
            float bad = !float.IsFinite(loss.Loss) ? loss.Loss : !float.IsFinite(loss.Mse) ? loss.Mse : loss.Sparsity;
            throw new InputError(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"training diverged at step {step}: loss is {(float.IsNaN(bad) ? "NaN" : bad > 0 ? "∞" : "−∞")} (learning rate {LearningRateAt(step):G3}); lower --lr (now {_o.LearningRate:G3}){(_o.NormalizeExpectedAverage ? "" : " or pass --normalize")}"));
        }
        // 3. project out the radial component of decoder-row gradients
        if (_dict.Activation.UnitNormDecoder) ProjectDecoderGradient();
        var trainable = _dict.P.Trainable(_dict.Activation).Select(t => t.Data).ToArray();
        var grads = _grad.Trainable(_dict.Activation).Select(t => t.Data).ToArray();
        var ms = _m.Trainable(_dict.Activation).Select(t => t.Data).ToArray();
        var vs = _v.Trainable(_dict.Activation).Select(t => t.Data).ToArray();
        // 4. clip
        if (_o.GradClipNorm > 0)
        {
            double sq = 0;
            foreach (var g in grads) sq += SumOfSquares(g);
            double norm = Math.Sqrt(sq);
            if (norm > _o.GradClipNorm)
                foreach (var g in grads) TensorPrimitives.Multiply(g, (float)(_o.GradClipNorm / norm), g);
        }
        // 5. Adam
        float lr = LearningRateAt(step);
        float bc1 = 1 - MathF.Pow(_o.Beta1, step + 1), bc2 = 1 - MathF.Pow(_o.Beta2, step + 1);
        for (int t = 0; t < trainable.Length; t++) AdamUpdate(trainable[t], grads[t], ms[t], vs[t], lr, bc1, bc2);
        // 6. unit-norm decoder rows
        if (_dict.Activation.UnitNormDecoder) NormalizeDecoderRows();
        // 7. dead features
        int nDead = 0;
        for (int i = 0; i < s.DSae; i++)
        {
            _sinceFired[i] = _fires[i] > 0 ? 0 : _sinceFired[i] + batch;
            if (_sinceFired[i] >= _o.DeadWindowTokens) nDead++;
        }
        StepsDone++;
        return new SaeStepMetrics(step, loss.Loss, loss.Mse, loss.Sparsity, loss.L0, loss.ExplainedVariance, (float)nDead / s.DSae, lr);
    }

    // Steps 2–7 on the device (DeviceSaeTraining's steps); the batch in _x/_y is already drawn and scaled.
    SaeStepMetrics DeviceStep(int step, int batch)
    {
        var s = _dict.Shape;
        float coefficient = SparsityCoefficientAt(step);
        var sums = _device!.ForwardBackward(_x, _data!.HasTargets ? _y : null, coefficient);
        // as on the host, the threshold follows the training forward, before the loss is checked
        if (_dict.Activation is BatchTopKActivation batchTopK) batchTopK.UpdateThreshold(sums.MinKept, _dict.P);
        else if (_dict.Activation is Crosscoders.CrosscoderBatchTopKActivation crosscoder) crosscoder.UpdateThreshold(sums.MinKept, _dict.P);
        float mse = (float)(sums.SquaredError / batch);
        float sparsity = _dict.Activation.HasSparsityPenalty ? (float)(sums.L1 * coefficient / batch) : 0f;
        float aux = (float)(sums.AuxScale * sums.AuxSquares / batch);
        float loss = mse + sparsity + aux + (float)(sums.MatryoshkaSquares / batch);
        if (!float.IsFinite(loss) || !float.IsFinite(mse) || !float.IsFinite(sparsity))
        {
            DivergedAt = step;
            float bad = !float.IsFinite(loss) ? loss : !float.IsFinite(mse) ? mse : sparsity;
            throw new InputError(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"training diverged at step {step}: loss is {(float.IsNaN(bad) ? "NaN" : bad > 0 ? "∞" : "−∞")} (learning rate {LearningRateAt(step):G3}); lower --lr (now {_o.LearningRate:G3}){(_o.NormalizeExpectedAverage ? "" : " or pass --normalize")}"));
        }
        float lr = LearningRateAt(step);
        _device.Update(lr, step + 1, sums.DeadAfter);
        _hostStale = true;
        StepsDone++;
        float ev = sums.CenteredSquares == 0 ? 0f : (float)(1 - sums.SquaredError / sums.CenteredSquares);
        return new SaeStepMetrics(step, loss, mse, sparsity, (float)(sums.Nonzero / batch), ev, (float)sums.DeadAfter / s.DSae, lr);
    }

    // Σ g² in fixed-size blocks summed in order: parallel but deterministic
    static double SumOfSquares(float[] g)
    {
        const int Block = 1 << 16;
        int blocks = (g.Length + Block - 1) / Block;
        var partial = new double[blocks];
        RowParallel.For(blocks, Block, k => partial[k] = TensorPrimitives.SumOfSquares(g.AsSpan(k * Block, Math.Min(Block, g.Length - k * Block))));
        double sum = 0;
        foreach (double p in partial) sum += p;
        return sum;
    }

    // m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − lr·(m/bc1) / (√(v/bc2) + ε)   (element-wise, chunks in parallel)
    void AdamUpdate(float[] p, float[] g, float[] m, float[] v, float lr, float bc1, float bc2)
    {
        float b1 = _o.Beta1, b2 = _o.Beta2;
        RowParallel.Chunks(p.Length, (start, end) =>
        {
            int i = (int)start, n = (int)end;
            if (Vector256.IsHardwareAccelerated)
            {
                var vb1 = Vector256.Create(b1);
                var vb1c = Vector256.Create(1 - b1);
                var vb2 = Vector256.Create(b2);
                var vb2c = Vector256.Create(1 - b2);
                var vStep = Vector256.Create(lr / bc1);
                var vBc2 = Vector256.Create(1 / bc2);
                var vEps = Vector256.Create(1e-8f);
                for (; i + 8 <= n; i += 8)
                {
                    var gi = Vector256.Create(g.AsSpan(i, 8));
                    var mi = vb1 * Vector256.Create(m.AsSpan(i, 8)) + vb1c * gi;
                    var vi = vb2 * Vector256.Create(v.AsSpan(i, 8)) + vb2c * gi * gi;
                    mi.CopyTo(m.AsSpan(i, 8));
                    vi.CopyTo(v.AsSpan(i, 8));
                    var pi = Vector256.Create(p.AsSpan(i, 8))
                        - vStep * mi / (Vector256.Sqrt(vi * vBc2) + vEps);
                    pi.CopyTo(p.AsSpan(i, 8));
                }
            }
            for (; i < n; i++)
            {
                m[i] = b1 * m[i] + (1 - b1) * g[i];
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
                p[i] -= lr / bc1 * m[i] / (MathF.Sqrt(v[i] * (1 / bc2)) + 1e-8f);
            }
        }, 1 << 16);
    }

    /// <summary>Folds the input scaling into the weights, so the dictionary takes raw activations. Call once, at the end.</summary>
    public void Finish()
    {
        if (_folded) return;
        SyncToHost();
        if (ScalingFactor != 1f) _dict.FoldInputScaling(ScalingFactor);
        _folded = true;
    }

    void InitBDec(float[] targets, int rows, int d)
    {
        var bDec = _dict.P.BDec;
        switch (_o.BDecInit)
        {
            case BDecInit.Zeros: Array.Clear(bDec); break;
            case BDecInit.Mean: Mean(targets, rows, d).CopyTo(bDec, 0); break;
            case BDecInit.GeometricMedian: GeometricMedian(targets, rows, d).CopyTo(bDec, 0); break;
        }
    }

    static float[] Mean(float[] data, int rows, int d)
    {
        var mean = new double[d];
        for (int r = 0; r < rows; r++) for (int j = 0; j < d; j++) mean[j] += data[r * d + j];
        return mean.Select(m => (float)(m / rows)).ToArray();
    }

    /// <summary>
    /// Geometric median argmin_y Σ_r ‖x_r − y‖ by Weiszfeld iterations from the mean
    /// (y ← Σ w_r x_r / Σ w_r, w_r = 1/‖x_r − y‖), at most <paramref name="iterations"/>.
    /// </summary>
    public static float[] GeometricMedian(float[] data, int rows, int d, int iterations = 100, double tolerance = 1e-6)
    {
        var y = Mean(data, rows, d).Select(v => (double)v).ToArray();
        var next = new double[d];
        for (int it = 0; it < iterations; it++)
        {
            Array.Clear(next);
            double wSum = 0;
            for (int r = 0; r < rows; r++)
            {
                double dist = 0;
                for (int j = 0; j < d; j++) { double e = data[r * d + j] - y[j]; dist += e * e; }
                double w = 1 / Math.Max(Math.Sqrt(dist), 1e-8);
                wSum += w;
                for (int j = 0; j < d; j++) next[j] += w * data[r * d + j];
            }
            double move = 0;
            for (int j = 0; j < d; j++) { double n = next[j] / wSum; move += (n - y[j]) * (n - y[j]); y[j] = n; }
            if (Math.Sqrt(move) < tolerance) break;
        }
        return y.Select(v => (float)v).ToArray();
    }

    // g_i ← g_i − (g_i·w_i) w_i for each unit decoder row w_i
    void ProjectDecoderGradient()
    {
        int dOut = _dict.Shape.DOut;
        float[] wDec = _dict.P.WDec, gDec = _grad.WDec;
        RowParallel.For(_dict.Shape.DSae, dOut, i =>
        {
            var w = wDec.AsSpan(i * dOut, dOut);
            var g = gDec.AsSpan(i * dOut, dOut);
            TensorPrimitives.MultiplyAdd(w, -TensorPrimitives.Dot(g, w), g, g);
        });
    }

    void NormalizeDecoderRows()
    {
        int dOut = _dict.Shape.DOut;
        float[] wDec = _dict.P.WDec;
        RowParallel.For(_dict.Shape.DSae, dOut, i =>
        {
            var w = wDec.AsSpan(i * dOut, dOut);
            float n = TensorPrimitives.Norm(w);
            if (n > 0) TensorPrimitives.Multiply(w, 1 / n, w);
        });
    }
}
