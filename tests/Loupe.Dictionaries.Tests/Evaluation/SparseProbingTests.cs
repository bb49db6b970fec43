using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Probes.Corpus;
using Loupe.Probes.Harvest;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Evaluation;

/// <summary>
/// k-sparse probing: a concept spread over every neuron but isolated by one latent is read by that latent alone (k = 1) far
/// better than by any one neuron, as the method is meant to show; classes without signal sit at chance; the experiment runs
/// end to end on the real TinyStories model and the Brown corpus.
/// </summary>
public class SparseProbingTests(ITestOutputHelper output)
{
    const int DIn = 8, DSae = 4;

    // Class A adds 3·v to the activation, v = (1, …, 1)/√8: 1.06 per neuron against noise of 1, 3 along v.
    static (SparseDictionary Dictionary, LabelledActivations Data) Planted(int seed)
    {
        var random = new Random(seed);
        int sentences = 400, perSentence = 10, n = sentences * perSentence;
        var x = new float[n * DIn];
        var labels = new int[n];
        var sentenceOf = new int[n];
        float v = 1f / MathF.Sqrt(DIn);
        for (int i = 0; i < n; i++)
        {
            double u = random.NextDouble();
            labels[i] = u < 0.4 ? 0 : u < 0.75 ? 1 : 2;
            sentenceOf[i] = i / perSentence;
            for (int d = 0; d < DIn; d++) x[i * DIn + d] = Gaussian(random) + (labels[i] == 0 ? 3f * v : 0f);
        }
        var dictionary = new SparseDictionary(SaeShape.Sae(DIn, DSae, applyBDecToInput: false), new ReluActivation());
        // Latent 2 reads v (W_enc is [d_in, d_sae]); the others read single neurons.
        for (int d = 0; d < DIn; d++) dictionary.P.WEnc[d * DSae + 2] = v;
        dictionary.P.WEnc[0 * DSae + 0] = 1f;
        dictionary.P.WEnc[3 * DSae + 1] = 1f;
        dictionary.P.WEnc[5 * DSae + 3] = 1f;
        for (int j = 0; j < DSae; j++) dictionary.P.BEnc[j] = 1f; // relu(· + 1): most values pass
        return (dictionary, LabelledActivations.FromArrays(["blocks.0.hook_resid_post"], [x], labels, sentenceOf, ["A", "B", "C"]));
    }

    static float Gaussian(Random random) =>
        (float)(Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));

    [Fact]
    public void One_latent_that_isolates_a_spread_concept_beats_any_one_neuron()
    {
        var (dictionary, data) = Planted(seed: 1);
        var result = SparseProbing.Probe(dictionary, data, 0, new SparseProbingSettings { Ks = [1, 2, 8], Seed = 3 });
        Assert.Equal(["A", "B", "C"], result.Classes.Select(c => c.Name).Order());
        var a = result.Classes.Single(c => c.Name == "A");
        output.WriteLine($"A: latents {string.Join(", ", a.LatentAccuracy.Select(v => v.ToString("F3")))}; neurons {string.Join(", ", a.NeuronAccuracy.Select(v => v.ToString("F3")))}; dense {a.DenseAccuracy:F3}; top latents {string.Join(",", a.TopLatents)}");
        Assert.Equal(2, a.TopLatents[0]);
        Assert.InRange(a.LatentAccuracy[0], 0.88, 1.0);   // ≈ Φ(1.5) = 0.93
        Assert.InRange(a.NeuronAccuracy[0], 0.55, 0.78);  // ≈ Φ(0.53) = 0.70
        Assert.InRange(a.DenseAccuracy, 0.88, 1.0);       // the dense probe finds v too
        Assert.InRange(a.NeuronAccuracy[2], 0.88, 1.0);   // every neuron together: as good as dense
        foreach (var c in result.Classes.Where(c => c.Name != "A"))
        {
            // B and C carry no signal of their own, only "not A"'s half: a one-vs-rest probe reads that.
            Assert.InRange(c.DenseAccuracy, 0.4, 0.8);
        }
        Assert.Equal(result.Classes.Average(c => c.LatentAccuracy[0]), result.MeanLatentAccuracy[0], 1e-12);
    }

    [Fact]
    public void The_same_seed_gives_the_same_result_and_bad_settings_are_refused()
    {
        var (dictionary, data) = Planted(seed: 2);
        var settings = new SparseProbingSettings { Ks = [1, 4], Seed = 5 };
        var first = SparseProbing.Probe(dictionary, data, 0, settings);
        var second = SparseProbing.Probe(dictionary, data, 0, settings);
        Assert.Equal(first.Classes.Select(c => c.LatentAccuracy), second.Classes.Select(c => c.LatentAccuracy));
        Assert.Contains("ascending", Assert.Throws<InputError>(() => SparseProbing.Probe(dictionary, data, 0, settings with { Ks = [4, 1] })).Message);
        Assert.Contains("--held-out", Assert.Throws<InputError>(() => SparseProbing.Probe(dictionary, data, 0, settings with { HeldOutFraction = 1.5 })).Message);
        Assert.Contains("--min-examples", Assert.Throws<InputError>(() => SparseProbing.Probe(dictionary, data, 0, settings with { MinExamples = 100_000 })).Message);
        var narrow = new SparseDictionary(SaeShape.Sae(DIn + 1, DSae, applyBDecToInput: false), new ReluActivation());
        Assert.Contains("d_in = 9", Assert.Throws<InputError>(() => SparseProbing.Probe(narrow, data, 0, settings)).Message);
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void Runs_on_TinyStories_and_the_Brown_corpus()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var dictionary = new SparseDictionary(SaeShape.Sae(model.Config.DModel, 256), new TopKActivation(8));
        dictionary.Initialize(seed: 1);
        var result = SparseProbing.Run(model, dictionary, "blocks.2.hook_resid_post", BrownCorpus.Open(SharedData.Require("datasets/brown-corpus")),
            new SparseProbingSettings { MaxSentences = 300, Ks = [1, 5, 20], MaxClasses = 4 });
        output.WriteLine($"{result.Tokens} tokens of {result.Sentences} sentences; mean latents {string.Join(", ", result.MeanLatentAccuracy.Select(v => v.ToString("F3")))}, neurons {string.Join(", ", result.MeanNeuronAccuracy.Select(v => v.ToString("F3")))}, dense {result.MeanDenseAccuracy:F3}");
        Assert.Equal(4, result.Classes.Count);
        Assert.InRange(result.MeanDenseAccuracy, 0.75, 1.0); // part of speech is linearly readable at block 2 (docs: 0.865 multi-class)
        foreach (var c in result.Classes)
            foreach (var acc in c.LatentAccuracy.Concat(c.NeuronAccuracy)) Assert.InRange(acc, 0.0, 1.0);
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void Genre_probing_pools_passages_of_whole_files_and_a_linear_positive_dictionary_matches_the_neurons()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var corpus = BrownCorpus.Open(SharedData.Require("datasets/brown-corpus"));
        int d = model.Config.DModel;
        // Latents = x + 50: positive, so ReLU passes them and the pooled latents are the pooled activation + 50. Latent and
        // neuron rankings, and standardized probes on them, must then agree exactly.
        var shifted = new SparseDictionary(SaeShape.Sae(d, d, applyBDecToInput: false), new ReluActivation());
        for (int j = 0; j < d; j++) { shifted.P.WEnc[j * d + j] = 1f; shifted.P.BEnc[j] = 50f; }
        var settings = new SparseProbingSettings
        {
            Task = SparseProbingTask.Genre, Categories = ["news", "romance", "hobbies"], MaxSentences = 240, PassageTokens = 64,
            Ks = [1, 4, 16], MinExamples = 10, Seed = 4,
        };
        var result = SparseProbing.Run(model, shifted, "blocks.3.hook_resid_post", corpus, settings);
        output.WriteLine($"{result.Tokens} tokens of {result.Sentences} passages; mean latents {string.Join(", ", result.MeanLatentAccuracy.Select(v => v.ToString("F3")))}, neurons {string.Join(", ", result.MeanNeuronAccuracy.Select(v => v.ToString("F3")))}, dense {result.MeanDenseAccuracy:F3}");
        Assert.Equal(SparseProbingTask.Genre, result.Task);
        Assert.Equal(240, result.Sentences);
        Assert.InRange(result.Tokens, 240 * 32, 240 * 64);              // each passage holds 32–64 tokens, BOS apart
        Assert.Equal(["hobbies", "news", "romance"], result.Classes.Select(c => c.Name).Order());
        foreach (var c in result.Classes)
        {
            output.WriteLine($"{c.Name}: {c.TrainPositives}/{c.HeldOutPositives} positives; latents {string.Join(", ", c.LatentAccuracy.Select(v => v.ToString("F3")))}; dense {c.DenseAccuracy:F3}");
            Assert.Equal(c.NeuronAccuracy, c.LatentAccuracy);
            Assert.InRange(c.DenseAccuracy, 0.0, 1.0);
        }
        // A genre is readable from the mean residual stream, even of a model trained on children's stories (0.77 at k = 16;
        // the dense probe overfits ~150 passages: 0.65).
        Assert.InRange(result.MeanNeuronAccuracy[^1], 0.65, 1.0);

        // A real (random) TopK dictionary runs too, and the same seed gives the same numbers.
        var topk = new SparseDictionary(SaeShape.Sae(d, 128), new TopKActivation(8));
        topk.Initialize(seed: 3);
        var once = SparseProbing.Run(model, topk, "blocks.3.hook_resid_post", corpus, settings with { MaxSentences = 160, MinExamples = 5 });
        var twice = SparseProbing.Run(model, topk, "blocks.3.hook_resid_post", corpus, settings with { MaxSentences = 160, MinExamples = 5 });
        Assert.Equal(once.MeanLatentAccuracy, twice.MeanLatentAccuracy);
    }
}
