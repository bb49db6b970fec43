using Loupe.Models.Generation;

namespace Loupe.Models.Tests;

/// <summary><see cref="GenerationOptions.OnToken"/>: each picked token is reported with its logits, and returning false ends the row.</summary>
public class GenerationStopTests
{
    static readonly int[] Prompt = [82, 87, 74, 39, 184];

    [Fact]
    public void OnTokenSeesEveryTokenWithItsLogitsAndCanStopARow()
    {
        using var model = TestModels.Load("gpt2");
        var full = model.Generate([Prompt], new GenerationOptions(8, StopAtEos: false))[0];

        var seen = new List<GeneratedToken>();
        var logits = new List<float[]>();
        var stopped = model.Generate([Prompt], new GenerationOptions(8, StopAtEos: false, OnToken: t =>
        {
            seen.Add(t);
            logits.Add(t.Logits.ToArray());
            return t.Index < 2; // the third token is the last
        }))[0];

        Assert.Equal(full[..3], stopped);
        Assert.Equal([0, 1, 2], seen.Select(t => t.Index));
        Assert.Equal(stopped, seen.Select(t => t.Token));
        int vocab = model.Config.VocabOut;
        for (int i = 0; i < 3; i++)
        {
            // The logits handed over are those of a full forward pass over prompt + the tokens so far.
            int[] sequence = [.. Prompt, .. stopped[..i]];
            var expected = model.Run(sequence).Logits.Span.Slice((sequence.Length - 1) * vocab, vocab);
            Assert.Equal(vocab, logits[i].Length);
            Assert.True(HookTests.MaxDiff(expected, logits[i]) < 1e-3f, $"token {i}: logits differ by {HookTests.MaxDiff(expected, logits[i])}");
            Assert.Equal(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits[i]), stopped[i]);
        }
    }

    [Fact]
    public void StoppingOneRowLeavesTheOthersRunning()
    {
        using var model = TestModels.Load("llama");
        int[] other = [300, 2, 7];
        var plain = model.Generate([Prompt, other], new GenerationOptions(5, StopAtEos: false));
        var stopped = model.Generate([Prompt, other], new GenerationOptions(5, StopAtEos: false, OnToken: t => t.Row != 0 || t.Index < 1));
        Assert.Equal(plain[0][..2], stopped[0]);
        Assert.Equal(plain[1], stopped[1]);
    }
}
