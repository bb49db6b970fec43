namespace Loupe.Fuzz.Mutators;

/// <summary>A mutation: returns the new bytes and a short description for the chain, or null when it does not apply.</summary>
public sealed record NamedMutator(string Name, Func<byte[], Random, (byte[] Bytes, string What)?> Apply);

/// <summary>Format-blind mutations every file gets: bit flips, boundary bytes, chunk insert/delete/duplicate, truncate, append.</summary>
public static class ByteMutators
{
    static readonly byte[] s_interesting = [0x00, 0xFF, 0x7F, 0x80];

    public static IReadOnlyList<NamedMutator> All { get; } =
    [
        new("bitflip", BitFlip),
        new("set-byte", SetByte),
        new("insert-chunk", InsertChunk),
        new("delete-chunk", DeleteChunk),
        new("duplicate-chunk", DuplicateChunk),
        new("truncate", Truncate),
        new("append", Append),
    ];

    /// <summary>Positions near the start are where headers live: bias a third of the picks to the first 64 bytes.</summary>
    static int Position(byte[] b, Random rng) => rng.Next(3) == 0 ? rng.Next(Math.Min(64, b.Length)) : rng.Next(b.Length);

    static (byte[], string)? BitFlip(byte[] b, Random rng)
    {
        if (b.Length == 0) return null;
        var r = (byte[])b.Clone();
        int flips = 1 + rng.Next(4), first = -1;
        for (int i = 0; i < flips; i++)
        {
            int p = Position(b, rng);
            if (first < 0) first = p;
            r[p] ^= (byte)(1 << rng.Next(8));
        }
        return (r, $"bitflip x{flips} from @{first}");
    }

    static (byte[], string)? SetByte(byte[] b, Random rng)
    {
        if (b.Length == 0) return null;
        var r = (byte[])b.Clone();
        int p = Position(b, rng);
        byte v = s_interesting[rng.Next(s_interesting.Length)];
        r[p] = v;
        return (r, $"byte @{p} = 0x{v:X2}");
    }

    static (byte[], string)? InsertChunk(byte[] b, Random rng)
    {
        int p = b.Length == 0 ? 0 : Position(b, rng);
        int n = 1 + rng.Next(rng.Next(2) == 0 ? 8 : 512);
        var chunk = new byte[n];
        if (rng.Next(2) == 0) rng.NextBytes(chunk);
        else Array.Fill(chunk, s_interesting[rng.Next(s_interesting.Length)]);
        return ([.. b.AsSpan(0, p), .. chunk, .. b.AsSpan(p)], $"insert {n} bytes @{p}");
    }

    static (byte[], string)? DeleteChunk(byte[] b, Random rng)
    {
        if (b.Length < 2) return null;
        int p = Position(b, rng);
        int n = 1 + rng.Next(Math.Min(b.Length - p, rng.Next(2) == 0 ? 8 : 4096));
        return ([.. b.AsSpan(0, p), .. b.AsSpan(p + n)], $"delete {n} bytes @{p}");
    }

    static (byte[], string)? DuplicateChunk(byte[] b, Random rng)
    {
        if (b.Length < 2) return null;
        int p = rng.Next(b.Length);
        int n = 1 + rng.Next(Math.Min(b.Length - p, 1024));
        int at = rng.Next(b.Length + 1);
        return ([.. b.AsSpan(0, at), .. b.AsSpan(p, n), .. b.AsSpan(at)], $"duplicate {n} bytes from @{p} to @{at}");
    }

    static (byte[], string)? Truncate(byte[] b, Random rng)
    {
        if (b.Length == 0) return null;
        int n = rng.Next(4) switch { 0 => 0, 1 => rng.Next(Math.Min(b.Length, 16)), 2 => b.Length - 1 - rng.Next(Math.Min(b.Length, 8)), _ => rng.Next(b.Length) };
        return (b[..n], $"truncate to {n} of {b.Length}");
    }

    static (byte[], string)? Append(byte[] b, Random rng)
    {
        int n = 1 + rng.Next(rng.Next(2) == 0 ? 8 : 4096);
        var chunk = new byte[n];
        rng.NextBytes(chunk);
        return ([.. b, .. chunk], $"append {n} bytes");
    }
}
