using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Steering.Monitors;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Steering.Tests.Monitors;

/// <summary>
/// A concept monitor (sadness) on stories260K from the sad/happy story sets: held-out AUROC and the false-positive rate at
/// the chosen recall reported; the saved file reads back (also as a persona vector); and the monitor flags generations
/// steered towards the concept at the layer before the one it reads and none of the unsteered ones — its threshold calibrated
/// on the model's own ordinary generations from openings that are neither test prompts nor training openings.
/// </summary>
public class ConceptMonitorTests(ITestOutputHelper output)
{
    static readonly string[] Prompts =
    [
        "Once upon a time, there was a little girl named Lily. One day, she",
        "Tom had a big red ball. He went to the park and",
        "The little dog ran to the tree. It",
        "Mom and Sue went to the shop. They",
        "Ben saw a bird in the sky. He",
        "One day, a cat found a box. The cat",
    ];

    const float Coefficient = 8f;
    const int Layer = 3;
    // A monitor watching every generation must rarely raise a false alarm: 1 in 1,000 of the model's ordinary generations.
    const double MaxFalsePositiveRate = 0.001;

    /// <summary>Openings whose unsteered continuations teach the monitor what the model's ordinary text looks like (none is a test prompt).</summary>
    static readonly string[] TrainingOpenings =
    [
        "Once upon a time, there was a boy named Tim. He", "The sun was bright. Anna and her dad", "A big truck drove down the road. It",
        "Sara had a doll. She", "The fox lived in the woods. One day it", "Jack found a shiny rock. He", "There was a tall tree in the park. Every day",
        "Mia and her brother went to the beach. They", "The old man had a small boat. He", "Lucy liked to paint. She",
        "The bunny hopped into the garden. It", "Sam wanted a cookie. He", "The baby duck walked to the pond. It",
        "Kate and Max built a tower of blocks. They", "The train went fast. The children", "Dad cooked dinner in the kitchen. He",
    ];

    [RequiresSharedFact("models/stories260K")]
    public void SadnessMonitorSeparatesHeldOutStoriesAndFlagsSteeredGenerations()
    {
        var model = TestModels.Stories;
        var greedy = new GenerationOptions(MaxNewTokens: 24, Temperature: 0, StopAtEos: false);
        // Not sad = happy stories, plain ones, and the model's own ordinary continuations: a monitor must tell the concept
        // from everyday text, not only from its opposite.
        var neutral = File.ReadAllLines(SharedData.TestData(Path.Combine("monitors", "neutral.txt"))).Where(l => l.Length > 0);
        var ordinary = TrainingOpenings.Select(t => { var ids = model.Tokenizer!.Encode(t); return model.Tokenizer.Decode([.. ids, .. model.Generate([ids], greedy)[0]], skipSpecialTokens: true); });
        var notSad = DemoData.HappyStories.Concat(neutral).Concat(ordinary).ToArray();
        // Calibration: the model's own greedy continuations of openings none of which is a test prompt or a training opening.
        var openings = File.ReadAllLines(SharedData.TestData(Path.Combine("monitors", "openings.txt"))).Where(l => l.Length > 0).ToArray();
        Assert.Empty(openings.Intersect(Prompts).Concat(openings.Intersect(TrainingOpenings)));
        var monitor = ConceptMonitor.Train(model, "sadness", DemoData.SadStories, notSad, new ConceptMonitorOptions
        {
            Recall = 0.75, Layer = Layer, CalibrationOpenings = openings, CalibrationTokens = greedy.MaxNewTokens, MaxFalsePositiveRate = MaxFalsePositiveRate,
        });
        output.WriteLine($"layer {monitor.Direction.Layer}: held-out AUROC {monitor.HeldOutAuroc:F3}, recall {monitor.HeldOutRecall:F3}, FPR {monitor.HeldOutFalsePositiveRate:F3}; train recall {monitor.TrainRecall:F3}, FPR {monitor.TrainFalsePositiveRate:F3}");
        output.WriteLine($"threshold {monitor.Direction.Threshold:F3} (recall threshold {monitor.RecallThreshold:F3}); calibration: {monitor.CalibrationGenerations} generations, FPR {monitor.CalibrationFalsePositiveRate:F3} (max {monitor.MaxFalsePositiveRate}); readings {string.Join(" ", monitor.CalibrationReadings.Order().Select(r => r.ToString("F2")))}");
        // How the concept's held-out texts rank against the model's own ordinary generations (what a deployed monitor sees).
        output.WriteLine($"held-out sad texts vs calibration generations: AUROC {Separation.Auroc(monitor.Direction.HeldOutPositive, monitor.CalibrationReadings):F3}");
        Assert.Equal(openings.Length, monitor.CalibrationGenerations);
        Assert.InRange(monitor.CalibrationFalsePositiveRate, 0, MaxFalsePositiveRate);
        Assert.True(monitor.Direction.Threshold >= monitor.RecallThreshold);
        Assert.True(monitor.HeldOutAuroc > 0.8, $"held-out AUROC {monitor.HeldOutAuroc}");

        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-monitor").FullName, "sadness.safetensors");
        monitor.Save(path);
        var loaded = ConceptMonitor.Load(path);
        Assert.Equal("sadness", loaded.Name);
        Assert.Equal(monitor.Direction.Threshold, loaded.Direction.Threshold);
        Assert.Equal(monitor.HeldOutFalsePositiveRate, loaded.HeldOutFalsePositiveRate);
        Assert.Equal(monitor.Direction.Threshold, PersonaVector.Load(path).Threshold);

        // Live readings during generation; the steered runs are pushed along the previous layer's sadness direction.
        int steerLayer = Layer - 1;
        var push = new PersonaVector(Loupe.Models.Hooks.HookNames.ResidPost(steerLayer), steerLayer, monitor.Direction.LayerVectors[steerLayer], 0).Steer(Coefficient);
        int steeredFlags = 0, plainFlags = 0;
        List<double> steeredMeans = [], plainMeans = [];
        double lowestSteered = double.PositiveInfinity, highestPlain = double.NegativeInfinity;
        foreach (var text in Prompts)
        {
            var prompt = model.Tokenizer!.Encode(text);
            var plainOptions = new Loupe.Models.Hooks.RunOptions();
            var plainLive = monitor.Watch(plainOptions);
            var plain = model.Generate([prompt], greedy, plainOptions)[0];
            var steeredOptions = new Loupe.Models.Hooks.RunOptions();
            steeredOptions.AddHook(push.HookName, push.Apply);
            var steeredLive = monitor.Watch(steeredOptions);
            var steered = model.Generate([prompt], greedy, steeredOptions)[0];
            // The live reading of an unsteered run is the monitor's reading of the same tokens afterwards (causal model).
            var after = monitor.ReadGeneration(model, prompt, plain);
            Assert.InRange(plainLive.Mean - after.Projections.Skip(prompt.Length).Take(plain.Length - 1).Average(), -1e-4, 1e-4);
            output.WriteLine($"{text[..20]}…: plain {plainLive.Mean:F3} {(plainLive.Flagged ? "FLAG" : "ok")} | steered {steeredLive.Mean:F3} {(steeredLive.Flagged ? "FLAG" : "ok")} (threshold {monitor.Direction.Threshold:F3}): {model.Tokenizer.Decode(steered)}");
            (lowestSteered, highestPlain) = (Math.Min(lowestSteered, steeredLive.Mean), Math.Max(highestPlain, plainLive.Mean));
            steeredMeans.Add(steeredLive.Mean);
            plainMeans.Add(plainLive.Mean);
            if (steeredLive.Flagged) steeredFlags++;
            if (plainLive.Flagged) plainFlags++;
        }
        output.WriteLine($"steered vs unsteered generations: AUROC {Separation.Auroc(steeredMeans, plainMeans):F3}");
        output.WriteLine($"flagged: steered {steeredFlags} of {Prompts.Length}, unsteered {plainFlags} of {Prompts.Length}; lowest steered reading {lowestSteered:F3}, highest unsteered {highestPlain:F3}");
        Assert.Equal(Prompts.Length, steeredFlags);
        Assert.Equal(0, plainFlags);
        Assert.True(lowestSteered > highestPlain + 1, "every steered generation reads well above every unsteered one");
    }

    [Fact]
    public void NormalQuantileMatchesKnownValues()
    {
        foreach (var (p, z) in new[] { (0.5, 0.0), (0.975, 1.959963985), (0.99, 2.326347874), (0.999, 3.090232306), (0.01, -2.326347874) })
            Assert.InRange(ConceptMonitor.NormalQuantile(p), z - 1e-6, z + 1e-6);
    }

    [Fact]
    public void APersonaVectorFileIsNotTakenForAMonitorAndBadRecallIsRefused()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("loupe-monitor").FullName, "persona.safetensors");
        new PersonaVector("blocks.0.hook_resid_post", 0, [1f, 0f, 0f, 0f], 0.5).Save(path);
        var error = Assert.Throws<InputError>(() => ConceptMonitor.Load(path));
        Assert.Contains("not a concept monitor", error.Message);
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        Assert.Throws<InputError>(() => ConceptMonitor.Train(model, "x", ["a", "b"], ["c", "d"], new ConceptMonitorOptions { Recall = 1.5 }));
    }
}
