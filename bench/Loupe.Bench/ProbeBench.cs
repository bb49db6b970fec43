using System.Diagnostics;
using Loupe.Probes.Classifiers;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Bench;

// Probe fitting: one evaluation of the logistic probe's objective (loss and gradient over every training row) by the
// double-precision host loop (LogisticProbe.LossAndGradient, the path probes trained on until 2026-12) against the
// backend's products (LogisticObjective: two GEMMs and a cross-entropy pass), and whole fits (L-BFGS, same budget) by
// both. Data: K Gaussian classes in d dimensions at shapes of real probes (stories260K, GPT-2 small); minimum of reps.

/// <summary>One shape: per-evaluation seconds by each path, whole-fit seconds and the fits' held-in accuracy.</summary>
public sealed record ProbeResult(int Rows, int Width, int Classes, double HostEvalSeconds, double BackendEvalSeconds,
    double HostFitSeconds, double BackendFitSeconds, int HostIterations, int BackendIterations, double HostAccuracy, double BackendAccuracy,
    double MaxGradientDifference)
{
    public double EvalSpeedup => HostEvalSeconds / BackendEvalSeconds;
    public double FitSpeedup => HostFitSeconds / BackendFitSeconds;
}

public static class ProbeBench
{
    public static IReadOnlyList<(int N, int D, int K)> Shapes(bool quick) => quick
        ? [(4_000, 32, 12)]
        : [(160_000, 64, 12), (50_000, 768, 12)];

    public static ProbeResult Run(int n, int d, int classes, int reps, int iterations, TextWriter log)
    {
        log.WriteLine($"probes [{n} × {d}, {classes} classes]: data …");
        var (x, y) = Data(n, d, classes, seed: 17);
        var standardizer = Standardizer.Fit(x, d);
        var zHost = standardizer.Transform(x);
        var rows = ProbeRows.Upload(CpuBackend.Instance, standardizer, x);
        var objective = new LogisticObjective(rows, y, classes, 1e-3);
        var random = new Random(3);
        var theta = Enumerable.Range(0, objective.Parameters).Select(_ => 0.05 * (random.NextDouble() - 0.5)).ToArray();
        var gHost = new double[theta.Length];
        var gBackend = new double[theta.Length];

        double hostEval = double.MaxValue, backendEval = double.MaxValue;
        for (int r = 0; r < reps + 1; r++)   // the first round warms up
        {
            log.WriteLine($"probes [{n} × {d}]: evaluation round {r + 1} of {reps + 1} …");
            var clock = Stopwatch.StartNew();
            LogisticProbe.LossAndGradient(zHost, y, d, classes, theta, 1e-3, gHost);
            if (r > 0) hostEval = Math.Min(hostEval, clock.Elapsed.TotalSeconds);
            clock.Restart();
            objective.Evaluate(theta, gBackend);
            if (r > 0) backendEval = Math.Min(backendEval, clock.Elapsed.TotalSeconds);
        }
        double scale = gHost.Max(Math.Abs);
        double maxDiff = gHost.Zip(gBackend, (a, b) => Math.Abs(a - b)).Max() / scale;

        log.WriteLine($"probes [{n} × {d}]: fits ({iterations} iterations at most) …");
        var options = new LbfgsOptions(iterations, 10, 1e-5);
        var fitClock = Stopwatch.StartNew();
        var hostFit = Lbfgs.Minimize((t, g) => LogisticProbe.LossAndGradient(zHost, y, d, classes, t, 1e-3, g), new double[theta.Length], options);
        double hostFitSeconds = fitClock.Elapsed.TotalSeconds;
        fitClock.Restart();
        var backendProbe = LogisticProbe.Train(standardizer, rows, y, classes, new LogisticOptions(1e-3, iterations, 1e-5));
        double backendFitSeconds = fitClock.Elapsed.TotalSeconds;
        double hostAccuracy = Accuracy(rows.ArgMaxOfLinear(hostFit.X.AsSpan(0, classes * d), hostFit.X.AsSpan(classes * d)), y);
        double backendAccuracy = Accuracy(backendProbe.Predict(rows), y);
        return new ProbeResult(n, d, classes, hostEval, backendEval, hostFitSeconds, backendFitSeconds, hostFit.Iterations, backendProbe.Iterations,
            hostAccuracy, backendAccuracy, maxDiff);
    }

    /// <summary>Class means ~2 standard deviations apart (overlapping classes, as real probes see), unit noise, a common offset (standardizing must cope).</summary>
    static (float[] X, int[] Y) Data(int n, int d, int classes, int seed)
    {
        var random = new Random(seed);
        double Normal() => Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
        var means = new double[classes * d];
        for (int i = 0; i < means.Length; i++) means[i] = Normal() * 1.5 / Math.Sqrt(d);
        var x = new float[(long)n * d is var len && len <= int.MaxValue ? (int)len : throw new ArgumentException("too many values")];
        var y = new int[n];
        for (int i = 0; i < n; i++)
        {
            y[i] = random.Next(classes);
            for (int j = 0; j < d; j++) x[i * d + j] = (float)(5 + means[y[i] * d + j] + Normal());
        }
        return (x, y);
    }

    /// <summary>
    /// A POS-probe run's training stage: <paramref name="hooks"/> hooks of the same shape, side by side on the cores, by the
    /// old path (per hook: standardize to double, L-BFGS over the host loop) and by <see cref="Loupe.Probes.Experiment.ProbeTrainer.Run"/>
    /// (backend products, BLAS one thread per hook) — seconds each, logistic probes only, same iteration budget.
    /// </summary>
    public static (double Host, double Backend) Trainer(int n, int d, int classes, int hooks, int iterations, TextWriter log)
    {
        var (x, y) = Data(n, d, classes, seed: 17);
        var features = Enumerable.Range(0, hooks).Select(h => h == 0 ? x : x.Select((v, i) => v + 0.01f * h * (i % 7)).ToArray()).ToArray();
        log.WriteLine($"probes: {hooks} hooks of {n} × {d}, old host path …");
        var clock = Stopwatch.StartNew();
        Parallel.For(0, hooks, h =>
        {
            var standardizer = Standardizer.Fit(features[h], d);
            var z = standardizer.Transform(features[h]);
            Lbfgs.Minimize((t, g) => LogisticProbe.LossAndGradient(z, y, d, classes, t, 1e-3, g), new double[classes * d + classes],
                new LbfgsOptions(iterations, 10, 1e-5));
        });
        double host = clock.Elapsed.TotalSeconds;
        var data = Loupe.Probes.Harvest.LabelledActivations.FromArrays(
            Enumerable.Range(0, hooks).Select(h => $"h{h}").ToArray(), features, y, Enumerable.Range(0, n).Select(i => i / 20).ToArray(),
            Enumerable.Range(0, classes).Select(k => $"c{k}").ToArray());
        log.WriteLine($"probes: {hooks} hooks of {n} × {d}, backend …");
        clock.Restart();
        Loupe.Probes.Experiment.ProbeTrainer.Run(data, new Loupe.Probes.Experiment.ProbeOptions(Loupe.Probes.Experiment.ProbeKinds.Logistic, Seed: 1,
            HeldOutFraction: 0.01, Logistic: new LogisticOptions(1e-3, iterations)));
        return (host, clock.Elapsed.TotalSeconds);
    }

    static double Accuracy(int[] predicted, int[] y) => predicted.Zip(y).Count(p => p.First == p.Second) / (double)y.Length;

    public static void Print(TextWriter w, IReadOnlyList<ProbeResult> results, (int N, int D, int Hooks, double Host, double Backend) trainer)
    {
        w.WriteLine();
        w.WriteLine("## Probe fitting (multinomial logistic regression, L-BFGS): host double loop vs backend products, CPU");
        w.WriteLine("rows × width, classes      | one evaluation: host / backend ms (×) | whole fit: host / backend s (×), iterations | accuracy host / backend | max |Δ∇| / max |∇|");
        foreach (var r in results)
            w.WriteLine($"{r.Rows,8} × {r.Width,4}, {r.Classes,3}        | {r.HostEvalSeconds * 1e3,8:F1} / {r.BackendEvalSeconds * 1e3,7:F1} ({r.EvalSpeedup,5:F1}×)   " +
                        $"| {r.HostFitSeconds,7:F2} / {r.BackendFitSeconds,6:F2} ({r.FitSpeedup,5:F1}×), {r.HostIterations} / {r.BackendIterations} " +
                        $"| {r.HostAccuracy:F4} / {r.BackendAccuracy:F4} | {r.MaxGradientDifference:E1}");
        w.WriteLine($"{trainer.Hooks} hooks of {trainer.N} × {trainer.D} side by side (a probe run's training stage): host {trainer.Host:F2} s, backend {trainer.Backend:F2} s ({trainer.Host / trainer.Backend:F1}×)");
    }
}
