using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Fuzz.Engine;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// Resuming an SAE training run (<c>loupe sae train --resume</c>): <c>SaeTrainingRun.Run</c> on an output folder holding a
/// killed run's checkpoint.safetensors and training_log.jsonl, which it must continue (to a dictionary with finite weights
/// that loads and encodes) or refuse by name. The seeds are runs of each architecture stopped after 3 of 6 steps.
/// </summary>
public sealed class ResumeTarget : FuzzTarget
{
    public override string Name => "resume";
    public override int DefaultIterations => 1200;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(10);

    string _activations = "";
    const int StepsBefore = 3, Steps = 6, DSae = 32;

    static readonly string[] Architectures = ["standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu"];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        _activations = Path.Combine(context.Scratch, "resume-activations");
        using (var model = PipelineFixtures.LoadModel(context))
            Harvester.Run(model, PipelineFixtures.Contexts(12, 8), _activations, new HarvestOptions([PipelineFixtures.Hook], BatchSize: 4, ShardTokens: 28, SkipBos: true));
        var seeds = new List<Seed>();
        foreach (var arch in Architectures)
        {
            string folder = Path.Combine(context.Scratch, "resume", arch);
            Directory.CreateDirectory(folder);
            // A run of 6 steps killed after its checkpoint at step 3: the checkpoint and the log stay, no dictionary yet.
            using var kill = new CancellationTokenSource();
            try
            {
                SaeTrainingRun.Run(Trainer(arch), Data(), folder, checkpointEvery: 1, resume: false,
                    progress: new StopAfter(StepsBefore, kill), cancellationToken: kill.Token);
                throw new InvalidOperationException($"the {arch} seed run was not stopped after {StepsBefore} steps");
            }
            catch (OperationCanceledException) { }
            var seed = SeedFiles.FromFolder($"generated:resume-{arch}", folder, SaeTrainingRun.CheckpointFile, SaeTrainingRun.LogFile);
            seeds.Add(seed with { Files = [.. seed.Files, new SeedFile("architecture.txt", System.Text.Encoding.UTF8.GetBytes(arch), FileKind.Text, Mutable: false)] });
        }
        return seeds;
    }

    StoreRows Data() => new(ActivationStore.Open(_activations), PipelineFixtures.Hook, seed: 1);

    /// <summary>The trainer the run was started with; the checkpoint stores what it needs to continue it (steps excepted).</summary>
    static SaeTrainer Trainer(string architecture)
    {
        var activation = SaeTrainingOptions.ActivationFor(architecture, 4, DSae, architecture == "matryoshka_batchtopk" ? [4, 12] : null);
        var dict = new SparseDictionary(SaeShape.Sae(64, DSae), activation);
        dict.Initialize(seed: 2);
        return new SaeTrainer(dict, new SaeTrainingOptions
        {
            Steps = Steps, BatchSize = 8, LearningRate = 1e-3f, SparsityCoefficient = activation is TopKActivation or BatchTopKActivation ? 0 : 1f,
            DeadWindowTokens = 64, Seed = 2,
        });
    }

    public override void Execute(string folder, FuzzInput input)
    {
        string architecture = File.ReadAllText(Path.Combine(folder, "architecture.txt"));
        SaeTrainingRun.Run(Trainer(architecture), Data(), folder, checkpointEvery: 1, resume: true);
        DictionaryChecks.EncodeDecode(SaeLensFormat.Load(folder).Dictionary);
        // Lines of the steps before the checkpoint are kept as they were (mutated ones included); the resumed steps' are new.
        var resumed = SaeTrainingRun.ReadLog(folder).Where(l => l.TryGetProperty("step", out var s) && s.TryGetInt32(out int step) && step >= StepsBefore).ToList();
        Require.That(resumed.Count == Steps - StepsBefore, $"{resumed.Count} log lines for the {Steps - StepsBefore} resumed steps");
        foreach (var line in resumed) Require.Finite(line.GetProperty("loss").GetDouble(), "a logged loss");
    }

    /// <summary>Cancels the run once a step count is reached, on the training thread (Progress&lt;T&gt; would post it later).</summary>
    sealed class StopAfter(int steps, CancellationTokenSource kill) : IProgress<SaeTrainingProgress>
    {
        public void Report(SaeTrainingProgress value)
        {
            if (value.Metrics.Step + 1 >= steps) kill.Cancel();
        }
    }
}
