using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;
using Loupe.Tensors;

namespace Loupe.Dictionaries.Tests.Splice;

/// <summary>The tiny llama fixture (d_model 64, 3 layers, vocab 512), tokens and dictionaries for splice and evaluation tests.</summary>
static class SpliceFixtures
{
    public const int Bos = 1;

    /// <summary>A fresh model per test: splices attached to a model must not leak into other tests.</summary>
    public static HookedTransformer Model() => ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));

    /// <summary>Rows starting with BOS, other ids drawn from 3..511 (never BOS or EOS).</summary>
    public static TokenBatch Tokens(int rows = 2, int length = 10, int seed = 5)
    {
        var random = new Random(seed);
        return TokenBatch.FromRows(Enumerable.Range(0, rows)
            .Select(_ => Enumerable.Range(0, length).Select(t => t == 0 ? Bos : random.Next(3, 512)).ToArray()).ToArray());
    }

    /// <summary>A seeded random dictionary with a small positive encoder bias so features fire about half the time.</summary>
    public static SparseDictionary Random(SaeShape shape, SaeActivation activation, int seed, float decoderNorm = 0.5f)
    {
        var d = new SparseDictionary(shape, activation);
        d.Initialize(seed, decoderNorm);
        var random = new Random(seed + 100);
        for (int i = 0; i < d.P.BEnc.Length; i++) d.P.BEnc[i] = (float)(random.NextDouble() * 0.02 - 0.01);
        for (int i = 0; i < d.P.BDec.Length; i++) d.P.BDec[i] = (float)(random.NextDouble() * 0.02 - 0.01);
        for (int i = 0; i < d.P.WSkip.Length; i++) d.P.WSkip[i] = (float)((random.NextDouble() * 2 - 1) * 0.05);
        return d;
    }

    /// <summary>
    /// An exact identity SAE: d_sae = 2·d, W_enc = [I, −I], W_dec = [I; −I], biases 0, ReLU, so
    /// recons = relu(x) − relu(−x) = x bit for bit (one of the two is 0 for every element).
    /// </summary>
    public static SparseDictionary Identity(int d)
    {
        var sae = new SparseDictionary(SaeShape.Sae(d, 2 * d), new ReluActivation());
        for (int j = 0; j < d; j++)
        {
            sae.P.WEnc[j * 2 * d + j] = 1;
            sae.P.WEnc[j * 2 * d + d + j] = -1;
            sae.P.WDec[j * d + j] = 1;
            sae.P.WDec[(d + j) * d + j] = -1;
        }
        return sae;
    }

    public static float MaxAbsDifference(Tensor a, Tensor b)
    {
        Assert.True(a.SameShape(b), $"shapes differ: {a.ShapeString} vs {b.ShapeString}");
        float worst = 0;
        for (int i = 0; i < a.Length; i++) worst = MathF.Max(worst, MathF.Abs(a.Span[i] - b.Span[i]));
        return worst;
    }
}
