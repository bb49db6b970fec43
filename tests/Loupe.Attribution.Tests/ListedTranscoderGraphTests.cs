using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Attribution.Tests;

/// <summary>
/// The circuit-tracer fixture's transcoders republished the ways circuit-tracer's presets are (a config.yaml listing one Gemma
/// Scope <c>params.npz</c> or Gemma Scope 2 <c>params.safetensors</c> per layer) give circuit-tracer's adjacency matrix.
/// ReLU is JumpReLU with θ = 0, so the same weights in those layouts are the same transcoders.
/// </summary>
public sealed class ListedTranscoderGraphTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-listed-graph-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("npz", "ln2.hook_normalized")]       // TransformerLens's name: on GPT-2's LayerNorm it is after the affine, as Loupe's
    [InlineData("gemma-scope-2", "mlp.hook_in")]
    public void Listed_files_reproduce_circuit_tracers_adjacency(string layout, string inputHook)
    {
        using var model = FixtureAttributionTests.Model();
        var entries = new List<string>();
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var (d, _) = SaeLensFormat.Load(SharedData.TestData(Path.Combine("attribution", "transcoders", $"layer_{l}")));
            var s = d.Shape;
            var theta = new float[s.DSae];
            if (layout == "npz")
            {
                string file = Path.Combine(_dir, "weights", $"layer_{l}", "width_32", "params.npz");
                PublishedDictionaryFiles.WriteGemmaScopeNpz(file, s.DIn, s.DSae, s.DOut, d.P.WEnc, d.P.BEnc, d.P.WDec, d.P.BDec, theta);
                entries.Add($"../weights/layer_{l}/width_32/params.npz");
            }
            else
            {
                PublishedDictionaryFiles.WriteGemmaScope2(Path.Combine(_dir, "set", $"layer_{l}_width_32_l0_small"), s.DIn, s.DSae, s.DOut, d.P.WEnc, d.P.BEnc, d.P.WDec, d.P.BDec, theta);
                entries.Add($"layer_{l}_width_32_l0_small/params.safetensors");
            }
        }
        Directory.CreateDirectory(Path.Combine(_dir, "set"));
        File.WriteAllText(Path.Combine(_dir, "set", "config.yaml"),
            $"model_kind: transcoder_set\nfeature_input_hook: \"{inputHook}\"\nfeature_output_hook: \"hook_mlp_out\"\ntranscoders:\n" +
            string.Concat(entries.Select(e => $"  - \"{e}\"\n")));
        var transcoders = MlpReplacements.Load(Path.Combine(_dir, "set"), model);
        var graph = new Attributor(model, transcoders, new AttributionSettings()).Attribute(FixtureAttributionTests.Prompt);
        using var reference = SafeTensorsFile.Open(SharedData.TestData(Path.Combine("attribution", "graph.safetensors")));
        var expected = reference.GetFloat32("adjacency_matrix").Span;
        var actual = graph.DenseAdjacency();
        Assert.Equal(expected.Length, actual.Length);
        double worst = 0;
        for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]));
        Assert.True(worst <= 1e-5, $"max |ΔA| = {worst:g3}");
    }
}
