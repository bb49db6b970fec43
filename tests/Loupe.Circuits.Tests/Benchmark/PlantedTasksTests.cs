using Loupe.Circuits.Benchmark;
using Loupe.Circuits.Edges;
using Xunit.Abstractions;

namespace Loupe.Circuits.Tests.Benchmark;

/// <summary>The host trainer's gradients, and planted-circuit models trained, exported and loaded by Loupe.</summary>
public class PlantedTasksTests(ITestOutputHelper output)
{
    [Fact]
    public void Gradients_match_finite_differences()
    {
        var shape = new AttentionOnlyShape(Vocab: 7, Context: 5, DModel: 6, Heads: 2, DHead: 3, Layers: 2);
        var net = new TinyAttentionTransformer(shape, [(0, 1), (1, 0), (1, 1)], seed: 3);
        int[][] tokens = [[1, 4, 2, 6, 0], [3, 3, 5, 1, 2]];
        int[][] targets = [[-1, 2, 5, 0, 1], [4, -1, 6, 6, 3]];
        var grads = net.Parameters.Select(p => new double[p.Length]).ToArray();
        net.Loss(tokens, targets, grads);
        var random = new Random(1);
        for (int p = 0; p < net.Parameters.Count; p++)
            for (int trial = 0; trial < 4; trial++)
            {
                var w = net.Parameters[p];
                int i = random.Next(w.Length);
                double saved = w[i], h = 1e-6;
                w[i] = saved + h;
                double up = net.Loss(tokens, targets, null).Loss;
                w[i] = saved - h;
                double down = net.Loss(tokens, targets, null).Loss;
                w[i] = saved;
                double numeric = (up - down) / (2 * h);
                Assert.InRange(grads[p][i], numeric - 1e-6 - 1e-5 * Math.Abs(numeric), numeric + 1e-6 + 1e-5 * Math.Abs(numeric));
            }
    }

    [Fact]
    public void Exported_checkpoint_computes_what_the_trainer_computes()
    {
        var shape = new AttentionOnlyShape(Vocab: 11, Context: 6, DModel: 8, Heads: 3, DHead: 4, Layers: 2);
        var net = new TinyAttentionTransformer(shape, [(0, 2), (1, 0)], seed: 5);
        int[][] tokens = [[1, 4, 2, 10, 0, 7], [3, 3, 5, 1, 2, 9]];
        int[][] targets = [[4, 2, 10, 0, 7, 1], [3, 5, 1, 2, 9, 8]];
        double expected = net.Loss(tokens, targets, null).Loss;
        string folder = Directory.CreateTempSubdirectory("loupe-tiny").FullName;
        net.Export(folder, "tiny", "test");
        using var model = Loupe.Models.ModelLoader.LoadFolder(folder);
        var logits = model.Run(new Loupe.Models.TokenBatch([.. tokens.SelectMany(t => t)], 2, 6)).Logits.ToCpu().Span;
        double loss = 0;
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < 6; t++)
            {
                var row = logits.Slice((b * 6 + t) * 11, 11);
                double max = double.NegativeInfinity, sum = 0;
                foreach (float v in row) max = Math.Max(max, v);
                foreach (float v in row) sum += Math.Exp(v - max);
                loss += (Math.Log(sum) + max - row[targets[b][t]]) / 12;
            }
        Assert.InRange(loss, expected - 1e-5 * (1 + expected), expected + 1e-5 * (1 + expected));
    }

    public static TheoryData<string> Tasks => [.. PlantedTasks.All.Select(t => t.Name)];

    [Theory]
    [MemberData(nameof(Tasks))]
    public void Trained_model_does_the_task_only_through_its_live_heads_and_eap_finds_the_circuit(string name)
    {
        var task = PlantedTasks.All.Single(t => t.Name == name);
        string folder = Directory.CreateTempSubdirectory("loupe-planted").FullName;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var trained = PlantedTasks.Train(task, folder);
        using var model = trained.Circuit.Model;
        output.WriteLine($"{name}: {trained.Steps} steps, {clock.Elapsed.TotalSeconds:0.0} s, accuracy {trained.Accuracy:0.000}");
        Assert.InRange(trained.Accuracy, 0.9, 1.0);

        var c = trained.Circuit;
        var graph = EdgeGraph.FromModel(model);
        var exact = EdgeAttribution.Exact(model, graph, c.Clean, c.Corrupted, c.Metric);
        // Heads that are not live are zero: patching any edge out of or into them changes nothing (up to float32
        // rounding: exact patching runs several edges in one batch, which reorders sums).
        double largest = exact.Scores.Max(Math.Abs);
        var live = task.LiveHeads.Select(h => $"a{h.Layer}.h{h.Head}").ToHashSet();
        for (int i = 0; i < graph.Edges.Count; i++)
        {
            var e = graph.Edges[i];
            string source = graph.Sources[e.Source].Name, destination = graph.Destinations[e.Destination].Name;
            bool dead = (graph.Sources[e.Source].Kind == SourceKind.Head && !live.Contains(source))
                || (graph.Destinations[e.Destination].Head >= 0 && !live.Contains(destination[..destination.IndexOf('<')]));
            if (dead) Assert.True(Math.Abs(exact.Scores[i]) <= 1e-5 * largest, $"{e.Name}: exact {exact.Scores[i]}, largest {largest}");
        }
        var rows = CircuitBenchmark.Run([c], [.. DiscoveryMethods.All]);
        foreach (var row in rows) output.WriteLine($"  {row.Method}: AUC {row.Auc:0.000}, P@k {row.PrecisionAtK:0.000}");
        foreach (var e in task.TrueEdges) output.WriteLine($"  {e}: exact {exact[e]:0.0000}");
        foreach (var row in rows) Assert.InRange(row.Auc, 0.9, 1.0);
    }
}
