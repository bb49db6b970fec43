using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>
/// Loss recovered with every MLP replaced, on the tiny GPT-2 fixture (3 layers, d_model 64), with known answers:
/// a replacement that returns the true MLP outputs recovers exactly 100 %, an all-zero one exactly 0 %, and a CLT
/// trained on paired activations recovers more than it did before training.
/// </summary>
public class ReplacementEvaluatorTests(ITestOutputHelper output)
{
    const int Bos = 0;

    static HookedTransformer Gpt2() => ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));

    static HarvestContexts Contexts(int count, int length, int seed)
    {
        var rng = new Random(seed);
        return HarvestContexts.FromRows(Enumerable.Range(0, count)
            .Select(_ => Enumerable.Range(0, length).Select(t => t == 0 ? Bos : rng.Next(1, 512)).ToArray()).ToArray(), $"random ids {seed}");
    }

    /// <summary>
    /// Returns, for each MLP input row, the MLP output the clean model computed from it (looked up by the row's bytes):
    /// replacing every MLP with it changes nothing.
    /// </summary>
    sealed class TrueMlpOutputs : IMlpReplacement
    {
        readonly Dictionary<string, float[]>[] _table;

        public TrueMlpOutputs(HookedTransformer model, HarvestContexts contexts)
        {
            Layers = model.Config.NLayers;
            DIn = DOut = model.Config.DModel;
            _table = Enumerable.Range(0, Layers).Select(_ => new Dictionary<string, float[]>()).ToArray();
            var batch = TokenBatch.FromRows(contexts.Contexts.ToArray());
            // read through plain hooks, as the evaluator does (a cached run may take another kernel path)
            int rows = batch.Batch * batch.Length;
            var inputs = new float[Layers][];
            var options = new RunOptions();
            for (int l = 0; l < Layers; l++)
            {
                int layer = l;
                options.AddHook(InputHook(l), (a, _) => { inputs[layer] = a.ToCpu().Span.ToArray(); return null; });
                options.AddHook(OutputHook(l), (a, _) =>
                {
                    var y = a.ToCpu().Span;
                    for (int r = 0; r < rows; r++) _table[layer][Key(inputs[layer].AsSpan(r * DIn, DIn))] = y.Slice(r * DOut, DOut).ToArray();
                    return null;
                });
            }
            model.Run(batch, options);
        }

        static string Key(ReadOnlySpan<float> row) => Convert.ToBase64String(System.Runtime.InteropServices.MemoryMarshal.AsBytes(row));
        public int Layers { get; }
        public int DIn { get; }
        public int DOut { get; }
        public int Features(int layer) => 1;
        public string InputHook(int layer) => HookNames.NormNormalized(layer, "ln2");
        public string OutputHook(int layer) => HookNames.MlpOut(layer);
        public int LastTarget(int layer) => layer;
        public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts) { pre[..rows].Clear(); acts[..rows].Clear(); }
        public void EncoderDirection(int layer, int feature, Span<float> into) => into.Clear();
        public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into) => into.Clear();
        public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon)
        {
            for (int r = 0; r < rows; r++) _table[targetLayer][Key(inputs[targetLayer].AsSpan(r * DIn, DIn))].CopyTo(recon.Slice(r * DOut, DOut));
        }
        public bool HasSkip => false;
        public float[]? SkipWeights(int layer) => null;
        public string Fingerprint => "true-mlp";
        public string Source => "true MLP outputs";
    }

    [Fact]
    public void ReturningTheTrueMlpOutputsRecoversAllOfTheLoss()
    {
        using var model = Gpt2();
        var contexts = Contexts(6, 12, seed: 1);
        var result = ReplacementEvaluator.Evaluate(model, new TrueMlpOutputs(model, contexts), contexts,
            new ReplacementEvalOptions { BatchSize = contexts.Count, ExcludeTokens = [] });
        output.WriteLine($"CE clean {result.CeLossClean:F6}, replaced {result.CeLossReplaced:F6}, zero {result.CeLossZeroAblated:F6}");
        Assert.Equal(result.CeLossClean, result.CeLossReplaced);
        Assert.NotEqual(result.CeLossClean, result.CeLossZeroAblated);
        Assert.Equal(1.0, result.LossRecovered);
        Assert.All(result.Fvu, f => Assert.Equal(0.0, f));
        Assert.Equal(6 * 12, result.Positions);
        Assert.Equal(6 * 11, result.Predictions);
    }

    [Fact]
    public void AnAllZeroCltRecoversNoneOfTheLoss()
    {
        using var model = Gpt2();
        var contexts = Contexts(4, 10, seed: 2);
        var clt = new CrossLayerTranscoder(new CltShape(3, 64, 8, 64), new ReluActivation());
        var result = ReplacementEvaluator.Evaluate(model, clt, contexts, new ReplacementEvalOptions { ExcludeTokens = [] });
        Assert.Equal(result.CeLossZeroAblated, result.CeLossReplaced, 1e-9);
        Assert.Equal(0.0, result.LossRecovered, 1e-9);
        Assert.All(result.L0, l0 => Assert.Equal(0.0, l0));
    }

    [Fact]
    public void ATrainedCltRecoversMoreLossAndVarianceThanAtInitialisation()
    {
        using var model = Gpt2();
        var train = Contexts(64, 16, seed: 3);
        var heldOut = Contexts(8, 16, seed: 4);
        var clt = new CrossLayerTranscoder(new CltShape(3, 64, 64, 64), new ReluActivation());
        clt.Initialize(seed: 0);
        var trainer = new CltTrainer(clt, new CltTrainingOptions
        {
            Base = new SaeTrainingOptions { Steps = 150, BatchSize = 64, LearningRate = 4e-3f, SparsityCoefficient = 1e-4f, LrWarmupSteps = 10, Seed = 0 },
        });
        var rows = LayerPairRows.For(model, train, clt, contextsPerWindow: 32);
        Assert.Equal(3 * 64, rows.DIn);
        trainer.Begin(rows);
        var before = ReplacementEvaluator.Evaluate(model, clt, heldOut);
        CltStepMetrics last = null!;
        while (!trainer.IsComplete) last = trainer.Step();
        var after = ReplacementEvaluator.Evaluate(model, clt, heldOut);
        output.WriteLine($"before: recovered {before.LossRecovered:F3}, EV {string.Join("/", before.ExplainedVariance.Select(e => e.ToString("F3")))}");
        output.WriteLine($"after:  recovered {after.LossRecovered:F3}, EV {string.Join("/", after.ExplainedVariance.Select(e => e.ToString("F3")))}, " +
            $"L0 {string.Join("/", after.L0.Select(e => e.ToString("F1")))}; CE clean {after.CeLossClean:F4} replaced {after.CeLossReplaced:F4} zero {after.CeLossZeroAblated:F4}; last step MSE {last.Mse:F4}");
        Assert.True(after.LossRecovered > before.LossRecovered + 0.1, $"loss recovered {before.LossRecovered:F3} → {after.LossRecovered:F3}");
        for (int t = 0; t < 3; t++) Assert.True(after.ExplainedVariance[t] > before.ExplainedVariance[t] + 0.2, $"layer {t} EV {before.ExplainedVariance[t]:F3} → {after.ExplainedVariance[t]:F3}");
        // per-layer transcoders evaluate through the same interface
        var perLayer = new CircuitTracerTranscoders(Enumerable.Range(0, 3).Select(_ => new SparseDictionary(SaeShape.Transcoder(64, 8, 64), new ReluActivation())).ToArray());
        var zeros = ReplacementEvaluator.Evaluate(model, perLayer, heldOut, new ReplacementEvalOptions { ExcludeTokens = [] });
        Assert.Equal(0.0, zeros.LossRecovered, 1e-9);
    }

    [Fact]
    public void AReplacementForAnotherModelIsRefusedByName()
    {
        using var model = Gpt2();
        var contexts = Contexts(2, 8, seed: 5);
        var wide = new CrossLayerTranscoder(new CltShape(3, 32, 8, 32), new ReluActivation(), source: "wide.clt");
        var e = Assert.Throws<InputError>(() => ReplacementEvaluator.Evaluate(model, wide, contexts));
        Assert.Contains("d_in = 32", e.Message);
        var deep = new CrossLayerTranscoder(new CltShape(5, 64, 8, 64), new ReluActivation(), source: "deep.clt");
        e = Assert.Throws<InputError>(() => ReplacementEvaluator.Evaluate(model, deep, contexts));
        Assert.Contains("blocks.3.mlp.hook_in", e.Message);
    }
}
