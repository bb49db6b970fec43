using Loupe.Circuits.Benchmark;
using Loupe.Circuits.Edges;
using Loupe.Circuits.Rasp;
using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Circuits.Tests.Rasp;

/// <summary>
/// Edge patching done directly with hooks (the models have no norms, so a slot's input is linear in the residual stream):
/// patching edge U → S adds (U_corrupted − U as it is in the patched run) projected by S's read weights to S's activation
/// (hook_q/k/v, mlp.hook_pre, logits). Slots are patched in the order the model computes them, each from a run with the earlier patches in place.
/// </summary>
public class RaspEdgePatchingTests
{
    public static TheoryData<string> ProgramNames => new(RaspLibrary.All().Append(RaspLibrary.Majority()).Select(p => p.Name));

    [Theory]
    [MemberData(nameof(ProgramNames))]
    public void PatchingEdgesOutsideTheCircuitChangesNothingAndPatchingTheCircuitGivesTheCorruptedRun(string name)
    {
        var program = RaspLibrary.All().Append(RaspLibrary.Majority()).Single(p => p.Name == name);
        var task = RaspTasks.Task(program, RaspCompiler.Compile(program.Output, program.Vocabulary, program.MaxSeqLen), seed: 7, examples: 8);
        var graph = EdgeGraph.FromModel(task.Model);
        var patcher = new EdgePatcher(task, graph);
        var clean = task.Metric.PerExample(task.Model.Run(task.Clean).Logits);
        var corrupted = task.Metric.PerExample(task.Model.Run(task.Corrupted).Logits);

        var outside = graph.Edges.Where(e => !task.TrueEdges.Contains(e.Name)).ToList();
        foreach (var edge in outside)
            AssertClose(clean, patcher.Metric([edge]), $"patching {edge.Name} (not in the circuit)");
        AssertClose(clean, patcher.Metric(outside), "patching every edge outside the circuit");
        AssertClose(corrupted, patcher.Metric([.. graph.Edges.Where(e => task.TrueEdges.Contains(e.Name))]), "patching every circuit edge");
    }

    static void AssertClose(double[] expected, double[] actual, string what)
    {
        for (int b = 0; b < expected.Length; b++)
            Assert.True(Math.Abs(expected[b] - actual[b]) <= 1e-3 + 1e-3 * Math.Abs(expected[b]), $"{what}: example {b} gives {actual[b]}, expected {expected[b]}");
    }

    sealed class EdgePatcher
    {
        readonly KnownCircuit _task;
        readonly EdgeGraph _graph;
        readonly AttentionWeights _attention;
        readonly ActivationCache _corrupted;
        const string SourceHooks = "hook_embed,blocks.*.attn.hook_result,blocks.*.hook_mlp_out";
        readonly int _b, _t, _d;

        public EdgePatcher(KnownCircuit task, EdgeGraph graph)
        {
            _task = task;
            _graph = graph;
            _attention = AttentionWeights.FromModel(task.Model);
            _corrupted = task.Model.RunWithCache(task.Corrupted, SourceHooks).Cache;
            (_b, _t, _d) = (task.Clean.Batch, task.Clean.Length, task.Model.Config.DModel);
        }

        /// <summary>U_corrupted − U_current <c>[batch·pos, d_model]</c>.</summary>
        float[] Delta(SourceNode source, ActivationCache current)
        {
            var delta = new float[_b * _t * _d];
            string hook = source.Kind switch
            {
                SourceKind.Input => HookNames.Embed,
                SourceKind.Head => HookNames.Result(source.Layer),
                _ => HookNames.MlpOut(source.Layer),
            };
            var c = current[hook].Span;
            var x = _corrupted[hook].Span;
            int heads = source.Kind == SourceKind.Head ? _task.Model.Config.NHeads : 1, h = Math.Max(0, source.Head);
            for (int r = 0; r < _b * _t; r++)
                for (int i = 0; i < _d; i++)
                    delta[r * _d + i] = x[(r * heads + h) * _d + i] - c[(r * heads + h) * _d + i];
            return delta;
        }

        /// <summary>delta <c>[rows, d_model]</c> · W <c>[d_model, cols]</c>.</summary>
        float[] Project(float[] delta, ReadOnlySpan<float> w, int cols)
        {
            var result = new float[_b * _t * cols];
            for (int r = 0; r < _b * _t; r++)
                for (int i = 0; i < _d; i++)
                {
                    float v = delta[r * _d + i];
                    if (v == 0) continue;
                    for (int j = 0; j < cols; j++) result[r * cols + j] += v * w[i * cols + j];
                }
            return result;
        }

        public double[] Metric(IReadOnlyList<Edge> edges)
        {
            var cfg = _task.Model.Config;
            var options = new RunOptions();
            float[]? logitsDelta = null;
            // Stage = the slots one sublayer reads: a{l}.h*<q|k|v> (2l), m{l} (2l+1), logits (last).
            int Stage(DestinationSlot d) => d.Kind switch { SlotKind.Mlp => 2 * d.Layer + 1, SlotKind.Logits => int.MaxValue, _ => 2 * d.Layer };
            foreach (var stage in edges.GroupBy(e => Stage(_graph.Destinations[e.Destination])).OrderBy(g => g.Key))
            {
                var current = _task.Model.RunWithCache(_task.Clean, SourceHooks, options).Cache;
                foreach (var group in stage.GroupBy(e => e.Destination))
                {
                    var slot = _graph.Destinations[group.Key];
                    var sum = new float[_b * _t * _d];
                    foreach (var edge in group)
                    {
                        var delta = Delta(_graph.Sources[edge.Source], current);
                        for (int i = 0; i < sum.Length; i++) sum[i] += delta[i];
                    }
                    switch (slot.Kind)
                    {
                        case SlotKind.Query or SlotKind.Key or SlotKind.Value:
                            {
                                var w = slot.Kind == SlotKind.Query ? _attention.WQ : slot.Kind == SlotKind.Key ? _attention.WK : _attention.WV;
                                var add = Project(sum, w[slot.Layer][slot.Head], cfg.DHead);
                                string hook = slot.Kind == SlotKind.Query ? HookNames.Q(slot.Layer) : slot.Kind == SlotKind.Key ? HookNames.K(slot.Layer) : HookNames.V(slot.Layer);
                                int h = slot.Head, H = cfg.NHeads, dh = cfg.DHead;
                                options.AddHook(hook, (a, _) =>
                                {
                                    var span = a.Span;
                                    for (int r = 0; r < _b * _t; r++)
                                        for (int j = 0; j < dh; j++) span[(r * H + h) * dh + j] += add[r * dh + j];
                                    return a;
                                });
                                break;
                            }
                        case SlotKind.Mlp:
                            {
                                var add = Project(sum, _task.Model.Anatomy(slot.Layer).Mlp!.In.Weight.Span, cfg.DMlp);
                                options.AddHook(HookNames.MlpPre(slot.Layer), (a, _) =>
                                {
                                    var span = a.Span;
                                    for (int i = 0; i < add.Length; i++) span[i] += add[i];
                                    return a;
                                });
                                break;
                            }
                        default:
                            logitsDelta = Project(sum, _task.Model.UnembedLayer.Weight.Span, cfg.DVocabOut);
                            break;
                    }
                }
            }
            options.CacheFilter = null;
            var logits = _task.Model.Run(_task.Clean, options).Logits;
            if (logitsDelta is not null)
            {
                var span = logits.Span;
                for (int i = 0; i < logitsDelta.Length; i++) span[i] += logitsDelta[i];
            }
            return _task.Metric.PerExample(logits);
        }
    }
}
