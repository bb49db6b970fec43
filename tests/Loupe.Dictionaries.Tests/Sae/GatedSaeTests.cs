using System.Text.Json;
using Loupe.Dictionaries.Sae;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// Gated SAEs read as JumpReLU SAEs. tests/data/saelens/gated was written by make_gated.py beside it, whose expected.json
/// holds the latents and reconstructions of SAELens's GatedSAE.encode/decode transcribed into Python (the gate and the
/// magnitude computed separately, as SAELens does); dictionary_learning's GatedAutoEncoder is checked with the other
/// dictionary_learning classes (DictionaryLearningFormatTests).
/// </summary>
public sealed class GatedSaeTests
{
    static string Folder => SharedData.TestData(Path.Combine("saelens", "gated"));

    static (float[] X, float[] Latents, float[] Recon, float[] Theta) Expected()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Folder, "expected.json")));
        var root = doc.RootElement;
        float[] Flat(string field) => [.. root.GetProperty(field).EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => (float)v.GetDouble())];
        return (Flat("x"), Flat("latents"), Flat("recon"), [.. root.GetProperty("jumprelu_threshold").EnumerateArray().Select(v => (float)v.GetDouble())]);
    }

    static void AssertClose(float[] want, float[] got, string what)
    {
        Assert.Equal(want.Length, got.Length);
        for (int i = 0; i < want.Length; i++)
            Assert.True(Math.Abs(got[i] - want[i]) <= 1e-5 * (1 + Math.Abs(want[i])), $"{what} {i}: {got[i]} vs {want[i]}");
    }

    [Fact]
    public void A_saelens_gated_sae_gives_saelens_latents_and_reconstructions()
    {
        var (x, latents, recon, theta) = Expected();
        var (dict, cfg) = SaeLensFormat.Load(Folder);
        Assert.Equal("gated", cfg.Architecture);
        Assert.Equal("blocks.4.hook_resid_pre", cfg.HookName);
        Assert.IsType<JumpReluActivation>(dict.Activation);
        Assert.True(dict.Shape.ApplyBDecToInput);
        int rows = x.Length / dict.Shape.DIn;
        Assert.Contains(latents, v => v == 0);
        Assert.Contains(latents, v => v > 0);
        Assert.Contains(theta, t => t < 0);            // thresholds below zero are clamped: the magnitude's ReLU decides there
        AssertClose(latents, dict.Encode(x, rows), "latent");
        AssertClose(recon, dict.Forward(x, rows), "recon");
        for (int i = 0; i < theta.Length; i++)
            Assert.Equal(Math.Max(theta[i], 0f), MathF.Exp(dict.P.LogThreshold[i]), 1e-6f);
    }

    [Fact]
    public void Saved_again_it_is_a_jumprelu_sae_with_the_same_latents()
    {
        var (x, latents, _, _) = Expected();
        var (dict, cfg) = SaeLensFormat.Load(Folder);
        string dir = Directory.CreateTempSubdirectory("loupe-gated-").FullName;
        try
        {
            SaeLensFormat.Save(dir, dict, cfg);
            var (again, cfgAgain) = SaeLensFormat.Load(dir);
            Assert.Equal("jumprelu", cfgAgain.Architecture);
            AssertClose(latents, again.Encode(x, x.Length / dict.Shape.DIn), "latent");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void A_gated_sae_without_its_gate_tensors_or_with_a_b_enc_is_refused_by_tensor()
    {
        string dir = Directory.CreateTempSubdirectory("loupe-gated-").FullName;
        try
        {
            File.Copy(Path.Combine(Folder, "cfg.json"), Path.Combine(dir, "cfg.json"));
            using (var file = Loupe.Models.Loading.SafeTensorsFile.Open(Path.Combine(Folder, "sae_weights.safetensors")))
            {
                var all = file.Names.Select(n => (n, file.GetInfo(n).Shape.Select(d => (int)d).ToArray(), file.GetFloat32(n).ToArray())).ToList();
                Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(dir, "sae_weights.safetensors"), [.. all.Where(t => t.n != "r_mag")]);
                var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(dir));
                Assert.Contains("'r_mag'", e.Message);
                Assert.Contains("sae_weights.safetensors", e.Message);

                Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(dir, "sae_weights.safetensors"), [.. all, ("b_enc", [9], new float[9])]);
                e = Assert.Throws<InputError>(() => SaeLensFormat.Load(dir));
                Assert.Contains("'b_enc'", e.Message);
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void The_fold_is_the_gated_encoder_at_the_gate_boundaries_and_refuses_a_scale_float32_cannot_hold()
    {
        // one input, three latents with u = x·W_enc = 1, 1, 1: gate open (b_gate −0.5), gate shut (b_gate −1.5), gate open
        // but magnitude negative (b_mag −3).
        var dict = new SparseDictionary(SaeShape.Sae(1, 3), new JumpReluActivation());
        dict.P.WEnc.AsSpan().Fill(1f);
        float[] rMag = [MathF.Log(2f), 0f, 0f], bGate = [-0.5f, -1.5f, 0f], bMag = [0.25f, 1f, -3f];
        GatedSae.FoldIntoJumpRelu(dict.P, rMag, bGate, bMag, "test.safetensors");
        var acts = dict.Encode([1f], 1);
        Assert.Equal([2.25f, 0f, 0f], acts);                           // 2·1 + 0.25; gated off though 1 + 1 > 0; ReLU'd

        rMag[0] = 100f;
        var e = Assert.Throws<InputError>(() => GatedSae.FoldIntoJumpRelu(dict.P, rMag, bGate, bMag, "test.safetensors"));
        Assert.Contains("r_mag[0]", e.Message);
        Assert.Contains("test.safetensors", e.Message);
    }
}
