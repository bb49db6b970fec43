using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Weights;

public class CompositionScoresTests
{
    /// <summary>Dense <c>[rows, cols]</c> = a·b with a <c>[rows, k]</c>, b <c>[k, cols]</c>; transposes by index maps.</summary>
    static double[] Product(int rows, int k, int cols, Func<int, int, double> a, Func<int, int, double> b)
    {
        var c = new double[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += a(i, p) * b(p, j);
                c[i * cols + j] = s;
            }
        return c;
    }

    static double Norm(double[] x) => Math.Sqrt(x.Sum(v => v * v));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ScoresMatchDenseD_modelByD_modelProducts(bool foldLn)
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var w = AttentionWeights.FromModel(model);
        if (foldLn) w = w.FoldLayerNorm();
        var scores = CompositionScores.Compute(w);
        int D = w.DModel, E = w.DHead, H = w.NHeads, L = w.NLayers;
        double[] OV(int l, int h) => Product(D, E, D, (i, p) => w.WV[l][h][i * E + p], (p, j) => w.WO[l][h][p * D + j]);
        double[] QK(int l, int h) => Product(D, E, D, (i, p) => w.WQ[l][h][i * E + p], (p, j) => w.WK[l][h][j * E + p]);
        for (int l1 = 0; l1 < L; l1++)
            for (int h1 = 0; h1 < H; h1++)
            {
                var ovA = OV(l1, h1);
                for (int l2 = 0; l2 < L; l2++)
                    for (int h2 = 0; h2 < H; h2++)
                    {
                        if (l2 <= l1)
                        {
                            foreach (var kind in Enum.GetValues<CompositionKind>()) Assert.Equal(0, scores.Get(kind, l1, h1, l2, h2));
                            continue;
                        }
                        var qkB = QK(l2, h2);
                        var ovB = OV(l2, h2);
                        double q = Norm(Product(D, D, D, (i, p) => ovA[i * D + p], (p, j) => qkB[p * D + j])) / (Norm(ovA) * Norm(qkB));
                        double k = Norm(Product(D, D, D, (i, p) => ovA[i * D + p], (p, j) => qkB[j * D + p])) / (Norm(ovA) * Norm(qkB));
                        double v = Norm(Product(D, D, D, (i, p) => ovA[i * D + p], (p, j) => ovB[p * D + j])) / (Norm(ovA) * Norm(ovB));
                        foreach (var (kind, expected) in new[] { (CompositionKind.Q, q), (CompositionKind.K, k), (CompositionKind.V, v) })
                        {
                            double actual = scores.Get(kind, l1, h1, l2, h2);
                            Assert.InRange(actual, 0, 1);
                            Assert.InRange(actual, expected - 1e-5, expected + 1e-5);
                        }
                        // The slow factored route agrees too.
                        Assert.InRange(CompositionScores.Score(w.OV(l1, h1), w.QK(l2, h2).Transpose()), k - 1e-9, k + 1e-9);
                    }
            }
        Assert.Contains(scores.KScores, s => s > 0.05);
    }
}
