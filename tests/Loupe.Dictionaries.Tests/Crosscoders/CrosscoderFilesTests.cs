using System.Text.Json;
using Loupe.Dictionaries.Crosscoders;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Crosscoders;

/// <summary>
/// Crosscoders written by tests/data/crosscoders/make_crosscoders.py in dictionary_learning's layouts (trainer folder with
/// ae.pt, torch.compile'd names, hub layout, BatchTopK with CROSSCODER and SAE code normalisation, encoder_layers) and in
/// Kissane's, with dictionary_learning's and Kissane's encode/decode transcribed into plain Python; expected.json holds the
/// inputs [rows, sources, d], latents, reconstructions and each latent's decoder statistics.
/// </summary>
public sealed class CrosscoderFilesTests : IDisposable
{
    const int D = 5, F = 8;
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-crosscoder-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    static string Folder(string name) => SharedData.TestData(Path.Combine("crosscoders", name));

    sealed record Expected(float[][] PerSource, int Rows, float[] Latents, float[][] Recon, JsonElement Entry);

    static Expected Of(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedData.TestData("crosscoders/expected.json")));
        var entry = doc.RootElement.GetProperty(name).Clone();
        var x = entry.GetProperty("x").EnumerateArray().ToArray();            // [rows][sources][d]
        int rows = x.Length, n = x[0].GetArrayLength();
        float[][] Split(JsonElement[] rowsOf) =>
            [.. Enumerable.Range(0, n).Select(s => rowsOf.SelectMany(r => r[s].EnumerateArray().Select(v => (float)v.GetDouble())).ToArray())];
        var latents = entry.GetProperty("latents").EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => (float)v.GetDouble()).ToArray();
        return new Expected(Split(x), rows, latents, Split(entry.GetProperty("recon").EnumerateArray().ToArray()), entry);
    }

    public static TheoryData<string, string, int, string> Layouts => new()
    {
        { "dl-relu", "relu", 2, "blocks.2.hook_resid_post" },
        { "dl-compiled", "relu", 2, "" },
        { "dl-batchtopk-hub", "batchtopk", 2, "" },
        { "dl-batchtopk-sae", "batchtopk", 2, "" },
        { "dl-encoder-layers", "relu", 3, "" },
        { "kissane", "relu", 2, "blocks.1.hook_resid_pre" },
    };

    [Theory, MemberData(nameof(Layouts))]
    public void Latents_and_reconstructions_are_the_references(string name, string architecture, int sources, string hook)
    {
        var want = Of(name);
        var cc = CrosscoderFiles.Load(Folder(name));
        Assert.Equal(architecture, cc.Architecture);
        Assert.Equal((sources, D, F), (cc.Sources.Count, cc.Width, cc.DSae));
        Assert.All(cc.Sources, s => Assert.Equal(hook, s.Hook));
        Assert.Equal(Enumerable.Range(0, sources).Select(CrosscoderFiles.DefaultLabel), cc.Sources.Select(s => s.Model));

        var latents = cc.Encode(want.PerSource, want.Rows);
        Assert.Contains(want.Latents, v => v == 0);
        Assert.Contains(want.Latents, v => v > 0);
        for (int i = 0; i < latents.Length; i++)
            Assert.True(Math.Abs(latents[i] - want.Latents[i]) <= 1e-5 * (1 + Math.Abs(want.Latents[i])), $"{name} latent {i}: {latents[i]} vs {want.Latents[i]}");
        var recon = cc.Decode(latents, want.Rows);
        for (int s = 0; s < sources; s++)
            for (int i = 0; i < recon[s].Length; i++)
                Assert.True(Math.Abs(recon[s][i] - want.Recon[s][i]) <= 1e-5 * (1 + Math.Abs(want.Recon[s][i])), $"{name} source {s} recon {i}: {recon[s][i]} vs {want.Recon[s][i]}");
    }

    [Fact]
    public void A_batchtopk_threshold_drops_latents_the_relu_keeps()
    {
        var want = Of("dl-batchtopk-hub");
        var cc = CrosscoderFiles.Load(Folder("dl-batchtopk-hub"));
        Assert.Equal((0.55f, 3, CodeNormalization.Crosscoder), (cc.BatchTopKThreshold, cc.K, cc.CodeNormalization));
        var relu = new SparseDictionary(cc.Dictionary.Shape, new ReluActivation());
        cc.Dictionary.P.CopyTo(relu.P);
        var plain = relu.Encode(cc.Concatenate(want.PerSource, want.Rows), want.Rows);
        Assert.Contains(Enumerable.Range(0, plain.Length), i => plain[i] > 0 && want.Latents[i] == 0);
        Assert.Equal(CodeNormalization.Sae, CrosscoderFiles.Load(Folder("dl-batchtopk-sae")).CodeNormalization);
    }

    [Theory]
    [InlineData("dl-relu")]
    [InlineData("kissane")]
    [InlineData("dl-batchtopk-hub")]
    public void Decoder_statistics_are_the_references(string name)
    {
        var want = Of(name).Entry.GetProperty("diff").EnumerateArray().ToArray();
        var cc = CrosscoderFiles.Load(Folder(name));
        var diff = CrosscoderDiff.Compute(cc);
        Assert.Equal(F, diff.Latents.Count);
        for (int i = 0; i < F; i++)
        {
            var l = diff.Latents[i];
            var w = want[i];
            var norms = w.GetProperty("norms").EnumerateArray().Select(v => v.GetDouble()).ToArray();
            for (int s = 0; s < 2; s++) Assert.True(Math.Abs(l.Norms[s] - norms[s]) <= 1e-5, $"latent {i} norm {s}: {l.Norms[s]} vs {norms[s]}");
            foreach (var (field, got) in new[] { ("relative_norm", l.RelativeNorm), ("norm_diff", l.NormDiff), ("cosine", l.Cosine) })
            {
                var e = w.GetProperty(field);
                if (e.ValueKind == JsonValueKind.Null) Assert.Null(got);
                else Assert.True(got is { } g && Math.Abs(g - e.GetDouble()) <= 1e-5, $"latent {i} {field}: {got} vs {e.GetDouble()}");
            }
        }
        // the fixture's latents 0, 1 write to A only, 2 to B only, 3 nowhere; 4 has B's vector half A's
        Assert.Equal(["A only", "A only", "B only", "dead"], diff.Latents.Take(4).Select(l => l.Class));
        Assert.Equal(1.0 / 3, diff.Latents[4].RelativeNorm!.Value, 1e-6);
        Assert.Equal(0.25, diff.Latents[4].NormDiff!.Value, 1e-6);
        Assert.Equal(1.0, diff.Latents[4].Cosine!.Value, 1e-6);
        Assert.Equal(2, diff.Counts["A only"]);
        Assert.Equal(F - 1, diff.RelativeNormHistogram!.Counts.Sum());
        Assert.Equal([0, 1], diff.Top["A only"]);                             // Δ equal (0): by index
    }

    [Fact]
    public void More_than_two_sources_report_peaks()
    {
        var diff = CrosscoderDiff.Compute(CrosscoderFiles.Load(Folder("dl-encoder-layers")));
        Assert.Equal(["peak A", "peak A", "peak C", "dead"], diff.Latents.Take(4).Select(l => l.Class));
        Assert.Equal(1.0, diff.Latents[0].PeakShare, 1e-6);
        Assert.Null(diff.RelativeNormHistogram);
    }

    [Fact]
    public void Saved_crosscoders_read_back_the_same_and_keep_sources_and_scales()
    {
        foreach (var name in new[] { "dl-relu", "dl-batchtopk-hub" })
        {
            var cc = CrosscoderFiles.Load(Folder(name), new CrosscoderSourceOptions
            {
                Models = ["base", "chat"], Hooks = ["blocks.4.hook_resid_post"], InputScales = [0.5f, 2f],
            });
            string folder = Path.Combine(_dir, name);
            CrosscoderFiles.Save(folder, cc);
            var back = CrosscoderFiles.Load(folder);
            Assert.Equal(cc.Sources, back.Sources);
            Assert.Equal([0.5f, 2f], back.InputScales);
            Assert.Equal(cc.Architecture, back.Architecture);
            Assert.Equal(cc.Dictionary.P.WEnc, back.Dictionary.P.WEnc);
            Assert.Equal(cc.Dictionary.P.WDec, back.Dictionary.P.WDec);
            Assert.Equal(cc.Dictionary.P.BDec, back.Dictionary.P.BDec);
            Assert.Equal(cc.Dictionary.P.LogThreshold, back.Dictionary.P.LogThreshold);
            // config.json holds the constructor's arguments only (the hub mixin passes its keys to __init__)
            var cfg = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!.AsObject();
            Assert.Equal(name == "dl-relu" ? ["activation_dim", "dict_size", "num_layers"] : ["activation_dim", "dict_size", "num_encoder_layers", "k", "code_normalization"],
                cfg.Select(kv => kv.Key));
            // scales: the crosscoder reads c_s·x_s and gives back x̂_s / c_s
            var want = Of(name);
            var scaled = want.PerSource.Select((x, s) => x.Select(v => v / cc.InputScales[s]).ToArray()).ToArray();
            var latents = back.Encode(scaled, want.Rows);
            for (int i = 0; i < latents.Length; i++) Assert.True(Math.Abs(latents[i] - want.Latents[i]) <= 1e-5 * (1 + Math.Abs(want.Latents[i])));
            var recon = back.Decode(latents, want.Rows);
            for (int s = 0; s < 2; s++)
                for (int i = 0; i < recon[s].Length; i++)
                    Assert.True(Math.Abs(recon[s][i] * cc.InputScales[s] - want.Recon[s][i]) <= 1e-5 * (1 + Math.Abs(want.Recon[s][i])));
        }
    }

    [Fact]
    public void A_latents_decoder_vector_is_written_as_a_steering_vector_in_model_units()
    {
        Directory.CreateDirectory(_dir);
        var cc = CrosscoderFiles.Load(Folder("dl-relu"), new CrosscoderSourceOptions { Models = ["base", "chat"], InputScales = [2f, 4f] });
        string path = Path.Combine(_dir, "v.safetensors");
        CrosscoderFiles.SaveDecoderVector(path, cc, 4, 1);
        using (var file = SafeTensorsFile.Open(path))
        {
            Assert.Equal("blocks.2.hook_resid_post", file.Metadata["hook"]);
            Assert.Equal("chat", file.Metadata["model"]);
            var v = file.GetFloat32("direction").ToArray();
            var want = cc.DecoderVector(4, 1).ToArray();
            for (int j = 0; j < D; j++) Assert.Equal(want[j] / 4f, v[j], 1e-7f);
        }
        CrosscoderFiles.SaveDecoderVector(path, cc, 4, 0, unit: true);
        using (var file = SafeTensorsFile.Open(path))
            Assert.Equal(1f, System.Numerics.Tensors.TensorPrimitives.Norm(file.GetFloat32("direction").Span), 1e-6f);
        Assert.Contains("writes nothing there", Assert.Throws<InputError>(() => CrosscoderFiles.SaveDecoderVector(path, cc, 0, 1)).Message);   // latent 0 is base-only
        Assert.Contains("--latent", Assert.Throws<InputError>(() => CrosscoderFiles.SaveDecoderVector(path, cc, F, 0)).Message);
    }

    [Fact]
    public void Bad_files_and_arguments_are_refused_by_name()
    {
        string Copy(string name)
        {
            string to = Path.Combine(_dir, name + "-" + Guid.NewGuid().ToString("N")[..6]);
            Directory.CreateDirectory(to);
            foreach (var f in Directory.GetFiles(Folder(name))) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
            return to;
        }
        // the config disagrees with the weights
        var relu = Copy("dl-relu");
        File.WriteAllText(Path.Combine(relu, "config.json"), File.ReadAllText(Path.Combine(relu, "config.json")).Replace("\"dict_size\": 8", "\"dict_size\": 9"));
        Assert.Contains("dict_size is 9", Assert.Throws<InputError>(() => CrosscoderFiles.Load(relu)).Message);
        // an SAE class
        var sae = Copy("dl-relu");
        File.WriteAllText(Path.Combine(sae, "config.json"), File.ReadAllText(Path.Combine(sae, "config.json")).Replace("\"CrossCoder\"", "\"AutoEncoder\""));
        Assert.Contains("loupe sae", Assert.Throws<InputError>(() => CrosscoderFiles.Load(sae)).Message);
        // a DECOUPLED code, and a threshold training never set
        var decoupled = Copy("dl-batchtopk-hub");
        Rewrite(Path.Combine(decoupled, "model.safetensors"), "code_normalization_id", 5);
        Assert.Contains("DECOUPLED", Assert.Throws<InputError>(() => CrosscoderFiles.Load(decoupled)).Message);
        var unset = Copy("dl-batchtopk-hub");
        Rewrite(Path.Combine(unset, "model.safetensors"), "threshold", -1);
        Assert.Contains("never set by training", Assert.Throws<InputError>(() => CrosscoderFiles.Load(unset)).Message);
        var nan = Copy("dl-batchtopk-hub");
        Rewrite(Path.Combine(nan, "model.safetensors"), "encoder.bias", float.NaN);
        Assert.Contains("'encoder.bias' element 0", Assert.Throws<InputError>(() => CrosscoderFiles.Load(nan)).Message);
        // wrong counts of labels, hooks and scales
        Assert.Contains("--models", Assert.Throws<InputError>(() => CrosscoderFiles.Load(Folder("dl-relu"), new CrosscoderSourceOptions { Models = ["a", "b", "c"] })).Message);
        Assert.Contains("--hooks", Assert.Throws<InputError>(() => CrosscoderFiles.Load(Folder("dl-relu"), new CrosscoderSourceOptions { Hooks = ["blocks.1.hook_resid_post", "x", "y"] })).Message);
        Assert.Contains("--input-scales", Assert.Throws<InputError>(() => CrosscoderFiles.Load(Folder("dl-relu"), new CrosscoderSourceOptions { InputScales = [1f, -1f] })).Message);
        // one label and one hook for two sources: they would repeat
        Assert.Contains("repeat", Assert.Throws<InputError>(() => CrosscoderFiles.Load(Folder("dl-relu"), new CrosscoderSourceOptions { Models = ["gpt2"] })).Message);
        // a one-model crosscoder over two layers
        var layers = CrosscoderFiles.Load(Folder("dl-relu"), new CrosscoderSourceOptions { Models = ["gpt2"], Hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"] });
        Assert.Equal(["gpt2"], layers.Models);
        // a hook that is not a hook name
        Assert.Contains("hook", Assert.Throws<InputError>(() => CrosscoderFiles.Load(Folder("dl-relu"), new CrosscoderSourceOptions { Hooks = ["blocks.1.hook resid"] })).Message);
        // nothing there
        Assert.Contains("no crosscoder", Assert.Throws<InputError>(() => CrosscoderFiles.Load(_dir)).Message);
        Assert.True(CrosscoderFiles.IsCrosscoder(Folder("kissane")));
        Assert.False(CrosscoderFiles.IsCrosscoder(_dir));
        // a model folder (config.json + model.safetensors) and an SAE folder are not crosscoders
        Assert.False(CrosscoderFiles.IsCrosscoder(SharedData.TestData("reference/gpt2")));
        Assert.False(CrosscoderFiles.IsCrosscoder(SharedData.TestData("saelens/gated")));
    }

    // Writes the file again with tensor `name`'s first element replaced (its dtype kept).
    static void Rewrite(string path, string name, double value)
    {
        var entries = new List<Loupe.Models.Loading.SafeTensorEntry>();
        using (var file = Loupe.Models.Loading.SafeTensorsFile.Open(path))
            foreach (var n in file.Names)
            {
                var info = file.GetInfo(n);
                int[] shape = [.. info.Shape.Select(d => (int)d)];
                if (info.DType.IsFloatingPoint())
                {
                    var v = file.GetFloat32(n).ToArray();
                    if (n == name) v[0] = (float)value;
                    entries.Add(Loupe.Models.Loading.SafeTensorEntry.F32(n, shape, v));
                }
                else
                {
                    var v = file.GetInt64(n).ToArray();
                    if (n == name) v[0] = (long)value;
                    entries.Add(Loupe.Models.Loading.SafeTensorEntry.I64(n, shape, v));
                }
            }
        Loupe.Models.Loading.SafeTensorsWriter.Write(path, entries);
    }

    [Fact]
    public void An_sae_loader_points_crosscoders_to_the_crosscoder_verbs()
    {
        var e = Assert.Throws<InputError>(() => DictionaryFile.Load(Folder("dl-relu")));
        Assert.Contains("crosscoder", e.Message);
    }
}
