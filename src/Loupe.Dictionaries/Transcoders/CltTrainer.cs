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
using System.Globalization;
using System.Numerics.Tensors;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

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
    public CltTrainer(CrossLayerTranscoder clt, CltTrainingOptions options)
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
    }

    public CrossLayerTranscoder Transcoder => _clt;
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

    // ---- checkpoints ----
    //   param.<name>, adam_m.<name>, adam_v.<name>, since_fired I64 [L·d_sae], carry_inputs / carry_targets
    //   metadata "loupe_clt_checkpoint" = JSON {format_version, step, epoch, window, batches_taken, architecture, shape, options, data}

    const string MetadataKey = "loupe_clt_checkpoint";
    const int CheckpointVersion = 1;

    JsonObject State(BatchCursor cursor) => new()
    {
        ["format_version"] = CheckpointVersion,
        ["step"] = StepsDone,
        ["epoch"] = cursor.Epoch,
        ["window"] = cursor.Window,
        ["batches_taken"] = cursor.BatchesTaken,
        ["architecture"] = _clt.Architecture,
        ["shape"] = _clt.Shape.ToString(),
        ["options"] = $"{_o.Base} penalty={_o.Penalty} tanh_scale={_o.TanhScale.ToString("R", CultureInfo.InvariantCulture)}",
        ["data"] = _data?.Description ?? "",
    };

    /// <summary>Writes a checkpoint atomically (temp file + rename).</summary>
    /// <exception cref="InvalidOperationException">Not begun.</exception>
    public void SaveCheckpoint(string path)
    {
        if (_batches is null) throw new InvalidOperationException("nothing to checkpoint: call Begin first");
        var cursor = _batches.Cursor;
        var entries = new List<SafeTensorEntry>();
        foreach (var (name, data) in _clt.P.All()) entries.Add(SafeTensorEntry.F32("param." + name, [data.Length], data));
        foreach (var ((name, m), (_, v)) in _m.Trainable(_clt.Activation).Zip(_v.Trainable(_clt.Activation)))
        {
            entries.Add(SafeTensorEntry.F32("adam_m." + name, [m.Length], m));
            entries.Add(SafeTensorEntry.F32("adam_v." + name, [v.Length], v));
        }
        entries.Add(SafeTensorEntry.I64("since_fired", [_sinceFired.Length], _sinceFired));
        if (cursor.CarryInputs.Length > 0) entries.Add(SafeTensorEntry.F32("carry_inputs", [cursor.CarryInputs.Length], cursor.CarryInputs));
        if (cursor.CarryTargets is { Length: > 0 } ct) entries.Add(SafeTensorEntry.F32("carry_targets", [ct.Length], ct));
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        OutputFiles.EnsureReplaceable(path);
        SafeTensorsWriter.Write(path, entries, new Dictionary<string, string> { [MetadataKey] = State(cursor).ToJsonString(), ["format"] = "loupe-clt-checkpoint" });
    }

    /// <summary>Continues from a checkpoint of a run with the same shape, activation, options and data.</summary>
    /// <exception cref="InputError">Not a CLT checkpoint, written with other settings (listed), or a tensor is missing, mis-shaped or not finite (named).</exception>
    public void LoadCheckpoint(string path, IRowWindows data)
    {
        ArgumentNullException.ThrowIfNull(data);
        using var file = SaeLensFormat.OpenSafeTensors(path);
        if (!file.Metadata.TryGetValue(MetadataKey, out var json))
            throw new InputError($"{path}: not a Loupe CLT checkpoint (no '{MetadataKey}' metadata)");
        JsonObject state;
        try { state = JsonNode.Parse(json) as JsonObject ?? throw new InputError($"{path}: checkpoint metadata is not a JSON object"); }
        catch (JsonException e) { throw new InputError($"{path}: checkpoint metadata is not valid JSON: {e.Message}", e); }
        int Int(string key, long min, long max)
        {
            var node = state[key];
            if (node is not JsonValue jv || jv.GetValueKind() != JsonValueKind.Number || !jv.TryGetValue(out long value))
                throw InputError.Expected(path, $"checkpoint field '{key}'", "an integer", node?.ToJsonString());
            return Check.InRange(value, min, max, path, $"checkpoint field '{key}'");
        }
        int version = Int("format_version", int.MinValue, int.MaxValue);
        if (version != CheckpointVersion) throw InputError.Expected(path, "checkpoint format_version", CheckpointVersion.ToString(CultureInfo.InvariantCulture), version);
        var expected = State(new BatchCursor(0, 0, 0, [], null));
        expected["data"] = data.Description;
        var diffs = new List<string>();
        foreach (var key in new[] { "architecture", "shape", "options", "data" })
        {
            string want = expected[key]!.GetValue<string>();
            string have = state[key] is JsonValue hv && hv.GetValueKind() == JsonValueKind.String ? hv.GetValue<string>() : "(missing)";
            if (want != have) diffs.Add($"{key}: checkpoint has {have}, this run has {want}");
        }
        if (diffs.Count > 0) throw new InputError($"{path}: was written by a run with different settings. Differences: {string.Join("; ", diffs)}");
        int step = Int("step", 0, B.Steps), epoch = Int("epoch", 0, int.MaxValue), window = Int("window", 0, data.WindowCount - 1);
        int batchesTaken = Int("batches_taken", 0, int.MaxValue / B.BatchSize);

        float[] Read(string name, int length, bool optional = false)
        {
            if (!file.TryGetInfo(name, out var info)) return optional ? [] : throw new InputError($"{path}: tensor '{name}' is missing");
            if (info.DType != DType.F32 || info.Shape.Length != 1 || (length >= 0 && info.Shape[0] != length) || info.Shape[0] > Check.MaxArrayElements)
                throw InputError.Expected(path, $"tensor '{name}'", $"F32 [{(length >= 0 ? length.ToString(CultureInfo.InvariantCulture) : "n")}]", $"{info.DType} [{string.Join(", ", info.Shape)}]");
            var values = file.GetFloat32(name).ToArray();
            if (Array.FindIndex(values, x => float.IsNaN(x) || float.IsPositiveInfinity(x)) is int bad and >= 0)
                throw InputError.Expected(path, $"tensor '{name}' element {bad}", "a finite number", values[bad]);
            return values;
        }
        var loaded = new List<(float[] Into, float[] Values)>();
        foreach (var (name, buffer) in _clt.P.All()) loaded.Add((buffer, Read("param." + name, buffer.Length)));
        foreach (var ((name, m), (_, v)) in _m.Trainable(_clt.Activation).Zip(_v.Trainable(_clt.Activation)))
        {
            loaded.Add((m, Read("adam_m." + name, m.Length)));
            loaded.Add((v, Read("adam_v." + name, v.Length)));
        }
        if (!file.TryGetInfo("since_fired", out var sinceInfo) || sinceInfo.Shape.Length != 1 || sinceInfo.Shape[0] != _sinceFired.Length || sinceInfo.DType.IsFloatingPoint())
            throw InputError.Expected(path, "tensor 'since_fired'", $"I64 [{_sinceFired.Length}] (n_layers·d_sae)", sinceInfo is null ? "missing" : $"{sinceInfo.DType} [{string.Join(", ", sinceInfo.Shape)}]");
        var since = file.GetInt64("since_fired");
        var carryIn = Read("carry_inputs", -1, optional: true);
        float[]? carryOut = data.HasTargets ? Read("carry_targets", -1, optional: true) : null;
        if (carryIn.Length % data.DIn != 0 || carryIn.Length / data.DIn >= B.BatchSize || (carryOut is not null && carryOut.Length / data.DOut != carryIn.Length / data.DIn))
            throw InputError.Expected(path, "tensors 'carry_inputs' / 'carry_targets'", $"the same fewer-than-one-batch ({B.BatchSize}) of whole rows", $"{carryIn.Length} and {carryOut?.Length ?? 0} floats");

        foreach (var (into, values) in loaded) values.CopyTo(into, 0);
        since.CopyTo(_sinceFired, 0);
        StepsDone = step;
        Attach(data, new BatchCursor(epoch, window, batchesTaken, carryIn, carryOut));
    }
}
