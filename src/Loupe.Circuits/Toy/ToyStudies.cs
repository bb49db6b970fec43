using Loupe.Dictionaries.Sae;

namespace Loupe.Circuits.Toy;

/// <summary>The phase of the second feature in a 2-feature, 1-dimension toy model.</summary>
public enum ToyPhase
{
    /// <summary>Only feature 1 has the dimension; feature 2 is dropped.</summary>
    NotRepresented,
    /// <summary>Feature 2 has the dimension to itself; feature 1 is dropped.</summary>
    Dedicated,
    /// <summary>Both share the one dimension (antipodal): superposition.</summary>
    Superposition,
}

/// <summary>One cell of the phase diagram.</summary>
/// <param name="Density">Feature density (1 − sparsity).</param>
/// <param name="RelativeImportance">Importance of feature 2 relative to feature 1.</param>
/// <param name="Norm1">‖W₁‖.</param>
/// <param name="Norm2">‖W₂‖.</param>
/// <param name="Cosine">cos(W₁, W₂) (−1: antipodal), 0 when one is dropped.</param>
/// <param name="Phase">The phase read from the norms.</param>
public sealed record ToyPhaseCell(double Density, double RelativeImportance, double Norm1, double Norm2, double Cosine, ToyPhase Phase);

/// <summary>How well a sparse dictionary trained on a toy model's hidden activations finds its true feature directions.</summary>
/// <param name="MaxCosine">Per true feature: the largest cosine between its direction and a decoder row.</param>
/// <param name="Represented">Per true feature: whether the toy model represents it (‖Wᵢ‖ &gt; 0.5).</param>
/// <param name="MeanMaxCosine">Mean of <see cref="MaxCosine"/> over the represented features (MMCS).</param>
/// <param name="ExplainedVariance">The dictionary's explained variance on the hidden activations at the end of training.</param>
public sealed record ToySaeRecovery(double[] MaxCosine, bool[] Represented, double MeanMaxCosine, double ExplainedVariance);

/// <summary>The studies of Elhage et al. (2022) on toy models, and a check of Loupe's SAEs against features known by construction.</summary>
public static class ToyStudies
{
    /// <summary>
    /// The 2-feature, 1-dimension phase diagram over density × the second feature's relative importance
    /// (the paper's figure: dense features keep only the more important one; sparse ones share the dimension).
    /// </summary>
    /// <remarks>Each cell keeps the best of <paramref name="restarts"/> initialisations (lowest loss): a model can stall in
    /// a local minimum where two same-signed directions would have to cross zero to become antipodal.</remarks>
    public static IReadOnlyList<ToyPhaseCell> PhaseDiagram(IReadOnlyList<double> densities, IReadOnlyList<double> relativeImportances, int steps = 4000, int seed = 0, int restarts = 4)
    {
        var cells = new List<ToyPhaseCell>();
        foreach (double density in densities)
            foreach (double rel in relativeImportances)
            {
                var toy = Enumerable.Range(0, Math.Max(1, restarts))
                    .Select(r => ToyModel.Train(new ToySettings(2, 1, density, [1.0, rel], steps, Seed: seed * 1000 + r)))
                    .MinBy(t => t.Loss)!;
                double n1 = toy.Norm(0), n2 = toy.Norm(1);
                double cos = n1 > 1e-9 && n2 > 1e-9 ? toy.W[0] * toy.W[1] / (n1 * n2) : 0;
                var phase = n1 > 0.5 && n2 > 0.5 ? ToyPhase.Superposition : n2 > 0.5 ? ToyPhase.Dedicated : ToyPhase.NotRepresented;
                cells.Add(new ToyPhaseCell(density, rel, n1, n2, cos, phase));
            }
        return cells;
    }

    /// <summary>
    /// Trains a sparse dictionary (Loupe's trainer) on a toy model's hidden activations and measures how well its
    /// decoder rows find the true feature directions (columns of W), which are known by construction.
    /// </summary>
    public static ToySaeRecovery SaeRecovery(ToyModel toy, SaeActivation activation, int dSae, int samples = 65_536, int steps = 2000, int seed = 1)
    {
        int n = toy.Settings.Features, m = toy.Settings.Hidden;
        var x = ToyModel.Sample(n, toy.Settings.Density, samples, new Random(seed));
        var h = toy.HiddenOf(x, samples);
        var sae = new SparseDictionary(SaeShape.Sae(m, dSae), activation);
        sae.Initialize(seed, decoderNorm: 1f);
        var trainer = new SaeTrainer(sae, new SaeTrainingOptions { Steps = steps, BatchSize = 1024, LearningRate = 3e-3f, Seed = seed, DeadWindowTokens = 50_000 });
        var metrics = trainer.Train(h);
        var maxCos = new double[n];
        var represented = new bool[n];
        for (int i = 0; i < n; i++)
        {
            var d = toy.Direction(i);
            double dn = Math.Sqrt(d.Sum(v => v * v));
            represented[i] = dn > 0.5;
            for (int f = 0; f < dSae; f++)
            {
                double dot = 0, rn = 0;
                for (int r = 0; r < m; r++) { double w = sae.P.WDec[f * m + r]; dot += w * d[r]; rn += w * w; }
                if (rn > 0 && dn > 0) maxCos[i] = Math.Max(maxCos[i], dot / Math.Sqrt(rn) / dn);
            }
        }
        double mmcs = Enumerable.Range(0, n).Where(i => represented[i]).Select(i => maxCos[i]).DefaultIfEmpty(double.NaN).Average();
        return new ToySaeRecovery(maxCos, represented, mmcs, metrics[^1].ExplainedVariance);
    }
}
