using Loupe.Causal.Lens;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;

namespace Loupe.Causal.Tests;

/// <summary>
/// A shortformer model (TransformerLens positional_embedding_type "shortformer": positions reach the queries and keys, never the
/// stream) decomposes into embed + heads + biases without pos_embed; with it the sum would be off by the position vector.
/// </summary>
public sealed class ShortformerDecompositionTests
{
    [Fact]
    public void The_final_stream_is_the_sum_of_its_components_without_the_positions()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("transformer_lens", "shortformer-attn-only-2l")));
        Assert.DoesNotContain(HookNames.PosEmbed, ResidualDecomposition.Hooks(model));
        var d = ResidualDecomposition.Compute(model, TokenBatch.Single([3, 17, 5, 11, 3, 17, 8, 2]));
        Assert.DoesNotContain(d.Components, c => c.Kind == "pos_embed");
        Assert.True(d.MaxAbsError < 1e-4, $"components sum to the stream within {d.MaxAbsError}");

        // A cache of every hook point (hook_pos_embed included) decomposes the same way.
        var all = model.RunWithCache(TokenBatch.Single([3, 17, 5, 11, 3, 17, 8, 2])).Cache;
        var fromAll = ResidualDecomposition.FromCache(model, all);
        Assert.DoesNotContain(fromAll.Components, c => c.Kind == "pos_embed");
        Assert.True(fromAll.MaxAbsError < 1e-4);
    }
}
