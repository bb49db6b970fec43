using Loupe.Probes.Classifiers;
using Loupe.Probes.Harvest;
using Loupe.Tensors.Backends;

namespace Loupe.Probes.Experiment;

/// <summary>
/// Trains and scores probes on harvested activations. Steps:
/// 1. split the sentences into train and held-out (<see cref="SentenceSplit.Create"/>): every token of a
///    sentence lands on the same side, so a probe is never scored on a sentence it saw;
/// 2. the baseline: always predict the most frequent training class, scored on held-out tokens;
/// 3. per hook (in parallel on the CPU, one at a time on a device; each is independent and deterministic):
///    standardize with training statistics, place the rows on the backend, train the chosen probes on training
///    tokens, score them on both sides and tabulate the held-out confusion matrix.
/// </summary>
public static class ProbeTrainer
{
    /// <param name="data">The labelled activations.</param>
    /// <param name="options">Probes, seed, split and optimiser settings.</param>
    /// <param name="progress">Told the number of hooks finished, from whichever thread finished one.</param>
    /// <param name="backend">Where the probes' products run (the model's backend; the CPU when null). One hook's
    /// standardized rows are on it at a time.</param>
    /// <param name="deviceFreeBytes">The device's free memory, when known: a run whose one hook would not fit
    /// (<see cref="DeviceBytesPerHook"/>) is refused before anything is placed there.</param>
    /// <exception cref="InputError">The options are out of range, the data has fewer than 2 sentences or 2 classes, one side of the split has no tokens, or one hook's rows would not fit in the device's free memory.</exception>
    public static ProbeRun Run(LabelledActivations data, ProbeOptions? options = null, IProgress<int>? progress = null, IComputeBackend? backend = null,
        long? deviceFreeBytes = null)
    {
        options ??= new ProbeOptions();
        backend ??= CpuBackend.Instance;
        if ((options.Probes & ProbeKinds.Both) == 0) throw new InputError("no probe kind was chosen");
        if (options.MaxParallelism == 0 || options.MaxParallelism < -1)
            throw new InputError($"MaxParallelism must be -1 (one per core) or positive (got {options.MaxParallelism})");
        int K = data.ClassNames.Count;
        if (K < 2) throw new InputError($"probing needs at least 2 classes (got {K})");
        if (!backend.Device.IsCpu && deviceFreeBytes is long free && DeviceBytesPerHook(data) is var needed && needed > free)
            throw new InputError(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"probes on {backend.Device}: one hook's standardized rows and scores need about {needed / GiB:F2} GiB ({data.Count} labelled tokens × width {data.Widths.Max()}, fp32) but {free / GiB:F2} GiB is free; use fewer sentences (--max-sentences) or --device cpu"));
        var split = SentenceSplit.Create(data.SentenceCount, options.HeldOutFraction, options.Seed);
        var train = new List<int>();
        var heldOut = new List<int>();
        for (int i = 0; i < data.Count; i++) (split.HeldOut[data.Sentences[i]] ? heldOut : train).Add(i);
        if (train.Count == 0 || heldOut.Count == 0)
            throw new InputError($"the split left {train.Count} training and {heldOut.Count} held-out tokens; use more sentences");
        int[] yTrain = train.Select(i => data.Labels[i]).ToArray(), yHeld = heldOut.Select(i => data.Labels[i]).ToArray();
        var trainCounts = Histogram(yTrain, K);
        var heldCounts = Histogram(yHeld, K);
        int majority = Array.IndexOf(trainCounts, trainCounts.Max());
        double baseline = (double)heldCounts[majority] / yHeld.Length;

        var results = new HookProbeResult[data.Hooks.Count];
        int finished = 0;
        // A device has one stream: its hooks train one after another. On the CPU, hooks train side by side (the
        // objective's row-wise parts are single-threaded) and the results do not depend on how many at once.
        int parallelism = backend.Device.IsCpu ? options.MaxParallelism : 1;
        using var sideBySide = backend.Device.IsCpu && parallelism != 1 && data.Hooks.Count > 1 ? CpuBackend.SideBySideJobs() : null;
        Parallel.For(0, data.Hooks.Count, new ParallelOptions { MaxDegreeOfParallelism = parallelism }, h =>
        {
            int d = data.Widths[h];
            var features = data.Features(h);
            var xTrain = Gather(features, d, train);
            var standardizer = Standardizer.Fit(xTrain, d);
            ProbeScore? logistic = null, diffMeans = null;
            // DiffMeans reads the raw rows; then they are standardized in place and placed on the device.
            var diffMeansProbe = options.Probes.HasFlag(ProbeKinds.DiffMeans) ? DiffMeansProbe.Train(standardizer, xTrain, yTrain, K) : null;
            var zTrain = ProbeRows.StandardizeInPlace(backend, standardizer, xTrain);
            var zHeld = ProbeRows.StandardizeInPlace(backend, standardizer, Gather(features, d, heldOut));
            if (options.Probes.HasFlag(ProbeKinds.Logistic))
            {
                var probe = LogisticProbe.Train(standardizer, zTrain, yTrain, K, options.Logistic);
                logistic = Score(probe.Predict(zTrain), yTrain, probe.Predict(zHeld), yHeld, K) with
                {
                    Iterations = probe.Iterations,
                    Converged = probe.Converged,
                    Stop = probe.Stop switch
                    {
                        LbfgsStop.Gradient => "gradient",
                        LbfgsStop.Decrease => "decrease",
                        LbfgsStop.Budget => "budget",
                        _ => "line_search",
                    },
                };
            }
            if (diffMeansProbe is not null)
                diffMeans = Score(diffMeansProbe.Predict(zTrain), yTrain, diffMeansProbe.Predict(zHeld), yHeld, K);
            results[h] = new HookProbeResult(data.Hooks[h], h, d, logistic, diffMeans);
            progress?.Report(Interlocked.Increment(ref finished));
        });
        return new ProbeRun(data.ClassNames, results, split, trainCounts, heldCounts, majority, baseline);
    }

    const double GiB = 1024.0 * 1024 * 1024;

    /// <summary>
    /// Device bytes one hook's training holds at once: its standardized rows (train and held-out, fp32) and, per row, the
    /// logits, their gradient, the loss and the prediction scores (K floats each, the loss one).
    /// </summary>
    public static long DeviceBytesPerHook(LabelledActivations data) =>
        (long)data.Count * (data.Widths.Max() + 3L * data.ClassNames.Count + 1) * sizeof(float);

    static float[] Gather(float[] features, int d, List<int> rows)
    {
        var x = new float[rows.Count * d];  // [rows, d]
        for (int r = 0; r < rows.Count; r++) features.AsSpan(rows[r] * d, d).CopyTo(x.AsSpan(r * d, d));
        return x;
    }

    static int[] Histogram(int[] labels, int classes)
    {
        var counts = new int[classes];
        foreach (var y in labels) counts[y]++;
        return counts;
    }

    static ProbeScore Score(int[] trainPredicted, int[] yTrain, int[] heldPredicted, int[] yHeld, int classes)
    {
        var confusion = new int[classes][];
        for (int k = 0; k < classes; k++) confusion[k] = new int[classes];
        int heldCorrect = 0, trainCorrect = 0;
        for (int i = 0; i < yHeld.Length; i++)
        {
            confusion[yHeld[i]][heldPredicted[i]]++;
            if (heldPredicted[i] == yHeld[i]) heldCorrect++;
        }
        for (int i = 0; i < yTrain.Length; i++)
            if (trainPredicted[i] == yTrain[i]) trainCorrect++;
        return new ProbeScore((double)trainCorrect / yTrain.Length, (double)heldCorrect / yHeld.Length, confusion);
    }
}
