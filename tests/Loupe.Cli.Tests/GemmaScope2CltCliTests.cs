using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// <c>loupe attribute --transcoders</c> a Gemma Scope 2 CLT folder (params_layer_ℓ.safetensors, affine skip) on the Gemma 3
/// fixture: the decoders left mapped (said before the work), the graph written; on the emulated device the upload's size said
/// first and the same graph;
/// <c>--decoders memory</c> refused in one line.
/// </summary>
[Collection("console")]
public class GemmaScope2CltCliTests
{
    static readonly string Model = SharedData.TestData(Path.Combine("reference", "gemma3"));
    const string Tokens = "2,37,211,5,88,400,12";

    // A random JumpReLU CLT on the fixture's shape (6 layers, d_model 64), written as Gemma Scope 2 files with a skip path.
    static void WriteClt(string folder)
    {
        const int L = 6, D = 64, F = 16;
        var clt = new CrossLayerTranscoder(new CltShape(L, D, F, D), new JumpReluActivation());
        clt.Initialize(5, decoderNorm: 0.5f);
        var rng = new Random(17);
        for (int l = 0; l < L; l++)
        {
            var wEnc = Enumerable.Range(0, D * F).Select(_ => (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(D) * 2f).ToArray();
            var bEnc = Enumerable.Range(0, F).Select(_ => (float)(rng.NextDouble() * 0.4 - 0.3)).ToArray();
            var wDec = PublishedDictionaryFiles.GemmaScope2CltDecoder(clt.P.WDec[l], l, L, F, D);
            var skip = Enumerable.Range(0, D * D).Select(_ => (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(D) * 0.5f).ToArray();
            PublishedDictionaryFiles.WriteGemmaScope2CltLayer(folder, l, L, D, F, D, wEnc, bEnc, wDec, new float[D], Enumerable.Repeat(0.02f, F).ToArray(), skip);
        }
    }

    [Fact]
    public void Attributes_through_a_Gemma_Scope_2_clt_with_its_decoders_mapped_on_the_cpu_and_the_emulated_device()
    {
        string root = Directory.CreateTempSubdirectory("loupe-gs2-cli").FullName;
        try
        {
            string clt = Path.Combine(root, "clt", "width_1k_l0_small_affine");
            WriteClt(clt);
            string[] args = ["attribute", "--model", Model, "--transcoders", clt, "--tokens", Tokens, "--slug", "gs2", "--max-feature-nodes", "64"];
            var cpu = RunLoupe([.. args, "--out", Path.Combine(root, "cpu")]);
            Assert.True(cpu.Code == 0, cpu.Err);
            Assert.Contains("Gemma Scope 2 cross-layer transcoder", cpu.Err);
            Assert.Contains("left mapped", cpu.Err);
            Assert.True(cpu.Err.IndexOf("left mapped", StringComparison.Ordinal) < cpu.Err.IndexOf("memory ≈", StringComparison.Ordinal), "the load is said before the attribution's estimate");
            var device = RunLoupe([.. args, "--out", Path.Combine(root, "emulated"), "--device", "emulated"]);
            Assert.True(device.Code == 0, device.Err);
            Assert.Contains("the transcoders' weights on emulated: about", device.Err);   // said before the upload
            Assert.DoesNotContain("the transcoders' weights on", cpu.Err);
            var a = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cpu", "gs2.json")))!;
            var b = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "emulated", "gs2.json")))!;
            Assert.Equal(a["nodes"]!.AsArray().Select(n => (string)n!["node_id"]!).Order(), b["nodes"]!.AsArray().Select(n => (string)n!["node_id"]!).Order());
            Assert.True(a["nodes"]!.AsArray().Count > 10);

            var memory = RunLoupe([.. args, "--out", Path.Combine(root, "memory"), "--decoders", "memory"]);
            Assert.Equal(InputErrorExit, memory.Code);
            Assert.Contains("loads with its decoders mapped", memory.Err);
            Assert.DoesNotContain("   at ", memory.Err);
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    const int InputErrorExit = 2;
}
