namespace Loupe.Models;

/// <summary>Where padding goes when rows of different lengths are batched.</summary>
public enum PaddingSide { Right, Left }

/// <summary>
/// Token ids <c>[batch, pos]</c> with an optional padding mask. Positions count real tokens only
/// (as HF does for left padding: position = number of real tokens before it).
/// </summary>
public sealed class TokenBatch
{
    public TokenBatch(int[] ids, int batch, int length, bool[]? valid = null)
    {
        if (batch <= 0 || length <= 0) throw new ArgumentException($"a token batch needs at least one row and one position (got [{batch}, {length}])");
        if (ids.Length != batch * length) throw new ArgumentException($"{ids.Length} token ids do not fill [{batch}, {length}]", nameof(ids));
        if (valid is not null && valid.Length != ids.Length) throw new ArgumentException($"padding mask has {valid.Length} entries; expected {ids.Length}", nameof(valid));
        Ids = ids;
        Batch = batch;
        Length = length;
        Valid = valid;
    }

    /// <summary>Row-major ids <c>[batch, pos]</c>.</summary>
    public int[] Ids { get; }
    public int Batch { get; }
    public int Length { get; }
    /// <summary>False where a position is padding; null when nothing is padded.</summary>
    public bool[]? Valid { get; }

    int[]? _tokenTypeIds;

    /// <summary>
    /// Segment ids <c>[batch, pos]</c> for encoders with token-type embeddings (BERT: 0 for sentence A, 1 for B);
    /// null means all 0. Decoders ignore them.
    /// </summary>
    /// <exception cref="ArgumentException">The ids do not fill <c>[batch, pos]</c> or one is negative.</exception>
    public int[]? TokenTypeIds
    {
        get => _tokenTypeIds;
        init
        {
            if (value is not null && value.Length != Ids.Length) throw new ArgumentException($"{value.Length} token type ids do not fill [{Batch}, {Length}]", nameof(TokenTypeIds));
            if (value is not null && value.Any(t => t < 0)) throw new ArgumentException("token type ids must not be negative", nameof(TokenTypeIds));
            _tokenTypeIds = value;
        }
    }

    public ReadOnlySpan<int> Row(int b) => Ids.AsSpan(b * Length, Length);

    public static TokenBatch Single(params int[] ids) => new(ids, 1, ids.Length);

    /// <summary>Rows of equal or different lengths; shorter rows are padded with <paramref name="padId"/>.</summary>
    public static TokenBatch FromRows(IReadOnlyList<int[]> rows, int padId = 0, PaddingSide side = PaddingSide.Right)
    {
        if (rows.Count == 0) throw new ArgumentException("no token rows were given", nameof(rows));
        int length = rows.Max(r => r.Length);
        if (length == 0) throw new ArgumentException("every token row is empty", nameof(rows));
        var ids = new int[rows.Count * length];
        bool[]? valid = rows.All(r => r.Length == length) ? null : new bool[ids.Length];
        for (int b = 0; b < rows.Count; b++)
        {
            int pad = length - rows[b].Length, start = side == PaddingSide.Left ? pad : 0;
            for (int t = 0; t < length; t++) ids[b * length + t] = padId;
            rows[b].CopyTo(ids, b * length + start);
            if (valid is not null)
                for (int t = 0; t < rows[b].Length; t++) valid[b * length + start + t] = true;
        }
        return new TokenBatch(ids, rows.Count, length, valid);
    }

    /// <summary>Position of every token: the count of real tokens before it in its row.</summary>
    public int[] Positions(int offset = 0)
    {
        var pos = new int[Ids.Length];
        for (int b = 0; b < Batch; b++)
        {
            int count = 0;
            for (int t = 0; t < Length; t++)
            {
                int i = b * Length + t;
                // A pad takes the position of the real token before it; its value never reaches a real token.
                pos[i] = offset + (Valid is null || Valid[i] ? count++ : Math.Max(count - 1, 0));
            }
        }
        return pos;
    }
}
