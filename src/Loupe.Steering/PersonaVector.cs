using System.Globalization;
using System.Numerics.Tensors;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;

namespace Loupe.Steering;

/// <summary>The monitor's reading of one sequence.</summary>
/// <param name="Tokens">The sequence read.</param>
/// <param name="Projections">Per position, the activation's projection onto the unit persona direction <c>[pos]</c>.</param>
/// <param name="Mean">Mean projection over non-BOS positions: the quantity the threshold was calibrated on.</param>
/// <param name="Threshold">The persona's calibrated threshold.</param>
/// <param name="ExpressesTrait">Whether <paramref name="Mean"/> exceeds the calibrated threshold.</param>
public sealed record PersonaReading(int[] Tokens, double[] Projections, double Mean, double Threshold, bool ExpressesTrait);

/// <summary>
/// A persona direction (Chen et al. 2025, "Persona vectors"): the difference of mean residual
/// activations between texts that express a trait and texts that express its opposite, at one
/// layer, with a threshold for monitoring and an edit for steering.
/// </summary>
/// <remarks>
/// Projections are onto the unit direction v̂ = v/‖v‖ of the raw token-averaged activation.
/// Steering adds <c>coefficient · v</c> (the raw mean difference): coefficient 1 moves an average
/// "opposite" text's activation to an average "trait" text's, along v.
/// </remarks>
public sealed class PersonaVector
{
    readonly float[] _unit;

    /// <exception cref="InputError">The vector is empty or zero.</exception>
    public PersonaVector(string hookName, int layer, float[] vector, double threshold)
    {
        float norm = TensorPrimitives.Norm(vector);
        if (vector.Length == 0 || !(norm > 0) || !float.IsFinite(norm))
            throw new InputError($"the persona vector at '{hookName}' must be finite and non-zero (‖v‖ = {norm})");
        HookName = hookName;
        Layer = layer;
        Vector = vector;
        Norm = norm;
        _unit = new float[vector.Length];
        TensorPrimitives.Divide(vector, norm, _unit);
        DeviceUnit = new DeviceVector(_unit);
        Threshold = threshold;
    }

    public string HookName { get; }
    public int Layer { get; }
    /// <summary>mean(trait) − mean(opposite) of token-averaged activations at <see cref="HookName"/> <c>[d_model]</c>.</summary>
    public float[] Vector { get; }
    public float Norm { get; }
    /// <summary>v̂ <c>[d_model]</c>.</summary>
    public ReadOnlySpan<float> UnitDirection => _unit;
    /// <summary>v̂ on the devices it is read on (uploaded once per backend).</summary>
    internal DeviceVector DeviceUnit { get; }
    /// <summary>Monitoring threshold on the mean projection (max accuracy on the training texts).</summary>
    public double Threshold { get; }
    /// <summary>(mean₊ + mean₋)/2 of the training projections, the simpler threshold, for reference.</summary>
    public double MidpointThreshold { get; init; } = double.NaN;
    public double TrainAccuracy { get; init; } = double.NaN;
    /// <summary>Accuracy of <see cref="Threshold"/> on the held-out texts (NaN when none were held out).</summary>
    public double HeldOutAccuracy { get; init; } = double.NaN;
    public double HeldOutAuroc { get; init; } = double.NaN;
    /// <summary>Per layer, the separation that chose <see cref="Layer"/> (empty when loaded from a file).</summary>
    public IReadOnlyList<LayerSeparation> Layers { get; init; } = [];
    /// <summary>Every layer's direction <c>[n_layers][d_model]</c> (empty when loaded from a file).</summary>
    public IReadOnlyList<float[]> LayerVectors { get; init; } = [];
    /// <summary>Mean projections of the texts at <see cref="Layer"/>, by split and class.</summary>
    public double[] TrainPositive { get; init; } = [];
    public double[] TrainNegative { get; init; } = [];
    public double[] HeldOutPositive { get; init; } = [];
    public double[] HeldOutNegative { get; init; } = [];

    /// <summary><c>x · v̂</c> for one activation <c>[d_model]</c>.</summary>
    public double Project(ReadOnlySpan<float> activation) => TensorPrimitives.Dot(activation, _unit);

    /// <summary>Per-token projections of a sequence onto the direction, and the verdict against <see cref="Threshold"/>.</summary>
    /// <exception cref="InputError">The sequence is empty or the model has no such hook.</exception>
    public PersonaReading Monitor(HookedTransformer model, int[] tokens)
    {
        var act = TextActivations.PerTokenActivation(model, tokens, HookName); // [1, pos, d]
        int d = act.Dim(2);
        // On a device the projections are one product there; only the per-token readings come back.
        var projections = act.IsHost
            ? Enumerable.Range(0, tokens.Length).Select(t => Project(act.Span.Slice(t * d, d))).ToArray()
            : DeviceActivations.Projections(model.Backend, act.Reshape(tokens.Length, d), tokens.Length, DeviceUnit.On(model.Backend)).Select(x => (double)x).ToArray();
        int first = tokens.Length > 1 && tokens[0] == model.Config.BosTokenId ? 1 : 0;
        double mean = projections.Skip(first).Average();
        return new PersonaReading(tokens, projections, mean, Threshold, mean > Threshold);
    }

    /// <summary>Steering along the persona: adds <c>coefficient · v</c> at <see cref="HookName"/> (negative to suppress the trait).</summary>
    public SteeringVector Steer(float coefficient, SteeringPositions? positions = null) => new(HookName, Vector, coefficient, positions);

    /// <summary>
    /// Writes the vector (<c>persona</c> <c>[d_model]</c>, and <c>persona.layers</c> <c>[n_layers, d_model]</c>
    /// when known) with metadata: hook, layer, norm, threshold, accuracies.
    /// </summary>
    /// <exception cref="IOException">The file cannot be written.</exception>
    public void Save(string path, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)> { ("persona", [Vector.Length], Vector) };
        if (LayerVectors.Count > 0)
            tensors.Add(("persona.layers", [LayerVectors.Count, Vector.Length], LayerVectors.SelectMany(v => v).ToArray()));
        var metadata = new Dictionary<string, string>(extraMetadata ?? new Dictionary<string, string>())
        {
            ["format"] = "loupe-persona-vector",
            ["hook"] = HookName,
            [HookNames.SemanticsKey] = HookNames.Semantics,
            ["layer"] = Layer.ToString(CultureInfo.InvariantCulture),
            ["norm"] = Norm.ToString("R", CultureInfo.InvariantCulture),
            ["threshold"] = Threshold.ToString("R", CultureInfo.InvariantCulture),
            ["reduction"] = "mean_over_non_bos_tokens",
            ["train_accuracy"] = TrainAccuracy.ToString("R", CultureInfo.InvariantCulture),
            ["held_out_accuracy"] = HeldOutAccuracy.ToString("R", CultureInfo.InvariantCulture),
            ["held_out_auroc"] = HeldOutAuroc.ToString("R", CultureInfo.InvariantCulture),
        };
        OutputFiles.EnsureReplaceable(path); // never swap a device, folder or link for the output file
        SafeTensorsWriter.Write(path, tensors, metadata);
    }

    /// <summary>Reads a vector written by <see cref="Save"/>.</summary>
    /// <exception cref="InputError">The file lacks the <c>persona</c> tensor or its hook/layer/threshold metadata.</exception>
    public static PersonaVector Load(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        if (!file.Contains("persona")) throw new InputError($"{path} has no 'persona' tensor; it is not a persona vector file");
        HookNames.RequireKnownSemantics(file.Metadata.GetValueOrDefault(HookNames.SemanticsKey), path);
        string Meta(string key) => file.Metadata.TryGetValue(key, out var v) ? v : throw new InputError($"{path} lacks the '{key}' metadata of a persona vector");
        double Num(string key) => MetadataNumber(file.Metadata, key, path);
        int layer = int.TryParse(Meta("layer"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int l) && l >= 0 ? l
            : throw InputError.Expected(path, "metadata 'layer'", "a layer index ≥ 0", Meta("layer"));
        double threshold = double.TryParse(Meta("threshold"), NumberStyles.Float, CultureInfo.InvariantCulture, out double t) && double.IsFinite(t) ? t
            : throw InputError.Expected(path, "metadata 'threshold'", "a finite number", Meta("threshold"));
        if (string.IsNullOrWhiteSpace(Meta("hook"))) throw InputError.Expected(path, "metadata 'hook'", "a hook point name", Meta("hook"));
        return new PersonaVector(Meta("hook"), layer, file.GetFloat32("persona").ToArray(), threshold)
        {
            TrainAccuracy = Num("train_accuracy"),
            HeldOutAccuracy = Num("held_out_accuracy"),
            HeldOutAuroc = Num("held_out_auroc"),
        };
    }

    /// <summary>
    /// A statistic from a vector file's metadata: NaN when absent (or written as "NaN", as undefined statistics are);
    /// anything else that is not a number is a damaged file, not a statistic to show as n/a.
    /// </summary>
    internal static double MetadataNumber(IReadOnlyDictionary<string, string> metadata, string key, string path) =>
        !metadata.TryGetValue(key, out var text) ? double.NaN
        : double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v
        : throw InputError.Expected(path, $"metadata '{key}'", "a number", text);
}
