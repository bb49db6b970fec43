using Loupe.Probes.Experiment;
using Loupe.Probes.Harvest;

namespace Loupe.Probes.Tests;

/// <summary>Splitting by sentence, the baseline, and per-hook training on synthetic activations.</summary>
public class ProbeTrainerTests
{
    [Fact]
    public void SplitHoldsOutWholeSentencesReproduciblyBySeed()
    {
        var a = SentenceSplit.Create(100, 0.2, seed: 5);
        var b = SentenceSplit.Create(100, 0.2, seed: 5);
        var c = SentenceSplit.Create(100, 0.2, seed: 6);
        Assert.Equal(a.HeldOut, b.HeldOut);
        Assert.NotEqual(a.HeldOut, c.HeldOut);
        Assert.Equal(20, a.HeldOutCount);
        Assert.Equal(80, a.TrainCount);
        Assert.Equal(1, SentenceSplit.Create(2, 0.01, 0).HeldOutCount); // at least one each side
        Assert.Equal(1, SentenceSplit.Create(2, 0.99, 0).TrainCount);
        Assert.Throws<InputError>(() => SentenceSplit.Create(1, 0.2, 0));
        Assert.Throws<InputError>(() => SentenceSplit.Create(10, 1.0, 0));
        Assert.Throws<InputError>(() => SentenceSplit.Create(10, double.NaN, 0));
    }

    /// <summary>
    /// 3 classes over 200 "sentences" of 5 tokens. Hook "signal" holds the class in two features
    /// plus noise; hook "noise" holds only noise. Class 0 is the most frequent.
    /// </summary>
    internal static LabelledActivations Synthetic()
    {
        var r = new Random(3);
        const int sentences = 200, perSentence = 5, d = 4;
        int n = sentences * perSentence;
        var labels = new int[n];
        var sentenceOf = new int[n];
        var signal = new float[n * d];
        var noise = new float[n * d];
        for (int i = 0; i < n; i++)
        {
            labels[i] = r.NextDouble() < 0.5 ? 0 : 1 + r.Next(2);
            sentenceOf[i] = i / perSentence;
            for (int j = 0; j < d; j++)
            {
                signal[i * d + j] = (float)(r.NextDouble() - 0.5) + (j < 2 && labels[i] == j + 1 ? 3f : 0f);
                noise[i * d + j] = (float)(r.NextDouble() - 0.5);
            }
        }
        return LabelledActivations.FromArrays(["noise", "signal"], [noise, signal], labels, sentenceOf, ["A", "B", "C"]);
    }

    [Fact]
    public void ProbesFindTheHookThatHoldsTheLabel()
    {
        var data = Synthetic();
        var run = ProbeTrainer.Run(data, new ProbeOptions(Seed: 1));
        Assert.Equal(["noise", "signal"], run.Hooks.Select(h => h.Hook));
        Assert.Equal("signal", run.Best.Hook);
        var signal = run.Hooks[1];
        Assert.True(signal.Logistic!.HeldOutAccuracy > 0.97, $"logistic {signal.Logistic.HeldOutAccuracy}");
        Assert.True(signal.DiffMeans!.HeldOutAccuracy > 0.97, $"diff-of-means {signal.DiffMeans.HeldOutAccuracy}");
        // On noise a probe can do no better than the majority class (up to chance fluctuation).
        Assert.True(run.Hooks[0].Logistic!.HeldOutAccuracy < run.BaselineAccuracy + 0.06);

        Assert.Equal(0, run.MajorityClass);
        Assert.Equal(data.Count, run.TrainTokens + run.HeldOutTokens);
        Assert.Equal(40 * 5, run.HeldOutTokens); // 20% of 200 sentences, 5 tokens each
        Assert.Equal(run.HeldOutCounts[0] / (double)run.HeldOutTokens, run.BaselineAccuracy);
        // Confusion rows are true classes: they sum to the held-out class counts.
        Assert.Equal(run.HeldOutCounts, signal.Logistic.Confusion.Select(row => row.Sum()));
        Assert.Equal(signal.Logistic.HeldOutAccuracy, Enumerable.Range(0, 3).Sum(k => signal.Logistic.Confusion[k][k]) / (double)run.HeldOutTokens);
    }

    [Fact]
    public void ResultsDoNotDependOnParallelismAndProbeChoiceIsHonoured()
    {
        var data = Synthetic();
        var parallel = ProbeTrainer.Run(data, new ProbeOptions(Seed: 2));
        var serial = ProbeTrainer.Run(data, new ProbeOptions(Seed: 2, MaxParallelism: 1));
        Assert.Equal(parallel.Hooks.Select(h => (h.Logistic!.HeldOutAccuracy, h.DiffMeans!.HeldOutAccuracy)),
                     serial.Hooks.Select(h => (h.Logistic!.HeldOutAccuracy, h.DiffMeans!.HeldOutAccuracy)));
        var only = ProbeTrainer.Run(data, new ProbeOptions(ProbeKinds.DiffMeans, Seed: 2));
        Assert.All(only.Hooks, h => Assert.Null(h.Logistic));
        Assert.Equal("signal", only.Best.Hook);
        Assert.Throws<InputError>(() => ProbeTrainer.Run(data, new ProbeOptions((ProbeKinds)0)));
        Assert.Throws<InputError>(() => ProbeTrainer.Run(data, new ProbeOptions(MaxParallelism: 0)));
    }

    [Fact]
    public void LabelledActivationsRejectInconsistentArrays()
    {
        Assert.Throws<ArgumentException>(() => LabelledActivations.FromArrays(["h"], [new float[5]], [0, 1], [0, 1]));     // 5 values, 2 rows
        Assert.Throws<ArgumentException>(() => LabelledActivations.FromArrays(["h"], [new float[4]], [0, 12], [0, 1]));    // label outside the 12 tags
        Assert.Throws<ArgumentException>(() => LabelledActivations.FromArrays(["h"], [new float[4]], [0, 1], [0]));        // sentence per label
        Assert.Throws<ArgumentException>(() => LabelledActivations.FromArrays(["h", "g"], [new float[4]], [0, 1], [0, 1])); // names per set
    }
}
