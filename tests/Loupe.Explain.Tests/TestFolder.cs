namespace Loupe.Explain.Tests;

/// <summary>A temporary folder removed on dispose.</summary>
sealed class TestFolder : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("loupe-explain-").FullName;

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
