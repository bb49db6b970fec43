using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>SAELens's pretrained_saes.yaml, in its own schema (releases, repo_id, conversion_func, saes lists of id/path maps with
/// other keys and nested maps beside them), read into hub paths as SAE.from_pretrained(release, sae_id) resolves them.</summary>
public sealed class SaeLensRegistryTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-saelens-registry").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    // SAELens's schema (tests/data/saelens/pretrained_saes.yaml): list items at the "saes:" key's own indent or deeper, extra
    // scalars, nested maps, a null conversion, quoted values.
    static readonly string Registry = File.ReadAllText(Loupe.Testing.SharedData.TestData(Path.Combine("saelens", "pretrained_saes.yaml")));

    string Write(string text)
    {
        string path = Path.Combine(_dir, "pretrained_saes.yaml");
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Releases_resolve_to_their_hub_folders()
    {
        var registry = SaeLensRegistry.Read(Write(Registry));
        Assert.Equal(["gemma-scope-2b-pt-res-canonical", "gpt2-small-res-jb", "llama_scope_lxr_8x", "pythia-70m-deduped-mlp-sm"], registry.Releases.Order(StringComparer.Ordinal));
        var (spec, release, note) = registry.Resolve("gpt2-small-res-jb/blocks.8.hook_resid_pre");
        Assert.Equal("hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre", spec);
        Assert.Equal("gpt2", release.Model);
        Assert.Null(note);
        Assert.Equal(2, release.Saes.Count);
        (spec, release, note) = registry.Resolve("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical");
        Assert.Equal("hf:google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82", spec);
        Assert.Equal(2, release.Saes.Count); // the nested config_overrides map is not an SAE
        Assert.Equal("layer_0/width_16k/average_l0_105", release.Saes["layer_0/width_16k/canonical"]); // quotes removed
        Assert.Null(note); // gemma_2: Gemma Scope's params.npz, which Loupe reads
        (_, _, note) = registry.Resolve("pythia-70m-deduped-mlp-sm/blocks.0.hook_mlp_out");
        Assert.Null(note); // dictionary_learning_1: ae.pt + config.json, which Loupe reads
        (_, _, note) = registry.Resolve("llama_scope_lxr_8x/l0r_8x");
        Assert.Contains("llama_scope", note);
    }

    [Fact]
    public void Unknown_names_and_broken_files_are_refused_by_name()
    {
        var registry = SaeLensRegistry.Read(Write(Registry));
        Assert.Contains("did you mean gpt2-small-res-jb", Assert.Throws<InputError>(() => registry.Resolve("gpt2-small-res/blocks.8.hook_resid_pre")).Message);
        var error = Assert.Throws<InputError>(() => registry.Resolve("gpt2-small-res-jb/blocks.9.hook_resid_pre")).Message;
        Assert.Contains("no SAE id 'blocks.9.hook_resid_pre'", error);
        Assert.Contains("blocks.8.hook_resid_pre", error);
        Assert.Contains("saelens:RELEASE/SAE_ID", Assert.Throws<InputError>(() => registry.Resolve("gpt2-small-res-jb")).Message);
        Assert.Contains(":2: release broken has no repo_id", Assert.Throws<InputError>(() => SaeLensRegistry.Read(Write("# x\nbroken:\n  model: gpt2\n"))).Message);
        Assert.Contains(":4: an SAE of release r without a path",
            Assert.Throws<InputError>(() => SaeLensRegistry.Read(Write("r:\n  repo_id: a/b\n  saes:\n  - id: x\n"))).Message);
        Assert.Contains("not found", Assert.Throws<InputError>(() => SaeLensRegistry.Read(Path.Combine(_dir, "missing.yaml"))).Message);
    }

    [Fact]
    public void The_environment_variable_names_the_registry()
    {
        string path = Write(Registry);
        string? before = Environment.GetEnvironmentVariable(SaeLensRegistry.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(SaeLensRegistry.EnvironmentVariable, path);
            Assert.Equal(path, SaeLensRegistry.Locate());
        }
        finally { Environment.SetEnvironmentVariable(SaeLensRegistry.EnvironmentVariable, before); }
    }
}
