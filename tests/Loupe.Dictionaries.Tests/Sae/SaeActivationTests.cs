using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Tests.Sae;

public class SaeActivationTests
{
    static readonly SaeParameters P = new(SaeShape.Sae(1, 4));

    [Fact]
    public void TopKKeepsTheKLargestPerRowAndReLUsThem()
    {
        float[] pre = [0.5f, 3, -1, 2, /* row 2 */ -3, -2, -1, 0.25f];
        var acts = new float[8];
        new TopKActivation(2).Forward(pre, acts, 2, 4, training: true, P);
        Assert.Equal([0, 3, 0, 2, 0, 0, 0, 0.25f], acts); // row 2: top-2 are 0.25 and −1, the ReLU drops −1
    }

    [Fact]
    public void BatchTopKKeepsKTimesBatchOverTheWholeBatchThenUsesTheLearnedThreshold()
    {
        float[] pre = [5, 4, 3, 0.1f, /* row 2 */ 0.2f, 0.3f, 0.1f, 0];
        var acts = new float[8];
        var act = new BatchTopKActivation(2, momentum: 0.5f);
        var p = new SaeParameters(SaeShape.Sae(1, 4));
        act.Forward(pre, acts, 2, 4, training: true, p);
        Assert.Equal([5, 4, 3, 0, 0, 0.3f, 0, 0], acts); // 4 largest of the batch: row 1 keeps 3, row 2 keeps 1
        act.AfterTrainingForward(acts, 2, 4, p);
        Assert.Equal(0.3f, p.Threshold[0]);                // first estimate: the smallest kept activation
        act.AfterTrainingForward(new float[] { 1, 0, 0, 0 }, 1, 4, p);
        Assert.Equal(0.65f, p.Threshold[0], 1e-6);            // running mean with momentum 0.5
        act.Forward(pre, acts, 2, 4, training: false, p);
        Assert.Equal([5, 4, 3, 0, 0, 0, 0, 0], acts);      // inference: pre > threshold
    }

    [Fact]
    public void JumpReluZeroesBelowThetaAndKeepsPreAbove()
    {
        var p = new SaeParameters(SaeShape.Sae(1, 4));
        Array.Fill(p.LogThreshold, MathF.Log(0.5f));
        float[] pre = [0.4f, 0.6f, -1, 2];
        var acts = new float[4];
        new JumpReluActivation().Forward(pre, acts, 1, 4, training: true, p);
        Assert.Equal([0, 0.6f, 0, 2], acts);
    }

    [Fact]
    public void InvalidArgumentsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new TopKActivation(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new BatchTopKActivation(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new JumpReluActivation(0));
        Assert.Throws<ArgumentException>(() => new SparseDictionary(new SaeShape(4, 8, 3, ApplyBDecToInput: true, Skip: false), new ReluActivation()));
    }
}
