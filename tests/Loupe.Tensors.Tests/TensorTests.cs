namespace Loupe.Tensors.Tests;

/// <summary><see cref="Tensor"/>: shape checks, views that share data, and the messages of its errors.</summary>
public class TensorTests
{
    static Tensor Iota(params int[] shape)
    {
        var data = new float[ShapeUtil.Product(shape)];
        for (int i = 0; i < data.Length; i++) data[i] = i;
        return Tensor.FromArray(data, shape);
    }

    [Fact]
    public void ShapeAndDims()
    {
        var t = Iota(2, 3, 4);
        Assert.Equal([2, 3, 4], t.Shape.ToArray());
        Assert.Equal(3, t.Rank);
        Assert.Equal(24, t.Length);
        Assert.Equal(4, t.Dim(-1));
        Assert.Equal(2, t.Dim(0));
        Assert.Equal(3, t.Dim(-2));
        Assert.Equal("[2, 3, 4]", t.ShapeString);
        Assert.Equal("Tensor[2, 3, 4]", t.ToString());
        Assert.Equal(Device.Cpu, t.Device);
        Assert.Equal(1 * 12 + 2 * 4 + 3, t.At(1, 2, 3));
    }

    [Fact]
    public void ConstructorRejectsShapeThatDoesNotFitTheData()
    {
        var ex = Assert.Throws<ArgumentException>(() => new Tensor(new float[5], 2, 3));
        Assert.Equal("shape", ex.ParamName);
        Assert.StartsWith("shape [2, 3] holds 6 elements but the data has 5", ex.Message);
        Assert.Contains("negative dimension -2", Assert.Throws<ArgumentException>(() => Tensor.Zeros(3, -2)).Message);
    }

    [Fact]
    public void ShapeIsCopiedNotAliased()
    {
        int[] shape = [2, 3];
        var t = Tensor.Zeros(shape);
        shape[0] = 99;
        Assert.Equal([2, 3], t.Shape.ToArray());
    }

    [Fact]
    public void ZerosAndUninitializedHaveTheirShape()
    {
        var z = Tensor.Zeros(3, 0, 2);
        Assert.Equal(0, z.Length);
        var u = Tensor.Uninitialized(4, 5);
        Assert.Equal(20, u.Length);
        Assert.True(u.SameShape(Tensor.Zeros(4, 5)));
        Assert.False(u.SameShape(Tensor.Zeros(5, 4)));
        Assert.All(Tensor.Zeros(7).Span.ToArray(), v => Assert.Equal(0f, v));
    }

    [Theory]
    [InlineData(new[] { -1 }, new[] { 24 })]
    [InlineData(new[] { -1, 4 }, new[] { 6, 4 })]
    [InlineData(new[] { 2, -1 }, new[] { 2, 12 })]
    [InlineData(new[] { 2, -1, 3 }, new[] { 2, 4, 3 })]
    [InlineData(new[] { 4, 6 }, new[] { 4, 6 })]
    public void ReshapeInfersMinusOne(int[] request, int[] expected)
    {
        var t = Iota(2, 3, 4);
        var r = t.Reshape(request);
        Assert.Equal(expected, r.Shape.ToArray());
        Assert.Equal(24, r.Length);
    }

    [Fact]
    public void ReshapeDoesNotModifyTheRequestAndSharesData()
    {
        var t = Iota(2, 3, 4);
        int[] request = [-1, 4];
        var r = t.Reshape(request);
        Assert.Equal([-1, 4], request);
        r.Span[5] = -7f;
        Assert.Equal(-7f, t.At(0, 1, 1));
    }

    [Theory]
    [InlineData(new[] { 5, 5 })]
    [InlineData(new[] { 5, -1 })]       // 24 is not a multiple of 5
    [InlineData(new[] { -1, -1 })]      // only one axis can be inferred
    public void ReshapeRejectsIncompatibleShapes(int[] request)
    {
        var t = Iota(2, 3, 4);
        Assert.Throws<ArgumentException>(() => t.Reshape(request));
    }

    [Fact]
    public void ReshapeMinusOneBesideZeroAxisIsAnArgumentError()
    {
        var t = Tensor.Zeros(0, 4);
        Assert.Throws<ArgumentException>(() => t.Reshape(0, -1));
    }

    [Fact]
    public void IndexerIsAViewThatSharesData()
    {
        var t = Iota(2, 3, 4);
        var row = t[1];
        Assert.Equal([3, 4], row.Shape.ToArray());
        Assert.Equal(12f, row.At(0, 0));
        row.Span[2] = -1f;
        Assert.Equal(-1f, t.At(1, 0, 2));
        var inner = t[1][2];
        Assert.Equal([4], inner.Shape.ToArray());
        inner.Span[3] = -2f;
        Assert.Equal(-2f, t.At(1, 2, 3));
        t.Span[0] = -3f;
        Assert.Equal(-3f, t[0].At(0, 0));
    }

    [Fact]
    public void CloneIsDeep()
    {
        var t = Iota(2, 2);
        var c = t.Clone();
        c.Span[0] = 42f;
        Assert.Equal(0f, t.At(0, 0));
        Assert.True(c.SameShape(t));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(-1)]
    public void IndexerNamesTheOutOfRangeIndex(int index)
    {
        var t = Iota(2, 3);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => t[index]);
        Assert.Equal("index", ex.ParamName);
        Assert.Contains($"index {index} is outside axis 0 of size 2", ex.Message);
    }

    [Fact]
    public void AtNamesTheAxisAndShape()
    {
        var t = Iota(2, 3);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => t.At(1, 3));
        Assert.Contains("index 3 out of range for axis 1 of shape [2, 3]", ex.Message);
        Assert.Contains("index of rank 1 for a tensor of shape [2, 3]", Assert.Throws<ArgumentException>(() => t.At(1)).Message);
    }
}
