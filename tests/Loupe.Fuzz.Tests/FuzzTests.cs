using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Targets;
using Loupe.Testing;
using Xunit.Abstractions;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Loupe.Fuzz.Tests;

/// <summary>
/// The CI fuzz run: a fixed-seed campaign of a few thousand mutated inputs per parser (LOUPE_FUZZ_ITERATIONS
/// overrides the count). Every input must be accepted with finite results or refused with InputError / IOException;
/// any other exception, a NaN result, an invalid file accepted or a hang fails the test, which prints each distinct
/// failure with its mutation chain and saves its input (crash-PARSER-HASH.bin/.json) under the temp folder.
/// A stack overflow kills the test host and cannot be reported here: the long runner (fuzz/Loupe.Fuzz) runs each
/// parser in a child process for that reason.
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    /// <summary>The fixed seed of the CI run (any other value explores other inputs: fuzz/Loupe.Fuzz --seed).</summary>
    const int CampaignSeed = 8;

    public static TheoryData<string> Parsers => new(AllTargets.Names);

    static int Iterations(FuzzTarget target) =>
        int.TryParse(Environment.GetEnvironmentVariable("LOUPE_FUZZ_ITERATIONS"), out int n) && n > 0 ? n : target.DefaultIterations;

    [Theory]
    [MemberData(nameof(Parsers))]
    public void EverySeedIsAcceptedUnchanged(string parser)
    {
        var target = AllTargets.ByName(parser);
        var scratch = Directory.CreateTempSubdirectory($"loupe-fuzz-seeds-{parser}-").FullName;
        try
        {
            var context = SeedContext.Default(Path.Combine(scratch, "seeds"));
            var seeds = target.BuildSeeds(context);
            foreach (var note in context.Notes) output.WriteLine(note);
            Assert.NotEmpty(seeds);
            var problems = new List<string>();
            foreach (var seed in seeds)
            {
                var file = seed.Files.First(f => f.Mutable);
                var input = new FuzzInput(parser, seed.Id, -1, file.Name, file.Bytes, []);
                var outcome = Campaign.Execute(target, seeds, input, Path.Combine(scratch, "case"));
                output.WriteLine($"{seed.Id}: {outcome.Verdict} {outcome.ExceptionType} {outcome.Message}");
                if (outcome.Verdict != Verdict.Accepted) problems.Add($"{seed.Id}: {outcome.Verdict} {outcome.Kind} {outcome.ExceptionType}: {outcome.Message}");
            }
            Assert.True(problems.Count == 0, "seeds must be valid inputs:\n" + string.Join("\n", problems));
        }
        finally
        {
            target.Cleanup();
            TryDelete(scratch);
        }
    }

    [Theory]
    [MemberData(nameof(Parsers))]
    public void MutatedInputsAreAcceptedOrRefusedCleanly(string parser)
    {
        var target = AllTargets.ByName(parser);
        var scratch = Directory.CreateTempSubdirectory($"loupe-fuzz-{parser}-").FullName;
        CampaignResult result;
        try
        {
            var context = SeedContext.Default(Path.Combine(scratch, "seeds"));
            var seeds = target.BuildSeeds(context);
            foreach (var note in context.Notes) output.WriteLine(note);
            output.WriteLine($"{seeds.Count} seeds: {string.Join(", ", seeds.Select(s => s.Id))}");
            result = Campaign.Run(target, seeds, new CampaignOptions { Iterations = Iterations(target), Seed = CampaignSeed, WorkFolder = Path.Combine(scratch, "work") });
        }
        finally
        {
            target.Cleanup();
            TryDelete(scratch);
        }
        output.WriteLine(result.Counts);
        foreach (var error in result.HarnessErrors) output.WriteLine("harness error: " + error);
        if (result.Findings.Count > 0)
        {
            var folder = Path.Combine(Path.GetTempPath(), "loupe-fuzz-failures", parser);
            foreach (var finding in result.Findings)
            {
                var path = Reproducer.Save(folder, "crash", finding.Input, finding.Outcome);
                output.WriteLine(finding.Describe());
                output.WriteLine($"    input saved to {path}");
                if (finding.Outcome.StackHead.Length > 0) output.WriteLine($"    stack: {finding.Outcome.StackHead}");
            }
        }
        Assert.Empty(result.HarnessErrors);
        Assert.True(result.Findings.Count == 0,
            $"{result.Counts}; first failure:\n{result.Findings.FirstOrDefault()?.Describe()}\n(every distinct failure is in the test output)");
    }

    internal static void TryDelete(string folder)
    {
        try { Directory.Delete(folder, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
