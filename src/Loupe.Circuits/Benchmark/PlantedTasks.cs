using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Circuits.Benchmark;

/// <summary>One clean/corrupted pair of a planted task: the sequences and the next token each should predict (−1 = not scored).</summary>
/// <param name="Clean">The clean sequence.</param>
/// <param name="CleanTargets">The clean sequence's targets.</param>
/// <param name="Corrupted">A sequence with the same structure and different tokens.</param>
/// <param name="CorruptedTargets">Its targets (at the same positions, never equal to the clean ones).</param>
public sealed record PlantedPair(int[] Clean, int[] CleanTargets, int[] Corrupted, int[] CorruptedTargets);

/// <summary>
/// A synthetic task and the attention-only model shape in which only <paramref name="LiveHeads"/> exist, so the
/// circuit is known by construction.
/// </summary>
/// <param name="Name">Short name (<c>planted-previous-token</c>).</param>
/// <param name="Description">What the model must do and how the live heads do it.</param>
/// <param name="Shape">The model's shape.</param>
/// <param name="LiveHeads">The heads that exist; every other head is zero.</param>
/// <param name="TrueEdges">The edges the task needs, by construction.</param>
/// <param name="Sample">Draws one clean/corrupted pair.</param>
/// <param name="MaxSteps">Training budget (Adam steps of 32 sequences).</param>
public sealed record PlantedTask(string Name, string Description, AttentionOnlyShape Shape, (int Layer, int Head)[] LiveHeads,
    string[] TrueEdges, Func<Random, PlantedPair> Sample, int MaxSteps);

/// <summary>A planted task after training: the checkpoint Loupe loaded, and how well it does the task.</summary>
/// <param name="Task">The task.</param>
/// <param name="Folder">The TransformerLens-native checkpoint written.</param>
/// <param name="Steps">Adam steps taken.</param>
/// <param name="Accuracy">Top-1 accuracy of the loaded Loupe model on held-out scored positions.</param>
/// <param name="Circuit">The known circuit on the loaded model.</param>
public sealed record TrainedPlantedTask(PlantedTask Task, string Folder, int Steps, double Accuracy, KnownCircuit Circuit);

/// <summary>
/// Small attention-only transformers trained by Loupe on synthetic tasks with only some heads allowed to exist:
/// the circuit is then known by construction (which heads exist and what the task needs of them), and the trained
/// model is exported as a TransformerLens checkpoint and loaded by <see cref="ModelLoader"/>, so the discovery
/// methods run on a real Loupe model.
/// </summary>
public static class PlantedTasks
{
    /// <summary>
    /// Predict the previous token, 1 layer × 4 heads, only a0.h1 live: a0.h1 attends one position back (by position,
    /// so its q/k inputs need no token) and copies that token through its value: <c>input→a0.h1&lt;v&gt;</c>, <c>a0.h1→logits</c>.
    /// Corrupted: different random tokens everywhere; metric: logit(clean previous token) − logit(corrupted previous token) at positions 1..T−1.
    /// </summary>
    public static PlantedTask PreviousToken { get; } = new(
        "planted-previous-token",
        "1 layer × 4 heads, only a0.h1 live, trained to predict the previous token; truth by construction",
        new AttentionOnlyShape(Vocab: 24, Context: 12, DModel: 32, Heads: 4, DHead: 8, Layers: 1),
        [(0, 1)],
        ["input->a0.h1<v>", "a0.h1->logits"],
        SamplePreviousToken, MaxSteps: 1500);

    /// <summary>
    /// Induction, 2 layers × 4 heads, only a0.h2 (previous-token head) and a1.h1 (induction head) live. Sequences are
    /// distinct random tokens with a block of 5 copied once later, at a random distance (so no fixed-offset shortcut exists);
    /// the model predicts the next token inside the repeat. Needed edges: <c>input→a0.h2&lt;v&gt;</c> (which token came before),
    /// <c>a0.h2→a1.h1&lt;k&gt;</c> (K-composition), <c>input→a1.h1&lt;q&gt;</c> (the current token looked for),
    /// <c>input→a1.h1&lt;v&gt;</c> (the token copied), <c>a1.h1→logits</c>. Corrupted: the same structure with other tokens.
    /// </summary>
    public static PlantedTask Induction { get; } = new(
        "planted-induction",
        "2 layers × 4 heads, only a0.h2 (previous token) and a1.h1 (induction) live, trained to continue a repeated block at a random offset; truth by construction",
        new AttentionOnlyShape(Vocab: InductionVocab, Context: InductionContext, DModel: 32, Heads: 4, DHead: 8, Layers: 2),
        [(0, 2), (1, 1)],
        ["input->a0.h2<v>", "a0.h2->a1.h1<k>", "input->a1.h1<q>", "input->a1.h1<v>", "a1.h1->logits"],
        SampleInduction, MaxSteps: 4000);

    /// <summary>Every planted task.</summary>
    public static IReadOnlyList<PlantedTask> All { get; } = [PreviousToken, Induction];

    static PlantedPair SamplePreviousToken(Random random)
    {
        int T = 12, V = 24;
        var clean = new int[T];
        var corrupted = new int[T];
        for (int t = 0; t < T; t++)
        {
            clean[t] = random.Next(V);
            corrupted[t] = (clean[t] + 1 + random.Next(V - 1)) % V;
        }
        int[] Targets(int[] x) => [-1, .. x[..^1]];
        return new PlantedPair(clean, Targets(clean), corrupted, Targets(corrupted));
    }

    const int RepeatLength = 5, InductionContext = 20, InductionVocab = 40;

    static PlantedPair SampleInduction(Random random)
    {
        int T = InductionContext, n = RepeatLength;
        // A random gap between the copies: a head that attends a fixed distance back cannot do the task.
        int first = random.Next(T - 2 * n + 1);
        int second = first + n + random.Next(T - n - (first + n) + 1);
        var clean = RepeatedSequence(random, first, second, null);
        var corrupted = RepeatedSequence(random, first, second, clean);
        int[] Targets(int[] x)
        {
            var targets = Enumerable.Repeat(-1, T).ToArray();
            // Inside the second copy, the next token is the one that followed the current token in the first copy.
            for (int t = second; t < second + n - 1; t++) targets[t] = x[t + 1];
            return targets;
        }
        return new PlantedPair(clean, Targets(clean), corrupted, Targets(corrupted));
    }

    /// <summary>Distinct random tokens with positions first..first+n−1 copied to second..second+n−1; never equal to <paramref name="avoid"/> position by position.</summary>
    static int[] RepeatedSequence(Random random, int first, int second, int[]? avoid)
    {
        int T = InductionContext, n = RepeatLength;
        while (true)
        {
            var distinct = Enumerable.Range(0, InductionVocab).OrderBy(_ => random.Next()).Take(T - n).ToArray();
            var x = new int[T];
            int next = 0;
            for (int t = 0; t < T; t++)
                x[t] = t >= second && t < second + n ? x[t - second + first] : distinct[next++];
            if (avoid is null || !x.Where((token, t) => token == avoid[t]).Any()) return x;
        }
    }

    /// <summary>
    /// Trains <paramref name="task"/>'s model, writes it to <paramref name="folder"/>, loads it with <see cref="ModelLoader.LoadFolder"/>
    /// and builds the known circuit on <paramref name="examples"/> held-out clean/corrupted pairs; the accuracy is the loaded
    /// model's, on those pairs.
    /// </summary>
    /// <param name="task">The planted task.</param>
    /// <param name="folder">Where the checkpoint goes.</param>
    /// <param name="examples">Clean/corrupted pairs in the circuit's batches.</param>
    /// <param name="seed">Seed of the weights, the training batches and the held-out pairs.</param>
    public static TrainedPlantedTask Train(PlantedTask task, string folder, int examples = 16, int seed = 0)
    {
        var net = new TinyAttentionTransformer(task.Shape, task.LiveHeads, seed);
        int steps = net.Train(r => { var p = task.Sample(r); return (p.Clean, p.CleanTargets); }, seed + 1, task.MaxSteps);
        net.Export(folder, task.Name, task.Description);
        var model = ModelLoader.LoadFolder(folder);
        try
        {
            var random = new Random(seed + 2);
            var pairs = Enumerable.Range(0, examples).Select(_ => task.Sample(random)).ToArray();
            int T = task.Shape.Context;
            var clean = new TokenBatch([.. pairs.SelectMany(p => p.Clean)], examples, T);
            var corrupted = new TokenBatch([.. pairs.SelectMany(p => p.Corrupted)], examples, T);
            var metric = new MeanLogitDiff([.. pairs.Select(p => Enumerable.Range(0, T).Where(t => p.CleanTargets[t] >= 0)
                .Select(t => new LogitDiffTerm(t, p.CleanTargets[t], p.CorruptedTargets[t])).ToArray())]);
            double accuracy = Accuracy(model, clean, [.. pairs.Select(p => p.CleanTargets)]);
            if (accuracy < MinimumAccuracy)
                throw new InvalidOperationException($"{task.Name} reached only {accuracy:0.000} held-out accuracy after {steps} steps (seed {seed}); its planted circuit would not be what it computes");
            CheckDeadHeadsSilent(model, task, clean);
            CheckDeadHeadsSilent(model, task, corrupted);
            var circuit = new KnownCircuit(task.Name, $"{task.Description}; {steps} Adam steps, held-out accuracy {accuracy:0.000}",
                model, clean, corrupted, metric, new HashSet<string>(task.TrueEdges, StringComparer.Ordinal), "construction");
            return new TrainedPlantedTask(task, folder, steps, accuracy, circuit);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The held-out accuracy below which a trained model is refused as a planted circuit.</summary>
    public const double MinimumAccuracy = 0.9;

    /// <summary>
    /// Every head that is not live writes exactly zero into the residual stream (its weights are zero), so ablating it,
    /// by any value, changes nothing downstream.
    /// </summary>
    static void CheckDeadHeadsSilent(HookedTransformer model, PlantedTask task, TokenBatch tokens)
    {
        int H = task.Shape.Heads, D = task.Shape.DModel;
        var cache = model.RunWithCache(tokens, string.Join(",", Enumerable.Range(0, task.Shape.Layers).Select(HookNames.Result))).Cache;
        for (int l = 0; l < task.Shape.Layers; l++)
        {
            var result = cache[HookNames.Result(l)].ToCpu().Span; // [batch, pos, head, d_model]
            for (int h = 0; h < H; h++)
            {
                if (task.LiveHeads.Contains((l, h))) continue;
                for (int row = 0; row < tokens.Batch * tokens.Length; row++)
                    if (result.Slice((row * H + h) * D, D).ContainsAnyExcept(0f))
                        throw new InvalidOperationException($"{task.Name}: head a{l}.h{h} is not live but writes to the residual stream");
            }
        }
    }

    /// <summary>Top-1 accuracy of <paramref name="model"/> at the positions with a target.</summary>
    public static double Accuracy(HookedTransformer model, TokenBatch tokens, IReadOnlyList<int[]> targets)
    {
        var logits = model.Run(tokens).Logits.ToCpu();
        var span = logits.Span;
        int V = logits.Dim(2), T = tokens.Length, right = 0, counted = 0;
        for (int b = 0; b < tokens.Batch; b++)
            for (int t = 0; t < T; t++)
            {
                if (targets[b][t] < 0) continue;
                var row = span.Slice((b * T + t) * V, V);
                int best = 0;
                for (int u = 1; u < V; u++) if (row[u] > row[best]) best = u;
                counted++;
                if (best == targets[b][t]) right++;
            }
        return (double)right / counted;
    }
}
