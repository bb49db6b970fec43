using Loupe.Circuits.Heads;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Heads;

public class HeadDetectorTests
{
    const string Induction = "models/induction-attn-only-2l";

    // Block [5, 6, 7] repeated, no BOS: positions 0..5, repeated half 3..5.
    static readonly RepeatedTokens s_tiny = new([[5, 6, 7, 5, 6, 7]], HasBos: false, RepeatLength: 3);

    /// <summary>A fake layer pattern [1, heads, 6, 6] whose heads attend exactly where <paramref name="target"/> says (−1 = uniformly over k ≤ q).</summary>
    static float[] FakePattern(params Func<int, int>[] target)
    {
        const int L = 6;
        var p = new float[target.Length * L * L];
        for (int h = 0; h < target.Length; h++)
            for (int q = 0; q < L; q++)
            {
                int k = target[h](q);
                if (k < 0)
                    for (int j = 0; j <= q; j++) p[(h * L + q) * L + j] = 1f / (q + 1);
                else p[(h * L + q) * L + k] = 1;
            }
        return p;
    }

    static void Near(double expected, double actual, double tol = 1e-6) =>
        Assert.InRange(actual, expected - tol - 1e-6 * Math.Abs(expected), expected + tol + 1e-6 * Math.Abs(expected));

    [Fact]
    public void HandMadePatternsScoreAsTheFormulasSay()
    {
        var pattern = FakePattern(
            q => Math.Max(q - 1, 0),            // previous token (position 0 can only attend to itself)
            q => q >= 3 ? q - 3 : q,            // duplicate: earlier occurrence in the repeated half, else itself
            q => q >= 3 ? q - 2 : q,            // induction: the token after the earlier occurrence
            _ => -1);                           // uniform
        var (score, tl) = HeadDetector.ScoreLayer(pattern, 4, s_tiny, new HeadDetectionSettings());
        int prev = (int)HeadKind.PreviousToken, dup = (int)HeadKind.DuplicateToken, ind = (int)HeadKind.Induction;

        Near(1.0, score[prev][0]);
        Near(1.0, score[dup][1]);
        Near(1.0, score[ind][2]);
        // A head that attends to itself in the repeated half does nothing these scores look for.
        Near(0.0, score[ind][1]);
        Near(0.0, score[dup][2]);
        // Uniform head: mean over q = 1..5 of 1/(q+1); over q = 3..5 of 1/(q+1) for the two repeat kinds.
        Near(Enumerable.Range(1, 5).Average(q => 1.0 / (q + 1)), score[prev][3]);
        Near(Enumerable.Range(3, 3).Average(q => 1.0 / (q + 1)), score[ind][3]);

        // TransformerLens "mul": Σ A⊙D / Σ A over every row; row 0 (and the first half for dup/induction) has no target.
        Near(5.0 / 6, tl[prev][0]);
        Near(3.0 / 6, tl[dup][1]);
        Near(3.0 / 6, tl[ind][2]);
        Near(Enumerable.Range(1, 5).Sum(q => 1.0 / (q + 1)) / 6, tl[prev][3]);

        // TransformerLens "abs": 1 − Σ|A − D| / seq_len. The previous-token head misses only row 0 (|1 − 0| there).
        var (_, tlAbs) = HeadDetector.ScoreLayer(pattern, 4, s_tiny, new HeadDetectionSettings { Measure = ErrorMeasure.Abs });
        Near(1 - 1.0 / 6, tlAbs[prev][0]);
        // The induction head misses rows 0..2 (attends to itself: 1 off the pattern, nothing expected there).
        Near(1 - 3.0 / 6, tlAbs[ind][2]);
    }

    [Fact]
    public void DetectionPatternsAreTransformerLenss()
    {
        int[] tokens = [9, 4, 9, 4, 4];
        // Duplicate: k < q with the same token.
        var dup = DetectionPatterns.DuplicateToken(tokens);
        var expectedDup = new (int Q, int K)[] { (2, 0), (3, 1), (4, 1), (4, 3) };
        // Induction: the duplicate pattern shifted one column right; (4, 4) marks the adjacent repeat 4, 4.
        var ind = DetectionPatterns.Induction(tokens);
        var expectedInd = new (int Q, int K)[] { (2, 1), (3, 2), (4, 2), (4, 4) };
        for (int q = 0; q < 5; q++)
            for (int k = 0; k < 5; k++)
            {
                Assert.Equal(expectedDup.Contains((q, k)) ? 1f : 0f, dup[q * 5 + k]);
                Assert.Equal(expectedInd.Contains((q, k)) ? 1f : 0f, ind[q * 5 + k]);
            }
        var prev = DetectionPatterns.PreviousToken(5);
        Assert.Equal(4, prev.Count(v => v == 1));
        Assert.Equal(1f, prev[4 * 5 + 3]);
    }

    [Fact]
    public void SequencesAreSeededRepeatedBlocksWithBos()
    {
        var config = new ModelConfig { Architecture = "gpt2", NLayers = 1, DModel = 8, NHeads = 2, DHead = 4, DVocab = 40, NCtx = 21, BosTokenId = 0, EosTokenId = 0 };
        var a = RepeatedTokens.Generate(config, 10, 3, seed: 7);
        var b = RepeatedTokens.Generate(config, 10, 3, seed: 7);
        Assert.Equal(21, a.Length);
        for (int r = 0; r < 3; r++)
        {
            Assert.Equal(a.Rows[r], b.Rows[r]);
            Assert.Equal(0, a.Rows[r][0]);
            Assert.Equal(a.Rows[r][1..11], a.Rows[r][11..21]);
            Assert.Equal(10, a.Rows[r][1..11].Distinct().Count());
            Assert.DoesNotContain(0, a.Rows[r][1..]);
        }
        // BOS + 2 × 11 = 23 > n_ctx = 21: a clear refusal naming the context.
        var error = Assert.Throws<InputError>(() => RepeatedTokens.Generate(config, 11, 3, seed: 7));
        Assert.Contains("n_ctx = 21", error.Message);
        Assert.Throws<InputError>(() => RepeatedTokens.Generate(config, 1, 3, seed: 7));
    }

    [RequiresSharedFact(Induction)]
    public void InductionModelHasItsKnownHeads()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(Induction));
        var result = HeadDetector.Detect(model, new HeadDetectionSettings { Batch = 16, Seed = 1, MaxCacheBytes = 64 * 1024 });
        Assert.True(result.Passes > 1, "a small cache budget splits the batch into passes");

        var previous = result.Top(HeadKind.PreviousToken, 1)[0];
        Assert.Equal((0, 2), (previous.Layer, previous.Head));
        var induction = result.Top(HeadKind.Induction, 3).Select(t => (t.Layer, t.Head)).OrderBy(t => t.Head).ToArray();
        Assert.Equal(new[] { (1, 1), (1, 2), (1, 3) }, induction);
        // The model card: each induction head puts ≈0.28 of its attention on the token after the earlier occurrence.
        foreach (var h in new[] { 1, 2, 3 })
            Assert.InRange(result[HeadKind.Induction].Score[1][h], 0.15, 0.6);

        // Independently: the induction score of L1H2 from the cached pattern with a plain loop over rows and the repeated half.
        var tokens = result.Tokens;
        var cache = model.RunWithCache(tokens.Slice(0, tokens.Rows.Length), HookNames.Pattern(1)).Cache;
        var pattern = cache[HookNames.Pattern(1)].ToCpu();
        int L = tokens.Length, n = tokens.RepeatLength;
        double sum = 0;
        int count = 0;
        for (int b = 0; b < tokens.Rows.Length; b++)
            for (int q = 0; q < L; q++)
            {
                // Find the earlier occurrence of this token by search, not by the q − n arithmetic the detector uses.
                int earlier = Array.FindIndex(tokens.Rows[b], 0, q, t => t == tokens.Rows[b][q]);
                if (earlier < 0) continue;
                sum += pattern.At(b, 2, q, earlier + 1);
                count++;
            }
        Assert.Equal(tokens.Rows.Length * n, count);
        Near(sum / count, result[HeadKind.Induction].Score[1][2], 1e-5);
    }

    [Fact]
    public void TinyGpt2ScoresAreFiniteAndInRange()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var result = HeadDetector.Detect(model, new HeadDetectionSettings { Batch = 4, RepeatLength = 20 });
        Assert.True(result.Tokens.HasBos);
        Assert.Equal(41, result.Tokens.Length);
        Assert.Equal((3, 4), (result.NLayers, result.NHeads));
        foreach (var s in result.Scores)
            foreach (var v in s.Score.SelectMany(r => r).Concat(s.TransformerLens.SelectMany(r => r)))
            {
                Assert.True(double.IsFinite(v));
                Assert.InRange(v, 0, 1 + 1e-6);
            }
        // Default n fits the context: min(50, (64 − 1) / 2) = 31.
        Assert.Equal(31, HeadDetector.Detect(model, new HeadDetectionSettings { Batch = 1 }).Tokens.RepeatLength);
        Assert.Throws<InputError>(() => HeadDetector.Detect(model, new HeadDetectionSettings { RepeatLength = 32 }));
    }

    [Fact]
    public void ReportsWriteJsonAndOneHeatmapPerKind()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var result = HeadDetector.Detect(model, new HeadDetectionSettings { Batch = 2, RepeatLength = 8 });
        string dir = Path.Combine(Path.GetTempPath(), "loupe-heads-" + Guid.NewGuid().ToString("N"));
        try
        {
            var files = HeadReports.Write(result, dir, "tests/data/reference/gpt2");
            Assert.Equal(["heads.json", "previous_token.svg", "duplicate_token.svg", "induction.svg"], files.Select(Path.GetFileName));
            using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(files[0]));
            var induction = json.RootElement.GetProperty("scores").GetProperty("induction");
            Assert.Equal(3, induction.GetProperty("score").GetArrayLength());
            Assert.Equal(4, induction.GetProperty("transformer_lens")[0].GetArrayLength());
            Assert.Contains("<svg", File.ReadAllText(files[3]));
            Assert.Contains("L2", HeadReports.Table("induction", result[HeadKind.Induction].Score));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
