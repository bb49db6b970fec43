using System.Text.Json;
using Loupe.Models;
using Loupe.Models.Loading;

namespace Loupe.Circuits.Rasp;

/// <summary>
/// Compiles a RASP program to the weights of a TransformerLens-layout transformer, as Tracr does:
/// value-set inference → layer allocation → a residual stream of named one-hot dimensions → weights.
/// </summary>
/// <remarks>
/// Layout (model position 0 holds BOS; RASP position i is model position i+1):
/// <list type="bullet">
/// <item><c>bos</c> is set by <c>W_pos[0]</c>, <c>indices:i</c> by <c>W_pos[i+1]</c>, <c>tokens:v</c> by <c>W_E</c>.
///   Positions are not an EAP-IG node, so BOS detection and reads of indices are no edge from <c>input</c>;
///   constants come from biases rather than a <c>one</c> dimension for the same reason (a constant read is not an edge).</item>
/// <item>Select/Aggregate: one head. <c>W_Q·W_Kᵀ</c> is <c>coldness·predicate(key, query)</c> over the one-hot values, and every
///   query scores BOS at <c>coldness/2</c> (via <c>b_Q</c>), so an empty selection attends to BOS, whose value spaces are all zero.
///   OV copies the value space into the output space.</item>
/// <item>SelectorWidth: a head that scores BOS like a match (pattern 1/(w+1) on BOS, copied into <c>label_attn</c>) and, in the
///   same layer, an MLP that turns 1/(w+1) into the one-hot w with sharp ReLU steps (Tracr's construction).</item>
/// <item>Map / SequenceMap: lookup-table MLPs, one hidden ReLU unit per input value (or pair of values).</item>
/// <item>Every MLP unit is switched off at BOS (a large negative weight from <c>bos</c>), so every SOp is zero at BOS.</item>
/// </list>
/// No layer norm; attention scale 1; every layer has the same number of heads and d_mlp (zero-padded).
/// </remarks>
public static class RaspCompiler
{
    /// <summary>Tracr's default soft-max coldness: the attention logit of a selected key.</summary>
    public const float DefaultColdness = 100f;

    const int MaxValues = 256;
    const int MaxDModel = 4096;

    /// <summary>Compiles <paramref name="output"/> for inputs over <paramref name="vocabulary"/> of length ≤ <paramref name="maxSeqLen"/>.</summary>
    /// <param name="output">The program's output SOp.</param>
    /// <param name="vocabulary">The input values (token ids follow this order; BOS comes last).</param>
    /// <param name="maxSeqLen">The longest input (BOS not counted); the model's n_ctx is one more.</param>
    /// <param name="folder">Where to write config.json and model.safetensors; null = a temporary folder, deleted after loading.</param>
    /// <param name="coldness">The attention logit of a selected key (BOS gets half).</param>
    /// <exception cref="RaspCompileException">The program cannot be compiled; the message names the node and why.</exception>
    public static CompiledProgram Compile(SOp output, IReadOnlyList<object> vocabulary, int maxSeqLen, string? folder = null, float coldness = DefaultColdness)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(vocabulary);
        if (vocabulary.Count == 0) throw new RaspCompileException("the input vocabulary is empty: the value set of 'tokens' is unknown");
        if (vocabulary.Distinct().Count() != vocabulary.Count) throw new RaspCompileException("the input vocabulary repeats a value");
        if (vocabulary.Any(v => v is null)) throw new RaspCompileException("the input vocabulary holds null");
        if (maxSeqLen is < 1 or > 64) throw new RaspCompileException($"max_seq_len {maxSeqLen} is outside 1 … 64");
        if (!(coldness > 0 && float.IsFinite(coldness))) throw new RaspCompileException($"coldness {coldness} must be a positive number");

        var order = RaspOps.TopologicalOrder(output);
        CheckLabels(order);
        var sets = InferValueSets(order, vocabulary, maxSeqLen);
        var plan = Schedule(order);
        var residual = new Residual(order, sets, vocabulary, maxSeqLen);
        if (residual.Count > MaxDModel) throw new RaspCompileException($"the residual stream would need {residual.Count} dimensions (more than {MaxDModel})");

        var weights = new WeightBuilder(plan, residual, sets, vocabulary, maxSeqLen, coldness);
        weights.Build(output);

        bool temporary = folder is null;
        folder ??= Path.Combine(Path.GetTempPath(), "loupe-rasp-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        weights.Write(folder, output.Label);
        HookedTransformer model;
        try { model = ModelLoader.LoadFolder(folder); }
        finally
        {
            if (temporary)
                try { Directory.Delete(folder, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }

        var components = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (sop, place) in plan.Places) components[sop.Label] = place.Component;
        return new CompiledProgram(model, output, vocabulary, maxSeqLen,
            output.Encoding == RaspEncoding.Categorical ? sets[output] : null,
            residual.Names, components, ReadEdges(order, output, plan, sets, tokenDependentOnly: false),
            ReadEdges(order, output, plan, sets, tokenDependentOnly: true), plan.Layers, weights.Heads, weights.DMlp);
    }

    static void CheckLabels(IReadOnlyList<SOp> order)
    {
        var seen = new Dictionary<string, SOp>(StringComparer.Ordinal);
        foreach (var s in order)
        {
            if (seen.TryGetValue(s.Label, out var other) && !ReferenceEquals(other, s))
                throw new RaspCompileException($"two different nodes are labelled '{s.Label}' ({other.Kind} and {s.Kind}); labels name residual dimensions and must be unique");
            seen[s.Label] = s;
            if (s.Label == "bos" || (s.Label is "tokens" or "indices" && s is not (TokensSOp or IndicesSOp)))
                throw new RaspCompileException($"{s}: the label '{s.Label}' is reserved");
        }
    }

    // ---------------------------------------------------------------- value sets

    /// <summary>The finite value set of every categorical SOp (numerical SOps get the values their map can produce, or none).</summary>
    internal static Dictionary<SOp, List<object>> InferValueSets(IReadOnlyList<SOp> order, IReadOnlyList<object> vocabulary, int maxSeqLen)
    {
        var sets = new Dictionary<SOp, List<object>>(ReferenceEqualityComparer.Instance);
        foreach (var s in order)
        {
            List<object> set = s switch
            {
                TokensSOp => [.. vocabulary],
                IndicesSOp => [.. Enumerable.Range(0, maxSeqLen).Cast<object>()],
                MapSOp m => MapValues(m, sets),
                SequenceMapSOp q => SequenceMapValues(q, sets),
                AggregateSOp a => AggregateValues(a, sets, maxSeqLen),
                SelectorWidthSOp w => WidthValues(w, sets, maxSeqLen),
                _ => throw new RaspCompileException($"unknown node {s}"),
            };
            if (s.Encoding == RaspEncoding.Categorical && set.Count > MaxValues)
                throw new RaspCompileException($"{s} has {set.Count} possible values (more than {MaxValues}); each needs a residual dimension");
            sets[s] = ReferenceEquals(set, UnknownValues) ? UnknownValues : Sorted(set);
        }
        return sets;
    }

    /// <summary>The value set of a numerical SOp whose values cannot be enumerated (the mean of values outside {0, 1}).</summary>
    static readonly List<object> UnknownValues = [];

    static List<object> Sorted(List<object> set)
    {
        var distinct = set.Distinct().ToList();
        if (distinct.Count > 1 && distinct.Select(v => v.GetType()).Distinct().Count() == 1 && distinct[0] is IComparable)
            distinct.Sort(Comparer<object>.Default);
        return distinct;
    }

    static void RequireCategorical(SOp node, SOp input, string role)
    {
        if (input.Encoding != RaspEncoding.Categorical)
            throw new RaspCompileException($"{node}: its {role} {input} is numerical; {role switch
            {
                "keys" or "queries" => "a Select compares categorical values only (its QK circuit is a table over one-hot values)",
                "values" => "a categorical Aggregate copies a one-hot value; use a numerical Aggregate for numerical values",
                _ => "it must be categorical",
            }}");
    }

    static List<object> MapValues(MapSOp m, Dictionary<SOp, List<object>> sets)
    {
        if (ReferenceEquals(sets[m.Input], UnknownValues))
            throw new RaspCompileException($"{m}: the value set of its input {m.Input} is unknown (a numerical mean of values outside {{0, 1}}), "
                + "so no discretising MLP can be built for it");
        var result = new List<object>();
        foreach (var x in sets[m.Input])
        {
            object y = Apply(m, () => m.Function(x), $"'{x}'");
            if (m.Encoding == RaspEncoding.Numerical) y = RaspInterpreter.AsNumber(m, y);
            result.Add(y);
        }
        return result;
    }

    static List<object> SequenceMapValues(SequenceMapSOp q, Dictionary<SOp, List<object>> sets)
    {
        RequireCategorical(q, q.Left, "input");
        RequireCategorical(q, q.Right, "input");
        var (a, b) = (sets[q.Left], sets[q.Right]);
        if ((long)a.Count * b.Count > 4096)
            throw new RaspCompileException($"{q}: {a.Count} × {b.Count} input pairs would need as many hidden units (at most 4096)");
        return [.. a.SelectMany(x => b.Select(y => Apply(q, () => q.Function(x, y), $"('{x}', '{y}')")))];
    }

    static object Apply(SOp node, Func<object> f, string argument)
    {
        object? y;
        try { y = f(); }
        catch (Exception e) when (e is not RaspCompileException)
        {
            throw new RaspCompileException($"{node}: its function throws on {argument} ({e.GetType().Name}: {e.Message}); every value of the input's value set must map");
        }
        return y ?? throw new RaspCompileException($"{node}: its function returns null on {argument}");
    }

    static void CheckSelector(SOp node, Selector sel, Dictionary<SOp, List<object>> sets)
    {
        RequireCategorical(node, sel.Keys, "keys");
        RequireCategorical(node, sel.Queries, "queries");
        if (sel.QueryIndependent) return;
        foreach (var k in sets[sel.Keys])
            foreach (var q in sets[sel.Queries])
            {
                try { sel.Holds(k, q); }
                catch (Exception e) when (e is not RaspCompileException)
                {
                    throw new RaspCompileException($"{node}: {sel.Description} throws on key '{k}', query '{q}' ({e.Message})");
                }
                catch (RaspCompileException e) { throw new RaspCompileException($"{node}: {e.Message}"); }
            }
    }

    static List<object> AggregateValues(AggregateSOp a, Dictionary<SOp, List<object>> sets, int maxSeqLen)
    {
        CheckSelector(a, a.Selector, sets);
        if (a.Encoding == RaspEncoding.Categorical)
        {
            RequireCategorical(a, a.Values, "values");
            return [.. sets[a.Values]];
        }
        if (a.Values.Encoding == RaspEncoding.Categorical)
        {
            var bad = sets[a.Values].Where(v => !IsZeroOrOne(v)).ToList();
            if (bad.Count > 0)
                throw new RaspCompileException($"{a}: a numerical Aggregate of the categorical {a.Values} needs values in {{0, 1}} (the mean of a one-hot dimension), but it can be [{string.Join(", ", bad)}]");
        }
        else if (ReferenceEquals(sets[a.Values], UnknownValues) || !sets[a.Values].All(IsZeroOrOne)) return UnknownValues;
        // The mean of m values in {0, 1} (m ≤ max_seq_len; nothing selected gives 0): computed as the interpreter computes it.
        var means = new List<object> { 0.0 };
        for (int m = 1; m <= maxSeqLen; m++)
            for (int k = 0; k <= m; k++) means.Add((double)k / m);
        return means;
    }

    static bool IsZeroOrOne(object v) => v switch
    {
        bool => true,
        int i => i is 0 or 1,
        long l => l is 0 or 1,
        double d => d is 0 or 1,
        float f => f is 0 or 1,
        _ => false,
    };

    static List<object> WidthValues(SelectorWidthSOp w, Dictionary<SOp, List<object>> sets, int maxSeqLen)
    {
        CheckSelector(w, w.Selector, sets);
        return [.. Enumerable.Range(0, maxSeqLen + 1).Cast<object>()];
    }

    /// <summary>
    /// Whether the head must read the query: false for TRUE/FALSE and for a predicate that gives the same keys for every query value
    /// of a query SOp that is defined everywhere (such a head scores keys through b_Q, so its query input is no edge of the circuit).
    /// </summary>
    internal static bool ReadsQuery(Selector sel, Dictionary<SOp, List<object>> sets)
    {
        if (sel.QueryIndependent) return false;
        if (!DefinedEverywhere(sel.Queries)) return true;
        var queries = sets[sel.Queries];
        return sets[sel.Keys].Any(k => queries.Any(q => sel.Holds(k, q) != sel.Holds(k, queries[0])));
    }

    /// <summary>False when the SOp can be null somewhere (a categorical Aggregate that may select nothing, or a map of one).</summary>
    static bool DefinedEverywhere(SOp s) => s switch
    {
        AggregateSOp a => a.Encoding == RaspEncoding.Numerical,
        MapSOp or SequenceMapSOp => s.Children.All(DefinedEverywhere),
        _ => true,
    };

    // ---------------------------------------------------------------- layer allocation

    /// <summary>Where a node is computed: sublayer 2l = attention of block l, 2l+1 = its MLP; ready = the sublayer after which it is in the stream.</summary>
    internal sealed record Place(int Layer, int Head, bool Attention, bool Mlp, int Ready)
    {
        public string Component => Attention && Mlp ? $"a{Layer}.h{Head}+m{Layer}" : Attention ? $"a{Layer}.h{Head}" : Mlp ? $"m{Layer}" : "embed";
        public string HeadName => $"a{Layer}.h{Head}";
        public string MlpName => $"m{Layer}";
    }

    internal sealed record Plan(Dictionary<SOp, Place> Places, int Layers);

    static Plan Schedule(IReadOnlyList<SOp> order)
    {
        var places = new Dictionary<SOp, Place>(ReferenceEqualityComparer.Instance);
        var headsPerLayer = new Dictionary<int, int>();
        static int NextAttention(int after) => after < 0 ? 0 : after % 2 == 0 ? after + 2 : after + 1;
        static int NextMlp(int after) => after < 0 ? 1 : after % 2 == 0 ? after + 1 : after + 2;
        int maxReady = -1;
        foreach (var s in order)
        {
            int after = s.Children.Select(c => places[c].Ready).DefaultIfEmpty(-1).Max();
            Place place;
            switch (s)
            {
                case TokensSOp or IndicesSOp:
                    place = new Place(-1, -1, false, false, -1);
                    break;
                case MapSOp or SequenceMapSOp:
                    {
                        int sub = NextMlp(after);
                        place = new Place(sub / 2, -1, false, true, sub);
                        break;
                    }
                default:
                    {
                        int sub = NextAttention(after);
                        int layer = sub / 2;
                        int head = headsPerLayer.GetValueOrDefault(layer);
                        headsPerLayer[layer] = head + 1;
                        bool width = s is SelectorWidthSOp;
                        place = new Place(layer, head, true, width, width ? sub + 1 : sub);
                        break;
                    }
            }
            places[s] = place;
            maxReady = Math.Max(maxReady, place.Ready);
        }
        return new Plan(places, Math.Max(1, maxReady / 2 + 1));
    }

    // ---------------------------------------------------------------- residual stream

    internal sealed class Residual
    {
        readonly Dictionary<string, int> _index = new(StringComparer.Ordinal);

        public Residual(IReadOnlyList<SOp> order, Dictionary<SOp, List<object>> sets, IReadOnlyList<object> vocabulary, int maxSeqLen)
        {
            Add("bos");
            // The embeddings write tokens and indices whether or not the program reads them.
            foreach (var v in vocabulary) Add(Name(RaspOps.Tokens, v));
            for (int i = 0; i < maxSeqLen; i++) Add(Name(RaspOps.Indices, i));
            foreach (var s in order)
            {
                if (s is TokensSOp or IndicesSOp) continue;
                if (s is SelectorWidthSOp) Add(AttnDim(s));
                if (s.Encoding == RaspEncoding.Numerical) Add(s.Label);
                else foreach (var v in sets[s]) Add(Name(s, v));
            }
        }

        public List<string> Names { get; } = [];
        public int Count => Names.Count;

        void Add(string name)
        {
            if (!_index.TryAdd(name, Names.Count))
                throw new RaspCompileException($"two residual dimensions are both named '{name}' (values whose text is the same?)");
            Names.Add(name);
        }

        public static string Name(SOp s, object value) => $"{s.Label}:{value}";
        public static string AttnDim(SOp s) => s.Label + "_attn";
        public int this[string name] => _index[name];
        public int Of(SOp s, object value) => _index[Name(s, value)];
        public int Of(SOp numerical) => _index[numerical.Label];
        public int Bos => _index["bos"];
    }

    // ---------------------------------------------------------------- weights

    sealed class MlpUnit
    {
        public Dictionary<int, float> In { get; } = [];
        public float Bias { get; init; }
        public Dictionary<int, float> Out { get; } = [];
    }

    sealed class WeightBuilder(Plan plan, Residual residual, Dictionary<SOp, List<object>> sets, IReadOnlyList<object> vocabulary, int maxSeqLen, float coldness)
    {
        readonly int _d = residual.Count;
        readonly int _layers = plan.Layers;
        readonly List<(string Name, int[] Shape, float[] Data)> _tensors = [];
        readonly List<MlpUnit>[] _units = [.. Enumerable.Range(0, plan.Layers).Select(_ => new List<MlpUnit>())];
        int _dHead = 1;
        int _vocabOut;

        public int Heads { get; private set; } = 1;

        /// <summary>Hidden units per MLP (0 when no layer needs one: the model is then attention-only).</summary>
        public int DMlp { get; private set; }

        bool AttnOnly => DMlp == 0;

        public void Build(SOp output)
        {
            int V = vocabulary.Count + 1, ctx = maxSeqLen + 1;
            var we = new float[V * _d];                                   // [d_vocab, d_model]
            for (int t = 0; t < vocabulary.Count; t++) we[t * _d + residual.Of(RaspOps.Tokens, vocabulary[t])] = 1;
            var wpos = new float[ctx * _d];                               // [n_ctx, d_model]
            wpos[residual.Bos] = 1;
            for (int i = 0; i < maxSeqLen; i++) wpos[(i + 1) * _d + residual.Of(RaspOps.Indices, i)] = 1;
            _tensors.Add(("embed.W_E", [V, _d], we));
            _tensors.Add(("pos_embed.W_pos", [ctx, _d], wpos));

            var headJobs = plan.Places.Where(p => p.Value.Attention).ToList();
            Heads = Math.Max(1, headJobs.Select(p => p.Value.Head + 1).DefaultIfEmpty(1).Max());
            foreach (var (sop, _) in headJobs)
            {
                var sel = sop is AggregateSOp a ? a.Selector : ((SelectorWidthSOp)sop).Selector;
                _dHead = Math.Max(_dHead, sets[sel.Keys].Count + 1);
                if (sop is AggregateSOp { Encoding: RaspEncoding.Categorical } ag) _dHead = Math.Max(_dHead, sets[ag.Values].Count);
            }

            foreach (var (sop, place) in plan.Places.Where(p => p.Value.Mlp))
                _units[place.Layer].AddRange(sop switch
                {
                    MapSOp m => MapUnits(m),
                    SequenceMapSOp q => SequenceMapUnits(q),
                    SelectorWidthSOp w => WidthUnits(w),
                    _ => throw new InvalidOperationException(),
                });
            DMlp = _units.Max(u => u.Count);
            bool attnOnly = AttnOnly;

            int H = Heads, dh = _dHead, D = _d, M = DMlp;
            for (int l = 0; l < _layers; l++)
            {
                var wq = new float[H * D * dh]; var bq = new float[H * dh];   // [n_heads, d_model, d_head], [n_heads, d_head]
                var wk = new float[H * D * dh]; var bk = new float[H * dh];
                var wv = new float[H * D * dh]; var bv = new float[H * dh];
                var wo = new float[H * dh * D]; var bo = new float[D];       // [n_heads, d_head, d_model]
                foreach (var (sop, place) in headJobs.Where(p => p.Value.Layer == l))
                    FillHead(sop, place.Head, wq, bq, wk, wv, wo);
                string b = $"blocks.{l}.attn.";
                _tensors.Add((b + "W_Q", [H, D, dh], wq)); _tensors.Add((b + "b_Q", [H, dh], bq));
                _tensors.Add((b + "W_K", [H, D, dh], wk)); _tensors.Add((b + "b_K", [H, dh], bk));
                _tensors.Add((b + "W_V", [H, D, dh], wv)); _tensors.Add((b + "b_V", [H, dh], bv));
                _tensors.Add((b + "W_O", [H, dh, D], wo)); _tensors.Add((b + "b_O", [D], bo));
                if (attnOnly) continue;
                var win = new float[D * M]; var bin = new float[M];           // [d_model, d_mlp]
                var wout = new float[M * D]; var bout = new float[D];         // [d_mlp, d_model]
                for (int u = 0; u < _units[l].Count; u++)
                {
                    var unit = _units[l][u];
                    foreach (var (dim, w) in unit.In) win[dim * M + u] += w;
                    bin[u] = unit.Bias;
                    foreach (var (dim, w) in unit.Out) wout[u * D + dim] += w;
                }
                _tensors.Add(($"blocks.{l}.mlp.W_in", [D, M], win)); _tensors.Add(($"blocks.{l}.mlp.b_in", [M], bin));
                _tensors.Add(($"blocks.{l}.mlp.W_out", [M, D], wout)); _tensors.Add(($"blocks.{l}.mlp.b_out", [D], bout));
            }

            float[] wu;                                                     // [d_model, d_vocab_out]
            if (output.Encoding == RaspEncoding.Categorical)
            {
                var outs = sets[output];
                _vocabOut = outs.Count;
                wu = new float[D * _vocabOut];
                for (int j = 0; j < outs.Count; j++) wu[residual.Of(output, outs[j]) * _vocabOut + j] = 1;
            }
            else
            {
                // logit 0 = the value, logit 1 = 0: a logit difference reads the number itself.
                _vocabOut = 2;
                wu = new float[D * 2];
                wu[residual.Of(output) * 2] = 1;
            }
            _tensors.Add(("unembed.W_U", [D, _vocabOut], wu));
            _tensors.Add(("unembed.b_U", [_vocabOut], new float[_vocabOut]));
        }

        void FillHead(SOp sop, int h, float[] wq, float[] bq, float[] wk, float[] wv, float[] wo)
        {
            int D = _d, dh = _dHead;
            bool width = sop is SelectorWidthSOp;
            var sel = sop is AggregateSOp a ? a.Selector : ((SelectorWidthSOp)sop).Selector;
            var keys = sets[sel.Keys];
            var queries = sets[sel.Queries];
            int bosCol = keys.Count;
            // QK: key value j ↦ basis column j of d_head; the query carries coldness·predicate(key_j, query) in column j.
            for (int j = 0; j < keys.Count; j++) wk[(h * D + residual.Of(sel.Keys, keys[j])) * dh + j] = 1;
            wk[(h * D + residual.Bos) * dh + bosCol] = 1;
            if (sel.QueryIndependent)
            {
                if (sel.Comparison == Comparison.TRUE)
                    for (int j = 0; j < keys.Count; j++) bq[h * dh + j] = coldness;
            }
            else if (!ReadsQuery(sel, sets))
            {
                for (int j = 0; j < keys.Count; j++)
                    if (sel.Holds(keys[j], queries[0])) bq[h * dh + j] = coldness;
            }
            else
                foreach (var q in queries)
                    for (int j = 0; j < keys.Count; j++)
                        if (sel.Holds(keys[j], q)) wq[(h * D + residual.Of(sel.Queries, q)) * dh + j] = coldness;
            // BOS: half a match for an aggregate (wins only when nothing is selected), a full match for a selector width
            // (so BOS gets 1/(w+1) of the pattern).
            bq[h * dh + bosCol] = width ? coldness : coldness / 2;

            if (sop is SelectorWidthSOp)
            {
                wv[(h * D + residual.Bos) * dh] = 1;
                wo[h * dh * D + residual[Residual.AttnDim(sop)]] = 1;
                return;
            }
            var agg = (AggregateSOp)sop;
            if (agg.Encoding == RaspEncoding.Categorical)
            {
                var values = sets[agg.Values];
                for (int i = 0; i < values.Count; i++)
                {
                    wv[(h * D + residual.Of(agg.Values, values[i])) * dh + i] = 1;
                    wo[(h * dh + i) * D + residual.Of(agg, values[i])] = 1;
                }
                return;
            }
            int source = -1;
            if (agg.Values.Encoding == RaspEncoding.Numerical) source = residual.Of(agg.Values);
            else
            {
                var one = sets[agg.Values].FirstOrDefault(v => RaspInterpreter.AsNumber(agg.Values, v) == 1);
                if (one is not null) source = residual.Of(agg.Values, one);
            }
            if (source < 0) return;
            wv[(h * D + source) * dh] = 1;
            wo[h * dh * D + residual.Of(agg)] = 1;
        }

        MlpUnit Gated(float bias)
        {
            // Large enough to switch off any unit at BOS whatever its other inputs.
            var unit = new MlpUnit { Bias = bias };
            unit.In[residual.Bos] = -1e6f;
            return unit;
        }

        IEnumerable<MlpUnit> MapUnits(MapSOp m)
        {
            if (m.Input.Encoding == RaspEncoding.Numerical)
            {
                foreach (var unit in DiscretisingUnits(m)) yield return unit;
                yield break;
            }
            foreach (var x in sets[m.Input])
            {
                object y = m.Function(x);
                var unit = Gated(0);
                unit.In[residual.Of(m.Input, x)] = 1;
                if (m.Encoding == RaspEncoding.Numerical)
                {
                    double v = RaspInterpreter.AsNumber(m, y);
                    if (v == 0) continue;
                    unit.Out[residual.Of(m)] = (float)v;
                }
                else unit.Out[residual.Of(m, y)] = 1;
                yield return unit;
            }
        }

        /// <summary>
        /// Tracr's discretising MLP for a map of a numerical SOp with a known finite value set x_0 &lt; … &lt; x_{n−1}: the output for x_0
        /// from a constant unit, plus at each midpoint b_i a sharp step ReLU(L(x−b_i)+½) − ReLU(L(x−b_i)−½) that adds f(x_i) − f(x_{i−1}).
        /// L makes the ramp a quarter of the smallest gap, so values perturbed by less than 3/8 of it still land on their own step.
        /// </summary>
        IEnumerable<MlpUnit> DiscretisingUnits(MapSOp m)
        {
            var xs = sets[m.Input].Select(v => RaspInterpreter.AsNumber(m.Input, v)).Distinct().Order().ToList();
            int input = residual.Of(m.Input);
            Dictionary<int, float> Output(object y, float sign)
            {
                var delta = new Dictionary<int, float>();
                if (m.Encoding == RaspEncoding.Numerical) delta[residual.Of(m)] = sign * (float)RaspInterpreter.AsNumber(m, y);
                else delta[residual.Of(m, y)] = sign;
                return delta;
            }
            void Add(MlpUnit unit, Dictionary<int, float> delta, float scale)
            {
                foreach (var (dim, w) in delta) unit.Out[dim] = unit.Out.GetValueOrDefault(dim) + scale * w;
            }
            var constant = Gated(1);
            Add(constant, Output(m.Function(xs[0]), 1), 1);
            yield return constant;
            double smallestGap = xs.Zip(xs.Skip(1), (a, b) => b - a).DefaultIfEmpty(1).Min();
            float L = (float)(4 / smallestGap);
            for (int i = 1; i < xs.Count; i++)
            {
                float midpoint = (float)((xs[i - 1] + xs[i]) / 2);
                var up = Gated(-L * midpoint + 0.5f);
                var down = Gated(-L * midpoint - 0.5f);
                up.In[input] = L;
                down.In[input] = L;
                foreach (var (y, sign) in new[] { (m.Function(xs[i]), 1f), (m.Function(xs[i - 1]), -1f) })
                {
                    Add(up, Output(y, sign), 1);
                    Add(down, Output(y, sign), -1);
                }
                yield return up;
                yield return down;
            }
        }

        IEnumerable<MlpUnit> SequenceMapUnits(SequenceMapSOp q)
        {
            // ReLU(left:x + right:y − 1) is 1 exactly when both one-hots are on.
            foreach (var x in sets[q.Left])
                foreach (var y in sets[q.Right])
                {
                    var unit = Gated(-1);
                    int a = residual.Of(q.Left, x), b = residual.Of(q.Right, y);
                    unit.In[a] = unit.In.GetValueOrDefault(a) + 1;
                    unit.In[b] = unit.In.GetValueOrDefault(b) + 1;
                    unit.Out[residual.Of(q, q.Function(x, y))] = 1;
                    yield return unit;
                }
        }

        IEnumerable<MlpUnit> WidthUnits(SelectorWidthSOp w)
        {
            // The head wrote x = 1/(w+1). step_k = [x < t_k] (t_k halfway between 1/k and 1/(k+1)) = ReLU(S(t_k−x)) − ReLU(S(t_k−x)−1)
            // with S large enough that the ramp fits inside the gap 1/(2k(k+1)); one-hot w = step_w − step_{w+1}, w = 0 → 1 − step_1.
            int x = residual[Residual.AttnDim(w)];
            float S = 8f * maxSeqLen * (maxSeqLen + 1);
            var constant = Gated(1);
            constant.Out[residual.Of(w, 0)] = 1;
            yield return constant;
            for (int k = 1; k <= maxSeqLen; k++)
            {
                float t = (1f / k + 1f / (k + 1)) / 2;
                var up = Gated(S * t);
                up.In[x] = -S;
                var down = Gated(S * t - 1);
                down.In[x] = -S;
                up.Out[residual.Of(w, k)] = 1; up.Out[residual.Of(w, k - 1)] = -1;
                down.Out[residual.Of(w, k)] = -1; down.Out[residual.Of(w, k - 1)] = 1;
                yield return up;
                yield return down;
            }
        }

        public void Write(string folder, string name)
        {
            var config = new Dictionary<string, object?>
            {
                ["format"] = "transformer_lens",
                ["model_name"] = "rasp-" + name,
                ["n_layers"] = _layers,
                ["d_model"] = _d,
                ["n_ctx"] = maxSeqLen + 1,
                ["d_head"] = _dHead,
                ["n_heads"] = Heads,
                ["d_mlp"] = AttnOnly ? null : DMlp,
                ["d_vocab"] = vocabulary.Count + 1,
                ["d_vocab_out"] = _vocabOut,
                ["act_fn"] = AttnOnly ? null : "relu",
                ["normalization_type"] = null,
                ["attn_only"] = AttnOnly,
                ["positional_embedding_type"] = "standard",
                ["attention_dir"] = "causal",
                ["use_attn_scale"] = false,
                ["task"] = $"RASP program '{name}' compiled by Loupe (Tracr-style); residual dimensions: {string.Join(" ", residual.Names)}",
                ["source"] = "Loupe.Circuits.Rasp.RaspCompiler",
            };
            File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }));
            SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"),
                _tensors.Select(t => (t.Name, t.Shape, (ReadOnlyMemory<float>)t.Data)));
        }
    }

    // ---------------------------------------------------------------- ground truth

    /// <summary>
    /// Every EAP-IG edge along which a component reads a space another component writes (token embedding = <c>input</c>;
    /// <c>bos</c> and <c>indices</c> come from positions, which are no node). With <paramref name="tokenDependentOnly"/>, only
    /// edges whose upstream value depends on the tokens: an SOp of positions alone (e.g. reverse's <c>length−1−i</c>) is the same
    /// in every input of a length, so no clean/corrupted pair of equal length can show its edges.
    /// </summary>
    static HashSet<string> ReadEdges(IReadOnlyList<SOp> order, SOp output, Plan plan, Dictionary<SOp, List<object>> sets, bool tokenDependentOnly)
    {
        var tokenDependent = new HashSet<SOp>(ReferenceEqualityComparer.Instance);
        foreach (var s in order)
            if (s is TokensSOp || s.Children.Any(tokenDependent.Contains)) tokenDependent.Add(s);
        var edges = new HashSet<string>(StringComparer.Ordinal);
        string? Writer(SOp s) => s switch
        {
            TokensSOp => "input",
            IndicesSOp => null,
            AggregateSOp => plan.Places[s].HeadName,
            _ => plan.Places[s].MlpName,
        };
        void Read(SOp from, string slot)
        {
            if (Writer(from) is string w && (!tokenDependentOnly || tokenDependent.Contains(from))) edges.Add($"{w}->{slot}");
        }
        foreach (var s in order)
        {
            var place = plan.Places[s];
            switch (s)
            {
                case MapSOp m:
                    Read(m.Input, place.MlpName);
                    break;
                case SequenceMapSOp q:
                    Read(q.Left, place.MlpName);
                    Read(q.Right, place.MlpName);
                    break;
                case AggregateSOp or SelectorWidthSOp:
                    {
                        var sel = s is AggregateSOp a ? a.Selector : ((SelectorWidthSOp)s).Selector;
                        if (sel.QueryIndependent && sel.Comparison == Comparison.FALSE) break;
                        if (ReadsQuery(sel, sets)) Read(sel.Queries, place.HeadName + "<q>");
                        Read(sel.Keys, place.HeadName + "<k>");
                        if (s is AggregateSOp agg) Read(agg.Values, place.HeadName + "<v>");
                        else if (!tokenDependentOnly || tokenDependent.Contains(s)) edges.Add($"{place.HeadName}->{place.MlpName}");
                        break;
                    }
            }
        }
        Read(output, "logits");
        return edges;
    }
}
