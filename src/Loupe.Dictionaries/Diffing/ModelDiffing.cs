// Model diffing without a dictionary: where, and in which directions, a fine-tune (B) computes differently from its base
// model (A) on the same tokens.
//
// Shape legend: C contexts of T tokens; d the width of a hook; V the output vocabulary; k the leading positions kept apart.
// 1. Output divergence, per position t of every context: KL(p_B ‖ p_A) = Σ_v p_B(v)·(log p_B(v) − log p_A(v)) of the two
//    next-token distributions (log-softmax in double) — its mean, its mean by position, a histogram, and the positions where
//    it is largest with both models' top next token there.
// 2. Activation differences (Minder, Dumas et al. 2025, "Narrow finetuning leaves clearly readable traces in activation
//    differences": the Activation Difference Lens), per hook: δ_j = mean over contexts of (h_B − h_A) at each position
//    j < k, and δ_all, the mean over every position past 0 (the BOS, whose activations are outliers in both); with ‖δ‖,
//    the base model's mean ‖h_A‖ there, and δ read through each model's final norm (its weight folded, scale 1) and
//    unembedding: the tokens it promotes and suppresses (LogitEffects, as SAE dashboards read a decoder row).
// Sums run in double (across batches; on a device, in float within one batch or one context's row). With both models on
// one device the statistics are reduced there and what a batch reads back is one vector per hook and one per context
// (AddOnDevice). The vectors are saved one file per hook, each tensor a steering vector (`loupe steer --vector
// FILE:all`): what the fine-tune adds, to add to the base model or to remove from the fine-tune.
using System.Numerics.Tensors;
using System.Text.Json.Serialization;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Tensors.Backends;
using Tensor = Loupe.Tensors.Tensor;

namespace Loupe.Dictionaries.Diffing;

/// <summary>How a model diff runs.</summary>
public sealed record ModelDiffOptions
{
    /// <summary>Contexts per forward pass.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>k: the leading positions whose differences are kept one by one (ADL reads the first few).</summary>
    public int Positions { get; init; } = 5;

    /// <summary>The positions of largest KL listed.</summary>
    public int TopPositions { get; init; } = 20;

    /// <summary>Promoted and suppressed tokens listed per difference vector.</summary>
    public int LogitTokens { get; init; } = 10;

    /// <summary>Bins of the KL histogram.</summary>
    public int Bins { get; init; } = 50;

    /// <exception cref="InputError">A count out of range.</exception>
    public void Validate()
    {
        if (BatchSize < 1) throw InputError.Expected("argument", "--batch-size", "at least 1", BatchSize);
        if (Positions is < 0 or > 4096) throw InputError.Expected("argument", "--positions", "0 to 4096", Positions);
        if (TopPositions is < 0 or > 100_000) throw InputError.Expected("argument", "--top", "0 to 100000", TopPositions);
        if (LogitTokens is < 1 or > 1000) throw InputError.Expected("argument", "--logit-tokens", "1 to 1000", LogitTokens);
        if (Bins is < 1 or > 10_000) throw InputError.Expected("argument", "--bins", "1 to 10000", Bins);
    }
}

/// <summary>A position where the two models' predictions differ much.</summary>
/// <param name="Context">The context's index.</param>
/// <param name="Position">The position (its next-token distributions are compared).</param>
/// <param name="Kl">KL(p_B ‖ p_A) there, in nats.</param>
/// <param name="Token">The token at that position.</param>
/// <param name="TopA">The base model's most likely next token.</param>
/// <param name="TopB">The fine-tune's.</param>
/// <param name="ProbAOfTopB">The base model's probability of the fine-tune's top token.</param>
/// <param name="ProbBOfTopB">The fine-tune's probability of it.</param>
public sealed record DivergentPosition(int Context, int Position, double Kl, int Token, int TopA, int TopB, double ProbAOfTopB, double ProbBOfTopB)
{
    /// <summary>The context's tokens up to and including the position (at most <see cref="ModelDiffing.WindowTokens"/>), to read it in context.</summary>
    public int[] Before { get; init; } = [];

    /// <summary>The token that follows in the context (−1 at its end): what both models were predicting.</summary>
    public int Next { get; init; } = -1;
}

/// <summary>A token a difference vector promotes or suppresses through one model's unembedding.</summary>
public sealed record DiffToken(int Token, double Logit);

/// <summary>One mean activation difference.</summary>
/// <param name="Hook">The hook.</param>
/// <param name="Position">The position, or −1 for the mean over every position past 0.</param>
/// <param name="Norm">‖δ‖.</param>
/// <param name="BaseNorm">The base model's mean ‖h_A‖ over the same rows.</param>
/// <param name="PromotedA">Through the base model's final norm and unembedding: the largest logits, largest first.</param>
/// <param name="SuppressedA">The smallest.</param>
/// <param name="PromotedB">Through the fine-tune's.</param>
/// <param name="SuppressedB">The smallest.</param>
public sealed record ActivationDifference(string Hook, int Position, double Norm, double BaseNorm,
    IReadOnlyList<DiffToken> PromotedA, IReadOnlyList<DiffToken> SuppressedA, IReadOnlyList<DiffToken> PromotedB, IReadOnlyList<DiffToken> SuppressedB)
{
    /// <summary>‖δ‖ / mean ‖h_A‖.</summary>
    public double Relative => BaseNorm > 0 ? Norm / BaseNorm : double.NaN;
}

/// <summary>A model diff (see the file header).</summary>
public sealed record ModelDiffResult
{
    public required string ModelA { get; init; }
    public required string ModelB { get; init; }
    public required int Contexts { get; init; }
    public required int ContextSize { get; init; }
    /// <summary>Mean KL(p_B ‖ p_A) over every position of every context.</summary>
    public required double MeanKl { get; init; }
    /// <summary>Mean KL by position [T].</summary>
    public required double[] MeanKlByPosition { get; init; }
    /// <summary>KL histogram: bin edges over [0, max] and counts.</summary>
    public required double[] KlHistogramEdges { get; init; }
    public required long[] KlHistogramCounts { get; init; }
    /// <summary>The positions of largest KL, largest first.</summary>
    public required IReadOnlyList<DivergentPosition> TopPositions { get; init; }
    /// <summary>Per hook: δ_j for j &lt; k, then δ_all (position −1).</summary>
    public required IReadOnlyList<ActivationDifference> Differences { get; init; }
    /// <summary>The vectors, per hook: "pos_J" and "all" [d] (not in the JSON; <see cref="ModelDiffing.SaveVectors"/> writes them).</summary>
    [JsonIgnore] public IReadOnlyDictionary<string, IReadOnlyDictionary<string, float[]>> Vectors { get; init; } = new Dictionary<string, IReadOnlyDictionary<string, float[]>>();
}

/// <summary>Computes <see cref="ModelDiffResult"/> (see the file header).</summary>
public static class ModelDiffing
{
    /// <summary>Tokens of context kept with each divergent position (it included).</summary>
    public const int WindowTokens = 12;

    /// <summary>Diffs <paramref name="b"/> (the fine-tune) against <paramref name="a"/> (the base) on <paramref name="contexts"/> at <paramref name="hooks"/>.</summary>
    /// <exception cref="InputError">The models read different vocabularies, a hook is not a per-position hook of both with one
    /// width, a context is longer than a model's n_ctx, or an option is out of range.</exception>
    public static ModelDiffResult Compute(HookedTransformer a, HookedTransformer b, HarvestContexts contexts, IReadOnlyList<string> hooks,
        ModelDiffOptions? options = null, IProgress<int>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        ArgumentNullException.ThrowIfNull(contexts);
        ArgumentNullException.ThrowIfNull(hooks);
        var o = options ?? new ModelDiffOptions();
        o.Validate();
        if (contexts.Count == 0) throw new InputError("no contexts to compare the models on");
        if (a.Config.DVocab != b.Config.DVocab || a.Config.VocabOut != b.Config.VocabOut)
            throw new InputError($"the models read different vocabularies (d_vocab {a.Config.DVocab} and {b.Config.DVocab}); a diff compares them on the same token ids");
        int T = contexts.ContextSize, V = a.Config.VocabOut, k = Math.Min(o.Positions, T);
        foreach (var m in new[] { a, b })
            if (T > m.Config.NCtx) throw InputError.Expected("argument", "context size", $"at most n_ctx = {m.Config.NCtx}", T);
        var widths = hooks.Select(h => Width(a, b, h)).ToArray();
        var set = hooks.ToHashSet(StringComparer.Ordinal);

        int H = hooks.Count;
        var sums = new Sums(H, widths, k, T, contexts.Count, o.TopPositions);
        var backends = new[] { a.Backend, b.Backend }.Distinct().ToArray();
        var device = backends.Length == 1 && !backends[0].Device.IsCpu ? backends[0] : null;

        for (int start = 0; start < contexts.Count; start += o.BatchSize)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int bs = Math.Min(o.BatchSize, contexts.Count - start);
            var ids = contexts.Ids(start, bs);
            var batch = new TokenBatch(ids, bs, T);
            var runA = a.Run(batch, new RunOptions { CacheFilter = set.Contains });
            var runB = b.Run(batch, new RunOptions { CacheFilter = set.Contains });
            if (device is not null) AddOnDevice(device, runA, runB, hooks, widths, ids, start, bs, T, V, k, sums);
            else AddOnHost(runA, runB, hooks, widths, ids, start, bs, T, V, k, sums);
            sums.RowsAll += (long)bs * (T - 1);
            a.Recycle(runA);
            b.Recycle(runB);
            progress?.Report(start + bs);
        }
        var (sumPos, sumAll, normPos, normAll, klByPosition, klValues, rowsAll) = (sums.SumPos, sums.SumAll, sums.NormPos, sums.NormAll, sums.KlByPosition, sums.KlValues, sums.RowsAll);
        var top = sums.Top;

        int C = contexts.Count;
        var vectors = new Dictionary<string, IReadOnlyDictionary<string, float[]>>(StringComparer.Ordinal);
        var differences = new List<ActivationDifference>();
        for (int h = 0; h < H; h++)
        {
            int d = widths[h];
            var perHook = new Dictionary<string, float[]>(StringComparer.Ordinal);
            var rows = new List<(int Position, float[] Vector, double BaseNorm)>();
            for (int t = 0; t < k; t++)
                rows.Add((t, [.. sumPos[h].AsSpan(t * d, d).ToArray().Select(v => (float)(v / C))], normPos[h, t] / C));
            if (rowsAll > 0) rows.Add((-1, [.. sumAll[h].Select(v => (float)(v / rowsAll))], normAll[h] / rowsAll));
            // the logit lens of every vector of this hook through each model, when the hook is residual-width
            FeatureLogits[]? lensA = null, lensB = null;
            if (d == a.Config.DModel && d == b.Config.DModel && rows.Count > 0)
            {
                var flat = rows.SelectMany(r => r.Vector).ToArray();
                lensA = LogitEffects.Compute(a, flat, rows.Count, o.LogitTokens, 1, cancellationToken);
                lensB = LogitEffects.Compute(b, flat, rows.Count, o.LogitTokens, 1, cancellationToken);
            }
            for (int r = 0; r < rows.Count; r++)
            {
                var (position, vector, baseNorm) = rows[r];
                perHook[position < 0 ? "all" : $"pos_{position}"] = vector;
                static DiffToken[] Tokens(LogitEntry[]? entries) => entries is null ? [] : [.. entries.Select(e => new DiffToken(e.TokenId, e.Value))];
                differences.Add(new ActivationDifference(hooks[h], position, TensorPrimitives.Norm(vector), baseNorm,
                    Tokens(lensA?[r].Promoted), Tokens(lensA?[r].Suppressed), Tokens(lensB?[r].Promoted), Tokens(lensB?[r].Suppressed)));
            }
            vectors[hooks[h]] = perHook;
        }

        double maxKl = klValues.Length == 0 ? 0 : klValues.Max();
        int bins = o.Bins;
        var edges = Enumerable.Range(0, bins + 1).Select(i => maxKl * i / bins).ToArray();
        var counts = new long[bins];
        foreach (double v in klValues) counts[maxKl > 0 ? Math.Min(bins - 1, (int)(v / maxKl * bins)) : 0]++;
        var topList = new List<DivergentPosition>();
        while (top.Count > 0) topList.Add(top.Dequeue());
        topList.Reverse();
        for (int i = 0; i < topList.Count; i++)
        {
            var p = topList[i];
            var tokens = contexts.Ids(p.Context, 1);
            topList[i] = p with { Before = tokens[Math.Max(0, p.Position - WindowTokens + 1)..(p.Position + 1)], Next = p.Position + 1 < T ? tokens[p.Position + 1] : -1 };
        }
        return new ModelDiffResult
        {
            ModelA = a.Source ?? "(in memory)", ModelB = b.Source ?? "(in memory)", Contexts = C, ContextSize = T,
            MeanKl = klValues.Average(), MeanKlByPosition = [.. klByPosition.Select(v => v / C)],
            KlHistogramEdges = edges, KlHistogramCounts = counts,
            TopPositions = [.. topList.OrderByDescending(p => p.Kl).ThenBy(p => p.Context).ThenBy(p => p.Position)],
            Differences = differences, Vectors = vectors,
        };
    }

    /// <summary>The running sums of a diff, in double (steps 1–2 of the file header).</summary>
    sealed class Sums(int hooks, int[] widths, int k, int T, int contexts, int topPositions)
    {
        public readonly double[][] SumPos = [.. Enumerable.Range(0, hooks).Select(h => new double[k * widths[h]])]; // Σ (h_B − h_A) at positions j < k
        public readonly double[][] SumAll = [.. Enumerable.Range(0, hooks).Select(h => new double[widths[h]])];     // over positions ≥ 1
        public readonly double[,] NormPos = new double[hooks, Math.Max(k, 1)];                                       // Σ ‖h_A‖ at j < k
        public readonly double[] NormAll = new double[hooks];
        public readonly double[] KlByPosition = new double[T];
        public readonly double[] KlValues = new double[(long)contexts * T];
        public readonly PriorityQueue<DivergentPosition, double> Top = new();
        public long RowsAll;

        public void AddPosition(int context, int position, double kl, int token, int topA, int topB, double probAOfTopB, double probBOfTopB)
        {
            kl = Math.Max(kl, 0); // rounding can leave −1e-17 (host) or −1e-7 (device, float) for identical rows
            KlValues[(long)context * T + position] = kl;
            KlByPosition[position] += kl;
            if (topPositions == 0) return;
            var entry = new DivergentPosition(context, position, kl, token, topA, topB, probAOfTopB, probBOfTopB);
            if (Top.Count < topPositions) Top.Enqueue(entry, kl);
            else if (kl > Top.Peek().Kl) Top.EnqueueDequeue(entry, kl);
        }
    }

    // Steps 1–2 of one batch on the host (the hooks and logits read back).
    static void AddOnHost(ForwardResult runA, ForwardResult runB, IReadOnlyList<string> hooks, int[] widths, int[] ids, int start, int bs, int T, int V, int k, Sums sums)
    {
        for (int h = 0; h < hooks.Count; h++)
        {
            int d = widths[h];
            var xa = runA.Cache[hooks[h]].ToCpu().Span;
            var xb = runB.Cache[hooks[h]].ToCpu().Span;
            for (int c = 0; c < bs; c++)
                for (int t = 0; t < T; t++)
                {
                    int o0 = (c * T + t) * d;
                    var ra = xa.Slice(o0, d);
                    var rb = xb.Slice(o0, d);
                    double na = TensorPrimitives.Norm(ra);
                    if (t < k)
                    {
                        var acc = sums.SumPos[h].AsSpan(t * d, d);
                        for (int j = 0; j < d; j++) acc[j] += (double)rb[j] - ra[j];
                        sums.NormPos[h, t] += na;
                    }
                    if (t >= 1)
                    {
                        var acc = sums.SumAll[h];
                        for (int j = 0; j < d; j++) acc[j] += (double)rb[j] - ra[j];
                        sums.NormAll[h] += na;
                    }
                }
        }
        var la = runA.Logits.ToCpu().Span;
        var lb = runB.Logits.ToCpu().Span;
        var logA = new double[V];
        var logB = new double[V];
        for (int c = 0; c < bs; c++)
            for (int t = 0; t < T; t++)
            {
                int row = (c * T + t) * V;
                int topA = LogSoftmax(la.Slice(row, V), logA), topB = LogSoftmax(lb.Slice(row, V), logB);
                double kl = 0;
                for (int v = 0; v < V; v++)
                {
                    double pb = Math.Exp(logB[v]);
                    if (pb > 0) kl += pb * (logB[v] - logA[v]);
                }
                sums.AddPosition(start + c, t, kl, ids[c * T + t], topA, topB, Math.Exp(logA[topB]), Math.Exp(logB[topB]));
            }
    }

    // Steps 1–2 of one batch with both models on one device: per hook, Σ over contexts of h_B − h_A at every position, the
    // sum over positions ≥ 1 of it, and Σ ‖h_A‖ per position, packed and read back once; per context, KL per row
    // (LogSoftmaxRows, SoftmaxRows, DifferenceProduct summed per row), both argmaxes (TopKRows, k = 1) and both models'
    // probabilities of B's argmax (a one-hot by ScatterRows, dotted with each softmax), packed and read back once.
    // No hook or logit row crosses; the token ids go in with the runs.
    static void AddOnDevice(IComputeBackend be, ForwardResult runA, ForwardResult runB, IReadOnlyList<string> hooks, int[] widths, int[] ids, int start, int bs, int T, int V, int k, Sums sums)
    {
        static Tensor View(Tensor t, long offset, int length) => new(t.Storage.Slice(offset, length), length);
        for (int h = 0; h < hooks.Count; h++)
        {
            int d = widths[h];
            var xa = runA.Cache[hooks[h]];
            var xb = runB.Cache[hooks[h]];
            var diff = be.Empty(bs, T, d);
            be.Scale(xa, -1f, diff);
            be.Add(diff, xb, diff);
            var perPosition = be.Empty(T * d);
            be.SumMiddleAxis(diff, 1, bs, T * d, perPosition);
            var norms = be.Empty(bs * T);
            var inverse = be.Empty(bs * T);
            be.RowDots(xa, xa, bs * T, d, norms);
            be.NormScale(norms, 1f, false, inverse);   // 1/‖h‖ (1 for a zero row)
            be.Multiply(norms, inverse, norms);        // ‖h‖² / ‖h‖
            int length = k * d + d + T;
            var packed = be.Empty(length);
            if (k > 0) be.CopyRows(perPosition, 0, k * d, packed, 0, k * d, 1, k * d);
            if (T > 1) be.SumMiddleAxis(View(perPosition, d, (T - 1) * d), 1, T - 1, d, View(packed, k * d, d));
            else be.Fill(View(packed, k * d, d), 0f);
            be.SumMiddleAxis(norms, 1, bs, T, View(packed, k * d + d, T));
            var host = new float[length];
            packed.CopyTo(host);
            for (int i = 0; i < k * d; i++) sums.SumPos[h][i] += host[i];
            for (int j = 0; j < d; j++) sums.SumAll[h][j] += host[k * d + j];
            for (int t = 0; t < T; t++)
            {
                double n = host[k * d + d + t];
                if (t < k) sums.NormPos[h, t] += n;
                if (t >= 1) sums.NormAll[h] += n;
            }
        }
        var (logA, logB, pA, pB, work) = (be.Empty(T, V), be.Empty(T, V), be.Empty(T, V), be.Empty(T, V), be.Empty(T, V));
        var (valueA, valueB, indexA, indexB, ones) = (be.Empty(T, 1), be.Empty(T, 1), be.Empty(T, 1), be.Empty(T, 1), be.Empty(T, 1));
        be.Fill(ones, 1f);
        var rows = be.Empty(5 * T);
        var back = new float[5 * T];
        for (int c = 0; c < bs; c++)
        {
            var la = new Tensor(runA.Logits.Storage.Slice((long)c * T * V, T * V), T, V);
            var lb = new Tensor(runB.Logits.Storage.Slice((long)c * T * V, T * V), T, V);
            be.LogSoftmaxRows(la, T, V, logA);
            be.LogSoftmaxRows(lb, T, V, logB);
            be.SoftmaxRows(la, T, V, pA);
            be.SoftmaxRows(lb, T, V, pB);
            be.DifferenceProduct(logB, logA, pB, work);              // p_B·(log p_B − log p_A)
            be.SumMiddleAxis(work, T, V, 1, View(rows, 0, T));        // KL per row
            be.TopKRows(la, T, V, 1, valueA, indexA);
            be.TopKRows(lb, T, V, 1, valueB, indexB);
            be.CopyRows(indexA, 0, T, rows, T, T, 1, T);
            be.CopyRows(indexB, 0, T, rows, 2 * T, T, 1, T);
            be.ScatterRows(ones, indexB, T, 1, V, work);              // one-hot of B's argmax per row
            be.RowDots(pA, work, T, V, View(rows, 3 * T, T));
            be.RowDots(pB, work, T, V, View(rows, 4 * T, T));
            rows.CopyTo(back);
            for (int t = 0; t < T; t++)
                sums.AddPosition(start + c, t, back[t], ids[c * T + t], (int)back[T + t], (int)back[2 * T + t], back[3 * T + t], back[4 * T + t]);
        }
    }

    // log-softmax of a logit row into `log` (double); returns the argmax
    static int LogSoftmax(ReadOnlySpan<float> logits, double[] log)
    {
        int arg = TensorPrimitives.IndexOfMax(logits);
        double max = logits[arg], sum = 0;
        for (int v = 0; v < logits.Length; v++) sum += Math.Exp(logits[v] - max);
        double lse = max + Math.Log(sum);
        for (int v = 0; v < logits.Length; v++) log[v] = logits[v] - lse;
        return arg;
    }

    // d of a [batch, pos, d] hook both models declare with one width
    static int Width(HookedTransformer a, HookedTransformer b, string hook)
    {
        int? width = null;
        foreach (var (m, label) in new[] { (a, "A"), (b, "B") })
        {
            var point = m.HookPoints.FirstOrDefault(p => p.Name == hook)
                ?? throw new InputError($"argument: --hooks: '{hook}' is not a hook point of model {label}; closest names: {string.Join(", ", HookNames.Closest(hook, m.HookPointNames))}");
            if (point.Axes.Count != 3 || point.Sizes[2] is not int d)
                throw new InputError($"argument: --hooks: '{hook}' has axes [{string.Join(", ", point.Axes)}]; a diff reads per-position vectors [batch, pos, d]");
            if (width is int w && w != d) throw new InputError($"argument: --hooks: '{hook}' is {w} wide in model A and {d} in model B");
            width = d;
        }
        return width!.Value;
    }

    /// <summary>
    /// Writes each hook's vectors to <c>FOLDER/HOOK.safetensors</c> (tensors "pos_J" and "all", the hook in the metadata): each a
    /// steering vector <c>loupe steer --vector FILE:all</c> reads. Written atomically.
    /// </summary>
    public static IReadOnlyList<string> SaveVectors(string folder, ModelDiffResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        Directory.CreateDirectory(folder);
        var written = new List<string>();
        foreach (var (hook, vectors) in result.Vectors)
        {
            string path = Path.Combine(folder, hook + ".safetensors");
            var metadata = new Dictionary<string, string>
            {
                ["format"] = "loupe-activation-difference",
                ["hook"] = hook,
                [HookNames.SemanticsKey] = HookNames.Semantics,
                ["model_a"] = result.ModelA,
                ["model_b"] = result.ModelB,
                ["definition"] = "mean over contexts of h_B − h_A: pos_J at position J, all over every position past 0",
                ["contexts"] = $"{result.Contexts} × {result.ContextSize}",
            };
            OutputFiles.EnsureReplaceable(Path.GetFullPath(path));
            SafeTensorsWriter.Write(path, [.. vectors.Select(kv => (kv.Key, new[] { kv.Value.Length }, (ReadOnlyMemory<float>)kv.Value))], metadata);
            written.Add(path);
        }
        return written;
    }
}
