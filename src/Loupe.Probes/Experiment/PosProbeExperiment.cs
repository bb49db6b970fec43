using System.Diagnostics;
using Loupe.Models;
using Loupe.Probes.Alignment;
using Loupe.Probes.Classifiers;
using Loupe.Probes.Corpus;
using Loupe.Probes.Harvest;

namespace Loupe.Probes.Experiment;

/// <summary>
/// Does the residual stream encode part of speech? The whole experiment, corpus to scores. Steps:
/// 1. read the sentences of the chosen Brown categories and sample <c>MaxSentences</c> of them (seeded);
/// 2. align each sentence's words to the model's tokens (<see cref="TokenAligner"/>), skipping
///    sentences longer than n_ctx;
/// 3. run the sentences through the model, keeping the labelled tokens' activations at each hook
///    (<see cref="ActivationHarvester"/>);
/// 4. split by sentence, train the probes per hook and score them against the majority baseline
///    (<see cref="ProbeTrainer"/>).
/// </summary>
public static class PosProbeExperiment
{
    /// <exception cref="InputError">A category or hook is unknown, a setting is out of range, or too few sentences remain.</exception>
    /// <exception cref="InputError">The model has no tokenizer.</exception>
    /// <exception cref="InputError">A corpus file is malformed (the message names file and line).</exception>
    /// <param name="model">The model; the probes' products run on its backend.</param>
    /// <param name="corpus">The Brown corpus.</param>
    /// <param name="settings">Sampling, hooks, probes, split and optimiser settings.</param>
    /// <param name="progress">Told each stage's progress.</param>
    /// <param name="deviceFreeBytes">The device's free memory when the model runs on one (see <see cref="ProbeTrainer.Run"/>).</param>
    public static PosProbeResult Run(HookedTransformer model, BrownCorpus corpus, PosProbeSettings? settings = null, IProgress<ProbeProgress>? progress = null,
        long? deviceFreeBytes = null)
    {
        settings ??= new PosProbeSettings();
        Validate(settings);
        var tokenizer = model.Tokenizer ?? throw new InputError($"the model at {model.Source} has no tokenizer; word tags cannot be put on tokens without one");
        var hooks = ActivationHarvester.ResolveHooks(model, settings.Hooks);
        var total = Stopwatch.StartNew();
        var seconds = new Dictionary<string, double>();
        var clock = Stopwatch.StartNew();

        // 1. Read and sample.
        progress?.Report(new ProbeProgress("reading", 0, 1));
        var all = corpus.Sentences(settings.Categories).ToList();
        var chosen = Sample(all, settings.MaxSentences, settings.Seed);
        progress?.Report(new ProbeProgress("reading", 1, 1));
        seconds["reading"] = Lap(clock);

        // 2. Align.
        var aligner = new TokenAligner(tokenizer, settings.LabelPolicy);
        var aligned = aligner.AlignAll(Reporting(chosen, progress), model.Config.NCtx, out var summary);
        seconds["aligning"] = Lap(clock);
        if (aligned.Count < 2)
            throw new InputError($"only {aligned.Count} of {chosen.Count} sentences could be aligned within n_ctx = {model.Config.NCtx}; probing needs at least 2");

        // 3. Cache activations.
        var caching = progress is null ? null : new Relay(done => progress.Report(new ProbeProgress("caching", done, aligned.Count)));
        progress?.Report(new ProbeProgress("caching", 0, aligned.Count));
        var data = ActivationHarvester.Harvest(model, aligned, hooks, new HarvestOptions(settings.BatchSize), caching);
        seconds["caching"] = Lap(clock);

        // 4. Train and score.
        progress?.Report(new ProbeProgress("training", 0, hooks.Count));
        var training = progress is null ? null : new Relay(done => progress.Report(new ProbeProgress("training", done, hooks.Count)));
        var run = ProbeTrainer.Run(data, new ProbeOptions(settings.Probes, settings.Seed, settings.HeldOutFraction, settings.Logistic, settings.MaxParallelism), training, model.Backend, deviceFreeBytes);
        seconds["training"] = Lap(clock);
        seconds["total"] = total.Elapsed.TotalSeconds;
        return new PosProbeResult(model.Source ?? "", corpus.Folder, settings, all.Count, summary, run, seconds);

        static IEnumerable<TaggedSentence> Reporting(List<TaggedSentence> sentences, IProgress<ProbeProgress>? progress)
        {
            for (int i = 0; i < sentences.Count; i++)
            {
                if (progress is not null && i % 256 == 0) progress.Report(new ProbeProgress("aligning", i, sentences.Count));
                yield return sentences[i];
            }
            progress?.Report(new ProbeProgress("aligning", sentences.Count, sentences.Count));
        }
    }

    /// <summary>Checks every setting, so that a bad one fails before any work is done.</summary>
    /// <exception cref="InputError">A setting is out of range (NaN and ±∞ included).</exception>
    public static void Validate(PosProbeSettings settings)
    {
        string? problem =
            settings.MaxSentences is < 2 ? $"at least 2 sentences are needed (got a maximum of {settings.MaxSentences})"
            : !(settings.HeldOutFraction > 0 && settings.HeldOutFraction < 1) ? $"the held-out fraction must be in (0, 1) (got {settings.HeldOutFraction})"
            : (settings.Probes & ProbeKinds.Both) == 0 ? "no probe kind was chosen"
            : !(double.IsFinite(settings.Logistic.L2) && settings.Logistic.L2 >= 0) ? $"the L2 penalty must be ≥ 0 (got {settings.Logistic.L2})"
            : settings.Logistic.MaxIterations < 0 ? $"the iteration budget must be ≥ 0 (got {settings.Logistic.MaxIterations})"
            : settings.BatchSize < 1 ? $"the batch size must be at least 1 (got {settings.BatchSize})"
            : settings.MaxParallelism == 0 || settings.MaxParallelism < -1 ? $"MaxParallelism must be -1 or positive (got {settings.MaxParallelism})"
            : null;
        if (problem is not null) throw new InputError("probe settings: " + problem);
    }

    /// <summary><paramref name="max"/> sentences drawn without replacement (seeded), in their original order; all when max is null or covers them.</summary>
    public static List<TaggedSentence> Sample(IReadOnlyList<TaggedSentence> sentences, int? max, int seed)
    {
        if (max is not int n || n >= sentences.Count) return sentences.ToList();
        var order = Enumerable.Range(0, sentences.Count).ToArray();
        // A different stream from the split's, so sampling and splitting are not correlated.
        var random = new Random(unchecked(seed * -1640531535 + 0x5EED));
        for (int i = 0; i < n; i++)
        {
            int j = i + random.Next(sentences.Count - i);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order.Take(n).Order().Select(i => sentences[i]).ToList();
    }

    static double Lap(Stopwatch clock)
    {
        double s = clock.Elapsed.TotalSeconds;
        clock.Restart();
        return s;
    }

    /// <summary>Reports on the reporting thread (Progress&lt;T&gt; would post to the thread pool); training reports from worker threads.</summary>
    sealed class Relay(Action<int> report) : IProgress<int>
    {
        public void Report(int value) => report(value);
    }
}
