using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Causal.Lens;

// The logit lens over the accumulated residual stream (nostalgebraist 2020; TransformerLens's
// cache.accumulated_resid + apply_ln_to_stack):
// 1. Run once, caching every blocks.{l}.hook_resid_pre, the last block's hook_resid_post and
//    ln_final.hook_scale.
// 2. For each stage (resid_pre 0 … L−1, then the final resid_post) take the residual at one
//    (row, position) and apply the final norm: with its REAL scale (the norm recomputed on that
//    residual, bias included), or with the scale FROZEN at the final cached ln_final.hook_scale
//    (a linear map, as in DLA; bias included).
// 3. Unembed (W_U, b_U) and apply the final soft-cap if the model has one, so the last stage
//    with the real scale reproduces the model's logits; report the answer's logit, probability
//    and rank (and the logit difference to a wrong token) per stage.

/// <summary>Whether the lens recomputes the final norm's scale for each stage or freezes it at the final one.</summary>
public enum LensScale { Real, Frozen }

/// <summary>One stage of the logit lens.</summary>
/// <param name="Label">e.g. <c>resid_pre 0</c>, <c>resid_post 3 (final)</c>.</param>
/// <param name="Layer">Blocks applied before this stage (0 = embeddings only … n_layers = final).</param>
/// <param name="AnswerLogit">The answer's logit.</param>
/// <param name="AnswerProb">Its softmax probability over d_vocab_out.</param>
/// <param name="AnswerRank">0 = the top token.</param>
/// <param name="LogitDiff">logit(answer) − logit(wrong), NaN without a wrong token.</param>
/// <param name="TopToken">The most likely token at this stage.</param>
/// <param name="Entropy">The entropy of this stage's distribution over d_vocab_out, in nats.</param>
/// <param name="KlToFinal">KL(final ‖ this stage) in nats: how far this stage's prediction is from the model's (0 at the final stage);
/// what tuned-lens's prediction trajectories plot and its training minimizes.</param>
public sealed record LensStage(string Label, int Layer, double AnswerLogit, double AnswerProb, int AnswerRank, double LogitDiff, int TopToken,
    double Entropy = double.NaN, double KlToFinal = double.NaN);

/// <summary>The logit lens at one position of one row.</summary>
public sealed class LogitLensResult
{
    public required int Answer { get; init; }
    public int? Wrong { get; init; }
    public required LensScale Scale { get; init; }
    public required int Position { get; init; }
    public required LensStage[] Stages { get; init; }
    /// <summary>True when a tuned lens translated each stage before the final norm (<see cref="TunedLens"/>).</summary>
    public bool Tuned { get; init; }
}

/// <summary>The logit lens over every position of one row (<see cref="LogitLens.Grid"/>); arrays are <c>[stage][position]</c>.</summary>
public sealed class LogitLensGrid
{
    public required LensScale Scale { get; init; }
    /// <summary>True when a tuned lens translated each stage before the final norm (<see cref="TunedLens"/>).</summary>
    public bool Tuned { get; init; }
    /// <summary>One label per stage: <c>resid_pre 0</c> … <c>resid_post L−1 (final)</c>.</summary>
    public required string[] Labels { get; init; }
    /// <summary>The model's own top token at each position (the final stage's).</summary>
    public required int[] FinalTopToken { get; init; }
    public required int[][] TopToken { get; init; }
    public required double[][] TopProb { get; init; }
    /// <summary>The probability of <see cref="FinalTopToken"/> at each stage.</summary>
    public required double[][] FinalTopProb { get; init; }
}

/// <summary>The logit lens (steps at the top of this file).</summary>
public static class LogitLens
{
    /// <summary>
    /// The lens at one position: each stage's answer logit, probability and rank. With <paramref name="tuned"/>, each stage
    /// before the final one goes through the tuned lens's translator first (the final norm then with its real scale).
    /// </summary>
    /// <exception cref="InputError">The row, position or a token is out of range, the model is a post-LayerNorm encoder, or a tuned
    /// lens does not fit the model or comes with the frozen scale.</exception>
    public static LogitLensResult Run(HookedTransformer model, TokenBatch tokens, int answer, int? wrong = null, int position = -1, int row = 0, LensScale scale = LensScale.Real, TunedLens? tuned = null)
    {
        model.RequireResidualSum("the logit lens");
        CheckTuned(model, tuned, scale);
        var cfg = model.Config;
        int V = cfg.VocabOut, D = cfg.DModel, L = cfg.NLayers, T = tokens.Length;
        if ((uint)answer >= (uint)V) throw new InputError($"answer token {answer} is outside the output vocabulary (d_vocab_out = {V})");
        if (wrong is int w0 && (uint)w0 >= (uint)V) throw new InputError($"wrong token {w0} is outside the output vocabulary (d_vocab_out = {V})");
        if ((uint)row >= (uint)tokens.Batch) throw new InputError($"row {row} is outside the batch of {tokens.Batch}");
        int p = position < 0 ? T + position : position;
        if ((uint)p >= (uint)T) throw new InputError($"position {position} is outside a sequence of {T}");

        var hooks = new HashSet<string>(StringComparer.Ordinal) { HookNames.ResidPost(L - 1), HookNames.FinalScale };
        for (int l = 0; l < L; l++) hooks.Add(HookNames.ResidPre(l));
        if (DeviceLens.Applies(model)) return RunOnDevice(model, tokens, hooks, answer, wrong, p, row, scale, tuned);
        var cache = model.Run(tokens, new RunOptions { CacheFilter = hooks.Contains }).Cache;
        bool hasNorm = model.FinalNormLayer is { Kind: not NormKind.None };
        double frozenScale = hasNorm ? cache[HookNames.FinalScale].Span[row * T + p] : 1;
        var bias = FinalNorm.Bias(model);

        var logits = new float[L + 1][];
        for (int stage = 0; stage <= L; stage++)
        {
            string hook = stage < L ? HookNames.ResidPre(stage) : HookNames.ResidPost(L - 1);
            var resid = cache[hook].Span.Slice((row * T + p) * D, D);
            logits[stage] = StageLogits(model, tuned is not null && stage < L ? tuned.Translate(resid, stage) : resid, scale == LensScale.Frozen ? frozenScale : null, bias);
        }
        // Every stage is compared with the final one: its log-probabilities first.
        var finalLogProbs = LogProbabilities(logits[L]);
        var stages = new List<LensStage>();
        for (int stage = 0; stage <= L; stage++)
        {
            var summary = Summarize(stage < L ? $"resid_pre {stage}" : $"resid_post {L - 1} (final)", stage, logits[stage], answer, wrong);
            var logProbs = stage == L ? finalLogProbs : LogProbabilities(logits[stage]);
            double entropy = 0, kl = 0;
            for (int v = 0; v < logProbs.Length; v++)
            {
                entropy -= Math.Exp(logProbs[v]) * logProbs[v];
                kl += Math.Exp(finalLogProbs[v]) * (finalLogProbs[v] - logProbs[v]);
            }
            stages.Add(summary with { Entropy = entropy, KlToFinal = stage == L ? 0 : kl });
        }
        return CheckFinite(new LogitLensResult { Answer = answer, Wrong = wrong, Scale = scale, Position = p, Stages = stages.ToArray(), Tuned = tuned is not null });
    }

    /// <summary>
    /// The lens at every position of one row, each position read against the token the model itself ranks first
    /// there: one forward pass, then per stage × position the lens's top token, its probability, and the
    /// probability of the final top token.
    /// </summary>
    /// <exception cref="InputError">The row is out of range, or a tuned lens does not fit the model or comes with the frozen scale.</exception>
    public static LogitLensGrid Grid(HookedTransformer model, TokenBatch tokens, int row = 0, LensScale scale = LensScale.Real, TunedLens? tuned = null)
    {
        CheckTuned(model, tuned, scale);
        var cfg = model.Config;
        int D = cfg.DModel, L = cfg.NLayers, T = tokens.Length;
        if ((uint)row >= (uint)tokens.Batch) throw new InputError($"row {row} is outside the batch of {tokens.Batch}");
        var hooks = new HashSet<string>(StringComparer.Ordinal) { HookNames.ResidPost(L - 1), HookNames.FinalScale };
        for (int l = 0; l < L; l++) hooks.Add(HookNames.ResidPre(l));
        if (DeviceLens.Applies(model)) return GridOnDevice(model, tokens, hooks, row, scale, tuned);
        var cache = model.Run(tokens, new RunOptions { CacheFilter = hooks.Contains }).Cache;
        bool hasNorm = model.FinalNormLayer is { Kind: not NormKind.None };
        var bias = FinalNorm.Bias(model);
        var topToken = new int[L + 1][];
        var topProb = new double[L + 1][];
        var finalTopProb = new double[L + 1][];
        for (int stage = 0; stage <= L; stage++) { topToken[stage] = new int[T]; topProb[stage] = new double[T]; finalTopProb[stage] = new double[T]; }
        var final = new int[T];
        // The final stage first: every earlier stage is read against its top token.
        for (int stage = L; stage >= 0; stage--)
        {
            string hook = stage < L ? HookNames.ResidPre(stage) : HookNames.ResidPost(L - 1);
            var resid = cache[hook].ToCpu();
            for (int p = 0; p < T; p++)
            {
                double? frozen = scale == LensScale.Frozen ? (hasNorm ? cache[HookNames.FinalScale].ToCpu().Span[row * T + p] : 1) : null;
                var x = resid.Span.Slice((row * T + p) * D, D);
                var logits = StageLogits(model, tuned is not null && stage < L ? tuned.Translate(x, stage) : x, frozen, bias);
                if (stage == L) final[p] = ArgMax(logits);
                var s = Summarize("", stage, logits, final[p], null);
                topToken[stage][p] = s.TopToken;
                topProb[stage][p] = Probability(logits, s.TopToken);
                finalTopProb[stage][p] = s.AnswerProb;
            }
        }
        return CheckFinite(new LogitLensGrid
        {
            Scale = scale,
            Tuned = tuned is not null,
            Labels = [.. Enumerable.Range(0, L + 1).Select(stage => stage < L ? $"resid_pre {stage}" : $"resid_post {L - 1} (final)")],
            FinalTopToken = final,
            TopToken = topToken,
            TopProb = topProb,
            FinalTopProb = finalTopProb,
        });
    }

    // The model's own pass is checked for finite values; a tuned lens's translators are finite but may still overflow on a
    // residual (a lens trained for another model, a corrupt file): its stage then says so instead of reporting NaN.
    static LogitLensResult CheckFinite(LogitLensResult result)
    {
        if (result.Tuned && result.Stages.FirstOrDefault(s => !double.IsFinite(s.AnswerLogit) || !double.IsFinite(s.AnswerProb)) is { } bad)
            throw new InputError($"tuned lens: {bad.Label} gives a non-finite logit ({bad.AnswerLogit}); translator {bad.Layer} overflows on this residual (a lens for another model?)");
        return result;
    }

    static LogitLensGrid CheckFinite(LogitLensGrid grid)
    {
        if (grid.Tuned)
            for (int s = 0; s < grid.Labels.Length; s++)
                if (grid.TopProb[s].Any(p => !double.IsFinite(p)) || grid.FinalTopProb[s].Any(p => !double.IsFinite(p)))
                    throw new InputError($"tuned lens: {grid.Labels[s]} gives non-finite probabilities; translator {s} overflows on this residual (a lens for another model?)");
        return grid;
    }

    static void CheckTuned(HookedTransformer model, TunedLens? tuned, LensScale scale)
    {
        if (tuned is null) return;
        tuned.CheckFits(model, "tuned lens");
        if (scale == LensScale.Frozen) throw new InputError("argument: a tuned lens applies the final norm with its real scale (as it was trained); the frozen scale is the logit lens's");
    }

    static string StageLabel(int stage, int layers) => stage < layers ? $"resid_pre {stage}" : $"resid_post {layers - 1} (final)";

    static string StageHook(int stage, int layers) => stage < layers ? HookNames.ResidPre(stage) : HookNames.ResidPost(layers - 1);

    // Run on a device: the L+1 stage residuals at (row, p) stacked into [L+1, d_model], normed, unembedded over the
    // vocabulary, then per stage eight numbers into the table: the answer's logit, its log-probability, its rank
    // (how many logits exceed it), the wrong token's logit, the top token, Σ q·log q, Σ p_final·log q and Σ p_final·log p_final
    // (the host forms the difference, the entropy and the KL to the final stage).
    const int StageFields = 8;

    static LogitLensResult RunOnDevice(HookedTransformer model, TokenBatch tokens, HashSet<string> hooks, int answer, int? wrong, int p, int row, LensScale scale, TunedLens? tuned)
    {
        var cfg = model.Config;
        int V = cfg.VocabOut, D = cfg.DModel, L = cfg.NLayers, T = tokens.Length, S = L + 1;
        var be = model.Backend;
        var pass = new DeviceLens.Pass(model, tokens, hooks);
        var cache = pass.Cache;
        long at = (long)row * T + p;
        var stacked = be.Empty(S, D); // [stage, d_model]
        for (int stage = 0; stage < S; stage++) be.CopyRows(cache[StageHook(stage, L)], at * D, D, stacked, (long)stage * D, D, 1, D);
        if (tuned is not null)
            for (int stage = 0; stage < L; stage++)
                be.CopyRows(tuned.Translate(be, DeviceLens.Slot(stacked, (long)stage * D, D), 1, stage), 0, D, stacked, (long)stage * D, D, 1, D);
        var frozen = scale == LensScale.Frozen && DeviceLens.HasNorm(model) ? DeviceLens.FrozenScale(model, cache, at, S, perRow: false) : null;
        var logits = DeviceLens.Unembed(model, DeviceLens.FinalNorm(model, stacked, S, frozen, withBias: true), S); // [stage, d_vocab_out]

        var table = pass.Table(S * StageFields); // [stage, field]
        be.CopyRows(logits, answer, V, table, 0, StageFields, S, 1);
        var logProbs = be.Empty(S, V); // [stage, d_vocab_out]
        be.LogSoftmaxRows(logits, S, V, logProbs);
        be.CopyRows(logProbs, answer, V, table, 1, StageFields, S, 1);
        if (wrong is int w) be.CopyRows(logits, w, V, table, 3, StageFields, S, 1);
        var topValue = be.Empty(S, 1);
        var topIndex = be.Empty(S, 1);
        be.TopKRows(logits, S, V, 1, topValue, topIndex);
        be.CopyRows(topIndex, 0, 1, table, 4, StageFields, S, 1);
        // Entropy and KL to the final stage: the final row's probabilities and log-probabilities repeated on every row.
        var probs = be.Empty(S, V);
        be.SoftmaxRows(logits, S, V, probs);
        var finalProbs = be.Empty(S, V);
        var finalLogProbs = be.Empty(S, V);
        be.CopyRows(probs, (long)(S - 1) * V, 0, finalProbs, 0, V, S, V);
        be.CopyRows(logProbs, (long)(S - 1) * V, 0, finalLogProbs, 0, V, S, V);
        var dots = be.Empty(S, 1);
        foreach (var (a, b, field) in new[] { (probs, logProbs, 5), (finalProbs, logProbs, 6), (finalProbs, finalLogProbs, 7) })
        {
            be.RowDots(a, b, S, V, dots);
            be.CopyRows(dots, 0, 1, table, field, StageFields, S, 1);
        }
        // Rank: logits − logit(answer) (a rank-1 update with a row of ones), then a count above 0 per stage.
        var answerLogit = be.Empty(S, 1);
        be.CopyRows(logits, answer, V, answerLogit, 0, 1, S, 1);
        var ones = be.Empty(1, V);
        be.Fill(ones, 1f);
        be.Gemm(false, false, S, V, 1, -1f, answerLogit, 0, 1, ones, 0, V, 1f, logits, 0, V);
        for (int stage = 0; stage < S; stage++)
            be.CountAbove(DeviceLens.Slot(logits, (long)stage * V, V), 0f, DeviceLens.Slot(table, stage * StageFields + 2));

        var values = pass.Read(table);
        var stages = new LensStage[S];
        for (int stage = 0; stage < S; stage++)
        {
            var f = values.AsSpan(stage * StageFields, StageFields);
            stages[stage] = new LensStage(StageLabel(stage, L), stage, f[0], Math.Exp(f[1]), (int)f[2], wrong is null ? double.NaN : (double)f[0] - f[3], (int)f[4],
                -f[5], stage == S - 1 ? 0 : (double)f[7] - f[6]);
        }
        return CheckFinite(new LogitLensResult { Answer = answer, Wrong = wrong, Scale = scale, Position = p, Stages = stages, Tuned = tuned is not null });
    }

    // The grid on a device, one stage at a time ([T, vocab] logits, never [stages × T × vocab]): per stage and
    // position the top token, its probability and the probability of the final stage's top token, gathered with
    // one-hot rows (ScatterRows) dotted with the probabilities (RowDots).
    static LogitLensGrid GridOnDevice(HookedTransformer model, TokenBatch tokens, HashSet<string> hooks, int row, LensScale scale, TunedLens? tuned)
    {
        var cfg = model.Config;
        int V = cfg.VocabOut, D = cfg.DModel, L = cfg.NLayers, T = tokens.Length, S = L + 1;
        var be = model.Backend;
        var pass = new DeviceLens.Pass(model, tokens, hooks);
        var cache = pass.Cache;
        var frozen = scale == LensScale.Frozen && DeviceLens.HasNorm(model) ? DeviceLens.FrozenScale(model, cache, (long)row * T, T, perRow: true) : null;
        var table = pass.Table(S * 3 * T); // [stage][top token, top prob, final top prob][position]
        var probs = be.Empty(T, V); // [pos, d_vocab_out], as are the one-hot rows
        var oneHot = be.Empty(T, V);
        var finalOneHot = be.Empty(T, V);
        var ones = be.Empty(T, 1); // [pos, 1]
        be.Fill(ones, 1f);
        var topValue = be.Empty(T, 1);
        var topIndex = be.Empty(T, 1);
        for (int stage = L; stage >= 0; stage--)
        {
            var resid = new Tensor(cache[StageHook(stage, L)].Storage.Slice((long)row * T * D, (long)T * D), T, D);
            if (tuned is not null && stage < L) resid = tuned.Translate(be, resid, T, stage);
            var logits = DeviceLens.Unembed(model, DeviceLens.FinalNorm(model, resid, T, frozen, withBias: true), T);
            be.SoftmaxRows(logits, T, V, probs);
            be.TopKRows(logits, T, V, 1, topValue, topIndex);
            long block = (long)stage * 3 * T;
            be.CopyRows(topIndex, 0, 1, table, block, 1, T, 1);
            be.ScatterRows(ones, topIndex, T, 1, V, oneHot);
            be.RowDots(oneHot, probs, T, V, DeviceLens.Slot(table, block + T, T));
            if (stage == L) be.ScatterRows(ones, topIndex, T, 1, V, finalOneHot);
            be.RowDots(finalOneHot, probs, T, V, DeviceLens.Slot(table, block + 2 * T, T));
        }
        var values = pass.Read(table);
        var topToken = new int[S][];
        var topProb = new double[S][];
        var finalTopProb = new double[S][];
        for (int stage = 0; stage < S; stage++)
        {
            int block = stage * 3 * T;
            topToken[stage] = [.. values.AsSpan(block, T).ToArray().Select(v => (int)v)];
            topProb[stage] = [.. values.AsSpan(block + T, T).ToArray().Select(v => (double)v)];
            finalTopProb[stage] = [.. values.AsSpan(block + 2 * T, T).ToArray().Select(v => (double)v)];
        }
        return CheckFinite(new LogitLensGrid
        {
            Scale = scale,
            Tuned = tuned is not null,
            Labels = [.. Enumerable.Range(0, S).Select(stage => StageLabel(stage, L))],
            FinalTopToken = [.. topToken[L]],
            TopToken = topToken,
            TopProb = topProb,
            FinalTopProb = finalTopProb,
        });
    }

    // The residual through the final norm (real scale when frozenScale is null), unembedding and soft-cap.
    static float[] StageLogits(HookedTransformer model, ReadOnlySpan<float> x, double? frozenScale, double[] bias)
    {
        var cfg = model.Config;
        int D = cfg.DModel, V = cfg.VocabOut;
        double s = frozenScale ?? FinalNorm.RealScale(model, x);
        var normed = FinalNorm.Frozen(model, x, s);
        var input = new float[D];
        for (int d = 0; d < D; d++) input[d] = (float)(normed[d] + bias[d]);
        var logits = new float[V];
        // One row on the host: the lens reads the cache there.
        var cpu = Tensors.Backends.CpuBackend.Instance;
        var logitsTensor = Tensors.Tensor.FromArray(logits, 1, V);
        model.UnembedLayer.Forward(cpu, Tensors.Tensor.FromArray(input, 1, D), 1, logitsTensor);
        if (cfg.FinalLogitSoftCap > 0) cpu.SoftCap(logitsTensor, cfg.FinalLogitSoftCap, logitsTensor);
        return logits;
    }

    // log softmax in double.
    static double[] LogProbabilities(float[] logits)
    {
        double max = logits.Max(), sum = 0;
        foreach (var v in logits) sum += Math.Exp(v - max);
        double log = max + Math.Log(sum);
        return [.. logits.Select(v => v - log)];
    }

    static int ArgMax(float[] logits)
    {
        int top = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[top]) top = i;
        return top;
    }

    static double Probability(float[] logits, int token)
    {
        double max = logits.Max(), sum = 0;
        foreach (var v in logits) sum += Math.Exp(v - max);
        return Math.Exp(logits[token] - max) / sum;
    }

    static LensStage Summarize(string label, int layer, float[] logits, int answer, int? wrong)
    {
        double max = double.NegativeInfinity;
        int top = 0;
        for (int i = 0; i < logits.Length; i++) if (logits[i] > max) { max = logits[i]; top = i; }
        double sum = 0;
        foreach (var v in logits) sum += Math.Exp(v - max);
        double a = logits[answer];
        int rank = 0;
        foreach (var v in logits) if (v > a) rank++;
        return new LensStage(label, layer, a, Math.Exp(a - max) / sum, rank, wrong is int w ? a - logits[w] : double.NaN, top);
    }
}
