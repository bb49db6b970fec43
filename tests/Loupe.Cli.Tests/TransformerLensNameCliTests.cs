using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary><c>--model pythia-70m</c>: TransformerLens's name loads its hub id (from <see cref="FakeHub"/>), and says so.</summary>
[Collection("console")]
public sealed class TransformerLensNameCliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-tl-name-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void A_transformer_lens_name_loads_the_hub_model_it_stands_for()
    {
        using var environment = new HubEnvironment(_dir);
        using var hub = environment.Use(new FakeHub());
        string fixture = SharedData.TestData(Path.Combine("reference", "gpt_neox"));
        hub.AddRepo("EleutherAI/pythia-70m", new Dictionary<string, byte[]>
        {
            ["config.json"] = File.ReadAllBytes(Path.Combine(fixture, "config.json")),
            ["model.safetensors"] = File.ReadAllBytes(Path.Combine(fixture, "model.safetensors")),
        });

        var run = RunLoupe("info", "--model", "pythia-70m");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("--model pythia-70m: TransformerLens's name for EleutherAI/pythia-70m", run.Err);
        Assert.Contains("gpt_neox", run.Out);
        Assert.True(hub.Count("GET", "pythia-70m") > 0);
    }
}
