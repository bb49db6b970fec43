using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Weights;

public class AttentionWeightsTests
{
    static readonly int[] Tokens = [82, 87, 74, 39, 5, 17, 113, 42];

    static string Fixture => SharedData.TestData("reference/gpt2");

    /// <summary>q, k, v from the model's own hooks equal ln1(x)·W + b with the weights read here (fused, interleaved, GQA).</summary>
    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("gemma2")]
    public void HeadsReadFromTheModelReproduceItsQueriesKeysAndValues(string family)
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/" + family));
        var w = AttentionWeights.FromModel(model);
        Assert.Equal((model.Config.NLayers, model.Config.NHeads, model.Config.DModel, model.Config.DHead), (w.NLayers, w.NHeads, w.DModel, w.DHead));
        if (family == "gpt2") Assert.NotNull(w.Positions);
        var cache = model.RunWithCache(TokenBatch.Single(Tokens), "blocks.*.ln1.hook_normalized,blocks.*.attn.hook_?").Cache;
        int T = Tokens.Length, D = w.DModel, E = w.DHead, H = w.NHeads, kvH = model.Config.KvHeads;
        for (int l = 0; l < w.NLayers; l++)
        {
            // ln1's output, what attention reads: its hook_normalized is before an RMSNorm's weight (TransformerLens).
            var x = model.Anatomy(l).Ln1.OutputFromNormalized(model.Backend, cache[$"blocks.{l}.ln1.hook_normalized"]).ToCpu().Span; // [1, pos, d_model]
            foreach (var (hook, weights, bias) in new[] { ("q", w.WQ, w.BQ), ("k", w.WK, w.BK), ("v", w.WV, null) })
            {
                var actual = cache[$"blocks.{l}.attn.hook_{hook}"].Span; // [1, pos, head_index or kv_head_index, d_head]
                int heads = hook == "q" ? H : kvH;
                for (int t = 1; t < T; t++)
                    for (int h = 0; h < H; h++)
                        for (int e = 0; e < E; e++)
                        {
                            int stored = hook == "q" ? h : h / (H / kvH);
                            // b_V is not read, so v is compared as a difference between positions.
                            double expected = bias is null ? actual[stored * E + e] : bias[l][h][e];
                            for (int d = 0; d < D; d++) expected += (x[t * D + d] - (bias is null ? x[d] : 0)) * weights[l][h][d * E + e];
                            double got = actual[(t * heads + stored) * E + e];
                            Assert.InRange(got, expected - 1e-4 * (1 + Math.Abs(expected)), expected + 1e-4 * (1 + Math.Abs(expected)));
                        }
            }
        }
    }

    /// <summary>A checkpoint read as a file gives exactly what the loaded model gives.</summary>
    [Fact]
    public void CheckpointReaderAgreesWithTheModel()
    {
        using var model = ModelLoader.LoadFolder(Fixture);
        var fromModel = AttentionWeights.FromModel(model);
        var fromFile = AttentionWeights.FromGpt2Checkpoint(Path.Combine(Fixture, "model.safetensors"));
        Assert.Equal((fromModel.NLayers, fromModel.NHeads, fromModel.DHead), (fromFile.NLayers, fromFile.NHeads, fromFile.DHead));
        for (int l = 0; l < 3; l++)
            for (int h = 0; h < 4; h++)
            {
                Assert.Equal(fromModel.WQ[l][h], fromFile.WQ[l][h]);
                Assert.Equal(fromModel.WK[l][h], fromFile.WK[l][h]);
                Assert.Equal(fromModel.WV[l][h], fromFile.WV[l][h]);
                Assert.Equal(fromModel.WO[l][h], fromFile.WO[l][h]);
                Assert.Equal(fromModel.BK[l][h], fromFile.BK[l][h]);
            }
        Assert.Equal(fromModel.Positions, fromFile.Positions);
    }

    /// <summary>The fixture's tensors with one changed, written as a partial checkpoint beside a config.json (fuzz parser "gpt2-attention").</summary>
    static string Edited(string folder, string tensor, Func<float[], (int[] Shape, float[] Values)> edit, string config = "{\"n_head\": 4}")
    {
        Directory.CreateDirectory(folder);
        using (var full = Loupe.Models.Loading.SafeTensorsFile.Open(Path.Combine(Fixture, "model.safetensors")))
            Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(folder, "attention.safetensors"), full.Names.Select(n =>
            {
                var values = full.GetFloat32(n).ToArray();
                var shape = full.GetInfo(n).Shape.Select(d => (int)d).ToArray();
                if (n == tensor) (shape, values) = edit(values);
                return (n, shape, (ReadOnlyMemory<float>)values);
            }).ToList());
        File.WriteAllText(Path.Combine(folder, "config.json"), config);
        return folder;
    }

    [Fact]
    public void ABadCheckpointTensorOrHeadCountIsRefusedByName()
    {
        string root = Directory.CreateTempSubdirectory("loupe-attention-weights").FullName;
        try
        {
            var nan = Assert.Throws<InputError>(() => AttentionWeights.FromGpt2Checkpoint(Edited(Path.Combine(root, "nan"), "transformer.h.1.attn.c_proj.weight", v => { v[5] = float.NaN; return ([64, 64], v); })));
            Assert.Contains("tensor \"transformer.h.1.attn.c_proj.weight\" element 5", nan.Message);
            var shape = Assert.Throws<InputError>(() => AttentionWeights.FromGpt2Checkpoint(Edited(Path.Combine(root, "shape"), "transformer.h.2.ln_1.weight", v => ([32], v[..32]))));
            Assert.Contains("tensor \"transformer.h.2.ln_1.weight\": expected shape [64]", shape.Message);
            var heads = Assert.Throws<InputError>(() => AttentionWeights.FromGpt2Checkpoint(Edited(Path.Combine(root, "heads"), "", v => ([v.Length], v), "{\"n_head\": \"4\"}")));
            Assert.Contains("'n_head': expected a positive integer", heads.Message);
            Assert.Throws<InputError>(() => AttentionWeights.FromGpt2Checkpoint(Edited(Path.Combine(root, "empty"), "", v => ([v.Length], v), "")));
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    /// <summary>Folded weights applied to the plain normalisation (x − mean)/σ give the model's queries and keys.</summary>
    [Fact]
    public void FoldedLayerNormGivesTheSameQueriesAndKeys()
    {
        using var model = ModelLoader.LoadFolder(Fixture);
        var folded = AttentionWeights.FromModel(model).FoldLayerNorm();
        Assert.Equal(["fold_ln", "center_writing_weights"], folded.Processing);
        var cache = model.RunWithCache(TokenBatch.Single(Tokens), "blocks.*.hook_resid_pre,blocks.*.attn.hook_?").Cache;
        int T = Tokens.Length, D = folded.DModel, E = folded.DHead, H = folded.NHeads;
        for (int l = 0; l < folded.NLayers; l++)
        {
            var resid = cache[$"blocks.{l}.hook_resid_pre"].Span;
            foreach (var (hook, weights, bias) in new[] { ("q", folded.WQ, folded.BQ), ("k", folded.WK, folded.BK) })
            {
                var actual = cache[$"blocks.{l}.attn.hook_{hook}"].Span;
                for (int t = 0; t < T; t++)
                {
                    double mean = 0, variance = 0;
                    for (int d = 0; d < D; d++) mean += resid[t * D + d];
                    mean /= D;
                    for (int d = 0; d < D; d++) variance += (resid[t * D + d] - mean) * (resid[t * D + d] - mean);
                    double sigma = Math.Sqrt(variance / D + folded.NormEps);
                    for (int h = 0; h < H; h++)
                        for (int e = 0; e < E; e++)
                        {
                            double expected = bias[l][h][e];
                            for (int d = 0; d < D; d++) expected += (resid[t * D + d] - mean) / sigma * weights[l][h][d * E + e];
                            Assert.InRange(actual[(t * H + h) * E + e], expected - 1e-4, expected + 1e-4);
                        }
                }
            }
        }
    }

    [Fact]
    public void ACheckpointWithoutAttentionNamesTheMissingTensor()
    {
        string dir = Path.Combine(Path.GetTempPath(), "loupe-weights-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            // A safetensors file holding only wpe: valid file, no attention.
            string header = "{\"transformer.wpe.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
            var bytes = System.Text.Encoding.UTF8.GetBytes(header);
            using (var f = File.Create(Path.Combine(dir, "partial.safetensors")))
            {
                f.Write(BitConverter.GetBytes((long)bytes.Length));
                f.Write(bytes);
                f.Write(new byte[16]);
            }
            var e = Assert.Throws<InputError>(() => AttentionWeights.Load(dir));
            Assert.Contains("transformer.h.0.attn.c_attn.weight", e.Message);
            Assert.Throws<InputError>(() => AttentionWeights.Load(Path.Combine(dir, "nothing-here")));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
