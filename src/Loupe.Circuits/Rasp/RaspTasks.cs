using Loupe.Circuits.Benchmark;
using Loupe.Circuits.Edges;
using Loupe.Models;

namespace Loupe.Circuits.Rasp;

/// <summary>The compiled RASP programs as known-circuit benchmark tasks.</summary>
public static class RaspTasks
{
    /// <summary>
    /// Every library program (<see cref="RaspLibrary.All"/>) compiled, with <paramref name="examples"/> clean/corrupted pairs each
    /// (same length; the corrupted input changes the output at one answer position at least) and the circuit by construction.
    /// </summary>
    /// <param name="seed">Seeds the inputs (the weights do not depend on it).</param>
    /// <param name="examples">Clean/corrupted pairs per task.</param>
    /// <param name="coldness">
    /// The attention logit of a selected key. Tracr's 100 saturates every softmax, so gradients through attention patterns
    /// vanish (gradient methods then miss query/key edges); a smaller one (≥ 10 keeps every program exact) leaves them visible.
    /// </param>
    public static IReadOnlyList<KnownCircuit> All(int seed = 0, int examples = 16, float coldness = RaspCompiler.DefaultColdness) =>
        [.. RaspLibrary.All().Select((p, i) => Task(p, RaspCompiler.Compile(p.Output, p.Vocabulary, p.MaxSeqLen, coldness: coldness), seed + i, examples))];

    /// <summary>
    /// The task for one program: the metric is, per example, the mean over answer positions where clean and corrupted outputs differ of
    /// logit(clean answer) − logit(corrupted answer); for a numerical output, ±(logit 0 − logit 1) = ±value, signed so that the clean run scores higher.
    /// </summary>
    /// <param name="program">The program.</param>
    /// <param name="compiled">Its compiled model.</param>
    /// <param name="seed">Seeds the inputs.</param>
    /// <param name="examples">Clean/corrupted pairs.</param>
    /// <exception cref="RaspCompileException">No corrupted input changing the output was found for some clean input.</exception>
    public static KnownCircuit Task(RaspProgram program, CompiledProgram compiled, int seed, int examples)
    {
        ArgumentNullException.ThrowIfNull(program);
        ArgumentNullException.ThrowIfNull(compiled);
        ArgumentOutOfRangeException.ThrowIfLessThan(examples, 1);
        var rng = new Random(seed);
        var clean = new List<int[]>();
        var corrupted = new List<int[]>();
        var terms = new List<LogitDiffTerm[]>();
        while (clean.Count < examples)
        {
            var x = program.Sample(rng);
            var outX = RaspInterpreter.Evaluate(program.Output, x);
            for (int attempt = 0; ; attempt++)
            {
                if (attempt == 1000)
                    throw new RaspCompileException($"{program.Name}: no corrupted input among 1000 draws changes the output of [{string.Join(", ", x)}]");
                var y = program.Sample(rng);
                var outY = RaspInterpreter.Evaluate(program.Output, y);
                var t = Terms(program, compiled, outX, outY);
                if (t.Length == 0) continue;
                clean.Add(compiled.Encode(x));
                corrupted.Add(compiled.Encode(y));
                terms.Add(t);
                break;
            }
        }
        return new KnownCircuit("rasp-" + program.Name, program.Description, compiled.Model,
            TokenBatch.FromRows(clean), TokenBatch.FromRows(corrupted), new MeanLogitDiff(terms), compiled.TrueEdges, "construction");
    }

    static LogitDiffTerm[] Terms(RaspProgram program, CompiledProgram compiled, object?[] clean, object?[] corrupted)
    {
        var terms = new List<LogitDiffTerm>();
        foreach (int p in program.AnswerPositions)
        {
            if (clean[p] is null || corrupted[p] is null || Equals(clean[p], corrupted[p])) continue;
            if (compiled.OutputValues is null)
            {
                bool higher = (double)clean[p]! > (double)corrupted[p]!;
                terms.Add(new LogitDiffTerm(p + 1, higher ? 0 : 1, higher ? 1 : 0));
            }
            else terms.Add(new LogitDiffTerm(p + 1, compiled.OutputId(clean[p]!), compiled.OutputId(corrupted[p]!)));
        }
        return [.. terms];
    }
}
