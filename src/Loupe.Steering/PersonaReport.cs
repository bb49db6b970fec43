using Loupe.Models;

namespace Loupe.Steering;

/// <summary>One sampled continuation of a persona sweep, with its scores.</summary>
/// <param name="Seed">The sampling seed.</param>
/// <param name="Text">The continuation.</param>
/// <param name="Score">The sweep's score of it.</param>
/// <param name="TraitWords">Trait words in it (0 without word lists).</param>
/// <param name="OppositeWords">Opposite words in it (0 without word lists).</param>
/// <param name="Projection">Its tokens' mean projection on the persona direction (<see cref="PersonaReport.TraitProjection"/>).</param>
/// <param name="LogProb">Mean log-probability per token.</param>
public sealed record PersonaSampleRow(int Seed, string Text, double Score, int TraitWords, int OppositeWords, double Projection, double LogProb);

/// <summary>One coefficient of a persona sweep: the means over its samples.</summary>
/// <param name="Coefficient">The coefficient.</param>
/// <param name="Mean">Mean score.</param>
/// <param name="Sd">Standard deviation of the score.</param>
/// <param name="TraitWords">Mean trait words.</param>
/// <param name="OppositeWords">Mean opposite words.</param>
/// <param name="Projection">Mean projection on the persona direction.</param>
/// <param name="LogProb">Mean log-probability per token.</param>
/// <param name="Samples">The samples.</param>
public sealed record PersonaSweepRow(float Coefficient, double Mean, double Sd, double TraitWords, double OppositeWords, double Projection, double LogProb, IReadOnlyList<PersonaSampleRow> Samples)
{
    /// <summary>The row of one sweep point, every sample scored by words (when given) and by its projection on the persona.</summary>
    /// <param name="p">The sweep point.</param>
    /// <param name="words">Trait and opposite word lists, or null.</param>
    /// <param name="m">The model.</param>
    /// <param name="persona">The persona vector.</param>
    /// <param name="prompt">The prompt's ids.</param>
    public static PersonaSweepRow From(SweepPoint p, WordScore? words, HookedTransformer m, PersonaVector persona, int[] prompt)
    {
        var samples = p.Samples.Select(s =>
        {
            var (trait, opposite) = words?.Count(s.Text) ?? (0, 0);
            return new PersonaSampleRow(s.Seed, s.Text, s.Score, trait, opposite, PersonaReport.TraitProjection(m, persona, prompt, s.Tokens), s.LogProb);
        }).ToArray();
        static double Mean(IEnumerable<double> v) => v.Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average();
        return new PersonaSweepRow(p.Coefficient, p.Mean, p.Sd, Mean(samples.Select(s => (double)s.TraitWords)), Mean(samples.Select(s => (double)s.OppositeWords)),
            Mean(samples.Select(s => s.Projection)), Mean(samples.Select(s => s.LogProb)), samples);
    }
}

/// <summary>
/// Trait scoring and the JSON reports of a persona experiment (persona.json, monitor.json, sweep.json): <c>loupe persona</c>
/// writes them and <c>loupe serve</c>'s Steering page scores its continuations with the same code.
/// </summary>
public static class PersonaReport
{
    /// <summary>Mean projection of the continuation's tokens on the persona direction (read without steering); NaN for an empty continuation.</summary>
    /// <param name="m">The model.</param>
    /// <param name="persona">The persona vector.</param>
    /// <param name="prompt">The prompt's ids.</param>
    /// <param name="continuation">The continuation's ids.</param>
    public static double TraitProjection(HookedTransformer m, PersonaVector persona, int[] prompt, int[] continuation)
    {
        if (continuation.Length == 0) return double.NaN;
        var all = prompt.Concat(continuation).Take(m.Config.NCtx).ToArray();
        return persona.Monitor(m, all).Projections.Skip(prompt.Length).Average();
    }

    /// <summary>persona.json: the vector's hook, layer, norm, thresholds, accuracies, per-layer separation and projections.</summary>
    /// <param name="persona">The extracted persona vector.</param>
    /// <param name="model">The model folder.</param>
    /// <param name="layerChosen">Whether the layer was chosen automatically.</param>
    public static object Summary(PersonaVector persona, string? model, bool layerChosen) => new
    {
        Model = model,
        persona.HookName,
        persona.Layer,
        persona.Norm,
        persona.Threshold,
        persona.MidpointThreshold,
        persona.TrainAccuracy,
        persona.HeldOutAccuracy,
        persona.HeldOutAuroc,
        LayerChoice = layerChosen ? "auto: highest cross-validated held-out AUROC, ties by held-out gap / pooled sd" : "given",
        Layers = persona.Layers,
        Projections = new { persona.TrainPositive, persona.TrainNegative, persona.HeldOutPositive, persona.HeldOutNegative },
    };

    /// <summary>monitor.json: a prompt's per-token projections and the verdict.</summary>
    /// <param name="m">The model (needs a tokenizer).</param>
    /// <param name="persona">The persona vector.</param>
    /// <param name="text">The prompt text.</param>
    /// <param name="reading">The prompt's reading (<see cref="PersonaVector.Monitor"/>).</param>
    public static object Monitor(HookedTransformer m, PersonaVector persona, string text, PersonaReading reading) => new
    {
        Prompt = text,
        persona.HookName,
        reading.Threshold,
        reading.Mean,
        reading.ExpressesTrait,
        Tokens = reading.Tokens.Select((id, i) => new { Position = i, Id = id, Text = m.Tokenizer!.Decode([id]), Projection = reading.Projections[i] }).ToArray(),
    };

    /// <summary>sweep.json: the coefficient sweep's settings, trend and rows.</summary>
    /// <param name="persona">The persona vector.</param>
    /// <param name="text">The prompt text.</param>
    /// <param name="positions">Where the vector was added.</param>
    /// <param name="byWords">Whether samples were scored by word lists (else by projection).</param>
    /// <param name="options">The sweep's settings.</param>
    /// <param name="trend">Spearman of mean score vs coefficient.</param>
    /// <param name="rows">The rows.</param>
    /// <param name="norm">‖v‖ as the report prints it.</param>
    public static object Sweep(PersonaVector persona, string text, SteeringPositions positions, bool byWords, SweepOptions options, double trend,
        IReadOnlyList<PersonaSweepRow> rows, string norm) => new
    {
        Prompt = text,
        persona.HookName,
        CoefficientUnit = $"coeff × persona vector (raw mean difference, ‖v‖ = {norm}) added at every selected position",
        Positions = positions.ToString(),
        Score = byWords ? "trait words − opposite words in the continuation" : "mean projection of the continuation's tokens on the persona direction",
        options.MaxNewTokens,
        options.Temperature,
        options.TopK,
        options.Seeds,
        Trend = trend,
        Points = rows,
    };
}
