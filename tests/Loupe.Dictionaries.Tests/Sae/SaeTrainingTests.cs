using System.Diagnostics;
using Loupe.Dictionaries.Sae;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// Synthetic ground truth: 64 random unit directions in d_in = 32; each row is a 3-sparse positive
/// combination of them. A trained dictionary should contain every direction as some decoder row.
/// </summary>
public class SaeTrainingTests(ITestOutputHelper output)
{
    const int DIn = 32, NFeatures = 64, Active = 3, Rows = 8192;

    internal static (float[] Data, float[] Directions) Synthetic(int seed)
    {
        var rng = new Random(seed);
        var dirs = new float[NFeatures * DIn];   // [n_features, d_in], unit rows
        for (int f = 0; f < NFeatures; f++)
        {
            double n = 0;
            for (int j = 0; j < DIn; j++) { dirs[f * DIn + j] = SparseDictionary.Gaussian(rng); n += dirs[f * DIn + j] * dirs[f * DIn + j]; }
            for (int j = 0; j < DIn; j++) dirs[f * DIn + j] /= (float)Math.Sqrt(n);
        }
        var data = new float[Rows * DIn];        // [rows, d_in]
        for (int r = 0; r < Rows; r++)
        {
            var chosen = new HashSet<int>();
            while (chosen.Count < Active) chosen.Add(rng.Next(NFeatures));
            foreach (int f in chosen)
            {
                float mag = 0.5f + (float)rng.NextDouble();
                for (int j = 0; j < DIn; j++) data[r * DIn + j] += mag * dirs[f * DIn + j];
            }
        }
        return (data, dirs);
    }

    /// <summary>Mean over ground-truth directions of the max cosine with any decoder row.</summary>
    internal static double MeanMaxCosine(SparseDictionary d, float[] dirs)
    {
        int dSae = d.Shape.DSae;
        double total = 0;
        for (int f = 0; f < NFeatures; f++)
        {
            double best = -1;
            for (int i = 0; i < dSae; i++)
            {
                double dot = 0, nn = 0;
                for (int j = 0; j < DIn; j++) { dot += dirs[f * DIn + j] * d.P.WDec[i * DIn + j]; nn += d.P.WDec[i * DIn + j] * d.P.WDec[i * DIn + j]; }
                if (nn > 0) best = Math.Max(best, dot / Math.Sqrt(nn));
            }
            total += best;
        }
        return total / NFeatures;
    }

    static (SparseDictionary Dict, SaeTrainingOptions Options) Setup(string arch)
    {
        var shape = SaeShape.Sae(DIn, 128);
        var o = new SaeTrainingOptions { Steps = 3000, BatchSize = 64, LearningRate = 3e-3f, LrWarmupSteps = 100, Seed = 7 };
        return arch switch
        {
            "standard" => (new SparseDictionary(shape, new ReluActivation()), o with { SparsityCoefficient = 0.3f, SparsityWarmupSteps = 300 }),
            "topk" => (new SparseDictionary(shape, new TopKActivation(Active)), o),
            "batchtopk" => (new SparseDictionary(shape, new BatchTopKActivation(Active)), o),
            _ => (new SparseDictionary(shape, new JumpReluActivation(0.05f)), o with { SparsityCoefficient = 0.1f, SparsityWarmupSteps = 300 }),
        };
    }

    [Theory]
    [InlineData("standard")]
    [InlineData("topk")]
    [InlineData("batchtopk")]
    [InlineData("jumprelu")]
    public void RecoversGroundTruthDirections(string arch)
    {
        var (data, dirs) = Synthetic(11);
        var (dict, o) = Setup(arch);
        dict.Initialize(seed: 5, initThreshold: 0.1f);
        var sw = Stopwatch.StartNew();
        var m = new SaeTrainer(dict, o).Train(data);
        sw.Stop();
        double cos = MeanMaxCosine(dict, dirs);
        var last = m[^1];
        output.WriteLine($"{arch}: mean max cos {cos:F3}, mse {last.Mse:F4}, L0 {last.L0:F2}, EV {last.ExplainedVariance:F3}, dead {last.DeadFraction:F2}, {o.Steps / sw.Elapsed.TotalSeconds:F0} steps/s");
        Assert.True(cos >= 0.9, $"{arch}: mean max cosine {cos:F3} < 0.9");
        // Inference mode (BatchTopK: the learned threshold) keeps roughly the trained sparsity.
        var acts = dict.Encode(data.AsSpan(0, 512 * DIn), 512);
        double l0 = acts.Count(a => a != 0) / 512.0;
        output.WriteLine($"{arch}: inference L0 {l0:F2}");
        Assert.InRange(l0, 1, 12);
    }
}
