namespace Loupe.Models.Processing;

/// <summary>TransformerLens's refactor_factored_attn_matrices: W_Q/W_K and W_V/W_O of each head as "even" SVD factors.</summary>
static class FactoredAttention
{
    /// <summary>Why the refactoring would not be exact for <paramref name="model"/>, or null.</summary>
    internal static string? WhyNot(HookedTransformer model)
    {
        var cfg = model.Config;
        if (cfg.RotaryDim > 0) return "its attention uses rotary embeddings, so W_Q·W_Kᵀ depends on the positions of the query and key (TransformerLens refuses it too)";
        if (cfg.KvHeads != cfg.NHeads) return "its query heads share key/value heads (grouped-query attention), so a head's W_K cannot be refactored alone";
        if (cfg.QkNorm) return "its queries and keys are normalised after the projection, which a refactored W_Q/W_K would change";
        return "not implemented in this build";
    }

    internal static void Refactor(HookedTransformer model) =>
        throw new NotSupportedException($"refactor_factored_attn_matrices: {WhyNot(model)}");
}
