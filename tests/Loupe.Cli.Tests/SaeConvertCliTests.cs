using Loupe.Dictionaries.Sae;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// <c>loupe sae convert</c>: dictionary_learning folders (tests/data/pytorch, written as torch.save writes them) written in
/// SAELens's layout, read back by SAELens's reader, giving dictionary_learning's own latents (expected.json).
/// </summary>
[Collection("console")]
public sealed class SaeConvertCliTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("loupe-cli-sae-convert").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Theory]
    [InlineData("jumprelu", "jumprelu")]
    [InlineData("batch_topk", "jumprelu")]     // SAELens's inference form of BatchTopK: θ = the learned threshold
    [InlineData("matryoshka", "jumprelu")]
    [InlineData("topk", "topk")]
    [InlineData("standard", "standard")]
    public void A_dictionary_learning_sae_becomes_a_saelens_folder_with_the_same_latents(string name, string architecture)
    {
        string outDir = Path.Combine(_root, name);
        var (code, stdout, err) = RunLoupe("sae", "convert", "--sae", SharedData.TestData($"pytorch/dictionary_learning/{name}"), "--out", outDir);
        Assert.True(code == 0, err);
        Assert.Contains($"{architecture} SAE, d_in 6, d_sae 10", stdout);

        var (dict, cfg) = SaeLensFormat.Load(outDir);
        Assert.Equal(architecture, cfg.Architecture);
        var want = DictionaryLearningExpected.Of(name);
        var x = want.X;
        var latents = dict.Encode(x, x.Length / 6);
        var wantLatents = want.Latents;
        for (int i = 0; i < latents.Length; i++)
            Assert.True(Math.Abs(latents[i] - wantLatents[i]) <= 1e-5 * (1 + Math.Abs(wantLatents[i])), $"{name} latent {i}: {latents[i]} vs {wantLatents[i]}");
    }

    [Fact]
    public void A_dictionary_without_a_hook_needs_one()
    {
        string dir = Path.Combine(_root, "bare");
        Directory.CreateDirectory(dir);
        File.Copy(SharedData.TestData("pytorch/dictionary_learning/standard/ae.pt"), Path.Combine(dir, "ae.pt"));
        AssertRefused(RunLoupe("sae", "convert", "--sae", dir, "--out", Path.Combine(_root, "o1")), "names no hook", "--hook");
        var (code, _, err) = RunLoupe("sae", "convert", "--sae", dir, "--hook", "blocks.2.hook_resid_pre", "--out", Path.Combine(_root, "o2"));
        Assert.True(code == 0, err);
        Assert.Equal("blocks.2.hook_resid_pre", SaeLensFormat.Load(Path.Combine(_root, "o2")).Config.HookName);
    }
}
