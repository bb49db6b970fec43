using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Testing;
using System.Numerics.Tensors;
using Xunit.Abstractions;

namespace Loupe.Models.Tests;

/// <summary>The real pretrained models in ../shared/models behave as their README says.</summary>
public class RealModelTests(ITestOutputHelper output)
{
    [RequiresSharedFact("models/stories260K")]
    public void Stories260KContinuesIntoACoherentStory()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var prompt = model.Tokenizer!.Encode("Once upon a time");
        Assert.Equal(1, prompt[0]); // BOS
        var ids = model.Generate([prompt], new GenerationOptions(40))[0];
        string text = model.Tokenizer.Decode(ids, skipSpecialTokens: true);
        output.WriteLine("Once upon a time" + text);
        Assert.StartsWith(", there was a little girl named Lily. She loved to play outside in the park", text);
    }

    [RequiresSharedFact("models/grokking-modadd-p113-main")]
    public void GrokkingModelAddsModulo113OnAllPairs()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/grokking-modadd-p113-main"));
        const int p = 113;
        int correct = 0;
        for (int a = 0; a < p; a++)
        {
            // One batch per a: rows [a, b, 113] for every b.
            var rows = Enumerable.Range(0, p).Select(b => new[] { a, b, p }).ToArray();
            var logits = model.Run(TokenBatch.FromRows(rows)).Logits;
            int V = model.Config.VocabOut;
            for (int b = 0; b < p; b++)
            {
                var last = logits.Span.Slice((b * 3 + 2) * V, p);
                if (TensorPrimitives.IndexOfMax(last) == (a + b) % p) correct++;
            }
        }
        output.WriteLine($"correct on {correct} of {p * p} pairs");
        Assert.Equal(p * p, correct);
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void InductionHeadsAttendToTheTokenAfterTheEarlierOccurrence()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/induction-attn-only-2l"));
        var random = new Random(1234);
        const int sequences = 16;
        var rows = new int[sequences][];
        for (int s = 0; s < sequences; s++)
        {
            var seq = Enumerable.Range(0, 64).Select(_ => random.Next(model.Config.DVocab)).ToArray();
            Array.Copy(seq, 16, seq, 48, 16); // positions 48–63 repeat 16–31
            rows[s] = seq;
        }
        var result = model.RunWithCache(TokenBatch.FromRows(rows), "blocks.*.attn.hook_pattern");
        var pattern = result.Cache[HookNames.Pattern(1)];
        var prev = result.Cache[HookNames.Pattern(0)];
        int H = model.Config.NHeads;
        var induction = new double[H];
        var previousToken = new double[H];
        int count = 0;
        for (int s = 0; s < sequences; s++)
            for (int q = 49; q < 64; q++)
            {
                count++;
                for (int h = 0; h < H; h++) induction[h] += pattern.At(s, h, q, q - 31); // the token after the earlier occurrence
            }
        // The previous-token head is measured on fresh (non-repeated) text: inside the repeat it looks elsewhere.
        int prevCount = 0;
        for (int s = 0; s < sequences; s++)
            for (int q = 1; q < 48; q++, prevCount++)
                for (int h = 0; h < H; h++) previousToken[h] += prev.At(s, h, q, q - 1);
        for (int h = 0; h < H; h++)
            output.WriteLine($"layer 1 head {h}: attention to induction target {induction[h] / count:F3}; layer 0 head {h}: to previous token {previousToken[h] / prevCount:F3}");
        for (int h = 1; h <= 3; h++)
        {
            Assert.True(induction[h] / count > 0.15, $"layer 1 head {h} should be an induction head");
            Assert.True(induction[h] > 2 * induction[0], $"layer 1 head {h} should attend to the induction target more than head 0");
        }
        Assert.Equal(2, Enumerable.Range(0, H).MaxBy(h => previousToken[h]));

        // And the model predicts the repeated tokens far above chance.
        int V = model.Config.VocabOut, right = 0, total = 0;
        for (int s = 0; s < sequences; s++)
            for (int q = 48; q < 63; q++, total++)
                if (TensorPrimitives.IndexOfMax(result.Logits.Span.Slice((s * 64 + q) * V, V)) == rows[s][q + 1]) right++;
        output.WriteLine($"predicted {right} of {total} repeated tokens");
        Assert.True(right > total / 4, $"induction accuracy {right}/{total} should be far above chance");
    }
}
