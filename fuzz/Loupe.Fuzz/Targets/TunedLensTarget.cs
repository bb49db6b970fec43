using Loupe.Causal.Lens;
using Loupe.Fuzz.Engine;
using Loupe.Models;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// Tuned lenses as <c>loupe lens --tuned</c> and <c>lens eval</c> read them: <c>TunedLens.Load</c> on a folder of
/// <c>params.safetensors</c> + <c>config.json</c> (tuned-lens's layout), then read on the llama fixture at one position and
/// over every position, and evaluated against the logit lens — every probability, logit and KL finite or an InputError.
/// </summary>
public sealed class TunedLensTarget : FuzzTarget
{
    public override string Name => "tuned-lens";
    public override int DefaultIterations => 1500;

    HookedTransformer? _model;
    static readonly int[][] Contexts = [[1, 17, 42, 99, 3, 250], [1, 5, 400, 12, 88, 7]];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        _model = PipelineFixtures.LoadModel(context);
        int d = _model.Config.DModel, layers = _model.Config.NLayers;
        string folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "tuned-lens")).FullName;
        var seeds = new List<Seed>();
        void Add(string id, TunedLens lens, bool withConfig)
        {
            string dir = Directory.CreateDirectory(Path.Combine(folder, id)).FullName;
            lens.Save(dir);
            var files = new List<SeedFile> { new(TunedLens.ParamsFile, File.ReadAllBytes(Path.Combine(dir, TunedLens.ParamsFile)), FileKind.SafeTensors) };
            if (withConfig) files.Add(new(TunedLens.ConfigFile, File.ReadAllBytes(Path.Combine(dir, TunedLens.ConfigFile)), FileKind.Json));
            seeds.Add(new($"generated:{id}", [.. files]));
        }
        var weights = Enumerable.Range(0, layers).Select(l => SeedFiles.Floats(d * d, 40 + l, 0.05f)).ToArray();
        var biases = Enumerable.Range(0, layers).Select(l => SeedFiles.Floats(d, 60 + l)).ToArray();
        Add("tuned-lens", TunedLens.FromTranslators(weights, biases, baseModel: "fuzz/llama"), withConfig: true);
        Add("tuned-lens-no-config", TunedLens.FromTranslators(weights, biases), withConfig: false);
        Add("tuned-lens-no-bias", TunedLens.FromTranslators(weights, [.. biases.Select(b => new float[b.Length])], hasBias: false), withConfig: true);
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var model = _model ?? throw new InvalidOperationException("seeds not built");
        var lens = TunedLens.Load(folder);
        var tokens = TokenBatch.FromRows(Contexts);
        var result = LogitLens.Run(model, tokens, answer: 17, wrong: 42, position: -1, row: 1, tuned: lens);
        foreach (var stage in result.Stages)
        {
            Require.Finite(stage.AnswerLogit, $"{stage.Label} answer logit");
            Require.Finite(stage.AnswerProb, $"{stage.Label} answer probability");
        }
        var grid = LogitLens.Grid(model, tokens, tuned: lens);
        foreach (var probs in grid.TopProb.Concat(grid.FinalTopProb))
            foreach (var p in probs) Require.Finite(p, "a grid probability");
        foreach (var layer in TunedLensEvaluation.Run(model, lens, Contexts, batchContexts: 2).Layers)
        {
            Require.Finite(layer.TunedLensKl, $"{layer.Label} tuned-lens KL");
            Require.That(layer.TunedLensKl > -1e-3, $"{layer.Label}: a KL of {layer.TunedLensKl} (negative)");
        }
    }

    public override void Cleanup()
    {
        _model?.Dispose();
        _model = null;
    }
}
