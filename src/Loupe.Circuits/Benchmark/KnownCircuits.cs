namespace Loupe.Circuits.Benchmark;

/// <summary>What the known-circuit sources need.</summary>
/// <param name="WorkFolder">Where trained checkpoints are written (one sub-folder per planted task).</param>
/// <param name="InductionModel">The induction checkpoint (../shared/models/induction-attn-only-2l), or null to leave it out.</param>
/// <param name="Quick">Fewer examples per circuit and only the circuits that need no shared data.</param>
/// <param name="Seed">Seed of training and data.</param>
public sealed record KnownCircuitOptions(string WorkFolder, string? InductionModel, bool Quick, int Seed = 0);

/// <summary>Every source of known circuits the benchmark scores, in table order.</summary>
public static class KnownCircuits
{
    /// <summary>Each source yields its circuits; a source adds one line here.</summary>
    public static IReadOnlyList<Func<KnownCircuitOptions, IEnumerable<KnownCircuit>>> Sources { get; } =
    [
        Induction,
        Planted,
        Rasp,
    ];

    /// <summary>The circuits of every source. The caller disposes their models.</summary>
    /// <param name="options">Settings shared by the sources.</param>
    public static IEnumerable<KnownCircuit> All(KnownCircuitOptions options) => Sources.SelectMany(source => source(options));

    /// <summary>The induction model under both corruptions (ground truth by exact patching); none in quick mode or without the model.</summary>
    public static IEnumerable<KnownCircuit> Induction(KnownCircuitOptions options)
    {
        if (options.Quick || options.InductionModel is null) yield break;
        yield return InductionTask.Build(options.InductionModel, InductionCorruption.SecondCopy, options.Seed);
        yield return InductionTask.Build(options.InductionModel, InductionCorruption.FirstCopy, options.Seed);
    }

    /// <summary>
    /// Compiled RASP programs (reverse, sort, hist, frac_prevs, dyck), truth by construction, at softmax coldness 10;
    /// and sort again at Tracr's default coldness 100, where saturated patterns give one more edge exactly zero gradient.
    /// Edges upstream of a discretizing lookup-table MLP (a step function) have zero gradient at either coldness: cases
    /// gradient methods miss and patching does not.
    /// </summary>
    public static IEnumerable<KnownCircuit> Rasp(KnownCircuitOptions options)
    {
        int examples = options.Quick ? 8 : 16;
        foreach (var task in Loupe.Circuits.Rasp.RaspTasks.All(options.Seed, examples, coldness: 10f)) yield return task;
        foreach (var task in Loupe.Circuits.Rasp.RaspTasks.All(options.Seed, examples, coldness: 100f).Where(t => t.Name == "rasp-sort"))
            yield return task with { Name = "rasp-sort.coldness100", Description = task.Description + " (Tracr's default coldness 100: saturated softmax)" };
    }

    /// <summary>The planted tasks, trained now (a few seconds each).</summary>
    public static IEnumerable<KnownCircuit> Planted(KnownCircuitOptions options)
    {
        foreach (var task in PlantedTasks.All)
            yield return PlantedTasks.Train(task, Path.Combine(options.WorkFolder, task.Name), options.Quick ? 8 : 16, options.Seed).Circuit;
    }
}
