using System.Globalization;
using Loupe.Models;
using Loupe.Models.Loading;

namespace Loupe.Steering.Monitors;

/// <summary>How a concept monitor is trained.</summary>
public sealed record ConceptMonitorOptions
{
    /// <summary>The share of the concept's texts the threshold must catch (on the training texts).</summary>
    public double Recall { get; init; } = 0.9;
    /// <summary>The layer read; null picks the one that best separates held-out texts (cross-validated AUROC).</summary>
    public int? Layer { get; init; }
    /// <summary>Share of each set held out (folds for the layer choice; the last fold measures recall and false positives).</summary>
    public double HeldOutFraction { get; init; } = 0.25;
}

/// <summary>
/// A concept monitor: a direction of the residual stream that separates texts expressing a concept from texts that do
/// not (difference of token-averaged means, <see cref="PersonaVectors"/>, layer chosen by cross-validated AUROC), and a
/// threshold on a text's mean projection set for a chosen recall on the training texts. Its quality is reported on the
/// held-out texts: AUROC, the recall the threshold reaches there and its false-positive rate. Saved in the persona-vector
/// file format (so anything that reads persona vectors, e.g. the OpenAI endpoint's monitors, reads it) with the
/// monitor's figures in the metadata; its <see cref="PersonaVector.Threshold"/> is the recall threshold.
/// </summary>
/// <param name="Name">What the monitor watches for (e.g. <c>sadness</c>).</param>
/// <param name="Direction">The direction, hook, layer and threshold.</param>
/// <param name="TargetRecall">The recall the threshold was set for.</param>
/// <param name="TrainRecall">Recall on the training texts (≥ the target, up to ties).</param>
/// <param name="TrainFalsePositiveRate">False-positive rate on the training texts.</param>
/// <param name="HeldOutRecall">Recall on the held-out texts (NaN when none were held out).</param>
/// <param name="HeldOutFalsePositiveRate">False-positive rate on the held-out texts (NaN when none were held out).</param>
/// <param name="HeldOutAuroc">AUROC of the projection on the held-out texts (NaN when none were held out).</param>
public sealed record ConceptMonitor(string Name, PersonaVector Direction, double TargetRecall, double TrainRecall, double TrainFalsePositiveRate,
    double HeldOutRecall, double HeldOutFalsePositiveRate, double HeldOutAuroc)
{
    /// <summary>The format tag in the file's metadata.</summary>
    public const string Kind = "loupe-concept-monitor";

    /// <summary>Trains a monitor on texts expressing the concept (<paramref name="positive"/>) and texts that do not.</summary>
    /// <exception cref="InputError">A set has fewer than two texts, a text is blank, the layer is outside the model, or the recall is not in (0, 1].</exception>
    public static ConceptMonitor Train(HookedTransformer model, string name, IReadOnlyList<string> positive, IReadOnlyList<string> negative, ConceptMonitorOptions? options = null)
    {
        options ??= new ConceptMonitorOptions();
        if (!(options.Recall > 0 && options.Recall <= 1)) throw InputError.Expected("concept monitor", "recall", "a number in (0, 1]", options.Recall);
        var persona = PersonaVectors.Extract(model, positive, negative, new PersonaOptions { Layer = options.Layer, HeldOutFraction = options.HeldOutFraction });
        double threshold = ThresholdForRecall(persona.TrainPositive, options.Recall);
        var direction = new PersonaVector(persona.HookName, persona.Layer, persona.Vector, threshold)
        {
            MidpointThreshold = persona.MidpointThreshold,
            TrainAccuracy = Separation.Accuracy(persona.TrainPositive, persona.TrainNegative, threshold),
            HeldOutAccuracy = persona.HeldOutPositive.Length > 0 ? Separation.Accuracy(persona.HeldOutPositive, persona.HeldOutNegative, threshold) : double.NaN,
            HeldOutAuroc = persona.HeldOutAuroc,
            Layers = persona.Layers,
            LayerVectors = persona.LayerVectors,
            TrainPositive = persona.TrainPositive,
            TrainNegative = persona.TrainNegative,
            HeldOutPositive = persona.HeldOutPositive,
            HeldOutNegative = persona.HeldOutNegative,
        };
        return new ConceptMonitor(name, direction, options.Recall,
            Above(persona.TrainPositive, threshold), Above(persona.TrainNegative, threshold),
            persona.HeldOutPositive.Length > 0 ? Above(persona.HeldOutPositive, threshold) : double.NaN,
            persona.HeldOutNegative.Length > 0 ? Above(persona.HeldOutNegative, threshold) : double.NaN,
            persona.HeldOutAuroc);
    }

    /// <summary>
    /// The largest threshold that keeps at least <paramref name="recall"/> of the concept texts above it (the monitor flags
    /// a mean projection strictly above the threshold): just below the ⌈recall·n⌉-th largest training score.
    /// </summary>
    static double ThresholdForRecall(IReadOnlyList<double> positives, double recall)
    {
        var sorted = positives.OrderByDescending(x => x).ToArray();
        int keep = Math.Clamp((int)Math.Ceiling(recall * sorted.Length), 1, sorted.Length);
        double kth = sorted[keep - 1];
        return kth - Math.Max(1e-9, Math.Abs(kth) * 1e-9);
    }

    static double Above(IReadOnlyList<double> scores, double threshold) => scores.Count == 0 ? double.NaN : (double)scores.Count(s => s > threshold) / scores.Count;

    /// <summary>Reads a sequence and says whether it expresses the concept (mean projection over non-BOS tokens above the threshold).</summary>
    public PersonaReading Read(HookedTransformer model, int[] tokens) => Direction.Monitor(model, tokens);

    /// <summary>
    /// Reads a generation: the projections of <paramref name="prompt"/> followed by <paramref name="generated"/>, and the verdict
    /// on the mean over the generated tokens only (what the model wrote, not what it was given).
    /// </summary>
    /// <exception cref="ArgumentException">Nothing was generated.</exception>
    public PersonaReading ReadGeneration(HookedTransformer model, int[] prompt, int[] generated)
    {
        if (generated.Length == 0) throw new ArgumentException("nothing was generated to read", nameof(generated));
        var all = Direction.Monitor(model, [.. prompt, .. generated]);
        double mean = all.Projections.Skip(prompt.Length).Average();
        return all with { Mean = mean, ExpressesTrait = mean > Direction.Threshold };
    }

    /// <summary>
    /// Watches a generation live: adds a hook at the monitor's hook point to <paramref name="options"/> that records, at every
    /// generation step after the prompt pass, the projection of the token being fed back (the last generated token) — read in
    /// the same forward pass the model generates with, so edits made earlier in that pass (steering) are seen. Add steering
    /// hooks at the same point before calling this, so the monitor reads after them.
    /// </summary>
    public LiveMonitor Watch(Loupe.Models.Hooks.RunOptions options)
    {
        var live = new LiveMonitor(this);
        options.AddHook(Direction.HookName, (act, context) =>
        {
            if (context.GenerationStep < 1) return null;
            var host = act.ToCpu().Span;
            int d = Direction.Vector.Length;
            // One row per batch entry: this step's single position; the monitor follows the first row.
            live.Add(Direction.Project(host[..d]));
            return null;
        });
        return live;
    }

    /// <summary>Writes the monitor (the persona-vector format plus the monitor's metadata).</summary>
    public void Save(string path, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        string F(double x) => x.ToString("R", CultureInfo.InvariantCulture);
        var metadata = new Dictionary<string, string>(extraMetadata ?? new Dictionary<string, string>())
        {
            ["kind"] = Kind,
            ["concept"] = Name,
            ["target_recall"] = F(TargetRecall),
            ["train_recall"] = F(TrainRecall),
            ["train_false_positive_rate"] = F(TrainFalsePositiveRate),
            ["held_out_recall"] = F(HeldOutRecall),
            ["held_out_false_positive_rate"] = F(HeldOutFalsePositiveRate),
            ["threshold_rule"] = "largest threshold on the mean projection keeping target_recall of the training concept texts above it",
        };
        Direction.Save(path, metadata);
    }

    /// <summary>Reads a monitor written by <see cref="Save"/>.</summary>
    /// <exception cref="InputError">The file is not a concept monitor (no persona tensor, or no monitor metadata).</exception>
    public static ConceptMonitor Load(string path)
    {
        var direction = PersonaVector.Load(path);
        using var file = SafeTensorsFile.Open(path);
        if (file.Metadata.GetValueOrDefault("kind") != Kind)
            throw new InputError($"{path} is a persona vector but not a concept monitor (no kind = {Kind} in its metadata); train one with `loupe monitor train`");
        double Num(string key) => double.TryParse(file.Metadata.GetValueOrDefault(key), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : double.NaN;
        return new ConceptMonitor(file.Metadata.GetValueOrDefault("concept") ?? "", direction, Num("target_recall"), Num("train_recall"),
            Num("train_false_positive_rate"), Num("held_out_recall"), Num("held_out_false_positive_rate"), direction.HeldOutAuroc);
    }
}

/// <summary>A monitor's live readings of one generation (see <see cref="ConceptMonitor.Watch"/>).</summary>
public sealed class LiveMonitor(ConceptMonitor monitor)
{
    readonly List<double> _projections = [];

    /// <summary>The monitor.</summary>
    public ConceptMonitor Monitor => monitor;
    /// <summary>Per generated token fed back, its projection onto the monitor's direction.</summary>
    public IReadOnlyList<double> Projections => _projections;
    /// <summary>The mean projection so far (NaN before any token): the quantity the threshold was set on.</summary>
    public double Mean => _projections.Count == 0 ? double.NaN : _projections.Average();
    /// <summary>Whether the mean so far is above the threshold.</summary>
    public bool Flagged => _projections.Count > 0 && Mean > monitor.Direction.Threshold;

    internal void Add(double projection) => _projections.Add(projection);
}

