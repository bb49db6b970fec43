using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// Files Loupe writes that name hooks say what the names mean (<c>loupe_hooks: transformer_lens</c>), so a later change of
/// meaning can be told apart; a file naming meanings this Loupe does not know is refused, naming the file and the field.
/// </summary>
public sealed class HookSemanticsTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-hook-semantics-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static SparseDictionary Sae()
    {
        var d = new SparseDictionary(SaeShape.Sae(8, 12), new ReluActivation());
        d.Initialize(1, decoderNorm: 0.5f);
        return d;
    }

    [Fact]
    public void A_saelens_cfg_json_says_its_hooks_are_transformer_lenss_and_an_unknown_meaning_is_refused()
    {
        string folder = Path.Combine(_dir, "sae");
        SaeLensFormat.Save(folder, Sae(), new SaeLensConfig { HookName = "blocks.1.ln2.hook_normalized", HookLayer = 1 });
        string cfg = Path.Combine(folder, "cfg.json");
        var json = JsonNode.Parse(File.ReadAllText(cfg))!.AsObject();
        Assert.Equal(HookNames.Semantics, (string)json["metadata"]![HookNames.SemanticsKey]!);
        Assert.Equal("blocks.1.ln2.hook_normalized", SaeLensFormat.Load(folder).Config.HookName);

        // Files without the key (SAELens's own, older Loupe's) read as before.
        json.Remove(HookNames.SemanticsKey);
        json["metadata"]!.AsObject().Remove(HookNames.SemanticsKey);
        File.WriteAllText(cfg, json.ToJsonString());
        Assert.Equal("blocks.1.ln2.hook_normalized", SaeLensFormat.Load(folder).Config.HookName);

        json["metadata"]![HookNames.SemanticsKey] = "loupe_v3";
        File.WriteAllText(cfg, json.ToJsonString());
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(folder));
        Assert.Contains(cfg, e.Message);
        Assert.Contains("'loupe_hooks' is 'loupe_v3'", e.Message);
    }

    [Fact]
    public void A_circuit_tracer_config_naming_an_unknown_meaning_is_refused()
    {
        var tc = new CircuitTracerTranscoders([.. Enumerable.Range(0, 2).Select(l =>
        {
            var d = new SparseDictionary(SaeShape.Transcoder(8, 12, 8), new ReluActivation());
            d.Initialize(l + 1, decoderNorm: 0.5f);
            return d;
        })]);
        string folder = Path.Combine(_dir, "plt");
        tc.Save(folder, "test");
        string yaml = Path.Combine(folder, "config.yaml");
        File.WriteAllText(yaml, File.ReadAllText(yaml).Replace("transformer_lens", "loupe_v3", StringComparison.Ordinal));
        var e = Assert.Throws<InputError>(() => CircuitTracerTranscoders.Load(folder));
        Assert.Contains(yaml, e.Message);
        Assert.Contains("loupe_v3", e.Message);

        string clt = Path.Combine(_dir, "clt");
        var c = new CrossLayerTranscoder(new CltShape(2, 8, 12, 8), new ReluActivation());
        c.Initialize(3, decoderNorm: 0.5f);
        CltFiles.SaveCircuitTracer(clt, c, "test");
        string cltYaml = Path.Combine(clt, "config.yaml");
        File.WriteAllText(cltYaml, File.ReadAllText(cltYaml).Replace("transformer_lens", "loupe_v3", StringComparison.Ordinal));
        Assert.Contains("loupe_v3", Assert.Throws<InputError>(() => CltFiles.LoadCircuitTracer(clt)).Message);
    }
}
