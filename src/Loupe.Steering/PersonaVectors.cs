using System.Numerics.Tensors;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Steering;

/// <summary>
/// Extracts persona vectors.
/// 1. read every layer's residual stream (<see cref="PersonaOptions.Hook"/>) for every text, averaged over its non-BOS tokens;
/// 2. split the texts into k folds (text i is in fold i mod k, k = round(1/<see cref="PersonaOptions.HeldOutFraction"/>));
/// 3. per layer and fold, v = mean(trait) − mean(opposite) over the other folds; project the fold's texts onto v̂ and
///    score the separation: AUROC, projection gap / pooled sd, accuracy of the threshold calibrated on the other folds;
/// 4. keep the chosen layer, or the one with the best cross-validated separation (mean AUROC, ties by mean gap / pooled sd);
/// 5. fit the returned vector on every fold but the last, calibrate its threshold on those training texts (max accuracy)
///    and report its accuracy and AUROC on the last fold (the held-out texts).
/// </summary>
public static class PersonaVectors
{
    /// <summary>Extracts a persona vector from token sequences expressing the trait (<paramref name="positive"/>) and its opposite.</summary>
    /// <exception cref="InputError">A set has fewer than two texts, a text is empty, or the layer is outside the model.</exception>
    public static PersonaVector Extract(HookedTransformer model, IReadOnlyList<int[]> positive, IReadOnlyList<int[]> negative, PersonaOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new PersonaOptions();
        if (positive.Count < 2 || negative.Count < 2)
            throw new InputError($"persona extraction needs at least two texts per set (trait has {positive.Count}, opposite {negative.Count})");
        int layers = model.Config.NLayers;
        if (options.Layer is int chosen && (uint)chosen >= (uint)layers)
            throw new InputError($"layer {chosen} is outside the model (n_layers = {layers})");
        if (!(options.HeldOutFraction >= 0 && options.HeldOutFraction < 1)) throw InputError.Expected("persona options", "held-out fraction", "a number in [0, 1)", options.HeldOutFraction);

        // 1. Token-averaged activations at every layer: rows [0, P) are the trait texts, [P, P + N) the opposite ones.
        var hooks = Enumerable.Range(0, layers).Select(options.Hook).ToArray();
        var acts = TextActivations.Collect(model, positive.Concat(negative).ToArray(), hooks, TokenReduction.MeanOverTokens);
        int P = positive.Count;

        // 2. Folds.
        int k = options.HeldOutFraction > 0 ? Math.Min((int)Math.Round(1 / options.HeldOutFraction), Math.Min(positive.Count, negative.Count)) : 1;
        var folds = Enumerable.Range(0, Math.Max(k, 1))
            .Select(f => (Train: Fold(positive.Count, negative.Count, P, k, f, held: false), HeldOut: Fold(positive.Count, negative.Count, P, k, f, held: true)))
            .ToArray();
        bool crossValidate = k >= 2;
        // The returned vector trains on every fold but the last; without folds, on every text (the one fold of k = 1).
        var final = crossValidate ? folds[^1] : (Train: Fold(positive.Count, negative.Count, P, 1, 0, held: true), HeldOut: (Pos: Array.Empty<int>(), Neg: Array.Empty<int>()));

        // 3. Separation per layer, cross-validated.
        var vectors = new float[layers][];
        var separations = new LayerSeparation[layers];
        for (int l = 0; l < layers; l++)
        {
            var rows = acts[hooks[l]];
            vectors[l] = Difference(rows, final.Train);
            var trainDirection = new PersonaVector(hooks[l], l, vectors[l], 0);
            double trainEffect = Separation.EffectSize(Project(trainDirection, rows, final.Train.Pos), Project(trainDirection, rows, final.Train.Neg));
            double auroc = double.NaN, effect = double.NaN, accuracy = double.NaN;
            if (crossValidate)
            {
                var scores = folds.Select(fold =>
                {
                    var direction = new PersonaVector(hooks[l], l, Difference(rows, fold.Train), 0);
                    double[] tp = Project(direction, rows, fold.Train.Pos), tn = Project(direction, rows, fold.Train.Neg);
                    double[] hp = Project(direction, rows, fold.HeldOut.Pos), hn = Project(direction, rows, fold.HeldOut.Neg);
                    return (Auroc: Separation.Auroc(hp, hn), Effect: Separation.EffectSize(hp, hn),
                        Accuracy: Separation.Accuracy(hp, hn, Separation.BestThreshold(tp, tn).Threshold));
                }).ToArray();
                (auroc, effect, accuracy) = (scores.Average(s => s.Auroc), scores.Average(s => s.Effect), scores.Average(s => s.Accuracy));
            }
            separations[l] = new LayerSeparation(l, hooks[l], TensorPrimitives.Norm(vectors[l]), trainEffect, effect, auroc, accuracy);
        }

        // 4. Choose the layer.
        int layer = options.Layer ?? separations
            .OrderByDescending(s => crossValidate ? s.HeldOutAuroc : 0)
            .ThenByDescending(s => crossValidate ? s.HeldOutEffectSize : s.TrainEffectSize)
            .First().Layer;

        // 5. The returned vector, its threshold and its held-out accuracy.
        var best = new PersonaVector(hooks[layer], layer, vectors[layer], 0);
        var chosenRows = acts[hooks[layer]];
        double[] trP = Project(best, chosenRows, final.Train.Pos), trN = Project(best, chosenRows, final.Train.Neg);
        double[] hoP = Project(best, chosenRows, final.HeldOut.Pos), hoN = Project(best, chosenRows, final.HeldOut.Neg);
        var (threshold, trainAccuracy) = Separation.BestThreshold(trP, trN);
        return new PersonaVector(hooks[layer], layer, vectors[layer], threshold)
        {
            MidpointThreshold = Separation.MeanMidpoint(trP, trN),
            TrainAccuracy = trainAccuracy,
            HeldOutAccuracy = crossValidate ? Separation.Accuracy(hoP, hoN, threshold) : double.NaN,
            HeldOutAuroc = crossValidate ? Separation.Auroc(hoP, hoN) : double.NaN,
            Layers = separations,
            LayerVectors = vectors,
            TrainPositive = trP,
            TrainNegative = trN,
            HeldOutPositive = hoP,
            HeldOutNegative = hoN,
        };
    }

    /// <summary>Extracts a persona vector from texts, tokenized with the model's tokenizer.</summary>
    /// <exception cref="InputError">As for the token overload, or a text is blank.</exception>
    /// <exception cref="InputError">The model has no tokenizer.</exception>
    public static PersonaVector Extract(HookedTransformer model, IReadOnlyList<string> positive, IReadOnlyList<string> negative, PersonaOptions? options = null) =>
        Extract(model, ContrastiveActivationAddition.Tokenize(model, positive, "trait"), ContrastiveActivationAddition.Tokenize(model, negative, "opposite"), options);

    /// <summary>
    /// Row indices (into the stacked activations) of fold <paramref name="fold"/> of <paramref name="k"/>
    /// (<paramref name="held"/>) or of every other fold: text i of either set is in fold i mod k.
    /// </summary>
    internal static (int[] Pos, int[] Neg) Fold(int positiveCount, int negativeCount, int negOffset, int k, int fold, bool held)
    {
        int[] Pick(int count, int offset) => Enumerable.Range(0, count).Where(i => (i % k == fold) == held).Select(i => i + offset).ToArray();
        return (Pick(positiveCount, 0), Pick(negativeCount, negOffset));
    }

    static float[] Difference(float[][] rows, (int[] Pos, int[] Neg) split)
    {
        var v = new float[rows[0].Length];
        TensorPrimitives.Subtract(TextActivations.Mean(split.Pos.Select(i => rows[i]).ToArray()), TextActivations.Mean(split.Neg.Select(i => rows[i]).ToArray()), v);
        return v;
    }

    static double[] Project(PersonaVector direction, float[][] rows, int[] indices) => indices.Select(i => direction.Project(rows[i])).ToArray();
}

/// <summary>How <see cref="PersonaVectors.Extract(HookedTransformer, IReadOnlyList{int[]}, IReadOnlyList{int[]}, PersonaOptions?)"/> splits, reads and picks.</summary>
public sealed record PersonaOptions
{
    /// <summary>The layer whose direction is kept; null picks the layer that best separates held-out texts.</summary>
    public int? Layer { get; init; }

    /// <summary>
    /// Share of each set held out: the texts form k = round(1/fraction) folds (text i in fold i mod k)
    /// for cross-validated layer choice, and the last fold is held out from the returned vector to
    /// report its accuracy. 0 keeps every text for training (selection then uses the training texts).
    /// </summary>
    public double HeldOutFraction { get; init; } = 0.25;

    /// <summary>The hook read at each layer (default <c>blocks.{l}.hook_resid_post</c>, the block's output).</summary>
    public Func<int, string> Hook { get; init; } = HookNames.ResidPost;
}

/// <summary>How well layer <paramref name="Layer"/>'s direction separates the two sets.</summary>
/// <param name="Layer">Block index.</param>
/// <param name="HookName">The hook read at that layer.</param>
/// <param name="Norm">‖mean(trait) − mean(opposite)‖ on the training texts.</param>
/// <param name="TrainEffectSize">Projection gap over pooled sd on the training texts (<see cref="Separation.EffectSize"/>), in-sample.</param>
/// <param name="HeldOutEffectSize">The same on held-out texts, averaged over the cross-validation folds (NaN when nothing is held out).</param>
/// <param name="HeldOutAuroc">Held-out AUROC of the projection, averaged over folds (NaN when nothing is held out).</param>
/// <param name="HeldOutAccuracy">Held-out accuracy of each fold's training-calibrated threshold, averaged over folds (NaN when nothing is held out).</param>
public sealed record LayerSeparation(int Layer, string HookName, double Norm, double TrainEffectSize, double HeldOutEffectSize, double HeldOutAuroc, double HeldOutAccuracy);
