using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Targets;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Fuzz.Tests;

/// <summary>
/// Every reproducer in Regressions/ (a crash-PARSER-HASH.bin with its .json, copied from a fuzz run) is run again
/// through its parser: it must now be accepted or refused cleanly. Seeds from ../shared are rebuilt when present;
/// a reproducer whose seed needs an absent ../shared is reported as skipped.
/// </summary>
public sealed class RegressionTests(ITestOutputHelper output)
{
    static string Folder => Path.Combine(SharedData.RepoRoot, "tests", "Loupe.Fuzz.Tests", "Regressions");

    [Fact]
    public void EveryReproducerIsNowAcceptedOrRefused()
    {
        var files = Directory.Exists(Folder) ? Directory.GetFiles(Folder, "*.json").Order(StringComparer.Ordinal).ToArray() : [];
        output.WriteLine($"{files.Length} reproducer(s) in {Folder}");
        var failures = new List<string>();
        foreach (var group in files.Select(f => (Path: f, Repro: Reproducer.Load(f))).GroupBy(r => r.Repro.Info.Parser))
        {
            var target = AllTargets.ByName(group.Key);
            var scratch = Directory.CreateTempSubdirectory($"loupe-fuzz-regress-{group.Key}-").FullName;
            try
            {
                var seeds = target.BuildSeeds(SeedContext.Default(Path.Combine(scratch, "seeds")));
                foreach (var (path, (info, bytes)) in group)
                {
                    if (seeds.All(s => s.Id != info.Seed))
                    {
                        output.WriteLine($"{Path.GetFileName(path)}: skipped, seed {info.Seed} is not available here");
                        continue;
                    }
                    var input = new FuzzInput(info.Parser, info.Seed, info.Index, info.File, bytes, info.Mutations);
                    var outcome = Campaign.Execute(target, seeds, input, Path.Combine(scratch, "case"));
                    output.WriteLine($"{Path.GetFileName(path)}: {outcome.Verdict} {outcome.Kind} {outcome.ExceptionType}: {outcome.Message}");
                    if (outcome.Verdict == Verdict.Failed)
                        failures.Add($"{Path.GetFileName(path)} ({string.Join(" ; ", info.Mutations)}): {outcome.Kind} {outcome.ExceptionType}: {outcome.Message}");
                }
            }
            finally
            {
                target.Cleanup();
                FuzzTests.TryDelete(scratch);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }
}
