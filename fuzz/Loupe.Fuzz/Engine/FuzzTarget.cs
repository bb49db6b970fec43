namespace Loupe.Fuzz.Engine;

/// <summary>Where seeds come from and what was skipped (e.g. ../shared absent), shown in the test output.</summary>
public sealed class SeedContext(string? sharedRoot, string repoRoot, string scratch)
{
    /// <summary>The read-only ../shared folder, or null when this machine has none.</summary>
    public string? SharedRoot { get; } = sharedRoot;
    public string RepoRoot { get; } = repoRoot;
    /// <summary>A private folder for building seeds (models, harvests, feature stores) once per campaign.</summary>
    public string Scratch { get; } = scratch;
    public List<string> Notes { get; } = [];
    /// <summary>Also seed with large real files (the GPT-2 vocabulary): slower inputs, for long runs.</summary>
    public bool LargeSeeds { get; init; }

    /// <summary>A path under ../shared, or null (with a note) when it is absent.</summary>
    public string? Shared(string relative)
    {
        if (SharedRoot is null)
        {
            Notes.Add($"seed shared/{relative} skipped: ../shared is absent");
            return null;
        }
        var path = Path.Combine(SharedRoot, relative);
        if (File.Exists(path) || Directory.Exists(path)) return path;
        Notes.Add($"seed shared/{relative} skipped: not found");
        return null;
    }

    public string Repo(string relative) => Path.Combine(RepoRoot, relative);

    /// <summary>The default locations: ../shared beside the repository (or LOUPE_SHARED), the repository found from the program's folder.</summary>
    public static SeedContext Default(string scratch)
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Loupe.sln"))) dir = dir.Parent;
        string repo = dir?.FullName ?? Directory.GetCurrentDirectory();
        string? shared = Environment.GetEnvironmentVariable("LOUPE_SHARED");
        if (string.IsNullOrEmpty(shared) || !Directory.Exists(shared))
        {
            shared = Path.GetFullPath(Path.Combine(repo, "..", "shared"));
            if (!Directory.Exists(shared)) shared = null;
        }
        return new SeedContext(shared, repo, scratch);
    }
}

/// <summary>
/// One parser under test: its seeds, how it is run on a case folder, and its extra (format-specific) mutators.
/// <see cref="Execute"/> throws what the parser throws; its own checks on the result throw <see cref="OracleViolation"/>.
/// </summary>
public abstract class FuzzTarget
{
    public abstract string Name { get; }

    /// <summary>Inputs in the CI run (LOUPE_FUZZ_ITERATIONS overrides): a few thousand for fast parsers, fewer for slow ones.</summary>
    public virtual int DefaultIterations => 2000;

    /// <summary>Per-input time limit; past it the input is reported as a hang.</summary>
    public virtual TimeSpan Timeout => TimeSpan.FromSeconds(5);

    /// <summary>The valid cases mutations start from. Called once per campaign; may be slow (it builds models, harvests, stores).</summary>
    public abstract IReadOnlyList<Seed> BuildSeeds(SeedContext context);

    /// <summary>Runs the parser on <paramref name="folder"/>, which holds the seed's files with <paramref name="input"/>'s file replaced.</summary>
    public abstract void Execute(string folder, FuzzInput input);

    /// <summary>Format-specific mutations for one file of a seed (e.g. catastrophic regexes in tokenizer.json), tried as often as the generic structure-aware ones.</summary>
    public virtual IReadOnlyList<Mutators.NamedMutator> ExtraMutators(SeedFile file) => [];

    /// <summary>Called once after a campaign, e.g. to free a model shared by every input.</summary>
    public virtual void Cleanup() { }
}
