// A crosscoder (Anthropic, "Sparse Crosscoders for Cross-Layer Features and Model Diffing", 2024): one dictionary of latents
// read from, and written to, several activation sources at once — the same hook in two models (model diffing: a base model
// and its fine-tune) or several layers of one model.
//
// Shape legend: S sources, each of width d; F = d_sae latents; rows = token positions.
//   x_s      [rows, d]     source s's activation, times its input scale c_s (the scale training used; 1 by default)
//   W_enc^s  [d, F]        b_enc [F]           f = act(Σ_s x_s·W_enc^s + b_enc)      (no decoder bias subtracted first)
//   W_dec^s  [F, d]        b_dec^s [d]         x̂_s = f·W_dec^s + b_dec^s             (in the model's units: x̂_s / c_s)
// That is an SAE on the concatenation [x_1 | … | x_S] (d_in = d_out = S·d): W_enc stacks the W_enc^s row-blocks and W_dec
// row i is [W_dec^1[i] | … | W_dec^S[i]]. Loupe holds a crosscoder as exactly that SparseDictionary, so encoding, decoding,
// training and the device paths are the SAE's; what is the crosscoder's own is the source split of every row, its
// sparsity penalty (λ·f_i·Σ_s ‖W_dec^s[i]‖, CrosscoderReluActivation) and the per-source decoder norms model diffing reads.
// A BatchTopK crosscoder's inference rule f_i·n_i > θ (n_i its code normalisation, Σ_s ‖W_dec^s[i]‖ by default) is the
// JumpReLU f_i > θ / n_i, which is how it is held.
using System.Numerics.Tensors;
using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>One activation a crosscoder reads and reconstructs: a hook of one model.</summary>
/// <param name="Model">The model's label ("A", "base", "chat"); the same label for every layer of a one-model crosscoder.</param>
/// <param name="Hook">The TransformerLens hook name (empty when the file does not say; the caller's --hook decides then).</param>
public sealed record CrosscoderSource(string Model, string Hook)
{
    public override string ToString() => Hook.Length == 0 ? Model : $"{Model}:{Hook}";
}

/// <summary>How a BatchTopK crosscoder weighs a latent before comparing it with its threshold (dictionary_learning's CodeNormalization).</summary>
public enum CodeNormalization
{
    /// <summary>Σ_s ‖W_dec^s[i]‖ (the crosscoder's own; the default).</summary>
    Crosscoder,
    /// <summary>‖W_dec[i]‖ of the concatenated decoder row.</summary>
    Sae,
    /// <summary>α_sae·‖W_dec[i]‖ + α_cc·Σ_s ‖W_dec^s[i]‖.</summary>
    Mixed,
    /// <summary>1.</summary>
    None,
}

/// <summary>A crosscoder over <see cref="Sources"/>, held as an SAE on their concatenation (see the file header).</summary>
public sealed class Crosscoder
{
    /// <exception cref="ArgumentException">The dictionary's widths are not S·d, or the sources or scales are not S.</exception>
    public Crosscoder(IReadOnlyList<CrosscoderSource> sources, int width, SparseDictionary dictionary, float[]? inputScales = null)
    {
        ArgumentNullException.ThrowIfNull(sources);
        ArgumentNullException.ThrowIfNull(dictionary);
        if (sources.Count < 2) throw new ArgumentException("a crosscoder reads at least two sources", nameof(sources));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        var s = dictionary.Shape;
        if (s.DIn != sources.Count * width || s.DOut != s.DIn || s.ApplyBDecToInput || s.Skip)
            throw new ArgumentException($"a crosscoder of {sources.Count} sources of width {width} needs d_in = d_out = {sources.Count * width} without b_dec on the input; got {s}", nameof(dictionary));
        if (sources.Distinct().Count() != sources.Count) throw new ArgumentException($"the sources repeat: {string.Join(", ", sources)}", nameof(sources));
        inputScales ??= Enumerable.Repeat(1f, sources.Count).ToArray();
        if (inputScales.Length != sources.Count || inputScales.Any(c => !(c > 0) || !float.IsFinite(c)))
            throw new ArgumentException($"need {sources.Count} positive finite input scales, got [{string.Join(", ", inputScales)}]", nameof(inputScales));
        Sources = sources.ToArray();
        Width = width;
        Dictionary = dictionary;
        InputScales = inputScales;
    }

    /// <summary>What the crosscoder reads and writes, in the order of its weights.</summary>
    public IReadOnlyList<CrosscoderSource> Sources { get; }

    /// <summary>d, each source's width.</summary>
    public int Width { get; }

    /// <summary>F, the number of latents.</summary>
    public int DSae => Dictionary.Shape.DSae;

    /// <summary>The SAE on the concatenated sources that computes it.</summary>
    public SparseDictionary Dictionary { get; }

    /// <summary>c_s: source s is multiplied by it before encoding, its reconstruction divided by it after decoding.</summary>
    public float[] InputScales { get; }

    /// <summary>The architecture the file named ("relu", "batchtopk"); the dictionary computes it (batchtopk as JumpReLU).</summary>
    public string Architecture { get; init; } = "relu";

    /// <summary>BatchTopK: the threshold θ on f_i·n_i, as stored; NaN otherwise.</summary>
    public float BatchTopKThreshold { get; init; } = float.NaN;

    /// <summary>BatchTopK: k of training; 0 otherwise.</summary>
    public int K { get; init; }

    /// <summary>BatchTopK: how latents are weighed against the threshold.</summary>
    public CodeNormalization CodeNormalization { get; init; } = CodeNormalization.Crosscoder;

    /// <summary>Where it was read from and in which layout (for reports).</summary>
    public string Origin { get; init; } = "";

    /// <summary>The distinct model labels of the sources, in order of first appearance.</summary>
    public IReadOnlyList<string> Models => Sources.Select(s => s.Model).Distinct().ToArray();

    /// <summary>Short names of the sources: the model labels when they differ, else the hooks when they differ, else both.</summary>
    public IReadOnlyList<string> SourceLabels() =>
        Sources.Select(s => s.Model).Distinct().Count() == Sources.Count ? Sources.Select(s => s.Model).ToArray()
        : Sources.Select(s => s.Hook).Distinct().Count() == Sources.Count ? Sources.Select(s => s.Hook).ToArray()
        : Sources.Select(s => s.ToString()).ToArray();

    /// <summary>‖W_dec^s[i]‖ for every latent i and source s: [F, S].</summary>
    public float[] DecoderNorms() => SegmentNorms(Dictionary.P.WDec, DSae, Sources.Count, Width);

    /// <summary>‖row i, segment s‖ of a decoder [F, S·d] whose rows are S segments of width d: [F, S].</summary>
    internal static float[] SegmentNorms(float[] wDec, int f, int n, int d)
    {
        int dOut = n * d;
        var norms = new float[(long)f * n];
        RowParallel.For(f, dOut, i =>
        {
            for (int s = 0; s < n; s++) norms[(long)i * n + s] = TensorPrimitives.Norm(wDec.AsSpan((int)((long)i * dOut + (long)s * d), d));
        });
        return norms;
    }

    /// <summary>W_dec^s[i], source <paramref name="source"/>'s decoder vector of latent <paramref name="latent"/> (a view).</summary>
    public ReadOnlySpan<float> DecoderVector(int latent, int source) =>
        Dictionary.P.WDec.AsSpan((int)((long)latent * Sources.Count * Width + (long)source * Width), Width);

    /// <summary>The encoder's input: [x_1·c_1 | … | x_S·c_S] per row, from S arrays of [rows, d].</summary>
    /// <exception cref="ArgumentException">Not S arrays of rows·d floats.</exception>
    public float[] Concatenate(IReadOnlyList<float[]> perSource, int rows)
    {
        int n = Sources.Count, d = Width;
        if (perSource.Count != n) throw new ArgumentException($"expected {n} sources' activations, got {perSource.Count}", nameof(perSource));
        for (int s = 0; s < n; s++)
            if (perSource[s].Length != (long)rows * d)
                throw new ArgumentException($"source {Sources[s]} has {perSource[s].Length} floats, expected rows·d = {(long)rows * d}", nameof(perSource));
        var x = new float[(long)rows * n * d];
        for (int r = 0; r < rows; r++)
            for (int s = 0; s < n; s++)
                TensorPrimitives.Multiply(perSource[s].AsSpan(r * d, d), InputScales[s], x.AsSpan((r * n + s) * d, d));
        return x;
    }

    /// <summary>Latent activations [rows, F] of the sources' activations (each [rows, d], in the model's units).</summary>
    public float[] Encode(IReadOnlyList<float[]> perSource, int rows) => Dictionary.Encode(Concatenate(perSource, rows), rows);

    /// <summary>Each source's reconstruction [rows, d] from latents [rows, F], in the model's units (divided by c_s).</summary>
    public float[][] Decode(float[] latents, int rows)
    {
        var recon = new float[(long)rows * Sources.Count * Width];
        Dictionary.Decode(latents, [], rows, recon);
        return Split(recon, rows);
    }

    /// <summary>Rows [rows, S·d] in the crosscoder's units split into S arrays [rows, d] in the model's (divided by c_s).</summary>
    public float[][] Split(float[] concatenated, int rows)
    {
        int n = Sources.Count, d = Width;
        var outs = new float[n][];
        for (int s = 0; s < n; s++)
        {
            outs[s] = new float[(long)rows * d];
            for (int r = 0; r < rows; r++)
                TensorPrimitives.Multiply(concatenated.AsSpan((r * n + s) * d, d), 1f / InputScales[s], outs[s].AsSpan(r * d, d));
        }
        return outs;
    }

    /// <summary>
    /// The same crosscoder as an SAE that reads and writes the model's units: c_s folded into source s's encoder rows
    /// (W_enc^s·c_s) and out of its decoder segment and bias (W_dec^s / c_s, b_dec^s / c_s), so that its input is the raw
    /// concatenation [x_1 | … | x_S] and its output [x̂_1 | … | x̂_S] (what <see cref="Encode"/> and <see cref="Decode"/> give,
    /// up to rounding). A device encodes with it: the hooks are concatenated there and never scaled one by one.
    /// </summary>
    public SparseDictionary InModelUnits()
    {
        if (Dictionary.Activation is CrosscoderBatchTopKActivation)
            throw new InvalidOperationException("a BatchTopK crosscoder is used as the JumpReLU it folds to (CrosscoderFiles.FoldThreshold): its code norms change with the units");
        var folded = new SparseDictionary(Dictionary.Shape, Dictionary.Activation);
        Dictionary.P.CopyTo(folded.P);
        if (InputScales.All(c => c == 1f)) return folded;
        var p = folded.P;
        int n = Sources.Count, d = Width, f = DSae, dOut = n * d;
        for (int s = 0; s < n; s++)
        {
            float c = InputScales[s];
            TensorPrimitives.Multiply(p.WEnc.AsSpan((int)((long)s * d * f), d * f), c, p.WEnc.AsSpan((int)((long)s * d * f), d * f));
            TensorPrimitives.Multiply(p.BDec.AsSpan(s * d, d), 1f / c, p.BDec.AsSpan(s * d, d));
        }
        RowParallel.For(f, dOut, i =>
        {
            for (int s = 0; s < n; s++)
            {
                var seg = p.WDec.AsSpan((int)((long)i * dOut + (long)s * d), d);
                TensorPrimitives.Multiply(seg, 1f / InputScales[s], seg);
            }
        });
        return folded;
    }

    /// <summary>Multiplies each source's segment of rows [rows, S·d] by c_s in place (model units → the crosscoder's).</summary>
    internal void ScaleSegments(float[] concatenated, int rows)
    {
        int n = Sources.Count, d = Width;
        for (int r = 0; r < rows; r++)
            for (int s = 0; s < n; s++)
            {
                var seg = concatenated.AsSpan((int)(((long)r * n + s) * d), d);
                TensorPrimitives.Multiply(seg, InputScales[s], seg);
            }
    }

    /// <summary>n_i, the weight of latent i against a BatchTopK threshold, from the decoder norms [F, S].</summary>
    public static float CodeNorm(CodeNormalization kind, ReadOnlySpan<float> norms, float alphaSae = 1f, float alphaCc = 0.1f)
    {
        float sum = TensorPrimitives.Sum(norms), concat = TensorPrimitives.Norm(norms);
        return kind switch
        {
            CodeNormalization.Crosscoder => sum,
            CodeNormalization.Sae => concat,
            CodeNormalization.Mixed => alphaSae * concat + alphaCc * sum,
            _ => 1f,
        };
    }
}
