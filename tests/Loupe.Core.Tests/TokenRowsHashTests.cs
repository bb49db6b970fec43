using System.Security.Cryptography;

namespace Loupe.Core.Tests;

public class TokenRowsHashTests
{
    [Fact]
    public void It_is_the_SHA256_of_the_ids_as_little_endian_int32_row_after_row()
    {
        int[][] rows = [[1, 2, 3], [], [70000, -1], [5]];
        var bytes = rows.SelectMany(r => r.SelectMany(BitConverter.GetBytes)).ToArray();   // little-endian on x86-64
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(bytes)), TokenRowsHash.Sha256(rows));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData([])), TokenRowsHash.Sha256([]));
        Assert.NotEqual(TokenRowsHash.Sha256([[1, 2], [3]]), TokenRowsHash.Sha256([[1, 2, 4]]));
    }
}
