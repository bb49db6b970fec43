using Loupe.Circuits.Fourier;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Fourier;

/// <summary>
/// The grokking model of Nanda et al. (2023): it is right on every pair, its logits live on a few key
/// frequencies — keeping only those directions keeps the loss low, removing them destroys it — and its
/// embedding is sparse in the Fourier basis on the same frequencies.
/// </summary>
public sealed class ModularFourierTests
{
    const string ModelPath = "models/grokking-modadd-p113-main";

    [RequiresSharedFact(ModelPath)]
    public void Finds_the_key_frequencies_of_the_grokking_model()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(ModelPath));
        var report = ModularFourier.Analyze(model, 113, 113);
        Assert.Equal(1.0, report.Accuracy);
        Assert.InRange(report.KeyFrequencies.Length, 3, 8);
        // Keeping only the key directions keeps the model right; removing them leaves it worse than chance (ln 113 = 4.7).
        Assert.True(report.RestrictedLoss < 0.01, $"restricted {report.RestrictedLoss}, loss {report.Loss}");
        Assert.True(report.ExcludedLoss > Math.Log(113), $"excluded {report.ExcludedLoss}");
        // Read independently from the token embedding, the strongest frequencies are the same set.
        var embeddingTop = Enumerable.Range(1, 56).OrderByDescending(k => report.EmbeddingNorms[k]).Take(report.KeyFrequencies.Length);
        Assert.Equal(report.KeyFrequencies.Order(), embeddingTop.Order());
        Assert.True(report.NeuronKeyFraction > 0.5, $"neurons: {report.NeuronKeyFraction}");
        Assert.All(report.AttentionKeyFraction, share => Assert.InRange(share, 0.5, 1.0));
    }

    [Fact]
    public void Refuses_what_is_not_modular_addition()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")));
        Assert.Throws<InputError>(() => { ModularFourier.Analyze(model, 114, 0); });
        Assert.Throws<InputError>(() => { ModularFourier.Analyze(model, 1001, 0); });
        Assert.Throws<InputError>(() => { ModularFourier.Analyze(model, 113, 100000); });
        Assert.Contains("--equals: token 5 is one of the numbers 0..112", Assert.Throws<InputError>(() => { ModularFourier.Analyze(model, 113, 5); }).Message); // found by the cli fuzzer
    }
}
