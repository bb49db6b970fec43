using Loupe.Circuits.Edges;
using Loupe.Circuits.Rasp;
using Loupe.Circuits.Weights;
using Loupe.Models.Layers;
using Loupe.Models;

namespace Loupe.Circuits.Tests.Rasp;

public class RaspCompilerTests
{
    static IEnumerable<RaspProgram> Programs() => RaspLibrary.All().Append(RaspLibrary.Majority());

    public static TheoryData<string> ProgramNames => new(Programs().Select(p => p.Name));

    static RaspProgram Program(string name) => Programs().Single(p => p.Name == name);

    static void AssertSameOutput(CompiledProgram compiled, object?[] expected, object?[] actual, IReadOnlyList<object> input, float coldness = RaspCompiler.DefaultColdness)
    {
        // BOS keeps e^(−coldness/2) of a numerical mean's attention.
        double tolerance = 1e-4 + 2 * Math.Exp(-coldness / 2);
        Assert.Equal(expected.Length, actual.Length);
        for (int p = 0; p < expected.Length; p++)
        {
            string where = $"position {p} of [{string.Join(" ", input)}]";
            if (compiled.OutputValues is null)
            {
                double e = (double)expected[p]!, a = (double)actual[p]!;
                Assert.True(Math.Abs(e - a) <= tolerance + 1e-4 * Math.Abs(e), $"{where}: expected {e}, model {a}");
            }
            else Assert.True(Equals(expected[p], actual[p]), $"{where}: expected {expected[p] ?? "null"}, model {actual[p] ?? "null"}");
        }
    }

    public static TheoryData<string, float> ProgramsAndColdness
    {
        get
        {
            var data = new TheoryData<string, float>();
            foreach (var p in Programs()) { data.Add(p.Name, RaspCompiler.DefaultColdness); data.Add(p.Name, 10f); }
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(ProgramsAndColdness))]
    public void CompiledModelComputesTheProgramOn200RandomInputs(string name, float coldness)
    {
        var program = Program(name);
        var compiled = RaspCompiler.Compile(program.Output, program.Vocabulary, program.MaxSeqLen, coldness: coldness);
        var rng = new Random(11);
        var inputs = Enumerable.Range(0, 200).Select(_ => program.Sample(rng)).ToList();
        var logits = compiled.Model.Run(TokenBatch.FromRows([.. inputs.Select(compiled.Encode)])).Logits;
        for (int b = 0; b < inputs.Count; b++)
            AssertSameOutput(compiled, RaspInterpreter.Evaluate(program.Output, inputs[b]), compiled.Decode(logits, b), inputs[b], coldness);
    }

    [Theory]
    [InlineData("reverse")]
    [InlineData("hist")]
    [InlineData("frac_prevs")]
    [InlineData("dyck")]
    public void CompiledModelAgreesOnShorterInputs(string name)
    {
        var program = Program(name);
        var compiled = RaspCompiler.Compile(program.Output, program.Vocabulary, program.MaxSeqLen);
        var rng = new Random(5);
        for (int i = 0; i < 40; i++)
        {
            int length = 1 + rng.Next(program.MaxSeqLen);
            var input = program.Sample(rng)[..length];
            AssertSameOutput(compiled, RaspInterpreter.Evaluate(program.Output, input), compiled.Run(input), input);
        }
    }

    [Fact]
    public void AProgramWithoutMapsCompilesToAnAttentionOnlyModel()
    {
        var first = RaspOps.Aggregate(RaspOps.Select(RaspOps.Indices, RaspOps.Indices, (k, _) => (int)k == 0, "k==0"), RaspOps.Tokens, "first");
        var compiled = RaspCompiler.Compile(first, ["a", "b", "c"], 5);
        Assert.True(compiled.Model.Config.AttnOnly);
        Assert.Equal(0, compiled.DMlp);
        Assert.Equal(["a0.h0->logits", "input->a0.h0<v>"], compiled.TrueEdges.Order(StringComparer.Ordinal));
        Assert.Equal(["c", "c", "c"], compiled.Run(["c", "a", "b"]));
    }

    [Fact]
    public void InterpreterMatchesHandWorkedExamples()
    {
        Assert.Equal([null, null, null, "c", "b", "a"], RaspInterpreter.Evaluate(RaspLibrary.Reverse().Output, ["a", "b", "c", "c", "d", "d"]));
        Assert.Equal([1, 1, 2, 1], RaspInterpreter.Evaluate(RaspLibrary.Hist().Output, ["a", "b", "a", "c"]));
        var frac = RaspInterpreter.Evaluate(RaspLibrary.FracPrevs().Output, ["x", "y", "x"]);
        Assert.Equal([1.0, 0.5, 2.0 / 3], frac.Select(v => (double)v!));
        var sorted = RaspInterpreter.Evaluate(RaspLibrary.Sort().Output, [2, 0, 5, 1, 1, 1, 4, 4, 4]);
        Assert.Equal([0, 2, 5], sorted[6..]);
        Assert.Equal([false, false, false, true], RaspInterpreter.Evaluate(RaspLibrary.Dyck().Output, ["(", "(", ")", ")"]));
        Assert.Equal([false, true, false, false], RaspInterpreter.Evaluate(RaspLibrary.Dyck().Output, ["(", ")", ")", "("]));
    }

    [Fact]
    public void ReverseHasTheLayoutAndCircuitOfItsConstruction()
    {
        var program = RaspLibrary.Reverse();
        var compiled = RaspCompiler.Compile(program.Output, program.Vocabulary, program.MaxSeqLen);
        Assert.Equal("m0", compiled.Components["opp_index"]);
        Assert.Equal("a1.h0", compiled.Components["reverse"]);
        Assert.Contains("tokens:a", compiled.ResidualDimensions);
        Assert.Contains("indices:5", compiled.ResidualDimensions);
        Assert.Contains("opp_index:0", compiled.ResidualDimensions);
        // opp_index reads indices (positions, no node); the key is indices too: no edge into <k>.
        Assert.Equal(["a1.h0->logits", "input->a1.h0<v>", "m0->a1.h0<q>"], compiled.ReadEdges.Order(StringComparer.Ordinal));
        // opp_index is a function of positions alone: the same in clean and corrupted inputs, so not part of the task's circuit.
        Assert.Equal(["a1.h0->logits", "input->a1.h0<v>"], compiled.TrueEdges.Order(StringComparer.Ordinal));
        Assert.Equal(2, compiled.Layers);
        Assert.True(compiled.Model.Config.DModel <= 128);
    }

    [Theory]
    [MemberData(nameof(ProgramNames))]
    public void GroundTruthIsConnectedAndNoOtherEdgeMattersUnderEap(string name)
    {
        var program = Program(name);
        var compiled = RaspCompiler.Compile(program.Output, program.Vocabulary, program.MaxSeqLen);
        var task = RaspTasks.Task(program, compiled, seed: 3, examples: 8);
        var graph = EdgeGraph.FromModel(task.Model);
        Assert.NotEmpty(task.TrueEdges);
        Assert.All(task.TrueEdges, e => Assert.True(graph.IndexOf(e) >= 0, $"{e} is not an edge of the graph"));
        Assert.True(Connected(task.TrueEdges), $"the circuit [{string.Join(", ", task.TrueEdges)}] does not connect input to logits");
        Assert.True(task.Model.Config.DModel <= 128 && task.Model.Config.NLayers <= 6 && task.Model.Config.NCtx <= 10);

        // The corrupted inputs really change what the metric measures.
        var clean = task.Metric.PerExample(task.Model.Run(task.Clean).Logits);
        var corrupted = task.Metric.PerExample(task.Model.Run(task.Corrupted).Logits);
        for (int b = 0; b < clean.Length; b++) Assert.True(clean[b] > corrupted[b] + 0.1, $"example {b}: clean {clean[b]}, corrupted {corrupted[b]}");

        // A component that does not read a space never sees a change there: every edge outside the circuit scores exactly ~0.
        var scores = EdgeAttribution.Eap(task.Model, graph, task.Clean, task.Corrupted, task.Metric);
        double largest = scores.Scores.Max(Math.Abs);
        Assert.True(largest > 0.1, $"largest |EAP score| {largest}");
        foreach (var edge in graph.Edges)
            if (!task.TrueEdges.Contains(edge.Name))
                Assert.True(Math.Abs(scores[edge.Name]) <= 1e-5 * largest, $"{edge.Name} is not in the circuit but scores {scores[edge.Name]} (largest {largest})");
        Assert.Contains(task.TrueEdges, e => e.EndsWith("->logits", StringComparison.Ordinal) && Math.Abs(scores[e]) > 1e-3 * largest);
    }

    [Theory]
    [MemberData(nameof(ProgramNames))]
    public void AnEdgeIsInTheCircuitExactlyWhenItsReaderReadsWhatItsWriterWrites(string name)
    {
        // From the weights alone: edge U → S carries something iff (what U writes)·(what S reads) ≠ 0.
        var program = Program(name);
        var compiled = RaspCompiler.Compile(program.Output, program.Vocabulary, program.MaxSeqLen);
        var model = compiled.Model;
        var cfg = model.Config;
        var attention = AttentionWeights.FromModel(model);
        var graph = EdgeGraph.FromModel(model);
        int D = cfg.DModel;
        // W_E is not public: read it back as hook_embed of every token alone.
        var embed = model.RunWithCache(new TokenBatch([.. Enumerable.Range(0, cfg.DVocab)], cfg.DVocab, 1), "hook_embed").Cache["hook_embed"].Span.ToArray();
        float[] Matrix(Linear linear)
        {
            Assert.False(linear.WeightIsOutIn);
            return linear.Weight.ToArray();
        }
        (float[] W, int Rows) Writes(SourceNode s) => s.Kind switch
        {
            SourceKind.Input => (embed, cfg.DVocab),
            SourceKind.Head => (attention.WO[s.Layer][s.Head], cfg.DHead),
            _ => (Matrix(model.Anatomy(s.Layer).Mlp!.Out), cfg.DMlp),
        };
        (float[] W, int Cols) Reads(DestinationSlot d) => d.Kind switch
        {
            SlotKind.Query => (attention.WQ[d.Layer][d.Head], cfg.DHead),
            SlotKind.Key => (attention.WK[d.Layer][d.Head], cfg.DHead),
            SlotKind.Value => (attention.WV[d.Layer][d.Head], cfg.DHead),
            SlotKind.Mlp => (Matrix(model.Anatomy(d.Layer).Mlp!.In), cfg.DMlp),
            _ => (Matrix(model.UnembedLayer), cfg.DVocabOut),
        };
        foreach (var edge in graph.Edges)
        {
            var (w, rows) = Writes(graph.Sources[edge.Source]);
            var (r, cols) = Reads(graph.Destinations[edge.Destination]);
            double largest = 0;
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < cols; j++)
                {
                    double sum = 0;
                    for (int k = 0; k < D; k++) sum += w[i * D + k] * r[k * cols + j];
                    largest = Math.Max(largest, Math.Abs(sum));
                }
            Assert.True(compiled.ReadEdges.Contains(edge.Name) == largest > 1e-6, $"{edge.Name}: largest read of the write {largest}, in circuit {compiled.ReadEdges.Contains(edge.Name)}");
            Assert.Subset(compiled.ReadEdges.ToHashSet(), compiled.TrueEdges.ToHashSet());
        }
    }

    /// <summary>Whether the edges hold a path from input to logits (a destination slot a1.h0&lt;q&gt; is node a1.h0).</summary>
    static bool Connected(IReadOnlySet<string> edges)
    {
        var next = edges.Select(e => e.Split("->")).Select(p => (From: p[0], To: p[1].Split('<')[0])).ToList();
        var reached = new HashSet<string> { "input" };
        for (bool grew = true; grew;)
        {
            grew = false;
            foreach (var (from, to) in next) if (reached.Contains(from) && reached.Add(to)) grew = true;
        }
        return reached.Contains("logits");
    }

    [Fact]
    public void RaspTasksAllBuildsEveryProgram()
    {
        var tasks = RaspTasks.All(seed: 1, examples: 4);
        Assert.Equal(["rasp-reverse", "rasp-sort", "rasp-hist", "rasp-frac_prevs", "rasp-dyck"], tasks.Select(t => t.Name));
        Assert.All(tasks, t =>
        {
            Assert.Equal(4, t.Clean.Batch);
            Assert.Equal(t.Clean.Length, t.Corrupted.Length);
            Assert.Equal("construction", t.GroundTruth);
        });
    }

    [Fact]
    public void NumericalAggregateOfANonBinaryCategoricalIsRefused()
    {
        var bad = RaspOps.NumericalAggregate(RaspOps.Select(RaspOps.Indices, RaspOps.Indices, Comparison.LEQ), RaspOps.Tokens, "mean_token");
        var e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(bad, ["a", "b"], 4));
        Assert.Contains("mean_token", e.Message);
        Assert.Contains("{0, 1}", e.Message);
    }

    [Fact]
    public void SelectOnANumericalSOpIsRefused()
    {
        var number = RaspOps.NumericalMap(RaspOps.Tokens, t => (string)t == "a" ? 1 : 0, "is_a");
        var bad = RaspOps.Aggregate(RaspOps.Select(number, RaspOps.Indices, Comparison.EQ), RaspOps.Tokens, "picked");
        var e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(bad, ["a", "b"], 4));
        Assert.Contains("picked", e.Message);
        Assert.Contains("is_a", e.Message);
        Assert.Contains("numerical", e.Message);
    }

    [Theory]
    [InlineData(100f)]
    [InlineData(10f)]
    public void MapsOfANumericalSOpUseADiscretisingMlp(float coldness)
    {
        var majority = RaspLibrary.Majority();
        var frac = ((MapSOp)majority.Output).Input;
        var complement = RaspOps.NumericalMap(frac, f => 1 - (double)f, "not_x");
        foreach (var output in new SOp[] { majority.Output, complement })
        {
            var compiled = RaspCompiler.Compile(output, majority.Vocabulary, majority.MaxSeqLen, coldness: coldness);
            var rng = new Random(2);
            var inputs = Enumerable.Range(0, 200).Select(_ => majority.Sample(rng)[..(1 + rng.Next(majority.MaxSeqLen))]).ToList();
            foreach (var input in inputs)
                AssertSameOutput(compiled, RaspInterpreter.Evaluate(output, input), compiled.Run(input), input, coldness);
        }
    }

    [Fact]
    public void MapOfANumericalSOpWithAnUnknownValueSetIsRefused()
    {
        var halves = RaspOps.NumericalMap(RaspOps.Tokens, t => (string)t == "a" ? 1 : 0.5, "halves");
        var mean = RaspOps.NumericalAggregate(RaspOps.Select(RaspOps.Indices, RaspOps.Indices, Comparison.LEQ), halves, "mean_halves");
        var bad = RaspOps.Map(mean, v => (double)v > 0.7, "high");
        var e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(bad, ["a", "b"], 4));
        Assert.Contains("high", e.Message);
        Assert.Contains("mean_halves", e.Message);
        Assert.Contains("unknown", e.Message);
    }

    [Fact]
    public void UnknownValueSetsAndBadInputsAreRefused()
    {
        var e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(RaspLibrary.Hist().Output, [], 4));
        Assert.Contains("tokens", e.Message);
        var throwing = RaspOps.Map(RaspOps.Tokens, t => ((string)t)[3], "fourth_char");
        e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(throwing, ["ab"], 4));
        Assert.Contains("fourth_char", e.Message);

        var program = RaspLibrary.Hist();
        var compiled = RaspCompiler.Compile(program.Output, program.Vocabulary, program.MaxSeqLen);
        e = Assert.Throws<RaspCompileException>(() => compiled.Encode(Enumerable.Repeat<object>("a", program.MaxSeqLen + 1).ToList()));
        Assert.Contains("at most", e.Message);
        e = Assert.Throws<RaspCompileException>(() => compiled.Encode(["a", "q"]));
        Assert.Contains("'q'", e.Message);
    }
}

public class RaspCompilerRefusalTests
{
    [Fact]
    public void CategoricalAggregateOfANumericalSOpIsRefused()
    {
        var number = RaspOps.NumericalMap(RaspOps.Tokens, t => (string)t == "a" ? 1 : 0, "is_a");
        var bad = RaspOps.Aggregate(RaspOps.Select(RaspOps.Indices, RaspOps.Indices, Comparison.EQ), number, "copied");
        var e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(bad, ["a", "b"], 4));
        Assert.Contains("copied", e.Message);
        Assert.Contains("numerical", e.Message);
    }

    [Fact]
    public void AnOrderingBetweenIncomparableValuesIsRefused()
    {
        var mixed = RaspOps.Map(RaspOps.Tokens, t => (string)t == "a" ? 1 : "one", "mixed");
        var bad = RaspOps.SelectorWidth(RaspOps.Select(mixed, RaspOps.Indices, Comparison.LT), "smaller");
        var e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(bad, ["a", "b"], 4));
        Assert.Contains("smaller", e.Message);
        Assert.Contains("cannot order", e.Message);
    }

    [Fact]
    public void TwoNodesWithOneLabelAreRefused()
    {
        var first = RaspOps.Map(RaspOps.Tokens, t => t, "same");
        var second = RaspOps.SequenceMap(first, RaspOps.Map(RaspOps.Indices, i => i, "same"), (a, b) => a, "pair");
        var e = Assert.Throws<RaspCompileException>(() => RaspCompiler.Compile(second, ["a", "b"], 4));
        Assert.Contains("'same'", e.Message);
    }
}
