namespace Loupe.Circuits.Rasp;

// RASP (Weiss et al. 2021) as Tracr (Lindner et al. 2023) compiles it: sequence operations (SOps)
// built from `tokens` and `indices` by element-wise maps and by select/aggregate, each with an
// encoding (categorical = one-hot over a finite value set, numerical = one dimension).
//
// One deliberate difference from Tracr's default: Loupe's models only have causal attention, so a
// Select at query position q only sees keys k ≤ q (Tracr's `causal=True`). The interpreter
// (RaspInterpreter) implements the same semantics, and the library programs are written so that
// their answers live at positions that can see what they need.

/// <summary>How an SOp's value is laid out in the residual stream.</summary>
public enum RaspEncoding
{
    /// <summary>One-hot over the SOp's finite value set: one residual dimension per value (<c>label:value</c>).</summary>
    Categorical,

    /// <summary>The value itself in one residual dimension (<c>label</c>).</summary>
    Numerical,
}

/// <summary>Tracr's comparisons; a selector with comparison <c>c</c> selects key k for query q when <c>c(key, query)</c> holds.</summary>
public enum Comparison { EQ, LT, LEQ, GT, GEQ, NEQ, TRUE, FALSE }

/// <summary>A sequence operation: a value at every position of the input.</summary>
public abstract class SOp
{
    private protected SOp(string label, RaspEncoding encoding)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(label);
        if (label.Contains(':') || label.Contains(' '))
            throw new ArgumentException($"SOp label '{label}' must not contain ':' or spaces (residual dimensions are named label:value)", nameof(label));
        Label = label;
        Encoding = encoding;
    }

    /// <summary>The name of the SOp; its residual dimensions are <c>label:value</c> (categorical) or <c>label</c> (numerical).</summary>
    public string Label { get; }

    /// <summary>Categorical or numerical.</summary>
    public RaspEncoding Encoding { get; }

    /// <summary>The SOps this one reads directly (through its selector too).</summary>
    public abstract IReadOnlyList<SOp> Children { get; }

    /// <summary>What kind of node this is, for messages (<c>Map</c>, <c>Aggregate</c>, …).</summary>
    public abstract string Kind { get; }

    public override string ToString() => $"{Kind} '{Label}' ({Encoding.ToString().ToLowerInvariant()})";
}

/// <summary>The input tokens (categorical over the input vocabulary).</summary>
public sealed class TokensSOp : SOp
{
    internal TokensSOp() : base("tokens", RaspEncoding.Categorical) { }
    public override IReadOnlyList<SOp> Children => [];
    public override string Kind => "tokens";
}

/// <summary>The position of each token, 0 … length−1 (categorical).</summary>
public sealed class IndicesSOp : SOp
{
    internal IndicesSOp() : base("indices", RaspEncoding.Categorical) { }
    public override IReadOnlyList<SOp> Children => [];
    public override string Kind => "indices";
}

/// <summary><c>f(input)</c> at every position; the input must be categorical (compiled as a lookup-table MLP).</summary>
public sealed class MapSOp : SOp
{
    internal MapSOp(SOp input, Func<object, object> function, RaspEncoding encoding, string label) : base(label, encoding)
    {
        Input = input;
        Function = function;
    }

    public SOp Input { get; }
    public Func<object, object> Function { get; }
    public override IReadOnlyList<SOp> Children => [Input];
    public override string Kind => "Map";
}

/// <summary><c>f(left, right)</c> at every position (categorical inputs and output; one hidden unit per pair of values).</summary>
public sealed class SequenceMapSOp : SOp
{
    internal SequenceMapSOp(SOp left, SOp right, Func<object, object, object> function, string label) : base(label, RaspEncoding.Categorical)
    {
        Left = left;
        Right = right;
        Function = function;
    }

    public SOp Left { get; }
    public SOp Right { get; }
    public Func<object, object, object> Function { get; }
    public override IReadOnlyList<SOp> Children => [Left, Right];
    public override string Kind => "SequenceMap";
}

/// <summary>
/// The mean of <see cref="Values"/> over the selected keys. Categorical: the selector must pick one position
/// (or several holding the same value); nothing selected gives no value. Numerical: the mean (0 when nothing is selected).
/// </summary>
public sealed class AggregateSOp : SOp
{
    internal AggregateSOp(Selector selector, SOp values, RaspEncoding encoding, string label) : base(label, encoding)
    {
        Selector = selector;
        Values = values;
    }

    public Selector Selector { get; }
    public SOp Values { get; }
    public override IReadOnlyList<SOp> Children => [Selector.Keys, Selector.Queries, Values];
    public override string Kind => "Aggregate";
}

/// <summary>The number of keys the selector picks at each query (categorical 0 … max_seq_len).</summary>
public sealed class SelectorWidthSOp : SOp
{
    internal SelectorWidthSOp(Selector selector, string label) : base(label, RaspEncoding.Categorical) => Selector = selector;

    public Selector Selector { get; }
    public override IReadOnlyList<SOp> Children => [Selector.Keys, Selector.Queries];
    public override string Kind => "SelectorWidth";
}

/// <summary>
/// Which keys each query attends to: <see cref="Holds"/>(key value, query value). Not an SOp: it only exists
/// inside an <see cref="AggregateSOp"/> or <see cref="SelectorWidthSOp"/> (it becomes that head's QK circuit).
/// </summary>
public sealed class Selector
{
    internal Selector(SOp keys, SOp queries, Comparison comparison, Func<object, object, bool>? custom, string description)
    {
        Keys = keys;
        Queries = queries;
        Comparison = comparison;
        Custom = custom;
        Description = description;
    }

    public SOp Keys { get; }
    public SOp Queries { get; }
    public Comparison Comparison { get; }

    /// <summary>A predicate given as a function instead of a comparison (then <see cref="Comparison"/> is ignored).</summary>
    public Func<object, object, bool>? Custom { get; }

    /// <summary>For messages: <c>Select(keys, queries, LT)</c>.</summary>
    public string Description { get; }

    /// <summary>True when the selected keys do not depend on the query (TRUE and FALSE).</summary>
    public bool QueryIndependent => Custom is null && Comparison is Comparison.TRUE or Comparison.FALSE;

    /// <summary>Whether key value <paramref name="key"/> is selected by query value <paramref name="query"/>.</summary>
    public bool Holds(object key, object query)
    {
        if (Custom is not null) return Custom(key, query);
        return Comparison switch
        {
            Comparison.TRUE => true,
            Comparison.FALSE => false,
            Comparison.EQ => Equals(key, query),
            Comparison.NEQ => !Equals(key, query),
            Comparison.LT => Compare(key, query) < 0,
            Comparison.LEQ => Compare(key, query) <= 0,
            Comparison.GT => Compare(key, query) > 0,
            Comparison.GEQ => Compare(key, query) >= 0,
            _ => throw new InvalidOperationException($"unknown comparison {Comparison}"),
        };
    }

    int Compare(object key, object query)
    {
        try { return Comparer<object>.Default.Compare(key, query); }
        catch (ArgumentException e)
        {
            throw new RaspCompileException($"{Description}: cannot order key value '{key}' against query value '{query}' ({e.Message})");
        }
    }
}

/// <summary>A RASP program that cannot be compiled (or evaluated), with the node and the reason.</summary>
public sealed class RaspCompileException(string message) : Exception(message);

/// <summary>Builders for RASP programs, named as in Tracr's <c>rasp</c> module.</summary>
public static class RaspOps
{
    static int _counter;

    static string Auto(string kind) => $"{kind}_{Interlocked.Increment(ref _counter)}";

    /// <summary>The input tokens.</summary>
    public static TokensSOp Tokens { get; } = new();

    /// <summary>The positions 0 … length−1.</summary>
    public static IndicesSOp Indices { get; } = new();

    /// <summary>Categorical → categorical map.</summary>
    public static MapSOp Map(SOp input, Func<object, object> function, string? label = null) =>
        new(input, function, RaspEncoding.Categorical, label ?? Auto("map"));

    /// <summary>Categorical → numerical map (e.g. <c>token == "x" ? 1 : 0</c>).</summary>
    public static MapSOp NumericalMap(SOp input, Func<object, double> function, string? label = null) =>
        new(input, x => function(x), RaspEncoding.Numerical, label ?? Auto("map"));

    /// <summary>Categorical map of two SOps.</summary>
    public static SequenceMapSOp SequenceMap(SOp left, SOp right, Func<object, object, object> function, string? label = null) =>
        new(left, right, function, label ?? Auto("sequence_map"));

    /// <summary>Selects key k for query q when <paramref name="comparison"/>(keys[k], queries[q]).</summary>
    public static Selector Select(SOp keys, SOp queries, Comparison comparison) =>
        new(keys, queries, comparison, null, $"Select({keys.Label}, {queries.Label}, {comparison})");

    /// <summary>Selects key k for query q when <paramref name="predicate"/>(keys[k], queries[q]); <paramref name="name"/> describes it.</summary>
    public static Selector Select(SOp keys, SOp queries, Func<object, object, bool> predicate, string name) =>
        new(keys, queries, Comparison.EQ, predicate, $"Select({keys.Label}, {queries.Label}, {name})");

    /// <summary>Categorical aggregate: copies the value at the one selected position.</summary>
    public static AggregateSOp Aggregate(Selector selector, SOp values, string? label = null) =>
        new(selector, values, RaspEncoding.Categorical, label ?? Auto("aggregate"));

    /// <summary>Numerical aggregate: the mean of a numerical (or 0/1 categorical) SOp over the selected positions.</summary>
    public static AggregateSOp NumericalAggregate(Selector selector, SOp values, string? label = null) =>
        new(selector, values, RaspEncoding.Numerical, label ?? Auto("aggregate"));

    /// <summary>The number of selected keys at each query.</summary>
    public static SelectorWidthSOp SelectorWidth(Selector selector, string? label = null) =>
        new(selector, label ?? Auto("selector_width"));

    /// <summary>Every SOp <paramref name="output"/> depends on (itself included), dependencies first.</summary>
    public static IReadOnlyList<SOp> TopologicalOrder(SOp output)
    {
        var order = new List<SOp>();
        var state = new Dictionary<SOp, bool>(ReferenceEqualityComparer.Instance);
        void Visit(SOp s)
        {
            if (state.TryGetValue(s, out bool done))
            {
                if (!done) throw new RaspCompileException($"{s} depends on itself");
                return;
            }
            state[s] = false;
            foreach (var c in s.Children) Visit(c);
            state[s] = true;
            order.Add(s);
        }
        Visit(output);
        return order;
    }
}
