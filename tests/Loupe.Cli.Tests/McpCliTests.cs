using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe mcp</c> refuses what it cannot serve before it starts (the protocol itself is tested in Loupe.Mcp.Tests).</summary>
[Collection("console")]
public class McpCliTests
{
    static readonly string Model = SharedData.TestData(Path.Combine("reference", "gpt2"));

    [Fact]
    public void Refuses_missing_folders_and_bad_ports()
    {
        string missing = Path.Combine(Path.GetTempPath(), "loupe-mcp-missing-" + Guid.NewGuid().ToString("N"));
        AssertRefused(RunLoupe("mcp", "--model", Model, "--sae", missing), "--sae", "folder not found");
        AssertRefused(RunLoupe("mcp", "--model", Model, "--transcoders", missing), "--transcoders");
        AssertRefused(RunLoupe("mcp", "--model", Model, "--artifacts", missing), "--artifacts");
        AssertRefused(RunLoupe("mcp", "--model", Model, "--http", "70000"), "--http");
        AssertRefused(RunLoupe("mcp", "--model", Model, "--explainer-url", "http://127.0.0.1:9/v1"), "--explainer-model");
        AssertRefused(RunLoupe("mcp", "--model", Model, "--explainer-url", "http://127.0.0.1:9/v1", "--explainer-model", "m", "--explainer-concurrency", "0"), "explainer");
        var (_, stdout, _) = RunLoupe("mcp", "--help");
        Assert.Contains("Examples:", stdout);
        Assert.Contains("loupe mcp", stdout);
    }
}
