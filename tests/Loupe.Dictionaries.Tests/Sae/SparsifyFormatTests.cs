using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// EleutherAI sparsify folders (cfg.json + sae.safetensors) written here in sparsify's layout, read by Loupe, and encoded /
/// decoded against sparsify's own definition computed in double from the raw tensors (sparse_coder.py, fused_encoder.py):
/// x_in = x − b_dec unless transcode; top-k of ReLU(x_in·encoder.weightᵀ + encoder.bias); Σ acts·W_dec + b_dec (+ x·W_skipᵀ).
/// </summary>
public sealed class SparsifyFormatTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-sparsify-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    sealed record Raw(int DIn, int DSae, int K, float[] Encoder, float[] EncoderBias, float[] WDec, float[] BDec, float[]? WSkip);

    static float[] Gaussian(int n, Random rng, float scale) => Enumerable.Range(0, n).Select(_ => SparseDictionary.Gaussian(rng) * scale).ToArray();

    // bf16 keeps the top 16 bits of a float32: values rounded to it survive the round trip exactly
    static float[] Bf16Exact(float[] values) => values.Select(v => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(v) & unchecked((int)0xFFFF0000))).ToArray();

    string Write(string hookpoint, Raw raw, JsonObject cfg, bool encoderBf16 = false, bool runConfig = false)
    {
        string folder = Path.Combine(_dir, hookpoint);
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, SparsifyFormat.ConfigFile), cfg.ToJsonString());
        var entries = new List<SafeTensorEntry>();
        if (encoderBf16)
        {
            var bytes = new byte[raw.Encoder.Length * 2];
            for (int i = 0; i < raw.Encoder.Length; i++)
                BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), (ushort)(BitConverter.SingleToUInt32Bits(raw.Encoder[i]) >> 16));
            entries.Add(SafeTensorEntry.Raw("encoder.weight", DType.BF16, [raw.DSae, raw.DIn], bytes));
        }
        else entries.Add(SafeTensorEntry.F32("encoder.weight", [raw.DSae, raw.DIn], raw.Encoder));
        entries.Add(SafeTensorEntry.F32("encoder.bias", [raw.DSae], raw.EncoderBias));
        entries.Add(SafeTensorEntry.F32("W_dec", [raw.DSae, raw.DIn], raw.WDec));
        entries.Add(SafeTensorEntry.F32("b_dec", [raw.DIn], raw.BDec));
        if (raw.WSkip is not null) entries.Add(SafeTensorEntry.F32("W_skip", [raw.DIn, raw.DIn], raw.WSkip));
        SafeTensorsWriter.Write(Path.Combine(folder, SparsifyFormat.WeightsFile), entries);
        if (runConfig) File.WriteAllText(Path.Combine(_dir, "config.json"), """{"model": "EleutherAI/pythia-70m", "batch_size": 8}""");
        return folder;
    }

    static Raw Make(int dIn, int dSae, int k, bool skip, int seed)
    {
        var rng = new Random(seed);
        return new Raw(dIn, dSae, k, Bf16Exact(Gaussian(dSae * dIn, rng, 0.5f)), Gaussian(dSae, rng, 0.1f), Gaussian(dSae * dIn, rng, 0.3f),
            Gaussian(dIn, rng, 0.2f), skip ? Gaussian(dIn * dIn, rng, 0.1f) : null);
    }

    static JsonObject Cfg(Raw raw, bool transcode = false) => new()
    {
        ["activation"] = "topk", ["expansion_factor"] = 32, ["normalize_decoder"] = true, ["num_latents"] = raw.DSae, ["k"] = raw.K,
        ["multi_topk"] = false, ["skip_connection"] = raw.WSkip is not null, ["transcode"] = transcode, ["d_in"] = raw.DIn,
    };

    // sparsify's forward in double, from the raw tensors
    static double[] Reference(Raw raw, float[] x, int rows, bool transcode)
    {
        int d = raw.DIn, n = raw.DSae;
        var y = new double[rows * d];
        for (int r = 0; r < rows; r++)
        {
            var pre = new double[n];
            for (int f = 0; f < n; f++)
            {
                double s = raw.EncoderBias[f];
                for (int j = 0; j < d; j++) s += raw.Encoder[f * d + j] * ((double)x[r * d + j] - (transcode ? 0 : raw.BDec[j]));
                pre[f] = Math.Max(0, s);
            }
            var top = Enumerable.Range(0, n).OrderByDescending(f => pre[f]).Take(raw.K);
            for (int j = 0; j < d; j++) y[r * d + j] = raw.BDec[j];
            foreach (int f in top)
                for (int j = 0; j < d; j++) y[r * d + j] += pre[f] * raw.WDec[f * d + j];
            if (raw.WSkip is not null)
                for (int o = 0; o < d; o++)
                    for (int j = 0; j < d; j++) y[r * d + o] += x[r * d + j] * (double)raw.WSkip[o * d + j];
        }
        return y;
    }

    [Theory]
    [InlineData("layers.3", false, false, "blocks.3.hook_resid_post", "")]
    [InlineData("layers.2.mlp", true, false, "blocks.2.mlp.hook_in", "blocks.2.hook_mlp_out")]
    [InlineData("layers.1.mlp", true, true, "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out")]
    public void ItEncodesAndDecodesAsSparsifyDoes(string hookpoint, bool transcode, bool skip, string hookIn, string hookOut)
    {
        var raw = Make(12, 40, 5, skip, seed: hookpoint.Length);
        string folder = Write(hookpoint, raw, Cfg(raw, transcode), encoderBf16: true, runConfig: true);
        var (dict, cfg) = DictionaryFile.Load(folder);
        Assert.IsType<TopKActivation>(dict.Activation);
        Assert.Equal((12, 40, 12), (dict.Shape.DIn, dict.Shape.DSae, dict.Shape.DOut));
        Assert.Equal(!transcode, dict.Shape.ApplyBDecToInput);
        Assert.Equal(skip, dict.Shape.Skip);
        Assert.Equal((hookIn, hookOut), (cfg.HookName, cfg.HookNameOut));
        Assert.Equal("EleutherAI/pythia-70m", cfg.ModelName);
        Assert.Equal(5, cfg.K);

        const int rows = 9;
        var x = Gaussian(rows * 12, new Random(3), 1f);
        var expected = Reference(raw, x, rows, transcode);
        var actual = dict.Forward(x, rows);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], 1e-4 * (1 + Math.Abs(expected[i])));
        // either file names the folder
        Assert.Equal(dict.P.WEnc, DictionaryFile.Load(Path.Combine(folder, SparsifyFormat.WeightsFile)).Dictionary.P.WEnc);
        Assert.Equal(dict.P.WEnc, DictionaryFile.Load(Path.Combine(folder, SparsifyFormat.ConfigFile)).Dictionary.P.WEnc);
    }

    [Fact]
    public void ARunOfPerLayerTranscodersIsAReplacementModel()
    {
        // sparsify names each folder by its hookpoint: layers.ℓ.mlp, transcoders from the MLP's input to its output
        var raws = Enumerable.Range(0, 3).Select(l => Make(10, 24, 4, skip: l == 1, seed: 20 + l)).ToArray();
        for (int l = 0; l < 3; l++) Write($"layers.{l}.mlp", raws[l], Cfg(raws[l], transcode: true));
        var replacement = Assert.IsType<Loupe.Dictionaries.Transcoders.PerLayerTranscoders>(Loupe.Dictionaries.Transcoders.MlpReplacements.Load(_dir, 3));
        for (int l = 0; l < 3; l++)
        {
            Assert.Equal($"blocks.{l}.mlp.hook_in", replacement.InputHook(l));
            Assert.Equal($"blocks.{l}.hook_mlp_out", replacement.OutputHook(l));
            Assert.Equal(SparsifyFormat.Load(Path.Combine(_dir, $"layers.{l}.mlp")).Dictionary.P.WDec, replacement[l].P.WDec);
            Assert.Equal(l == 1, replacement[l].Shape.Skip);
        }
        var e = Assert.Throws<InputError>(() => Loupe.Dictionaries.Transcoders.MlpReplacements.Load(_dir, 4));
        Assert.Contains("layer 3", e.Message);
    }

    [Fact]
    public void HookpointsMapToTransformerLensHooks()
    {
        Assert.Equal(("blocks.10.hook_resid_post", (string?)null), SparsifyFormat.HooksOf("layers.10", false));
        Assert.Equal(("blocks.10.hook_resid_post", (string?)null), SparsifyFormat.HooksOf("model.layers.10", false));
        Assert.Equal(("blocks.4.hook_resid_post", (string?)null), SparsifyFormat.HooksOf("gpt_neox.layers.4", false));
        Assert.Equal(("blocks.7.hook_resid_post", (string?)null), SparsifyFormat.HooksOf("h.7", false));
        Assert.Equal(("blocks.3.hook_mlp_out", (string?)null), SparsifyFormat.HooksOf("layers.3.mlp", false));
        Assert.Equal(("blocks.3.mlp.hook_in", "blocks.3.hook_mlp_out"), SparsifyFormat.HooksOf("layers.3.mlp", true));
        Assert.Equal(("blocks.5.hook_attn_out", (string?)null), SparsifyFormat.HooksOf("layers.5.self_attn", false));
        Assert.Equal(("hook_embed", (string?)null), SparsifyFormat.HooksOf("embed_tokens", false));
        Assert.Equal(((string?)null, (string?)null), SparsifyFormat.HooksOf("layers.5.mlp.act_fn", false));
    }

    [Fact]
    public void AnUnknownHookpointTakesTheCallersHook()
    {
        var raw = Make(8, 16, 2, false, seed: 4);
        string folder = Write("custom_site", raw, Cfg(raw));
        Assert.Equal("", DictionaryFile.Load(folder).Config.HookName);
        Assert.Equal("blocks.1.hook_resid_pre", DictionaryFile.Load(folder, "blocks.1.hook_resid_pre").Config.HookName);
        // a run's root (hookpoint folders inside) is named as such
        var e = Assert.Throws<FileNotFoundException>(() => DictionaryFile.Load(_dir));
        Assert.Contains("sparsify run", e.Message);
    }

    [Fact]
    public void WhatLoupeCannotEncodeOrAMalformedFileIsRefusedByName()
    {
        var raw = Make(8, 16, 3, false, seed: 5);
        void Refused(Action<JsonObject> edit, string expected, Action<string>? files = null)
        {
            var cfg = Cfg(raw);
            edit(cfg);
            string folder = Write("layers.0", raw, cfg);
            files?.Invoke(folder);
            var error = Assert.Throws<InputError>(() => SparsifyFormat.Load(folder));
            Assert.Contains(expected, error.Message);
            Directory.Delete(folder, true);
        }
        Refused(c => c["activation"] = "groupmax", "groupmax");
        Refused(c => c["signed"] = true, "signed");
        Refused(c => c["embed_skip"] = true, "embed_skip");
        Refused(c => c.Remove("d_in"), "'d_in'");
        Refused(c => c["k"] = 99, "field 'k'");
        Refused(c => c["k"] = "32", "field 'k'");
        Refused(c => c["transcode"] = "yes", "field 'transcode'");
        Refused(c => c["num_latents"] = 20, "encoder.weight");                               // the tensors are [16, 8]
        Refused(c => c["skip_connection"] = true, "skip_connection");                        // on an autoencoder
        Refused(_ => { }, "unexpected tensor 'W_extra'", folder =>
            SafeTensorsWriter.Write(Path.Combine(folder, SparsifyFormat.WeightsFile),
                [SafeTensorEntry.F32("encoder.weight", [16, 8], raw.Encoder), SafeTensorEntry.F32("W_extra", [1], new float[1])]));
        Refused(_ => { }, "tensor 'W_dec' element 7", folder =>
        {
            var bad = (float[])raw.WDec.Clone();
            bad[7] = float.NaN;
            SafeTensorsWriter.Write(Path.Combine(folder, SparsifyFormat.WeightsFile),
                [SafeTensorEntry.F32("encoder.weight", [16, 8], raw.Encoder), SafeTensorEntry.F32("encoder.bias", [16], raw.EncoderBias),
                 SafeTensorEntry.F32("W_dec", [16, 8], bad), SafeTensorEntry.F32("b_dec", [8], raw.BDec)]);
        });
    }
}
