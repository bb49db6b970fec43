using Loupe.Fuzz.Engine;

namespace Loupe.Fuzz.Targets;

/// <summary>Reading seed cases from folders, with each file's kind from its name.</summary>
public static class SeedFiles
{
    public static FileKind KindOf(string name) => Path.GetExtension(name).ToLowerInvariant() switch
    {
        ".json" => FileKind.Json,
        ".safetensors" => FileKind.SafeTensors,
        ".npy" => FileKind.Npy,
        ".npz" => FileKind.Npz,
        ".db" => FileKind.Sqlite,
        ".txt" or ".yaml" => FileKind.Text,
        ".onnx" => FileKind.Protobuf,
        _ => FileKind.Binary,
    };

    /// <summary>The named files of <paramref name="folder"/> as a seed (files absent from the folder are left out).</summary>
    public static Seed FromFolder(string id, string folder, params string[] names)
    {
        var files = names.Where(n => File.Exists(Path.Combine(folder, n)))
            .Select(n => new SeedFile(n, File.ReadAllBytes(Path.Combine(folder, n)), KindOf(n))).ToList();
        return new Seed(id, files);
    }

    /// <summary>Every file of <paramref name="folder"/> (recursively, relative names) as a seed.</summary>
    public static Seed AllOf(string id, string folder) =>
        new(id, [.. Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(p => Path.GetRelativePath(folder, p))
            .Where(n => !n.StartsWith(".loupe.lock", StringComparison.Ordinal))
            .Select(n => new SeedFile(n, File.ReadAllBytes(Path.Combine(folder, n)), KindOf(n)))]);

    /// <summary>Deterministic pseudo-random floats in [-scale, scale).</summary>
    public static float[] Floats(int n, int seed, float scale = 0.5f)
    {
        var rng = new Random(seed);
        var data = new float[n];
        for (int i = 0; i < n; i++) data[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return data;
    }
}
