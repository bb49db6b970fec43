using Loupe.Probes.Corpus;

namespace Loupe.Probes.Harvest;

/// <summary>
/// Activation vectors of labelled tokens, one set per hook point. Example i is one labelled token;
/// examples are ordered by sentence (the order of the sentence list), then by position.
/// </summary>
public sealed class LabelledActivations
{
    readonly float[][] _features;

    internal LabelledActivations(IReadOnlyList<string> hooks, int[] widths, float[][] features, int[] labels, int[] sentences, int[] positions, int sentenceCount)
    {
        Hooks = hooks;
        Widths = widths;
        _features = features;
        Labels = labels;
        Sentences = sentences;
        Positions = positions;
        SentenceCount = sentenceCount;
    }

    /// <summary>Builds a set from arrays already in memory (synthetic data, or activations from elsewhere).</summary>
    /// <param name="hooks">A name per feature set.</param>
    /// <param name="features">Per hook, <c>[count, width]</c> row-major.</param>
    /// <param name="labels">Class per example <c>[count]</c>, in <c>[0, classes)</c>.</param>
    /// <param name="sentences">Sentence (split unit) per example <c>[count]</c>, in <c>[0, sentenceCount)</c>.</param>
    /// <param name="classNames">Names of the classes (default: the universal tags).</param>
    /// <exception cref="ArgumentException">Sizes disagree, or a label or sentence index is out of range.</exception>
    public static LabelledActivations FromArrays(IReadOnlyList<string> hooks, IReadOnlyList<float[]> features, int[] labels, int[] sentences, IReadOnlyList<string>? classNames = null)
    {
        if (hooks.Count == 0 || hooks.Count != features.Count) throw new ArgumentException($"{hooks.Count} hook names for {features.Count} feature sets", nameof(hooks));
        int count = labels.Length;
        if (count == 0) throw new ArgumentException("there are no labelled examples", nameof(labels));
        if (sentences.Length != count) throw new ArgumentException($"{sentences.Length} sentence indices for {count} labels", nameof(sentences));
        var widths = new int[hooks.Count];
        for (int h = 0; h < hooks.Count; h++)
        {
            if (features[h].Length == 0 || features[h].Length % count != 0)
                throw new ArgumentException($"hook '{hooks[h]}': {features[h].Length} values do not make {count} rows", nameof(features));
            widths[h] = features[h].Length / count;
        }
        var result = new LabelledActivations(hooks.ToArray(), widths, features.ToArray(), labels, sentences, new int[count], sentences.Length == 0 ? 0 : sentences.Max() + 1);
        if (classNames is not null) result.ClassNames = classNames;
        int classes = result.ClassNames.Count;
        for (int i = 0; i < count; i++)
        {
            if ((uint)labels[i] >= (uint)classes) throw new ArgumentException($"label {labels[i]} of example {i} is outside [0, {classes})", nameof(labels));
            if (sentences[i] < 0) throw new ArgumentException($"sentence index {sentences[i]} of example {i} is negative", nameof(sentences));
        }
        return result;
    }

    /// <summary>The hook points, in forward order.</summary>
    public IReadOnlyList<string> Hooks { get; }
    /// <summary>Feature width per hook (d_model for the residual stream).</summary>
    public int[] Widths { get; }
    /// <summary>Number of examples (labelled tokens).</summary>
    public int Count => Labels.Length;
    /// <summary>Class per example <c>[count]</c>: an index into <see cref="ClassNames"/>.</summary>
    public int[] Labels { get; }
    /// <summary>Sentence of each example <c>[count]</c> (index into the harvested sentence list).</summary>
    public int[] Sentences { get; }
    /// <summary>Token position of each example within its sentence <c>[count]</c>.</summary>
    public int[] Positions { get; }
    /// <summary>Number of sentences (the unit a train/held-out split divides).</summary>
    public int SentenceCount { get; }
    /// <summary>The class names a label indexes.</summary>
    public IReadOnlyList<string> ClassNames { get; private set; } = UniversalTagset.Tags;

    /// <summary>Activations of hook <paramref name="hook"/>: <c>[count, width]</c> row-major.</summary>
    public float[] Features(int hook) => _features[hook];
}
