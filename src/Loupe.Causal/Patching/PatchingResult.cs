using System.Globalization;

namespace Loupe.Causal.Patching;

/// <summary>
/// Values over the cells of a sweep. Cells are ordered layer-major, then head, then position
/// (<see cref="Cells"/> holds them in that order); <see cref="Heads"/> / <see cref="Positions"/>
/// are null when that axis was not swept (patched whole).
/// </summary>
public abstract class CellSweepResult
{
    /// <summary>The target's name (e.g. <c>resid_pre</c>).</summary>
    public required string Target { get; init; }
    /// <summary>The metric's name.</summary>
    public required string Metric { get; init; }
    public required int[] Layers { get; init; }
    public int[]? Heads { get; init; }
    public int[]? Positions { get; init; }
    public required PatchCell[] Cells { get; init; }
    /// <summary>The metric after patching each cell, in <see cref="Cells"/> order.</summary>
    public required double[] Values { get; init; }
    /// <summary>Model calls the sweep made, the reference runs included.</summary>
    public int ForwardPasses { get; init; }
    /// <summary>Cells evaluated in one batched forward pass.</summary>
    public int CellsPerPass { get; init; }
    public double Seconds { get; init; }

    /// <summary>The value of one cell (head / position −1 when that axis was not swept).</summary>
    /// <exception cref="InputError">No such cell was swept.</exception>
    public double Value(int layer, int head = -1, int position = -1) => Values[IndexOf(layer, head, position)];

    protected int IndexOf(int layer, int head, int position)
    {
        int i = Array.IndexOf(Cells, new PatchCell(layer, head, position));
        return i >= 0 ? i : throw new InputError($"cell L{layer} head {head} position {position} was not part of the '{Target}' sweep");
    }

    /// <summary>
    /// <paramref name="values"/> (one per cell) as a 2-D grid for a heatmap: rows are layers (or
    /// layer × head when both heads and positions were swept), columns are positions, or heads,
    /// or one column "all".
    /// </summary>
    public double[][] Grid(double[] values)
    {
        int cols = Positions?.Length ?? Heads?.Length ?? 1;
        var rows = new double[values.Length / cols][];
        for (int r = 0; r < rows.Length; r++) rows[r] = values.AsSpan(r * cols, cols).ToArray();
        return rows;
    }

    public string[] RowLabels() => Heads is not null && Positions is not null
        ? Layers.SelectMany(l => Heads.Select(h => $"L{l}H{h}")).ToArray()
        : Layers.Select(l => $"L{l}").ToArray();

    /// <summary>Column labels; positions use <paramref name="tokenLabels"/> (one per position of the sequence) when given.</summary>
    public string[] ColumnLabels(IReadOnlyList<string>? tokenLabels = null) =>
        Positions is not null ? Positions.Select(p => tokenLabels is not null && p < tokenLabels.Count ? $"{p}: {tokenLabels[p]}" : p.ToString(CultureInfo.InvariantCulture)).ToArray()
        : Heads is not null ? Heads.Select(h => $"H{h}").ToArray()
        : ["all"];

    public string RowAxis => Heads is not null && Positions is not null ? "layer × head" : "layer";
    public string ColumnAxis => Positions is not null ? "position" : Heads is not null ? "head" : "";
}

/// <summary>
/// An activation-patching sweep: the metric with each cell patched, and normalized as
/// <c>(m − m_corrupt) / (m_clean − m_corrupt)</c> (1 = the clean behaviour restored, 0 = the
/// corrupt one; NaN for every cell when m_clean = m_corrupt).
/// </summary>
public sealed class PatchingResult : CellSweepResult
{
    public required double CleanValue { get; init; }
    public required double CorruptValue { get; init; }
    double[]? _normalized;

    /// <summary>Each cell's value normalized, derived from <see cref="CellSweepResult.Values"/>, <see cref="CleanValue"/> and <see cref="CorruptValue"/>.</summary>
    public double[] Normalized => _normalized ??= PatchNormalization.Of(Values, CleanValue, CorruptValue);
    /// <summary>False: clean activations patched into the corrupt run (denoising). True: corrupt into clean (noising).</summary>
    public bool Noising { get; init; }

    public double NormalizedValue(int layer, int head = -1, int position = -1) => Normalized[IndexOf(layer, head, position)];
}

/// <summary>An ablation sweep: the metric with each cell ablated, and its change from the unablated run.</summary>
public sealed class AblationResult : CellSweepResult
{
    /// <summary>The ablation, e.g. <c>zero</c>, <c>mean</c>, <c>resample(seed 0)</c>.</summary>
    public required string Ablation { get; init; }
    /// <summary>The metric with nothing ablated.</summary>
    public required double BaselineValue { get; init; }
    /// <summary><c>value − baseline</c> per cell.</summary>
    public double[] Change => Values.Select(v => v - BaselineValue).ToArray();
}

/// <summary>The normalized patching metric over a sweep's values.</summary>
static class PatchNormalization
{
    /// <summary><c>(m − m_corrupt) / (m_clean − m_corrupt)</c> per value; NaN everywhere when clean and corrupt agree.</summary>
    public static double[] Of(IReadOnlyList<double> values, double clean, double corrupt)
    {
        double span = clean - corrupt;
        return values.Select(v => Math.Abs(span) < 1e-12 ? double.NaN : (v - corrupt) / span).ToArray();
    }
}
