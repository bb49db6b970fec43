using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Edges;

/// <summary>Edge attribution refuses a shortformer model: its queries and keys read positions that are no node of the graph.</summary>
public sealed class ShortformerEdgeGraphTests
{
    [Fact]
    public void A_shortformer_model_is_refused_with_the_reason()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("transformer_lens", "shortformer-attn-only-2l")));
        Assert.Contains("shortformer", EdgeGraph.Unsupported(model));
        Assert.Contains("shortformer", Assert.Throws<NotSupportedException>(() => EdgeGraph.FromModel(model)).Message);
        using var standard = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("transformer_lens", "gelu-2l-lnpre")));
        Assert.Null(EdgeGraph.Unsupported(standard));
    }
}
