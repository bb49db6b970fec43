using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>The CLI verbs, run in-process with captured output.</summary>
[Collection("console")]
public class CliTests
{

    static string Fixture(string arch) => SharedData.TestData(Path.Combine("reference", arch));

    static string TempFile(string name) => Path.Combine(Directory.CreateTempSubdirectory("loupe-cli").FullName, name);

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("gemma2")]
    public void CacheVerbWritesActivationsThatMatchHuggingFace(string arch)
    {
        using var reference = SafeTensorsFile.Open(Path.Combine(Fixture(arch), "reference.safetensors"));
        var ids = reference.GetInt64("input_ids");
        string tokens = string.Join(";", ids.Chunk(12).Select(row => string.Join(",", row)));
        string output = TempFile("acts.safetensors");
        var (code, _, err) = RunLoupe("cache", "--model", Fixture(arch), "--tokens", tokens,
            "--hooks", "blocks.*.hook_resid_pre,blocks.*.hook_resid_post,blocks.*.attn.hook_pattern", "--out", output);
        Assert.True(code == 0, err);
        using var acts = SafeTensorsFile.Open(output);
        int layers = acts.Names.Count(n => n.EndsWith(".hook_resid_pre", StringComparison.Ordinal));
        Assert.True(layers >= 3);
        Assert.Equal([2L, 12, 512], acts.GetInfo("logits").Shape);
        Assert.Equal([2L, 4, 12, 12], acts.GetInfo("blocks.0.attn.hook_pattern").Shape);
        AssertClose(reference.GetFloat32("logits").Span, acts.GetFloat32("logits").Span, "logits");
        for (int l = 0; l < layers; l++)
        {
            AssertClose(reference.GetFloat32($"resid_pre.{l}").Span, acts.GetFloat32($"blocks.{l}.hook_resid_pre").Span, $"resid_pre.{l}");
            AssertClose(reference.GetFloat32($"resid_post.{l}").Span, acts.GetFloat32($"blocks.{l}.hook_resid_post").Span, $"resid_post.{l}");
            AssertClose(reference.GetFloat32($"attn_probs.{l}").Span, acts.GetFloat32($"blocks.{l}.attn.hook_pattern").Span, $"pattern.{l}");
        }
        Assert.Equal(ids, acts.GetInt64("tokens"));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma2")]
    public void GradVerbWritesGradientsThatMatchHuggingFace(string arch)
    {
        using var reference = SafeTensorsFile.Open(Path.Combine(Fixture(arch), "reference.safetensors"));
        string tokens = string.Join(";", reference.GetInt64("input_ids").Chunk(12).Select(row => string.Join(",", row)));
        string output = TempFile("grads.safetensors");
        var (code, stdout, err) = RunLoupe("grad", "--model", Fixture(arch), "--tokens", tokens, "--metric", "logit_diff:17,42",
            "--hooks", "blocks.*.hook_resid_pre", "--out", output);
        Assert.True(code == 0, err);
        Assert.Contains("metric =", stdout);
        using var grads = SafeTensorsFile.Open(output);
        Assert.Equal(reference.GetFloat32("metric").Span[0], grads.GetFloat32("metric").Span[0], 1e-3f);
        for (int l = 0; grads.Contains($"grad.blocks.{l}.hook_resid_pre"); l++)
        {
            var expected = reference.GetFloat32($"grad.resid_pre.{l}").Span;
            var actual = grads.GetFloat32($"grad.blocks.{l}.hook_resid_pre").Span;
            float scale = 0;
            foreach (var v in expected) scale = MathF.Max(scale, MathF.Abs(v));
            for (int i = 0; i < expected.Length; i++)
                Assert.True(MathF.Abs(expected[i] - actual[i]) <= 1e-4f * scale, $"grad.resid_pre.{l}[{i}]");
        }
    }

    [Fact]
    public void GradVerbRejectsBadMetrics()
    {
        var (code, _, err) = RunLoupe("grad", "--model", Fixture("gpt2"), "--tokens", "1,2,3", "--metric", "entropy", "--hooks", "hook_embed", "--out", TempFile("g.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("unknown --metric 'entropy'", err);
        (code, _, err) = RunLoupe("grad", "--model", Fixture("gpt2"), "--tokens", "1,2,3", "--metric", "logit_diff:17", "--hooks", "hook_embed", "--out", TempFile("g.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("two tokens", err);
        (code, _, err) = RunLoupe("grad", "--model", Fixture("gpt2"), "--tokens", "1,2,3", "--metric", "logit_diff:17,9999", "--hooks", "hook_embed", "--out", TempFile("g.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("9999", err);
    }

    [RequiresSharedFact("models/stories260K")]
    public void MultiTokenAnswersAreRejectedWithTheirTokenization()
    {
        var (code, _, err) = RunLoupe("grad", "--model", SharedData.Require("models/stories260K"), "--prompt", "Once upon a time",
            "--metric", "logit_diff: elephantine, there", "--hooks", "hook_embed", "--out", TempFile("g.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("must be exactly one token", err);
    }

    static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(MathF.Abs(expected[i] - actual[i]) <= 1e-4f, $"{what}[{i}]: expected {expected[i]}, got {actual[i]}");
    }

    [Fact]
    public void CacheVerbRejectsUnknownHooksAndUnevenRows()
    {
        var (code, _, err) = RunLoupe("cache", "--model", Fixture("gpt2"), "--tokens", "1,2,3", "--hooks", "blocks.*.hook_nope", "--out", TempFile("x.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("blocks.*.hook_nope", err);
        (code, _, err) = RunLoupe("cache", "--model", Fixture("gpt2"), "--tokens", "1,2,3;4,5", "--hooks", "hook_embed", "--out", TempFile("x.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("different lengths", err);
        (code, _, err) = RunLoupe("cache", "--model", Fixture("gpt2"), "--tokens", "1,2,99999", "--hooks", "hook_embed", "--out", TempFile("x.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("99999", err);
        (code, _, err) = RunLoupe("cache", "--model", Fixture("gpt2"), "--prompt", "hi", "--hooks", "hook_embed", "--out", TempFile("x.safetensors"));
        Assert.Equal(2, code);
        Assert.Contains("no tokenizer", err);
    }

    [Fact]
    public void InfoListsArchitectureSizesAndHooks()
    {
        var (code, stdout, err) = RunLoupe("info", "--model", Fixture("gemma2"));
        Assert.True(code == 0, err);
        Assert.Contains("architecture: gemma2", stdout);
        Assert.Contains("n_layers 4, d_model 64, n_heads 4 (key/value heads 2)", stdout);
        Assert.Contains("sliding window 4", stdout);
        Assert.Matches(@"parameters:\s+[\d,]+", stdout);
        // Each block's hook points once, with their axes; the kv-head axis at hook_k has the key/value head count.
        Assert.Contains("hook points (123: 30 in each of 4 blocks, 3 outside;", stdout);
        // TransformerLens's per-head inputs: q over heads, k and v over key/value heads, no hook_attn_in (grouped-query attention).
        Assert.Matches(@"\n  blocks\.\{0\.\.3\}\.hook_q_input +\[batch, pos, head_index=4, d_model=64\]\n", stdout);
        Assert.Matches(@"\n  blocks\.\{0\.\.3\}\.hook_v_input +\[batch, pos, head_index=2, d_model=64\]\n", stdout);
        Assert.DoesNotContain("hook_attn_in ", stdout);
        Assert.Contains("name them, e.g. blocks.*.hook_q_input", stdout);
        Assert.Matches(@"\n  blocks\.\{0\.\.3\}\.mlp\.hook_in +\[batch, pos, d_model=64\]\n", stdout);
        Assert.Matches(@"\n  blocks\.\{0\.\.3\}\.attn\.hook_q +\[batch, pos, head_index=4, d_head=16\]\n", stdout);
        Assert.Matches(@"\n  blocks\.\{0\.\.3\}\.attn\.hook_k +\[batch, pos, head_index=2, d_head=16\]\n", stdout);
        Assert.Matches(@"\n  blocks\.\{0\.\.3\}\.ln2_post\.hook_scale +\[batch, pos, 1\]\n", stdout);
        Assert.Matches(@"\n  ln_final\.hook_normalized +\[batch, pos, d_model=64\]\n", stdout);
        Assert.Contains("RMSNorm: *.hook_normalized is x/σ before the norm's weight, as in TransformerLens", stdout);
        Assert.DoesNotContain("blocks.1.", stdout);
    }

    [Fact]
    public void InfoListsMatchingHookPointsOneByOne()
    {
        var (code, stdout, err) = RunLoupe("info", "--model", Fixture("gpt2"), "--hooks", "blocks.2.attn.hook_pattern,blocks.*.mlp.hook_post,hook_pos_embed");
        Assert.True(code == 0, err);
        Assert.DoesNotContain("RMSNorm:", stdout); // a LayerNorm model: hook_normalized is the output
        var listed = stdout[stdout.IndexOf("hook points matching", StringComparison.Ordinal)..].Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("hook points matching blocks.2.attn.hook_pattern,blocks.*.mlp.hook_post,hook_pos_embed (5 of 76):", listed[0]);
        // Forward order, names aligned.
        Assert.Equal(
        [
            "  hook_pos_embed              [batch, pos, d_model=64]",
            "  blocks.0.mlp.hook_post      [batch, pos, d_mlp=256]",
            "  blocks.1.mlp.hook_post      [batch, pos, d_mlp=256]",
            "  blocks.2.attn.hook_pattern  [batch, head_index=4, query_pos, key_pos]",
            "  blocks.2.mlp.hook_post      [batch, pos, d_mlp=256]",
        ], listed[1..]);

        var all = RunLoupe("info", "--model", Fixture("gpt2"), "--hooks", "*");
        Assert.Contains("(64 of 76)", all.Out); // * leaves out the per-head inputs (4 in each of 3 blocks), which must be named
        Assert.Contains("(3 of 76)", RunLoupe("info", "--model", Fixture("gpt2"), "--hooks", "blocks.*.hook_attn_in").Out);
        Assert.Matches(@"\n  blocks\.1\.attn\.hook_result +\[batch, pos, head_index=4, d_model=64\]\n", all.Out);

        var refused = RunLoupe("info", "--model", Fixture("gpt2"), "--hooks", "blocks.9.*");
        AssertRefused(refused, "--hooks", "'blocks.9.*' matches no hook point");
        Assert.DoesNotContain("architecture", refused.Out);
    }

    [Fact]
    public void UnknownModelFolderIsAClearError()
    {
        AssertRefused(RunLoupe("info", "--model", "/no/such/model-folder"), "--model", "/no/such/model-folder", "neither an existing folder");
        string file = Path.Combine(Directory.CreateTempSubdirectory("loupe-cli").FullName, "config.json");
        File.WriteAllText(file, "{}");
        AssertRefused(RunLoupe("info", "--model", file), "--model", "is a file");
    }

    [RequiresSharedFact("models/stories260K")]
    public void RunAndTokenizeOnStories260K()
    {
        string model = SharedData.Require("models/stories260K");
        var (code, stdout, err) = RunLoupe("tokenize", "--model", model, "--text", "Once upon a time, there was a little girl named Lily.");
        Assert.True(code == 0, err);
        Assert.Equal("[1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426]", stdout.Trim());

        (code, stdout, err) = RunLoupe("run", "--model", model, "--prompt", "Once upon a time", "-n", "20");
        Assert.True(code == 0, err);
        Assert.Contains("Top next tokens", stdout);
        Assert.Contains("\",\" (432)", stdout);
        Assert.Contains("Once upon a time, there was a little girl named Lily", stdout);
    }

    [RequiresSharedFact("models/gpt2-tokenizer")]
    public void TokenizeWorksOnATokenizerOnlyFolder()
    {
        var (code, stdout, err) = RunLoupe("tokenize", "--model", SharedData.Require("models/gpt2-tokenizer"), "--text", "Hello world");
        Assert.True(code == 0, err);
        Assert.Equal("[15496, 995]", stdout.Trim());
    }

    [RequiresSharedFact("models/grokking-modadd-p113-main")]
    public void RunWithRawTokensOnATokenizerlessModel()
    {
        var (code, stdout, err) = RunLoupe("run", "--model", SharedData.Require("models/grokking-modadd-p113-main"), "--tokens", "5,17,113", "-n", "1", "--top", "1");
        Assert.True(code == 0, err);
        Assert.Matches(@"%\s+22\s*$", stdout.Trim()); // (5 + 17) mod 113, most likely
        Assert.Contains("generating 0 instead of 1", err);
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void HarvestWritesShardsAndAManifestAndResumes()
    {
        string dir = Path.Combine(Directory.CreateTempSubdirectory("loupe-harvest").FullName, "acts");
        string[] args = ["harvest", "--model", SharedData.Require("models/stories260K"), "--source", "brown:" + SharedData.Require("datasets/brown-corpus"),
            "--hooks", "blocks.2.hook_resid_post", "--context-size", "64", "--max-contexts", "24", "--shard-tokens", "512", "--out", dir];
        var (code, stdout, err) = RunLoupe(args);
        Assert.True(code == 0, err);
        Assert.Contains("1,512 tokens × 1 hooks in 3 shards", stdout); // 24 contexts × 63 tokens (BOS skipped)
        var manifest = File.ReadAllText(Path.Combine(dir, "manifest.json"));
        Assert.Contains("\"complete\": true", manifest);
        var before = Directory.GetFiles(dir).Order().Select(File.ReadAllBytes).ToArray();
        (code, _, err) = RunLoupe(args); // a complete harvest run again changes nothing
        Assert.True(code == 0, err);
        Assert.Equal(before, Directory.GetFiles(dir).Order().Select(File.ReadAllBytes).ToArray());
    }

    [Fact]
    public void HelpShowsExamples()
    {
        foreach (var verb in new[] { "run", "cache", "tokenize", "info", "harvest", "grad" })
        {
            var (_, stdout, _) = RunLoupe(verb, "--help");
            Assert.Contains("Examples:", stdout);
            Assert.Contains("loupe " + verb, stdout);
        }
    }
}

[CollectionDefinition("console", DisableParallelization = true)]
public class ConsoleCollection;
