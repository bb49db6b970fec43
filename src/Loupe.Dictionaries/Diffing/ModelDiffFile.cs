// diff.json, what `loupe diff` writes and the web app's Diff page reads: the two models' labels, the ModelDiffResult
// (snake_case names, NaN written as "NaN") and the text of every token id it names (divergent positions, their windows
// and top tokens, the tokens each difference promotes), so the file reads without the models. Files written before
// token_strings and windows existed read with none.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Loupe.Tokenizers;

namespace Loupe.Dictionaries.Diffing;

/// <summary>A model diff as saved: labels, result and token texts (see the file header).</summary>
/// <param name="LabelA">The base model's label.</param>
/// <param name="LabelB">The fine-tune's.</param>
/// <param name="Result">The diff.</param>
/// <param name="TokenStrings">Token id → text for every id the result names (empty when no tokenizer was at hand).</param>
public sealed record ModelDiffFile(string LabelA, string LabelB, ModelDiffResult Result, IReadOnlyDictionary<int, string> TokenStrings)
{
    public const string Format = "loupe-model-diff";
    public const int Version = 1;

    static readonly JsonSerializerOptions s_json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    sealed record Payload(string? Format, int? Version, string? ModelA, string? ModelB, ModelDiffResult? Result, Dictionary<string, string>? TokenStrings);

    /// <summary>The file of <paramref name="result"/>, the ids it names decoded by <paramref name="tokenizer"/> (when given).</summary>
    public static ModelDiffFile Of(ModelDiffResult result, string labelA, string labelB, ITokenizer? tokenizer)
    {
        ArgumentNullException.ThrowIfNull(result);
        var ids = new SortedSet<int>();
        foreach (var p in result.TopPositions)
        {
            ids.UnionWith([p.Token, p.TopA, p.TopB, .. p.Before]);
            if (p.Next >= 0) ids.Add(p.Next);
        }
        foreach (var d in result.Differences)
            ids.UnionWith(d.PromotedA.Concat(d.SuppressedA).Concat(d.PromotedB).Concat(d.SuppressedB).Select(t => t.Token));
        var strings = tokenizer is null ? new Dictionary<int, string>() : ids.ToDictionary(id => id, id => tokenizer.Decode([id]));
        return new ModelDiffFile(labelA, labelB, result, strings);
    }

    /// <summary>Writes the file atomically.</summary>
    public void Write(string path)
    {
        var payload = new Payload(Format, Version, LabelA, LabelB, Result,
            TokenStrings.ToDictionary(kv => kv.Key.ToString(CultureInfo.InvariantCulture), kv => kv.Value));
        OutputFiles.WriteAtomic(path, s => JsonSerializer.Serialize(s, payload, s_json));
    }

    /// <summary>Reads and checks a diff.json (or the diff.json in a folder).</summary>
    /// <exception cref="InputError">Missing, not JSON, another format or version, a required field missing, or numbers that do not fit together (the message names the file and the field).</exception>
    public static ModelDiffFile Read(string path)
    {
        string file = Directory.Exists(path) ? Path.Combine(path, "diff.json") : path;
        if (!File.Exists(file)) throw new InputError($"{file}: no such file (expected diff.json as `loupe diff --out DIR` writes it)");
        Payload? p;
        try
        {
            using var stream = File.OpenRead(file);
            p = JsonSerializer.Deserialize<Payload>(stream, s_json);
        }
        catch (JsonException e)
        {
            throw new InputError($"{file}: not a model diff ({e.Message.ReplaceLineEndings(" ")})", e);
        }
        if (p is null) throw new InputError($"{file}: not a model diff (the file holds null)");
        if (p.Format is not null and not Format) throw InputError.Expected(file, "format", $"\"{Format}\"", p.Format);
        if (p.Version is int v && v > Version) throw InputError.Expected(file, "version", $"at most {Version} (written by a newer Loupe)", v);
        var r = p.Result ?? throw new InputError($"{file}: result: expected the diff's result, found none");
        if (string.IsNullOrEmpty(p.ModelA) || string.IsNullOrEmpty(p.ModelB)) throw new InputError($"{file}: model_a, model_b: expected the two models' labels");
        Check(file, r);
        var strings = new Dictionary<int, string>();
        foreach (var (key, text) in p.TokenStrings ?? [])
            strings[int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out int id) ? id : throw InputError.Expected(file, "token_strings", "token ids as keys", key)] = text;
        return new ModelDiffFile(p.ModelA, p.ModelB, r, strings);
    }

    static void Check(string file, ModelDiffResult r)
    {
        if (r.Contexts < 1) throw InputError.Expected(file, "result.contexts", "1 or more", r.Contexts);
        if (r.ContextSize < 1) throw InputError.Expected(file, "result.context_size", "1 or more", r.ContextSize);
        if (r.MeanKlByPosition is null || r.MeanKlByPosition.Length != r.ContextSize)
            throw InputError.Expected(file, "result.mean_kl_by_position", $"{r.ContextSize} values (context_size)", r.MeanKlByPosition?.Length);
        if (r.KlHistogramCounts is null || r.KlHistogramEdges is null || r.KlHistogramEdges.Length != r.KlHistogramCounts.Length + 1)
            throw InputError.Expected(file, "result.kl_histogram_edges", "one more value than kl_histogram_counts", r.KlHistogramEdges?.Length);
        if (!double.IsFinite(r.MeanKl) || r.MeanKl < 0) throw InputError.Expected(file, "result.mean_kl", "a finite value ≥ 0", r.MeanKl);
        if (r.MeanKlByPosition.Concat(r.KlHistogramEdges).Any(x => !double.IsFinite(x)))
            throw InputError.Expected(file, "result.mean_kl_by_position / kl_histogram_edges", "finite values", "NaN or infinity");
        if (r.TopPositions is null || r.Differences is null) throw new InputError($"{file}: result.top_positions, result.differences: expected lists");
        for (int i = 0; i < r.TopPositions.Count; i++)
        {
            var t = r.TopPositions[i];
            if (t is null || t.Position < 0 || t.Position >= r.ContextSize || t.Context < 0 || t.Context >= r.Contexts || t.Before is null)
                throw InputError.Expected(file, $"result.top_positions[{i}]", $"a position in 0..{r.ContextSize - 1} of a context in 0..{r.Contexts - 1}", t is null ? null : $"context {t.Context}, position {t.Position}");
        }
        for (int i = 0; i < r.Differences.Count; i++)
        {
            var d = r.Differences[i];
            if (d is null || string.IsNullOrEmpty(d.Hook) || d.Position < -1 || d.PromotedA is null || d.SuppressedA is null || d.PromotedB is null || d.SuppressedB is null)
                throw InputError.Expected(file, $"result.differences[{i}]", "a hook, a position ≥ −1 and four token lists", d?.Hook);
        }
    }
}
