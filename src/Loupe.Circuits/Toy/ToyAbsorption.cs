// Feature absorption on a toy with a known hierarchy (Chanin et al. 2024, "A is for Absorption"; the toy of Nabeshima's
// and Bussmann et al.'s Matryoshka SAEs). Ground truth is known by construction, so absorption is measured, not guessed.
//
// Data: orthonormal true feature directions in d_model dimensions (a random rotation of the basis):
//   parents   P parents, each firing with probability pParent;
//   children  C per parent, mutually exclusive, one of them firing with probability pChild — only when the parent fires;
//   others    M independent features, each with probability pOther.
//   x = Σ active features' magnitudes (uniform in [0.5, 1.5]) × directions.
// A sparse dictionary is trained on x. For each parent, its latent is the one whose decoder row is closest (cosine) to
// the parent's direction. Absorption: among rows where the parent and one of its children fire, the fraction where the
// parent's latent stays silent — a child latent then carries the parent's direction in its decoder ("absorbed" it),
// which is measured too: the mean cosine between the parent's direction and the decoder rows of its children's latents
// (0 when each child latent holds only its child; about 0.7 when it holds parent + child).
using Loupe.Dictionaries.Sae;

namespace Loupe.Circuits.Toy;

/// <summary>The hierarchy and sizes of the absorption toy.</summary>
/// <param name="Parents">Parent features.</param>
/// <param name="ChildrenPerParent">Mutually exclusive children per parent.</param>
/// <param name="Others">Independent features.</param>
/// <param name="DModel">Dimensions (at least the number of features: the directions are orthonormal).</param>
/// <param name="ParentProbability">Probability a parent fires.</param>
/// <param name="ChildProbability">Probability, given its parent fires, that one of its children fires (which one: uniform).</param>
/// <param name="OtherProbability">Probability each independent feature fires.</param>
public sealed record AbsorptionToy(int Parents = 2, int ChildrenPerParent = 4, int Others = 16, int DModel = 32,
    double ParentProbability = 0.4, double ChildProbability = 0.9, double OtherProbability = 0.05)
{
    /// <summary>Parents + children + others.</summary>
    public int Features => Parents * (1 + ChildrenPerParent) + Others;

    /// <summary>Expected true features per row.</summary>
    public double MeanL0 => Parents * ParentProbability * (1 + ChildProbability) + Others * OtherProbability;

    /// <summary>Feature index of parent p.</summary>
    public int Parent(int p) => p;

    /// <summary>Feature index of child c of parent p.</summary>
    public int Child(int p, int c) => Parents + p * ChildrenPerParent + c;

    /// <exception cref="ArgumentException">A size or probability is out of range.</exception>
    public void Validate()
    {
        if (Parents < 1 || ChildrenPerParent < 1 || Others < 0) throw new ArgumentException("the toy needs at least one parent with one child");
        if (DModel < Features) throw new ArgumentException($"d_model {DModel} is below the {Features} features: the directions must be orthonormal");
        foreach (var (name, p) in new[] { ("parent", ParentProbability), ("child", ChildProbability), ("other", OtherProbability) })
            if (!(p >= 0 && p <= 1)) throw new ArgumentException($"the {name} probability must lie in [0, 1], not {p}");
    }

    /// <summary>Orthonormal feature directions [features, d_model] (row i is feature i's), from <paramref name="seed"/>.</summary>
    public double[] Directions(int seed)
    {
        Validate();
        int n = Features, d = DModel;
        var rng = new Random(seed);
        var dirs = new double[n * d];
        for (int i = 0; i < n; i++)
        {
            // Gram–Schmidt on Gaussian vectors (twice, for orthogonality to rounding)
            var v = dirs.AsSpan(i * d, d);
            for (int j = 0; j < d; j++) v[j] = Benchmark.TinyAttentionTransformer.Gaussian(rng);
            for (int pass = 0; pass < 2; pass++)
                for (int k = 0; k < i; k++)
                {
                    var u = dirs.AsSpan(k * d, d);
                    double dot = 0;
                    for (int j = 0; j < d; j++) dot += v[j] * u[j];
                    for (int j = 0; j < d; j++) v[j] -= dot * u[j];
                }
            double norm = 0;
            for (int j = 0; j < d; j++) norm += v[j] * v[j];
            norm = Math.Sqrt(norm);
            for (int j = 0; j < d; j++) v[j] /= norm;
        }
        return dirs;
    }

    /// <summary>Samples <paramref name="rows"/> rows: true feature magnitudes [rows, features] (0 when silent).</summary>
    public double[] SampleFeatures(int rows, Random rng)
    {
        Validate();
        int n = Features;
        var f = new double[rows * n];
        double Magnitude() => 0.5 + rng.NextDouble();
        for (int r = 0; r < rows; r++)
        {
            var row = f.AsSpan(r * n, n);
            for (int p = 0; p < Parents; p++)
            {
                if (rng.NextDouble() >= ParentProbability) continue;
                row[Parent(p)] = Magnitude();
                if (rng.NextDouble() < ChildProbability) row[Child(p, rng.Next(ChildrenPerParent))] = Magnitude();
            }
            for (int o = 0; o < Others; o++)
                if (rng.NextDouble() < OtherProbability) row[Parents * (1 + ChildrenPerParent) + o] = Magnitude();
        }
        return f;
    }

    /// <summary>x = features · directions: [rows, d_model] as float32, the dictionary's input.</summary>
    public float[] Embed(double[] features, int rows, double[] directions)
    {
        int n = Features, d = DModel;
        var x = new float[rows * d];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < n; i++)
            {
                double a = features[r * n + i];
                if (a == 0) continue;
                for (int j = 0; j < d; j++) x[r * d + j] += (float)(a * directions[i * d + j]);
            }
        return x;
    }
}

/// <summary>One parent's absorption in a trained dictionary.</summary>
/// <param name="Parent">The parent (0-based).</param>
/// <param name="Latent">Its latent: the decoder row closest to its direction.</param>
/// <param name="Cosine">That cosine.</param>
/// <param name="RecallAlone">Fraction of rows where the parent fires without a child in which its latent fires.</param>
/// <param name="RecallWithChild">The same where one of its children fires too; absorption is 1 − this.</param>
/// <param name="ChildDecoderParentCosine">Mean cosine between the parent's direction and the decoder rows of its children's latents.</param>
public sealed record ParentAbsorption(int Parent, int Latent, double Cosine, double RecallAlone, double RecallWithChild, double ChildDecoderParentCosine)
{
    /// <summary>Fraction of parent-with-child rows where the parent's latent is silent.</summary>
    public double Absorption => 1 - RecallWithChild;
}

/// <summary>A dictionary's absorption on the toy.</summary>
/// <param name="Architecture">The dictionary's architecture.</param>
/// <param name="Parents">Per parent.</param>
/// <param name="ExplainedVariance">On the held-out rows.</param>
/// <param name="L0">Mean active latents per held-out row.</param>
/// <param name="MeanMaxCosine">Mean over true features of the best decoder cosine (how well every feature was found).</param>
public sealed record ToyAbsorptionResult(string Architecture, IReadOnlyList<ParentAbsorption> Parents, double ExplainedVariance, double L0, double MeanMaxCosine)
{
    /// <summary>Mean absorption over parents.</summary>
    public double MeanAbsorption => Parents.Average(p => p.Absorption);

    /// <summary>Mean over parents of <see cref="ParentAbsorption.ChildDecoderParentCosine"/>.</summary>
    public double MeanChildDecoderParentCosine => Parents.Average(p => p.ChildDecoderParentCosine);
}

/// <summary>Trains a dictionary on the absorption toy and measures absorption against the known hierarchy.</summary>
public static class ToyAbsorptionStudy
{
    /// <summary>
    /// Trains <paramref name="activation"/>'s dictionary (<paramref name="dSae"/> latents, unit-norm decoder as the
    /// architecture says) on <paramref name="trainRows"/> rows of <paramref name="toy"/>, then measures absorption and
    /// recovery on 16,384 fresh rows. Same arguments, same numbers.
    /// </summary>
    public static ToyAbsorptionResult Run(AbsorptionToy toy, SaeActivation activation, int dSae, int steps = 3000, int trainRows = 65_536,
        int batch = 1024, float learningRate = 3e-3f, int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(toy);
        ArgumentNullException.ThrowIfNull(activation);
        toy.Validate();
        int n = toy.Features, d = toy.DModel;
        var directions = toy.Directions(seed);
        var train = toy.Embed(toy.SampleFeatures(trainRows, new Random(seed + 1)), trainRows, directions);
        var sae = new SparseDictionary(SaeShape.Sae(d, dSae), activation);
        sae.Initialize(seed + 2, decoderNorm: 1f);
        var trainer = new SaeTrainer(sae, new SaeTrainingOptions
        {
            Steps = steps, BatchSize = batch, LearningRate = learningRate, Seed = seed + 3, DeadWindowTokens = 20 * batch,
            BDecInit = BDecInit.Zeros,
        });
        trainer.Train(train);

        const int testRows = 16_384;
        var truth = toy.SampleFeatures(testRows, new Random(seed + 4));
        var x = toy.Embed(truth, testRows, directions);
        var acts = sae.Encode(x, testRows);
        var recon = new float[testRows * d];
        sae.Decode(acts, x, testRows, recon);
        double err = 0, total = 0;
        var mean = new double[d];
        for (int r = 0; r < testRows; r++) for (int j = 0; j < d; j++) mean[j] += x[r * d + j] / (double)testRows;
        for (int i = 0; i < x.Length; i++) { double e = recon[i] - x[i]; err += e * e; double c = x[i] - mean[i % d]; total += c * c; }
        double l0 = acts.Count(a => a != 0) / (double)testRows;

        // decoder cosines to every true direction [features, d_sae]
        var cos = new double[n * dSae];
        for (int f = 0; f < dSae; f++)
        {
            var w = sae.P.WDec.AsSpan(f * d, d);
            double wn = 0;
            for (int j = 0; j < d; j++) wn += w[j] * (double)w[j];
            wn = Math.Sqrt(wn);
            for (int i = 0; i < n; i++)
            {
                double dot = 0;
                for (int j = 0; j < d; j++) dot += w[j] * directions[i * d + j];
                cos[i * dSae + f] = wn > 0 ? dot / wn : 0;
            }
        }
        int Best(int feature) => Enumerable.Range(0, dSae).MaxBy(f => cos[feature * dSae + f]);
        double meanMax = Enumerable.Range(0, n).Average(i => cos[i * dSae + Best(i)]);

        var parents = new List<ParentAbsorption>();
        for (int p = 0; p < toy.Parents; p++)
        {
            int latent = Best(toy.Parent(p));
            int alone = 0, aloneFired = 0, withChild = 0, withChildFired = 0;
            for (int r = 0; r < testRows; r++)
            {
                if (truth[r * n + toy.Parent(p)] == 0) continue;
                bool child = Enumerable.Range(0, toy.ChildrenPerParent).Any(c => truth[r * n + toy.Child(p, c)] != 0);
                bool fired = acts[r * dSae + latent] > 0;
                if (child) { withChild++; if (fired) withChildFired++; }
                else { alone++; if (fired) aloneFired++; }
            }
            double childCos = Enumerable.Range(0, toy.ChildrenPerParent)
                .Select(c => Best(toy.Child(p, c)))
                .Average(f => cos[toy.Parent(p) * dSae + f]);
            parents.Add(new ParentAbsorption(p, latent, cos[toy.Parent(p) * dSae + latent],
                alone == 0 ? double.NaN : aloneFired / (double)alone, withChild == 0 ? double.NaN : withChildFired / (double)withChild, childCos));
        }
        return new ToyAbsorptionResult(activation.Architecture, parents, total > 0 ? 1 - err / total : double.NaN, l0, meanMax);
    }
}
