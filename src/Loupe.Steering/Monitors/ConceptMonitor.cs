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
    /// <summary>
    /// Openings the model continues greedily to show the monitor its own ordinary generations, read as a live monitor reads
    /// them (<see cref="ConceptMonitor.Watch"/>); null or empty: no calibration. Texts written by people and short generations
    /// read differently (a generation's mean covers a few dozen tokens of the model's own style), so a threshold set only on
    /// the concept's texts can flag ordinary generations; calibration raises it until at most
    /// <see cref="MaxFalsePositiveRate"/> of these generations cross it.
    /// </summary>
    public IReadOnlyList<string>? CalibrationOpenings { get; init; }
    /// <summary>Tokens generated per calibration opening (use the length the monitor will watch).</summary>
    public int CalibrationTokens { get; init; } = 24;
    /// <summary>
    /// The largest false-positive rate allowed on the model's ordinary generations: of the calibration generations, and of a
    /// normal distribution fitted to their readings (the only estimate of rates below 1 / their number).
    /// </summary>
    public double MaxFalsePositiveRate { get; init; } = 0.01;
}

/// <summary>
/// A concept monitor: a direction of the residual stream that separates texts expressing a concept from texts that do
/// not (difference of token-averaged means, <see cref="PersonaVectors"/>, layer chosen by cross-validated AUROC), and a
/// threshold on a text's mean projection set for a chosen recall on the training texts — raised, when calibration openings
/// are given, until at most a chosen share of the model's own ordinary generations cross it. Its quality is reported on the
/// held-out texts: AUROC, the recall the threshold reaches there and its false-positive rate. Saved in the persona-vector
/// file format (so anything that reads persona vectors, e.g. the OpenAI endpoint's monitors, reads it) with the
/// monitor's figures in the metadata; its <see cref="PersonaVector.Threshold"/> is the recall threshold.
/// </summary>
/// <param name="Name">What the monitor watches for (e.g. <c>sadness</c>).</param>
/// <param name="Direction">The direction, hook, layer and threshold.</param>
/// <param name="TargetRecall">The recall the threshold was set for.</param>
/// <param name="TrainRecall">Recall on the training texts (≥ the target up to ties, unless calibration raised the threshold).</param>
/// <param name="TrainFalsePositiveRate">False-positive rate on the training texts.</param>
/// <param name="HeldOutRecall">Recall on the held-out texts (NaN when none were held out).</param>
/// <param name="HeldOutFalsePositiveRate">False-positive rate on the held-out texts (NaN when none were held out).</param>
/// <param name="HeldOutAuroc">AUROC of the projection on the held-out texts (NaN when none were held out).</param>
public sealed record ConceptMonitor(string Name, PersonaVector Direction, double TargetRecall, double TrainRecall, double TrainFalsePositiveRate,
    double HeldOutRecall, double HeldOutFalsePositiveRate, double HeldOutAuroc)
{
    /// <summary>The model's own generations the threshold was calibrated on (0: not calibrated).</summary>
    public int CalibrationGenerations { get; init; }
    /// <summary>Share of the calibration generations the threshold flags (NaN when not calibrated).</summary>
    public double CalibrationFalsePositiveRate { get; init; } = double.NaN;
    /// <summary>The largest calibration false-positive rate allowed (NaN when not calibrated).</summary>
    public double MaxFalsePositiveRate { get; init; } = double.NaN;
    /// <summary>The threshold set for <see cref="TargetRecall"/> on the training texts, before calibration raised it.</summary>
    public double RecallThreshold { get; init; } = double.NaN;
    /// <summary>The calibration generations' readings (mean projection of each generation, as a live monitor reads it).</summary>
    public IReadOnlyList<double> CalibrationReadings { get; init; } = [];

    /// <summary>The format tag in the file's metadata.</summary>
    public const string Kind = "loupe-concept-monitor";

    /// <summary>Trains a monitor on texts expressing the concept (<paramref name="positive"/>) and texts that do not.</summary>
    /// <exception cref="InputError">A set has fewer than two texts, a text is blank, the layer is outside the model, or the recall is not in (0, 1].</exception>
    public static ConceptMonitor Train(HookedTransformer model, string name, IReadOnlyList<string> positive, IReadOnlyList<string> negative, ConceptMonitorOptions? options = null)
    {
        options ??= new ConceptMonitorOptions();
        if (!(options.Recall > 0 && options.Recall <= 1)) throw InputError.Expected("concept monitor", "recall", "a number in (0, 1]", options.Recall);
        if (!(options.MaxFalsePositiveRate >= 0 && options.MaxFalsePositiveRate <= 1)) throw InputError.Expected("concept monitor", "maximum false-positive rate", "a number in [0, 1]", options.MaxFalsePositiveRate);
        var openings = options.CalibrationOpenings?.Where(o => !string.IsNullOrWhiteSpace(o)).ToArray() ?? [];
        if (openings.Length > 0 && options.CalibrationTokens < 2) throw InputError.Expected("concept monitor", "calibration tokens", "at least 2", options.CalibrationTokens);
        if (openings.Length > 0 && model.Tokenizer is null) throw new InputError("concept monitor calibration needs a model with a tokenizer (the openings are text)");
        var persona = PersonaVectors.Extract(model, positive, negative, new PersonaOptions { Layer = options.Layer, HeldOutFraction = options.HeldOutFraction });
        double recallThreshold = ThresholdForRecall(persona.TrainPositive, options.Recall);
        double threshold = recallThreshold;
        double[] calibration = [];
        if (openings.Length > 0)
        {
            var unit = new PersonaVector(persona.HookName, persona.Layer, persona.Vector, 0);
            calibration = openings.Select(o => ReadLive(model, unit, model.Tokenizer!.Encode(o), options.CalibrationTokens)).ToArray();
            threshold = Math.Max(threshold, ThresholdForFalsePositiveRate(calibration, options.MaxFalsePositiveRate));
        }
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
            persona.HeldOutAuroc)
        {
            CalibrationGenerations = calibration.Length,
            CalibrationFalsePositiveRate = calibration.Length > 0 ? Above(calibration, threshold) : double.NaN,
            MaxFalsePositiveRate = calibration.Length > 0 ? options.MaxFalsePositiveRate : double.NaN,
            RecallThreshold = recallThreshold,
            CalibrationReadings = calibration,
        };
    }

    /// <summary>
    /// The smallest threshold that flags at most <paramref name="maxRate"/> of the calibration readings, and at most that
    /// rate of a normal distribution fitted to them: n generations resolve a false-positive rate only down to 1/n, so for
    /// the rare false alarms a deployed monitor needs the fitted tail sets the threshold (mean + z·sd), and the empirical
    /// quantile guards against a tail heavier than normal.
    /// </summary>
    static double ThresholdForFalsePositiveRate(IReadOnlyList<double> readings, double maxRate)
    {
        var sorted = readings.OrderByDescending(x => x).ToArray();
        int allowed = (int)Math.Floor(maxRate * sorted.Length + 1e-9);
        double empirical = allowed >= sorted.Length ? double.NegativeInfinity : sorted[allowed];
        if (sorted.Length < 2 || maxRate <= 0 || maxRate >= 1) return maxRate <= 0 && sorted.Length >= 2 ? sorted[0] : empirical;
        double mean = sorted.Average();
        double sd = Math.Sqrt(sorted.Sum(x => (x - mean) * (x - mean)) / (sorted.Length - 1));
        return Math.Max(empirical, mean + NormalQuantile(1 - maxRate) * sd);
    }

    /// <summary>The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9).</summary>
    internal static double NormalQuantile(double p)
    {
        if (!(p > 0 && p < 1)) throw new ArgumentOutOfRangeException(nameof(p), p, "a probability in (0, 1)");
        double[] a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00];
        double[] b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01];
        double[] c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00];
        double[] d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00];
        const double low = 0.02425;
        if (p < low)
        {
            double q = Math.Sqrt(-2 * Math.Log(p));
            return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
        }
        if (p > 1 - low) return -NormalQuantile(1 - p);
        double r = p - 0.5, t = r * r;
        return (((((a[0] * t + a[1]) * t + a[2]) * t + a[3]) * t + a[4]) * t + a[5]) * r / (((((b[0] * t + b[1]) * t + b[2]) * t + b[3]) * t + b[4]) * t + 1);
    }

    /// <summary>A greedy generation of <paramref name="tokens"/> tokens from <paramref name="prompt"/>, read as <see cref="Watch"/> reads it.</summary>
    static double ReadLive(HookedTransformer model, PersonaVector direction, int[] prompt, int tokens)
    {
        var probe = new ConceptMonitor("calibration", direction, 1, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        var options = new Loupe.Models.Hooks.RunOptions();
        var live = probe.Watch(options);
        model.Generate([prompt], new Loupe.Models.Generation.GenerationOptions(MaxNewTokens: tokens, Temperature: 0, StopAtEos: false), options);
        return live.Mean;
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
            int d = Direction.Vector.Length;
            // One row per batch entry: this step's single position; the monitor follows the first row. On a device the
            // projection is computed there and only the reading (one float) comes back.
            if (act.IsHost) live.Add(Direction.Project(act.Span[..d]));
            else
            {
                var backend = DeviceActivations.BackendOf(act, context);
                var row = new Loupe.Tensors.Tensor(act.Storage.Slice(0, d), 1, d);
                live.Add(DeviceActivations.Projections(backend, row, 1, Direction.DeviceUnit.On(backend))[0]);
            }
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
            ["threshold_rule"] = CalibrationGenerations > 0
                ? "largest threshold on the mean projection keeping target_recall of the training concept texts above it, raised until at most max_false_positive_rate of the model's own calibration generations, and of a normal fitted to their readings, cross it"
                : "largest threshold on the mean projection keeping target_recall of the training concept texts above it",
        };
        if (CalibrationGenerations > 0)
        {
            metadata["calibration_generations"] = CalibrationGenerations.ToString(CultureInfo.InvariantCulture);
            metadata["calibration_false_positive_rate"] = F(CalibrationFalsePositiveRate);
            metadata["max_false_positive_rate"] = F(MaxFalsePositiveRate);
            metadata["recall_threshold"] = F(RecallThreshold);
        }
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
        double Num(string key) => PersonaVector.MetadataNumber(file.Metadata, key, path);
        return new ConceptMonitor(file.Metadata.GetValueOrDefault("concept") ?? "", direction, Num("target_recall"), Num("train_recall"),
            Num("train_false_positive_rate"), Num("held_out_recall"), Num("held_out_false_positive_rate"), direction.HeldOutAuroc)
        {
            CalibrationGenerations = !file.Metadata.TryGetValue("calibration_generations", out var generations) ? 0
                : int.TryParse(generations, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= 0 ? n
                : throw InputError.Expected(path, "metadata 'calibration_generations'", "a count ≥ 0", generations),
            CalibrationFalsePositiveRate = Num("calibration_false_positive_rate"),
            MaxFalsePositiveRate = Num("max_false_positive_rate"),
            RecallThreshold = file.Metadata.ContainsKey("recall_threshold") ? Num("recall_threshold") : direction.Threshold,
        };
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

