// Evaluating an SAE or transcoder on the model it reads, with SAELens's evals.py definitions.
//
// Shape legend: B contexts per batch, T = context size, V = d_vocab_out;
//   target [B, T, d_out]  the replaced hook's own activation (x for an SAE, the MLP output for a transcoder)
//   acts   [B, T, d_sae]  hook_sae_acts_post      recons [B, T, d_out]  hook_sae_recons
//
// 1. Take the contexts B at a time (memory stays bounded by one batch: three runs' logits at most two at a time).
// 2. Clean run → logits_clean.
// 3. Spliced run: the dictionary replaces the hook with its reconstruction (no error term), except at
//    positions holding an excluded token (BOS/EOS by default: SAELens's ignore_tokens), which keep the
//    original. It caches target, acts and recons → logits_sae.
// 4. Zero-ablated run: the replaced hook's activation is 0 at every position → logits_zero.
// 5. Every position t < T−1 predicts token t+1: CE = logsumexp(logits[t]) − logits[t, token[t+1]] for each
//    run (all positions, excluded ones included); KL(p_clean ‖ p_run) at every position.
// 6. Every position whose token is not excluded: L0 = #{acts > 0}, L1 = Σ acts, ‖target − recons‖²,
//    cos(target, recons), ‖recons‖ / ‖target‖, which features fired; Σ target and Σ target² per dimension.
// 7. Aggregate: means over positions; FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄ the per-dimension mean over every
//    evaluated position), explained variance = 1 − FVU; loss recovered (SAELens ce_loss_score) =
//    (CE_zero − CE_sae) / (CE_zero − CE_clean); KL score = (KL_zero − KL_sae) / KL_zero; feature density =
//    firing positions / evaluated positions; dead = never fired; dense = density > DenseThreshold;
//    histogram of log10(density + 1e-10) (SAELens's logged feature-density histogram).
// Levels (Matryoshka SAEs, or any prefix widths asked for): for each width w, the reconstruction from the latents [0, w)
// alone, x̂_w = x̂ − acts[:, w:]·W_dec[w:], gives that prefix's MSE and FVU at the same positions (step 6); with
// LevelLosses, one more spliced run per level, the latents from w on zeroed at hook_sae_acts_post, gives its CE and
// loss recovered (step 5's definitions).
// With the model on a device, the splice runs there and steps 5–6 are sums taken there (SaeEvaluator.Device.cs):
// per batch only scalars and one vector of per-feature counts and per-dimension sums come back, never logits.
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Splice;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Dictionaries.Evaluation;

/// <summary>How an evaluation runs.</summary>
public sealed record SaeEvalOptions
{
    /// <summary>Contexts per forward pass.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>
    /// Tokens whose positions are left out of the activation metrics and keep the original activation in the
    /// spliced run (SAELens's ignore_tokens). Null: the model's BOS and EOS. Empty: none.
    /// </summary>
    public IReadOnlyCollection<int>? ExcludeTokens { get; init; }

    /// <summary>
    /// A feature is dense when it fires on more than this fraction of positions (default 0.1, the
    /// "high-frequency latent" cut-off of the Gemma Scope report).
    /// </summary>
    public double DenseThreshold { get; init; } = 0.1;

    /// <summary>Width of a density-histogram bin in log10 units (bins span [−10, 0]).</summary>
    public double HistogramBinWidth { get; init; } = 0.5;

    /// <summary>
    /// Prefix widths whose reconstruction is measured alone (a Matryoshka SAE's inner levels): strictly increasing, each
    /// in [1, d_sae). Empty: none.
    /// </summary>
    public IReadOnlyList<int> Levels { get; init; } = [];

    /// <summary>Also splice each level's reconstruction into the model (one more forward pass per level and batch) for its CE and loss recovered.</summary>
    public bool LevelLosses { get; init; }
}

/// <summary>The reconstruction from a prefix of the latents, [0, Width), at the evaluated positions.</summary>
/// <param name="Width">Latents used.</param>
/// <param name="Mse">‖x − x̂_w‖² per position.</param>
/// <param name="Fvu">Σ‖x − x̂_w‖² / Σ‖x − x̄‖².</param>
/// <param name="ExplainedVariance">1 − FVU.</param>
/// <param name="CeLoss">Next-token CE with this level's reconstruction spliced in (NaN unless <see cref="SaeEvalOptions.LevelLosses"/>).</param>
/// <param name="LossRecovered">(CE_zero − CE_level) / (CE_zero − CE_clean) (NaN unless <see cref="SaeEvalOptions.LevelLosses"/>).</param>
public sealed record LevelMetrics(int Width, double Mse, double Fvu, double ExplainedVariance, double CeLoss = double.NaN, double LossRecovered = double.NaN);

/// <summary>Progress of an evaluation: contexts done out of all.</summary>
public readonly record struct SaeEvalProgress(int ContextsDone, int TotalContexts);

/// <summary>Counts of features per log10-density bin: bin i covers [Log10Edges[i], Log10Edges[i+1]) (the last includes 0).</summary>
public sealed record DensityHistogram(double[] Log10Edges, long[] Counts);

/// <summary>The metrics of one evaluation (see the numbered steps at the top of SaeEvaluator.cs).</summary>
public sealed record SaeEvalResult
{
    public required string Hook { get; init; }
    /// <summary>The hook replaced (differs from <see cref="Hook"/> for a transcoder).</summary>
    public required string OutputHook { get; init; }
    public required string Architecture { get; init; }
    public required int DIn { get; init; }
    public required int DSae { get; init; }
    public required int DOut { get; init; }
    public required int Contexts { get; init; }
    public required int ContextSize { get; init; }
    public required string Source { get; init; }
    public required int[] ExcludedTokens { get; init; }
    /// <summary>Positions in the activation metrics (excluded tokens left out).</summary>
    public required long Positions { get; init; }
    /// <summary>Next-token predictions in the cross-entropy means.</summary>
    public required long Predictions { get; init; }

    /// <summary>Mean number of active features per position.</summary>
    public required double L0 { get; init; }
    /// <summary>Mean Σ acts per position.</summary>
    public required double L1 { get; init; }
    /// <summary>Mean ‖target − recons‖² per position.</summary>
    public required double Mse { get; init; }
    /// <summary>Fraction of variance unexplained Σ‖x − x̂‖² / Σ‖x − x̄‖².</summary>
    public required double Fvu { get; init; }
    public required double ExplainedVariance { get; init; }
    /// <summary>Mean cosine similarity of target and reconstruction (1 when both are 0, 0 when one is).</summary>
    public required double CosineSimilarity { get; init; }
    /// <summary>Mean ‖recons‖ / ‖target‖ (‖target‖ &lt; 1e-4 counts as 1, as SAELens).</summary>
    public required double L2Ratio { get; init; }

    /// <summary>Mean next-token cross-entropy (nats) of the clean model.</summary>
    public required double CeLossClean { get; init; }
    /// <summary>… with the reconstruction spliced in (no error term).</summary>
    public required double CeLossWithSae { get; init; }
    /// <summary>… with the hook zero-ablated.</summary>
    public required double CeLossZeroAblated { get; init; }
    /// <summary>(CE_zero − CE_sae) / (CE_zero − CE_clean); NaN when zero-ablation does not change the loss.</summary>
    public required double LossRecovered { get; init; }
    /// <summary>Mean KL(p_clean ‖ p_sae) per position (nats).</summary>
    public required double KlWithSae { get; init; }
    public required double KlZeroAblated { get; init; }
    /// <summary>(KL_zero − KL_sae) / KL_zero.</summary>
    public required double KlScore { get; init; }

    public required int DeadFeatures { get; init; }
    public required double DeadFraction { get; init; }
    public required int DenseFeatures { get; init; }
    public required double DenseFraction { get; init; }
    public required double DenseThreshold { get; init; }
    /// <summary>Per feature: the fraction of evaluated positions where it fired <c>[d_sae]</c>.</summary>
    public required double[] FeatureDensity { get; init; }
    public required DensityHistogram DensityHistogram { get; init; }
    /// <summary>Per prefix width asked for (<see cref="SaeEvalOptions.Levels"/>), ascending; empty when none was.</summary>
    public LevelMetrics[] Levels { get; init; } = [];
    public required double Seconds { get; init; }
}

/// <summary>Reconstruction, sparsity and downstream-loss metrics of a dictionary on a model.</summary>
public static partial class SaeEvaluator
{
    /// <summary>Evaluates <paramref name="dictionary"/> spliced at <paramref name="hook"/> (see the steps at the top of this file).</summary>
    /// <param name="model">The model the dictionary reads.</param>
    /// <param name="dictionary">The SAE or transcoder.</param>
    /// <param name="hook">The hook it reads (and, for an SAE, replaces).</param>
    /// <param name="contexts">Token contexts, e.g. from <see cref="ContextBuilder.ForModel"/>.</param>
    /// <param name="options">Batch size, excluded tokens, dense threshold, histogram bins.</param>
    /// <param name="outputHook">The hook a transcoder replaces; null for an SAE.</param>
    /// <param name="progress">Told after each batch.</param>
    /// <exception cref="InputError">A hook is not in the model or the dictionary's width does not fit it; the contexts do not fit the model.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A batch size below 1 or a dense threshold outside [0, 1].</exception>
    public static SaeEvalResult Evaluate(HookedTransformer model, SparseDictionary dictionary, string hook, HarvestContexts contexts,
        SaeEvalOptions? options = null, string? outputHook = null, IProgress<SaeEvalProgress>? progress = null)
    {
        options ??= new SaeEvalOptions();
        if (options.BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(options), $"batch size must be at least 1 (got {options.BatchSize})");
        if (!(options.DenseThreshold is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(options), $"dense threshold must be in [0, 1] (got {options.DenseThreshold})");
        if (!(options.HistogramBinWidth > 0)) throw new ArgumentOutOfRangeException(nameof(options), $"histogram bin width must be positive (got {options.HistogramBinWidth})");
        var levels = options.Levels.ToArray();
        for (int i = 0; i < levels.Length; i++)
            if (levels[i] < 1 || levels[i] >= dictionary.Shape.DSae || (i > 0 && levels[i] <= levels[i - 1]))
                throw new ArgumentOutOfRangeException(nameof(options), $"levels must be strictly increasing widths in [1, d_sae = {dictionary.Shape.DSae}); got {string.Join(", ", levels)}");
        if (contexts.ContextSize > model.Config.NCtx)
            throw InputError.Expected("argument", "context size", $"at most the model's n_ctx = {model.Config.NCtx} tokens", contexts.ContextSize);
        int[] excluded = (options.ExcludeTokens ?? DefaultExcluded(model)).Distinct().Order().ToArray();
        var splice = SaeSplice.ForModel(model, dictionary, hook,
            new SaeSpliceOptions { UseErrorTerm = false, OutputHook = outputHook, ExcludeTokens = excluded });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var acc = new Accumulator(dictionary.Shape.DSae, dictionary.Shape.DOut, levels, dictionary.P.WDec);
        var excludedSet = new HashSet<int>(excluded);
        string target = splice.OutputHook, actsHook = HookNames.SaeActsPost(target), reconsHook = HookNames.SaeRecons(target);
        var cached = new HashSet<string>([target, actsHook, reconsHook], StringComparer.Ordinal);
        var backend = model.Backend;
        // On a device the sums are taken there (SaeEvaluator.Device.cs); only they come back.
        var onDevice = backend.Device.IsCpu ? null : new DeviceSums(backend, dictionary.Shape.DSae, dictionary.Shape.DOut, levels, dictionary.P.WDec);

        for (int start = 0; start < contexts.Count; start += options.BatchSize)
        {
            int count = Math.Min(options.BatchSize, contexts.Count - start);
            var batch = TokenBatch.FromRows(Enumerable.Range(start, count).Select(i => contexts.Contexts[i]).ToArray());
            // 2. clean
            var cleanRun = model.Run(batch);
            var clean = cleanRun.Logits;
            // 3. spliced (reconstruction only), caching target, acts and recons
            var spliced = model.Run(batch, new RunOptions { CacheFilter = cached.Contains }.AddSplice(splice));
            var prepared = onDevice?.Prepare(batch, clean);
            if (onDevice is null) acc.AddLogits(batch, clean, spliced.Logits, sae: true);
            else
            {
                acc.CeClean += onDevice.CrossEntropy(clean, prepared!);
                acc.CeSae += onDevice.CrossEntropy(spliced.Logits, prepared!);
                acc.KlSae += onDevice.Kl(spliced.Logits, prepared!);
                acc.Predictions += (long)batch.Batch * (batch.Length - 1);
                acc.KlPositions += (long)batch.Batch * batch.Length;
            }
            if (onDevice is null) acc.AddActivations(batch, excludedSet, spliced.Cache[target], spliced.Cache[actsHook], spliced.Cache[reconsHook]);
            else onDevice.AddActivations(batch, excludedSet, spliced.Cache[target], spliced.Cache[actsHook], spliced.Cache[reconsHook], acc);
            // 4. zero-ablated
            var zeroRun = model.Run(batch, new RunOptions().AddHook(target, (a, _) => backend.Zeros(a.Shape.ToArray())));
            var zero = zeroRun.Logits;
            if (onDevice is null) acc.AddLogits(batch, clean, zero, sae: false);
            else
            {
                acc.CeZero += onDevice.CrossEntropy(zero, prepared!);
                acc.KlZero += onDevice.Kl(zero, prepared!);
            }
            // 5b. each level's reconstruction spliced in: the latents from its width on zeroed where the splice exposes them
            if (options.LevelLosses)
                for (int l = 0; l < levels.Length; l++)
                {
                    int from = levels[l], dSae = dictionary.Shape.DSae;
                    var levelRun = model.Run(batch, new RunOptions().AddSplice(splice).AddHook(actsHook, (a, _) =>
                    {
                        int rows = (int)(a.Length / dSae);
                        backend.CopyRows(backend.Zeros(rows, dSae - from), 0, dSae - from, a, from, dSae, rows, dSae - from);
                        return a;
                    }));
                    acc.LevelCe[l] += onDevice is null ? Accumulator.CrossEntropySum(batch, levelRun.Logits) : onDevice.CrossEntropy(levelRun.Logits, prepared!);
                    model.Recycle(levelRun);
                }
            // The next batch's passes reuse these logits and caches (GPT-2's logits are 206 MB a pass at 8 × 128).
            foreach (var run in new[] { cleanRun, spliced, zeroRun }) model.Recycle(run);
            progress?.Report(new SaeEvalProgress(start + count, contexts.Count));
        }
        if (acc.Positions == 0)
            throw new InputError($"every position holds an excluded token ({string.Join(", ", excluded)}); nothing to measure the activations on");

        // 7. aggregate
        var s = dictionary.Shape;
        var density = acc.Fires.Select(f => (double)f / acc.Positions).ToArray();
        int dead = density.Count(d => d == 0), dense = density.Count(d => d > options.DenseThreshold);
        double fvu = acc.Fvu();
        double ceClean = acc.CeClean / acc.Predictions, ceSae = acc.CeSae / acc.Predictions, ceZero = acc.CeZero / acc.Predictions;
        double klSae = acc.KlSae / acc.KlPositions, klZero = acc.KlZero / acc.KlPositions;
        return new SaeEvalResult
        {
            Hook = splice.InputHook,
            OutputHook = splice.OutputHook,
            Architecture = dictionary.Architecture,
            DIn = s.DIn,
            DSae = s.DSae,
            DOut = s.DOut,
            Contexts = contexts.Count,
            ContextSize = contexts.ContextSize,
            Source = contexts.SourceDescription,
            ExcludedTokens = excluded,
            Positions = acc.Positions,
            Predictions = acc.Predictions,
            L0 = acc.L0 / acc.Positions,
            L1 = acc.L1 / acc.Positions,
            Mse = acc.SquaredError / acc.Positions,
            Fvu = fvu,
            ExplainedVariance = 1 - fvu,
            CosineSimilarity = acc.Cosine / acc.Positions,
            L2Ratio = acc.L2Ratio / acc.Positions,
            CeLossClean = ceClean,
            CeLossWithSae = ceSae,
            CeLossZeroAblated = ceZero,
            LossRecovered = ceZero == ceClean ? double.NaN : (ceZero - ceSae) / (ceZero - ceClean),
            KlWithSae = klSae,
            KlZeroAblated = klZero,
            KlScore = klZero == 0 ? double.NaN : (klZero - klSae) / klZero,
            DeadFeatures = dead,
            DeadFraction = (double)dead / s.DSae,
            DenseFeatures = dense,
            DenseFraction = (double)dense / s.DSae,
            DenseThreshold = options.DenseThreshold,
            FeatureDensity = density,
            DensityHistogram = Histogram(density, options.HistogramBinWidth),
            Seconds = clock.Elapsed.TotalSeconds,
            Levels = [.. levels.Select((w, i) =>
            {
                double ce = options.LevelLosses ? acc.LevelCe[i] / acc.Predictions : double.NaN;
                return new LevelMetrics(w, acc.LevelSquaredError[i] / acc.Positions, acc.Fvu(acc.LevelSquaredError[i]), 1 - acc.Fvu(acc.LevelSquaredError[i]),
                    ce, options.LevelLosses && ceZero != ceClean ? (ceZero - ce) / (ceZero - ceClean) : double.NaN);
            })],
        };
    }

    /// <summary>Evaluates the dictionary and hooks of <paramref name="splice"/> (its error term and exclusions are replaced by the evaluation's own).</summary>
    public static SaeEvalResult Evaluate(HookedTransformer model, SaeSplice splice, HarvestContexts contexts, SaeEvalOptions? options = null, IProgress<SaeEvalProgress>? progress = null) =>
        Evaluate(model, splice.Dictionary, splice.InputHook, contexts, options, splice.IsTranscoder ? splice.OutputHook : null, progress);

    /// <summary>The model's BOS and EOS ids (config first, then tokenizer).</summary>
    static IEnumerable<int> DefaultExcluded(HookedTransformer model)
    {
        if ((model.Config.BosTokenId ?? model.Tokenizer?.BosTokenId) is int bos) yield return bos;
        if ((model.Config.EosTokenId ?? model.Tokenizer?.EosTokenId) is int eos) yield return eos;
    }

    /// <summary>log10(density + 1e-10) counted in bins of <paramref name="width"/> over [−10, 0].</summary>
    internal static DensityHistogram Histogram(IReadOnlyList<double> density, double width)
    {
        int bins = (int)Math.Ceiling(10 / width - 1e-9);
        var edges = Enumerable.Range(0, bins + 1).Select(i => Math.Min(0, -10 + i * width)).ToArray();
        var counts = new long[bins];
        foreach (double d in density)
        {
            double v = Math.Log10(d + 1e-10);
            int bin = Math.Clamp((int)Math.Floor((v + 10) / width), 0, bins - 1);
            counts[bin]++;
        }
        return new DensityHistogram(edges, counts);
    }

    /// <summary>Σ over predictions (every position but the last) of −log softmax(logits)[next token]; logits on the host.</summary>
    internal static double CrossEntropySum(TokenBatch batch, Tensor logits) => Accumulator.CrossEntropySum(batch, logits);

    /// <summary>Running sums in double precision (steps 5–6).</summary>
    /// <param name="dSae">Latents.</param>
    /// <param name="dOut">Output width.</param>
    /// <param name="levels">Prefix widths measured alone.</param>
    /// <param name="wDec">The decoder [d_sae, d_out] (read only with levels).</param>
    sealed class Accumulator(int dSae, int dOut, int[] levels, float[] wDec)
    {
        public long Positions, Predictions, KlPositions;
        public readonly double[] LevelSquaredError = new double[levels.Length];   // Σ‖x − x̂_w‖² per level
        public readonly double[] LevelCe = new double[levels.Length];             // Σ CE over predictions per level (LevelLosses)
        readonly double[] _levelError = new double[levels.Length > 0 ? dOut : 0]; // x − x̂_w of the position being added

        /// <summary>Σ over predictions (every position but the last) of −log softmax(logits)[next token].</summary>
        public static double CrossEntropySum(TokenBatch batch, Tensor logits)
        {
            int B = batch.Batch, T = batch.Length, V = logits.Dim(-1);
            double sum = 0;
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T - 1; t++)
                {
                    var q = logits.Span.Slice((b * T + t) * V, V);
                    sum += LogSumExp(q) - q[batch.Ids[b * T + t + 1]];
                }
            return sum;
        }
        public double L0, L1, SquaredError, Cosine, L2Ratio;
        public double CeClean, CeSae, CeZero, KlSae, KlZero;
        public readonly long[] Fires = new long[dSae];
        readonly double[] _sum = new double[dOut], _sumSquares = new double[dOut];

        /// <summary>CE of <paramref name="run"/> (and of clean once, with the SAE run) and KL(clean ‖ run).</summary>
        public void AddLogits(TokenBatch batch, Tensor clean, Tensor run, bool sae)
        {
            int B = batch.Batch, T = batch.Length, V = clean.Dim(-1);
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++)
                {
                    var p = clean.Span.Slice((b * T + t) * V, V);
                    var q = run.Span.Slice((b * T + t) * V, V);
                    double lseP = LogSumExp(p), lseQ = LogSumExp(q);
                    double kl = 0;
                    for (int v = 0; v < V; v++)
                    {
                        double logP = p[v] - lseP;
                        kl += Math.Exp(logP) * (logP - (q[v] - lseQ));
                    }
                    if (sae) KlSae += kl; else KlZero += kl;
                    if (sae) KlPositions++;
                    if (t == T - 1) continue;
                    int next = batch.Ids[b * T + t + 1];
                    double ceRun = lseQ - q[next];
                    if (sae)
                    {
                        CeSae += ceRun;
                        CeClean += lseP - p[next];
                        Predictions++;
                    }
                    else CeZero += ceRun;
                }
        }

        /// <summary>Activation metrics at every position whose token is not excluded.</summary>
        public void AddActivations(TokenBatch batch, HashSet<int> excluded, Tensor target, Tensor acts, Tensor recons)
        {
            int n = batch.Batch * batch.Length;
            var x = target.Span;
            var a = acts.Span;
            var r = recons.Span;
            if (x.Length != n * dOut || a.Length != n * dSae || r.Length != n * dOut)
                throw new InvalidOperationException($"activation metrics need one row per position: target {target.ShapeString}, acts {acts.ShapeString}, recons {recons.ShapeString} for [{batch.Batch}, {batch.Length}] tokens");
            for (int i = 0; i < n; i++)
            {
                if (excluded.Contains(batch.Ids[i])) continue;
                Positions++;
                var ai = a.Slice(i * dSae, dSae);
                int active = 0;
                double l1 = 0;
                for (int f = 0; f < dSae; f++)
                    if (ai[f] > 0) { active++; l1 += ai[f]; Fires[f]++; }
                L0 += active;
                L1 += l1;
                var xi = x.Slice(i * dOut, dOut);
                var ri = r.Slice(i * dOut, dOut);
                double err = 0, dot = 0, xx = 0, rr = 0;
                for (int j = 0; j < dOut; j++)
                {
                    double xv = xi[j], rv = ri[j], e = xv - rv;
                    err += e * e;
                    dot += xv * rv;
                    xx += xv * xv;
                    rr += rv * rv;
                    _sum[j] += xv;
                    _sumSquares[j] += xv * xv;
                }
                SquaredError += err;
                if (levels.Length > 0) AddLevels(xi, ri, ai);
                Cosine += xx == 0 && rr == 0 ? 1 : xx == 0 || rr == 0 ? 0 : dot / Math.Sqrt(xx * rr);
                double normX = Math.Sqrt(xx);
                L2Ratio += Math.Sqrt(rr) / (normX < 1e-4 ? 1 : normX);
            }
        }

        // x − x̂_w = (x − x̂) + Σ_{f ≥ w, active} acts_f·W_dec[f], per level
        void AddLevels(ReadOnlySpan<float> x, ReadOnlySpan<float> recon, ReadOnlySpan<float> acts)
        {
            var e = _levelError;
            for (int l = 0; l < levels.Length; l++)
            {
                for (int j = 0; j < dOut; j++) e[j] = (double)x[j] - recon[j];
                for (int f = levels[l]; f < dSae; f++)
                {
                    float a = acts[f];
                    if (a == 0) continue;
                    var row = wDec.AsSpan(f * dOut, dOut);
                    for (int j = 0; j < dOut; j++) e[j] += a * (double)row[j];
                }
                double sq = 0;
                foreach (double v in e) sq += v * v;
                LevelSquaredError[l] += sq;
            }
        }

        /// <summary>Adds per-dimension Σ x and Σ x² of a batch's evaluated rows.</summary>
        public void AddDimensionSums(ReadOnlySpan<float> sum, ReadOnlySpan<float> sumSquares)
        {
            for (int j = 0; j < _sum.Length; j++) { _sum[j] += sum[j]; _sumSquares[j] += sumSquares[j]; }
        }

        /// <summary>Σ‖x − x̂‖² (or <paramref name="squaredError"/>) / Σ_j (Σ x_j² − (Σ x_j)² / n); NaN when the target does not vary.</summary>
        public double Fvu(double? squaredError = null)
        {
            double total = 0;
            for (int j = 0; j < _sum.Length; j++) total += _sumSquares[j] - _sum[j] * _sum[j] / Positions;
            return total <= 0 ? double.NaN : (squaredError ?? SquaredError) / total;
        }

        static double LogSumExp(ReadOnlySpan<float> logits)
        {
            float max = float.NegativeInfinity;
            foreach (float l in logits) if (l > max) max = l;
            double sum = 0;
            foreach (float l in logits) sum += Math.Exp(l - max);
            return max + Math.Log(sum);
        }
    }
}
