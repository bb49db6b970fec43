using Loupe.Causal.Lens;
using Loupe.Circuits.Heads;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Serve;

/// <summary>A prompt as text (tokenized by the model) or as token ids: exactly one.</summary>
/// <param name="Text">Text to tokenize with the model's tokenizer (BOS as its template says).</param>
/// <param name="Tokens">Raw token ids (no BOS added).</param>
/// <param name="TopK">How many next tokens to return per position (1–50, default 10).</param>
public sealed record PromptRequest(string? Text, int[]? Tokens, int? TopK);

/// <summary>A token id and how it reads.</summary>
/// <param name="Id">The token id.</param>
/// <param name="Text">The decoded text (the id itself when the model has no tokenizer).</param>
public sealed record TokenView(int Id, string Text);

/// <summary>A candidate next token.</summary>
/// <param name="Id">The token id.</param>
/// <param name="Text">The decoded text.</param>
/// <param name="Prob">Its probability.</param>
public sealed record NextTokenView(int Id, string Text, double Prob);

/// <summary>The logit lens over every stage × position, arrays <c>[stage][position]</c>.</summary>
/// <param name="Stages">Stage labels, resid_pre 0 … final.</param>
/// <param name="TopToken">The lens's top token.</param>
/// <param name="TopText">Its text.</param>
/// <param name="TopProb">Its probability.</param>
/// <param name="FinalTopProb">The probability of the model's final top token at that position.</param>
public sealed record LensView(string[] Stages, int[][] TopToken, string[][] TopText, double[][] TopProb, double[][] FinalTopProb);

/// <summary>One component's direct contribution to the explained logit.</summary>
/// <param name="Name">e.g. <c>embed</c>, <c>L0H3</c>, <c>mlp 2</c>.</param>
/// <param name="Kind">The component kind as the library names it.</param>
/// <param name="Layer">Its layer (−1 for embeddings).</param>
/// <param name="Head">Its head (−1 when not a head).</param>
/// <param name="Value">Its contribution to the logit.</param>
public sealed record DlaComponentView(string Name, string Kind, int Layer, int Head, double Value);

/// <summary>Direct logit attribution of the last position's top token.</summary>
/// <param name="Token">The explained token.</param>
/// <param name="Position">The explained position.</param>
/// <param name="Logit">Its logit before any final soft-cap.</param>
/// <param name="Components">Each component's contribution.</param>
/// <param name="NormBias">The final norm's bias term.</param>
/// <param name="UnembedBias">The unembedding's bias term.</param>
public sealed record DlaView(TokenView Token, int Position, double Logit, DlaComponentView[] Components, double NormBias, double UnembedBias);

/// <summary>Everything the Prompt page shows.</summary>
/// <param name="Tokens">The prompt's tokens.</param>
/// <param name="TopK">The top-k next tokens per position.</param>
/// <param name="Lens">The logit lens grid.</param>
/// <param name="Dla">Direct logit attribution at the last position.</param>
/// <param name="TunedLens">The tuned lens grid (the server's --tuned), or null.</param>
public sealed record PromptResponse(TokenView[] Tokens, NextTokenView[][] TopK, LensView Lens, DlaView Dla, LensView? TunedLens = null);

/// <summary>Every head's pattern for a prompt and the model's head-detection scores.</summary>
/// <param name="Tokens">The prompt's tokens.</param>
/// <param name="Layers">n_layers.</param>
/// <param name="Heads">n_heads.</param>
/// <param name="Patterns"><c>[layer][head][query][key]</c>; each row sums to 1.</param>
/// <param name="Detection">Head-detection scores.</param>
public sealed record AttentionResponse(TokenView[] Tokens, int Layers, int Heads, float[][][][] Patterns, DetectionView Detection);

/// <summary>Head-detection scores per kind, <c>[layer][head]</c>.</summary>
/// <param name="Kinds">previous_token, duplicate_token, induction.</param>
/// <param name="Scores">One <c>[layer][head]</c> table per kind.</param>
/// <param name="Sequences">How many repeated-token sequences were scored.</param>
/// <param name="RepeatLength">The length of each repeated half.</param>
public sealed record DetectionView(string[] Kinds, double[][][] Scores, int Sequences, int RepeatLength);

/// <summary>The model as the Model endpoint shows it.</summary>
/// <param name="Name">The folder name.</param>
/// <param name="Family">The architecture.</param>
/// <param name="Layers">n_layers.</param>
/// <param name="Heads">n_heads.</param>
/// <param name="DModel">d_model.</param>
/// <param name="Vocab">d_vocab.</param>
/// <param name="NCtx">n_ctx.</param>
/// <param name="HasTokenizer">Whether text prompts are accepted.</param>
/// <param name="MaxPromptTokens">The longest prompt accepted.</param>
/// <param name="Processing">Weight processing applied on load, if any.</param>
/// <param name="Device">Where the model runs, as <c>--device</c> names it (cpu, cuda:0, emulated).</param>
/// <param name="DeviceName">The device as its driver names it.</param>
/// <param name="Backend">The compute backend's name.</param>
/// <param name="DeviceMemoryBytes">The device's memory (host memory for the CPU), when known.</param>
/// <param name="DeviceFreeMemoryBytes">Of which free, when known.</param>
public sealed record ModelView(string Name, string Family, int Layers, int Heads, int DModel, int Vocab, int NCtx, bool HasTokenizer, int MaxPromptTokens, string? Processing,
    string Device, string DeviceName, string Backend, long? DeviceMemoryBytes, long? DeviceFreeMemoryBytes);

/// <summary>The computations behind the API: thin projections of the library's results into JSON shapes.</summary>
public static class Analyses
{
    public static ModelView Describe(HookedTransformer m, ServeOptions options)
    {
        var c = m.Config;
        string name = m.Source is { } s ? Path.GetFileName(Path.TrimEndingDirectorySeparator(s)) : "model";
        // As loupe info reports it; free memory is read per request, so a client can watch it.
        var device = Loupe.Tensors.Gpu.ComputeBackends.Describe(m.Backend);
        return new ModelView(name, c.Architecture, c.NLayers, c.NHeads, c.DModel, c.DVocab, c.NCtx, m.Tokenizer is not null, MaxTokens(m, options), m.Processing.IsNone ? null : m.Processing.Describe(),
            device.Device, device.Name, m.Backend.Name, device.TotalMemoryBytes, device.FreeMemoryBytes);
    }

    static int MaxTokens(HookedTransformer m, ServeOptions options) => Math.Min(options.MaxPromptTokens, m.Config.NCtx);

    /// <summary>The prompt's ids, checked against the model and the server's limits.</summary>
    /// <exception cref="InputError">Neither or both given, too long, an id outside the vocabulary, or no tokenizer for text.</exception>
    public static int[] Tokens(HookedTransformer m, string? text, int[]? tokens, ServeOptions options)
    {
        if ((text is null) == (tokens is null)) throw new InputError("give exactly one of \"text\" or \"tokens\"");
        int max = MaxTokens(m, options);
        int[] ids;
        if (text is not null)
        {
            if (text.Length > options.MaxPromptChars) throw new InputError($"the text has {text.Length} characters; at most {options.MaxPromptChars} are accepted");
            var tokenizer = m.Tokenizer ?? throw new InputError("this model has no tokenizer; give \"tokens\" (ids) instead of \"text\"");
            ids = tokenizer.Encode(text);
        }
        else ids = tokens!;
        if (ids.Length == 0) throw new InputError("the prompt has no tokens");
        if (ids.Length > max) throw new InputError($"the prompt has {ids.Length} tokens; at most {max} are accepted");
        foreach (int id in ids)
            if ((uint)id >= (uint)m.Config.DVocab) throw new InputError($"token id {id} is outside the vocabulary [0, {m.Config.DVocab - 1}]");
        return ids;
    }

    public static string Text(HookedTransformer m, int id) =>
        m.Tokenizer is { } t && id < t.VocabSize ? t.Decode([id]) : id.ToString(System.Globalization.CultureInfo.InvariantCulture);

    public static PromptResponse Prompt(HookedTransformer m, int[] ids, int topK, TunedLens? tuned = null)
    {
        var batch = TokenBatch.Single(ids);
        var next = NextTokens.TopK(m, ids, topK, allPositions: true);
        var grid = LogitLens.Grid(m, batch);
        int top = grid.FinalTopToken[^1];
        var dla = DirectLogitAttribution.Compute(m, batch, LogitDirection.Token(m, top), -1);
        var components = dla.ComponentInfo.Zip(dla.Values[0])
            .Select(x => new DlaComponentView(x.First.Name, x.First.Kind, x.First.Layer, x.First.Head, x.Second)).ToArray();
        return new PromptResponse(
            [.. ids.Select(id => new TokenView(id, Text(m, id)))],
            [.. next.Select(row => row.Select(t => new NextTokenView(t.Token, Text(m, t.Token), t.Probability)).ToArray())],
            View(m, grid),
            new DlaView(new TokenView(top, Text(m, top)), dla.Position, dla.PreCapLogitDiff[0], components, dla.NormBias[0], dla.UnembedBias[0]),
            tuned is null ? null : View(m, LogitLens.Grid(m, batch, tuned: tuned)));
    }

    static LensView View(HookedTransformer m, LogitLensGrid grid) =>
        new(grid.Labels, grid.TopToken, [.. grid.TopToken.Select(r => r.Select(id => Text(m, id)).ToArray())], grid.TopProb, grid.FinalTopProb);

    /// <summary>The tuned lens at <paramref name="path"/> for <paramref name="model"/>, read once at start.</summary>
    /// <exception cref="InputError">The lens cannot be read or does not fit the model.</exception>
    public static TunedLens LoadTunedLens(string path, HookedTransformer model)
    {
        var lens = TunedLens.Load(path);
        lens.CheckFits(model, path);
        if (lens.ProcessingWarning(model) is { } warning) Console.Error.WriteLine(warning);
        return lens;
    }

    public static float[][][][] Patterns(HookedTransformer m, int[] ids)
    {
        int T = ids.Length;
        var cache = m.RunWithCache(TokenBatch.Single(ids), "blocks.*.attn.hook_pattern", new RunOptions { LastPositionLogitsOnly = true }).Cache;
        var result = new float[m.Config.NLayers][][][];
        for (int l = 0; l < m.Config.NLayers; l++)
        {
            var pattern = cache[HookNames.Pattern(l)].ToCpu(); // [1, heads, q, k]
            int heads = pattern.Dim(1);
            var span = pattern.Span;
            result[l] = new float[heads][][];
            for (int h = 0; h < heads; h++)
            {
                result[l][h] = new float[T][];
                for (int q = 0; q < T; q++) result[l][h][q] = span.Slice((h * T + q) * T, T).ToArray();
            }
        }
        return result;
    }

    static readonly string[] s_kinds = ["previous_token", "duplicate_token", "induction"];

    public static DetectionView Detection(HeadDetectionResult r) =>
        new(s_kinds, [.. r.Scores.Select(s => s.Score)], r.Tokens.Rows.Length, r.Tokens.RepeatLength);

    /// <summary>Averages detection runs over disjoint seeds (the job's unit of progress).</summary>
    public static DetectionView Average(IReadOnlyList<HeadDetectionResult> runs)
    {
        var first = runs[0];
        var scores = new double[first.Scores.Count][][];
        for (int k = 0; k < scores.Length; k++)
            scores[k] = [.. Enumerable.Range(0, first.NLayers).Select(l => Enumerable.Range(0, first.NHeads)
                .Select(h => runs.Sum(r => r.Scores[k].Score[l][h] * r.Tokens.Rows.Length) / runs.Sum(r => r.Tokens.Rows.Length)).ToArray())];
        return new DetectionView(s_kinds, scores, runs.Sum(r => r.Tokens.Rows.Length), first.Tokens.RepeatLength);
    }
}
