using System.Diagnostics;
using System.Text.Json;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Probes.Alignment;
using Loupe.Probes.Corpus;
using Loupe.Probes.Experiment;
using Loupe.Probes.Harvest;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Probes.Tests;


/// <summary>The real demonstration: stories260K's residual stream encodes part of speech (Brown tags).</summary>
public class RealProbeTests(ITestOutputHelper output)
{
    const string Model = "models/stories260K", Brown = "datasets/brown-corpus";

    [RequiresSharedFact(Model, Brown)]
    public void LogisticProbeOnStories260KBeatsTheMajorityBaselineByAWideMargin()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(Model));
        var corpus = BrownCorpus.Open(SharedData.Require(Brown));
        var clock = Stopwatch.StartNew();
        var result = PosProbeExperiment.Run(model, corpus, new PosProbeSettings
        {
            Categories = ["news", "fiction", "romance"],
            MaxSentences = 1500,
            Seed = 1,
        });
        var run = result.Run;
        output.WriteLine($"{result.Alignment}; train {run.TrainTokens} tokens / held-out {run.HeldOutTokens}; {clock.Elapsed.TotalSeconds:F1} s " +
                         string.Join(", ", result.Seconds.Select(kv => $"{kv.Key} {kv.Value:F1} s")));
        output.WriteLine($"baseline (always {run.Classes[run.MajorityClass]}): {run.BaselineAccuracy:F3}");
        foreach (var h in run.Hooks)
            output.WriteLine($"{h.Hook,-26} logistic held-out {h.Logistic!.HeldOutAccuracy:F3} (train {h.Logistic.TrainAccuracy:F3}, {h.Logistic.Iterations} it)  " +
                             $"diff-of-means held-out {h.DiffMeans!.HeldOutAccuracy:F3} (train {h.DiffMeans.TrainAccuracy:F3})");
        Assert.Equal(6, run.Hooks.Count); // hook_embed + 5 × resid_post
        Assert.True(run.HeldOutTokens > 3000, $"only {run.HeldOutTokens} held-out tokens");
        Assert.True(run.Best.Logistic!.HeldOutAccuracy >= run.BaselineAccuracy + 0.3,
            $"best logistic held-out accuracy {run.Best.Logistic.HeldOutAccuracy:F3} at {run.Best.Hook} vs baseline {run.BaselineAccuracy:F3}");
        // Every block adds to what the embedding alone tells the probe about part of speech.
        Assert.True(run.Best.Hook != HookNames.Embed, "the best hook is the bare token embedding");

        var (json, chart) = result.Save(Directory.CreateTempSubdirectory("loupe-probe").FullName);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(6, root.GetProperty("layers").GetArrayLength());
        Assert.Equal(run.BaselineAccuracy, root.GetProperty("baseline").GetProperty("held_out_accuracy").GetDouble());
        var matrix = root.GetProperty("best").GetProperty("confusion").GetProperty("matrix");
        Assert.Equal(12, matrix.GetArrayLength());
        Assert.Equal(run.HeldOutTokens, matrix.EnumerateArray().Sum(row => row.EnumerateArray().Sum(v => v.GetInt32())));
        Assert.Equal(1500, root.GetProperty("counts").GetProperty("sentences_sampled").GetInt32());
        Assert.Contains("logistic (held-out)", File.ReadAllText(chart));
    }

    [RequiresSharedFact(Model, Brown)]
    public void UnknownOrNonVectorHooksAndBadSettingsAreRejectedBeforeAnythingRuns()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(Model));
        var corpus = BrownCorpus.Open(SharedData.Require(Brown));
        var unknown = Assert.Throws<InputError>(() => PosProbeExperiment.Run(model, corpus, new PosProbeSettings { Hooks = "blocks.*.hook_nope" }));
        Assert.Contains("blocks.*.hook_nope", unknown.Message);
        var pattern = Assert.Throws<InputError>(() => ActivationHarvester.ResolveHooks(model, "blocks.0.attn.hook_pattern"));
        Assert.Contains("query_pos", pattern.Message);
        Assert.Throws<InputError>(() => PosProbeExperiment.Run(model, corpus, new PosProbeSettings { Categories = ["poetry"], MaxSentences = 10 }));
        Assert.Throws<InputError>(() => PosProbeExperiment.Run(model, corpus, new PosProbeSettings { MaxSentences = 1 }));
        Assert.Contains("held-out fraction", Assert.Throws<InputError>(() => PosProbeExperiment.Run(model, corpus, new PosProbeSettings { HeldOutFraction = 1 })).Message);
        Assert.Contains("held-out fraction", Assert.Throws<InputError>(() => PosProbeExperiment.Run(model, corpus, new PosProbeSettings { HeldOutFraction = double.NaN })).Message);
        Assert.Throws<InputError>(() => PosProbeExperiment.Run(model, corpus, new PosProbeSettings { Logistic = new(L2: -1) }));
        Assert.Throws<InputError>(() => PosProbeExperiment.Run(model, corpus, new PosProbeSettings { Logistic = new(L2: double.PositiveInfinity) }));
        Assert.Equal(["hook_embed", "blocks.0.hook_resid_post", "blocks.4.hook_resid_post"],
            ActivationHarvester.ResolveHooks(model, "blocks.4.hook_resid_post,hook_embed,blocks.0.hook_resid_post")); // forward order
    }

    [RequiresSharedFact(Model, Brown)]
    public void HarvestedActivationsAreTheModelsOwnAndDoNotDependOnBatching()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(Model));
        var sentences = BrownCorpus.Open(SharedData.Require(Brown)).Sentences(["news"]).Take(12).ToList();
        var aligned = new TokenAligner(model.Tokenizer!).AlignAll(sentences, model.Config.NCtx, out _);
        string[] hooks = [HookNames.ResidPost(2)];
        var batched = ActivationHarvester.Harvest(model, aligned, hooks, new HarvestOptions(BatchSize: 5));
        var single = ActivationHarvester.Harvest(model, aligned, hooks, new HarvestOptions(BatchSize: 1));
        // A token budget of two longest sentences: the longest run in pairs (at most), the rest in larger batches.
        int longest = aligned.Max(s => s.Tokens.Length);
        var done = new List<int>();
        var budgeted = ActivationHarvester.Harvest(model, aligned, hooks, new HarvestOptions(BatchSize: 12, BatchTokens: 2 * longest), new Reports(done));
        var sizes = done.Select((n, i) => n - (i == 0 ? 0 : done[i - 1])).ToArray();
        Assert.True(sizes[0] <= 2 && sizes.Length > 1 && sizes.Sum() == aligned.Count, $"batches of {string.Join(", ", sizes)} sentences");
        Assert.Equal(batched.Labels, single.Labels);
        Assert.Equal(budgeted.Labels, single.Labels);
        for (int i = 0; i < batched.Features(0).Length; i++)
        {
            Assert.True(Math.Abs(batched.Features(0)[i] - single.Features(0)[i]) < 1e-4f, $"value {i}: {batched.Features(0)[i]} batched vs {single.Features(0)[i]} alone");
            Assert.True(Math.Abs(budgeted.Features(0)[i] - single.Features(0)[i]) < 1e-4f, $"value {i}: {budgeted.Features(0)[i]} token-budgeted vs {single.Features(0)[i]} alone");
        }
        // Example 0 is sentence 0's first labelled token: compare with a plain cached run of that sentence.
        var direct = model.RunWithCache(TokenBatch.Single(aligned[0].Tokens), hooks[0]).Cache[hooks[0]];
        int d = model.Config.DModel, position = batched.Positions[0];
        Assert.Equal(0, batched.Sentences[0]);
        Assert.Equal(direct.Span.Slice(position * d, d).ToArray(), single.Features(0).AsSpan(0, d).ToArray());
    }

    // Progress<T> reports through the synchronization context, later; the test needs every report, in order.
    sealed class Reports(List<int> into) : IProgress<int>
    {
        public void Report(int value) => into.Add(value);
    }
}
