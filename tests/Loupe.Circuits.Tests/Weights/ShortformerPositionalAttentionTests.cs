using System.Text.Json;
using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Weights;

/// <summary>
/// Positional attention of a shortformer model: the stream holds no positions, so queries and keys read ln1(0) + W_pos.
/// tests/data/transformer_lens/make_models.py computed layer 0's previous-token scores that way in Python.
/// </summary>
public sealed class ShortformerPositionalAttentionTests
{
    [Fact]
    public void Previous_token_scores_read_the_positions_after_ln1()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("transformer_lens", "shortformer-attn-only-2l")));
        var weights = AttentionWeights.FromModel(model);
        Assert.True(weights.Shortformer);
        Assert.Same(weights, weights.FoldLayerNorm());               // ln1 cannot be folded past the positions

        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedData.TestData("transformer_lens/expected.json")));
        var want = doc.RootElement.GetProperty("shortformer-attn-only-2l").GetProperty("positional_previous_token.layer0")
            .EnumerateArray().Select(v => v.GetDouble()).ToArray();
        foreach (var mode in new[] { PositionalMode.LayerAlone, PositionalMode.ThroughAttention })   // the same at layer 0
        {
            var scores = PositionalAttention.Compute(weights, positions: 12, mode).PreviousTokenScores;
            for (int h = 0; h < want.Length; h++) Assert.Equal(want[h], scores[h], 1e-6);
        }
    }
}
