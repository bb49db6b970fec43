using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// Which hooks a per-layer SAELens transcoder set may read, named as TransformerLens names them: the MLP's input
/// (<c>mlp.hook_in</c>), <c>ln2.hook_normalized</c>, or the stream before ln2 (<c>hook_resid_mid</c>, and TransformerLens's
/// <c>hook_mlp_in</c>, which its block hooks on <c>resid_mid.clone()</c>, as Loupe's does).
/// </summary>
public sealed class TranscoderInputHookTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-tc-hooks-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string Set(string name, Func<int, string> hookIn)
    {
        string root = Path.Combine(_dir, name);
        for (int l = 0; l < 2; l++)
        {
            var d = new SparseDictionary(SaeShape.Transcoder(8, 6, 8), new ReluActivation());
            d.Initialize(l + 1, decoderNorm: 0.5f);
            SaeLensFormat.Save(Path.Combine(root, $"layer_{l}"), d, new SaeLensConfig { HookName = hookIn(l), HookNameOut = $"blocks.{l}.hook_mlp_out", HookLayer = l });
        }
        return root;
    }

    [Theory]
    [InlineData("blocks.{0}.mlp.hook_in", "blocks.{0}.mlp.hook_in")]
    [InlineData("blocks.{0}.ln2.hook_normalized", "blocks.{0}.ln2.hook_normalized")]
    [InlineData("blocks.{0}.hook_resid_mid", "blocks.{0}.hook_resid_mid")]
    [InlineData("blocks.{0}.hook_mlp_in", "blocks.{0}.hook_mlp_in")]
    public void Each_input_hook_is_kept_as_what_it_reads(string written, string read)
    {
        var set = PerLayerTranscoders.LoadSaeLens(Set("ok", l => string.Format(System.Globalization.CultureInfo.InvariantCulture, written, l)), 2);
        for (int l = 0; l < 2; l++) Assert.Equal(string.Format(System.Globalization.CultureInfo.InvariantCulture, read, l), set.InputHook(l));
    }

    [Fact]
    public void Another_input_hook_is_refused_naming_what_a_replacement_reads()
    {
        var e = Assert.Throws<InputError>(() => PerLayerTranscoders.LoadSaeLens(Set("bad", l => $"blocks.{l}.ln1.hook_normalized"), 2));
        Assert.Contains("blocks.0.ln1.hook_normalized", e.Message);
        Assert.Contains("blocks.0.mlp.hook_in", e.Message);
    }
}
