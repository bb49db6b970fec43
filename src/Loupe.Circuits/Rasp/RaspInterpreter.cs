namespace Loupe.Circuits.Rasp;

/// <summary>
/// Evaluates a RASP program directly on a list of input values, with causal selection (query q sees keys k ≤ q),
/// the reference the compiled models are tested against.
/// </summary>
public static class RaspInterpreter
{
    /// <summary>
    /// The value of <paramref name="output"/> at every position: categorical values as the map functions return them,
    /// numerical values as <see cref="double"/>, null where a categorical Aggregate selected nothing (or a map read such a null).
    /// </summary>
    /// <exception cref="RaspCompileException">A categorical Aggregate selected several positions holding different values, or a numerical value is not a number.</exception>
    public static object?[] Evaluate(SOp output, IReadOnlyList<object> input)
    {
        var values = new Dictionary<SOp, object?[]>(ReferenceEqualityComparer.Instance);
        foreach (var sop in RaspOps.TopologicalOrder(output)) values[sop] = Step(sop, input, values);
        return values[output];
    }

    static object?[] Step(SOp sop, IReadOnlyList<object> input, Dictionary<SOp, object?[]> values)
    {
        int n = input.Count;
        var result = new object?[n];
        switch (sop)
        {
            case TokensSOp:
                for (int i = 0; i < n; i++) result[i] = input[i];
                break;
            case IndicesSOp:
                for (int i = 0; i < n; i++) result[i] = i;
                break;
            case MapSOp map:
                {
                    var x = values[map.Input];
                    for (int i = 0; i < n; i++) result[i] = x[i] is null ? null : map.Function(x[i]!);
                    break;
                }
            case SequenceMapSOp seq:
                {
                    var a = values[seq.Left];
                    var b = values[seq.Right];
                    for (int i = 0; i < n; i++) result[i] = a[i] is null || b[i] is null ? null : seq.Function(a[i]!, b[i]!);
                    break;
                }
            case SelectorWidthSOp width:
                {
                    var sel = Selected(width.Selector, values, n);
                    for (int q = 0; q < n; q++) result[q] = sel[q].Count;
                    break;
                }
            case AggregateSOp agg:
                {
                    var sel = Selected(agg.Selector, values, n);
                    var v = values[agg.Values];
                    for (int q = 0; q < n; q++)
                    {
                        if (agg.Encoding == RaspEncoding.Numerical)
                            result[q] = sel[q].Count == 0 ? 0.0 : sel[q].Average(k => AsNumber(agg, v[k]));
                        else
                        {
                            var distinct = sel[q].Select(k => v[k]).Distinct().ToList();
                            if (distinct.Count > 1)
                                throw new RaspCompileException($"{agg}: categorical aggregate at position {q} selected positions [{string.Join(", ", sel[q])}] holding different values [{string.Join(", ", distinct)}]; the selector must pick one position");
                            result[q] = distinct.Count == 0 ? null : distinct[0];
                        }
                    }
                    break;
                }
            default:
                throw new RaspCompileException($"unknown SOp {sop}");
        }
        return result;
    }

    /// <summary>For each query, the keys k ≤ q the selector picks (a null key or query picks nothing, except TRUE on a defined key).</summary>
    static List<int>[] Selected(Selector selector, Dictionary<SOp, object?[]> values, int n)
    {
        var keys = values[selector.Keys];
        var queries = values[selector.Queries];
        var selected = new List<int>[n];
        for (int q = 0; q < n; q++)
        {
            selected[q] = [];
            for (int k = 0; k <= q; k++)
            {
                if (keys[k] is null) continue;
                bool hit = selector.QueryIndependent
                    ? selector.Comparison == Comparison.TRUE
                    : queries[q] is not null && selector.Holds(keys[k]!, queries[q]!);
                if (hit) selected[q].Add(k);
            }
        }
        return selected;
    }

    internal static double AsNumber(SOp node, object? value) => value switch
    {
        null => 0.0,
        double d => d,
        float f => f,
        int i => i,
        long l => l,
        bool b => b ? 1.0 : 0.0,
        _ => throw new RaspCompileException($"{node}: value '{value}' is not a number"),
    };
}
