using System.Numerics.Tensors;
using Loupe.Models;

namespace Loupe.Steering;

/// <summary>
/// Contrastive activation addition (CAA; Rimsky et al. 2024, Turner et al. 2023): a steering
/// direction from two sets of prompts.
/// 1. read each prompt's activation at the hook, reduced to <c>[d]</c> (last token, or the mean over non-BOS tokens);
/// 2. average within set A and within set B;
/// 3. vector = mean(A) − mean(B), optionally divided by its norm.
/// </summary>
public static class ContrastiveActivationAddition
{
    /// <summary>The CAA vector at <paramref name="hookName"/> from token sequences.</summary>
    /// <exception cref="InputError">A set is empty, a sequence is empty, or the hook is unknown or not <c>[batch, pos, d]</c>.</exception>
    public static ContrastiveDirection Compute(HookedTransformer model, string hookName, IReadOnlyList<int[]> setA, IReadOnlyList<int[]> setB,
        TokenReduction reduction = TokenReduction.LastToken, bool normalize = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (setA.Count == 0 || setB.Count == 0)
            throw new InputError($"contrastive sets must both be non-empty (set A has {setA.Count} prompts, set B {setB.Count})");
        ActivationEdits.RequirePositionLayout(hookName);
        var a = TextActivations.Collect(model, setA, [hookName], reduction)[hookName];
        var b = TextActivations.Collect(model, setB, [hookName], reduction)[hookName];
        float[] meanA = TextActivations.Mean(a), meanB = TextActivations.Mean(b);
        var vector = new float[meanA.Length];
        TensorPrimitives.Subtract(meanA, meanB, vector);
        float norm = TensorPrimitives.Norm(vector);
        if (normalize)
        {
            if (norm == 0f) throw new InputError($"the two sets have the same mean activation at '{hookName}'; the difference cannot be normalized");
            TensorPrimitives.Divide(vector, norm, vector);
        }
        return new ContrastiveDirection(hookName, vector, meanA, meanB, setA.Count, setB.Count, reduction, normalize, norm);
    }

    /// <summary>The CAA vector from texts, tokenized with the model's tokenizer (BOS as its template says).</summary>
    /// <exception cref="InputError">As for the token overload, or a text is blank.</exception>
    /// <exception cref="InputError">The model has no tokenizer.</exception>
    public static ContrastiveDirection Compute(HookedTransformer model, string hookName, IReadOnlyList<string> setA, IReadOnlyList<string> setB,
        TokenReduction reduction = TokenReduction.LastToken, bool normalize = false) =>
        Compute(model, hookName, Tokenize(model, setA, "A"), Tokenize(model, setB, "B"), reduction, normalize);

    internal static int[][] Tokenize(HookedTransformer model, IReadOnlyList<string> texts, string set)
    {
        var tokenizer = model.Tokenizer ?? throw new InputError($"the model at {model.Source} has no tokenizer; pass token ids instead of texts");
        return texts.Select((t, i) => string.IsNullOrWhiteSpace(t)
            ? throw new InputError($"text {i} of set {set} is blank")
            : tokenizer.Encode(t)).ToArray();
    }
}

/// <summary>A CAA result: the steering vector and the two class means it came from.</summary>
/// <param name="HookName">Where the activations were read (and where the vector is meant to be added).</param>
/// <param name="Vector">mean(A) − mean(B), or that over its norm when <paramref name="Normalized"/> <c>[d]</c>.</param>
/// <param name="MeanA">Mean reduced activation of set A <c>[d]</c>.</param>
/// <param name="MeanB">Mean reduced activation of set B <c>[d]</c>.</param>
/// <param name="CountA">Prompts in set A.</param>
/// <param name="CountB">Prompts in set B.</param>
/// <param name="Reduction">How each prompt's positions were reduced.</param>
/// <param name="Normalized">Whether <paramref name="Vector"/> was divided by its norm.</param>
/// <param name="RawNorm">‖mean(A) − mean(B)‖ before any normalization.</param>
public sealed record ContrastiveDirection(string HookName, float[] Vector, float[] MeanA, float[] MeanB, int CountA, int CountB,
    TokenReduction Reduction, bool Normalized, float RawNorm)
{
    /// <summary>A steering edit adding <c>coefficient · Vector</c> at <see cref="HookName"/>.</summary>
    public SteeringVector ToSteering(float coefficient, SteeringPositions? positions = null) => new(HookName, Vector, coefficient, positions);

    /// <summary>A projection-out edit removing the component along <see cref="Vector"/>.</summary>
    public ProjectOut ToProjectOut(float coefficient = 1f, SteeringPositions? positions = null) => new(HookName, Vector, coefficient, positions);
}
