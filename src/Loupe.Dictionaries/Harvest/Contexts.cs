using System.Security.Cryptography;
using Loupe.Models;
using Loupe.Tokenizers;

namespace Loupe.Dictionaries.Harvest;

/// <summary>How documents are cut into training contexts.</summary>
/// <param name="ContextSize">Tokens per context, BOS included.</param>
/// <param name="BosTokenId">Token that starts every context (prepend_bos, as SAELens does).</param>
/// <param name="SeparatorTokenId">Token put between consecutive documents (EOS or BOS).</param>
/// <param name="Seed">Seed of the context shuffle.</param>
/// <param name="MaxContexts">Stop after this many contexts (null = use every document).</param>
public sealed record ContextOptions(int ContextSize, int BosTokenId, int SeparatorTokenId, int Seed = 0, int? MaxContexts = null);

/// <summary>
/// Fixed-length token contexts ready to harvest: <c>[n_contexts][context_size]</c>, each row
/// starting with BOS, in shuffled order.
/// </summary>
public sealed class HarvestContexts
{
    internal HarvestContexts(int[][] contexts, int contextSize, string sourceDescription, int seed)
    {
        Contexts = contexts;
        ContextSize = contextSize;
        SourceDescription = sourceDescription;
        Seed = seed;
    }

    /// <summary>The contexts, <c>[n_contexts][context_size]</c>.</summary>
    public IReadOnlyList<int[]> Contexts { get; }
    public int ContextSize { get; }
    public string SourceDescription { get; }
    public int Seed { get; }
    public int Count => Contexts.Count;

    /// <summary>Contexts [first, first + count) as one batch of token ids <c>[count, context_size]</c>, row-major.</summary>
    public int[] Ids(int first, int count)
    {
        var ids = new int[count * ContextSize];
        for (int i = 0; i < count; i++) Contexts[first + i].CopyTo(ids, i * ContextSize);
        return ids;
    }

    /// <summary>SHA-256 (hex) of every token id in order: identifies the contexts in a manifest.</summary>
    public string Sha256() => TokenRowsHash.Sha256(Contexts);

    /// <summary>Contexts given directly (already tokenized, e.g. for a model without a tokenizer).</summary>
    /// <exception cref="ArgumentException">Rows differ in length or there are none.</exception>
    public static HarvestContexts FromRows(IReadOnlyList<int[]> rows, string sourceDescription, int seed = 0)
    {
        if (rows.Count == 0) throw new ArgumentException("no contexts", nameof(rows));
        int n = rows[0].Length;
        for (int i = 0; i < rows.Count; i++)
            if (rows[i].Length != n || n == 0) throw new ArgumentException($"context {i} has {rows[i].Length} tokens; every context needs the same positive length ({n})", nameof(rows));
        return new HarvestContexts(rows.Select(r => (int[])r.Clone()).ToArray(), n, sourceDescription, seed);
    }
}

/// <summary>
/// Builds contexts the way SAELens does with prepend_bos:
/// 1. tokenize each document without special tokens;
/// 2. concatenate the documents into one stream, a separator token between consecutive documents;
/// 3. cut the stream into chunks of <c>context_size − 1</c> tokens and prepend BOS to each; a
///    final partial chunk is dropped;
/// 4. shuffle the contexts with the seed (Fisher–Yates over <see cref="Random"/>(seed)).
/// Deterministic: the same documents and options give the same contexts.
/// </summary>
public static class ContextBuilder
{
    /// <summary>Tokenizes text documents with <paramref name="tokenizer"/> (no BOS per document) and builds contexts.</summary>
    public static HarvestContexts FromText(ITextSource source, ITokenizer tokenizer, ContextOptions options) =>
        Build(source.Documents().Select(d => tokenizer.Encode(d, addSpecialTokens: false)), options, source.Description);

    /// <summary>
    /// Contexts for <paramref name="model"/> from text: its tokenizer, its BOS, and EOS as the
    /// separator (BOS when the model has no EOS).
    /// </summary>
    /// <exception cref="InputError">The model has no tokenizer or no BOS token, or the context size is below 2 or exceeds n_ctx.</exception>
    public static HarvestContexts ForModel(HookedTransformer model, ITextSource source, int contextSize, int seed = 0, int? maxContexts = null)
    {
        if (source is ITokenRowSource { IsTokenized: true } rows)
        {
            Check.InRange(contextSize, 2, model.Config.NCtx, "argument", $"context size (at most the model's n_ctx = {model.Config.NCtx})");
            return FromTokenRows(rows, contextSize, model.Config.DVocab, model.Config.BosTokenId ?? model.Tokenizer?.BosTokenId, seed, maxContexts);
        }
        var tokenizer = model.Tokenizer ?? throw new InputError("the model has no tokenizer; build contexts from token ids instead");
        int bos = model.Config.BosTokenId ?? tokenizer.BosTokenId ?? throw new InputError("the model has no BOS token to start contexts with");
        Check.InRange(contextSize, 2, model.Config.NCtx, "argument", $"context size (BOS plus at least one token, at most the model's n_ctx = {model.Config.NCtx})");
        int separator = model.Config.EosTokenId ?? tokenizer.EosTokenId ?? bos;
        return FromText(source, tokenizer, new ContextOptions(contextSize, bos, separator, seed, maxContexts));
    }

    /// <summary>
    /// Contexts from rows of token ids cut already (a pre-tokenized dataset, as SAELens uses one): each row's first
    /// <paramref name="contextSize"/> ids, nothing added; shuffled with the seed as <see cref="Build"/> shuffles.
    /// </summary>
    /// <exception cref="InputError">A row shorter than a context, an id outside the vocabulary (the row is named), or no rows.</exception>
    public static HarvestContexts FromTokenRows(ITokenRowSource source, int contextSize, int vocabulary, int? bos, int seed = 0, int? maxContexts = null)
    {
        if (maxContexts is int most) Check.InRange(most, 1, int.MaxValue, "argument", "max contexts");
        if (source is ParquetSource { Metadata: { } m } && m.ContextSize < contextSize)
            throw new InputError($"{m.Path}: the rows are {m.ContextSize} tokens (context_size); a context takes {contextSize}: choose a context size of at most {m.ContextSize}");
        var contexts = new List<int[]>();
        int withoutBos = 0;
        foreach (var (tokens, where) in source.TokenRows())
        {
            if (maxContexts is int max && contexts.Count >= max) break;
            if (tokens.Length < contextSize)
                throw new InputError($"{where}: {tokens.Length} token ids; a context takes {contextSize} (rows of a tokenized dataset are used as they are: choose a context size of at most the rows' length)");
            var context = tokens[..contextSize];
            foreach (int id in context)
                if (id < 0 || id >= vocabulary) throw InputError.Expected(where, "token id", $"an id in 0..{vocabulary - 1} (the model's vocabulary)", id);
            if (bos is int b && context[0] != b) withoutBos++;
            contexts.Add(context);
        }
        if (contexts.Count == 0) throw new InputError($"{source.Description}: no rows");
        var rows = contexts.ToArray();
        var rng = new Random(seed);
        for (int i = rows.Length - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (rows[i], rows[j]) = (rows[j], rows[i]);
        }
        string description = $"{source.Description}: the first {contextSize} ids of each row" +
            (bos is null ? "" : withoutBos == 0 ? ", every row starting with BOS" : $", {withoutBos} of {rows.Length} rows not starting with BOS {bos}");
        return new HarvestContexts(rows, contextSize, description, seed);
    }

    /// <summary>Builds contexts from already-tokenized documents.</summary>
    /// <exception cref="InputError">The context size is below 2, at most 0 contexts are asked for, or the documents do not fill one context.</exception>
    public static HarvestContexts Build(IEnumerable<int[]> tokenizedDocuments, ContextOptions options, string sourceDescription)
    {
        Check.InRange(options.ContextSize, 2, int.MaxValue, "argument", "context size (BOS plus at least one token)");
        if (options.MaxContexts is int most) Check.InRange(most, 1, int.MaxValue, "argument", "max contexts");
        int body = options.ContextSize - 1;
        var contexts = new List<int[]>();
        var current = new int[options.ContextSize];
        current[0] = options.BosTokenId;
        int fill = 1;
        bool first = true;
        foreach (var doc in tokenizedDocuments)
        {
            if (options.MaxContexts is int max && contexts.Count >= max) break;
            if (doc.Length == 0) continue;
            if (!first && !Push(options.SeparatorTokenId)) break;
            first = false;
            bool stop = false;
            foreach (int t in doc) if (!Push(t)) { stop = true; break; }
            if (stop) break;
        }
        if (contexts.Count == 0) throw new InputError($"{sourceDescription}: the documents give fewer than {body} tokens: not one context of {options.ContextSize}");

        var rows = contexts.ToArray();
        var rng = new Random(options.Seed);
        for (int i = rows.Length - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (rows[i], rows[j]) = (rows[j], rows[i]);
        }
        return new HarvestContexts(rows, options.ContextSize, sourceDescription, options.Seed);

        // Appends one token; returns false once MaxContexts is reached.
        bool Push(int token)
        {
            current[fill++] = token;
            if (fill == options.ContextSize)
            {
                contexts.Add(current);
                current = new int[options.ContextSize];
                current[0] = options.BosTokenId;
                fill = 1;
                if (options.MaxContexts is int m && contexts.Count >= m) return false;
            }
            return true;
        }
    }
}
