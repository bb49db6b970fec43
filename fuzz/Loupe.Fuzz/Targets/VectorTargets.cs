using Loupe.Fuzz.Engine;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Steering;
using Loupe.Steering.Monitors;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// The vector files <c>loupe steer --vector</c>, <c>persona</c> and <c>monitor</c> read (safetensors with hook metadata):
/// <c>SteeringVector.Load</c>, <c>PersonaVector.Load</c> and <c>ConceptMonitor.Load</c>, each then used on the llama fixture
/// as its verb uses it — added (and projected out) while the model runs, or read as a monitor's projections — with finite
/// logits and readings. A seed's kind.txt (not mutated) says which reader it is for.
/// </summary>
public sealed class VectorTarget : FuzzTarget
{
    public override string Name => "vectors";
    public override int DefaultIterations => 1500;

    HookedTransformer? _model;
    static readonly int[] Tokens = [1, 17, 42, 99, 3];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        _model = PipelineFixtures.LoadModel(context);
        int d = _model.Config.DModel;
        string folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "vectors")).FullName;
        var seeds = new List<Seed>();
        void Add(string id, string kind, string path) => seeds.Add(new($"generated:{id}",
        [
            new SeedFile("vector.safetensors", File.ReadAllBytes(path), FileKind.SafeTensors),
            new SeedFile("kind.txt", System.Text.Encoding.UTF8.GetBytes(kind), FileKind.Text, Mutable: false),
        ]));

        string steering = Path.Combine(folder, "steering.safetensors");
        SafeTensorsWriter.Write(steering, [("direction", new[] { d }, (ReadOnlyMemory<float>)SeedFiles.Floats(d, 21))],
            new Dictionary<string, string> { ["hook"] = PipelineFixtures.Hook });
        Add("steering-vector", "steering", steering);

        string twoTensors = Path.Combine(folder, "steering-2.safetensors");
        SafeTensorsWriter.Write(twoTensors, [("vector", new[] { 1, d }, (ReadOnlyMemory<float>)SeedFiles.Floats(d, 22)), ("other", new[] { 3 }, (ReadOnlyMemory<float>)new float[] { 1, 2, 3 })],
            new Dictionary<string, string> { ["hook"] = "blocks.0.hook_resid_pre" });
        Add("steering-vector-named", "steering", twoTensors);

        var persona = new PersonaVector(PipelineFixtures.Hook, 1, SeedFiles.Floats(d, 23), threshold: 0.25) { TrainAccuracy = 0.9, HeldOutAccuracy = 0.8, HeldOutAuroc = 0.85 };
        string personaPath = Path.Combine(folder, "persona.safetensors");
        persona.Save(personaPath);
        Add("persona-vector", "persona", personaPath);

        var monitor = new ConceptMonitor("fuzzing", persona, 0.9, 0.95, 0.05, 0.9, 0.1, 0.85)
        { CalibrationGenerations = 4, CalibrationFalsePositiveRate = 0.02, MaxFalsePositiveRate = 0.05, RecallThreshold = 0.2 };
        string monitorPath = Path.Combine(folder, "monitor.safetensors");
        monitor.Save(monitorPath);
        Add("concept-monitor", "monitor", monitorPath);
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var model = _model ?? throw new InvalidOperationException("seeds not built");
        string path = Path.Combine(folder, "vector.safetensors");
        switch (File.ReadAllText(Path.Combine(folder, "kind.txt")))
        {
            case "steering":
                var vector = SteeringVector.Load(path, coefficient: 4f);
                Steered(model, vector, "steered");
                Steered(model, vector.ToProjectOut(), "projected out");
                break;
            case "persona":
                Read(model, PersonaVector.Load(path));
                break;
            default:
                var monitor = ConceptMonitor.Load(path);
                Read(model, monitor.Direction);
                break;
        }
    }

    static void Steered(HookedTransformer model, IActivationEdit edit, string what)
    {
        ActivationEdits.Validate(model, edit);
        var logits = model.Run(Tokens, ActivationEdits.Options(model, edit)).Logits;
        Require.Finite(logits.Span, $"logits {what}");
    }

    static void Read(HookedTransformer model, PersonaVector persona)
    {
        var reading = persona.Monitor(model, Tokens);
        Require.Finite(reading.Mean, "mean projection");
        foreach (var p in reading.Projections) Require.Finite(p, "a projection");
        Require.Finite(persona.Threshold, "threshold");
        Steered(model, persona.Steer(2f), "steered by the persona vector");
    }

    public override void Cleanup()
    {
        _model?.Dispose();
        _model = null;
    }
}
