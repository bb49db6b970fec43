using System.Text.Json;
using Loupe.Models.Generation;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Models.Tests.Loading;

/// <summary>
/// torch.save files written by tests/data/pytorch/make_files.py (the Python standard library writing the bytes torch 2.x
/// writes); expected.json holds what Python put in each tensor.
/// </summary>
public class PyTorchCheckpointTests
{
    static string Data(string name) => SharedData.TestData(Path.Combine("pytorch", name));

    public static TheoryData<string, string> Files => new()
    {
        { "state_dict.pt", "pytorch" }, { "checkpoint.pt", "pytorch" }, { "legacy.bin", "pytorch-legacy" },
        { "zip64.pt", "pytorch" }, { "evil.pt", "pytorch" }, { "strided.pt", "pytorch" },
    };

    [Theory, MemberData(nameof(Files))]
    public void Every_tensor_has_the_names_dtype_shape_and_values_python_wrote(string file, string format)
    {
        using var expected = JsonDocument.Parse(File.ReadAllBytes(Data("expected.json")));
        var want = expected.RootElement.GetProperty(file);
        using var f = SafeTensorsFile.Open(Data(file));
        Assert.Equal(format, f.Format);
        Assert.Equal(want.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal), f.Names.Order(StringComparer.Ordinal));
        foreach (var tensor in want.EnumerateObject())
        {
            var info = f.GetInfo(tensor.Name);
            Assert.Equal(tensor.Value.GetProperty("dtype").GetString(), info.DType.ToString());
            Assert.Equal(tensor.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()), info.Shape);
            var values = tensor.Value.GetProperty("values").EnumerateArray().ToArray();
            if (info.DType.IsFloatingPoint())
            {
                var got = f.GetFloat32(tensor.Name).ToArray();
                Assert.Equal(values.Length, got.Length);
                for (int i = 0; i < got.Length; i++)
                    Assert.True(Math.Abs(got[i] - values[i].GetDouble()) <= 1e-7 * Math.Max(1, Math.Abs(values[i].GetDouble())),
                        $"{file} {tensor.Name}[{i}]: {got[i]} vs {values[i].GetDouble()}");
            }
            else
            {
                var got = f.GetInt64(tensor.Name);
                Assert.Equal(values.Select(v => v.ValueKind switch { JsonValueKind.True => 1L, JsonValueKind.False => 0L, _ => v.GetInt64() }), got);
            }
        }
    }

    [Fact]
    public void A_state_dict_keeps_its_order_and_tied_weights_share_their_bytes()
    {
        using var f = SafeTensorsFile.Open(Data("state_dict.pt"));
        Assert.Equal(["embed.weight", "lm_head.weight", "layer.bias"], f.Names.Take(3));
        Assert.Equal(f.GetInfo("embed.weight").Begin, f.GetInfo("lm_head.weight").Begin);
        // A view at storage offset 3 of a [4, 3] storage starts one row (12 bytes) in.
        Assert.Equal(f.GetInfo("layer.whole").Begin + 12, f.GetInfo("layer.rows_1_2").Begin);
        Assert.Empty(f.Ignored);
        Assert.Empty(f.Metadata);
    }

    [Fact]
    public void Strided_views_are_copied_row_major_and_read_like_any_tensor()
    {
        string path = Data("strided.pt");
        using var f = SafeTensorsFile.Open(path);
        // w is the transpose of the first 6 elements of a storage, every_other every other element of it.
        Assert.Equal([0f, 3f, 1f, 4f, 2f, 5f], f.GetFloat32("w").ToArray());
        Assert.Equal([1f, 3f, 5f, 7f, 9f, 11f], f.GetFloat32("every_other").ToArray());
        Assert.Equal([0f, 1f, 2f, 3f, 8f, 9f, 10f, 11f], f.GetFloat32("rows_0_2").ToArray()); // rows copied as runs
        Assert.Equal(24, f.GetBytes("w").Length);
        var row = new float[2];
        f.ReadFloat32(f.GetInfo("w"), 2, row);
        Assert.Equal([1f, 4f], row);
        var streamed = new List<float>();
        f.StreamFloat32(f.GetInfo("half_t"), 4, (_, values) => streamed.AddRange(values.ToArray()));
        Assert.Equal([0f, 1.5f, 0.5f, 2f, 1f, 2.5f], streamed);
    }

    [Fact]
    public void Objects_of_other_classes_are_named_not_built()
    {
        using (var f = SafeTensorsFile.Open(Data("checkpoint.pt")))
            Assert.Equal(["trainer.config.Config"], f.Ignored);

        // evil.pt's pickle calls os.system("touch pwned-by-pickle") when Python loads it; Loupe reads the tensor beside it.
        string marker = Path.Combine(Environment.CurrentDirectory, "pwned-by-pickle");
        using (var f = SafeTensorsFile.Open(Data("evil.pt")))
        {
            Assert.Equal(["w"], f.Names);
            Assert.Single(f.Ignored);
            Assert.Matches("^(posix|os|nt)\\.system$", f.Ignored[0]);
        }
        Assert.False(File.Exists(marker));
    }

    [Theory]
    [InlineData("torchscript.pt", "a TorchScript module (torch.jit.save)")]
    [InlineData("expand.pt", "tensor 'w' (shape [1000, 1000], strides [0, 0]) has more elements than its storage of 1 holds")]
    [InlineData("whole_module.pt", "only objects of other classes (trainer.config.Config): a whole pickled object (torch.save(model))")]
    public void Files_loupe_cannot_read_in_place_are_refused_by_name(string file, string message)
    {
        var e = Assert.Throws<InputError>(() => SafeTensorsFile.Open(Data(file)));
        Assert.Contains(Data(file), e.Message);
        Assert.Contains(message, e.Message);
    }

    [Theory]
    [InlineData("state_dict.pt")]
    [InlineData("legacy.bin")]
    [InlineData("zip64.pt")]
    public void Truncated_or_corrupted_files_give_an_input_error_naming_the_file(string file)
    {
        byte[] bytes = File.ReadAllBytes(Data(file));
        string dir = Directory.CreateTempSubdirectory("loupe-pt-").FullName;
        try
        {
            string path = Path.Combine(dir, file);
            var random = new Random(17);
            for (int trial = 0; trial < 300; trial++)
            {
                byte[] broken;
                if (trial < 100) broken = bytes[..random.Next(bytes.Length)];
                else
                {
                    broken = (byte[])bytes.Clone();
                    for (int k = 0; k < 1 + trial % 4; k++) broken[random.Next(broken.Length)] = (byte)random.Next(256);
                }
                File.WriteAllBytes(path, broken);
                try
                {
                    using var f = SafeTensorsFile.Open(path);
                    foreach (var name in f.Names)
                        if (f.GetInfo(name).DType.IsFloatingPoint()) _ = f.GetFloat32(name);
                        else _ = f.GetInt64(name);
                }
                catch (InputError e)
                {
                    Assert.Contains(path, e.Message);
                }
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void A_plain_pickle_is_not_taken_for_a_safetensors_header()
    {
        string dir = Directory.CreateTempSubdirectory("loupe-pt-").FullName;
        try
        {
            string path = Path.Combine(dir, "plain.pkl");
            File.WriteAllBytes(path, [0x80, 0x02, 0x7d, 0x71, 0x00, 0x2e, 0, 0, 0]); // pickle.dumps({}, protocol=2) + padding
            var e = Assert.Throws<InputError>(() => SafeTensorsFile.Open(path));
            Assert.Contains("a Python pickle, but not one torch.save wrote", e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void A_sharded_pytorch_model_bin_folder_opens_through_its_index()
    {
        using var checkpoint = SafeTensorsCheckpoint.Open(Data("stories260K-bin"));
        Assert.True(checkpoint.IsSharded);
        Assert.EndsWith("pytorch_model.bin.index.json", checkpoint.Path);
        Assert.Equal(2, checkpoint.Files.Count);
        Assert.Equal("pytorch", checkpoint.FileOf("lm_head.weight").Format);
        Assert.Equal([512L, 64], checkpoint.GetInfo("model.embed_tokens.weight").Shape);
    }

    [Fact]
    public void Stories260K_from_pytorch_model_bin_shards_tells_its_story()
    {
        using var model = ModelLoader.LoadFolder(Data("stories260K-bin"));
        var prompt = model.Tokenizer!.Encode("Once upon a time");
        var ids = model.Generate([prompt], new GenerationOptions(40))[0];
        Assert.StartsWith(", there was a little girl named Lily. She loved to play outside in the park",
            model.Tokenizer.Decode(ids, skipSpecialTokens: true));
    }

    [RequiresSharedFact("models/stories260K/model.safetensors")]
    public void The_model_from_pytorch_model_bin_shards_gives_the_logits_of_the_safetensors_model()
    {
        int[] tokens = [1, 403, 407, 261, 378, 11, 395, 280, 261, 338];
        using var fromBin = ModelLoader.LoadFolder(Data("stories260K-bin"));
        using var fromSafetensors = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var a = fromBin.Run(tokens).Logits.ToCpu().Span.ToArray();
        var b = fromSafetensors.Run(tokens).Logits.ToCpu().Span.ToArray();
        Assert.Equal(b.Length, a.Length);
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-6f, $"logit {i}: {a[i]} vs {b[i]}");
    }
}
