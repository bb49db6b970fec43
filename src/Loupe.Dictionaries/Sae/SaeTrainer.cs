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

/// <summary>Adam training of a <see cref="SparseDictionary"/> on rows held in memory.</summary>
public sealed class SaeTrainer
{
    readonly SparseDictionary _dict;
    readonly SaeTrainingOptions _o;
    readonly SaeParameters _grad, _m, _v;
    readonly long[] _sinceFired;   // [d_sae] tokens since each feature last fired

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

    /// <summary>The input scaling factor c used in the last <see cref="Train"/> (1 without normalisation); already folded.</summary>
    public float ScalingFactor { get; private set; } = 1f;

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
    /// (null: the inputs, an SAE). Returns the metrics of every step.
    /// </summary>
    /// <exception cref="ArgumentException">The arrays do not hold whole rows, or row counts differ.</exception>
    public List<SaeStepMetrics> Train(float[] inputs, float[]? targets = null)
    {
        var s = _dict.Shape;
        targets ??= inputs;
        if (inputs.Length == 0 || inputs.Length % s.DIn != 0) throw new ArgumentException($"inputs length {inputs.Length} is not a positive multiple of d_in = {s.DIn}");
        int rows = inputs.Length / s.DIn;
        if (targets.Length != rows * s.DOut) throw new ArgumentException($"targets length {targets.Length} != rows·d_out = {rows * s.DOut}");

        ScalingFactor = 1f;
        if (_o.NormalizeExpectedAverage)
        {
            double normSum = 0;
            for (int r = 0; r < rows; r++) normSum += TensorPrimitives.Norm(inputs.AsSpan(r * s.DIn, s.DIn));
            ScalingFactor = normSum > 0 ? (float)(Math.Sqrt(s.DIn) / (normSum / rows)) : 1f;
            bool same = ReferenceEquals(inputs, targets);
            var scaledIn = new float[inputs.Length];
            TensorPrimitives.Multiply(inputs, ScalingFactor, scaledIn);
            var scaledOut = same ? scaledIn : new float[targets.Length];
            if (!same) TensorPrimitives.Multiply(targets, ScalingFactor, scaledOut);
            (inputs, targets) = (scaledIn, scaledOut);
        }
        InitBDec(targets, rows, s.DOut);
        if (_dict.Activation.UnitNormDecoder) NormalizeDecoderRows();

        var rng = new Random(_o.Seed);
        int batch = _o.BatchSize;
        var x = new float[batch * s.DIn];       // [batch, d_in]
        var y = new float[batch * s.DOut];      // [batch, d_out]
        var acts = new float[batch * s.DSae];   // [batch, d_sae]
        var dead = new bool[s.DSae];            // [d_sae] not fired in the last DeadWindowTokens tokens
        var metrics = new List<SaeStepMetrics>(_o.Steps);
        var trainable = _dict.P.Trainable(_dict.Activation).ToArray();
        var grads = _grad.Trainable(_dict.Activation).Select(t => t.Data).ToArray();
        var ms = _m.Trainable(_dict.Activation).Select(t => t.Data).ToArray();
        var vs = _v.Trainable(_dict.Activation).Select(t => t.Data).ToArray();

        for (int step = 0; step < _o.Steps; step++)
        {
            // 1. batch
            for (int b = 0; b < batch; b++)
            {
                int r = rng.Next(rows);
                inputs.AsSpan(r * s.DIn, s.DIn).CopyTo(x.AsSpan(b * s.DIn));
                targets.AsSpan(r * s.DOut, s.DOut).CopyTo(y.AsSpan(b * s.DOut));
            }
            // 2. forward + backward
            for (int i = 0; i < s.DSae; i++) dead[i] = _sinceFired[i] >= _o.DeadWindowTokens;
            var loss = _dict.ForwardBackward(x, y, batch, SparsityCoefficientAt(step), _grad, training: true, acts, dead, _o.AuxKCoefficient);
            // 3. project out the radial component of decoder-row gradients
            if (_dict.Activation.UnitNormDecoder) ProjectDecoderGradient();
            // 4. clip
            if (_o.GradClipNorm > 0)
            {
                double sq = 0;
                foreach (var g in grads) sq += TensorPrimitives.SumOfSquares(g);
                double norm = Math.Sqrt(sq);
                if (norm > _o.GradClipNorm)
                    foreach (var g in grads) TensorPrimitives.Multiply(g, (float)(_o.GradClipNorm / norm), g);
            }
            // 5. Adam
            float lr = LearningRateAt(step);
            float bc1 = 1 - MathF.Pow(_o.Beta1, step + 1), bc2 = 1 - MathF.Pow(_o.Beta2, step + 1);
            for (int t = 0; t < trainable.Length; t++)
            {
                float[] p = trainable[t].Data, g = grads[t], m = ms[t], v = vs[t];
                for (int i = 0; i < p.Length; i++)
                {
                    m[i] = _o.Beta1 * m[i] + (1 - _o.Beta1) * g[i];
                    v[i] = _o.Beta2 * v[i] + (1 - _o.Beta2) * g[i] * g[i];
                    p[i] -= lr * (m[i] / bc1) / (MathF.Sqrt(v[i] / bc2) + 1e-8f);
                }
            }
            // 6. unit-norm decoder rows
            if (_dict.Activation.UnitNormDecoder) NormalizeDecoderRows();
            // 7. dead features
            int nDead = 0;
            for (int i = 0; i < s.DSae; i++)
            {
                bool fired = false;
                for (int b = 0; b < batch && !fired; b++) fired = acts[b * s.DSae + i] != 0;
                _sinceFired[i] = fired ? 0 : _sinceFired[i] + batch;
                if (_sinceFired[i] >= _o.DeadWindowTokens) nDead++;
            }
            metrics.Add(new SaeStepMetrics(step, loss.Loss, loss.Mse, loss.Sparsity, loss.L0, loss.ExplainedVariance,
                (float)nDead / s.DSae, lr));
        }
        if (ScalingFactor != 1f) _dict.FoldInputScaling(ScalingFactor);
        return metrics;
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
        for (int i = 0; i < _dict.Shape.DSae; i++)
        {
            var w = _dict.P.WDec.AsSpan(i * dOut, dOut);
            var g = _grad.WDec.AsSpan(i * dOut, dOut);
            float dot = TensorPrimitives.Dot(g, w);
            for (int j = 0; j < dOut; j++) g[j] -= dot * w[j];
        }
    }

    void NormalizeDecoderRows()
    {
        int dOut = _dict.Shape.DOut;
        for (int i = 0; i < _dict.Shape.DSae; i++)
        {
            var w = _dict.P.WDec.AsSpan(i * dOut, dOut);
            float n = TensorPrimitives.Norm(w);
            if (n > 0) TensorPrimitives.Multiply(w, 1 / n, w);
        }
    }
}
