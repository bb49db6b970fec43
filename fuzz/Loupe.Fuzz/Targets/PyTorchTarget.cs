using Loupe.Fuzz.Engine;
using Loupe.Models.Loading;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// torch.save files (zip and legacy) through <c>SafeTensorsFile.Open</c>: the zip directory, the restricted unpickler and
/// the storage lookup. An accepted file's tensors must lie inside the file with the bytes their shape needs, and must read;
/// a sharded <c>pytorch_model.bin</c> model that loads must give finite logits.
/// </summary>
public sealed class PyTorchTarget : FuzzTarget
{
    public override string Name => "pytorch";
    public override int DefaultIterations => 3000;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(10);

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string data = context.Repo("tests/data/pytorch");
        var seeds = new List<Seed>();
        foreach (var file in new[] { "state_dict.pt", "checkpoint.pt", "legacy.bin", "zip64.pt", "evil.pt", "strided.pt", "tuned-lens/params.pt" })
            seeds.Add(new Seed($"repo:tests/data/pytorch/{file}", [new SeedFile("model.pt", File.ReadAllBytes(Path.Combine(data, file)), FileKind.Binary)]));
        var model = SeedFiles.AllOf("repo:tests/data/pytorch/stories260K-bin", Path.Combine(data, "stories260K-bin"));
        // Only the weights are mutated: config and tokenizer have targets of their own.
        seeds.Add(model with { Files = [.. model.Files.Select(f => f with { Mutable = f.Name.EndsWith(".bin", StringComparison.Ordinal) || f.Name.EndsWith(".index.json", StringComparison.Ordinal) })] });
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input)
    {
        string single = Path.Combine(folder, "model.pt");
        if (File.Exists(single))
        {
            ReadAll(single);
            return;
        }
        ModelTarget.LoadAndRun(folder);
    }

    static void ReadAll(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        long length = new FileInfo(path).Length;
        Require.That(file.Format is "pytorch" or "pytorch-legacy", $"a torch.save seed read as {file.Format}");
        foreach (var name in file.Names)
        {
            var info = file.GetInfo(name);
            Require.That(info.Begin >= 0 && info.End <= length && info.End - info.Begin == info.ElementCount * info.DType.SizeOf(),
                $"tensor {name}: bytes [{info.Begin}, {info.End}) for shape [{string.Join(",", info.Shape)}] {info.DType} in a {length}-byte file");
            Require.That(file.GetBytes(name).Length == info.End - info.Begin, $"tensor {name}: GetBytes returned the wrong count");
            if (info.DType.IsFloatingPoint()) _ = file.GetFloat32(name).Length;
            else if (info.DType is not (DType.F8_E4M3 or DType.F8_E5M2 or DType.U64)) _ = file.GetInt64(name);
        }
    }
}
