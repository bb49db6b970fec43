using Loupe.Fuzz.Mutators;

namespace Loupe.Fuzz.Engine;

/// <summary>Picks and applies a chain of one to three mutations to one file of a seed.</summary>
public static class MutationEngine
{
    static IReadOnlyList<NamedMutator> Structured(FileKind kind) => kind switch
    {
        FileKind.Json => JsonMutators.All,
        FileKind.SafeTensors => SafeTensorsMutators.All,
        FileKind.Npy => NpyMutators.Npy,
        FileKind.Npz => NpyMutators.Npz,
        FileKind.Sqlite => SqliteMutators.All,
        FileKind.Protobuf => ProtobufMutators.All,
        _ => [],
    };

    public static (byte[] Bytes, List<string> Chain) Mutate(SeedFile file, IReadOnlyList<NamedMutator> extras, Random rng)
    {
        var bytes = file.Bytes;
        var chain = new List<string>();
        int steps = rng.Next(4) == 0 ? 2 + rng.Next(2) : 1;
        var structured = Structured(file.Kind);
        bool textual = file.Kind is FileKind.Args;
        for (int step = 0; step < steps; step++)
        {
            bool applied = false;
            for (int attempt = 0; attempt < 6 && !applied; attempt++)
            {
                int roll = rng.Next(100);
                var pool = file.Kind == FileKind.Script ? (roll < 70 && extras.Count > 0 ? extras : JsonMutators.All)
                    : roll < 45 && structured.Count > 0 ? structured
                    : roll < 75 && extras.Count > 0 ? extras
                    : textual && extras.Count > 0 ? extras
                    : ByteMutators.All;
                var m = pool[rng.Next(pool.Count)];
                if (m.Apply(bytes, rng) is { } r)
                {
                    bytes = r.Bytes;
                    chain.Add($"{m.Name}: {r.What}");
                    applied = true;
                }
            }
        }
        if (chain.Count == 0) // nothing applied (e.g. an empty file): append, which always applies
        {
            var r = ByteMutators.All.First(m => m.Name == "append").Apply(bytes, rng)!.Value;
            bytes = r.Bytes;
            chain.Add("append: " + r.What);
        }
        return (bytes, chain);
    }
}
