namespace Loupe.Tokenizers;

/// <summary>Names of the special tokens and BOS/EOS overrides, as read from tokenizer_config.json.</summary>
internal sealed record SpecialTokenSettings
{
    /// <summary>Whether each name was given (a given null means "none").</summary>
    public bool HasBos { get; init; }
    public string? Bos { get; init; }
    public bool HasEos { get; init; }
    public string? Eos { get; init; }
    public bool HasPad { get; init; }
    public string? Pad { get; init; }
    public bool HasUnk { get; init; }
    public string? Unk { get; init; }
    public bool? AddBosToken { get; init; }
    public bool? AddEosToken { get; init; }
}

/// <summary>
/// The tokenization pipeline of HF <c>tokenizers</c>: added-token extraction, normalizer,
/// pre-tokenizer, BPE model, post-processor and decoder.
/// </summary>
internal sealed class Tokenizer : ITokenizer
{
    readonly BpeModel _model;
    readonly Normalizer? _normalizer;
    readonly PreTokenizer? _preTokenizer;
    readonly PostProcessor? _postProcessor;
    readonly Decoder? _decoder;
    readonly AddedVocabulary _added;
    readonly bool _templateAddsBos, _templateAddsEos;
    readonly bool? _forceBos, _forceEos;

    public int VocabSize { get; }
    public int? BosTokenId { get; }
    public int? EosTokenId { get; }
    public int? PadTokenId { get; }
    public int? UnkTokenId { get; }
    public bool AddsBosByDefault { get; }

    internal BpeModel Model => _model;
    internal Normalizer? Normalizer => _normalizer;
    internal PreTokenizer? PreTokenizer => _preTokenizer;
    internal PostProcessor? PostProcessor => _postProcessor;
    internal Decoder? Decoder => _decoder;
    internal AddedVocabulary AddedVocabulary => _added;

    public Tokenizer(BpeModel model, Normalizer? normalizer, PreTokenizer? preTokenizer, PostProcessor? postProcessor,
        Decoder? decoder, IEnumerable<AddedToken> addedTokens, SpecialTokenSettings settings)
    {
        _model = model;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _postProcessor = postProcessor;
        _decoder = decoder;
        _added = new AddedVocabulary(addedTokens, normalizer);
        VocabSize = Math.Max(model.MaxId, _added.MaxId) + 1;

        // What the post-processor adds around an empty sequence tells where its special tokens go.
        var probe = postProcessor?.Process([]) ?? [];

        UnkTokenId = settings.HasUnk ? Lookup(settings.Unk) : model.UnkId;
        BosTokenId = settings.HasBos ? Lookup(settings.Bos)
            : probe.Count > 0 && IsSpecial(probe[0]) ? probe[0]
            : FirstPresent("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>");
        EosTokenId = settings.HasEos ? Lookup(settings.Eos)
            : FirstPresent("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>");
        PadTokenId = settings.HasPad ? Lookup(settings.Pad)
            : FirstPresent("<pad>", "<|pad|>", "[PAD]", "<|padding|>");

        _templateAddsBos = BosTokenId is int bos && probe.Count > 0 && probe[0] == bos;
        _templateAddsEos = EosTokenId is int eos && probe.Count > 0 && probe[^1] == eos && !(probe.Count == 1 && _templateAddsBos);
        _forceBos = BosTokenId is null ? null : settings.AddBosToken;
        _forceEos = EosTokenId is null ? null : settings.AddEosToken;
        AddsBosByDefault = _forceBos ?? _templateAddsBos;
    }

    bool IsSpecial(int id) => _added.ById(id) is { Special: true };

    int? Lookup(string? token) => token is null ? null : TokenToId(token);

    int? FirstPresent(params string[] names)
    {
        foreach (var n in names)
            if (TokenToId(n) is int id) return id;
        return null;
    }

    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        foreach (var seg in _added.SplitRaw(text))
        {
            if (seg.Token is { } token)
            {
                ids.Add(token.Id);
                continue;
            }
            var raw = seg.Start == 0 && seg.End == text.Length ? text : text[seg.Start..seg.End];
            var normalized = _normalizer?.Normalize(raw) ?? raw;
            if (normalized.Length == 0) continue;
            var atStart = seg.Start == 0;
            if (!_added.HasNormalizedTokens)
            {
                EncodePiece(new Piece(normalized, atStart), ids);
                continue;
            }
            foreach (var inner in _added.SplitNormalized(normalized))
            {
                if (inner.Token is { } t) ids.Add(t.Id);
                else EncodePiece(new Piece(normalized[inner.Start..inner.End], atStart && inner.Start == 0), ids);
            }
        }
        if (!addSpecialTokens) return ids.ToArray();
        return PostProcess(ids).ToArray();
    }

    List<int> PostProcess(List<int> ids)
    {
        if (_postProcessor is not null) ids = _postProcessor.Process(ids);
        // tokenizer_config.json's add_bos_token / add_eos_token override the template, as transformers does.
        if (_forceBos == true && !_templateAddsBos) ids.Insert(0, BosTokenId!.Value);
        else if (_forceBos == false && _templateAddsBos && ids.Count > 0) ids.RemoveAt(0);
        if (_forceEos == true && !_templateAddsEos) ids.Add(EosTokenId!.Value);
        else if (_forceEos == false && _templateAddsEos && ids.Count > 0) ids.RemoveAt(ids.Count - 1);
        return ids;
    }

    void EncodePiece(Piece piece, List<int> ids)
    {
        if (_preTokenizer is null)
        {
            _model.Tokenize(piece.Text, ids);
            return;
        }
        foreach (var word in _preTokenizer.Run(piece)) _model.Tokenize(word.Text, ids);
    }

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var tokens = new List<string>(ids.Length);
        foreach (var id in ids)
        {
            var added = _added.ById(id);
            if (added is not null)
            {
                if (!(skipSpecialTokens && added.Special)) tokens.Add(added.Content);
                continue;
            }
            var token = _model.IdToToken(id) ?? throw OutOfRange(id);
            // HF skips any token whose content is a special added token, whatever its id.
            if (skipSpecialTokens && _added.ByContent(token) is { Special: true }) continue;
            tokens.Add(token);
        }
        if (_decoder is null) return string.Join(' ', tokens);
        return _decoder.Decode(tokens);
    }

    public string IdToToken(int id) => _added.ById(id)?.Content ?? _model.IdToToken(id) ?? throw OutOfRange(id);

    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return _added.ByContent(token)?.Id ?? _model.TokenToId(token);
    }

    /// <summary>An id given by the caller (a user's token list, a CLI argument) that names no token.</summary>
    InputError OutOfRange(int id) => new(id < 0 || id >= VocabSize
        ? $"token id {id}: expected an id in [0, {VocabSize - 1}] (the vocabulary has {VocabSize} ids), found {id}"
        : $"token id {id}: expected the id of a token, found {id}, which no token of this vocabulary (size {VocabSize}) has");
}
