namespace Loupe.Testing;

/// <summary>
/// Locates the read-only <c>shared/</c> folder that sits beside the repository
/// (<c>../shared</c> from the repo root), or <c>LOUPE_SHARED</c> when set.
/// </summary>
public static class SharedData
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string? Root { get; } = FindShared();

    static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Loupe.sln")))
            dir = dir.Parent;
        return dir?.FullName ?? Directory.GetCurrentDirectory();
    }

    static string? FindShared()
    {
        var env = Environment.GetEnvironmentVariable("LOUPE_SHARED");
        if (!string.IsNullOrEmpty(env) && Directory.Exists(env)) return Path.GetFullPath(env);
        var candidate = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));
        return Directory.Exists(candidate) ? candidate : null;
    }

    /// <summary>Full path of <paramref name="relative"/> under shared/, or null when absent.</summary>
    public static string? Path_(string relative)
    {
        if (Root is null) return null;
        var p = Path.Combine(Root, relative);
        return File.Exists(p) || Directory.Exists(p) ? p : null;
    }

    /// <summary>Full path that must exist (callers are guarded by <see cref="RequiresSharedFactAttribute"/>).</summary>
    public static string Require(string relative) =>
        Path_(relative) ?? throw new InvalidOperationException($"shared/{relative} is absent");

    /// <summary>A folder of test data committed in this repository (tests/data/...).</summary>
    public static string TestData(string relative) => Path.Combine(RepoRoot, "tests", "data", relative);
}

/// <summary>A fact that is skipped, with the reason shown, when any of the given shared/ paths is absent.</summary>
public sealed class RequiresSharedFactAttribute : FactAttribute
{
    public RequiresSharedFactAttribute(params string[] relativePaths)
    {
        var missing = relativePaths.Where(p => SharedData.Path_(p) is null).ToArray();
        if (missing.Length > 0)
            Skip = $"needs {string.Join(" and ", missing.Select(p => "../shared/" + p))}, absent on this machine";
    }
}

/// <summary>A theory that is skipped, with the reason shown, when any of the given shared/ paths is absent.</summary>
public sealed class RequiresSharedTheoryAttribute : TheoryAttribute
{
    public RequiresSharedTheoryAttribute(params string[] relativePaths)
    {
        var missing = relativePaths.Where(p => SharedData.Path_(p) is null).ToArray();
        if (missing.Length > 0)
            Skip = $"needs {string.Join(" and ", missing.Select(p => "../shared/" + p))}, which is absent on this machine";
    }
}
