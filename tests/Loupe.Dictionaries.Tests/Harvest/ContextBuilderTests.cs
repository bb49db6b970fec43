using Loupe.Dictionaries.Harvest;

namespace Loupe.Dictionaries.Tests.Harvest;

public sealed class ContextBuilderTests
{
    const int Bos = 1, Eos = 2;

    static int[][] Docs() => [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34], [], [40, 41, 42, 43]];

    [Fact]
    public void Build_ConcatenatesWithSeparator_PrependsBos_DropsRemainder()
    {
        var c = ContextBuilder.Build(Docs(), new ContextOptions(4, Bos, Eos, Seed: 0), "test");
        // Stream: 10 11 12 E 20 21 E 30 31 32 33 34 E 40 41 42 43 (17 tokens) → 5 chunks of 3, remainder 2 dropped.
        var expected = new[] { new[] { 1, 10, 11, 12 }, [1, 2, 20, 21], [1, 2, 30, 31], [1, 32, 33, 34], [1, 2, 40, 41] };
        Assert.Equal(5, c.Count);
        Assert.All(c.Contexts, r => Assert.Equal(Bos, r[0]));
        Assert.Equal(expected.Select(r => string.Join(",", r)).Order(), c.Contexts.Select(r => string.Join(",", r)).Order());
    }

    [Fact]
    public void Build_ShuffleIsSeededAndDeterministic()
    {
        var docs = Enumerable.Range(0, 50).Select(i => Enumerable.Range(100 + 10 * i, 7).ToArray()).ToArray();
        var a = ContextBuilder.Build(docs, new ContextOptions(8, Bos, Eos, Seed: 3), "t");
        var b = ContextBuilder.Build(docs, new ContextOptions(8, Bos, Eos, Seed: 3), "t");
        var other = ContextBuilder.Build(docs, new ContextOptions(8, Bos, Eos, Seed: 4), "t");
        Assert.Equal(a.Sha256(), b.Sha256());
        Assert.NotEqual(a.Sha256(), other.Sha256());
        Assert.Equal(a.Contexts.Select(r => string.Join(",", r)).Order(), other.Contexts.Select(r => string.Join(",", r)).Order());
        Assert.Equal(10, ContextBuilder.Build(docs, new ContextOptions(8, Bos, Eos, MaxContexts: 10), "t").Count);
    }

    [Fact]
    public void Build_TooFewTokens_Throws()
    {
        Assert.Throws<InputError>(() => ContextBuilder.Build([[5, 6]], new ContextOptions(8, Bos, Eos), "t"));
        Assert.Throws<InputError>(() => ContextBuilder.Build([[5, 6]], new ContextOptions(1, Bos, Eos), "t"));
    }

    [Fact]
    public void FromRows_KeepsOrderAndRejectsRaggedRows()
    {
        var c = HarvestContexts.FromRows([[1, 5, 6], [1, 7, 8]], "ids");
        Assert.Equal(3, c.ContextSize);
        Assert.Equal([1, 7, 8], c.Contexts[1]);
        Assert.Throws<ArgumentException>(() => HarvestContexts.FromRows([[1, 5, 6], [1, 7]], "ids"));
        Assert.Throws<ArgumentException>(() => HarvestContexts.FromRows([], "ids"));
    }
}
