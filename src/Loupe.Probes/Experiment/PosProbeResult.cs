using Loupe.Probes.Alignment;
using Loupe.Probes.Classifiers;
using Loupe.Probes.Harvest;

namespace Loupe.Probes.Experiment;

/// <summary>Settings of a part-of-speech probing experiment on the Brown corpus.</summary>
public sealed record PosProbeSettings
{
    /// <summary>Brown categories to read (empty: all).</summary>
    public IReadOnlyList<string> Categories { get; init; } = [];
    /// <summary>Sentences sampled (seeded, without replacement, kept in corpus order); null or ≥ available: all.</summary>
    public int? MaxSentences { get; init; }
    /// <summary>Comma-separated hook globs (default: hook_embed and every block's hook_resid_post).</summary>
    public string Hooks { get; init; } = ActivationHarvester.DefaultHooks;
    public ProbeKinds Probes { get; init; } = ProbeKinds.Both;
    /// <summary>Seeds the sentence sample and the train/held-out split.</summary>
    public int Seed { get; init; }
    public double HeldOutFraction { get; init; } = 0.2;
    public LogisticOptions Logistic { get; init; } = new();
    public LabelPolicy LabelPolicy { get; init; } = LabelPolicy.LastToken;
    public int BatchSize { get; init; } = 32;
    /// <summary>Hooks trained at once (-1: one per core).</summary>
    public int MaxParallelism { get; init; } = -1;
}

/// <summary>Where a running experiment is: a stage and how far through it. Training reports come from worker threads, possibly out of order.</summary>
/// <param name="Stage">"reading", "aligning", "caching" or "training".</param>
/// <param name="Done">Units done (sentences; hooks while training).</param>
/// <param name="Total">Units in the stage.</param>
public readonly record struct ProbeProgress(string Stage, int Done, int Total);

/// <summary>Everything an experiment produced.</summary>
/// <param name="Model">Where the model came from.</param>
/// <param name="Corpus">The corpus folder.</param>
/// <param name="Settings">The settings it ran with.</param>
/// <param name="SentencesRead">Sentences in the chosen categories.</param>
/// <param name="Alignment">What alignment kept and skipped.</param>
/// <param name="Run">The probes and their scores.</param>
/// <param name="Seconds">Wall time per stage (reading, aligning, caching, training, total).</param>
public sealed record PosProbeResult(string Model, string Corpus, PosProbeSettings Settings, int SentencesRead, AlignmentSummary Alignment,
    ProbeRun Run, IReadOnlyDictionary<string, double> Seconds)
{
    /// <summary>Writes <c>probe.json</c> and <c>probe_accuracy.svg</c> into <paramref name="folder"/> (created if needed); returns their paths.</summary>
    public (string Json, string Chart) Save(string folder) => PosProbeReport.Save(folder, this);
}
