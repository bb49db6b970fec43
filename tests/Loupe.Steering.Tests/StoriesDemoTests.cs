using System.Diagnostics;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Steering.Tests;

/// <summary>
/// The happy-vs-sad persona on the real stories260K model: the monitor separates held-out texts,
/// and steering along the vector moves the happy − sad word score of sampled stories.
/// </summary>
public class StoriesDemoTests(ITestOutputHelper output)
{
    const string Prompt = "Once upon a time, there was a little girl named Lily. One day, she";

    [RequiresSharedFact("models/stories260K")]
    public void HappyPersonaSeparatesHeldOutTextsAndSteersGeneratedStories()
    {
        var model = TestModels.Stories;
        var clock = Stopwatch.StartNew();
        var persona = PersonaVectors.Extract(model, DemoData.HappyStories, DemoData.SadStories);
        output.WriteLine($"persona: {persona.HookName}, ‖v‖ = {persona.Norm:F3}, threshold {persona.Threshold:F3}");
        foreach (var s in persona.Layers)
            output.WriteLine($"  layer {s.Layer}: held-out AUROC {s.HeldOutAuroc:F3}, held-out d {s.HeldOutEffectSize:F2}, held-out acc {s.HeldOutAccuracy:P0}");
        output.WriteLine($"held-out happy projections: {string.Join(" ", persona.HeldOutPositive.Select(p => p.ToString("F2")))}");
        output.WriteLine($"held-out sad projections:   {string.Join(" ", persona.HeldOutNegative.Select(p => p.ToString("F2")))}");
        output.WriteLine($"held-out accuracy {persona.HeldOutAccuracy:P1}, AUROC {persona.HeldOutAuroc:F3}, train accuracy {persona.TrainAccuracy:P1}");
        Assert.True(persona.HeldOutAccuracy > 0.75, $"held-out accuracy {persona.HeldOutAccuracy}");
        Assert.True(persona.HeldOutAuroc > 0.75, $"held-out AUROC {persona.HeldOutAuroc}");

        var score = DemoData.HappySadScore;
        var prompt = model.Tokenizer!.Encode(Prompt);
        float[] coefficients = [-4, 0, 4];
        var points = CoefficientSweep.Run(model, prompt, coefficients, c => persona.Steer(c), (_, text) => score.Score(text),
            new SweepOptions(MaxNewTokens: 48, Temperature: 0.9f, TopK: 40, Seeds: 8));
        output.WriteLine("coeff  happy−sad mean ± sd  log-prob/token");
        foreach (var p in points) output.WriteLine($"{p.Coefficient,5}  {p.Mean,8:F2} ± {p.Sd:F2}  {p.MeanLogProb,10:F2}   e.g. {p.Samples[0].Text.ReplaceLineEndings(" ")}");
        output.WriteLine($"{clock.ElapsedMilliseconds} ms");
        Assert.True(points[^1].Mean > points[0].Mean, $"score at +4 ({points[^1].Mean}) should exceed the score at −4 ({points[0].Mean})");
    }
}
