using Loupe.Attribution.Graph;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Attribution.Tests;

/// <summary>The circuit-tracer reference fixture (tests/data/attribution) and helpers shared by the graph tests.</summary>
internal static class GraphTestData
{
    public static string GraphPath => SharedData.TestData("attribution/graph.safetensors");

    public static string Path(string relative) => SharedData.TestData("attribution/" + relative);

    /// <summary>The fixture graph, read once (its arrays are never changed by the tests).</summary>
    public static AttributionGraph Fixture => FixtureFile.Graph;

    public static GraphFile FixtureFile => Lazy.Value;

    static readonly Lazy<GraphFile> Lazy = new(() => GraphSafetensors.Read(GraphPath));

    /// <summary>An integer tensor of the fixture read straight from the file (not through the graph reader).</summary>
    public static long[] RawInt64(string name)
    {
        using var file = SafeTensorsFile.Open(GraphPath);
        return file.GetInt64(name);
    }

    /// <summary>A float tensor of the fixture read straight from the file.</summary>
    public static float[] RawFloat(string name)
    {
        using var file = SafeTensorsFile.Open(GraphPath);
        return file.GetFloat32(name).ToArray();
    }

    /// <summary>|actual − expected| ≤ rel·|expected| + abs.</summary>
    public static void Close(double expected, double actual, double rel, double abs, string what)
    {
        double tolerance = rel * Math.Abs(expected) + abs;
        if (!(Math.Abs(actual - expected) <= tolerance))
            Assert.Fail($"{what}: expected {expected:R}, found {actual:R} (|diff| {Math.Abs(actual - expected):E2} > {tolerance:E2})");
    }

    /// <summary>
    /// A graph built by hand: L layers, T positions, the given selected features, logits; the adjacency
    /// is filled by <paramref name="edge"/>(target, source) (0 where it returns 0).
    /// </summary>
    public static AttributionGraph Build(int layers, int[] tokens, (int Layer, int Position, int Feature)[] features,
        int[] logitTokens, float[] logitProbabilities, Func<AttributionGraph, int, int, float> edge)
    {
        var shell = new AttributionGraph
        {
            InputTokens = tokens,
            Layers = layers,
            ActiveFeatures = features,
            ActivationValues = features.Select((_, i) => 1f + i).ToArray(),
            SelectedFeatures = Enumerable.Range(0, features.Length).ToArray(),
            LogitTokens = logitTokens,
            LogitProbabilities = logitProbabilities,
            Adjacency = [],
        };
        int n = shell.NodeCount;
        var a = new float[n * n];
        for (int t = 0; t < n; t++)
            for (int s = 0; s < n; s++)
                a[t * n + s] = edge(shell, t, s);
        return new AttributionGraph
        {
            InputTokens = tokens,
            Layers = layers,
            ActiveFeatures = features,
            ActivationValues = shell.ActivationValues,
            SelectedFeatures = shell.SelectedFeatures,
            LogitTokens = logitTokens,
            LogitProbabilities = logitProbabilities,
            Adjacency = a,
        };
    }

    /// <summary>
    /// The hand-checked 5-node graph: one layer, one position; nodes [feature f, error e, token, logit 0, logit 1].
    /// A[f, tok] = 2; A[l0, f] = 3, A[l0, e] = −1, A[l0, tok] = 1; A[l1, f] = 1, A[l1, e] = 1; p = (0.6, 0.2).
    /// </summary>
    public static AttributionGraph FiveNodes()
    {
        var a = new float[25];
        void Set(int t, int s, float v) => a[t * 5 + s] = v;
        Set(0, 2, 2); Set(3, 0, 3); Set(3, 1, -1); Set(3, 2, 1); Set(4, 0, 1); Set(4, 1, 1);
        return new AttributionGraph
        {
            InputTokens = [7],
            Layers = 1,
            ActiveFeatures = [(0, 0, 5)],
            ActivationValues = [1.5f],
            SelectedFeatures = [0],
            LogitTokens = [11, 12],
            LogitProbabilities = [0.6f, 0.2f],
            Adjacency = a,
        };
    }

    /// <summary>
    /// A random graph with the structure of an attribution graph: feature and error sources only reach
    /// features of later layers and the logits, tokens reach everything but tokens; ~half the possible edges.
    /// </summary>
    public static AttributionGraph Random(int seed, int layers = 3, int positions = 4, int featuresPerCell = 2, int logits = 4)
    {
        var rng = new System.Random(seed);
        var features = new List<(int, int, int)>();
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < positions; p++)
                for (int f = 0; f < featuresPerCell; f++) features.Add((l, p, f * 3 + rng.Next(3)));
        var probs = Enumerable.Range(0, logits).Select(_ => (float)rng.NextDouble()).OrderDescending().ToArray();
        float total = probs.Sum() * 1.3f;
        probs = probs.Select(p => p / total).ToArray();
        return Build(layers, Enumerable.Range(0, positions).Select(i => 100 + i).ToArray(), features.ToArray(),
            Enumerable.Range(0, logits).Select(i => 200 + i).ToArray(), probs,
            (g, t, s) =>
            {
                var target = g.Node(t);
                var source = g.Node(s);
                if (target.Kind is NodeKind.Error or NodeKind.Token) return 0f;
                if (target.Kind == NodeKind.Feature && (source.Kind == NodeKind.Logit || source.Position > target.Position
                    || (source.Kind != NodeKind.Token && source.Layer >= target.Layer))) return 0f;
                if (source.Kind == NodeKind.Logit) return 0f;
                return rng.NextDouble() < 0.5 ? 0f : (float)(rng.NextDouble() * 4 - 2);
            });
    }
}
