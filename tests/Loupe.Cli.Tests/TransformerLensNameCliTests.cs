using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>--model pythia-70m</c>: TransformerLens's name loads its hub id (from <see cref="FakeHub"/>), and says so.</summary>
[Collection("console")]
public sealed class TransformerLensNameCliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-tl-name-").FullName;
    readonly string? _endpoint = Environment.GetEnvironmentVariable("HF_ENDPOINT"), _cache = Environment.GetEnvironmentVariable("HF_HUB_CACHE"),
        _token = Environment.GetEnvironmentVariable("HF_TOKEN");

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("HF_ENDPOINT", _endpoint);
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", _cache);
        Environment.SetEnvironmentVariable("HF_TOKEN", _token);
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public void A_transformer_lens_name_loads_the_hub_model_it_stands_for()
    {
        using var hub = new FakeHub();
        string fixture = SharedData.TestData(Path.Combine("reference", "gpt_neox"));
        hub.AddRepo("EleutherAI/pythia-70m", new Dictionary<string, byte[]>
        {
            ["config.json"] = File.ReadAllBytes(Path.Combine(fixture, "config.json")),
            ["model.safetensors"] = File.ReadAllBytes(Path.Combine(fixture, "model.safetensors")),
        });
        Environment.SetEnvironmentVariable("HF_ENDPOINT", hub.Endpoint);
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", Path.Combine(_dir, "hub-cache"));
        Environment.SetEnvironmentVariable("HF_TOKEN", "");

        var run = RunLoupe("info", "--model", "pythia-70m");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("--model pythia-70m: TransformerLens's name for EleutherAI/pythia-70m", run.Err);
        Assert.Contains("gpt_neox", run.Out);
        Assert.True(hub.Count("GET", "pythia-70m") > 0);
    }
}
