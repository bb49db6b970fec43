namespace Loupe.Fuzz.Engine;

/// <summary>How a file is mutated: the structure-aware mutators a kind has, on top of the byte-level ones every kind gets.</summary>
/// <summary>
/// What a seed file is, which picks its mutators. <see cref="Script"/>: JSON that tells a fake peer (a hub, a server) how to answer,
/// mutated by the target's own mutators and JSON value replacements only — byte-level damage would only make the fake unreadable.
/// </summary>
public enum FileKind { Json, SafeTensors, Npy, Npz, Sqlite, Text, Args, Protobuf, Binary, Script }

/// <summary>One file of a seed case, as it lies in the case folder.</summary>
public sealed record SeedFile(string Name, byte[] Bytes, FileKind Kind, bool Mutable = true);

/// <summary>
/// A valid input the campaign starts from: the files of one case folder. <see cref="Id"/> is stable across
/// runs ("generated:sae-topk", "shared:models/stories260K", "repo:tests/data/reference/llama") so a reproducer
/// names the seed it came from and a regression test can rebuild the case around its one mutated file.
/// </summary>
public sealed record Seed(string Id, IReadOnlyList<SeedFile> Files);

/// <summary>One generated input: the seed it came from and the mutated bytes of one of its files.</summary>
public sealed record FuzzInput(string Parser, string SeedId, long Index, string FileName, byte[] Bytes, IReadOnlyList<string> Mutations)
{
    /// <summary>Short content hash that names the reproducer files (seed, file and bytes).</summary>
    public string Hash
    {
        get
        {
            using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes(SeedId + "\n" + FileName + "\n"));
            sha.AppendData(Bytes);
            return Convert.ToHexStringLower(sha.GetHashAndReset())[..12];
        }
    }
}

public enum Verdict { Accepted, Refused, Failed }

/// <summary>
/// What one input did. Failed kinds: "exception" (a type other than InputError / IOException escaped),
/// "hang" (ran past the time limit), "non-finite" (a NaN or infinity came out of a success),
/// "accepted-invalid" (a file that breaks its format's rules was accepted).
/// </summary>
public sealed record Outcome(Verdict Verdict, string Kind = "", string ExceptionType = "", string Message = "", string TopFrame = "", string StackHead = "")
{
    public static readonly Outcome Accepted = new(Verdict.Accepted);

    /// <summary>
    /// Groups failures that are one bug: kind, exception type and top Loupe frame; for failures without a stack
    /// (NaN results, invalid files accepted, hangs) the start of the message with numbers, names and paths blanked.
    /// </summary>
    public string Signature => ExceptionType.Length > 0 ? $"{Kind}|{ExceptionType}|{TopFrame}" : $"{Kind}|{Normalize(Message)}";

    static string Normalize(string message)
    {
        var head = System.Text.RegularExpressions.Regex.Replace(message, "tensor \\S+|[0-9]+|'[^']*'|\"[^\"]*\"|/[^ ]*", "#");
        return head.Length > 40 ? head[..40] : head;
    }
}

/// <summary>Thrown by a target's checks when a success breaks the oracle (a NaN result, an invalid file accepted).</summary>
public sealed class OracleViolation(string kind, string message) : Exception(message)
{
    public string Kind { get; } = kind;
}

/// <summary>Checks every target applies to what a parser returned.</summary>
public static class Require
{
    public static void Finite(ReadOnlySpan<float> values, string what)
    {
        for (int i = 0; i < values.Length; i++)
            if (!float.IsFinite(values[i]))
                throw new OracleViolation("non-finite", $"{what}: element {i} is {values[i]} and no InputError was raised");
    }

    public static void Finite(double value, string what)
    {
        if (!double.IsFinite(value)) throw new OracleViolation("non-finite", $"{what} is {value} and no InputError was raised");
    }

    public static void That(bool condition, string message)
    {
        if (!condition) throw new OracleViolation("accepted-invalid", message);
    }
}
