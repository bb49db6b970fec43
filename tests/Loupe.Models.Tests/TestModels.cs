using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Models.Tests;

/// <summary>Model folders for tests: the committed HF fixtures, and edited copies of them in temp dirs.</summary>
public static class TestModels
{
    public static string Fixture(string arch) => SharedData.TestData(Path.Combine("reference", arch));

    public static HookedTransformer Load(string arch) => ModelLoader.LoadFolder(Fixture(arch));

    /// <summary>A temp copy of a fixture folder whose config.json and tensors can be edited.</summary>
    public static string Copy(string arch, Func<string, string>? editConfig = null,
        Func<string, int[], float[], (int[] Shape, float[] Data)?>? editTensor = null) =>
        CopyFolder(Fixture(arch), editConfig, editTensor);

    /// <summary>As <see cref="Copy"/>, from any model folder (e.g. a TransformerLens checkpoint in ../shared/models).</summary>
    public static string CopyFolder(string src, Func<string, string>? editConfig = null,
        Func<string, int[], float[], (int[] Shape, float[] Data)?>? editTensor = null)
    {
        string dir = Path.Combine(Path.GetTempPath(), "loupe-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        string config = File.ReadAllText(Path.Combine(src, "config.json"));
        File.WriteAllText(Path.Combine(dir, "config.json"), editConfig is null ? config : editConfig(config));
        using var file = SafeTensorsFile.Open(Path.Combine(src, "model.safetensors"));
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>();
        foreach (var name in file.Names)
        {
            var shape = file.GetInfo(name).Shape.Select(d => (int)d).ToArray();
            var data = file.GetFloat32(name).ToArray();
            if (editTensor is null) { tensors.Add((name, shape, data)); continue; }
            var edited = editTensor(name, shape, data);
            if (edited is { } e) tensors.Add((name, e.Shape, e.Data));
        }
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
        return dir;
    }
}
