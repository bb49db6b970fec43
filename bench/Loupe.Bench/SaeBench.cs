using System.Diagnostics;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Bench;

// Dictionary costs, each against a baseline timed in the same run:
// 1. SAE training steps (TopK k=32 and ReLU-L1) at d_in 768, d_sae 16,384: tokens/s and GFLOP/s,
//    against sgemm at the encoder's shape [batch, d_in]·[d_in, d_sae]. GFLOP counts what the step
//    really computes: the dense encoder product x·W_enc; dW_enc, dense (2·batch·d_in·d_sae) or from
//    the active entries (2·nnz·d_in, TopK-like activations on sparse rows); and the decoder products,
//    dense (3 × 2·batch·d_sae·d) or on sparse rows (3 × 2·nnz·d) as the step chose. The
//    dense-equivalent rate (12·batch·d_in·d_sae per step) is shown too, for comparison with a
//    trainer that runs every product dense.
// 2. Harvest tokens/s against plain forward tokens/s on the same contexts (both cache one hook and
//    compute last-position logits only).

public sealed record SaeStepResult(string Architecture, int DIn, int DSae, int Batch, Stats StepMs, double TokensPerSecond,
    double L0, bool SparsePath, double GflopPerStep, double Gflops, double DenseEquivalentGflops, double SgemmGflops, double RatioToSgemm);

public sealed record HarvestResult(string Model, int Contexts, int Length, double ForwardTokensPerSecond, double HarvestTokensPerSecond, double Ratio);

public static class SaeBench
{
    public static List<SaeStepResult> Steps(SgemmBench sgemm, bool quick, int reps, TextWriter log)
    {
        int dIn = quick ? 128 : 768, dSae = quick ? 2048 : 16_384, batch = quick ? 512 : 4096;
        var sg = sgemm.Get(new GemmShape($"SAE encoder {batch}×{dIn}·{dIn}×{dSae}", batch, dSae, dIn, false, dIn, dSae, dSae, 1), "sae");
        var rng = new Random(1);
        var rows = new float[4 * batch * dIn]; // [rows, d_in]
        for (int i = 0; i < rows.Length; i++) rows[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var results = new List<SaeStepResult>();
        foreach (var (name, act, sparsity) in new (string, SaeActivation, float)[] { ("topk k=32", new TopKActivation(32), 0f), ("relu-l1", new ReluActivation(), 5f) })
        {
            log.WriteLine($"sae: {name} d_in {dIn} d_sae {dSae} batch {batch} …");
            var dict = new SparseDictionary(SaeShape.Sae(dIn, dSae), act);
            dict.Initialize(0);
            var trainer = new SaeTrainer(dict, new SaeTrainingOptions { Steps = 1000, BatchSize = batch, SparsityCoefficient = sparsity, BDecInit = BDecInit.Mean });
            trainer.Begin(new InMemoryRows(rows, dIn));
            SaeStepMetrics last = trainer.Step(); // warm-up (allocates the workspace)
            last = trainer.Step();
            var times = new List<double>();
            for (int r = 0; r < Math.Max(2, reps); r++)
            {
                var clock = Stopwatch.StartNew();
                last = trainer.Step();
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
            var stats = Stats.Of(times);
            double nnz = last.L0 * batch;
            bool sparse = nnz <= dict.SparseDensity * batch * (double)dSae;
            // a TopK-like step on sparse rows also takes dW_enc from the active entries (see SparseDictionary.ForwardBackward)
            bool sparseEncoderGradient = sparse && act.GradientOnlyWhereActive && !act.HasSparsityPenalty;
            double encoder = 2.0 * batch * dIn * dSae;
            double decoder = sparse ? 3 * 2.0 * nnz * dIn : 3 * 2.0 * batch * dSae * dIn;
            double flops = encoder + (sparseEncoderGradient ? 2.0 * nnz * dIn : encoder) + decoder;
            double gflops = flops / (stats.MedianMs * 1e6);
            results.Add(new SaeStepResult(name, dIn, dSae, batch, stats, batch / (stats.MedianMs / 1000), last.L0, sparse,
                flops / 1e9, gflops, 6 * encoder / (stats.MedianMs * 1e6), sg.Gflops, gflops / sg.Gflops));
        }
        return results;
    }

    public static HarvestResult Harvest(BenchModel m, string folder, bool quick, int reps, TextWriter log)
    {
        using var model = ModelLoader.LoadFolder(folder);
        int contexts = quick ? 16 : 32, length = BenchOptions.SequenceLength, batch = 8;
        var rng = new Random(3);
        var rows = Enumerable.Range(0, contexts).Select(_ => Enumerable.Range(0, length).Select(_ => rng.Next(m.DVocab)).ToArray()).ToArray();
        var ctx = HarvestContexts.FromRows(rows, "random tokens");
        string hook = HookNames.ResidPost(model.Config.NLayers / 2);
        log.WriteLine($"harvest [{m.Name}]: {contexts}×{length} tokens, {hook} …");
        double Forward()
        {
            var clock = Stopwatch.StartNew();
            for (int c = 0; c < contexts; c += batch)
            {
                var ids = rows.Skip(c).Take(batch).SelectMany(r => r).ToArray();
                model.Run(new TokenBatch(ids, ids.Length / length, length), new RunOptions { CacheFilter = n => n == hook, LastPositionLogitsOnly = true });
            }
            return clock.Elapsed.TotalSeconds;
        }
        double HarvestOnce()
        {
            string dir = Path.Combine(Path.GetTempPath(), "loupe-bench-harvest-" + Guid.NewGuid().ToString("N"));
            try
            {
                var clock = Stopwatch.StartNew();
                Harvester.Run(model, ctx, dir, new HarvestOptions([hook], batch));
                return clock.Elapsed.TotalSeconds;
            }
            finally { Directory.Delete(dir, true); }
        }
        Forward();
        HarvestOnce();
        var f = new List<double>();
        var h = new List<double>();
        for (int r = 0; r < Math.Max(2, reps); r++) { f.Add(Forward()); h.Add(HarvestOnce()); } // interleaved: same load
        double tokens = (double)contexts * length;
        double fTps = tokens / Stats.Median(f), hTps = tokens / Stats.Median(h);
        return new HarvestResult(m.Name, contexts, length, fTps, hTps, hTps / fTps);
    }

    public static void Print(TextWriter w, IEnumerable<SaeStepResult> steps, IEnumerable<HarvestResult> harvests)
    {
        var t = new Table("architecture", ">d_in", ">d_sae", ">batch", ">ms/step", ">±%", ">tokens/s", ">L0", "backward", ">GFLOP/step", ">GFLOP/s", ">dense-equiv GFLOP/s", ">sgemm GFLOP/s", ">÷ sgemm");
        foreach (var s in steps)
            t.Add(s.Architecture, s.DIn.ToString(), s.DSae.ToString(), s.Batch.ToString(), s.StepMs.MedianMs.ToString("F1"),
                (100 * (s.StepMs.MaxMs - s.StepMs.MinMs) / 2 / s.StepMs.MedianMs).ToString("F0"), s.TokensPerSecond.ToString("F0"),
                s.L0.ToString("F1"), s.SparsePath ? "sparse rows" : "dense GEMMs", s.GflopPerStep.ToString("F1"), s.Gflops.ToString("F1"),
                s.DenseEquivalentGflops.ToString("F1"), s.SgemmGflops.ToString("F1"), (100 * s.RatioToSgemm).ToString("F0") + "%");
        t.Write(w, "SAE training steps (target: ≥ 60% of sgemm at the encoder shape)");
        var h = new Table("model", ">contexts×pos", ">forward tok/s", ">harvest tok/s", ">harvest ÷ forward");
        foreach (var r in harvests)
            h.Add(r.Model, $"{r.Contexts}×{r.Length}", r.ForwardTokensPerSecond.ToString("F0"), r.HarvestTokensPerSecond.ToString("F0"), (100 * r.Ratio).ToString("F0") + "%");
        h.Write(w, "Harvest vs plain forward (target: ≥ 90%)");
    }
}
