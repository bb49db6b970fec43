using System.Collections.Concurrent;
using System.Text;

namespace Loupe.Tokenizers;

/// <summary>Options of a BPE model beyond its vocabulary and merges (HF <c>models::bpe::BPE</c>).</summary>
internal sealed record BpeOptions
{
    public string? UnkToken { get; init; }
    public bool FuseUnk { get; init; }
    public bool ByteFallback { get; init; }
    public bool IgnoreMerges { get; init; }
    public string? ContinuingSubwordPrefix { get; init; }
    public string? EndOfWordSuffix { get; init; }
}

/// <summary>
/// Byte-pair-encoding model: splits a word into characters, then repeatedly applies the
/// lowest-ranked merge (leftmost first on ties), exactly like HF's <c>Word::merge_all</c>.
/// Results are cached per word; the cache is thread-safe.
/// </summary>
internal sealed class BpeModel
{
    const int MaxCachedWordLength = 256;
    const int CacheCapacity = 100_000;

    readonly Dictionary<string, int> _vocab;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabSpan;
    readonly Dictionary<int, string> _idToToken;
    readonly Dictionary<long, (int Rank, int NewId)> _merges;
    readonly int[]? _byteIds;
    readonly int? _unkId;
    readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    readonly string _source;
    int _cacheCount;

    public BpeOptions Options { get; }

    /// <summary>Largest id in the vocabulary, or -1 when empty.</summary>
    public int MaxId { get; }

    /// <param name="vocab">token → id.</param>
    /// <param name="merges">merge pairs, in rank order.</param>
    /// <param name="options">model options.</param>
    /// <param name="source">file path used in error messages.</param>
    /// <param name="mergeWhere">where merge <c>rank</c> is in the file, for error messages ("model.merges[3]", "line 5").</param>
    /// <exception cref="InputError">An id is negative or repeated, or a merge names a token that is not in the vocabulary.</exception>
    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string Left, string Right)> merges, BpeOptions options,
        string source, Func<int, string> mergeWhere)
    {
        Options = options;
        _source = source;
        _vocab = vocab;
        _vocabSpan = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _idToToken = new Dictionary<int, string>(vocab.Count);
        MaxId = -1;
        foreach (var (token, id) in vocab)
        {
            if (id < 0 || id > Limits.MaxTokenId)
                throw new InputError($"{source}: vocabulary token {InputError.Show(token)}: expected an id in [0, {Limits.MaxTokenId}], found {id}");
            if (!_idToToken.TryAdd(id, token))
                throw new InputError($"{source}: vocabulary token {InputError.Show(token)}: expected a unique id, found {id}, which {InputError.Show(_idToToken[id])} already has");
            if (id > MaxId) MaxId = id;
        }

        var prefixLength = options.ContinuingSubwordPrefix?.Length ?? 0;
        _merges = new Dictionary<long, (int, int)>(merges.Count);
        for (var rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            InputError NotInVocab(string what, string token) => new(
                $"{source}: {mergeWhere(rank)}: expected a merge of two vocabulary tokens into a third, found {InputError.Show(left + " " + right)}, "
                + $"whose {what} {InputError.Show(token)} is not in the vocabulary");
            if (!vocab.TryGetValue(left, out var leftId)) throw NotInVocab("left token", left);
            if (!vocab.TryGetValue(right, out var rightId)) throw NotInVocab("right token", right);
            var rightPart = prefixLength > 0 && right.StartsWith(options.ContinuingSubwordPrefix!, StringComparison.Ordinal)
                ? right[prefixLength..] : right;
            var merged = left + rightPart;
            if (!vocab.TryGetValue(merged, out var newId)) throw NotInVocab("merged token", merged);
            _merges[PairKey(leftId, rightId)] = (rank, newId);
        }

        if (options.ByteFallback)
        {
            _byteIds = new int[256];
            for (var b = 0; b < 256; b++)
                _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1;
        }
        if (options.UnkToken is not null && vocab.TryGetValue(options.UnkToken, out var unk)) _unkId = unk;
    }

    static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    public int? TokenToId(string token) => _vocab.TryGetValue(token, out var id) ? id : null;

    public string? IdToToken(int id) => _idToToken.TryGetValue(id, out var t) ? t : null;

    public int? UnkId => _unkId;

    /// <summary>Appends the token ids of one pre-tokenized word.</summary>
    public void Tokenize(string word, List<int> output)
    {
        if (word.Length == 0) return;
        if (Options.IgnoreMerges && _vocab.TryGetValue(word, out var whole))
        {
            output.Add(whole);
            return;
        }
        if (_cache.TryGetValue(word, out var cached))
        {
            output.AddRange(cached);
            return;
        }
        var ids = MergeWord(word);
        if (word.Length <= MaxCachedWordLength && Volatile.Read(ref _cacheCount) < CacheCapacity && _cache.TryAdd(word, ids))
            Interlocked.Increment(ref _cacheCount);
        output.AddRange(ids);
    }

    int[] MergeWord(string word)
    {
        var symbols = new List<int>(word.Length);
        int? pendingUnk = null;
        var prefix = Options.ContinuingSubwordPrefix;
        var suffix = Options.EndOfWordSuffix;

        var i = 0;
        while (i < word.Length)
        {
            var len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            var isFirst = i == 0;
            var isLast = i + len == word.Length;
            ReadOnlySpan<char> piece = word.AsSpan(i, len);
            string? decorated = null;
            if ((!isFirst && !string.IsNullOrEmpty(prefix)) || (isLast && !string.IsNullOrEmpty(suffix)))
            {
                decorated = (!isFirst ? prefix : "") + piece.ToString() + (isLast ? suffix : "");
                piece = decorated;
            }
            i += len;

            if (_vocabSpan.TryGetValue(piece, out var id))
            {
                if (pendingUnk is int u)
                {
                    symbols.Add(u);
                    pendingUnk = null;
                }
                symbols.Add(id);
                continue;
            }
            if (_byteIds is not null && TryByteFallback(piece, symbols)) continue;
            if (Options.UnkToken is not null)
            {
                var unkId = _unkId ?? throw new InputError(
                    $"{_source}: model.unk_token: expected a token of the vocabulary, found {InputError.Show(Options.UnkToken)}, "
                    + $"which the input {InputError.Show(piece.ToString())} needs");
                if (pendingUnk is int u && !Options.FuseUnk) symbols.Add(u);
                pendingUnk = unkId;
            }
        }
        if (pendingUnk is int last) symbols.Add(last);
        if (symbols.Count < 2 || _merges.Count == 0) return symbols.ToArray();
        return MergeAll(symbols);
    }

    bool TryByteFallback(ReadOnlySpan<char> piece, List<int> symbols)
    {
        // A piece is one character plus the subword prefix/suffix, so it is short, but those come from the
        // file: stack memory only up to a fixed size, a pooled array beyond.
        const int StackBytes = 256;
        var max = Encoding.UTF8.GetMaxByteCount(piece.Length);
        byte[]? rented = null;
        Span<byte> bytes = max <= StackBytes ? stackalloc byte[StackBytes] : (rented = System.Buffers.ArrayPool<byte>.Shared.Rent(max));
        try
        {
            var n = Encoding.UTF8.GetBytes(piece, bytes);
            for (var k = 0; k < n; k++)
                if (_byteIds![bytes[k]] < 0) return false;
            for (var k = 0; k < n; k++) symbols.Add(_byteIds![bytes[k]]);
            return true;
        }
        finally
        {
            if (rented is not null) System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        }
    }

    int[] MergeAll(List<int> initial)
    {
        var n = initial.Count;
        var ids = initial.ToArray();
        var prev = new int[n];
        var next = new int[n];
        var removed = new bool[n];
        for (var k = 0; k < n; k++)
        {
            prev[k] = k - 1;
            next[k] = k + 1 < n ? k + 1 : -1;
        }

        // Priority: lowest rank first, then leftmost position (HF Merge ordering).
        var queue = new PriorityQueue<(int Pos, int NewId), long>(n);
        for (var k = 0; k + 1 < n; k++)
            if (_merges.TryGetValue(PairKey(ids[k], ids[k + 1]), out var m))
                queue.Enqueue((k, m.NewId), Priority(m.Rank, k));

        while (queue.TryDequeue(out var top, out _))
        {
            var pos = top.Pos;
            if (removed[pos]) continue;
            var right = next[pos];
            if (right < 0) continue;
            // Skip stale entries: HF compares only the id the merge would produce.
            if (!_merges.TryGetValue(PairKey(ids[pos], ids[right]), out var current) || current.NewId != top.NewId) continue;

            ids[pos] = top.NewId;
            removed[right] = true;
            next[pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = pos;

            if (prev[pos] >= 0 && _merges.TryGetValue(PairKey(ids[prev[pos]], ids[pos]), out var left))
                queue.Enqueue((prev[pos], left.NewId), Priority(left.Rank, prev[pos]));
            if (next[pos] >= 0 && _merges.TryGetValue(PairKey(ids[pos], ids[next[pos]]), out var after))
                queue.Enqueue((pos, after.NewId), Priority(after.Rank, pos));
        }

        var result = new List<int>(n);
        for (var k = 0; k < n; k++)
            if (!removed[k]) result.Add(ids[k]);
        return result.ToArray();
    }

    static long Priority(int rank, int pos) => ((long)rank << 32) | (uint)pos;
}
