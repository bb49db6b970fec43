using System.Text;

namespace Loupe.Tokenizers;

/// <summary>A token added on top of the model vocabulary (an entry of <c>added_tokens</c>).</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool SingleWord = false,
    bool LStrip = false, bool RStrip = false, bool Normalized = false);

/// <summary>A stretch of input: either plain text or an added token.</summary>
internal readonly record struct Segment(int Start, int End, AddedToken? Token);

/// <summary>
/// The added tokens and their matching (HF <c>AddedVocabulary</c>): tokens with
/// <c>normalized: false</c> are found in the raw input first; the others are found in the
/// normalized text between them. Matching is leftmost-longest, and honours
/// <c>single_word</c>, <c>lstrip</c> and <c>rstrip</c>.
/// </summary>
internal sealed class AddedVocabulary
{
    readonly Dictionary<string, AddedToken> _byContent = new(StringComparer.Ordinal);
    readonly Dictionary<int, AddedToken> _byId = new();
    readonly Matcher _raw;
    readonly Matcher _normalized;

    public IReadOnlyCollection<AddedToken> Tokens => _byId.Values;

    public int MaxId { get; } = -1;

    public bool HasNormalizedTokens => !_normalized.IsEmpty;

    public AddedVocabulary(IEnumerable<AddedToken> tokens, Normalizer? normalizer)
    {
        var raw = new List<(string, AddedToken)>();
        var norm = new List<(string, AddedToken)>();
        foreach (var t in tokens)
        {
            _byContent.TryAdd(t.Content, t);
            _byId[t.Id] = t;
            if (t.Id > MaxId) MaxId = t.Id;
            if (t.Content.Length == 0) continue;
            if (t.Normalized) norm.Add((normalizer?.Normalize(t.Content) ?? t.Content, t));
            else raw.Add((t.Content, t));
        }
        _raw = new Matcher(raw);
        _normalized = new Matcher(norm);
    }

    public AddedToken? ById(int id) => _byId.GetValueOrDefault(id);

    public AddedToken? ByContent(string content) => _byContent.GetValueOrDefault(content);

    /// <summary>Splits raw input on added tokens that match before normalization.</summary>
    public List<Segment> SplitRaw(string text) => Split(text, _raw);

    /// <summary>Splits normalized text on added tokens that match after normalization.</summary>
    public List<Segment> SplitNormalized(string text) => Split(text, _normalized);

    static List<Segment> Split(string text, Matcher matcher)
    {
        var result = new List<Segment>();
        if (text.Length == 0) return result;
        var startOffset = 0;
        if (!matcher.IsEmpty)
        {
            var pos = 0;
            while (matcher.FindNext(text, pos, out var mStart, out var mEnd, out var token))
            {
                pos = mEnd;
                var start = mStart;
                var stop = mEnd;
                if (token.SingleWord)
                {
                    var startSpace = start == 0 || !EndsWithWord(text, start);
                    var stopSpace = stop == text.Length || !StartsWithWord(text, stop);
                    if (!startSpace || !stopSpace) continue;
                }
                if (token.LStrip)
                {
                    var newStart = start;
                    while (newStart > 0 && char.IsWhiteSpace(text[newStart - 1])) newStart--;
                    start = Math.Max(newStart, startOffset);
                }
                if (token.RStrip)
                {
                    while (stop < text.Length && char.IsWhiteSpace(text[stop])) stop++;
                    pos = Math.Max(pos, stop);
                }
                if (startOffset < start) result.Add(new Segment(startOffset, start, null));
                result.Add(new Segment(start, stop, token));
                startOffset = stop;
            }
        }
        if (startOffset < text.Length) result.Add(new Segment(startOffset, text.Length, null));
        return result;
    }

    static bool EndsWithWord(string text, int end)
    {
        if (end <= 0) return false;
        var status = Rune.DecodeLastFromUtf16(text.AsSpan(0, end), out var r, out _);
        return status == System.Buffers.OperationStatus.Done && Splitting.IsWordChar(r);
    }

    static bool StartsWithWord(string text, int start)
    {
        if (start >= text.Length) return false;
        var status = Rune.DecodeFromUtf16(text.AsSpan(start), out var r, out _);
        return status == System.Buffers.OperationStatus.Done && Splitting.IsWordChar(r);
    }

    /// <summary>Leftmost-longest literal matcher over a set of patterns.</summary>
    sealed class Matcher
    {
        // First character → patterns starting with it, longest first.
        readonly Dictionary<char, (string Pattern, AddedToken Token)[]> _byFirst;
        readonly System.Buffers.SearchValues<char>? _firstChars;

        public bool IsEmpty => _byFirst.Count == 0;

        public Matcher(List<(string Pattern, AddedToken Token)> patterns)
        {
            _byFirst = patterns.Where(p => p.Pattern.Length > 0)
                .GroupBy(p => p.Pattern[0])
                .ToDictionary(g => g.Key, g => g.DistinctBy(p => p.Pattern).OrderByDescending(p => p.Pattern.Length).ToArray());
            if (_byFirst.Count > 0) _firstChars = System.Buffers.SearchValues.Create(_byFirst.Keys.ToArray());
        }

        public bool FindNext(string text, int from, out int start, out int end, out AddedToken token)
        {
            var i = from;
            while (i < text.Length)
            {
                var k = text.AsSpan(i).IndexOfAny(_firstChars!);
                if (k < 0) break;
                i += k;
                foreach (var (pattern, t) in _byFirst[text[i]])
                {
                    if (text.AsSpan(i).StartsWith(pattern, StringComparison.Ordinal))
                    {
                        start = i;
                        end = i + pattern.Length;
                        token = t;
                        return true;
                    }
                }
                i++;
            }
            start = end = 0;
            token = null!;
            return false;
        }
    }
}
