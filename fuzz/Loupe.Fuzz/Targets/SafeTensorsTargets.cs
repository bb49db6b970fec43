using Loupe.Fuzz.Engine;
using Loupe.Models.Loading;

namespace Loupe.Fuzz.Targets;

/// <summary><c>SafeTensorsFile.Open</c> and every read of its tensors; an accepted file must follow the format's rules.</summary>
public sealed class SafeTensorsTarget : FuzzTarget
{
    public override string Name => "safetensors";
    public override int DefaultIterations => 3000;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var seeds = new List<Seed>();
        // Small generated files: every dtype Loupe reads, metadata, a scalar, an empty tensor.
        var folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "safetensors")).FullName;
        var mixed = Path.Combine(folder, "mixed.safetensors");
        var f16 = new byte[2 * 12];
        for (int i = 0; i < 12; i++) BitConverter.TryWriteBytes(f16.AsSpan(2 * i), (Half)(i * 0.25f - 1));
        var bf16 = new byte[2 * 6];
        for (int i = 0; i < 6; i++) BitConverter.TryWriteBytes(bf16.AsSpan(2 * i), (ushort)(BitConverter.SingleToUInt32Bits(i - 2.5f) >> 16));
        SafeTensorsWriter.Write(mixed,
        [
            SafeTensorEntry.F32("a.weight", [4, 8], SeedFiles.Floats(32, 1)),
            SafeTensorEntry.F32("a.bias", [8], SeedFiles.Floats(8, 2)),
            SafeTensorEntry.I64("ids", [5], new long[] { 0, 1, 2, 3, 4 }),
            SafeTensorEntry.Raw("half", DType.F16, [3, 4], f16),
            SafeTensorEntry.Raw("brain", DType.BF16, [6], bf16),
            SafeTensorEntry.F32("scalar", [], new float[] { 3f }),
            SafeTensorEntry.F32("empty", [0, 4], Array.Empty<float>()),
        ], new Dictionary<string, string> { ["format"] = "pt", ["note"] = "loupe fuzz seed" });
        seeds.Add(new Seed("generated:mixed.safetensors", [new SeedFile("model.safetensors", File.ReadAllBytes(mixed), FileKind.SafeTensors)]));
        var one = Path.Combine(folder, "one.safetensors");
        SafeTensorsWriter.Write(one, [("w", new[] { 16, 16 }, (ReadOnlyMemory<float>)SeedFiles.Floats(256, 3))]);
        seeds.Add(new Seed("generated:one.safetensors", [new SeedFile("model.safetensors", File.ReadAllBytes(one), FileKind.SafeTensors)]));

        seeds.Add(Rename(SeedFiles.FromFolder("repo:tests/data/reference/llama", context.Repo("tests/data/reference/llama"), "model.safetensors")));
        if (context.Shared("fixtures/attribution/transcoders/layer_0") is { } tc)
            seeds.Add(Rename(SeedFiles.FromFolder("shared:fixtures/attribution/transcoders/layer_0", tc, "sae_weights.safetensors")));
        return seeds;
    }

    static Seed Rename(Seed s) => s with { Files = [.. s.Files.Select(f => f with { Name = "model.safetensors" })] };

    public override void Execute(string folder, FuzzInput input) => ReadAll(Path.Combine(folder, "model.safetensors"));

    /// <summary>Opens a file, reads every tensor the way Loupe does, and checks the layout an accepted file must have.</summary>
    public static void ReadAll(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        if (file.Format != "safetensors") return; // a mutation that made a torch.save file: the pytorch target checks those
        var infos = file.Names.Select(file.GetInfo).OrderBy(i => i.Begin).ToList();
        Require.That(infos.Select(i => i.Name).Distinct().Count() == infos.Count, "duplicate tensor names accepted");
        long next = 0;
        foreach (var info in infos)
        {
            Require.That(info.Begin == next, $"tensor {info.Name} starts at {info.Begin}, expected {next} (offsets must be contiguous)");
            Require.That(info.End - info.Begin == info.ElementCount * info.DType.SizeOf(), $"tensor {info.Name}: {info.End - info.Begin} bytes for shape [{string.Join(",", info.Shape)}] {info.DType}");
            next = info.End;
            var bytes = file.GetBytes(info.Name);
            Require.That(bytes.Length == info.End - info.Begin, $"tensor {info.Name}: GetBytes returned {bytes.Length} bytes");
            if (info.DType is DType.F32 or DType.F16 or DType.BF16) _ = file.GetFloat32(info.Name).Length;
            else if (info.DType == DType.I64) _ = file.GetInt64(info.Name);
        }
        Require.That(next == file.DataLength, $"tensors end at byte {next} of a {file.DataLength}-byte data section (header length off?)");
    }
}

/// <summary><c>SafeTensorsCheckpoint.Open</c> on a sharded checkpoint: the index JSON and both shards are mutated.</summary>
public sealed class CheckpointTarget : FuzzTarget
{
    public override string Name => "checkpoint";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "checkpoint")).FullName;
        string a = "model-00001-of-00002.safetensors", b = "model-00002-of-00002.safetensors";
        SafeTensorsWriter.Write(Path.Combine(folder, a), [("x.weight", new[] { 8, 8 }, (ReadOnlyMemory<float>)SeedFiles.Floats(64, 4)), ("x.bias", new[] { 8 }, (ReadOnlyMemory<float>)SeedFiles.Floats(8, 5))]);
        SafeTensorsWriter.Write(Path.Combine(folder, b), [("y.weight", new[] { 4, 8 }, (ReadOnlyMemory<float>)SeedFiles.Floats(32, 6))]);
        File.WriteAllText(Path.Combine(folder, SafeTensorsCheckpoint.IndexFileName),
            "{\"metadata\": {\"total_size\": 416}, \"weight_map\": {\"x.weight\": \"" + a + "\", \"x.bias\": \"" + a + "\", \"y.weight\": \"" + b + "\"}}");
        return [SeedFiles.FromFolder("generated:sharded-checkpoint", folder, SafeTensorsCheckpoint.IndexFileName, a, b)];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        using var checkpoint = SafeTensorsCheckpoint.Open(folder);
        foreach (var name in checkpoint.Names)
        {
            var info = checkpoint.GetInfo(name);
            Require.That(checkpoint.GetBytes(name).Length == info.End - info.Begin, $"tensor {name}: wrong byte count");
            if (info.DType == DType.F32) _ = checkpoint.GetFloat32(name).Length;
        }
    }
}
