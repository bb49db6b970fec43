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
}

/// <summary>Metrics of one training step.</summary>
public sealed record SaeStepMetrics(int Step, float Loss, float Mse, float Sparsity, float L0, float ExplainedVariance,
    float DeadFraction, float LearningRate);

/// <summary>
/// Adam training of a <see cref="SparseDictionary"/>: <see cref="Begin"/> on a data source (or resume from a
/// checkpoint), then <see cref="Step"/> repeatedly, <see cref="SaveCheckpoint"/> at will, and <see cref="Finish"/>.
/// <see cref="Train(float[], float[])"/> does all of it for rows held in memory.
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

    public SaeTrainer(SparseDictionary dictionary, SaeTrainingOptions options)
    {
        _dict = dictionary ?? throw new ArgumentNullException(nameof(dictionary));
        _o = options ?? throw new ArgumentNullException(nameof(options));
        if (_o.Steps <= 0 || _o.BatchSize <= 0) throw new ArgumentOutOfRangeException(nameof(options), "Steps and BatchSize must be positive");
        _grad = new SaeParameters(dictionary.Shape);
        _m = new SaeParameters(dictionary.Shape);
        _v = new SaeParameters(dictionary.Shape);
        _sinceFired = new long[dictionary.Shape.DSae];
    }

    public SparseDictionary Dictionary => _dict;
    public SaeTrainingOptions Options => _o;

    /// <summary>The input scaling factor c (1 without normalisation); folded into the weights by <see cref="Finish"/>.</summary>
    public float ScalingFactor { get; private set; } = 1f;

    bool _folded;

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
        if (rows == 0) throw new ArgumentException($"the first window of {data.Description} holds no rows", nameof(data));
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
        // 2. forward + backward
        for (int i = 0; i < s.DSae; i++) _dead[i] = _sinceFired[i] >= _o.DeadWindowTokens;
        var loss = _dict.ForwardBackward(_x, _y, batch, SparsityCoefficientAt(step), _grad, training: true, default, _dead, _o.AuxKCoefficient, _fires);
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
