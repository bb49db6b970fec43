using System.Text.Json;
using Loupe.Dictionaries.Crosscoders;
using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// <c>loupe crosscoder diff|eval|train</c>: the diff of a Kissane-layout fixture against its Python statistics, and model
/// diffing end to end on stories260K and a copy whose embeddings of every fourth token carry one added direction.
/// </summary>
[Collection("console")]
public sealed class CrosscoderCliTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("loupe-cli-crosscoder").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void Diff_prints_the_classes_and_writes_every_latent()
    {
        string json = Path.Combine(_root, "diff.json");
        var (code, stdout, err) = RunLoupe("crosscoder", "diff", "--crosscoder", SharedData.TestData("crosscoders/kissane"), "--models", "base,chat", "--out", json);
        Assert.True(code == 0, err);
        Assert.Contains("crosscoder: 2 sources × d 5 × 8 latents, ", err);      // the memory it takes, said before it is allocated
        Assert.Contains("relu crosscoder, 8 latents over 2 sources of width 5: base:blocks.1.hook_resid_pre, chat:blocks.1.hook_resid_pre", stdout);
        Assert.Matches(@"base only\s+2", stdout);
        Assert.Matches(@"chat only\s+1", stdout);
        Assert.Matches(@"dead\s+1", stdout);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(json));
        var latents = doc.RootElement.GetProperty("latents");
        Assert.Equal(8, latents.GetArrayLength());
        Assert.Equal(1.0 / 3, latents[4].GetProperty("relative_norm").GetDouble(), 1e-6);
        Assert.Equal("dead", latents[3].GetProperty("class").GetString());
        Assert.Equal(["base", "chat"], doc.RootElement.GetProperty("sources").EnumerateArray().Select(e => e.GetString()));
    }

    [Fact]
    public void Bad_arguments_are_refused_by_name()
    {
        string cc = SharedData.TestData("crosscoders/kissane");
        AssertRefused(RunLoupe("crosscoder", "diff", "--crosscoder", cc, "--models", "a,b,c"), "--models", "3 labels");
        AssertRefused(RunLoupe("crosscoder", "diff", "--crosscoder", cc, "--input-scales", "1,x"), "--input-scales");
        AssertRefused(RunLoupe("crosscoder", "diff", "--crosscoder", cc, "--only-second-above", "0.05"), "only-second");
        AssertRefused(RunLoupe("crosscoder", "diff", "--crosscoder", _root), "no crosscoder");
        string gpt2 = SharedData.TestData("reference/gpt2");
        AssertRefused(RunLoupe("crosscoder", "eval", "--crosscoder", cc, "--model", gpt2, "--source", "generate:2"), "--model", "LABEL=MODEL");
        AssertRefused(RunLoupe("serve", "--model", gpt2, "--crosscoder", Path.Combine(_root, "missing"), "--port", "0"), "--crosscoder", "does not exist");
        AssertRefused(RunLoupe("crosscoder", "train", "--model", $"a={gpt2}", "--hook", "blocks.1.hook_resid_post", "--d-sae", "8", "--source", "generate:2", "--out", Path.Combine(_root, "x")),
            "--hook", "at least two hooks");
        AssertRefused(RunLoupe("crosscoder", "train", "--model", $"a={gpt2}", "--hook", "blocks.1.hook_resid_post,blocks.1.attn.hook_pattern", "--d-sae", "8", "--source", "generate:2", "--out", Path.Combine(_root, "x")),
            "blocks.1.attn.hook_pattern", "per-position vectors");
    }

    [RequiresSharedFact("models/stories260K")]
    public void Train_eval_and_diff_find_what_the_fine_tune_added()
    {
        string chat = FineTunedStories();
        string cc = Path.Combine(_root, "cc");
        var (code, stdout, err) = RunLoupe("crosscoder", "train", "--model", $"base={SharedData.Require("models/stories260K")}", "--model", $"chat={chat}",
            "--hook", "blocks.0.hook_resid_pre", "--d-sae", "512", "--source", "generate:48", "--context-size", "64", "--max-contexts", "48",
            "--steps", "1500", "--batch-size", "128", "--lr", "3e-3", "--l1", "0.5", "--l1-warmup", "100", "--out", cc);
        Assert.True(code == 0, err);
        Assert.Contains("of activations in memory", err);
        Assert.Contains("wrote", stdout);
        var trained = CrosscoderFiles.Load(cc);
        Assert.Equal([new CrosscoderSource("base", "blocks.0.hook_resid_pre"), new CrosscoderSource("chat", "blocks.0.hook_resid_pre")], trained.Sources);

        string evalJson = Path.Combine(_root, "eval.json");
        (code, stdout, err) = RunLoupe("crosscoder", "eval", "--crosscoder", cc, "--model", $"base={SharedData.Require("models/stories260K")}", "--model", $"chat={chat}",
            "--source", "generate:8", "--seed", "3", "--context-size", "32", "--max-contexts", "8", "--latent-scaling", "exclusive", "--out", evalJson);
        Assert.True(code == 0, err);
        using (var doc = JsonDocument.Parse(File.ReadAllBytes(evalJson)))
        {
            foreach (var s in doc.RootElement.GetProperty("sources").EnumerateArray())
                Assert.True(s.GetProperty("explained_variance").GetDouble() > 0.8, s.ToString());
            foreach (var m in doc.RootElement.GetProperty("models").EnumerateArray())
                Assert.True(m.GetProperty("loss_recovered").GetDouble() > 0.8, m.ToString());
            // every exclusive latent scaled, against its owner's decoder
            var scales = doc.RootElement.GetProperty("latent_scales").EnumerateArray().ToArray();
            Assert.NotEmpty(scales);
            Assert.All(scales, l => Assert.Contains(l.GetProperty("owner").GetString(), new[] { "base", "chat" }));
            Assert.Contains("latent scaling of", stdout);
        }

        string diffJson = Path.Combine(_root, "diff.json");
        (code, stdout, err) = RunLoupe("crosscoder", "diff", "--crosscoder", cc, "--out", diffJson);
        Assert.True(code == 0, err);
        // the added direction is chat's alone: latents only chat uses, (almost) none only base uses
        using var diff = JsonDocument.Parse(File.ReadAllBytes(diffJson));
        int Count(string cls) => diff.RootElement.GetProperty("counts").TryGetProperty(cls, out var v) ? v.GetInt32() : 0;
        Assert.True(Count("chat only") >= 5 && Count("chat only") > 4 * Count("base only"), stdout);

        // a feature store of the crosscoder, read back as any dictionary's
        string db = Path.Combine(_root, "features.db");
        (code, stdout, err) = RunLoupe("crosscoder", "features", "--crosscoder", cc, "--model", $"base={SharedData.Require("models/stories260K")}", "--model", $"chat={chat}",
            "--source", "generate:12", "--context-size", "32", "--max-contexts", "12", "--top", "4", "--out", db);
        Assert.True(code == 0, err);
        Assert.Contains("512 latents over 372 tokens", stdout);
        int latent = diff.RootElement.GetProperty("top").GetProperty("chat only")[0].GetInt32();
        (code, stdout, err) = RunLoupe("features", "top", "--db", db, "-f", latent.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(code == 0, err);
        Assert.Contains($"feature {latent} of 512 at base:blocks.0.hook_resid_pre+chat:blocks.0.hook_resid_pre", stdout);

        // its chat decoder vector steers the base model
        string vector = Path.Combine(_root, "chat-latent.safetensors");
        (code, stdout, err) = RunLoupe("crosscoder", "vector", "--crosscoder", cc, "--latent", latent.ToString(System.Globalization.CultureInfo.InvariantCulture), "--source", "chat", "--out", vector);
        Assert.True(code == 0, err);
        Assert.Contains("(hook blocks.0.hook_resid_pre)", stdout);
        (code, stdout, err) = RunLoupe("steer", "--model", SharedData.Require("models/stories260K"), "--vector", vector, "--coeff", "4", "--prompt", "Once upon a time", "-n", "4");
        Assert.True(code == 0, err);
        AssertRefused(RunLoupe("crosscoder", "vector", "--crosscoder", cc, "--latent", "0", "--source", "assistant", "--out", vector), "--source", "base, chat");
    }

    // stories260K with one random direction (norm 1.5) added to the embedding of every token id ≡ 0 mod 4 from 4 on.
    [RequiresSharedFact("models/stories260K")]
    public void Train_and_eval_on_a_device_write_what_the_cpu_writes()
    {
        string chat = FineTunedStories(), base_ = SharedData.Require("models/stories260K");
        string[] Train(string folder) => ["crosscoder", "train", "--model", $"base={base_}", "--model", $"chat={chat}", "--hook", "blocks.1.hook_resid_post",
            "--d-sae", "64", "--architecture", "batchtopk", "--k", "8", "--source", "generate:8", "--context-size", "16", "--max-contexts", "8",
            "--steps", "40", "--batch-size", "32", "--lr", "3e-3", "--seed", "2", "--out", folder];
        string cpu = Path.Combine(_root, "cpu"), gpu = Path.Combine(_root, "gpu");
        var (code, _, err) = RunLoupe(Train(cpu));
        Assert.True(code == 0, err);
        AssertRefused(RunLoupe(Train(cpu)), "--resume");   // a folder holding a run is continued only when asked
        Assert.True(File.Exists(Path.Combine(cpu, "training_log.jsonl")));
        (code, var stdout, err) = RunLoupe([.. Train(gpu), "--device", "emulated"]);
        Assert.True(code == 0, err);
        Assert.Contains("trained on emulated:", stdout);
        var (a, b) = (CrosscoderFiles.Load(cpu), CrosscoderFiles.Load(gpu));
        Assert.Equal(a.InputScales, b.InputScales);
        Assert.Equal(a.BatchTopKThreshold, b.BatchTopKThreshold, 1e-3 * a.BatchTopKThreshold);
        for (int i = 0; i < a.Dictionary.P.WDec.Length; i++)
            Assert.True(Math.Abs(a.Dictionary.P.WDec[i] - b.Dictionary.P.WDec[i]) <= 1e-3f * (1 + Math.Abs(a.Dictionary.P.WDec[i])), $"W_dec[{i}]");

        // rows read on the fly, all in one window, train exactly as rows held in memory
        string streamed = Path.Combine(_root, "streamed");
        (code, _, err) = RunLoupe([.. Train(streamed), "--on-the-fly", "--contexts-per-window", "8"]);
        Assert.True(code == 0, err);
        Assert.Contains("read on the fly, 8 per window", err);
        Assert.Equal(a.Dictionary.P.WDec, CrosscoderFiles.Load(streamed).Dictionary.P.WDec);

        string[] Eval(string json) => ["crosscoder", "eval", "--crosscoder", cpu, "--model", $"base={base_}", "--model", $"chat={chat}",
            "--source", "generate:4", "--seed", "3", "--context-size", "16", "--max-contexts", "4", "--out", json];
        string cpuJson = Path.Combine(_root, "cpu.json"), gpuJson = Path.Combine(_root, "gpu.json");
        (code, _, err) = RunLoupe(Eval(cpuJson));
        Assert.True(code == 0, err);
        (code, _, err) = RunLoupe([.. Eval(gpuJson), "--device", "emulated"]);
        Assert.True(code == 0, err);
        using var x = JsonDocument.Parse(File.ReadAllBytes(cpuJson));
        using var y = JsonDocument.Parse(File.ReadAllBytes(gpuJson));
        var (xs, ys) = (x.RootElement.GetProperty("sources").EnumerateArray().ToArray(), y.RootElement.GetProperty("sources").EnumerateArray().ToArray());
        for (int s = 0; s < 2; s++)
            Assert.Equal(xs[s].GetProperty("explained_variance").GetDouble(), ys[s].GetProperty("explained_variance").GetDouble(), 1e-4);
        var (xm, ym) = (x.RootElement.GetProperty("models").EnumerateArray().ToArray(), y.RootElement.GetProperty("models").EnumerateArray().ToArray());
        for (int m = 0; m < 2; m++)
            Assert.Equal(xm[m].GetProperty("ce_spliced").GetDouble(), ym[m].GetProperty("ce_spliced").GetDouble(), 1e-4);
    }

    [RequiresSharedFact("models/stories260K")]
    public void Diff_finds_the_direction_the_fine_tune_added_and_writes_steering_vectors()
    {
        string chat = FineTunedStories(), base_ = SharedData.Require("models/stories260K"), output = Path.Combine(_root, "diff");
        var (code, stdout, err) = RunLoupe("diff", "--model", $"base={base_}", "--model", $"chat={chat}", "--hooks", "blocks.0.hook_resid_pre,blocks.3.hook_resid_post",
            "--source", "generate:8", "--context-size", "24", "--max-contexts", "8", "--positions", "3", "--out", output);
        Assert.True(code == 0, err);
        Assert.Contains("chat vs base: mean KL(p_chat ‖ p_base)", stdout);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(output, "diff.json")));
        var result = doc.RootElement.GetProperty("result");
        Assert.True(result.GetProperty("mean_kl").GetDouble() > 0);
        Assert.Equal(20, result.GetProperty("top_positions").GetArrayLength());
        Assert.Contains("loupe serve --diff", stdout);
        // the file reads without the models: every token id it names has its text, as the base model's tokenizer decodes it
        var read = Loupe.Dictionaries.Diffing.ModelDiffFile.Read(output);
        using (var baseModel = Loupe.Models.ModelLoader.LoadFolder(base_))
            foreach (var p in read.Result.TopPositions)
                foreach (int id in p.Before.Append(p.TopA).Append(p.TopB).Append(p.Next).Where(id => id >= 0))
                    Assert.Equal(baseModel.Tokenizer!.Decode([id]), read.TokenStrings[id]);
        // the embedding difference is the added direction itself (FineTunedStories: every fourth token's embedding moved along it)
        var rng = new Random(3);
        var direction = Enumerable.Range(0, 64).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var vector = Loupe.Steering.SteeringVector.Load(Path.Combine(output, "vectors", "blocks.0.hook_resid_pre.safetensors"), "all");
        Assert.Equal("blocks.0.hook_resid_pre", vector.HookName);
        double cos = System.Numerics.Tensors.TensorPrimitives.CosineSimilarity(vector.Direction, direction);
        Assert.True(cos > 0.999, $"cosine {cos}");
        // and it steers: the base model with it added runs through `loupe steer`
        (code, stdout, err) = RunLoupe("steer", "--model", base_, "--prompt", "Once upon a time", "--vector", Path.Combine(output, "vectors", "blocks.0.hook_resid_pre.safetensors") + ":all",
            "--coeff", "4", "--max-new-tokens", "4");
        Assert.True(code == 0, err);
    }

    string FineTunedStories()
    {
        string from = SharedData.Require("models/stories260K"), to = Path.Combine(_root, "stories-chat");
        Directory.CreateDirectory(to);
        foreach (var f in new[] { "config.json", "tokenizer.json" }) File.Copy(Path.Combine(from, f), Path.Combine(to, f));
        var rng = new Random(3);
        var direction = Enumerable.Range(0, 64).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        float scale = 1.5f / System.Numerics.Tensors.TensorPrimitives.Norm(direction);
        var entries = new List<SafeTensorEntry>();
        using (var file = SafeTensorsFile.Open(Path.Combine(from, "model.safetensors")))
            foreach (var name in file.Names)
            {
                var data = file.GetFloat32(name).ToArray();
                if (name == "model.embed_tokens.weight")
                    for (int t = 4; t < 512; t += 4)
                        for (int j = 0; j < 64; j++) data[t * 64 + j] += scale * direction[j];
                entries.Add(SafeTensorEntry.F32(name, [.. file.GetInfo(name).Shape.Select(v => (int)v)], data));
            }
        SafeTensorsWriter.Write(Path.Combine(to, "model.safetensors"), entries);
        return to;
    }
}
