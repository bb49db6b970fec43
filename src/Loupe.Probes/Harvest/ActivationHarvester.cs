using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Probes.Alignment;
using Loupe.Probes.Corpus;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Probes.Harvest;

/// <summary>
/// Streams aligned sentences through a model and keeps the activations of labelled tokens. Steps:
/// 1. check every hook is a per-position activation (<c>[batch, pos, …]</c>; attention patterns are not);
/// 2. order the sentences by token count, longest first (so a batch pads little, and each pass runs in storage the longer
///    passes before it gave back to the model's scratch pool instead of paging in fresh arrays), and cut them into batches
///    of at most <see cref="HarvestOptions.BatchSize"/> sentences and <see cref="HarvestOptions.BatchTokens"/> padded
///    tokens (attention's scores grow as batch × length², so a batch of long sentences is cut smaller);
/// 3. run each batch right-padded, caching only the requested hooks and computing logits at one position;
/// 4. copy the vector of every labelled real token into its slot, which is fixed by sentence order,
///    so the result does not depend on the batching.
/// </summary>
public static class ActivationHarvester
{
    /// <summary>The hooks probed by default: the token embedding and the residual stream after every block.</summary>
    public const string DefaultHooks = HookNames.Embed + ",blocks.*.hook_resid_post";

    /// <summary>The model's hook points matching <paramref name="patterns"/> (comma-separated globs), in forward order.</summary>
    /// <exception cref="InputError">A pattern matches no hook point, or a match is not a per-position activation.</exception>
    public static IReadOnlyList<string> ResolveHooks(HookedTransformer model, string patterns)
    {
        var parts = patterns.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw InputError.Expected("probe settings", "hooks", "comma-separated hook patterns such as blocks.*.hook_resid_post", patterns);
        foreach (var part in parts)
            if (!model.HookPointNames.Any(new HookPattern(part).Matches))
                throw new InputError($"probe settings: hooks: pattern '{part}' matches no hook point of this model; hook points look like: " +
                    string.Join(", ", model.HookPointNames.Where(n => n.StartsWith("blocks.0.", StringComparison.Ordinal) || !n.StartsWith("blocks.", StringComparison.Ordinal)).Take(24)));
        var hooks = new HookPattern(patterns).Select(model.HookPointNames);
        foreach (var hook in hooks)
            if (hook.EndsWith("hook_pattern", StringComparison.Ordinal) || hook.EndsWith("hook_attn_scores", StringComparison.Ordinal))
                throw new InputError($"hook '{hook}' is [batch, head, query_pos, key_pos], not a vector per token; probe a per-position hook such as blocks.0.hook_resid_post");
        return hooks;
    }

    /// <summary>Runs the sentences through the model and collects each labelled token's activation at each hook.</summary>
    /// <param name="model">The model (its context bounds the sentence length).</param>
    /// <param name="sentences">Aligned sentences.</param>
    /// <param name="hooks">Exact hook names (see <see cref="ResolveHooks"/>).</param>
    /// <param name="options">Batching.</param>
    /// <param name="progress">Told the number of sentences done after each batch.</param>
    /// <exception cref="InputError">No sentences or hooks; a hook is not a per-position activation; a sentence is longer than n_ctx.</exception>
    public static LabelledActivations Harvest(HookedTransformer model, IReadOnlyList<AlignedSentence> sentences, IReadOnlyList<string> hooks,
        HarvestOptions? options = null, IProgress<int>? progress = null)
    {
        options ??= new HarvestOptions();
        if (options.BatchSize < 1) throw new ArgumentException($"batch size must be at least 1 (got {options.BatchSize})", nameof(options));
        if (options.BatchTokens < 1) throw new ArgumentException($"the tokens per batch must be at least 1 (got {options.BatchTokens})", nameof(options));
        if (sentences.Count == 0) throw new ArgumentException("there are no sentences to run", nameof(sentences));
        if (hooks.Count == 0) throw new ArgumentException("no hook points were given", nameof(hooks));
        var unknown = hooks.Where(h => !model.HookPointNames.Contains(h)).ToArray();
        if (unknown.Length > 0) throw new InputError($"hook '{unknown[0]}' is not a hook point of this model (resolve patterns with ResolveHooks)");
        for (int s = 0; s < sentences.Count; s++)
            if (sentences[s].Tokens.Length > model.Config.NCtx)
                throw new InputError($"sentence {s} ({sentences[s].Source.Source}:{sentences[s].Source.Line}) has {sentences[s].Tokens.Length} tokens; the context is n_ctx = {model.Config.NCtx}");

        // Each sentence's examples go to a fixed slot range: offsets in sentence order.
        var offsets = new int[sentences.Count + 1];
        for (int s = 0; s < sentences.Count; s++) offsets[s + 1] = offsets[s] + sentences[s].LabelledTokens;
        int count = offsets[^1];
        if (count == 0) throw new InputError("no token of any sentence carries a label");
        var labels = new int[count];          // [count]
        var sentenceOf = new int[count];      // [count]
        var positions = new int[count];       // [count]
        var features = new float[hooks.Count][];
        var widths = new int[hooks.Count];

        var wanted = new HashSet<string>(hooks, StringComparer.Ordinal);
        int padId = model.Tokenizer?.PadTokenId ?? model.Config.EosTokenId ?? 0;
        var order = Enumerable.Range(0, sentences.Count).OrderByDescending(s => sentences[s].Tokens.Length).ThenBy(s => s).ToArray();
        int done = 0;
        float[] downloaded = []; // [labelled, width] rows brought from a device, reused across batches
        for (int start = 0; start < order.Length;)
        {
            int longest = sentences[order[start]].Tokens.Length, size = 1; // the first is the batch's longest
            while (size < options.BatchSize && start + size < order.Length && (long)(size + 1) * longest <= options.BatchTokens) size++;
            var batchSentences = order.AsSpan(start, size).ToArray();
            start += size;
            var batch = TokenBatch.FromRows(batchSentences.Select(s => sentences[s].Tokens).ToArray(), padId, PaddingSide.Right);
            var run = model.Run(batch, new RunOptions { CacheFilter = wanted.Contains, LastPositionLogitsOnly = true });
            // The labelled tokens' rows of [batch·pos, …] and their slots; on a device only these rows cross to the host.
            var rows = new List<int>();
            var slots = new List<int>();
            for (int b = 0; b < batchSentences.Length; b++)
            {
                var sentence = sentences[batchSentences[b]];
                int slot = offsets[batchSentences[b]];
                for (int t = 0; t < sentence.Tokens.Length; t++)
                {
                    if (sentence.Labels[t] < 0) continue;
                    rows.Add(b * batch.Length + t);
                    slots.Add(slot);
                    labels[slot] = sentence.Labels[t];
                    sentenceOf[slot] = batchSentences[b];
                    positions[slot] = t;
                    slot++;
                }
            }
            for (int h = 0; h < hooks.Count; h++)
            {
                var activation = run.Cache[hooks[h]];
                if (activation.Rank < 3 || activation.Dim(0) != batch.Batch || activation.Dim(1) != batch.Length)
                    throw new ArgumentException($"hook '{hooks[h]}' has shape [{string.Join(", ", activation.Shape.ToArray())}]; probes need [batch, pos, …] = [{batch.Batch}, {batch.Length}, …]", nameof(hooks));
                int width = activation.Length / (batch.Batch * batch.Length);
                if (features[h] is null)
                {
                    widths[h] = width;
                    features[h] = new float[(long)count * width <= Array.MaxLength ? count * width : throw new InputError($"{count} examples × width {width} at '{hooks[h]}' do not fit in one array; use fewer sentences")];
                }
                CopyRowsToSlots(model.Backend, activation, rows, slots, width, features[h], ref downloaded);
            }
            model.Recycle(run); // copied out: the next batch's pass reuses this one's cached storage
            done += batchSentences.Length;
            progress?.Report(done);
        }
        return new LabelledActivations(hooks.ToArray(), widths, features, labels, sentenceOf, positions, sentences.Count);
    }

    /// <summary>
    /// Copies row <c>rows[r]</c> of <paramref name="activation"/> (viewed as <c>[rows, width]</c>) to row <c>slots[r]</c> of
    /// <paramref name="features"/>. On the host straight from the activation; on a device the rows are gathered there first
    /// (an embedding lookup with the row numbers as ids), so one copy brings exactly them out, into
    /// <paramref name="downloaded"/> (grown when too small and kept for the next batch: no large array per batch).
    /// </summary>
    static void CopyRowsToSlots(IComputeBackend backend, Tensor activation, List<int> rows, List<int> slots, int width, float[] features,
        ref float[] downloaded)
    {
        if (rows.Count == 0) return;
        if (activation.IsHost)
        {
            var src = activation.Span;
            for (int r = 0; r < rows.Count; r++) src.Slice(rows[r] * width, width).CopyTo(features.AsSpan(slots[r] * width, width));
            return;
        }
        var gathered = backend.Empty(rows.Count, width);
        backend.Embedding(activation, width, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(rows), 1f, gathered);
        if (downloaded.Length < gathered.Length) downloaded = new float[gathered.Length];
        gathered.CopyTo(downloaded);
        for (int r = 0; r < rows.Count; r++) downloaded.AsSpan(r * width, width).CopyTo(features.AsSpan(slots[r] * width, width));
    }
}

/// <summary>How activations are collected.</summary>
/// <param name="BatchSize">Sentences per forward pass, at most.</param>
/// <param name="BatchTokens">Padded tokens (sentences × the longest one's length) per forward pass, at most; a sentence
/// longer than this runs alone. It bounds a pass's memory: 32 sentences padded to the Brown corpus's longest (464
/// tokens) would make GPT-2 small's attention scores 330 MB a layer.</param>
public sealed record HarvestOptions(int BatchSize = 32, int BatchTokens = 4096);
