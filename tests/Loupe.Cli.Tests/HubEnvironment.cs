using Loupe.Testing;

namespace Loupe.Cli.Tests;

/// <summary>
/// Points the process's Hugging Face settings (HF_ENDPOINT, HF_HUB_CACHE, HF_TOKEN) at a <see cref="FakeHub"/> and a cache in
/// <paramref name="folder"/>, and puts them back on dispose. Tests that use it run in the "console" collection (one at a time).
/// </summary>
sealed class HubEnvironment(string folder) : IDisposable
{
    static readonly string[] s_variables = ["HF_ENDPOINT", "HF_HUB_CACHE", "HF_TOKEN"];
    readonly string?[] _saved = [.. s_variables.Select(Environment.GetEnvironmentVariable)];

    /// <summary>Serves <paramref name="hub"/> to the CLI, with an empty token and a fresh cache folder.</summary>
    public FakeHub Use(FakeHub hub)
    {
        Environment.SetEnvironmentVariable("HF_ENDPOINT", hub.Endpoint);
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", Path.Combine(folder, "hub-cache"));
        Environment.SetEnvironmentVariable("HF_TOKEN", "");
        return hub;
    }

    public void Dispose()
    {
        for (int i = 0; i < s_variables.Length; i++) Environment.SetEnvironmentVariable(s_variables[i], _saved[i]);
    }
}
