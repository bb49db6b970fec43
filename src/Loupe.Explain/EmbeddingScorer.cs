// Delphi's embedding scorer (Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large Language
// Models"): the explanation is a query, each held-out example a document; a sentence encoder embeds both, and the
// explanation scores by how well cosine similarity separates the feature's activating examples from the others (AUROC).
// No language model is asked: the score is cheap, deterministic and local (all-MiniLM-L6-v2 by default, from NuGet).
//
// The examples are the detection scorer's: held-out activating windows and as many windows from contexts where the
// feature has no stored example, as plain text (no marks). Besides AUROC, the 0/1 metrics read the |positives| most
// similar examples as "activating" (ties in example order), so precision = recall = accuracy's share among them.
using Loupe.Models;
using Loupe.Models.Families;

namespace Loupe.Explain;

/// <summary>Sentence embeddings for the embedding scorer.</summary>
public interface ITextEmbedder
{
    /// <summary>What embeds (recorded with the scores).</summary>
    string Name { get; }

    /// <summary>One unit-length vector per text.</summary>
    float[][] Embed(IReadOnlyList<string> texts);
}

/// <summary>
/// A sentence encoder (a <see cref="BertModel"/> without an MLM head, such as all-MiniLM-L6-v2) as sentence-transformers
/// runs it: its tokenizer with [CLS]/[SEP], at most n_ctx tokens (longer texts are cut, as sentence-transformers truncates),
/// the last hidden state mean-pooled and L2-normalised, one text at a time.
/// </summary>
public sealed class SentenceEncoderEmbedder : ITextEmbedder
{
    readonly BertModel _model;
    readonly Lock _gate = new();

    /// <exception cref="InputError">The model has an MLM head or no tokenizer: it is not a sentence encoder.</exception>
    public SentenceEncoderEmbedder(HookedTransformer model, string name)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model as BertModel ?? throw new InputError($"argument: --embedder: {name} is a {model.GetType().Name}; the embedding scorer needs a sentence encoder (BERT without an MLM head, e.g. all-MiniLM-L6-v2)");
        if (_model.Config.MlmHead) throw new InputError($"argument: --embedder: {name} has a masked-LM head; the embedding scorer needs a sentence encoder (e.g. all-MiniLM-L6-v2)");
        if (_model.Tokenizer is null) throw new InputError($"argument: --embedder: {name} has no tokenizer (vocab.txt or tokenizer.json)");
        Name = name;
    }

    public string Name { get; }

    public float[][] Embed(IReadOnlyList<string> texts)
    {
        ArgumentNullException.ThrowIfNull(texts);
        var result = new float[texts.Count][];
        // one model, runs one at a time (the explain runner scores features in parallel)
        lock (_gate)
            for (int i = 0; i < texts.Count; i++)
            {
                var ids = _model.Tokenizer!.Encode(texts[i]);
                int max = _model.Config.NCtx;
                if (ids.Length > max) ids = [.. ids[..(max - 1)], ids[^1]];   // keep [SEP] last
                result[i] = _model.MeanPooledEmbeddings(TokenBatch.Single(ids))[0];
            }
        return result;
    }
}

/// <summary>Scores an explanation by embedding similarity (see the file header).</summary>
public static class EmbeddingScorer
{
    /// <summary>Cosine similarity of <paramref name="explanation"/> to each example's text, and the metrics it gives.</summary>
    public static (ScoreMetrics Metrics, double[] Similarities) Score(ITextEmbedder embedder, string explanation, IReadOnlyList<ScoredExample> items)
    {
        ArgumentNullException.ThrowIfNull(embedder);
        ArgumentNullException.ThrowIfNull(items);
        var texts = new List<string>(items.Count + 1) { explanation };
        texts.AddRange(items.Select(i => string.Concat(i.Example.Tokens)));
        var vectors = embedder.Embed(texts);
        var query = vectors[0];
        var similarities = new double[items.Count];
        for (int i = 0; i < items.Count; i++)
        {
            similarities[i] = Cosine(query, vectors[i + 1]);
        }
        var labels = items.Select(i => i.Label).ToList();
        int positives = labels.Count(l => l);
        var predicted = new bool[items.Count];
        foreach (int i in Enumerable.Range(0, items.Count).OrderByDescending(i => similarities[i]).ThenBy(i => i).Take(positives)) predicted[i] = true;
        return (ScoreMetrics.Compute(labels, predicted, similarities, unparsed: 0), similarities);
    }

    /// <summary>Cosine similarity in double; 0 when either vector is zero.</summary>
    internal static double Cosine(float[] a, float[] b)
    {
        double dot = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) { dot += a[i] * (double)b[i]; aa += a[i] * (double)a[i]; bb += b[i] * (double)b[i]; }
        return aa == 0 || bb == 0 ? 0 : dot / Math.Sqrt(aa * bb);
    }
}
