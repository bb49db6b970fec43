using System.Security.Cryptography;

namespace Loupe;

/// <summary>
/// The SHA-256 of token rows as their int32 ids, little-endian, row after row: how harvests, feature stores and tuned-lens
/// checkpoints recognise the contexts they were computed on (a resumed run must read the same ones).
/// </summary>
public static class TokenRowsHash
{
    /// <summary>Lower-case hex SHA-256 of <paramref name="rows"/>.</summary>
    public static string Sha256(IEnumerable<int[]> rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] buffer = [];
        foreach (var row in rows)
        {
            int bytes = row.Length * sizeof(int);
            if (buffer.Length < bytes) buffer = new byte[bytes];
            Buffer.BlockCopy(row, 0, buffer, 0, bytes);
            sha.AppendData(buffer, 0, bytes);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}
