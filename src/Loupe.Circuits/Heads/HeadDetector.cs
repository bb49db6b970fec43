using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Circuits.Heads;

/// <summary>How <see cref="HeadDetector.Detect"/> builds its sequences and compares patterns.</summary>
public sealed record HeadDetectionSettings
{
    /// <summary>The repeat length used when <see cref="RepeatLength"/> is null and the context allows it (as in the induction literature).</summary>
    public const int DefaultRepeatLength = 50;

    /// <summary>n, the length of the random block that is repeated once; null = min(50, ⌊(n_ctx − BOS) / 2⌋).</summary>
    public int? RepeatLength { get; init; }
    /// <summary>How many random sequences are scored (the scores are means over them).</summary>
    public int Batch { get; init; } = 10;
    /// <summary>Seed of the random blocks: the same seed gives the same tokens.</summary>
    public int Seed { get; init; }
    /// <summary>TransformerLens's error measure for <see cref="HeadScores.TransformerLens"/>.</summary>
    public ErrorMeasure Measure { get; init; } = ErrorMeasure.Mul;
    /// <summary>TransformerLens's <c>exclude_bos</c> (only the TransformerLens scores use it).</summary>
    public bool ExcludeBos { get; init; }
    /// <summary>TransformerLens's <c>exclude_current_token</c> (only the TransformerLens scores use it).</summary>
    public bool ExcludeCurrentToken { get; init; }
    /// <summary>Largest pattern cache one forward pass may hold; the batch is split into passes to fit.</summary>
    public long MaxCacheBytes { get; init; } = 256L << 20;
}

/// <summary>
/// Repeated-token sequences <c>[batch, pos]</c>: each row is BOS (when the model has one), then a block of n
/// distinct random tokens, then the same block again. Length = prefix + 2n; the repeated half is positions
/// prefix + n … prefix + 2n − 1. All rows have the same length, so nothing is padded.
/// </summary>
/// <param name="Rows">Token ids, one array per sequence.</param>
/// <param name="HasBos">Whether position 0 is the BOS token.</param>
/// <param name="RepeatLength">n, the block length.</param>
public sealed record RepeatedTokens(int[][] Rows, bool HasBos, int RepeatLength)
{
    /// <summary>1 with BOS, else 0.</summary>
    public int Prefix => HasBos ? 1 : 0;
    /// <summary>Positions per row: prefix + 2n.</summary>
    public int Length => Prefix + 2 * RepeatLength;
    /// <summary>The first position of the repeated half.</summary>
    public int FirstRepeat => Prefix + RepeatLength;

    /// <summary>
    /// <paramref name="batch"/> rows of BOS? + block + block, the block drawn without replacement from the
    /// vocabulary less the BOS and EOS ids (so an earlier occurrence is unique and BOS never repeats).
    /// </summary>
    /// <param name="config">The model's config (vocabulary, context, BOS/EOS).</param>
    /// <param name="repeatLength">n; null = the default (see <see cref="HeadDetectionSettings.RepeatLength"/>).</param>
    /// <param name="batch">Rows.</param>
    /// <param name="seed">Seed of <see cref="Random"/>.</param>
    /// <exception cref="InputError">n &lt; 2, prefix + 2n &gt; n_ctx, n larger than the usable vocabulary, or batch &lt; 1.</exception>
    public static RepeatedTokens Generate(ModelConfig config, int? repeatLength, int batch, int seed)
    {
        bool bos = config.BosTokenId is int b && b >= 0 && b < config.DVocab;
        int prefix = bos ? 1 : 0, longest = (config.NCtx - prefix) / 2;
        int n = repeatLength ?? Math.Min(HeadDetectionSettings.DefaultRepeatLength, longest);
        string context = $"{(bos ? "BOS + " : "")}2 × n ≤ n_ctx = {config.NCtx}";
        if (n > longest)
            throw InputError.Expected("head detection", "repeat length n", $"at most {longest} so that the sequence fits the context ({context})", n);
        if (n < 2) throw InputError.Expected("head detection", "repeat length n", "at least 2 (a block of one token has no next token to induce)", n);
        if (batch < 1) throw InputError.Expected("head detection", "batch", "at least 1 sequence", batch);
        var usable = Enumerable.Range(0, config.DVocab).Where(t => t != config.BosTokenId && t != config.EosTokenId).ToArray();
        if (n > usable.Length)
            throw InputError.Expected("head detection", "repeat length n", $"at most {usable.Length} (the block's tokens are distinct; the vocabulary less BOS/EOS has {usable.Length})", n);

        var random = new Random(seed);
        var rows = new int[batch][];
        for (int r = 0; r < batch; r++)
        {
            // Partial Fisher–Yates: the first n entries become a uniform draw of n distinct tokens.
            for (int i = 0; i < n; i++)
            {
                int j = random.Next(i, usable.Length);
                (usable[i], usable[j]) = (usable[j], usable[i]);
            }
            var row = new int[prefix + 2 * n];
            if (bos) row[0] = config.BosTokenId!.Value;
            usable.AsSpan(0, n).CopyTo(row.AsSpan(prefix));
            usable.AsSpan(0, n).CopyTo(row.AsSpan(prefix + n));
            rows[r] = row;
        }
        return new RepeatedTokens(rows, bos, n);
    }

    /// <summary>Rows <paramref name="start"/> … start + count − 1 as a token batch.</summary>
    public TokenBatch Slice(int start, int count) => TokenBatch.FromRows(Rows[start..(start + count)]);
}

/// <summary>
/// One kind of head's scores for every head, both as the induction literature defines them and as
/// TransformerLens's <c>detect_head</c> does.
/// </summary>
/// <param name="Kind">Which kind of head.</param>
/// <param name="QueryPositions">The query positions <see cref="Score"/> averages over, and the key each attends to, in words.</param>
/// <param name="Score">
/// <c>[layer][head]</c>: the attention on the expected key, averaged over <see cref="QueryPositions"/> and the rows
/// (previous token: <c>A[q, q−1]</c>; duplicate: <c>A[q, q−n]</c>; induction: <c>A[q, q−n+1]</c>). In [0, 1].
/// </param>
/// <param name="TransformerLens">
/// <c>[layer][head]</c>: TransformerLens's <c>detect_head(model, rows, "&lt;kind&gt;_head", error_measure=…)</c> — the
/// detection pattern of each row compared with the head's whole pattern (every query row) by
/// <see cref="DetectionPatterns.Similarity"/>, then averaged over rows. Rows without a target (the first half for
/// duplicate and induction, position 0 for previous token) count with score 0 under <c>Mul</c>, so a perfect
/// induction head scores n/(prefix + 2n) ≈ 0.5 here and 1 in <see cref="Score"/>.
/// </param>
public sealed record HeadScores(HeadKind Kind, string QueryPositions, double[][] Score, double[][] TransformerLens);

/// <summary>The outcome of <see cref="HeadDetector.Detect"/>.</summary>
/// <param name="Tokens">The sequences the model ran on.</param>
/// <param name="Settings">The settings used (with the repeat length resolved).</param>
/// <param name="NLayers">Layers scored.</param>
/// <param name="NHeads">Heads per layer (query heads).</param>
/// <param name="Passes">Forward passes run.</param>
/// <param name="Scores">One entry per <see cref="HeadKind"/>, in enum order.</param>
public sealed record HeadDetectionResult(RepeatedTokens Tokens, HeadDetectionSettings Settings, int NLayers, int NHeads, int Passes, IReadOnlyList<HeadScores> Scores)
{
    /// <summary>The scores of one kind.</summary>
    public HeadScores this[HeadKind kind] => Scores[(int)kind];

    /// <summary>The <paramref name="count"/> heads with the highest <see cref="HeadScores.Score"/> of <paramref name="kind"/>, best first.</summary>
    public IReadOnlyList<(int Layer, int Head, double Score)> Top(HeadKind kind, int count) =>
        [.. Enumerable.Range(0, NLayers).SelectMany(l => Enumerable.Range(0, NHeads).Select(h => (Layer: l, Head: h, Score: this[kind].Score[l][h])))
            .OrderByDescending(x => x.Score).ThenBy(x => x.Layer).ThenBy(x => x.Head).Take(count)];
}

/// <summary>
/// Finds previous-token, duplicate-token and induction heads from behaviour, as TransformerLens's head detector
/// and the induction-head literature (Olsson et al. 2022; ARENA's induction score) do:
/// 1. Draw the repeated-token sequences (<see cref="RepeatedTokens.Generate"/>).
/// 2. Split the rows into as few forward passes as the pattern-cache budget allows; run each once, caching
///    only <c>blocks.*.attn.hook_pattern</c> (<c>[batch, head_index, query_pos, key_pos]</c>).
/// 3. For each layer, head and row, read the attention on each kind's expected key over its query positions
///    (<see cref="HeadScores.Score"/>) and TransformerLens's detection-pattern similarity
///    (<see cref="HeadScores.TransformerLens"/>); sum over rows.
/// 4. Divide by the number of rows.
/// Any family works: the pattern hook has the same layout in every one (grouped-query models report query heads).
/// </summary>
public static class HeadDetector
{
    const int Kinds = 3;

    static readonly string[] s_queryPositions =
    [
        "every position q whose previous token is not BOS (q = prefix+1 … prefix+2n−1), key q−1",
        "the repeated half (q = prefix+n … prefix+2n−1), key q−n (the earlier occurrence of the same token)",
        "the repeated half (q = prefix+n … prefix+2n−1), key q−n+1 (the token after the earlier occurrence)",
    ];

    /// <summary>Scores every head of <paramref name="model"/> on freshly drawn repeated-token sequences.</summary>
    /// <param name="model">Any loaded model.</param>
    /// <param name="settings">Sequence and scoring settings; null = defaults.</param>
    /// <exception cref="InputError">The sequences do not fit the model (see <see cref="RepeatedTokens.Generate"/>).</exception>
    public static HeadDetectionResult Detect(HookedTransformer model, HeadDetectionSettings? settings = null)
    {
        settings ??= new HeadDetectionSettings();
        var tokens = RepeatedTokens.Generate(model.Config, settings.RepeatLength, settings.Batch, settings.Seed);
        settings = settings with { RepeatLength = tokens.RepeatLength };
        int layers = model.Config.NLayers, rowsTotal = tokens.Rows.Length;
        var hooks = Enumerable.Range(0, layers).Select(HookNames.Pattern).ToArray();
        long perRow = Math.Max(1, model.EstimateCacheBytes(hooks, 1, tokens.Length, out _));
        int rowsPerPass = (int)Math.Clamp(settings.MaxCacheBytes / perRow, 1, rowsTotal);

        int heads = 0, passes = 0;
        double[][][] score = [], tl = [];
        for (int start = 0; start < rowsTotal; start += rowsPerPass, passes++)
        {
            int rows = Math.Min(rowsPerPass, rowsTotal - start);
            var run = model.RunWithCache(tokens.Slice(start, rows), "blocks.*.attn.hook_pattern", new RunOptions { LastPositionLogitsOnly = true });
            var cache = run.Cache;
            for (int l = 0; l < layers; l++)
            {
                var pattern = cache[HookNames.Pattern(l)].ToCpu(); // [rows, head_index, query_pos, key_pos]
                if (heads == 0)
                {
                    heads = pattern.Dim(1);
                    score = NewSums(layers, heads);
                    tl = NewSums(layers, heads);
                }
                Accumulate(pattern.Span, rows, heads, tokens, start, settings, score[l], tl[l]);
            }
            model.Recycle(run); // accumulated: the next pass reuses these patterns' storage
        }
        var result = new HeadScores[Kinds];
        for (int k = 0; k < Kinds; k++)
            result[k] = new HeadScores((HeadKind)k, s_queryPositions[k],
                [.. Enumerable.Range(0, layers).Select(l => score[l][k].Select(s => s / rowsTotal).ToArray())],
                [.. Enumerable.Range(0, layers).Select(l => tl[l][k].Select(s => s / rowsTotal).ToArray())]);
        return new HeadDetectionResult(tokens, settings, layers, heads, passes, result);
    }

    /// <summary>
    /// The scores of one layer's pattern: <c>(Score, TransformerLens)</c>, each <c>[kind][head]</c> and averaged over
    /// the rows of <paramref name="tokens"/> (see <see cref="HeadScores"/> for the formulas).
    /// </summary>
    /// <param name="pattern"><c>[batch, head_index, query_pos, key_pos]</c> for every row of <paramref name="tokens"/>, row-major.</param>
    /// <param name="heads">head_index size.</param>
    /// <param name="tokens">The sequences the pattern was computed on.</param>
    /// <param name="settings">Error measure and exclusions for the TransformerLens scores.</param>
    /// <exception cref="ArgumentException">The pattern's size is not batch × heads × pos × pos.</exception>
    public static (double[][] Score, double[][] TransformerLens) ScoreLayer(ReadOnlySpan<float> pattern, int heads, RepeatedTokens tokens, HeadDetectionSettings settings)
    {
        var score = NewSums(1, heads)[0];
        var tl = NewSums(1, heads)[0];
        int rows = tokens.Rows.Length;
        Accumulate(pattern, rows, heads, tokens, 0, settings, score, tl);
        foreach (var kind in score.Concat(tl))
            for (int h = 0; h < heads; h++) kind[h] /= rows;
        return (score, tl);
    }

    static double[][][] NewSums(int layers, int heads) =>
        [.. Enumerable.Range(0, layers).Select(_ => Enumerable.Range(0, Kinds).Select(_ => new double[heads]).ToArray())];

    /// <summary>Adds each row's per-head scores of one layer into <paramref name="score"/> and <paramref name="tl"/> (<c>[kind][head]</c>).</summary>
    static void Accumulate(ReadOnlySpan<float> pattern, int rows, int heads, RepeatedTokens tokens, int firstRow,
        HeadDetectionSettings settings, double[][] score, double[][] tl)
    {
        int L = tokens.Length, n = tokens.RepeatLength, square = L * L;
        if (pattern.Length != (long)rows * heads * square)
            throw new ArgumentException($"a pattern of {pattern.Length} values is not [{rows}, {heads}, {L}, {L}]", nameof(pattern));
        int previousFrom = tokens.Prefix + 1, repeatFrom = tokens.FirstRepeat;
        for (int r = 0; r < rows; r++)
        {
            var row = tokens.Rows[firstRow + r];
            var detection = new float[Kinds][];
            for (int k = 0; k < Kinds; k++) detection[k] = DetectionPatterns.For((HeadKind)k, row);
            for (int h = 0; h < heads; h++)
            {
                var a = pattern.Slice((r * heads + h) * square, square); // [query_pos, key_pos]
                double previous = 0, duplicate = 0, induction = 0;
                for (int q = previousFrom; q < L; q++) previous += a[q * L + q - 1];
                for (int q = repeatFrom; q < L; q++)
                {
                    duplicate += a[q * L + q - n];
                    induction += a[q * L + q - n + 1];
                }
                score[(int)HeadKind.PreviousToken][h] += previous / (L - previousFrom);
                score[(int)HeadKind.DuplicateToken][h] += duplicate / n;
                score[(int)HeadKind.Induction][h] += induction / n;
                for (int k = 0; k < Kinds; k++)
                    tl[k][h] += DetectionPatterns.Similarity(a, detection[k], settings.Measure, settings.ExcludeBos, settings.ExcludeCurrentToken);
            }
        }
    }
}
