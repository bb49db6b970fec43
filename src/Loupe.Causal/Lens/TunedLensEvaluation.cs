using Loupe.Models;

namespace Loupe.Causal.Lens;

/// <summary>One layer of <see cref="TunedLensEvaluation"/>: mean KL(final ‖ lens) in nats and how often the lens's top token is the model's, for the logit lens and the tuned lens.</summary>
public sealed record TunedLensLayerEvaluation(int Layer, string Label, double LogitLensKl, double TunedLensKl, double LogitLensTop1, double TunedLensTop1);

/// <summary>
/// The tuned lens against the logit lens on held-out contexts (tuned-lens's <c>eval</c> reports the same KL): per block
/// input resid_pre ℓ, the mean over every token of KL(model's distribution ‖ lens's) and the fraction of tokens where the
/// lens ranks the model's top token first.
/// </summary>
public sealed record TunedLensEvaluation(IReadOnlyList<TunedLensLayerEvaluation> Layers, long Tokens)
{
    /// <exception cref="InputError">The lens does not fit the model, there are no contexts, or they differ in length.</exception>
    public static TunedLensEvaluation Run(HookedTransformer model, TunedLens lens, IReadOnlyList<int[]> contexts, int batchContexts = 1)
    {
        lens.CheckFits(model, "tuned lens");
        model.RequireResidualSum("the tuned lens");
        if (contexts.Count == 0) throw new InputError("argument: no contexts to evaluate the tuned lens on");
        Check.InRange(batchContexts, 1, 1 << 20, "argument", "--batch-contexts");
        int L = model.Config.NLayers;
        var logit = new TunedLensObjective(model, TunedLens.Identity(model, lens.HasBias));
        var tuned = new TunedLensObjective(model, lens);
        var be = model.Backend;
        var table = be.Zeros(2 * logit.LossSlots);
        var logitTop = new long[L];
        var tunedTop = new long[L];
        long tokens = 0;
        for (int i = 0; i < contexts.Count; i += batchContexts)
        {
            var rows = contexts.Skip(i).Take(batchContexts).ToArray();
            if (rows.Any(r => r.Length != rows[0].Length || r.Length == 0)) throw new InputError($"argument: contexts {i}…{i + rows.Length - 1} differ in length; evaluation needs contexts of one length");
            var batch = TokenBatch.FromRows(rows);
            logit.Accumulate(batch, table, 0, null, logitTop);
            tuned.Accumulate(batch, table, logit.LossSlots, null, tunedTop);
            tokens += (long)batch.Batch * batch.Length;
        }
        var sums = new float[table.Length];
        table.CopyTo(sums);
        int t = logit.LossSlots;
        var layers = new TunedLensLayerEvaluation[L];
        for (int l = 0; l < L; l++)
            layers[l] = new TunedLensLayerEvaluation(l, $"resid_pre {l}",
                ((double)sums[l] - sums[L]) / tokens, ((double)sums[t + l] - sums[t + L]) / tokens,
                (double)logitTop[l] / tokens, (double)tunedTop[l] / tokens);
        if (layers.FirstOrDefault(l => !double.IsFinite(l.TunedLensKl)) is { } bad)
            throw new InputError($"tuned lens: {bad.Label} gives a non-finite KL ({bad.TunedLensKl}); its translator overflows on these residuals (a lens for another model?)");
        return new TunedLensEvaluation(layers, tokens);
    }
}
