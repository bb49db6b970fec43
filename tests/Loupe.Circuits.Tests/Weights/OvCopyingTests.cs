using System.Numerics;
using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Weights;

public class OvCopyingTests
{
    /// <summary>Σλ = tr(C) and Σλ² = tr(C²) for the dense full OV circuit C = W_E·W_V·W_O·W_U [d_vocab, d_vocab] formed here.</summary>
    [Fact]
    public void EigenvaluesMatchTracesOfTheDenseFullOvCircuit()
    {
        string folder = SharedData.TestData("reference/gpt2");
        using var model = ModelLoader.LoadFolder(folder);
        var w = AttentionWeights.FromModel(model);
        using var st = SafeTensorsFile.Open(Path.Combine(folder, "model.safetensors"));
        var wE = st.GetFloat32("transformer.wte.weight").ToArray(); // [d_vocab, d_model]; GPT-2 ties W_U = W_Eᵀ
        int V = model.Config.DVocab, D = w.DModel, E = w.DHead;
        var eigen = OvCopying.Eigenvalues(w, wE, wE, V, unembeddingIsVocabFirst: true);
        var scores = OvCopying.Compute(model, w)!;
        foreach (var (l, h) in new[] { (0, 0), (1, 2), (2, 3) })
        {
            // C = (W_E·W_V)·(W_O·W_E^T): [V, E]·[E, V]
            var left = new double[V * E]; var right = new double[E * V];
            for (int v = 0; v < V; v++)
                for (int e = 0; e < E; e++)
                {
                    double s = 0, t = 0;
                    for (int d = 0; d < D; d++) { s += wE[v * D + d] * w.WV[l][h][d * E + e]; t += w.WO[l][h][e * D + d] * wE[v * D + d]; }
                    left[v * E + e] = s; right[e * V + v] = t;
                }
            var c = new double[V * V];
            for (int i = 0; i < V; i++)
                for (int j = 0; j < V; j++)
                {
                    double s = 0;
                    for (int e = 0; e < E; e++) s += left[i * E + e] * right[e * V + j];
                    c[i * V + j] = s;
                }
            double trace = 0, trace2 = 0;
            for (int i = 0; i < V; i++) trace += c[i * V + i];
            for (int i = 0; i < V; i++) for (int j = 0; j < V; j++) trace2 += c[i * V + j] * c[j * V + i];
            var lambda = eigen[l * w.NHeads + h];
            var sum = lambda.Aggregate(Complex.Zero, (a, x) => a + x);
            var sum2 = lambda.Aggregate(Complex.Zero, (a, x) => a + x * x);
            double tol = 1e-4 * (1 + Math.Abs(trace2));
            Assert.InRange(sum.Real, trace - tol, trace + tol);
            Assert.InRange(sum2.Real, trace2 - tol, trace2 + tol);
            Assert.InRange(scores[l * w.NHeads + h], -1, 1);
            Assert.InRange(scores[l * w.NHeads + h], OvCopying.Score(lambda) - 1e-12, OvCopying.Score(lambda) + 1e-12);
        }
    }

    [Fact]
    public void ScoreIsTheRealFractionOfTheSpectrum()
    {
        Assert.Equal(1, OvCopying.Score([new Complex(2, 0), new Complex(0.5, 0)]));
        Assert.Equal(-1, OvCopying.Score([new Complex(-3, 0)]));
        Assert.InRange(OvCopying.Score([new Complex(1, 1), new Complex(1, -1), new Complex(-2, 0)]), -1e-12, 1e-12);
        Assert.Equal(0, OvCopying.Score([Complex.Zero]));
    }
}
