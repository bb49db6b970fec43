using Loupe.Dictionaries.Diffing;
using Loupe.Dictionaries.Harvest;
using Loupe.Fuzz.Engine;
using Loupe.Models;
using Loupe.Serve;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// A diff.json as <c>loupe serve --diff</c> reads it at start (<see cref="ModelDiffFile.Read"/>, then the served listing):
/// what it accepts must fit together — every divergent position inside its context, one mean KL per position, one more
/// histogram edge than counts, finite KL — because the Diff page indexes and draws with those numbers unchecked.
/// </summary>
public sealed class ModelDiffTarget : FuzzTarget
{
    public override string Name => "model-diff";
    public override int DefaultIterations => 2000;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        // A real diff of the GPT-2 fixture against itself (all zeros: the mutations supply the numbers), written as `loupe diff` writes it.
        using var a = ModelLoader.LoadFolder(context.Repo("tests/data/reference/gpt2"));
        using var b = ModelLoader.LoadFolder(context.Repo("tests/data/reference/gpt2"));
        var random = new Random(7);
        var contexts = HarvestContexts.FromRows([.. Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, 8).Select(t => t == 0 ? 1 : random.Next(3, 512)).ToArray())], "random tokens", 7);
        var result = ModelDiffing.Compute(a, b, contexts, ["blocks.0.hook_resid_post"], new ModelDiffOptions { Positions = 2, TopPositions = 4, LogitTokens = 3, Bins = 5 });
        var ids = result.TopPositions.SelectMany(p => p.Before.Append(p.TopA).Append(p.TopB)).Distinct();
        string path = Path.Combine(context.Scratch, "diff.json");
        new ModelDiffFile("base", "chat", result, ids.ToDictionary(id => id, id => $"tok{id}")).Write(path);
        return [new Seed("generated:gpt2-self-diff", [new SeedFile("diff.json", File.ReadAllBytes(path), FileKind.Json)])];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        string path = Path.Combine(folder, "diff.json");
        var r = ModelDiffFile.Read(path).Result;
        Require.That(r.MeanKlByPosition.Length == r.ContextSize && r.KlHistogramEdges.Length == r.KlHistogramCounts.Length + 1, "lengths that do not fit accepted");
        Require.That(double.IsFinite(r.MeanKl) && r.MeanKl >= 0, $"mean KL {r.MeanKl} accepted");
        foreach (var p in r.TopPositions)
            Require.That(p.Position >= 0 && p.Position < r.ContextSize && p.Context >= 0 && p.Context < r.Contexts && p.Before is not null, $"position {p.Context}:{p.Position} accepted");
        var served = new ServedModelDiffs([path]);
        foreach (var view in served.All) Require.That(served.Find(view.Id) is not null, "a listed diff not found by its id");
    }
}
